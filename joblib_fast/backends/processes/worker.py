"""The process-worker main loop (runs inside each worker process).

Messages and framing: ``wire``.  A reader thread drains the inbound socket
into a queue so that the parent never blocks on a full socket while this
process is busy sending results (that would deadlock when both directions
fill up).

This module imports nothing of the parent side: only the wire, pickling
and array modules, ``joblib_fast._context``, ``joblib_fast._native_threads``
and ``backends.base``.
"""
from __future__ import annotations

import os
import pickle
import queue
import signal
import sys
import threading
import time
import traceback

from ... import _native_threads
from ..._context import DEFAULT_CONFIG, set_config
from ..base import ThreadingBackend
from . import wire
from .arrays_in import MAP_CHECK_SECONDS, worker_idle
from .arrays_out import KEEP_IDLE_SECONDS, ResultPacker, on_wire
from .pickling import dumps, dumps_any, dumps_exception, find_unpicklable
from .rss import memory_guard
from .wire import OK, SEND_ERROR, TASK_ERROR, UNIFORM


def _reader(fd: int, inbox: queue.SimpleQueue) -> None:
    """Queue each whole message as (head frame, buffers); None at the end."""
    try:
        while True:
            inbox.put(wire.recv_task(fd))
    except (EOFError, OSError):
        pass
    finally:
        inbox.put(None)


def _error_message(index: int, exc: BaseException):
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    # None: an exception that cannot come back is described instead.
    blob = dumps_exception(exc)
    return (index, blob, type(exc).__qualname__, str(exc), tb)


def _run(kind: int, payload):
    """Run a batch; return (status, data)."""
    results = []
    append = results.append
    try:
        if kind == UNIFORM:
            func, args_list = payload
            for args in args_list:
                append(func(*args))
        else:
            for func, args, kwargs in payload:
                append(func(*args, **kwargs))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        return TASK_ERROR, _error_message(len(results), exc)
    return OK, results


class _Replier:
    """Sends replies (main thread only); large result arrays go through
    shared memory when the batch allows it."""

    def __init__(self, conn) -> None:
        self.conn = conn
        self.fd = wire.endpoint(conn)
        self._sock = None
        self._packer = None

    def _pack(self, data, threshold: int):
        if "numpy" not in sys.modules:
            blob, buffers = dumps_any(data, passthrough=())
            return blob, buffers, []
        if self._packer is None:
            self._packer = ResultPacker()
        packer = self._packer
        packer.threshold = threshold
        try:
            blob, buffers = dumps_any(data, packer, passthrough=())
        except BaseException:
            packer.discard()
            raise
        packer.sent(data)
        fds, packer.fds = packer.fds, []
        return blob, buffers, fds

    def keeps_memory(self) -> bool:
        """Freed large arrays' memory is kept for reuse (``let_go``)."""
        return self._packer is not None and self._packer.keeps_memory()

    def let_go(self) -> None:
        self._packer.let_go()

    def expect(self, threshold: int) -> None:
        """A batch with this reply threshold is about to run (its large
        NumPy arrays are then born in shared memory)."""
        if "numpy" in sys.modules:
            if self._packer is None:
                self._packer = ResultPacker()
            self._packer.expect(threshold)

    def _socket(self):
        if self._sock is None:
            self._sock = wire.socket_for(self.conn)
        return self._sock

    def reply(self, key: int, status: int, data, duration: float,
              threshold: int = wire.NEVER, retire: bool = False) -> None:
        try:
            blob, buffers, fds = self._pack(data, threshold)
        except Exception as exc:  # noqa: BLE001 - any pickling failure
            status, data = SEND_ERROR, _unpicklable_result(status, data, exc)
            blob, buffers = dumps(data)
            fds = []
        try:
            wire.send_reply(self.fd, self._socket, key, status, duration,
                            blob, buffers, on_wire(fds), retire)
        finally:
            if fds:
                self._packer.hand_over(fds)

    def holds(self) -> bool:
        """Named result segments are held until the parent opens them."""
        return self._packer is not None and bool(self._packer.held)

    def sweep(self) -> None:
        if self._packer is not None:
            self._packer.sweep()

    def close(self) -> None:
        if self._packer is not None:
            self._packer.close()


