"""Worker processes and the pool that feeds them (parent side).

Persistent worker processes (``worker.main``) each own one duplex pipe.
The caller thread does everything on this side: ``ProcessPool.submit``
pickles a batch and sends it, ``ProcessPool.wait`` sleeps in ``select``
(GIL released) on the pipes and on the process sentinels, hands each
result to the core with ``call.complete`` and refills the worker at once.
A worker holds at most ``MAX_OUTSTANDING`` batch: batches go to idle
workers only, so none waits behind a long task while another worker idles;
a worker that dies makes the call fail with
:class:`TerminatedWorkerError` and the pool is discarded.

A reusable pool is leased out by ``registry``, and handed back to it (its
``owner``) at shutdown.

A worker is replaced between two of its batches, never during one, when
its reply says it grew past the pool's memory limit (``rss``), or when
its next batch would take it past the lease's ``max_tasks_per_child``:
its pipe is closed (it exits by itself) and a fresh worker takes its place.
"""
from __future__ import annotations

import collections
import pickle
import signal
import sys
import threading
import time
from multiprocessing.connection import wait as _mp_wait
from typing import Any, Protocol

from ..._core import split_uniform
from ...errors import (
    ParallelTimeoutError,
    RemoteTraceback,
    TaskFailedError,
    TerminatedWorkerError,
    abandons_running_tasks,
)
from . import platform, shm, wire
from .arrays_in import ArrayExchange
from .arrays_out import loads_reply
from .context import WORKER_NAME, fork_server_pid, install
from .pickling import dumps, dumps_any, find_unpicklable
from .platform import MAX_WAIT_HANDLES
from .tree import (
    descendants,
    kill,
    same_process,
    start_time,
    terminate_trees,
)
from .worker import main as worker_main

# Batches sent ahead to one worker.  More would hide the round trip
# between a result and the next batch, but a batch queued behind a long
# task waits while another worker idles; with 1, a batch only goes to an
# idle worker (tests/joblib_compat/test_joblib_behaviours.py checks that an
# unordered generator never waits behind a busy worker).  The round trip is
# small next to an auto-sized batch (PROCESS_TARGET_BATCH_SECONDS):
# `python benchmarks/bench.py --only noop_proc,py1ms,uneven` shows both.
MAX_OUTSTANDING = 1
# Seconds a stopping worker gets to exit before it is killed.
SHUTDOWN_GRACE = 1.0
# Seconds after its pipe closed that a worker whose exit was not reported
# (its sentinel silent: a fork server that stopped, or died in between)
# is looked for by pid.  Shorter reports a death sooner when the report is
# lost; the report itself normally comes within milliseconds.
DEATH_REPORT_SECONDS = 2.0


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
        hint = " (the OOM killer sends SIGKILL)" if -code == getattr(
            signal, "SIGKILL", None) else ""
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
        # The message says the pickler's error: not its traceback again.
        raise _unpicklable_task(tasks, start, exc) from None


def _unpicklable_task(tasks: list, start: int,
                      exc: BaseException) -> pickle.PicklingError:
    found = find_unpicklable(tasks)
    if found is None:
        return pickle.PicklingError(
            f"{_NOT_PICKLED} Tasks {start}..{start + len(tasks) - 1}: "
            f"{type(exc).__name__}: {exc}")
    i, inner = found
    # joblib's (loky's) words first: code matches on them.
    return pickle.PicklingError(
        f"{_NOT_PICKLED} Task {start + i}, {_unpicklable_part(tasks[i], inner)}"
        " Pass values that pickle (or build this one inside the task), or "
        "use backend='threading', whose tasks are not pickled.")


