"""The process backend ("loky", alias "multiprocessing"; the default).

Persistent worker processes (``_worker.main``) each own one duplex pipe.
The caller thread does everything on this side: ``ProcessPool.submit``
pickles a batch and sends it, ``ProcessPool.wait`` sleeps in ``select``
(GIL released) on the pipes and on the process sentinels, hands each
result to the core with ``call.complete`` and refills the worker at once.
A worker holds at most ``MAX_OUTSTANDING`` batches so that it never idles
waiting for the caller; a worker that dies makes the call fail with
:class:`TerminatedWorkerError` and the pool is discarded.

Pools are reused across calls through a process-wide registry keyed by
(workers, start method, worker environment); an idle pool is shut down
after ``IDLE_TIMEOUT`` seconds and at interpreter exit.
"""
from __future__ import annotations

import atexit
import collections
import multiprocessing as mp
import os
import pickle
import signal
import sys
import threading
import time
from multiprocessing import spawn as _mp_spawn
from multiprocessing.connection import wait as _mp_wait
from typing import Any

from .. import _memmap, _results, _wire, _worker
from .._context import resolve_n_jobs
from .._core import split_uniform
from .base import ParallelBackendBase, ThreadingBackend

# Seconds an auto batch lasts on processes: a batch costs a pickle round
# trip (~50-100 us) and the tail of a call is at most one batch per worker.
# Compared with `python benchmarks/bench.py --only py1ms,uneven` at 0.002,
# 0.004 and 0.01 s: 0.01 was best (py1ms 2.05x, uneven 1.37x that run).
PROCESS_TARGET_BATCH_SECONDS = 0.01
# Batches sent ahead to one worker: 2 means the next one is already in its
# pipe when it finishes, so it never waits for the caller thread.
MAX_OUTSTANDING = 2
# Seconds an idle reusable pool lives (loky uses 300).
IDLE_TIMEOUT = 300.0
# Seconds a stopping worker gets to exit before it is killed.
SHUTDOWN_GRACE = 1.0

VALID_START_METHODS = ("forkserver", "spawn", "fork")
WORKER_NAME = "joblib_fast-worker"


def _preparation_data(name, *args, **kwargs):
    """multiprocessing's data for a new spawn/forkserver child, minus the
    instruction to re-import the user's __main__ for our workers: like
    joblib, scripts without an ``if __name__ == "__main__":`` guard work
    (functions from __main__ travel by value instead)."""
    data = _ORIGINAL_PREPARATION_DATA(name, *args, **kwargs)
    if name == WORKER_NAME:
        data.pop("init_main_from_path", None)
        data.pop("init_main_from_name", None)
    return data


_ORIGINAL_PREPARATION_DATA = getattr(
    _mp_spawn.get_preparation_data, "_jf_original",
    _mp_spawn.get_preparation_data)
_preparation_data._jf_original = _ORIGINAL_PREPARATION_DATA  # type: ignore
_mp_spawn.get_preparation_data = _preparation_data


def _prepare_forkserver(context) -> None:
    """Preload our worker module in the fork server instead of the user's
    __main__ (which may run code at import), unless the user chose."""
    try:
        from multiprocessing import forkserver
        server = forkserver._forkserver
        if server._forkserver_pid is None and \
                server._preload_modules == ["__main__"]:
            # cloudpickle too: functions from scripts arrive by value, and
            # importing it in each new worker cost ~20 ms of a cold call.
            # (Not numpy: its BLAS pool would be sized before our caps.)
            context.set_forkserver_preload(
                ["joblib_fast._worker", "joblib_fast.backends.processes",
                 "cloudpickle"])
    except (AttributeError, ImportError):  # pragma: no cover - other Pythons
        pass


class TerminatedWorkerError(RuntimeError):
    """A worker process died (crash, ``os._exit``, a signal, the OOM killer)
    while the call was running."""


