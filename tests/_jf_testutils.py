"""Helpers shared by the test modules (imported as ``_jf_testutils``)."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from joblib_fast import ParallelBackendBase

BACKENDS = ("threading", "sequential")
RETURN_AS = ("list", "generator", "generator_unordered")
WORKER_THREAD_PREFIX = "joblib_fast-thread"
# How long abandoned worker threads may take to end (as conftest's grace).
GRACE_SECONDS = 3.0
_POLL_SECONDS = 0.02


# Threads alive when the current test started (set by conftest's leak
# fixture): a thread leaked by an earlier test fails that test only, not
# every later test that looks for worker threads.
BASELINE_THREADS = frozenset()


def shared_threads():
    """The threads of the process-wide pool (the threading backend's and
    parallel_for's): they outlive calls by design."""
    from joblib_fast import _threads
    return _threads.shared_pool_threads()


def worker_threads():
    """joblib_fast worker threads alive now and started during this test,
    other than the shared pool's (which outlive calls by design; conftest
    stops them after each test)."""
    shared = set(shared_threads())
    return [t for t in threading.enumerate()
            if t.name.startswith(WORKER_THREAD_PREFIX) and t.is_alive()
            and t not in BASELINE_THREADS and t not in shared]


def wait_no_worker_threads(seconds=GRACE_SECONDS):
    """Wait until no joblib_fast worker thread is alive; return the rest."""
    deadline = time.monotonic() + seconds
    while worker_threads() and time.monotonic() < deadline:
        time.sleep(_POLL_SECONDS)
    return worker_threads()


def square(x):
    return x * x


def sleep_and_return(value, seconds):
    """Sleep (the GIL is released) then return ``value``."""
    time.sleep(seconds)
    return value


def add(a, b=0, *, c=0):
    return a + b + c


class ExecutorBackend(ParallelBackendBase):
    """A user backend in joblib's ``submit`` + callback style, on a
    ``concurrent.futures`` thread pool."""

    supports_retrieve_callback = True

    def configure(self, n_jobs=1, parallel=None, **kwargs):
        self._executor = ThreadPoolExecutor(n_jobs)
        return n_jobs

    def effective_n_jobs(self, n_jobs):
        return 2 if n_jobs is None or n_jobs < 0 else n_jobs

    def terminate(self):
        self._executor.shutdown()

    def submit(self, func, callback):
        future = self._executor.submit(func)
        future.add_done_callback(callback)
        return future

    def retrieve_result_callback(self, future):
        return future.result()
