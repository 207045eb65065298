"""A joblib_fast pool driven by push, as joblib drives its backends.

joblib's Parallel cuts the tasks into batches (``BatchedCalls``: a
no-argument callable returning a list) and calls ``backend.submit(batch,
callback)`` from its own thread, then again from inside the callbacks.
joblib_fast's pools are driven by one thread each (see ``backends.native``).
:class:`Dispatcher` joins the two::

    any thread --submit--> Job in `inbox` (lock), dispatcher woken
    dispatcher thread:  call.push([(batch, (), {})])  --> pool.submit
                        pool.wait(call, slice)        --> call.complete
                        call.take_done()              --> job outcomes
                        job callbacks, outside every joblib_fast lock
                        (joblib's callback submits the next batch: it
                        lands in `inbox` and is sent on the next turn)

Every submitted batch gets its callback exactly once, from the dispatcher
thread: with its results, its error, or the error that ended the pool (a
worker died, the dispatcher was closed with an error).
"""
from __future__ import annotations

import collections
import threading
from typing import Any, Callable

from ._core import Call

__all__ = ["Dispatcher", "Job", "Outcome", "PoolClosedError"]

# Seconds the dispatcher sleeps in the pool's wait before it looks at its
# inbox again: batches submitted by joblib's own thread wait at most this
# long (those submitted from callbacks are sent at once), and a shorter
# slice wakes the dispatcher more often while batches run.  The joblib->jf
# rows of `python benchmarks/bench.py --only noop,py1ms` check it.
WAIT_SLICE = 0.005

# Seconds a stopping dispatcher thread is waited for.
JOIN_SECONDS = 5.0


class PoolClosedError(RuntimeError):
    """The batch could not run: its joblib_fast pool was aborted or closed."""


class Outcome:
    """What a batch's callback receives: its results or its error.  Also the
    future-like object ``submit`` returns."""

    __slots__ = ("error", "event", "results")

    def __init__(self) -> None:
        self.results: Any = None
        self.error: BaseException | None = None
        self.event = threading.Event()

    def set(self, results: Any, error: BaseException | None) -> None:
        self.results, self.error = results, error
        self.event.set()

    def get(self, timeout: float | None = None) -> Any:
        if not self.event.wait(timeout):
            raise TimeoutError("the batch did not finish in time")
        if self.error is not None:
            raise self.error
        return self.results


class Job:
    """A batch submitted by push: the callable, its callback, its outcome."""

    __slots__ = ("batch", "callback", "func", "outcome")

    def __init__(self, func: Callable, callback: Callable | None) -> None:
        self.func = func
        self.callback = callback
        self.outcome = Outcome()
        self.batch: Any = None


