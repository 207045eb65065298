"""joblib_fast's pools as backends of joblib itself.

``register_joblib_backend()`` registers, with ``joblib.register_parallel_backend``,
backends written against joblib's own ``ParallelBackendBase``, so that
``joblib.Parallel`` (and every library calling it: scikit-learn...) runs its
batches on joblib_fast's worker processes or threads.

joblib drives a backend by push (``submit(batch, callback)`` from any
thread); :class:`~joblib_fast._push.Dispatcher` drives a joblib_fast pool
that way, from one thread of its own.  Every submitted batch gets its
callback exactly once.

Threads: ``configure``, ``start_call``, ``stop_call``, ``terminate`` and
``abort_everything`` are called by the thread running ``joblib.Parallel``;
``submit`` by that thread and by the dispatcher thread (inside callbacks).
"""
from __future__ import annotations

import threading
import warnings
from typing import Any

try:
    import joblib
    from joblib.disk import memstr_to_bytes
    from joblib.externals.loky.process_executor import (
        TerminatedWorkerError as _LokyTerminatedWorkerError,
    )
    from joblib.parallel import (
        FallbackToBackend,
        ParallelBackendBase,
        SequentialBackend,
    )
except ImportError as exc:  # pragma: no cover - exercised without joblib
    raise ImportError(
        "joblib_fast.register_joblib_backend needs joblib (>= 1.3), which is "
        "not installed: pip install 'joblib_fast[joblib]'") from exc

from ._context import N_JOBS_ZERO
from ._push import Dispatcher, Job, PoolClosedError
from .backends.base import ThreadingBackend
from .backends.native import CallOptions
from .backends.processes import ProcessBackend, daemonic_warning
from .errors import TerminatedWorkerError

__all__ = ["register_joblib_backend", "FastProcessBackend",
           "FastThreadingBackend"]

# Seconds an auto batch should last, measured by joblib from dispatch to
# completion (it includes the round trip through joblib's Parallel).
# joblib's own process backends aim at 0.2-2 s and its threads never batch;
# shorter batches keep every worker busy to the end of a call.  Chosen, not
# tuned: `python benchmarks/bench.py --only noop,nogil10us,noop_proc,py1ms`
# (the joblib->jf rows) shows what they give.
PROCESS_TARGET_BATCH_SECONDS = 0.02
THREAD_TARGET_BATCH_SECONDS = 0.005


class JoblibTerminatedWorkerError(TerminatedWorkerError,
                                  _LokyTerminatedWorkerError):
    """A worker died: joblib_fast's TerminatedWorkerError that is also
    loky's, which code written for joblib catches."""


def error_for_joblib(error: BaseException) -> BaseException:
    """`error` as joblib's callers expect it: a dead worker is also loky's
    TerminatedWorkerError (same message, cause and traceback)."""
    if isinstance(error, TerminatedWorkerError) and \
            not isinstance(error, _LokyTerminatedWorkerError):
        converted = JoblibTerminatedWorkerError(*error.args)
        converted.__cause__ = error.__cause__
        return converted.with_traceback(error.__traceback__)
    return error


