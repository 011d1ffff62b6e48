"""The machine as this process sees it: the training stage sizes its batch parts and the evaluation
stage its search threads by the same count; the precision choice and the BLAS kernels read the same
CPU flags. A leaf module."""

import os
from typing import Optional, Set

# The AVX-512 subsets that OpenBLAS's SkylakeX kernels use.
_AVX512_KERNEL_FLAGS = {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"}


def cpu_count() -> int:
    """The CPUs this process may run on: its affinity mask where the system has one (a container's
    or `taskset`'s limit), else all the machine's."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cpu_flags() -> Set[str]:
    """The CPU's instruction-set flags as Linux lists them in /proc/cpuinfo (none elsewhere)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return {flag for line in cpuinfo if line.startswith("flags") for flag in line.split()}
    except OSError:  # not Linux
        return set()


def blas_core_type(flags: Set[str]) -> Optional[str]:
    """The OpenBLAS kernels for a CPU with these flags, by instruction set, for OPENBLAS_CORETYPE;
    None where OpenBLAS's own choice is to stand. NumPy 1.26's OpenBLAS (0.3.23) picks kernels by
    CPU model and falls back to its slowest ones (Prescott: SSE3) on models newer than its table,
    such as an Intel Xeon of family 6 model 207: there the evaluator's exact k-NN took 1.6x as
    long (bench/README.md). For the AVX-512 CPUs in its table it chooses by the same flags (and
    with AMX its Sapphire Rapids kernels, whose float32 products are these)."""
    if not _AVX512_KERNEL_FLAGS <= flags:
        return None
    return "Cooperlake" if "avx512_bf16" in flags else "SkylakeX"
