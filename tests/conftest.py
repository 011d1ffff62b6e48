# Tests are an entry point too: the package first, as every entry point imports it, so that Keras 3
# is pinned before anything imports TensorFlow and OpenBLAS's kernels are named before NumPy loads
# (the processes that tests start, which import the package first, then run the same kernels).
import triplet_tfx.components  # noqa: F401
