"""ParallelBackendBase (the backend contract joblib documents), and the two
backends that need no machinery of their own: sequential and threading.

A backend written for ``joblib.parallel.ParallelBackendBase`` is written
against these attribute and method names; ours keep them.  joblib_fast's own
pools implement the contract of :mod:`joblib_fast.backends.native`.
"""
from __future__ import annotations

import contextlib
import functools
import os
import threading
import warnings
from abc import ABCMeta, abstractmethod
from typing import Any, Callable

from .. import _cpu, _native_threads
from .._context import (
    N_JOBS_ZERO,
    enter_worker,
    nested_backend_config,
    resolve_n_jobs,
)
from .._core import ThreadPool
from .native import CallOptions, PoolProvider

# Environment variables that size the thread pools of BLAS/OpenMP libraries
# inside workers (the same set joblib caps).
MAX_NUM_THREADS_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMBA_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


class ParallelBackendBase(metaclass=ABCMeta):
    """Base class of every backend (joblib's documented contract)."""

    default_n_jobs = 1
    supports_inner_max_num_threads = False
    supports_retrieve_callback = False
    supports_sharedmem = False
    uses_threads = False
    nesting_level: int | None = None
    # The keyword arguments the backend was made with (set by __init__;
    # None for a subclass whose __init__ does not call ours).
    backend_kwargs: dict[str, Any] | None = None
    # Seconds an auto-sized batch should last on this backend.
    target_batch_duration = 0.002
    # The backend keyword arguments this backend documents (given to
    # parallel_config(backend=name, ...) or to Parallel(...)): any other
    # is a TypeError naming it (check_backend_keywords).  None accepts
    # anything, as joblib does: a user's backend decides for itself.
    backend_keywords: frozenset[str] | None = None
    # joblib exposes these on the class; third-party backends use them.
    MAX_NUM_THREADS_VARS = MAX_NUM_THREADS_VARS
    TBB_ENABLE_IPC_VAR = "ENABLE_IPC"

    @property
    def supports_return_generator(self) -> bool:
        return self.supports_retrieve_callback

    @property
    def supports_timeout(self) -> bool:
        return self.supports_retrieve_callback

    def __init__(self, nesting_level: int | None = None,
                 inner_max_num_threads: int | None = None,
                 **backend_kwargs: Any) -> None:
        super().__init__()  # cooperative, for mixins listed before us
        check_backend_keywords(self, backend_kwargs)
        self.nesting_level = nesting_level
        self.inner_max_num_threads = inner_max_num_threads
        self.backend_kwargs = backend_kwargs
        self.parallel = None

    @abstractmethod
    def effective_n_jobs(self, n_jobs: int) -> int:
        """How many workers really run at once for ``n_jobs``."""

    def apply_async(self, func, callback=None):
        raise NotImplementedError("Implement `submit` instead.")

    def submit(self, func, callback=None):
        """Schedule ``func()``; return a future-like object."""
        return self.apply_async(func, callback)

    def retrieve_result_callback(self, out):
        """Turn what ``submit``'s callback receives into the result."""
        return out

    def retrieve_result(self, out, timeout=None):
        """Wait for and return the result of what ``submit`` returned."""
        if self.supports_timeout:
            return out.get(timeout=timeout)
        return out.get()

    def configure(self, n_jobs: int = 1, parallel=None, prefer=None,
                  require=None, **backend_kwargs: Any) -> int:
        """Prepare to run with ``n_jobs``; return the effective count."""
        self.parallel = parallel
        return self.effective_n_jobs(n_jobs)

    def start_call(self) -> None:
        """Called before the tasks of one Parallel call are dispatched."""

    def stop_call(self) -> None:
        """Called after the last result of one Parallel call."""

    def terminate(self) -> None:
        """Release the workers (end of a call, or of a ``with`` block)."""

    def compute_batch_size(self) -> int:
        """Batch size for ``batch_size='auto'`` (1 unless overridden)."""
        return 1

    def batch_completed(self, batch_size: int, duration: float) -> None:
        """Told the size and duration of each finished batch."""

    def get_exceptions(self):
        return []

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """Stop all work now; if ``ensure_ready``, be usable again after."""
        self.terminate()

    def get_nested_backend(self):
        """Backend (and n_jobs) for a Parallel created inside a task."""
        level = (self.nesting_level or 0) + 1
        if level > 1:
            return SequentialBackend(nesting_level=level), None
        return ThreadingBackend(nesting_level=level), None

    def retrieval_context(self):
        return contextlib.nullcontext()

    def _prepare_worker_env(self, n_jobs: int) -> dict:
        """Environment that caps BLAS/OpenMP threads in each worker.

        ``inner_max_num_threads`` when set; otherwise
        ``max(cpu_count() // n_jobs, 1)`` unless the variable is already set
        in this process's environment.
        """
        explicit = self.inner_max_num_threads
        default = max(_cpu.cpu_count() // max(n_jobs, 1), 1)
        env = {}
        for var in self.MAX_NUM_THREADS_VARS:
            if explicit is None:
                env[var] = os.environ.get(var, str(default))
            else:
                env[var] = str(explicit)
        if self.TBB_ENABLE_IPC_VAR not in os.environ:
            # TBB schedulers of several workers coordinate through IPC.
            env[self.TBB_ENABLE_IPC_VAR] = "1"
        return env

    @staticmethod
    def in_main_thread() -> bool:
        return threading.current_thread() is threading.main_thread()

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def check_backend_keywords(backend: ParallelBackendBase,
                           kwargs: dict[str, Any],
                           where: str = "the backend's parameters, as "
                           "given to parallel_config") -> None:
    """TypeError naming the keyword arguments in ``kwargs`` that
    ``backend`` does not document (its ``backend_keywords``)."""
    accepted = backend.backend_keywords
    if accepted is None:
        return
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        name = type(backend).__name__
        raise TypeError(
            f"{name} got unexpected keyword argument"
            f"{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(map(repr, unknown))} (in {where}); "
            + (f"it accepts {', '.join(sorted(accepted))}" if accepted
               else "it accepts none"))


def warn_timeout_unsupported(backend_name: str, timeout: float) -> None:
    """joblib's warning (its exact words: code filters on them)."""
    warnings.warn(
        f"The backend class {backend_name!r} does not support timeout. "
        f"You have set 'timeout={timeout}' in Parallel but the 'timeout' "
        "parameter will not be used.", UserWarning, stacklevel=5)


def worker_initializer(backend: ParallelBackendBase, options: CallOptions
                       ) -> tuple[Callable[..., Any] | None, tuple]:
    """The ``initializer`` and ``initargs`` each worker runs once when it
    starts (joblib's keyword arguments): those given to ``Parallel`` win
    over those of the backend (``parallel_config(initializer=...)``)."""
    kwargs = dict(backend.backend_kwargs or {})
    kwargs.update(options.backend_kwargs)
    initializer = kwargs.get("initializer")
    initargs = kwargs.get("initargs") or ()
    if initializer is not None and not callable(initializer):
        raise TypeError(
            f"initializer must be a callable or None, got {initializer!r}")
    if not isinstance(initargs, (tuple, list)):
        raise TypeError(f"initargs must be a tuple, got {initargs!r}")
    return initializer, tuple(initargs)


def _start_thread(backend: ParallelBackendBase, n_jobs: int,
                  initializer: Callable[..., Any] | None,
                  initargs: tuple) -> None:
    """First thing a worker thread runs (in that thread)."""
    enter_worker(backend, n_jobs)
    if initializer is not None:
        initializer(*initargs)


class SequentialBackend(PoolProvider, ParallelBackendBase):
    """Runs every task in the calling thread (``n_jobs=1``, debugging)."""

    uses_threads = True
    supports_sharedmem = True
    supports_timeout = False  # type: ignore[assignment]
    supports_return_generator = True  # type: ignore[assignment]
    sequential = True
    backend_keywords = frozenset()

    def effective_n_jobs(self, n_jobs):
        if n_jobs == 0:
            raise ValueError(N_JOBS_ZERO)
        return 1

    def get_nested_backend(self):
        # The one upward import of the package (see joblib_fast/__init__):
        # "whatever backend is active here" is known by config only.
        from ..config import get_active_backend
        return get_active_backend()


# Seconds an auto batch lasts on threads.  Each batch the caller pulls
# holds the GIL for the whole pull, and a worker leaving a GIL-free kernel
# then sleeps until it ends: fewer, longer batches mean fewer of those
# waits; shorter ones mean shorter waits, a shorter tail, and the caller's
# choice between the team and running alone (CallerHelp) made sooner.
# `python benchmarks/bench.py --only gil_sweep` with
# ThreadingBackend.target_batch_duration set to each candidate checks it.
THREAD_TARGET_BATCH_SECONDS = 0.004


class ThreadingBackend(PoolProvider, ParallelBackendBase):
    """Worker threads; for code that releases the GIL (Cython, NumPy, I/O)."""

    supports_retrieve_callback = True
    # Caps the native pools of this process while its threads run tasks.
    supports_inner_max_num_threads = True
    uses_threads = True
    supports_sharedmem = True
    target_batch_duration = THREAD_TARGET_BATCH_SECONDS
    backend_keywords = frozenset({"initializer", "initargs"})

    def effective_n_jobs(self, n_jobs):
        return resolve_n_jobs(n_jobs)

    def native_threads_limit(self, n_jobs: int) -> int | None:
        # n_jobs threads each running a BLAS call of cpu_count() threads
        # would oversubscribe the cores.
        if n_jobs <= 1 or not _native_threads.pools_possible():
            return None
        return _native_threads.inner_limit(n_jobs, self.inner_max_num_threads)

    def make_pool(self, n_jobs: int, options: CallOptions) -> ThreadPool:
        # A lease on the process-wide threads that parallel_for uses too:
        # at most n_jobs of them run this pool's batches at once; each runs
        # the user's initializer before its first batch of this pool.
        initializer, initargs = worker_initializer(self, options)
        return ThreadPool(n_jobs, shared=True,
                          initializer=functools.partial(
                              _start_thread, self, n_jobs, initializer,
                              initargs),
                          caller_config=None if initializer is not None
                          else nested_backend_config(self))

    def get_nested_backend(self):
        # Threads inside threads oversubscribe: nested calls run in place.
        level = (self.nesting_level or 0) + 1
        return SequentialBackend(nesting_level=level), None
