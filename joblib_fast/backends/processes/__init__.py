"""The process backend ("loky", alias "multiprocessing"; the default).

One module per concern:

- ``platform``: which OS mechanism each part below uses, chosen once;
- ``context``: start methods, and multiprocessing adjustments installed
  when the first pool starts;
- ``wire``: the messages between parent and worker, and their framing;
- ``shm``, ``tree``: shared-memory segments for results; process
  liveness, trees and kills;
- ``pickling``: the pickle/cloudpickle fallback and unpicklable-item
  diagnosis used on both sides;
- ``arrays``, ``arrays_in``, ``arrays_out``: NumPy arrays to workers
  (memmapped inputs, temp folders) and back (shared-memory results);
- ``pool``: worker handles and the pool that feeds them;
- ``registry``: the process-wide reusable pools;
- ``worker``: the worker main loop (imports nothing of the parent side).
"""
from __future__ import annotations

import pickle
import warnings
from numbers import Integral, Real
from typing import Any

from ..._args import memstr_to_bytes
from ..._context import resolve_n_jobs
from ...errors import RemoteTraceback, TaskFailedError, TerminatedWorkerError
from ..base import ParallelBackendBase, ThreadingBackend, worker_initializer
from ..native import CallInput, CallOptions, PoolProvider
from . import platform
from .arrays_in import ArrayExchange
from .context import DASK_DAEMONIC_WARNING, daemonic_warning, resolve_context
from .pickling import dumps_any
from .platform import MAX_WAIT_HANDLES
from .pool import ProcessLease, ProcessPool
from .registry import get_pool, reusable_pool_pids, shutdown_reusable_pools

__all__ = [
    "ProcessBackend",
    "ProcessLease",
    "ProcessPool",
    "RemoteTraceback",
    "TaskFailedError",
    "TerminatedWorkerError",
    "daemonic_warning",
    "get_pool",
    "resolve_context",
    "reusable_pool_pids",
    "shutdown_reusable_pools",
]

# Seconds an auto batch lasts on processes.  Each batch costs a pickle
# round trip through a pipe: longer batches pay fewer of them, shorter ones
# end a call sooner (its tail is at most one batch per worker) and balance
# uneven tasks better.  `python benchmarks/bench.py --only py1ms,uneven`
# checks it.
PROCESS_TARGET_BATCH_SECONDS = 0.01

# Resident-memory growth (bytes) past which a worker is replaced, by
# default.  Lower replaces workers whose tasks keep a legitimate cache (a
# new worker costs a start and the imports again); higher lets a leak grow
# further.  The same figure as loky's leak check.  The guard's own cost
# (one read of the resident size per batch) shows on `python
# benchmarks/bench.py --only noop_proc` with memory_growth_limit=None.
DEFAULT_MEMORY_GROWTH_LIMIT = 300 * 1024 ** 2


def worker_settings(kwargs: dict[str, Any]) -> tuple[int | None, int | None,
                                                     float | None]:
    """``(max_tasks_per_child, memory_growth_limit in bytes,
    idle_worker_timeout)`` from backend keyword arguments, checked."""
    tasks = kwargs.get("max_tasks_per_child")
    if tasks is not None and (isinstance(tasks, bool) or not isinstance(
            tasks, Integral) or tasks < 1):
        raise ValueError(
            "max_tasks_per_child must be a positive integer (tasks a worker "
            f"process runs before it is replaced) or None, got {tasks!r}")
    limit = kwargs.get("memory_growth_limit", DEFAULT_MEMORY_GROWTH_LIMIT)
    if limit is not None:
        limit = memstr_to_bytes(limit, "memory_growth_limit")
        if not limit > 0:
            raise ValueError(
                "memory_growth_limit must be a positive number of bytes, a "
                "string like '300M' or '2G', or None (no limit), got "
                f"{kwargs['memory_growth_limit']!r}")
        limit = int(limit)
    idle = kwargs.get("idle_worker_timeout")
    if idle is not None and (isinstance(idle, bool) or not isinstance(
            idle, Real) or not idle > 0):
        raise ValueError(
            "idle_worker_timeout must be a positive number of seconds or "
            f"None, got {idle!r}")
    return tasks, limit, idle


def cap_workers(n_jobs: int) -> int:
    """``n_jobs`` within the platform's most workers per pool
    (``platform.MAX_WORKERS``; Windows: the parent waits on two handles a
    worker, at most 63 at once), with a warning when it had to lower it."""
    limit = platform.MAX_WORKERS
    if limit is not None and n_jobs > limit:
        warnings.warn(
            f"n_jobs={n_jobs}: a process pool holds at most {limit} workers "
            f"on this platform (the parent waits on two handles per worker "
            f"and the system on at most {MAX_WAIT_HANDLES} at once); "
            f"using n_jobs={limit}", UserWarning, stacklevel=4)
        return limit
    return n_jobs