class RemoteTraceback(Exception):
    """Carries the worker-side traceback text as ``__cause__``."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return "\n\nWorker traceback:\n" + self.tb


class TaskFailedError(RuntimeError):
    """A task raised an exception that could not be sent back as itself."""


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


def resolve_context(context: Any = None):
    """The multiprocessing context: given one, JOBLIB_START_METHOD, or
    forkserver (safe with threads, OpenMP and BLAS pools in the parent)."""
    if context is not None:
        if isinstance(context, str):
            if context not in VALID_START_METHODS:
                raise ValueError(
                    f"unknown start method {context!r}; expected one of "
                    f"{VALID_START_METHODS}")
            return mp.get_context(context)
        if not hasattr(context, "Process"):
            raise ValueError(
                f"context must be a multiprocessing context or a start "
                f"method name, got {context!r}")
        return context
    method = os.environ.get("JOBLIB_START_METHOD", "").strip() or None
    if method is not None and method not in VALID_START_METHODS:
        raise ValueError(
            f"JOBLIB_START_METHOD={method!r} is not a start method; expected "
            f"one of {VALID_START_METHODS}")
    if method is None:
        method = "forkserver" if "forkserver" in mp.get_all_start_methods() \
            else "spawn"
    context = mp.get_context(method)
    if method == "forkserver":
        _prepare_forkserver(context)
    return context


def _task_blob(tasks: list, start: int = 0, arrays=None):
    """Pickle a batch; returns (kind, bytes, out-of-band buffers).

    ``arrays`` (the lease's ``ArrayExchange``, given when numpy is loaded)
    sends arrays by memmap or as out-of-band buffers; without it this is a
    plain ``pickle.dumps``.
    """
    uniform = split_uniform(tasks)
    if uniform is not None:
        kind, payload = _worker.UNIFORM, uniform
        funcs = (uniform[0],)
    else:
        kind, payload = _worker.GENERAL, tasks
        funcs = {id(t[0]): t[0] for t in tasks}.values()
    # Functions from __main__ travel by value: a worker started by
    # forkserver or spawn may not be able to import them by name.
    by_value = any(getattr(f, "__module__", None) == "__main__" for f in funcs)
    try:
        if by_value:
            raise pickle.PicklingError("by value")
        if arrays is None:
            blob, buffers = pickle.dumps(payload, protocol=_worker.PROTOCOL), ()
        else:
            blob, buffers = _memmap.dumps(payload, arrays)
        if b"__main__" not in blob:
            return kind, blob, buffers
        raise pickle.PicklingError("refers to __main__")
    except OSError:
        raise  # writing an array's memmap failed: not a pickling problem
    except Exception:  # noqa: BLE001 - any pickling failure
        try:
            blob, buffers = _memmap.dumps(payload, arrays, cloud=True)
            return kind, blob, buffers
        except OSError:
            raise
        except Exception as exc:
            raise _unpicklable_task(tasks, start, exc) from exc


def _unpicklable_task(tasks: list, start: int,
                      exc: BaseException) -> pickle.PicklingError:
    import cloudpickle
    for i, task in enumerate(tasks):
        try:
            cloudpickle.dumps(task)
        except Exception as inner:  # noqa: BLE001 - any pickling failure
            name = getattr(task[0], "__qualname__", repr(task[0]))
            return pickle.PicklingError(
                f"task {start + i} ({name}) cannot be pickled to send it "
                f"to a worker process: {type(inner).__name__}: {inner}")
    return pickle.PicklingError(f"a batch cannot be pickled: {exc}")


class _Worker:
    """Parent-side handle of one worker process."""

    __slots__ = ("batches", "conn", "fd", "pid", "process", "sentinel",
                 "sock", "started")

    def __init__(self, process, conn) -> None:
        self.process = process
        self.conn = conn
        self.fd = conn.fileno()
        self.sock = None  # for descriptors (shared-memory results), lazily
        self.sentinel = process.sentinel
        self.pid = process.pid
        self.batches: collections.deque[Any] = collections.deque()  # in sending order
        self.started = 0.0  # when its current batch started (timeouts)

    def socket(self):
        if self.sock is None:
            self.sock = _wire.socket_for(self.conn)
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
                 reusable: bool = False) -> None:
        self.n_workers = n_workers
        self.context = context
        self.env = env
        self.reusable = reusable
        self.workers: list[_Worker] = []
        self.queue: collections.deque[Any] = collections.deque()  # batches not yet sent
        self.broken: BaseException | None = None
        self.closed = False
        self.in_use = False
        self._next_key = 0
        self._timer: threading.Timer | None = None
        # The arrays of the current lease (a call or a `with` block).
        self.arrays = _memmap.ArrayExchange()
        try:
            for _ in range(n_workers):
                self._spawn()
        except BaseException:
            self.terminate()
            raise

    def _spawn(self) -> None:
        parent_conn, child_conn = self.context.Pipe(duplex=True)
        # A forked child inherits our ends of the earlier workers' pipes;
        # it closes them, or those workers would never see end-of-file when
        # we close (fork passes these objects as they are, unpickled).
        inherited = [w.conn for w in self.workers] \
            if self.context.get_start_method() == "fork" else []
        process = self.context.Process(
            target=_worker.main, args=(child_conn, self.env, None, inherited),
            name=WORKER_NAME, daemon=True)
        try:
            process.start()
        finally:
            child_conn.close()
        self.workers.append(_Worker(process, parent_conn))

    @property
    def pids(self) -> list[int]:
        return [w.pid for w in self.workers]

    def lease(self, arrays: _memmap.ArrayExchange) -> None:
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
            _wire.send_message(worker.fd, _worker.TASK_HEAD.pack(
                key, kind, arrays.out_threshold, len(buffers)), blob, buffers)
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
        frame = _wire.recv_frame(worker.fd)
        n_buffers, n_fds = _worker.REPLY_HEAD.unpack_from(frame)[3:]
        fds = _wire.recv_fds(worker.socket(), n_fds) if n_fds else []
        try:
            buffers = [_wire.recv_buffer(worker.fd) for _ in range(n_buffers)]
        except BaseException:
            _wire.close_fds(fds)
            raise
        return frame, buffers, fds

    def _deliver(self, batch, key: int, frame, buffers, fds) -> None:
        rkey, status, duration = _worker.REPLY_HEAD.unpack_from(frame)[:3]
        try:
            payload = _results.loads_reply(
                memoryview(frame)[_worker.REPLY_HEAD.size:], buffers, fds)
        except Exception as exc:  # noqa: BLE001 - any pickling failure
            last = batch.start + len(batch.tasks) - 1
            error = pickle.UnpicklingError(
                f"the results of tasks {batch.start}..{last} could not be "
                f"unpickled in the parent: {type(exc).__name__}: {exc}")
            batch.call.complete(batch, None, 0.0, error, batch.start)
            return
        del frame, buffers
        if rkey != key:  # pragma: no cover - protocol invariant
            raise RuntimeError(f"worker answered batch {rkey}, expected {key}")
        if status == _worker.OK:
            batch.call.complete(batch, payload, duration)
            return
        if status == _worker.TASK_ERROR:
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
        error = TerminatedWorkerError(
            f"A joblib_fast worker process (pid {worker.pid}) died "
            f"unexpectedly {_describe_exit(code)}{running}. The pool was "
            "discarded; the next call starts fresh workers.")
        self.broken = error
        self.terminate()
        raise error

    def timed_out(self, call, now: float) -> None:
        timeout = call.timeout_seconds
        mono = time.monotonic()
        for worker in self.workers:
            if worker.batches and mono - worker.started > timeout:
                batch = worker.batches[0][1]
                error = TimeoutError(
                    f"task {batch.start} of Parallel ran longer than "
                    f"timeout={timeout:g} s; its worker (pid {worker.pid}) "
                    "was terminated")
                self.broken = error
                self.terminate()
                raise error

    # -------------------------------------------------------- lifetime

    def shutdown(self, wait: bool = True) -> None:
        """End of a call or of a ``with`` block: a healthy reusable pool
        stays for the next call; anything else is stopped."""
        in_flight = any(w.batches for w in self.workers) or self.queue
        if self.reusable and not self.broken and not in_flight \
                and self.alive():
            self.arrays.cleanup()
            _release(self)
            return
        if self.reusable:
            _forget(self)
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
            if w.process.is_alive():
                w.process.terminate()
        deadline = time.monotonic() + SHUTDOWN_GRACE
        for w in self.workers:
            w.process.join(max(0.0, deadline - time.monotonic()))
        self._kill_remaining()

    _reaped = False

    def _kill_remaining(self) -> None:
        self._reaped = True
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


# ------------------------------------------------------ reusable pools

# Guards _REUSABLE and each registered pool's `in_use` and `_timer`.
_REGISTRY_LOCK = threading.Lock()
_REUSABLE: dict[tuple, ProcessPool] = {}


def _pool_key(n_workers: int, context, env: dict[str, str]) -> tuple:
    return (n_workers, context.get_start_method(), tuple(sorted(env.items())))


def get_pool(n_workers: int, context, env: dict[str, str],
             temp_folder: str | None = None) -> ProcessPool:
    """Lease the reusable pool for this configuration, or make one.

    Starting a pool also removes the memmap folders that killed
    joblib_fast processes left behind (in ``temp_folder`` too)."""
    key = _pool_key(n_workers, context, env)
    stale = []
    with _REGISTRY_LOCK:
        pool = _REUSABLE.get(key)
        if pool is not None and not pool.in_use:
            if pool._timer is not None:
                pool._timer.cancel()
                pool._timer = None
            if pool.alive():
                pool.in_use = True
                return pool
            del _REUSABLE[key]
            stale.append(pool)
            pool = None
        # A pool leased by another thread's call stays theirs: this call
        # gets a private pool, stopped when it ends.
        reusable = pool is None
        if reusable:
            # One reusable pool at a time: a new size replaces the old one.
            for other_key, other in list(_REUSABLE.items()):
                if not other.in_use:
                    del _REUSABLE[other_key]
                    stale.append(other)
    for old in stale:
        old.terminate()
    _memmap.sweep_stale(temp_folder)
    pool = ProcessPool(n_workers, context, env, reusable=reusable)
    pool.in_use = True
    if reusable:
        with _REGISTRY_LOCK:
            if key in _REUSABLE:  # another thread registered one meanwhile
                pool.reusable = False
            else:
                _REUSABLE[key] = pool
    return pool


def _release(pool: ProcessPool) -> None:
    with _REGISTRY_LOCK:
        pool.in_use = False
        timer = threading.Timer(IDLE_TIMEOUT, _reap, args=(pool,))
        timer.daemon = True
        timer.name = "joblib_fast-pool-reaper"
        pool._timer = timer
        timer.start()


def _forget(pool: ProcessPool) -> None:
    with _REGISTRY_LOCK:
        for key, other in list(_REUSABLE.items()):
            if other is pool:
                del _REUSABLE[key]
        pool.in_use = False


def _reap(pool: ProcessPool) -> None:
    with _REGISTRY_LOCK:
        if pool.in_use:
            return
        for key, other in list(_REUSABLE.items()):
            if other is pool:
                del _REUSABLE[key]
        pool._timer = None
    pool.close(wait=True)


def shutdown_reusable_pools() -> None:
    """Stop the idle reusable pools now (also run at interpreter exit)."""
    with _REGISTRY_LOCK:
        pools = [p for p in _REUSABLE.values() if not p.in_use]
        for key in [k for k, p in _REUSABLE.items() if not p.in_use]:
            del _REUSABLE[key]
    for pool in pools:
        pool.close(wait=True)


def reusable_pool_pids() -> list[int]:
    """Pids of the workers kept by reusable pools (for leak checks)."""
    with _REGISTRY_LOCK:
        return [pid for p in _REUSABLE.values() for pid in p.pids]


def _forget_pools_in_child() -> None:
    """A process forked from ours (by the user, or a fork worker) does not
    own our pools: their pipes belong to us."""
    global _REGISTRY_LOCK
    _REGISTRY_LOCK = threading.Lock()
    _REUSABLE.clear()


_OWNER_PID = os.getpid()


def _shutdown_at_exit() -> None:
    if os.getpid() == _OWNER_PID:
        shutdown_reusable_pools()


atexit.register(_shutdown_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pools_in_child)


# -------------------------------------------------------------- backend


class ProcessBackend(ParallelBackendBase):
    """Worker processes: for pure-Python CPU-bound work (the default)."""

    supports_retrieve_callback = True
    supports_inner_max_num_threads = True
    target_batch_duration = PROCESS_TARGET_BATCH_SECONDS
    _jf_native = True

    def __init__(self, nesting_level: int | None = None,
                 inner_max_num_threads: int | None = None,
                 context: Any = None, **backend_kwargs: Any) -> None:
        super().__init__(nesting_level=nesting_level,
                         inner_max_num_threads=inner_max_num_threads,
                         **backend_kwargs)
        self.context = context
        self._call_kwargs: dict[str, Any] = {}

    def effective_n_jobs(self, n_jobs):
        if n_jobs is not None and self.nesting_level and self.nesting_level > 0:
            # Processes inside workers would oversubscribe: run in place.
            return 1
        return resolve_n_jobs(n_jobs)

    def configure(self, n_jobs=1, parallel=None, prefer=None, require=None,
                  context=None, **backend_kwargs):
        self.parallel = parallel
        if context is not None:
            self.context = context
        self._call_kwargs = backend_kwargs
        return self.effective_n_jobs(n_jobs)

    def _jf_make_pool(self, n_jobs: int) -> ProcessPool:
        """A pool leased for one call or ``with`` block, with the arrays
        settings of ``Parallel`` (temp_folder, max_nbytes, mmap_mode,
        return_shared)."""
        kwargs = self._call_kwargs
        context = resolve_context(self.context)
        arrays = _memmap.ArrayExchange(
            max_nbytes=kwargs.get("max_nbytes"),
            mmap_mode=kwargs.get("mmap_mode"),
            temp_folder=kwargs.get("temp_folder"),
            return_shared=kwargs.get("return_shared", True))
        pool = get_pool(n_jobs, context, self._prepare_worker_env(n_jobs),
                        arrays.temp_folder)
        pool.lease(arrays)
        return pool

    def get_nested_backend(self):
        level = (self.nesting_level or 0) + 1
        return ThreadingBackend(nesting_level=level), None
