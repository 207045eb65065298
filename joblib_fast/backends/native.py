"""The pool contract: what the call lifecycle (``joblib_fast._run``) needs
from a backend and from the pool it runs a call on.

The lowest module of ``backends`` (it imports nothing of the package).
Every backend that joblib_fast runs through its compiled core is a
:class:`PoolProvider`: joblib_fast's own backends (threads, processes, dask)
implement it directly; a user-registered joblib-style backend is wrapped in
one (``backends.user.UserBackendProvider``).  The lifecycle then sees one
interface::

    n_jobs = provider.configure_call(options)      # once per call
    pool   = provider.make_pool(n_jobs, options)   # or the kept one
    feed   = provider.prepare_input(pool, iterable, options, on_result)
    ...core Call over feed.source: pool.submit, pool.wait,
       pool.check_timeout...
    pool.end_call(error)                           # once per call
    pool.shutdown(wait)                            # unmanaged call / block end

Threads: every method is called by the thread that called ``Parallel``
(the caller thread), except where a method says otherwise.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Callable, Protocol, runtime_checkable


@dataclass(frozen=True)
class CallOptions:
    """The per-call settings of one ``Parallel`` instance, in one object.

    ``n_jobs`` is the value the user gave (not yet resolved); the other
    fields are already checked by ``Parallel``.
    """

    n_jobs: Any = None
    timeout: float | None = None
    batch_size: int = 0                # 0: automatic
    pre_dispatch: Any = "2 * n_jobs"
    temp_folder: str | None = None
    max_nbytes: int | None = 1 << 20   # None: no memmapping / shared results
    mmap_mode: str | None = "r"
    return_shared: bool = True
    managed: bool = False              # inside ``with Parallel(...)``
    prefer: str | None = None
    require: str | None = None
    verbose: int = 0
    # Keyword arguments the user passed to Parallel for the backend.
    backend_kwargs: tuple = ()
    parallel: Any = None               # the Parallel instance (for _print)


@dataclass
class CallInput:
    """What the core is fed for one call (see
    :meth:`PoolProvider.prepare_input`).

    ``chunked``: each item of ``source`` stands for a list of user tasks,
    each result is the list of their results (flattened by the lifecycle).
    ``counter``: what counts the user's tasks pulled so far (``n_tasks``,
    ``exhausted``) when it is not the core's ``Call`` (for progress).
    """

    source: Iterable
    batch_size: int
    on_result: Callable[[int, Any], Any] | None
    timeout: float | None
    chunked: bool = False
    counter: Any = None


@runtime_checkable
class Pool(Protocol):
    """Workers that run the core's batches for one call at a time."""

    #: effective number of workers
    n_jobs: int

    @property
    def closed(self) -> bool:
        """True once the pool cannot run another call (shut down, broken,
        or discarded after a failed call)."""

    def submit(self, batch: Any) -> None:
        """Run one batch; report it with ``batch.call.complete(...)`` (or,
        for in-process workers, ``Batch.run`` does it)."""

    def wait(self, call: Any, seconds: float) -> None:
        """Block up to ``seconds`` (GIL released) and deliver finished
        batches to ``call``."""

    def check_timeout(self, call: Any, now: float) -> BaseException | None:
        """The error to end the call with when a batch has run past the
        call's timeout, else None (``now``: CLOCK_MONOTONIC seconds, the
        clock of ``time.monotonic()``)."""

    def end_call(self, error: BaseException | None) -> None:
        """End of the call (once, also after an error): release per-call
        resources.  After an error the pool stops what still runs and
        may close itself (``closed`` becomes True); it does not wait for
        running tasks when ``errors.abandons_running_tasks(error)``
        (a timeout, Ctrl-C, a generator closed early)."""

    def shutdown(self, wait: bool = True) -> None:
        """Stop the workers; ``wait``: join them.  Idempotent."""


class PoolProvider:
    """Mixed into a ``ParallelBackendBase``: a backend that runs calls on a
    :class:`Pool` of its own.

    ``sequential`` providers never get a pool: their calls run in the
    caller.  ``configure_call`` returns the effective number of workers;
    1 makes the call run in the caller too.
    """

    sequential = False
    # A call whose effective n_jobs is 1 runs in the caller (no pool);
    # False for a backend whose single worker is elsewhere (dask).
    runs_one_job_inline = True

    @property
    def backend(self) -> Any:
        """The ``ParallelBackendBase`` whose hooks (``start_call``,
        ``stop_call``, ``terminate``, ``retrieval_context``) the lifecycle
        calls: the provider itself, for joblib_fast's own backends."""
        return self

    def configure_call(self, options: CallOptions) -> int:
        """``configure`` with what joblib passes; the effective n_jobs."""
        return self.configure(
            n_jobs=options.n_jobs, parallel=options.parallel,
            prefer=options.prefer, require=options.require,
            **dict(options.backend_kwargs))

    def make_pool(self, n_jobs: int, options: CallOptions) -> Pool:
        """A pool of ``n_jobs`` workers for a call (or a ``with`` block)."""
        raise NotImplementedError(
            f"{type(self).__name__} runs its calls in the caller")

    def prepare_input(self, pool: Pool, iterable: Iterable,
                      options: CallOptions,
                      on_result: Callable[[int, Any], Any] | None
                      ) -> CallInput:
        """What the core is fed for a call on ``pool`` (a provider may
        group tasks, force a batch size or drop an unsupported timeout)."""
        return CallInput(iterable, options.batch_size, on_result,
                         options.timeout)

    def native_threads_limit(self, n_jobs: int) -> int | None:
        """Threads each native pool (BLAS, OpenMP) of the caller's process
        may use while a call runs on ``n_jobs`` workers; None: no cap
        (workers that are not threads of this process)."""
        return None

    def reuses(self, pool: Pool, n_jobs: int) -> bool:
        """True when ``pool`` (kept by a ``with Parallel(...)`` block) can
        run the next call with ``n_jobs`` workers."""
        return not pool.closed and pool.n_jobs == n_jobs