class _FastBackend(ParallelBackendBase):
    """What the process and thread backends share: joblib's backend
    contract over a :class:`Dispatcher`, made on the first ``submit``."""

    supports_retrieve_callback = True
    target_batch_seconds = 0.0
    # At most one batch per worker in the pool (see Dispatcher).
    one_batch_per_worker = False
    thread_name = "joblib_fast-dispatcher"

    def __init__(self, nesting_level: int | None = None,
                 inner_max_num_threads: int | None = None,
                 **backend_kwargs: Any) -> None:
        super().__init__(nesting_level=nesting_level,
                         inner_max_num_threads=inner_max_num_threads,
                         **backend_kwargs)
        self.parallel = None
        self._n_jobs = 0
        self._options = CallOptions()
        self._dispatcher: Dispatcher | None = None
        # Lock guarding `_dispatcher` (its creation and swap): submit runs
        # in joblib's thread and in the dispatcher thread.
        self._lock = threading.Lock()
        self._batch_size = 1
        self._smoothed = 0.0

    # joblib pickles the nested backend into every BatchedCalls: only the
    # settings travel, the pool is made where the backend is used.
    def __reduce__(self):
        return (type(self), (self.nesting_level, self.inner_max_num_threads),
                None, None, None)

    # ------------------------------------------------------- contract

    def configure(self, n_jobs=1, parallel=None, prefer=None, require=None,
                  **backend_kwargs):
        n_jobs = self.effective_n_jobs(n_jobs)
        if n_jobs == 1:
            raise FallbackToBackend(
                SequentialBackend(nesting_level=self.nesting_level))
        settings = {**self.backend_kwargs, **backend_kwargs}
        if "initializer" in settings or "initargs" in settings:
            raise TypeError(
                "joblib_fast's pools have no worker initializer (joblib's "
                "loky initializer=/initargs=): run the setup in the tasks, "
                "or use joblib's own loky backend")
        unknown = set(settings) - {"max_nbytes", "mmap_mode", "temp_folder",
                                   "context", "verbose", "prefer", "require",
                                   "idle_worker_timeout"}
        if unknown:
            raise TypeError(
                f"{type(self).__name__} got unknown backend arguments "
                f"{sorted(unknown)}")
        max_nbytes = settings.get("max_nbytes", "1M")
        if isinstance(max_nbytes, str):
            max_nbytes = memstr_to_bytes(max_nbytes)
        self._options = CallOptions(
            n_jobs=n_jobs, max_nbytes=max_nbytes,
            mmap_mode=settings.get("mmap_mode", "r"),
            temp_folder=settings.get("temp_folder"),
            prefer=prefer, require=require)
        # joblib always passes ``mp.get_context()`` (which is "fork" on
        # Linux once anything asked for it): only a context given to the
        # backend itself overrides joblib_fast's choice (forkserver, or
        # JOBLIB_START_METHOD), as with joblib's loky.
        self._context = self.backend_kwargs.get("context")
        self.parallel = parallel
        self._n_jobs = n_jobs
        return n_jobs

    def effective_n_jobs(self, n_jobs):
        if n_jobs == 0:
            raise ValueError(N_JOBS_ZERO)
        if n_jobs is None:
            return 1
        if n_jobs < 0:
            n_jobs = max(joblib.cpu_count() + 1 + n_jobs, 1)
        return int(n_jobs)

    def submit(self, func, callback=None):
        job = Job(func, callback)
        with self._lock:
            dispatcher = self._dispatcher
            if dispatcher is None:
                if not self._n_jobs:
                    raise RuntimeError(
                        f"{type(self).__name__}.submit before configure")
                dispatcher = self._dispatcher = Dispatcher(
                    self._make_pool(), self.thread_name,
                    self._n_jobs if self.one_batch_per_worker else None,
                    error_for_joblib)
        dispatcher.submit(job)
        return job.outcome

    def retrieve_result_callback(self, out):
        return out.get(0)

    def retrieve_result(self, out, timeout=None):
        return out.get(timeout)

    def compute_batch_size(self):
        return self._batch_size

    def batch_completed(self, batch_size, duration):
        """Auto batching (joblib's ``batch_size="auto"``): grow or shrink
        the batch towards ``target_batch_seconds``, at most twofold per
        step (joblib's AutoBatchingMixin rule with a shorter target)."""
        if batch_size != self._batch_size or duration <= 0:
            return
        smoothed = duration if self._smoothed == 0.0 \
            else 0.8 * self._smoothed + 0.2 * duration
        self._smoothed = smoothed
        target = self.target_batch_seconds
        if smoothed < target / 2 or (smoothed > 2 * target and
                                     batch_size > 1):
            ideal = max(1, int(batch_size * target / smoothed))
            self._batch_size = min(max(ideal, batch_size // 2),
                                   2 * batch_size)
            self._smoothed = 0.0

    def _reset_batch_size(self) -> None:
        self._batch_size = 1
        self._smoothed = 0.0

    def terminate(self):
        """End of a call outside ``with Parallel(...)`` (or of the block):
        joblib_fast's reusable pool stays for the next call."""
        self._close(None)
        self._reset_batch_size()

    def abort_everything(self, ensure_ready=True):
        """After an error, a timeout or an abandoned generator: what still
        runs is stopped; a later ``submit`` makes a fresh pool (so there is
        nothing more to do for ``ensure_ready``)."""
        self._close(PoolClosedError(
            "the joblib_fast pool was aborted by joblib's Parallel"))

    def _close(self, error: BaseException | None) -> None:
        with self._lock:
            dispatcher, self._dispatcher = self._dispatcher, None
        if dispatcher is None:
            return
        dispatcher.close(error)
        pool = dispatcher.pool
        if error is None and dispatcher.error is None:
            pool.end_call(None)
            pool.shutdown(wait=True)
        else:
            self._abort_pool(pool)

    def _abort_pool(self, pool: Any) -> None:
        """Stop what still runs on ``pool`` (aborted or broken) without
        waiting for it, and end the pool's use."""
        raise NotImplementedError

    def _make_pool(self) -> Any:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(nesting_level={self.nesting_level})"


class FastProcessBackend(_FastBackend):
    """joblib's batches on joblib_fast's worker processes (memmapped inputs,
    shared-memory outputs, crash and timeout handling, a reusable pool)."""

    supports_inner_max_num_threads = True
    supports_sharedmem = False
    uses_threads = False
    one_batch_per_worker = True
    target_batch_seconds = PROCESS_TARGET_BATCH_SECONDS
    thread_name = "joblib_fast-process-dispatcher"

    def effective_n_jobs(self, n_jobs):
        if n_jobs in (None, 0, 1):
            return super().effective_n_jobs(n_jobs)
        reason = daemonic_warning()
        if reason is not None:
            # A daemonic process cannot start workers: run in place, with
            # the process backend's warning (joblib's words).
            warnings.warn(reason, UserWarning, stacklevel=3)
            return 1
        if not (self.in_main_thread() or self.nesting_level == 0):
            warnings.warn("joblib_fast process-backed parallel loops cannot "
                          "be nested below threads, setting n_jobs=1",
                          stacklevel=3)
            return 1
        return super().effective_n_jobs(n_jobs)

    def _make_pool(self) -> Any:
        # Made per pool so that a changed inner_max_num_threads (set by
        # joblib between calls) gives workers with the new BLAS caps.
        provider = ProcessBackend(
            nesting_level=self.nesting_level,
            inner_max_num_threads=self.inner_max_num_threads,
            context=self._context)
        return provider.make_pool(self._n_jobs, self._options)

    def _abort_pool(self, pool: Any) -> None:
        # Only the workers running a batch are killed (a task stuck past
        # joblib's timeout, or the rest of an aborted call): the idle ones
        # stay in the reusable pool for the next call.
        if not pool.closed:
            try:
                pool.stop_running()
            except Exception:  # noqa: BLE001 - a replacement did not start
                pass
        pool.shutdown(wait=False)

    def get_nested_backend(self):
        level = (self.nesting_level or 0) + 1
        return FastThreadingBackend(nesting_level=level), None


class FastThreadingBackend(_FastBackend):
    """joblib's batches on joblib_fast's worker threads."""

    supports_inner_max_num_threads = False
    supports_sharedmem = True
    uses_threads = True
    target_batch_seconds = THREAD_TARGET_BATCH_SECONDS
    thread_name = "joblib_fast-thread-dispatcher"

    def _make_pool(self) -> Any:
        return ThreadingBackend(nesting_level=self.nesting_level).make_pool(
            self._n_jobs, self._options)

    def _abort_pool(self, pool: Any) -> None:
        # Threads cannot be stopped: they finish their current task (the
        # aborted call's other batches are skipped) and exit.
        pool.shutdown(wait=False)

    def get_nested_backend(self):
        # Threads inside threads oversubscribe: nested calls run in place
        # beyond the first level (as joblib's threading backend).
        level = (self.nesting_level or 0) + 1
        if level > 1:
            return SequentialBackend(nesting_level=level), None
        return FastThreadingBackend(nesting_level=level), None


def register_joblib_backend(name: str = "joblib_fast",
                            replace_builtin: bool = False) -> str:
    """Register joblib_fast's pools as backends of ``joblib.Parallel``.

    Parameters
    ----------
    name : str
        The name of joblib_fast's process backend for joblib
        (``joblib.parallel_config(backend=name)``).
    replace_builtin : bool
        Also run joblib's own names on joblib_fast: ``"loky"`` and
        ``"multiprocessing"`` on its processes, ``"threading"`` on its
        threads (so that libraries' ``prefer="threads"`` and
        ``require="sharedmem"`` paths use joblib_fast too).

    Returns
    -------
    str
        ``name``.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty string, got {name!r}")
    joblib.register_parallel_backend(name, FastProcessBackend)
    if replace_builtin:
        joblib.register_parallel_backend("loky", FastProcessBackend)
        joblib.register_parallel_backend("multiprocessing",
                                         FastProcessBackend)
        joblib.register_parallel_backend("threading", FastThreadingBackend)
    return name
