"""The core's pool on a dask cluster: one dask future per batch.

::

    core (caller thread) --submit(batch)--> DaskPool._send: scattered
        arguments found (data.Scatter), the batch pickled with references
        to them (pickling.dumps), client.submit(worker.run_batch, ...),
        and _watch scheduled on the client's event loop
    _watch (the client's event loop) waits for the future to end; a
        finished one has its pickled results fetched straight from the
        worker --> `_done` queue; any other end goes there as it is
    core (caller thread) --wait(call, s)--> drain `_done` (blocking up to
        s), unpickle the results, call.complete(batch, ...)

A coroutine on the event loop the client runs anyway, rather than
``Future.add_done_callback``: that one runs callbacks on a thread pool
distributed starts once per process and never stops, which outlived the
call and the client.

How each end of a future is handled (a call never hangs on one):

* finished: results fetched and unpickled here (an error naming the
  batch if they cannot be);
* error: the worker's exception, with its traceback (a task's error, a
  batch that could not be unpickled on the worker, ``KilledWorker`` once
  ``distributed.scheduler.allowed-failures`` workers died running it);
* cancelled by someone else: if a scattered argument was lost with its
  worker, it is scattered again from the caller's copy and the batch
  resubmitted (at most ``MAX_RESUBMITS`` times); otherwise an error with
  dask's reason;
* lost (its result died with a worker): dask computes it again and the
  watcher keeps waiting;
* no word from the watcher within ``CALLBACK_GRACE`` of an end, or the
  client closed: the sweep (every ``SWEEP_SECONDS``, local attributes
  only) handles it.

A worker dying while it runs a batch is dask's business: the scheduler runs
the batch elsewhere.  ``end_call`` cancels every outstanding future of the
call (first error, timeout, Ctrl-C, a closed generator).

Threads: everything runs in the caller thread except ``_watch`` (the
client's event loop), which only reads the future and puts on the
``_done`` queue (thread-safe).
"""
from __future__ import annotations

import contextlib
import pickle
import queue
import time
import uuid
from typing import Any

from .data import Scatter, ScatteredData
from .pickling import dumps, find_unpicklable, loads
from .worker import run_batch

# Times one batch is resubmitted after losing a scattered argument.
MAX_RESUBMITS = 3
# Seconds the caller waits for the bytes of a finished batch.
FETCH_SECONDS = 20.0
# In place of results not fetched yet (the caller fetches them).
NOT_FETCHED = object()
# Every this many seconds the caller looks at the status of its futures
# (local attributes, no network) in case a watcher never reported.
SWEEP_SECONDS = 1.0
# Seconds an ended future may wait for its watcher before the sweep
# handles it.
CALLBACK_GRACE = 2.0


def unpicklable(tasks: list, start: int,
                exc: BaseException) -> pickle.PicklingError:
    """The error for a batch that cannot be pickled, naming the task."""
    found = find_unpicklable(tasks)
    if found is not None:
        i, inner = found
        name = getattr(tasks[i][0], "__qualname__", repr(tasks[i][0]))
        return pickle.PicklingError(
            f"task {start + i} ({name}) cannot be pickled to send it to "
            f"the dask cluster: {type(inner).__name__}: {inner}")
    return pickle.PicklingError(f"a batch cannot be pickled: {exc}")


class Job:
    """A submitted batch (caller thread only)."""

    __slots__ = ("batch", "size", "future", "data", "attempt", "submitted",
                 "ended_at")

    def __init__(self, batch: Any) -> None:
        self.batch = batch
        self.size = len(batch.tasks)
        self.future: Any = None
        self.data: list[ScatteredData] = []
        self.attempt = 0
        self.submitted = time.monotonic()
        self.ended_at = 0.0     # when the sweep first saw it ended

    def describe(self) -> str:
        start = self.batch.start
        return f"tasks {start}..{start + self.size - 1}"


