"""components/machine.py: the CPUs this process may run on."""

import os

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
