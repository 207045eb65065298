"""Task functions for tests/numpy/test_input_mapping.py (importable by
process workers): how a worker's task sees a memmapped input."""
from __future__ import annotations

import os
import resource
import time


def mapping_of(a, pause: float = 0.0):
    """(pid, address of the data, page faults while reading it all, sum,
    the dump's file name)."""
    time.sleep(pause)  # lets every worker get a task
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    total = float(a.sum())
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    return (os.getpid(), a.__array_interface__["data"][0], faults, total,
            a.filename)


def maps_of(pid: int) -> str:
    with open(f"/proc/{pid}/maps") as f:
        return f.read()
