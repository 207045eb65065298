"""The dask backend: the core's batches run as ``dask.distributed`` futures.

Imported on first use of ``backend="dask"`` (``config._LAZY_BACKENDS``);
the only module of the package that imports dask.  Data flow::

    core (caller thread) --submit(batch)--> DaskPool: large arguments are
        swapped for scattered futures (_Scatter), the batch is pickled with
        references to them, client.submit(run_batch, blob, *data futures)
    future ends (dask's callback thread) --> DaskPool._on_done
        --> `_done` queue (thread-safe)
    core (caller thread) --wait(call, s)--> drain `_done` (blocking up to
        s), fetch the pickled results, call.complete(batch, ...)
    a batch cancelled because its scattered argument died with a worker:
        the argument is scattered again from the caller's copy and the
        batch resubmitted (at most MAX_RESUBMITS times)
    end of the call after an error, a timeout, Ctrl-C or a closed
    generator: every outstanding future of the call is cancelled

A worker that dies while running a batch is dask's business: the scheduler
runs the batch again elsewhere (up to ``distributed.scheduler.allowed-
failures`` times, then the future ends with ``KilledWorker``, which ends
the call).  Batches and results travel as pickles made by joblib_fast
(cloudpickle), so that a task that cannot be unpickled on the worker, or
a result that cannot be unpickled here, ends the call with an error naming
the batch, instead of a future that never completes.

Threads: everything runs in the caller thread except ``_on_done`` (dask's
callback thread), which only puts on the ``_done`` queue.
"""
from __future__ import annotations

import contextlib
import functools
import io
import itertools
import pickle
import queue
import time
import uuid
from collections.abc import Iterable
from typing import Any, Callable

import cloudpickle

from .. import _context
from .base import ParallelBackendBase
from .native import CallInput, CallOptions, PoolProvider

try:
    import distributed
    from dask.base import tokenize
    from dask.sizeof import sizeof
except ImportError:  # reported by DaskDistributedBackend()
    distributed = None

# Seconds an auto-sized batch lasts on dask.  A batch costs a few ms of
# scheduler and network round trips (joblib aims at 0.2-1 s per batch).
# `python benchmarks/bench.py --only dask`, one run each (noisy), times
# joblib's dask backend over ours for trivial x100 / no-op x10,000 /
# py1ms x400: 0.02 s: 5.5x / 7.2x / 1.23x; 0.05 s: 3.7x / 5.9x / 1.65x;
# 0.2 s: 3.5x / 4.0x / 1.59x.  0.05 keeps the fine-grained cases fast
# without giving up the 1 ms one.
DASK_TARGET_BATCH_SECONDS = 0.05
# Arguments larger than this (dask.sizeof) are scattered once per call
# instead of being pickled into every batch that uses them (joblib: 1 kB).
SCATTER_MIN_BYTES = 1000
# Containers (tuple, list, dict arguments) longer than this are looked at
# as a whole, not item by item (a long list is data, not a bundle of args).
MAX_INSPECTED_ITEMS = 32
# Times one batch is resubmitted after losing a scattered argument.
MAX_RESUBMITS = 3
# Seconds the caller waits for the bytes of a finished batch.
FETCH_SECONDS = 20.0
# Every this many seconds the caller looks at the status of its futures
# (local attributes, no network) in case a callback never came.
SWEEP_SECONDS = 1.0
# Seconds an ended future may wait for its callback before the sweep
# handles it.
CALLBACK_GRACE = 2.0

# Never worth scattering (checked before dask.sizeof, for speed).
_SMALL_TYPES = frozenset({int, float, bool, complex, type(None), range,
                          slice})

# client=_LAZY: the client is looked up when first needed.
_LAZY = object()

_CLIENT_MISSING = (
    "To use Joblib with Dask first create a Dask Client"
    "\n\n"
    "    from dask.distributed import Client\n"
    "    client = Client()\n"
    "or\n"
    "    client = Client('scheduler-address:8786')")


# ---------------------------------------------------------- worker side


class _Persistent(pickle.Unpickler):
    def __init__(self, blob: bytes, data: tuple) -> None:
        super().__init__(io.BytesIO(blob))
        self.data = data

    def persistent_load(self, pid: int) -> Any:
        return self.data[pid]


_WORKER_BACKENDS: dict[int, ParallelBackendBase] = {}


