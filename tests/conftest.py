import os

# Tests are an entry point too: pin Keras 3 before anything imports TensorFlow.
os.environ["TF_USE_LEGACY_KERAS"] = "0"
