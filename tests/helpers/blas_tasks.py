"""Task functions for tests/threads/test_native_thread_caps.py (importable
by process workers): what a task sees of the native thread pools."""
from __future__ import annotations

import os
import threading

import numpy as np  # noqa: F401 - loads NumPy's BLAS in the worker


def blas_threads(_=None) -> int:
    """The thread count of the BLAS pool as this task sees it (the first
    BLAS library threadpoolctl finds)."""
    from threadpoolctl import threadpool_info
    sizes = [lib["num_threads"] for lib in threadpool_info()
             if lib["user_api"] == "blas"]
    return sizes[0]


def blas_threads_pid(_=None) -> tuple[int, int]:
    return blas_threads(), os.getpid()


def blas_threads_at(barrier: threading.Barrier, _=None) -> int:
    """The size seen while every task of the barrier runs: read once all
    arrived, returned once all read (no call ends before every read)."""
    barrier.wait(timeout=30)
    size = blas_threads()
    barrier.wait(timeout=30)
    return size


def fail(_=None):
    raise ValueError("task failed on purpose")
