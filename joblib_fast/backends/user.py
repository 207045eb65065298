"""Running a user-registered ``ParallelBackendBase`` through the core.

A backend written for joblib receives each batch as one callable taking no
argument (:class:`BatchCall`), through ``submit(func, callback)`` (or the
older ``apply_async``, which the base ``submit`` calls), and gives back the
list of results either in the callback (``supports_retrieve_callback``:
``retrieve_result_callback(out)`` runs in the backend's callback thread) or
through ``retrieve_result(future)`` in the caller's thread.

:class:`UserPool` is the pool the compiled core feeds for such a backend::

    core (caller thread) --submit(batch)--> BatchCall --> backend.submit
    backend callback thread --> _on_done --> `_done` queue (thread-safe)
    core (caller thread) --wait(call, s)--> drain `_done`, retrieve,
        backend.batch_completed(size, seconds), call.complete(batch, ...)

:class:`UserBackendProvider` wraps the backend in the pool contract of
:mod:`.native`, so that ``joblib_fast._run`` runs its calls like any other:
``configure`` once per ``with Parallel(...)`` block (else per call),
``abort_everything(ensure_ready=managed)`` on an error or an early exit
(:meth:`UserPool.end_call`); ``start_call``/``stop_call`` and ``terminate``
come from the lifecycle, in the order joblib calls them.  When
``batch_size="auto"`` and the backend overrides ``compute_batch_size``,
batches have the sizes it asks for.
"""
from __future__ import annotations

import contextlib
import functools
import itertools
import queue
import time
import warnings
from collections.abc import Iterable
from typing import Any, Callable

from .. import _context
from .._core import Call, TaskError
from .base import ParallelBackendBase
from .native import CallInput, CallOptions, PoolProvider


# Marker of a task the core receives in place of a backend-sized chunk of
# user tasks (see _Chunker); UserPool unwraps it, nothing calls it.
def _chunk_marker(tasks):  # pragma: no cover - never called
    raise RuntimeError("a joblib_fast chunk was run as a task")


class BatchResults(list):
    """The results of a batch, with the seconds the worker spent on it."""

    duration: float = -1.0


class BatchCall:
    """One batch as the single no-argument callable a joblib backend runs.

    Picklable (for backends that ship it to other processes or hosts).
    While it runs, ``Parallel`` calls made by the tasks use the backend's
    nested backend, as in joblib.
    """

    def __init__(self, tasks: list[tuple], nested_config: dict[str, Any]):
        self.tasks = tasks
        self.nested_config = nested_config

    def __len__(self) -> int:
        return len(self.tasks)

    def __call__(self) -> BatchResults:
        t0 = time.perf_counter()
        with _context.nested_config(self.nested_config):
            out = BatchResults(
                [func(*args, **kwargs) for func, args, kwargs in self.tasks])
        out.duration = time.perf_counter() - t0
        return out

    def __repr__(self) -> str:
        return f"BatchCall(<{len(self.tasks)} tasks>)"


class _Job:
    """A submitted batch (caller thread only)."""

    __slots__ = ("batch", "chunk", "future", "size", "submitted")

    def __init__(self, batch: Any, size: int, chunk: bool) -> None:
        self.batch = batch
        self.size = size
        self.chunk = chunk
        self.submitted = time.monotonic()
        self.future: Any = None


_NOT_RETRIEVED = object()