def _worker_config(level: int) -> dict[str, Any]:
    """The configuration a batch runs under on a dask worker: nested
    ``Parallel`` calls use this cluster (through the worker's client)."""
    backend = _WORKER_BACKENDS.get(level)
    if backend is None:
        backend = DaskDistributedBackend.nested(level)
        _WORKER_BACKENDS[level] = backend
    config = dict(_context.DEFAULT_CONFIG)
    config["backend"] = backend
    config["n_jobs"] = -1
    return config


def run_batch(blob: bytes, level: int, first: int, *data: Any) -> bytes:
    """Run one batch on a dask worker; its results, pickled, and the
    seconds it took.  ``data``: the scattered arguments the batch uses."""
    try:
        tasks = _Persistent(blob, data).load()
    except BaseException as exc:
        raise RuntimeError(
            f"the batch of tasks {first}.. could not be unpickled on dask "
            f"worker {_worker_address()}: {type(exc).__name__}: {exc}"
        ) from exc
    t0 = time.perf_counter()
    with _context.nested_config(_worker_config(level)):
        results = [func(*args, **kwargs) for func, args, kwargs in tasks]
    duration = time.perf_counter() - t0
    try:
        return cloudpickle.dumps((results, duration), protocol=5)
    except BaseException as exc:
        raise RuntimeError(
            f"the results of tasks {first}..{first + len(tasks) - 1} could "
            f"not be pickled on dask worker {_worker_address()}: "
            f"{type(exc).__name__}: {exc}") from exc


def _worker_address() -> str:
    try:
        return distributed.get_worker().address
    except ValueError:
        return "?"


def _in_worker_task() -> bool:
    try:
        distributed.get_worker()
    except ValueError:
        return False
    return True


# ---------------------------------------------------------- caller side


class _Data:
    """One scattered object (caller thread only)."""

    __slots__ = ("obj", "future", "token", "uses", "replicated", "serial")

    def __init__(self, obj: Any, future: Any, token: str | None) -> None:
        self.obj = obj          # the caller's copy: kept for re-scattering
        self.future = future
        self.token = token
        self.uses = 0
        self.replicated = False
        self.serial = -1        # last call that used it


class _Scatter:
    """Large arguments scattered once (caller thread only).

    ``fixed``: the backend's ``scatter=`` objects (broadcast once per
    backend).  Automatic ones are scattered once per call (by identity),
    and kept for the next calls of a ``with Parallel(...)`` block while
    their content (``dask.base.tokenize``) is unchanged.
    """

    def __init__(self, client: Any, fixed: dict[int, _Data]) -> None:
        self.client = client
        self.fixed = fixed
        self.auto: dict[int, _Data] = {}
        self.serial = 0
        self.n_workers = 1
        self.n_scattered = 0    # scatter calls made (for tests)

    def begin_call(self, serial: int, n_workers: int) -> None:
        self.serial = serial
        self.n_workers = max(n_workers, 1)

    def clear(self) -> None:
        self.auto = {}

    def lookup(self, obj: Any) -> _Data | None:
        """The scattered copy of ``obj``, scattering it if it is large."""
        if type(obj) in _SMALL_TYPES:
            return None
        key = id(obj)
        data = self.fixed.get(key)
        if data is not None and data.obj is obj:
            return data
        data = self.auto.get(key)
        if data is not None and data.obj is obj:
            if data.serial == self.serial:
                return data
            # A later call of a `with` block: reuse it if unchanged.
            if data.token is not None and _token(obj) == data.token:
                data.serial = self.serial
                data.uses = 0
                return data
        if isinstance(obj, type) or sizeof(obj) <= SCATTER_MIN_BYTES:
            return None
        data = _Data(obj, self._scatter(obj), _token(obj))
        data.serial = self.serial
        self.auto[key] = data
        return data

    def _scatter(self, obj: Any, broadcast: bool = False) -> Any:
        self.n_scattered += 1
        # direct: the bytes go to the workers, not through the scheduler.
        # hash=False: nested scatters with hashed keys can be cancelled by
        # the scheduler (dask/distributed#3703, which joblib works around
        # the same way).
        try:
            [future] = self.client.scatter([obj], direct=True, hash=False,
                                           broadcast=broadcast)
        except Exception as exc:
            raise RuntimeError(
                f"a {type(obj).__name__} argument (scattered, being larger "
                f"than {SCATTER_MIN_BYTES} bytes) could not be sent to the "
                f"dask workers: {type(exc).__name__}: {exc}") from exc
        return future

    def use(self, data: _Data, n_tasks: int) -> None:
        """Count ``n_tasks`` more tasks using ``data``; once as many use
        it as there are workers, copy it to every worker so that tasks
        can run anywhere (dask would otherwise keep them near the data)."""
        data.uses += n_tasks
        if data.replicated or data.uses < self.n_workers \
                or self.n_workers < 2:
            return
        data.replicated = True
        with contextlib.suppress(Exception):
            self.client.replicate([data.future])

    def rescatter(self, data: _Data) -> None:
        """Scatter ``data`` again from the caller's copy (its workers died)."""
        broadcast = data.replicated or data in self.fixed.values()
        data.future = self._scatter(data.obj, broadcast=broadcast)


