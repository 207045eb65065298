"""Worker processes and the pool that feeds them (parent side).

Persistent worker processes (``worker.main``) each own one duplex pipe.
The caller thread does everything on this side: ``ProcessPool.submit``
pickles a batch and sends it, ``ProcessPool.wait`` sleeps in ``select``
(GIL released) on the pipes and on the process sentinels, hands each
result to the core with ``call.complete`` and refills the worker at once.
A worker holds at most ``MAX_OUTSTANDING`` batches so that it never idles
waiting for the caller; a worker that dies makes the call fail with
:class:`TerminatedWorkerError` and the pool is discarded.

A reusable pool is leased out by ``registry``, and handed back to it (its
``owner``) at shutdown.
"""
from __future__ import annotations

import collections
import os
import pickle
import signal
import sys
import threading
import time
from multiprocessing.connection import wait as _mp_wait
from typing import Any, Protocol

from ..._core import split_uniform
from ...errors import (
    RemoteTraceback,
    TaskFailedError,
    TerminatedWorkerError,
    abandons_running_tasks,
)
from . import wire
from .arrays_in import ArrayExchange
from .arrays_out import loads_reply
from .context import WORKER_NAME, fork_server_pid, install
from .pickling import dumps, dumps_any, find_unpicklable
from .tree import descendants, same_process, start_time, terminate_trees
from .worker import main as worker_main

# Batches sent ahead to one worker: 2 means the next one is already in its
# pipe when it finishes, so it never waits for the caller thread.
MAX_OUTSTANDING = 2
# Seconds a stopping worker gets to exit before it is killed.
SHUTDOWN_GRACE = 1.0


class PoolOwner(Protocol):
    """Who leased a reusable pool out (``registry``)."""

    def release(self, pool: ProcessPool) -> None:
        """The pool is healthy and idle again."""

    def forget(self, pool: ProcessPool) -> None:
        """The pool is being stopped."""


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "for an unknown reason"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (the OOM killer sends SIGKILL)" if -code == signal.SIGKILL else ""
        return f"killed by {name} ({-code}){hint}"
    return f"with exit code {code}"


def _gone(pid: int, seconds: float = 1.0) -> bool:
    """Process ``pid`` ends within ``seconds`` (a process killed a moment
    ago may still be exiting)."""
    deadline = time.monotonic() + seconds
    while start_time(pid) is not None:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _task_blob(tasks: list, start: int = 0, arrays=None):
    """Pickle a batch; returns (kind, bytes, out-of-band buffers).

    ``arrays`` (the lease's ``ArrayExchange``, given when numpy is loaded)
    sends arrays by memmap or as out-of-band buffers; without it this is a
    plain ``pickle.dumps``.
    """
    uniform = split_uniform(tasks)
    if uniform is not None:
        kind, payload = wire.UNIFORM, uniform
        funcs = (uniform[0],)
    else:
        kind, payload = wire.GENERAL, tasks
        funcs = {id(t[0]): t[0] for t in tasks}.values()
    # Functions from __main__ travel by value: a worker started by
    # forkserver or spawn may not be able to import them by name.
    by_value = any(getattr(f, "__module__", None) == "__main__" for f in funcs)
    try:
        if by_value:
            blob, buffers = dumps(payload, arrays, cloud=True)
        else:
            blob, buffers = dumps_any(payload, arrays, refuse_main=True)
        return kind, blob, buffers
    except OSError:
        raise  # writing an array's memmap failed: not a pickling problem
    except Exception as exc:  # noqa: BLE001 - any pickling failure
        raise _unpicklable_task(tasks, start, exc) from exc


def _unpicklable_task(tasks: list, start: int,
                      exc: BaseException) -> pickle.PicklingError:
    found = find_unpicklable(tasks)
    if found is not None:
        i, inner = found
        task = tasks[i]
        name = getattr(task[0], "__qualname__", repr(task[0]))
        return pickle.PicklingError(
            f"task {start + i} ({name}) cannot be pickled to send it "
            f"to a worker process: {type(inner).__name__}: {inner}")
    return pickle.PicklingError(f"a batch cannot be pickled: {exc}")