class UserPool:
    """The core's pool for a backend that is not joblib_fast's own."""

    def __init__(self, backend: ParallelBackendBase, n_jobs: int,
                 managed: bool) -> None:
        self.backend = backend
        self.n_jobs = n_jobs
        self.managed = managed
        self.closed = False
        self.timeout: float | None = None
        self._in_callback = bool(backend.supports_retrieve_callback)
        # (call serial, batch id, result or _NOT_RETRIEVED, error); put by
        # the backend's callback threads, taken by the caller thread.
        self._done: queue.SimpleQueue = queue.SimpleQueue()
        # The rest is touched by the caller thread only.
        self._serial = 0
        self._pending: dict[int, _Job] = {}
        # When the oldest unfinished batch became the oldest: the timeout
        # counts from then (what the caller has been waiting for).
        self._head_since = 0.0

    # ---------------------------------------------------- per call

    def begin_call(self, timeout: float | None) -> None:
        """Forget the previous call; late callbacks of it are ignored."""
        self._serial += 1
        self._pending = {}
        self._head_since = time.monotonic()
        self.timeout = timeout

    @property
    def n_pending(self) -> int:
        return len(self._pending)

    # ------------------------------------------------- the core's API

    def submit(self, batch: Any) -> None:
        """Hand one batch to the backend (caller thread)."""
        tasks = batch.tasks
        chunk = len(tasks) == 1 and tasks[0][0] is _chunk_marker
        if chunk:
            tasks = tasks[0][1][0]
        job = _Job(batch, len(tasks), chunk)
        self._pending[batch.id] = job
        func = BatchCall(tasks, _context.nested_backend_config(self.backend))
        callback = functools.partial(self._on_done, self._serial, batch.id)
        job.future = self.backend.submit(func, callback=callback)

    def _on_done(self, serial: int, batch_id: int, *args: Any,
                 **kwargs: Any) -> None:
        """The backend's completion callback (any thread; never raises)."""
        if not self._in_callback:
            self._done.put((serial, batch_id, _NOT_RETRIEVED, None))
            return
        try:
            result = self.backend.retrieve_result_callback(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - re-raised by the caller
            self._done.put((serial, batch_id, None, exc))
        else:
            self._done.put((serial, batch_id, result, None))

    def wait(self, call: Call, seconds: float) -> None:
        """Deliver finished batches to ``call``, blocking up to ``seconds``
        (caller thread)."""
        delivered = False
        try:
            item = self._done.get(timeout=seconds)
        except queue.Empty:
            item = None
        while item is not None:
            delivered |= self._handle(call, item)
            try:
                item = self._done.get_nowait()
            except queue.Empty:
                item = None
        if not delivered and not self._in_callback and self._pending:
            self._poll(call)

    def check_timeout(self, call: Call, now: float) -> BaseException | None:
        """TimeoutError when the oldest unfinished batch has been waited
        for longer than ``timeout``."""
        if self.timeout is None or not self._pending:
            return None
        job = next(iter(self._pending.values()))
        waited = now - max(job.submitted, self._head_since)
        if waited <= self.timeout:
            return None
        return TimeoutError(
                f"a batch of Parallel (tasks {job.batch.start}.."
                f"{job.batch.start + job.size - 1}) did not finish within "
                f"timeout={self.timeout:g} s")

    def end_call(self, error: BaseException | None) -> None:
        """An error, or a generator closed early: cancel what runs (as
        joblib does); inside a ``with`` block the backend stays usable."""
        if error is not None or self._pending:
            with contextlib.suppress(Exception):
                self.backend.abort_everything(ensure_ready=self.managed)

    def shutdown(self, wait: bool = True) -> None:
        """Forget what is in flight; the backend's own resources are
        released by ``terminate`` (unmanaged call or end of the block)."""
        self.closed = True
        self._pending = {}

    # ---------------------------------------------------- internals

    def _handle(self, call: Call, item: tuple) -> bool:
        serial, batch_id, result, error = item
        if serial != self._serial:
            return False
        job = self._take(batch_id)
        if job is None:
            return False  # already retrieved by _poll
        if result is _NOT_RETRIEVED:
            result, error = self._retrieve(job)
        self._deliver(call, job, result, error)
        return True

    def _take(self, batch_id: int) -> _Job | None:
        """Remove a batch from the pending ones (None if already gone)."""
        if self._pending and batch_id == next(iter(self._pending)):
            self._head_since = time.monotonic()
        return self._pending.pop(batch_id, None)

    def _retrieve(self, job: _Job):
        try:
            return self.backend.retrieve_result(
                job.future, timeout=self.timeout), None
        except BaseException as exc:  # noqa: BLE001 - re-raised by the caller
            return None, exc

    def _poll(self, call: Call) -> None:
        """For backends that retrieve results in the caller and may not
        call the callback: collect what is ready; if nothing can say, wait
        for the oldest batch (as joblib does)."""
        for batch_id, job in list(self._pending.items()):
            ready = getattr(job.future, "ready", None) or getattr(
                job.future, "done", None)
            if ready is None:
                if batch_id == next(iter(self._pending)):
                    self._take(batch_id)
                    self._deliver(call, job, *self._retrieve(job))
                return
            if ready():
                self._take(batch_id)
                self._deliver(call, job, *self._retrieve(job))

    def _deliver(self, call: Call, job: _Job, result: Any,
                 error: BaseException | None) -> None:
        if error is None:
            try:
                results = list(result)
            except TypeError:
                results = None
            if results is None or len(results) != job.size:
                error = RuntimeError(
                    f"backend {type(self.backend).__name__} returned "
                    f"{result!r:.80} for a batch of {job.size} tasks; "
                    "expected the list the submitted callable returned")
        if error is not None:
            call.complete(job.batch, None, 0.0, error, job.batch.start)
            return
        elapsed = time.monotonic() - job.submitted
        self.backend.batch_completed(job.size, elapsed)
        duration = getattr(result, "duration", -1.0)
        if duration < 0:
            duration = elapsed
        call.complete(job.batch, [results] if job.chunk else results,
                      duration)


# ------------------------------------------------------------- batching


def _as_task(item: Any, index: int) -> tuple:
    """``(func, args, kwargs)`` from a ``delayed`` item, or TaskError."""
    if isinstance(item, tuple) and len(item) == 3 and callable(item[0]):
        func, args, kwargs = item
        try:
            return func, tuple(args), dict(kwargs or {})
        except (TypeError, ValueError):
            pass
    raise TaskError(
        "Parallel expects an iterable of delayed(func)(*args, **kwargs) "
        f"calls; item {index} is {type(item).__name__}: {item!r:.80}")


class _Chunker:
    """The user's tasks grouped in chunks of ``compute_batch_size()``
    (read by the core in the caller thread, one chunk per batch)."""

    def __init__(self, iterable: Iterable, backend: ParallelBackendBase):
        self.iterator = iter(iterable)
        self.backend = backend
        self.n_tasks = 0
        self.exhausted = False
        self.starts: list[int] = []

    def __iter__(self) -> _Chunker:
        return self

    def __next__(self) -> tuple:
        if self.exhausted:
            raise StopIteration
        try:
            size = max(1, int(self.backend.compute_batch_size()))
        except (TypeError, ValueError):
            size = 1
        items = list(itertools.islice(self.iterator, size))
        if len(items) < size:
            self.exhausted = True
        if not items:
            raise StopIteration
        tasks = [_as_task(item, self.n_tasks + k)
                 for k, item in enumerate(items)]
        self.starts.append(self.n_tasks)
        self.n_tasks += len(tasks)
        return (_chunk_marker, (tasks,), {})

    def on_result(self, on_result):
        """Turn the core's (chunk index, results) into per-task calls."""
        def chunk_done(index: int, values: list[Any]) -> None:
            start = self.starts[index]
            for k, value in enumerate(values):
                on_result(start + k, value)
        return chunk_done


def _overrides_batch_size(backend: ParallelBackendBase) -> bool:
    return type(backend).compute_batch_size is not \
        ParallelBackendBase.compute_batch_size


# ------------------------------------------------------------- provider


class UserBackendProvider(PoolProvider):
    """The pool contract for a user-registered joblib-style backend (the
    lifecycle calls the backend's own ``start_call``, ``stop_call``,
    ``terminate`` and ``retrieval_context`` itself)."""

    def __init__(self, backend: ParallelBackendBase) -> None:
        self._backend = backend
        self._pool: UserPool | None = None

    @property
    def backend(self) -> ParallelBackendBase:
        return self._backend

    def configure_call(self, options: CallOptions) -> int:
        """``backend.configure`` with the arguments joblib passes, once
        per ``with Parallel(...)`` block (like joblib), else per call."""
        pool = self._pool
        if options.managed and pool is not None and not pool.closed:
            return pool.n_jobs
        kwargs = dict(options.backend_kwargs)
        kwargs.update(prefer=options.prefer, require=options.require,
                      verbose=max(0, options.verbose - 50))
        n_jobs = self.backend.configure(n_jobs=options.n_jobs,
                                        parallel=options.parallel, **kwargs)
        if n_jobs is None:
            n_jobs = self.backend.effective_n_jobs(options.n_jobs)
        self._pool = UserPool(self.backend, int(n_jobs), options.managed)
        return self._pool.n_jobs

    def make_pool(self, n_jobs: int, options: CallOptions) -> UserPool:
        assert self._pool is not None, "configure_call comes first"
        return self._pool

    def reuses(self, pool: Any, n_jobs: int) -> bool:
        return pool is self._pool and not pool.closed

    def prepare_input(self, pool: Any, iterable: Iterable,
                      options: CallOptions,
                      on_result: Callable[[int, Any], Any] | None
                      ) -> CallInput:
        backend = self.backend
        timeout = options.timeout
        if timeout is not None and not backend.supports_timeout:
            warnings.warn(
                f"The backend class {type(backend).__name__!r} does not "
                f"support timeout; timeout={timeout} is not used.",
                stacklevel=5)
            timeout = None
        pool.begin_call(timeout)
        if options.batch_size or not _overrides_batch_size(backend):
            return CallInput(iterable, options.batch_size, on_result, timeout)
        chunker = _Chunker(iterable, backend)
        if on_result is not None:
            on_result = chunker.on_result(on_result)
        return CallInput(chunker, 1, on_result, timeout, chunked=True,
                         counter=chunker)
