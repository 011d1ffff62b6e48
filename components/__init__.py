"""Code that runs inside the pipeline's components: data sources, preprocessing, model, losses, evaluation."""

import os

# The project is Keras 3. Importing tensorflow_transform sets TF_USE_LEGACY_KERAS=1 when it
# is unset, which would silently switch `tf.keras` to Keras 2: pin the choice before any import.
os.environ["TF_USE_LEGACY_KERAS"] = "0"