def _unpicklable_result(status: int, data, exc: BaseException):
    index = -1
    if status == OK:
        found = find_unpicklable(data)
        if found is not None:
            index = found[0]
    message = (f"the result could not be pickled back to the parent: "
               f"{type(exc).__name__}: {exc}")
    return (index, message)


def _next_message(inbox: queue.SimpleQueue, replier: _Replier):
    """The next message of the inbox; while waiting for it, the mappings of
    input dumps that were removed are let go (checked every
    ``MAP_CHECK_SECONDS`` while any is kept), and so is the memory of
    freed large arrays kept for reuse once idle for ``KEEP_IDLE_SECONDS``,
    and the named result segments the parent has opened (checked as
    often)."""
    waited = 0.0
    while True:
        keeps = replier.keeps_memory()
        if not worker_idle() and not keeps and not replier.holds():
            return inbox.get()
        try:
            return inbox.get(timeout=MAP_CHECK_SECONDS)
        except queue.Empty:
            replier.sweep()
            waited += MAP_CHECK_SECONDS
            if keeps and waited >= KEEP_IDLE_SECONDS:
                replier.let_go()


def _serve(inbox: queue.SimpleQueue, replier: _Replier, guard=None) -> None:
    """Run each batch of the inbox and reply, until the inbox ends.
    ``guard`` (``rss.MemoryGuard``): a reply says when this worker grew
    past its memory limit; the parent then replaces it."""
    while True:
        message = _next_message(inbox, replier)
        if message is None:
            break
        frame, buffers = message
        del message
        key, kind, threshold = wire.task_head(frame)
        start = time.perf_counter()
        try:
            payload = wire.task_payload(frame, buffers)
        except BaseException as exc:  # noqa: BLE001
            replier.reply(
                key, SEND_ERROR,
                (-1, "the task batch could not be unpickled in the worker: "
                     f"{type(exc).__name__}: {exc}"), 0.0)
            continue
        del frame, buffers
        replier.sweep()
        replier.expect(threshold)
        status, data = _run(kind, payload)
        del payload
        retire = guard is not None and guard.exceeded()
        replier.reply(key, status, data, time.perf_counter() - start,
                      threshold, retire)
        del data


def main(conn, env: dict, inherited=(), initializer: bytes | None = None,
         memory_limit: int | None = None) -> None:
    """Serve batches from ``conn`` until it closes.

    ``inherited``: the parent's ends of other workers' pipes that a forked
    child got a copy of; closed at once.  ``initializer``: the pickled
    ``(initializer, initargs)`` of ``Parallel``, run once before the first
    batch (an error there ends the worker: the call fails with
    ``TerminatedWorkerError``, as a broken pool does in joblib).
    ``memory_limit``: bytes of resident growth past which the replies ask
    for this worker's replacement (None: never)."""
    for other in inherited:
        other.close()
    os.environ.update(env)
    # Libraries loaded before the variables were set (a fork worker's
    # OpenBLAS) no longer read them: capped here.
    limit = _native_threads.worker_limit(env)
    if limit is not None:
        _native_threads.cap_loaded(limit)
    # Ctrl-C in a terminal reaches the whole process group: the parent
    # decides what stops; workers are stopped by it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Nested calls in a worker get threads at the first nesting level (what
    # ProcessBackend.get_nested_backend gives), sequential beyond.
    set_config(dict(DEFAULT_CONFIG, backend=ThreadingBackend(nesting_level=1)))
    if initializer is not None:
        func, args = pickle.loads(initializer)
        func(*args)

    inbox: queue.SimpleQueue = queue.SimpleQueue()
    threading.Thread(target=_reader, args=(wire.endpoint(conn), inbox), daemon=True,
                     name="joblib_fast-worker-reader").start()
    replier = _Replier(conn)
    try:
        _serve(inbox, replier, memory_guard(memory_limit))
    except (BrokenPipeError, ConnectionResetError):
        # The parent closed our pipe: it stopped the pool (a failed call,
        # a dead sibling) or is gone.  Nothing for the user's stderr.
        pass
    finally:
        # The parent reads no more replies: the named segments it did not
        # open are let go (their names too).
        replier.close()
    conn.close()
    sys.exit(0)