class ProcessBackend(PoolProvider, ParallelBackendBase):
    """Worker processes: for pure-Python CPU-bound work (the default)."""

    supports_retrieve_callback = True
    supports_inner_max_num_threads = True
    target_batch_duration = PROCESS_TARGET_BATCH_SECONDS
    backend_keywords = frozenset({
        "context", "initializer", "initargs", "max_tasks_per_child",
        "memory_growth_limit", "idle_worker_timeout"})

    def __init__(self, nesting_level: int | None = None,
                 inner_max_num_threads: int | None = None,
                 context: Any = None, **backend_kwargs: Any) -> None:
        super().__init__(nesting_level=nesting_level,
                         inner_max_num_threads=inner_max_num_threads,
                         **backend_kwargs)
        worker_settings(backend_kwargs)
        self.context = context

    def effective_n_jobs(self, n_jobs):
        """``n_jobs`` resolved; 1 (with joblib's warning, in its words:
        code filters on them) where this process must not start workers:
        in a daemonic process (multiprocessing forbids it children) and
        inside a worker of another call (processes there would
        oversubscribe the machine).  Every use of the backend (a call, a
        ``with`` block, ``effective_n_jobs()``) resolves n_jobs here;
        joblib's Parallel on our processes (``FastProcessBackend``) asks
        :func:`.context.daemonic_warning` the same question."""
        if n_jobs is None:
            return cap_workers(resolve_n_jobs(n_jobs))
        reason = daemonic_warning()
        if self.nesting_level and reason is not DASK_DAEMONIC_WARNING:
            # A worker of ours (daemonic too) or of another backend: the
            # nesting is the reason to give.
            where = "" if self.in_main_thread() else " below threads"
            reason = ("Multiprocessing-backed parallel loops cannot be "
                      f"nested{where}, setting n_jobs=1")
        if reason is not None:
            if n_jobs != 1:
                warnings.warn(reason, UserWarning, stacklevel=3)
            return 1
        return cap_workers(resolve_n_jobs(n_jobs))

    def configure(self, n_jobs=1, parallel=None, prefer=None, require=None,
                  context=None, **backend_kwargs):
        self.parallel = parallel
        if context is not None:
            self.context = context
        return self.effective_n_jobs(n_jobs)

    def make_pool(self, n_jobs: int, options: CallOptions) -> ProcessLease:
        """A pool leased for one call or ``with`` block, with the arrays
        settings of ``Parallel`` (temp_folder, max_nbytes, mmap_mode,
        return_shared)."""
        context = resolve_context(self.context)
        arrays = ArrayExchange(
            max_nbytes=options.max_nbytes,
            mmap_mode=options.mmap_mode,
            temp_folder=options.temp_folder,
            return_shared=options.return_shared)
        initializer, initargs = worker_initializer(self, options)
        max_tasks, memory_limit, idle_timeout = worker_settings(
            self._backend_settings(options))
        blob = None
        if initializer is not None:
            # By value when defined in __main__ (spawned workers lack it).
            try:
                blob = dumps_any((initializer, initargs), refuse_main=True)[0]
            except Exception as exc:  # noqa: BLE001 - any pickling failure
                raise pickle.PicklingError(
                    f"initializer={initializer!r} with initargs cannot be "
                    "pickled to send them to the worker processes: "
                    f"{type(exc).__name__}: {exc}") from exc
        pool = get_pool(n_jobs, context, self._prepare_worker_env(n_jobs),
                        arrays.temp_folder, initializer=blob,
                        memory_limit=memory_limit, idle_timeout=idle_timeout)
        pool.lease(arrays, max_tasks)
        return ProcessLease(pool, n_jobs)

    def _backend_settings(self, options: CallOptions) -> dict[str, Any]:
        """The backend keywords of parallel_config, then of Parallel."""
        kwargs = dict(self.backend_kwargs or {})
        kwargs.update(options.backend_kwargs)
        return kwargs

    def prepare_input(self, pool, iterable, options, on_result) -> CallInput:
        # A process worker is timed per batch: one task per batch.
        batch_size = 1 if options.timeout is not None else options.batch_size
        max_tasks = worker_settings(self._backend_settings(options))[0]
        if max_tasks is not None:
            # A worker is replaced between batches only: no batch may hold
            # more tasks than a worker may run (auto batches: one task).
            batch_size = min(batch_size or 1, max_tasks)
        return CallInput(iterable, batch_size, on_result, options.timeout)

    def get_nested_backend(self):
        level = (self.nesting_level or 0) + 1
        return ThreadingBackend(nesting_level=level), None