def _token(obj: Any) -> str | None:
    try:
        return tokenize(obj)
    except Exception:  # noqa: BLE001 - no token: scattered again next call
        return None


class _BatchPickler(cloudpickle.CloudPickler):
    """Pickles a batch, leaving scattered objects as references."""

    def __init__(self, file: Any, refs: dict[int, int]) -> None:
        super().__init__(file, protocol=5)
        self.refs = refs

    def persistent_id(self, obj: Any) -> int | None:
        return self.refs.get(id(obj))


class _Job:
    """A submitted batch (caller thread only)."""

    __slots__ = ("batch", "size", "future", "data", "attempt", "submitted",
                 "ended_at")

    def __init__(self, batch: Any) -> None:
        self.batch = batch
        self.size = len(batch.tasks)
        self.future: Any = None
        self.data: list[_Data] = []
        self.attempt = 0
        self.submitted = time.monotonic()
        self.ended_at = 0.0     # when the sweep first saw it ended

    def describe(self) -> str:
        start = self.batch.start
        return f"tasks {start}..{start + self.size - 1}"


class DaskPool:
    """The core's pool on a dask cluster: one future per batch."""

    def __init__(self, backend: DaskDistributedBackend, n_jobs: int,
                 managed: bool) -> None:
        self.backend = backend
        self.managed = managed
        self.client = backend.client
        self.n_jobs = n_jobs
        self.closed = False
        self.timeout: float | None = None
        self.scatter = _Scatter(self.client, backend.data_futures)
        # (call serial, batch id, attempt): put by dask's callback thread,
        # taken by the caller thread.
        self._done: queue.SimpleQueue = queue.SimpleQueue()
        # The rest is touched by the caller thread only.
        self._serial = 0
        self._prefix = ""
        self._pending: dict[int, _Job] = {}
        self._head_since = 0.0
        self._next_sweep = 0.0
        self.n_resubmitted = 0      # batches resubmitted (for tests)
        self.keys: list[str] = []   # keys of the last call (for tests)

    # ---------------------------------------------------- per call

    def begin_call(self, timeout: float | None, n_workers: int) -> None:
        """Forget the previous call; late callbacks of it are ignored."""
        self._serial += 1
        self._prefix = f"joblib_fast-{uuid.uuid4().hex[:12]}"
        self._pending = {}
        self.keys = []
        self._head_since = time.monotonic()
        self._next_sweep = self._head_since + SWEEP_SECONDS
        self.timeout = timeout
        self.scatter.begin_call(self._serial, n_workers)

    # ------------------------------------------------- the core's API

    def submit(self, batch: Any) -> None:
        """Send one batch to the cluster (caller thread)."""
        job = _Job(batch)
        self._pending[batch.id] = job
        try:
            self._send(job)
        except BaseException:
            del self._pending[batch.id]
            raise

    def _send(self, job: _Job) -> None:
        tasks = job.batch.tasks
        refs: dict[int, int] = {}
        data: list[_Data] = []

        def swap(value: Any) -> bool:
            if id(value) in refs:
                return True
            found = self.scatter.lookup(value)
            if found is None:
                return False
            refs[id(value)] = len(data)
            data.append(found)
            return True

        # Top-level arguments, and one level inside tuples, lists and
        # dicts: a container holding a large object is pickled with a
        # reference to it, not scattered itself (it is often made per task).
        for _, args, kwargs in tasks:
            for value in itertools.chain(args, kwargs.values()):
                kind = type(value)
                items = value if kind is tuple or kind is list else \
                    value.values() if kind is dict else None
                if items is None or len(items) > MAX_INSPECTED_ITEMS or \
                        sum(map(swap, list(items))) == 0:
                    swap(value)
        for item in data:
            self.scatter.use(item, job.size)
        buffer = io.BytesIO()
        _BatchPickler(buffer, refs).dump(tasks)
        key = f"{self._prefix}-{job.batch.id}-{job.attempt}"
        job.data = data
        job.future = self.client.submit(
            run_batch, buffer.getvalue(),
            (self.backend.nesting_level or 0) + 1, job.batch.start,
            *[item.future for item in data], key=key, pure=False,
            **self.backend.submit_kwargs)
        self.keys.append(key)
        job.future.add_done_callback(functools.partial(
            self._on_done, self._serial, job.batch.id, job.attempt))

    def _on_done(self, serial: int, batch_id: int, attempt: int,
                 future: Any) -> None:
        """dask's callback thread: hand the ended future to the caller."""
        self._done.put((serial, batch_id, attempt))

    def wait(self, call: Any, seconds: float) -> None:
        """Deliver ended batches to ``call``, blocking up to ``seconds``
        (caller thread)."""
        try:
            item = self._done.get(timeout=seconds)
        except queue.Empty:
            item = None
        while item is not None:
            self._handle(call, *item)
            try:
                item = self._done.get_nowait()
            except queue.Empty:
                item = None
        now = time.monotonic()
        if self._pending and now >= self._next_sweep:
            self._next_sweep = now + SWEEP_SECONDS
            self._sweep(call, now)

    def check_timeout(self, call: Any, now: float) -> BaseException | None:
        """TimeoutError when the oldest unfinished batch has been waited
        for longer than ``timeout``."""
        if self.timeout is None or not self._pending:
            return None
        job = next(iter(self._pending.values()))
        waited = time.monotonic() - max(job.submitted, self._head_since)
        if waited <= self.timeout:
            return None
        return TimeoutError(
            f"a batch of Parallel ({job.describe()}) did not finish within "
            f"timeout={self.timeout:g} s on the dask cluster")

    def end_call(self, error: BaseException | None) -> None:
        """Cancel every outstanding future of the call; forget the
        arguments scattered for it (unless a ``with`` block keeps them)."""
        pending, self._pending = self._pending, {}
        self._serial += 1   # late callbacks of this call are ignored
        futures = [job.future for job in pending.values()
                   if job.future is not None]
        if futures:
            with contextlib.suppress(Exception):
                self.client.cancel(futures, reason="joblib_fast call ended")
        if not self.managed:
            self.scatter.clear()

    def shutdown(self, wait: bool = True) -> None:
        """Forget what is in flight and the scattered arguments (the
        cluster is the user's: nothing to stop)."""
        if self._pending:
            self.end_call(None)
        self.closed = True
        self.scatter.clear()

    # ---------------------------------------------------- internals

    def _handle(self, call: Any, serial: int, batch_id: int,
                attempt: int) -> None:
        if serial != self._serial:
            return
        job = self._pending.get(batch_id)
        if job is None or job.attempt != attempt:
            return
        status = job.future.status
        if status == "finished":
            self._take(batch_id)
            self._deliver(call, job)
        elif status == "error":
            self._take(batch_id)
            self._fail(call, job, self._remote_error(job))
        elif status == "cancelled":
            self._cancelled(call, job)
        # "pending" or "lost": dask computes it again; its callback fires
        # once more when it ends (and the sweep watches it).

    def _take(self, batch_id: int) -> None:
        if self._pending and batch_id == next(iter(self._pending)):
            self._head_since = time.monotonic()
        del self._pending[batch_id]

    def _deliver(self, call: Any, job: _Job) -> None:
        try:
            blob = job.future.result(timeout=FETCH_SECONDS)
        except BaseException as exc:  # noqa: BLE001 - re-raised by the caller
            if isinstance(exc, KeyboardInterrupt):
                raise
            self._fail(call, job, RuntimeError(
                f"the results of {job.describe()} could not be fetched from "
                f"the dask cluster: {type(exc).__name__}: {exc}"))
            return
        try:
            results, duration = pickle.loads(blob)
        except BaseException as exc:  # noqa: BLE001 - re-raised by the caller
            self._fail(call, job, RuntimeError(
                f"the results of {job.describe()} could not be unpickled in "
                f"the caller: {type(exc).__name__}: {exc}"))
            return
        self.backend.batch_completed(job.size, duration)
        call.complete(job.batch, results, duration)

    def _remote_error(self, job: _Job) -> BaseException:
        try:
            exc = job.future.exception(timeout=FETCH_SECONDS)
            tb = job.future.traceback(timeout=FETCH_SECONDS)
        except BaseException as err:  # noqa: BLE001
            return RuntimeError(
                f"the dask future of {job.describe()} ended in error, and "
                f"the error could not be fetched: {type(err).__name__}: "
                f"{err}")
        if exc is None:
            return RuntimeError(
                f"the dask future of {job.describe()} ended in error")
        if tb is not None:
            with contextlib.suppress(Exception):
                exc = exc.with_traceback(tb)
        return exc

    def _cancelled(self, call: Any, job: _Job) -> None:
        """Cancelled by someone else than this call: when a scattered
        argument was lost with its worker, scatter it again and resubmit;
        otherwise the call ends with the reason."""
        lost = [item for item in job.data
                if item.future.status != "finished"]
        if lost and job.attempt < MAX_RESUBMITS:
            for item in lost:
                if item.future.status != "finished":
                    self.scatter.rescatter(item)
            job.attempt += 1
            job.ended_at = 0.0
            self.n_resubmitted += 1
            self._send(job)
            return
        try:
            job.future.result(timeout=0.1)
            reason = "unknown reason"
        except BaseException as exc:  # noqa: BLE001
            if isinstance(exc, KeyboardInterrupt):
                raise
            reason = f"{type(exc).__name__}: {exc}"
        self._take(job.batch.id)
        what = "its scattered arguments were lost " \
            f"{job.attempt + 1} times; " if lost else ""
        self._fail(call, job, RuntimeError(
            f"the dask future of {job.describe()} was cancelled ({what}"
            f"{reason})"))

    def _fail(self, call: Any, job: _Job, error: BaseException) -> None:
        call.complete(job.batch, None, 0.0, error, job.batch.start)

    def _sweep(self, call: Any, now: float) -> None:
        """Futures that ended without their callback reaching us within
        CALLBACK_GRACE, and a client closed under us, end the call."""
        if self.client.status not in ("running", "connecting", "newly-created"):
            job = next(iter(self._pending.values()))
            self._take(job.batch.id)
            self._fail(call, job, RuntimeError(
                f"the dask client was closed ({self.client.status}) while "
                f"{len(self._pending) + 1} batches of this call were running"))
            return
        for batch_id, job in list(self._pending.items()):
            if job.future.status in ("pending", "lost"):
                job.ended_at = 0.0
                continue
            if job.ended_at == 0.0:
                job.ended_at = now
            elif now - job.ended_at >= CALLBACK_GRACE:
                self._handle(call, self._serial, batch_id, job.attempt)


