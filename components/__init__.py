"""Code that runs inside the pipeline's components: data sources, preprocessing, model, losses, evaluation."""

import os

from triplet_tfx.components import machine

# The project is Keras 3. Importing tensorflow_transform sets TF_USE_LEGACY_KERAS=1 when it
# is unset, which would silently switch `tf.keras` to Keras 2: pin the choice before any import.
os.environ["TF_USE_LEGACY_KERAS"] = "0"

# Before NumPy loads its OpenBLAS (read once, at load): kernels by the CPU's instruction sets, where
# OpenBLAS would pick them by a model table that newer CPUs are missing from (machine.blas_core_type).
_blas_core_type = machine.blas_core_type(machine.cpu_flags())
if _blas_core_type:
    os.environ.setdefault("OPENBLAS_CORETYPE", _blas_core_type)
