"""The sequential backend: tasks run in the caller, one after the other."""
from __future__ import annotations

from .base import ParallelBackendBase


class SequentialBackend(ParallelBackendBase):
    """Runs every task in the calling thread (``n_jobs=1``, debugging)."""

    uses_threads = True
    supports_sharedmem = True
    supports_timeout = False  # type: ignore[assignment]
    supports_return_generator = True  # type: ignore[assignment]
    _jf_sequential = True

    def effective_n_jobs(self, n_jobs):
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        return 1

    def get_nested_backend(self):
        from ..config import get_active_backend
        return get_active_backend()