def _unpicklable_part(task, inner: BaseException) -> str:
    """Which part of ``task`` cannot be pickled (its function, a positional
    or a keyword argument), of what type, and the pickler's error."""
    func, args, kwargs = task
    name = f"{getattr(func, '__qualname__', None) or repr(func)}()"
    parts = [(f"{name}: the function itself", func)]
    parts += [(f"{name}: positional argument {k}", a)
              for k, a in enumerate(args)]
    parts += [(f"{name}: keyword argument {key}=", v)
              for key, v in kwargs.items()]
    for what, value in parts:
        found = find_unpicklable([value])
        if found is not None:
            return (f"{what} is a {_type_name(value)} "
                    f"({type(found[1]).__name__}: {found[1]}).")
    return f"{name}: {type(inner).__name__}: {inner}."


def _type_name(value) -> str:
    kind = type(value)
    module = kind.__module__
    return kind.__qualname__ if module == "builtins" \
        else f"{module}.{kind.__qualname__}"


_NOT_PICKLED = "Could not pickle the task to send it to the workers."


def _n_tasks(batch) -> int:
    return len(batch.tasks) if batch.tasks is not None else 0


class _Worker:
    """Parent-side handle of one worker process."""

    __slots__ = ("batches", "conn", "eof_at", "fd", "pid", "process",
                 "retiring", "sentinel", "sock", "started", "started_at",
                 "tasks_sent")

    def __init__(self, process, conn) -> None:
        self.process = process
        self.conn = conn
        self.fd = wire.endpoint(conn)
        self.sock = None  # for descriptors (shared-memory results), lazily
        self.sentinel = process.sentinel
        self.pid = process.pid
        self.batches: collections.deque[Any] = collections.deque()  # in sending order
        self.started = 0.0  # when its current batch started (timeouts)
        # With the pid, names this process for good (tree.start_time).
        self.started_at = start_time(self.pid)
        self.tasks_sent = 0
        # When its pipe reached end-of-file (it exited, or is exiting),
        # or None.
        self.eof_at: float | None = None
        # Why it is replaced once its batches are done (no new batch goes
        # to it), or None.
        self.retiring: str | None = None

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
                 owner: PoolOwner | None = None,
                 initializer: bytes | None = None,
                 memory_limit: int | None = None) -> None:
        limit = platform.MAX_WORKERS
        if limit is not None and n_workers > limit:
            raise ValueError(
                f"{n_workers} workers: a process pool holds at most "
                f"{limit} on this platform (the parent waits on two "
                f"handles per worker, the system on at most "
                f"{MAX_WAIT_HANDLES} at once)")
        self.n_workers = n_workers
        self.context = context
        self.env = env
        # Pickled (initializer, initargs) each worker runs when it starts.
        self.initializer = initializer
        # Bytes of resident growth past which a worker is replaced (the
        # workers measure themselves: rss.py); None: never.
        self.memory_limit = memory_limit
        # Tasks a worker runs before it is replaced (set per lease).
        self.max_tasks_per_child: int | None = None
        # Workers replaced but not yet reaped.
        self._retired: list[_Worker] = []
        self.reusable = reusable
        self.owner = owner  # given with reusable=True
        self.workers: list[_Worker] = []
        self.queue: collections.deque[Any] = collections.deque()  # batches not yet sent
        self.broken: BaseException | None = None
        self.closed = False
        self.in_use = False
        self.idle_timeout = 300.0  # set by the registry at each lease
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
                target=worker_main,
                args=(child_conn, self.env, inherited, self.initializer,
                      self.memory_limit),
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

    def lease(self, arrays: ArrayExchange,
              max_tasks_per_child: int | None = None) -> None:
        """Start a lease (a call, or a ``with`` block) with these array
        settings; ``shutdown`` ends it."""
        self.arrays.cleanup()
        self.arrays = arrays
        self.max_tasks_per_child = max_tasks_per_child

    def end_call(self) -> None:
        """A call of a ``with`` block ended; the lease goes on."""
        self.arrays.end_call()
        self._reap_retired()

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
            worker = min(self.workers, key=lambda w: (
                w.retiring is not None, len(w.batches)))
            if worker.retiring is not None or \
                    len(worker.batches) >= self._max_outstanding:
                return
            limit = self.max_tasks_per_child
            if limit is not None and worker.tasks_sent and \
                    worker.tasks_sent + _n_tasks(self.queue[0]) > limit:
                worker.retiring = f"max_tasks_per_child={limit}"
                if not worker.batches:
                    self._replace(worker)
                continue
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
        worker.tasks_sent += len(batch.tasks)
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
        # A pipe at end-of-file stays readable: waiting on it again would
        # spin until the exit is reported.  Its worker's sentinel says
        # when it is, without a CPU spent meanwhile.
        busy = [w for w in self.workers if w.batches and w.eof_at is None]
        conns = [w.conn for w in busy]
        ready = _mp_wait(conns + [w.sentinel for w in self.workers],
                         timeout=seconds)
        if not ready:
            self._check_unreported_exits()
            return
        ready_set = set(map(id, ready))
        for worker in busy:
            if id(worker.conn) in ready_set:
                self._drain(worker)
        for worker in list(self.workers):
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
                if worker.eof_at is None:
                    worker.eof_at = time.monotonic()
                return
            key, batch = worker.batches.popleft()
            worker.started = time.monotonic()
            if wire.reply_retires(reply[0]):
                worker.retiring = "memory_growth_limit="  \
                    f"{self.memory_limit} bytes"
            if worker.retiring is not None and not worker.batches:
                self._replace(worker)
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

    def _check_unreported_exits(self) -> None:
        """A worker whose pipe closed long ago while its sentinel says
        nothing: if its process is gone, it died (exit code unknown)."""
        now = time.monotonic()
        for worker in list(self.workers):
            if worker.eof_at is not None and \
                    now - worker.eof_at > DEATH_REPORT_SECONDS and \
                    not same_process(worker.pid, worker.started_at):
                self._worker_died(worker)

    def _replace(self, worker: _Worker) -> None:
        """Between two of its batches: close the pipe of ``worker`` (it
        exits by itself; reaped later, see ``_reap_retired``) and start a
        fresh worker in its place."""
        self.workers.remove(worker)
        worker.close_conn()
        self._retired.append(worker)
        # Imported here: importing logging registers an exit hook, and
        # importing the package registers none.
        import logging
        logging.getLogger("joblib_fast").debug(
            "worker pid %d replaced after %d tasks (%s)", worker.pid,
            worker.tasks_sent, worker.retiring)
        try:
            self._spawn()
        except BaseException as exc:
            self.broken = exc
            self.terminate()
            raise

    def _reap_retired(self) -> None:
        """Join the replaced workers (they exit as soon as their pipe
        closes); one still alive after the grace period is killed."""
        retired, self._retired = self._retired, []
        deadline = time.monotonic() + SHUTDOWN_GRACE
        for w in retired:
            w.process.join(max(0.0, deadline - time.monotonic()))
            if w.process.is_alive():
                w.process.kill()
                w.process.join()
            _forget_segments(w)
            try:
                w.process.close()
            except ValueError:
                pass

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
                error = ParallelTimeoutError(
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
        kill(descendants(pids) + pids)
        for w in busy:
            w.process.join(SHUTDOWN_GRACE)
            _forget_segments(w)
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
        self._reap_retired()
        lingering = [w.pid for w in self.workers if w.running()]
        kill(descendants(lingering) + lingering)
        for w in self.workers:
            if w.process.is_alive():
                w.process.kill()
                w.process.join()
            _forget_segments(w)
            try:
                w.process.close()
            except ValueError:
                pass
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.arrays.cleanup()


def _forget_segments(worker: _Worker) -> None:
    """A worker killed before it could let go of the named result
    segments it held: its parent drops them (``shm.forget_worker``)."""
    if not worker.process.is_alive():
        shm.forget_worker(worker.pid)


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