class DaskPool:
    """The core's pool on a dask cluster: one future per batch."""

    def __init__(self, backend: Any, n_jobs: int,
                 managed: bool) -> None:
        self.backend = backend
        self.managed = managed
        self.client = backend.client
        self.nested = backend.get_nested_backend()[0]
        self.submit_kwargs = backend.submit_kwargs
        # Talk to the workers directly (scatter, gather) unless the client
        # was made with direct_to_workers=False.
        self.direct = self.client.direct_to_workers is not False
        self.n_jobs = n_jobs
        self.closed = False
        self.timeout: float | None = None
        self.scatter = Scatter(self.client, backend.data_futures, managed)
        # (call serial, batch id, attempt, pickled results or NOT_FETCHED):
        # put by the client's event loop (_watch), taken by the caller
        # thread.
        self._done: queue.SimpleQueue = queue.SimpleQueue()
        # The rest is touched by the caller thread only.
        self._serial = 0
        self._call_id = ""
        self._pending: dict[int, Job] = {}
        self._head_since = 0.0
        self._next_sweep = 0.0
        self.n_resubmitted = 0      # batches resubmitted (for tests)

    # ---------------------------------------------------- per call

    def begin_call(self, timeout: float | None, n_workers: int) -> None:
        """Forget the previous call; late reports of it are ignored."""
        self._serial += 1
        self._call_id = uuid.uuid4().hex[:12]
        self._pending = {}
        self._head_since = time.monotonic()
        self._next_sweep = self._head_since + SWEEP_SECONDS
        self.timeout = timeout
        self.scatter.begin_call(self._serial, n_workers)

    # ------------------------------------------------- the core's API

    def submit(self, batch: Any) -> None:
        """Send one batch to the cluster (caller thread)."""
        job = Job(batch)
        self._pending[batch.id] = job
        try:
            self._send(job)
        except BaseException:
            del self._pending[batch.id]
            raise

    def _send(self, job: Job) -> None:
        tasks = job.batch.tasks
        refs, job.data = self.scatter.refs(tasks)
        try:
            blob = dumps(tasks, refs)
        except Exception as exc:
            raise unpicklable(tasks, job.batch.start, exc) from exc
        # The dashboard groups tasks by the part before the hex id.
        name = getattr(tasks[0][0], "__name__", "task").replace("-", "_")
        key = f"joblib_fast-{name}-{self._call_id}-{job.batch.id}-" \
            f"{job.attempt}"
        job.future = self.client.submit(
            run_batch, blob, self.nested, job.batch.start,
            *[item.future for item in job.data], key=key, pure=False,
            **self.submit_kwargs)
        self.client.loop.add_callback(
            self._watch, (self._serial, job.batch.id, job.attempt),
            job.future)

    async def _watch(self, key: tuple, future: Any) -> None:
        """The client's event loop: wait for ``future`` to end (a lost one
        is computed again: still waited for); fetch a finished one's
        pickled results straight from its worker; hand either to the
        caller, who looks at any other end itself.  Never raises.

        ``errors="skip"``: a failed future is not raised here.  Raising it
        would tie the exception dask keeps for the future to a traceback
        whose frames hold the future: a cycle that keeps the future, and
        its task on the scheduler, until the garbage collector runs (and
        such a lingering task makes dask place later ones as if they had
        no data to be near)."""
        blob = NOT_FETCHED
        try:
            out = await self.client.gather(
                [future], errors="skip", direct=self.direct,
                asynchronous=True)
            if out:
                blob = out[0]
        except BaseException as exc:  # noqa: BLE001 - see the docstring
            exc.__traceback__ = None    # no frame of ours kept (above)
        self._done.put((*key, blob))

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
        self._serial += 1   # late reports of this call are ignored
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

    def _handle(self, call: Any, serial: int, batch_id: int, attempt: int,
                blob: Any) -> None:
        if serial != self._serial:
            return
        job = self._pending.get(batch_id)
        if job is None or job.attempt != attempt:
            return
        status = job.future.status
        if status == "finished":
            self._take(batch_id)
            self._deliver(call, job, blob)
        elif status == "error":
            self._take(batch_id)
            self._fail(call, job, self._remote_error(job))
        elif status == "cancelled":
            self._cancelled(call, job)
        # "pending" or "lost": dask computes it again (a watcher that
        # gave up early is covered by the sweep).

    def _take(self, batch_id: int) -> None:
        if self._pending and batch_id == next(iter(self._pending)):
            self._head_since = time.monotonic()
        del self._pending[batch_id]

    def _deliver(self, call: Any, job: Job, blob: Any) -> None:
        try:
            if blob is NOT_FETCHED:
                blob = job.future.result(timeout=FETCH_SECONDS)
        except BaseException as exc:  # noqa: BLE001 - re-raised by the caller
            if isinstance(exc, KeyboardInterrupt):
                raise
            self._fail(call, job, RuntimeError(
                f"the results of {job.describe()} could not be fetched from "
                f"the dask cluster: {type(exc).__name__}: {exc}"))
            return
        try:
            results, duration = loads(blob)
        except BaseException as exc:  # noqa: BLE001 - re-raised by the caller
            self._fail(call, job, RuntimeError(
                f"the results of {job.describe()} could not be unpickled in "
                f"the caller: {type(exc).__name__}: {exc}"))
            return
        self.backend.batch_completed(job.size, duration)
        call.complete(job.batch, results, duration)

    def _remote_error(self, job: Job) -> BaseException:
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

    def _cancelled(self, call: Any, job: Job) -> None:
        """Cancelled by someone else than this call: when a scattered
        argument was lost with its worker, scatter it again and resubmit;
        otherwise the call ends with the reason."""
        lost = [item for item in job.data if item.lost]
        if lost and job.attempt < MAX_RESUBMITS:
            for item in lost:
                if item.lost:   # not already scattered again for another
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

    def _fail(self, call: Any, job: Job, error: BaseException) -> None:
        call.complete(job.batch, None, 0.0, error, job.batch.start)

    def _sweep(self, call: Any, now: float) -> None:
        """Futures that ended without their watcher reporting within
        CALLBACK_GRACE, and a client closed under us, end the call."""
        if self.client.status not in ("running", "connecting", "newly-created"):
            job = next(iter(self._pending.values()))
            self._take(job.batch.id)
            self._fail(call, job, RuntimeError(
                f"the dask client was closed ({self.client.status}) while "
                f"{len(self._pending) + 1} batches of this call were running"))
            return
        for batch_id, job in list(self._pending.items()):
            status = job.future.status
            if status in ("pending", "lost"):
                job.ended_at = 0.0
                continue
            # A finished one may have its results on the way (_watch).
            grace = FETCH_SECONDS if status == "finished" else CALLBACK_GRACE
            if job.ended_at == 0.0:
                job.ended_at = now
            elif now - job.ended_at >= grace:
                self._handle(call, self._serial, batch_id, job.attempt,
                             NOT_FETCHED)
