"""components/machine.py: the CPUs this process may run on, their flags, the BLAS kernels named by them."""

import json
import os
import subprocess
import sys

import pytest

from triplet_tfx.components import machine


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no affinity mask on this system")
def test_the_cpu_count_is_the_affinity_masks_not_the_machines():
    allowed = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(allowed)})
        assert machine.cpu_count() == 1
    finally:
        os.sched_setaffinity(0, allowed)
    assert machine.cpu_count() == len(allowed)


def test_without_an_affinity_mask_the_count_is_the_machines(monkeypatch):
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert machine.cpu_count() == 6
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert machine.cpu_count() == 1


AVX512_SKYLAKE = {"sse3", "avx", "avx2", "fma", "avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"}


def test_blas_kernels_are_named_by_the_avx512_subsets_they_use():
    assert machine.blas_core_type(AVX512_SKYLAKE) == "SkylakeX"
    assert machine.blas_core_type(AVX512_SKYLAKE | {"avx512_bf16"}) == "Cooperlake"
    # Without every subset the SkylakeX kernels use (a Xeon Phi has no avx512bw), or without AVX-512
    # at all, OpenBLAS's own choice stands.
    assert machine.blas_core_type(AVX512_SKYLAKE - {"avx512bw"}) is None
    assert machine.blas_core_type({"sse3", "avx", "avx2", "fma"}) is None
    assert machine.blas_core_type(set()) is None


def test_cpu_flags_are_the_proc_cpuinfo_flags_line():
    if not os.path.exists("/proc/cpuinfo"):
        assert machine.cpu_flags() == set()
        return
    with open("/proc/cpuinfo") as cpuinfo:
        first = next(line for line in cpuinfo if line.startswith("flags"))
    assert machine.cpu_flags() >= set(first.split(":", 1)[1].split())


def _blas_in_a_fresh_process(imports: str):
    """OPENBLAS_CORETYPE and NumPy's OpenBLAS kernels in a fresh process after `imports`."""
    pytest.importorskip("threadpoolctl")
    code = (
        f"import json, os, threadpoolctl\n{imports}\n"
        "print(json.dumps([os.environ.get('OPENBLAS_CORETYPE'), "
        "[i.get('architecture') for i in threadpoolctl.threadpool_info() if i['internal_api'] == 'openblas']]))"
    )
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    core_type, architectures = json.loads(run.stdout.strip().splitlines()[-1])
    assert architectures  # NumPy's OpenBLAS is loaded
    return core_type, {a.lower() for a in architectures}


def test_an_entry_point_names_the_blas_kernels_before_numpy_loads_them():
    """Importing the package first (as every entry point does) sets OPENBLAS_CORETYPE by the CPU's
    flags, early enough that NumPy's OpenBLAS runs those kernels."""
    core_type, architectures = _blas_in_a_fresh_process("import triplet_tfx.pipeline, numpy")
    assert core_type == machine.blas_core_type(machine.cpu_flags())
    if core_type is not None:
        assert architectures == {core_type.lower()}


def test_the_images_start_up_file_imports_the_package_before_anything_loads_numpy(tmp_path):
    """kubeflow/triplet_tfx_first.pth, in a site-packages folder as the images install it: processed
    at start-up, it names the BLAS kernels before TFX's entry point imports NumPy."""
    import shutil

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    shutil.copy(os.path.join(repo, "kubeflow", "triplet_tfx_first.pth"), tmp_path)
    started = f"import site, sys; site.addsitedir({str(tmp_path)!r})"  # what start-up does with a site folder
    check = f"{started}; print('triplet_tfx.components' in sys.modules, 'numpy' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "Error processing line" not in run.stderr, run.stderr[-2000:]
    assert run.stdout.split() == ["True", "False"]
    core_type, architectures = _blas_in_a_fresh_process(f"{started}\nimport numpy")
    assert core_type == machine.blas_core_type(machine.cpu_flags())
    if core_type is not None:
        assert architectures == {core_type.lower()}