# ------------------------------------------------------------- backend


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
        if distributed is None:
            raise ValueError(
                "You are trying to use 'dask' as a joblib parallel backend "
                "but dask is not installed. Please install dask to fix this "
                "error (pip install 'joblib_fast[dask]').")
        if scatter is not None and not isinstance(scatter, (list, tuple)):
            raise TypeError(
                f"scatter must be a list/tuple, got `{type(scatter).__name__}`")
        if client is None and scheduler_host:
            client = distributed.Client(scheduler_host, loop=loop,
                                        set_as_default=False)
        self._client = client
        self.wait_for_workers_timeout = wait_for_workers_timeout
        self.submit_kwargs = submit_kwargs
        self.data_futures: dict[int, _Data] = {}
        if client is _LAZY:
            self._client = None     # the worker's client, when first used
        elif client is None:
            self._client = self._current_client()
        if scatter:
            # Kept alive here so that their ids stay theirs.
            futures = self.client.scatter(list(scatter), broadcast=True,
                                          direct=True, hash=False)
            for obj, future in zip(scatter, futures):
                data = _Data(obj, future, None)
                data.replicated = True
                self.data_futures[id(obj)] = data

    @classmethod
    def nested(cls, nesting_level: int) -> DaskDistributedBackend:
        """The backend of ``Parallel`` calls made by tasks on a worker: the
        worker's client, connected when first used."""
        return cls(client=_LAZY, nesting_level=nesting_level)

    @staticmethod
    def _current_client() -> Any:
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
        return (_nested_backend, (self.nesting_level or 0,))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    # ------------------------------------------------- joblib's hooks

    def effective_n_jobs(self, n_jobs: Any) -> int:
        """Every thread of the cluster (``n_jobs`` is ignored, as in
        joblib); waits ``wait_for_workers_timeout`` for a first worker."""
        n = sum(self.client.ncores().values())
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
        return sum(self.client.ncores().values())

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
        seceded = _in_worker_task()
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
        n_workers = len(self.client.ncores())
        pool.begin_call(options.timeout, n_workers)
        return CallInput(iterable, options.batch_size, on_result,
                         options.timeout)


DaskBackend = DaskDistributedBackend


def _nested_backend(level: int) -> DaskDistributedBackend:
    return DaskDistributedBackend.nested(level)


def _probe() -> None:
    """A no-op task: done once a worker is there."""
