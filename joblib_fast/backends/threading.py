"""The threading backend: persistent threads fed by the compiled core."""
from __future__ import annotations

import functools

from .._core import ThreadPool
from .base import ParallelBackendBase

# Seconds an auto batch lasts on threads: long enough that the queue
# hand-off (a mutex, a condition variable, maybe a wake-up) is noise, short
# enough that the tail of a call leaves no worker idle for long.
# Chosen, not tuned: `python benchmarks/bench.py --only nogil10us,nogil1ms`
# shows what it gives.
THREAD_TARGET_BATCH_SECONDS = 0.002


class ThreadingBackend(ParallelBackendBase):
    """Worker threads; for code that releases the GIL (Cython, NumPy, I/O)."""

    supports_retrieve_callback = True
    uses_threads = True
    supports_sharedmem = True
    target_batch_duration = THREAD_TARGET_BATCH_SECONDS
    _jf_native = True

    def effective_n_jobs(self, n_jobs):
        from ..config import _effective_n_jobs
        return _effective_n_jobs(n_jobs)

    def _jf_make_pool(self, n_jobs: int) -> ThreadPool:
        from ..config import _enter_worker
        return ThreadPool(n_jobs, name="joblib_fast-thread",
                          initializer=functools.partial(_enter_worker, self,
                                                        n_jobs))

    def get_nested_backend(self):
        # Threads inside threads oversubscribe: nested calls run in place.
        from .sequential import SequentialBackend
        level = (self.nesting_level or 0) + 1
        return SequentialBackend(nesting_level=level), None
