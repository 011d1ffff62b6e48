"""The machine as this process sees it: the training stage sizes its batch parts and the evaluation
stage its search threads by the same count. A leaf module."""

import os


def cpu_count() -> int:
    """The CPUs this process may run on: its affinity mask where the system has one (a container's
    or `taskset`'s limit), else all the machine's."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
