"""Code that runs inside the pipeline's components: data sources, preprocessing, model, losses, evaluation."""

import os
import sys

from triplet_tfx.components import machine

# The project is Keras 3. Importing tensorflow_transform sets TF_USE_LEGACY_KERAS=1 when it
# is unset, which would silently switch `tf.keras` to Keras 2: pin the choice before any import.
os.environ["TF_USE_LEGACY_KERAS"] = "0"

# Before NumPy loads its OpenBLAS (read once, at load): kernels by the CPU's instruction sets, where
# OpenBLAS would pick them by a model table that newer CPUs are missing from (machine.blas_core_type).
# Where NumPy is loaded already, too late for this process, it is left alone: the processes this one
# starts (the evaluator's plot process) then run the kernels it runs, and draw the same pictures.
_blas_core_type = machine.blas_core_type(machine.cpu_flags())
if _blas_core_type and "numpy" not in sys.modules:
    os.environ.setdefault("OPENBLAS_CORETYPE", _blas_core_type)