class _Worker:
    """Parent-side handle of one worker process."""

    __slots__ = ("batches", "conn", "fd", "pid", "process", "sentinel",
                 "sock", "started", "started_at")

    def __init__(self, process, conn) -> None:
        self.process = process
        self.conn = conn
        self.fd = conn.fileno()
        self.sock = None  # for descriptors (shared-memory results), lazily
        self.sentinel = process.sentinel
        self.pid = process.pid
        self.batches: collections.deque[Any] = collections.deque()  # in sending order
        self.started = 0.0  # when its current batch started (timeouts)
        # With the pid, names this process for good (tree.start_time).
        self.started_at = start_time(self.pid)

    def running(self) -> bool:
        """Alive: a forkserver worker whose fork server died has a sentinel
        that says it exited (code 255) while it still runs."""
        return self.process.is_alive() or same_process(self.pid,
                                                       self.started_at)

    def socket(self):
        if self.sock is None:
            self.sock = wire.socket_for(self.conn)
        return self.sock

    def close_conn(self) -> None:
        for end in (self.conn, self.sock):
            if end is not None:
                try:
                    end.close()
                except OSError:
                    pass


class ProcessPool:
    """Worker processes fed by the compiled core (see module docstring).

    Only the thread running the Parallel call touches a pool; the registry
    lock guards leasing it out.
    """

    def __init__(self, n_workers: int, context, env: dict[str, str],
                 reusable: bool = False,
                 owner: PoolOwner | None = None) -> None:
        self.n_workers = n_workers
        self.context = context
        self.env = env
        self.reusable = reusable
        self.owner = owner  # given with reusable=True
        self.workers: list[_Worker] = []
        self.queue: collections.deque[Any] = collections.deque()  # batches not yet sent
        self.broken: BaseException | None = None
        self.closed = False
        self.in_use = False
        self._next_key = 0
        self._timer: threading.Timer | None = None
        # The arrays of the current lease (a call or a `with` block).
        self.arrays = ArrayExchange()
        install()
        try:
            for _ in range(n_workers):
                self._spawn()
        except BaseException:
            self.terminate()
            raise

    def _spawn(self) -> None:
        forkserver = self.context.get_start_method() == "forkserver"
        for attempt in range(2):
            parent_conn, child_conn = self.context.Pipe(duplex=True)
            # A forked child inherits our ends of its own and the earlier
            # workers' pipes; it closes them, or no worker would see
            # end-of-file when we close (fork passes these objects as they
            # are, unpickled).
            inherited = [w.conn for w in self.workers] + [parent_conn] \
                if self.context.get_start_method() == "fork" else []
            process = self.context.Process(
                target=worker_main, args=(child_conn, self.env, inherited),
                name=WORKER_NAME, daemon=True)
            try:
                process.start()
            except (EOFError, OSError) as exc:
                parent_conn.close()
                # The fork server died while starting it (it is restarted
                # by the next start): once more, then a clear error.
                if not forkserver or attempt:
                    server = f" (pid {fork_server_pid()})" if forkserver \
                        else ""
                    raise TerminatedWorkerError(
                        "could not start a joblib_fast worker process"
                        + (f": the multiprocessing fork server{server} died "
                           "while starting it" if forkserver else "")
                        + f" ({type(exc).__name__}: {exc})") from exc
                continue
            finally:
                child_conn.close()
            self.workers.append(_Worker(process, parent_conn))
            return

    @property
    def pids(self) -> list[int]:
        return [w.pid for w in self.workers]

    def lease(self, arrays: ArrayExchange) -> None:
        """Start a lease (a call, or a ``with`` block) with these array
        settings; ``shutdown`` ends it."""
        self.arrays.cleanup()
        self.arrays = arrays

    def end_call(self) -> None:
        """A call of a ``with`` block ended; the lease goes on."""
        self.arrays.end_call()

    def alive(self) -> bool:
        return not self.broken and not self.closed and all(
            w.process.is_alive() for w in self.workers)

    # -------------------------------------------------------- dispatch

    def submit(self, batch) -> None:
        if self.broken is not None:
            raise self.broken
        self.queue.append(batch)
        self._dispatch()

    def _dispatch(self) -> None:
        while self.queue:
            worker = min(self.workers, key=lambda w: len(w.batches))
            if len(worker.batches) >= self._max_outstanding:
                return
            self._send(worker, self.queue.popleft())

    _max_outstanding = MAX_OUTSTANDING

    def _send(self, worker: _Worker, batch) -> None:
        if batch.call.aborted:
            batch.call.complete(batch, None)
            return
        arrays = self.arrays
        kind, blob, buffers = _task_blob(
            batch.tasks, batch.start,
            arrays if "numpy" in sys.modules else None)
        key = self._next_key
        self._next_key += 1
        if not worker.batches:
            worker.started = time.monotonic()
        worker.batches.append((key, batch))
        try:
            wire.send_task(worker.fd, key, kind, arrays.out_threshold, blob,
                           buffers)
        except OSError:
            # The worker is gone; its sentinel tells how in wait().
            pass

    # ------------------------------------------------------------ wait

    def wait(self, call, seconds: float) -> None:
        """Deliver finished batches; raise if a worker died."""
        if self.broken is not None:
            raise self.broken
        busy = [w for w in self.workers if w.batches]
        conns = [w.conn for w in busy]
        ready = _mp_wait(conns + [w.sentinel for w in self.workers],
                         timeout=seconds)
        if not ready:
            return
        ready_set = set(map(id, ready))
        for worker in busy:
            if id(worker.conn) in ready_set:
                self._drain(worker)
        for worker in self.workers:
            if id(worker.sentinel) in ready_set:
                self._drain(worker)
                self._worker_died(worker)

    def _drain(self, worker: _Worker) -> None:
        while worker.batches:
            try:
                if not worker.conn.poll():
                    return
                reply = self._receive(worker)
            except (EOFError, OSError):
                return
            key, batch = worker.batches.popleft()
            worker.started = time.monotonic()
            self._dispatch()  # refill before the parent does anything else
            self._deliver(batch, key, *reply)

    @staticmethod
    def _receive(worker: _Worker):
        """Read one whole reply: (head frame, buffers, descriptors)."""
        return wire.recv_reply(worker.fd, worker.socket)

    def _deliver(self, batch, key: int, frame, buffers, fds) -> None:
        (rkey, status, duration), data = wire.split_reply(frame)
        try:
            payload = loads_reply(data, buffers, fds)
        except Exception as exc:  # noqa: BLE001 - any pickling failure
            last = batch.start + len(batch.tasks) - 1
            error = pickle.UnpicklingError(
                f"the results of tasks {batch.start}..{last} could not be "
                f"unpickled in the parent: {type(exc).__name__}: {exc}")
            batch.call.complete(batch, None, 0.0, error, batch.start)
            return
        del frame, data, buffers
        if rkey != key:  # pragma: no cover - protocol invariant
            raise RuntimeError(f"worker answered batch {rkey}, expected {key}")
        if status == wire.OK:
            batch.call.complete(batch, payload, duration)
            return
        if status == wire.TASK_ERROR:
            index, blob, type_name, message, tb = payload
            error = None
            if blob is not None:
                try:
                    error = pickle.loads(blob)
                except Exception:  # noqa: BLE001 - any pickling failure
                    error = None
            if error is None:
                error = TaskFailedError(f"{type_name}: {message}")
            error.__cause__ = RemoteTraceback(tb)
        else:
            index, message = payload
            where = f"task {batch.start + index}" if index >= 0 else \
                f"tasks {batch.start}..{batch.start + len(batch.tasks) - 1}"
            error = pickle.PicklingError(f"{where}: {message}")
            index = max(index, 0)
        batch.call.complete(batch, None, duration, error, batch.start + index)

    def _worker_died(self, worker: _Worker) -> None:
        worker.process.join(0.1)
        code = worker.process.exitcode
        running = ""
        if worker.batches:
            batch = worker.batches[0][1]
            n = len(batch.tasks) if batch.tasks is not None else 0
            running = f" while running tasks {batch.start}..{batch.start + n - 1}"
        server = fork_server_pid() \
            if self.context.get_start_method() == "forkserver" else None
        if code == 255 and server is not None and _gone(server):
            # multiprocessing reports 255 for every worker of a fork server
            # that died: the workers may well be running still.
            what = (f"The multiprocessing fork server (pid {server}), which "
                    "started the joblib_fast worker processes and reports "
                    f"their exit, died unexpectedly{running}")
        else:
            what = (f"A joblib_fast worker process (pid {worker.pid}) died "
                    f"unexpectedly {_describe_exit(code)}{running}")
        error = TerminatedWorkerError(
            f"{what}. The pool was discarded; the next call starts fresh "
            "workers.")
        self.broken = error
        self.terminate()
        raise error

    def timed_out(self, call, now: float) -> BaseException | None:
        """TimeoutError (after terminating the pool) when a worker's batch
        ran past the call's timeout, else None (``now``: time.monotonic)."""
        timeout = call.timeout_seconds
        for worker in self.workers:
            if worker.batches and now - worker.started > timeout:
                batch = worker.batches[0][1]
                error = TimeoutError(
                    f"task {batch.start} of Parallel ran longer than "
                    f"timeout={timeout:g} s; its worker (pid {worker.pid}) "
                    "was terminated")
                self.broken = error
                self.terminate()
                return error
        return None

    # -------------------------------------------------------- lifetime

    def stop_running(self) -> list[int]:
        """Drop what runs and keep the idle workers: batches not sent yet
        are reported as skipped, the workers running a batch are killed
        and replaced by fresh ones.  Returns the pids killed."""
        while self.queue:
            batch = self.queue.popleft()
            batch.call.complete(batch, None)
        busy = [w for w in self.workers if w.batches]
        if not busy or self.closed:
            return []
        self.workers = [w for w in self.workers if not w.batches]
        for w in busy:
            w.close_conn()
        # Each busy worker with the processes its task started (tree.py).
        pids = [w.pid for w in busy if w.running()]
        for pid in descendants(pids) + pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        for w in busy:
            w.process.join(SHUTDOWN_GRACE)
            try:
                w.process.close()
            except ValueError:  # still running: reaped by the OS later
                pass
        try:
            for _ in busy:
                self._spawn()
        except BaseException as exc:
            self.broken = exc
            self.terminate()
            raise
        return [w.pid for w in busy]

    def shutdown(self, wait: bool = True) -> None:
        """End of a call or of a ``with`` block: a healthy reusable pool
        stays for the next call; anything else is stopped."""
        in_flight = any(w.batches for w in self.workers) or self.queue
        if self.reusable and not self.broken and not in_flight \
                and self.alive():
            self.arrays.cleanup()
            self.owner.release(self)
            return
        if self.reusable:
            self.owner.forget(self)
        if in_flight or self.broken:
            self.terminate()
        else:
            self.close(wait)
        self.arrays.cleanup()

    def close(self, wait: bool = True) -> None:
        """Ask workers to exit (pipe closed); kill those that do not."""
        if self.closed:
            return
        self.closed = True
        for w in self.workers:
            w.close_conn()
        if wait:
            deadline = time.monotonic() + SHUTDOWN_GRACE
            for w in self.workers:
                w.process.join(max(0.0, deadline - time.monotonic()))
        self._kill_remaining()

    def terminate(self) -> None:
        """Stop every worker now (SIGTERM, then SIGKILL) and reap it."""
        if self.closed and self._reaped:
            return
        self.closed = True
        for w in self.workers:
            w.close_conn()
        # Each worker with the processes its tasks started (tree.py).
        terminate_trees([w.pid for w in self.workers if w.running()])
        deadline = time.monotonic() + SHUTDOWN_GRACE
        for w in self.workers:
            w.process.join(max(0.0, deadline - time.monotonic()))
        self._kill_remaining()

    _reaped = False

    def _kill_remaining(self) -> None:
        self._reaped = True
        lingering = [w.pid for w in self.workers if w.running()]
        for pid in descendants(lingering) + lingering:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        for w in self.workers:
            if w.process.is_alive():
                w.process.kill()
                w.process.join()
            try:
                w.process.close()
            except ValueError:
                pass
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.arrays.cleanup()