class Dispatcher:
    """One joblib_fast pool driven by push: the pool, a core ``Call`` fed
    with ``push``, and the thread that is the only one touching both."""

    def __init__(self, pool: Any, name: str,
                 max_running: int | None = None,
                 error_for_caller: Callable[[BaseException], BaseException]
                 | None = None) -> None:
        self.pool = pool
        # What the submitter's code catches for an error of ours (joblib's
        # callers catch loky's exceptions), or None: the error as it is.
        self.error_for_caller = error_for_caller
        # Batches handed to the pool at once (None: all).  A process worker
        # takes up to two batches (the next one waits in its pipe), so
        # without a cap a batch could wait behind a slow one while another
        # worker idles; threads share one queue and need no cap.
        self.max_running = max_running
        self.waiting: collections.deque[Job] = collections.deque()
        self.call = Call(pool, (), pre_dispatch=1, stop_on_error=False)
        # `lock` guards `inbox`, `closing` and `error`; never held while
        # calling into the pool or into joblib.
        self.lock = threading.Lock()
        self.wake = threading.Condition(self.lock)
        self.inbox: list[Job] = []
        self.closing = False
        self.error: BaseException | None = None  # the pool is unusable
        # Dispatcher thread only: jobs in the pool, by batch id.
        self.running: dict[int, Job] = {}
        self.thread = threading.Thread(target=self._main, name=name,
                                       daemon=True)
        self.thread.start()

    # ------------------------------------------------- joblib's threads

    def submit(self, job: Job) -> None:
        with self.lock:
            if self.closing:
                raise PoolClosedError("the joblib_fast pool is closed")
            self.inbox.append(job)
            self.wake.notify()

    def close(self, error: BaseException | None = None) -> None:
        """Stop after the running batches (``error`` None) or now (their
        callbacks get ``error``); join the thread."""
        with self.lock:
            self.closing = True
            if error is not None and self.error is None:
                self.error = error
            self.wake.notify()
        if error is not None:
            self.call.abort()
        if threading.current_thread() is not self.thread:
            self.thread.join(JOIN_SECONDS)

    # ---------------------------------------------- dispatcher thread

    def _main(self) -> None:
        while True:
            try:
                if not self._turn():
                    break
            except BaseException as exc:  # noqa: BLE001 - the pool is broken
                # (a worker died...): every batch, running or submitted
                # later, gets the error until joblib aborts or terminates.
                with self.lock:
                    if self.error is None:
                        self.error = exc
                self._finish(self._take_unfinished(), exc)
        self._fail_all()

    def _turn(self) -> bool:
        """Send what joblib submitted, wait a slice, report what finished.
        False once closed with nothing left to wait for."""
        with self.lock:
            if not self.inbox and not self.running and not self.closing:
                self.wake.wait(WAIT_SLICE * 20)
            jobs, self.inbox = self.inbox, []
            error, closing = self.error, self.closing
        if error is not None:
            self._finish(jobs, error)
            return not closing
        self.waiting.extend(jobs)
        self._send()
        if self.running:
            self.pool.wait(self.call, WAIT_SLICE)
            done = [(self.running.pop(batch.id), results, error)
                    for batch, results, error in self.call.take_done()]
            self._send()  # refill the workers before joblib's callbacks
            for job, results, error in done:
                if results is None and error is None:
                    error = PoolClosedError(
                        "the batch was cancelled: its joblib_fast pool was "
                        "aborted")
                self._report(job, None if results is None else results[0],
                             error)
        return not (closing and not self.running and not self.waiting)

    def _send(self) -> None:
        """Hand waiting jobs to the pool, up to ``max_running``."""
        waiting, cap = self.waiting, self.max_running
        while waiting and (cap is None or len(self.running) < cap):
            job = waiting.popleft()
            try:
                job.batch = self.call.push([(job.func, (), {})])
            except BaseException as exc:  # noqa: BLE001 - e.g. unpicklable
                if self.pool.closed:
                    waiting.appendleft(job)
                    raise
                self._report(job, None, exc)
                continue
            self.running[job.batch.id] = job

    def _take_unfinished(self) -> list[Job]:
        jobs = list(self.running.values()) + list(self.waiting)
        self.running.clear()
        self.waiting.clear()
        return jobs

    def _report(self, job: Job, results: Any,
                error: BaseException | None) -> None:
        if error is not None and self.error_for_caller is not None:
            error = self.error_for_caller(error)
        job.outcome.set(results, error)
        if job.callback is not None:
            try:
                job.callback(job.outcome)
            except BaseException:  # noqa: BLE001 - the caller's bug, not ours
                # Imported here: importing logging registers an exit hook,
                # and importing the package registers none.
                import logging
                logging.getLogger("joblib_fast").exception(
                    "the callback of a batch raised (ignored: the dispatcher "
                    "thread goes on with the other batches)")

    def _finish(self, jobs: list[Job], error: BaseException) -> None:
        for job in jobs:
            self._report(job, None, error)

    def _fail_all(self) -> None:
        """The thread ends: every job not reported yet gets the error."""
        with self.lock:
            jobs, self.inbox = self.inbox, []
            self.closing = True
            error = self.error
        jobs = self._take_unfinished() + jobs
        if error is None:
            error = PoolClosedError("the joblib_fast pool was closed")
        self._finish(jobs, error)
