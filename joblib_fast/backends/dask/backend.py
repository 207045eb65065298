"""The dask backend: ``DaskDistributedBackend`` (joblib's name and
arguments), a :class:`PoolProvider` whose pool is :class:`.pool.DaskPool`.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any, Callable

from ..base import ParallelBackendBase
from ..native import CallInput, CallOptions, PoolProvider
from .data import ScatteredData
from .pool import DaskPool
from .worker import in_worker_task

# Seconds an auto-sized batch lasts on dask.  A batch costs a few ms of
# scheduler and network round trips: longer batches pay fewer of them
# (joblib aims at 0.2-1 s), shorter ones spread a call over more workers
# and end it with a shorter tail.  `python benchmarks/bench.py --only dask`
# (trivial, no-op and 1 ms tasks against joblib's dask backend) checks it.
DASK_TARGET_BATCH_SECONDS = 0.05

# client=_LAZY: the client is looked up when first needed.
_LAZY = object()

_CLIENT_MISSING = (
    "To use Joblib with Dask first create a Dask Client"
    "\n\n"
    "    from dask.distributed import Client\n"
    "    client = Client()\n"
    "or\n"
    "    client = Client('scheduler-address:8786')")


class DaskDistributedBackend(PoolProvider, ParallelBackendBase):
    """Runs batches of tasks on a ``dask.distributed`` cluster.

    Parameters (joblib's)
    ---------------------
    scheduler_host : str, optional
        Address of a scheduler to connect a new client to.
    scatter : list or tuple, optional
        Objects sent once (to every worker) when the backend is created;
        tasks receive them without copying them again.
    client : distributed.Client, optional
        The client to use; default: ``scheduler_host``'s, else the current
        one (``distributed.get_client()``).
    loop : optional
        Event loop of the client made for ``scheduler_host``.
    wait_for_workers_timeout : float, default 10
        Seconds to wait for a first worker when the cluster has none.
    **submit_kwargs
        Passed to ``client.submit`` (``workers=``, ``resources=``,
        ``retries=``, ...).
    """

    supports_retrieve_callback = True
    default_n_jobs = -1
    target_batch_duration = DASK_TARGET_BATCH_SECONDS
    runs_one_job_inline = False

    def __init__(self, scheduler_host: str | None = None,
                 scatter: list | tuple | None = None, client: Any = None,
                 loop: Any = None, wait_for_workers_timeout: float = 10,
                 nesting_level: int | None = None, **submit_kwargs: Any):
        super().__init__(nesting_level=nesting_level)
        try:
            import distributed
        except ImportError:
            raise ValueError(
                "You are trying to use 'dask' as a joblib parallel backend "
                "but dask is not installed. Please install dask to fix this "
                "error (pip install 'joblib_fast[dask]').") from None
        if scatter is not None and not isinstance(scatter, (list, tuple)):
            raise TypeError(
                f"scatter must be a list/tuple, got `{type(scatter).__name__}`")
        if client is None and scheduler_host:
            client = distributed.Client(scheduler_host, loop=loop,
                                        set_as_default=False)
        self._client = client
        self.wait_for_workers_timeout = wait_for_workers_timeout
        self.submit_kwargs = submit_kwargs
        self.data_futures: dict[int, ScatteredData] = {}
        self.n_workers = 0      # as of the last effective_n_jobs
        if client is _LAZY:
            self._client = None     # the worker's client, when first used
        elif client is None:
            self._client = self._current_client()
        if scatter:
            # Kept alive here so that their ids stay theirs.
            futures = self.client.scatter(list(scatter), broadcast=True,
                                          direct=True, hash=False)
            for obj, future in zip(scatter, futures):
                self.data_futures[id(obj)] = ScatteredData(
                    obj, future, None, replicated=True)

    @staticmethod
    def _current_client() -> Any:
        import distributed
        try:
            return distributed.get_client()
        except ValueError as exc:
            raise ValueError(_CLIENT_MISSING) from exc

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = self._current_client()
        return self._client

    def __reduce__(self):
        # Sent with each batch as the backend of nested calls: on the
        # worker it is the worker's client (this one does not travel).
        return (nested_backend, (self.nesting_level or 0,))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    # ------------------------------------------------- joblib's hooks

    def effective_n_jobs(self, n_jobs: Any) -> int:
        """Every thread of the cluster (``n_jobs`` is ignored, as in
        joblib); waits ``wait_for_workers_timeout`` for a first worker."""
        import distributed
        n = self._count_threads()
        if n or not self.wait_for_workers_timeout:
            return n
        try:
            self.client.submit(_probe, pure=False).result(
                timeout=self.wait_for_workers_timeout)
        except (TimeoutError, distributed.TimeoutError) as exc:
            timeout = self.wait_for_workers_timeout
            raise TimeoutError(
                f"DaskDistributedBackend has no worker after {timeout} "
                "seconds. Make sure that workers are started and can "
                "properly connect to the scheduler and increase the "
                "joblib/dask connection timeout with:\n\n"
                "parallel_config(backend='dask', wait_for_workers_timeout="
                f"{max(10, 2 * timeout)})") from exc
        return self._count_threads()

    def _count_threads(self) -> int:
        ncores = self.client.ncores()
        self.n_workers = len(ncores)
        return sum(ncores.values())

    def configure(self, n_jobs: Any = -1, parallel: Any = None,
                  **backend_kwargs: Any) -> int:
        self.parallel = parallel
        n = self.effective_n_jobs(n_jobs)
        if n == 0:
            raise RuntimeError(f"{type(self).__name__} has no active worker.")
        return n

    def get_nested_backend(self):
        return DaskDistributedBackend(
            client=self.client,
            nesting_level=(self.nesting_level or 0) + 1), -1

    @contextlib.contextmanager
    def retrieval_context(self):
        """A task on a dask worker waiting for nested results leaves the
        worker's thread pool meanwhile (so the nested tasks can run)."""
        import distributed
        seceded = in_worker_task()
        if seceded:
            distributed.secede()
        try:
            yield
        finally:
            if seceded:
                distributed.rejoin()

    # ------------------------------------------------ pool contract

    def configure_call(self, options: CallOptions) -> int:
        return self.configure(n_jobs=options.n_jobs,
                              parallel=options.parallel)

    def make_pool(self, n_jobs: int, options: CallOptions) -> DaskPool:
        return DaskPool(self, n_jobs, options.managed)

    def reuses(self, pool: Any, n_jobs: int) -> bool:
        if pool.closed or not isinstance(pool, DaskPool):
            return False
        pool.n_jobs = n_jobs    # workers may come and go between calls
        return True

    def prepare_input(self, pool: Any, iterable: Iterable,
                      options: CallOptions,
                      on_result: Callable[[int, Any], Any] | None
                      ) -> CallInput:
        pool.begin_call(options.timeout, self.n_workers)
        return CallInput(iterable, options.batch_size, on_result,
                         options.timeout)


DaskBackend = DaskDistributedBackend

# The nested backends of this process (on a dask worker), by level.
_NESTED: dict[int, DaskDistributedBackend] = {}


def nested_backend(level: int) -> DaskDistributedBackend:
    """The backend of ``Parallel`` calls made by tasks on a dask worker:
    this cluster, through the worker's client (looked up when first used)."""
    backend = _NESTED.get(level)
    if backend is None:
        backend = _NESTED[level] = DaskDistributedBackend(
            client=_LAZY, nesting_level=level)
    return backend


def _probe() -> None:
    """A no-op task: done once a worker is there."""