class ProcessLease:
    """The pool contract (``backends.native.Pool``) over a reusable
    :class:`ProcessPool` leased by one holder: a call, or a ``with`` block.
    Ending the lease gives the pool back to the registry (or stops it)."""

    def __init__(self, pool: ProcessPool, n_jobs: int) -> None:
        self.process_pool = pool
        self.n_jobs = n_jobs
        self._released = False

    @property
    def closed(self) -> bool:
        pool = self.process_pool
        return self._released or pool.closed or pool.broken is not None

    def submit(self, batch) -> None:
        self.process_pool.submit(batch)

    def wait(self, call, seconds: float) -> None:
        self.process_pool.wait(call, seconds)

    def check_timeout(self, call, now: float) -> BaseException | None:
        return self.process_pool.timed_out(call, now)

    def end_call(self, error: BaseException | None) -> None:
        if error is None:
            self.process_pool.end_call()
        else:
            # Never carry a failed call's leftovers into the next call.
            self.shutdown(wait=not abandons_running_tasks(error))

    def stop_running(self) -> list[int]:
        """Abort what this lease runs without stopping the idle workers
        (see :meth:`ProcessPool.stop_running`); the lease goes on."""
        return self.process_pool.stop_running()

    def shutdown(self, wait: bool = True) -> None:
        if not self._released:
            self._released = True
            self.process_pool.shutdown(wait)
