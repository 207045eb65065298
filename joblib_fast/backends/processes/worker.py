"""The process-worker main loop (runs inside each worker process).

Protocol, over one socket pair per worker (framing in ``_wire``):

parent -> worker   ``TASK_HEAD (key, kind, out_threshold, n_buffers)``
    followed, in the same frame, by the pickled payload, then
    ``n_buffers`` out-of-band buffer frames (pickle protocol 5); the head
    is unpacked apart so that a payload that cannot be unpickled is still
    reported against its batch;
    kind ``UNIFORM``: ``payload = (func, [args, ...])`` (one function, no
    keyword arguments: the common ``delayed(f)(x)`` case, smaller to send);
    kind ``GENERAL``: ``payload = [(func, args, kwargs), ...]``;
    ``out_threshold``: result arrays larger than this many bytes go back
    through shared memory (``_results.ResultPacker``); -1: never.
worker -> parent   ``REPLY_HEAD (key, status, duration, n_buffers, n_fds)``
    followed by the pickled data, then ``n_fds`` descriptors (shared-memory
    results), then ``n_buffers`` buffer frames;
    ``OK``: ``data`` = list of results;
    ``TASK_ERROR``: ``data = (index in batch, pickled exception or None,
    exception type name, message, worker traceback text)``;
    ``SEND_ERROR``: ``data = (index in batch or -1, message)`` when the
    batch could not be unpickled or a result could not be pickled.

A reader thread drains the inbound socket into a queue so that the parent
never blocks on a full socket while this process is busy sending results
(that would deadlock when both directions fill up).
"""
from __future__ import annotations

import os
import pickle
import queue
import signal
import struct
import sys
import threading
import time
import traceback

from . import _wire

UNIFORM, GENERAL = 0, 1
OK, TASK_ERROR, SEND_ERROR = 0, 1, 2
TASK_HEAD = struct.Struct("<qBqI")
REPLY_HEAD = struct.Struct("<qBdII")
PROTOCOL = 5


def _dumps(obj) -> bytes:
    """Plain pickle on the fast path; cloudpickle for what it cannot do."""
    try:
        return pickle.dumps(obj, protocol=PROTOCOL)
    except Exception:  # noqa: BLE001 - any pickling failure
        import cloudpickle
        return cloudpickle.dumps(obj, protocol=PROTOCOL)


def _reader(fd: int, inbox: queue.SimpleQueue) -> None:
    """Queue each whole message as (head frame, buffers); None at the end."""
    try:
        while True:
            frame = _wire.recv_frame(fd)
            n_buffers = TASK_HEAD.unpack_from(frame)[3]
            buffers = [_wire.recv_buffer(fd) for _ in range(n_buffers)]
            inbox.put((frame, buffers))
    except (EOFError, OSError):
        pass
    finally:
        inbox.put(None)


def _error_message(index: int, exc: BaseException):
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        blob = _dumps(exc)
        pickle.loads(blob)  # an exception that cannot come back is described
    except Exception:  # noqa: BLE001 - any pickling failure
        blob = None
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
        self.fd = conn.fileno()
        self._sock = None
        self._packer = None

    def _pack(self, data, threshold: int, cloud: bool):
        if "numpy" not in sys.modules:
            if not cloud:
                return pickle.dumps(data, protocol=PROTOCOL), [], []
            import cloudpickle
            return cloudpickle.dumps(data, protocol=PROTOCOL), [], []
        from . import _memmap, _results
        if self._packer is None:
            self._packer = _results.ResultPacker()
        packer = self._packer
        packer.threshold = threshold
        try:
            blob, buffers = _memmap.dumps(data, packer, cloud)
        except BaseException:
            packer.discard()
            raise
        fds, packer.fds = packer.fds, []
        return blob, buffers, fds

    def reply(self, key: int, status: int, data, duration: float,
              threshold: int = -1) -> None:
        try:
            blob, buffers, fds = self._pack(data, threshold, False)
        except Exception:  # noqa: BLE001 - any pickling failure
            try:
                blob, buffers, fds = self._pack(data, threshold, True)
            except Exception as exc:  # noqa: BLE001 - any pickling failure
                status, data = SEND_ERROR, _unpicklable_result(status, data, exc)
                blob, buffers, fds = pickle.dumps(data, protocol=PROTOCOL), [], []
        try:
            head = REPLY_HEAD.pack(key, status, duration, len(buffers), len(fds))
            if not fds:
                _wire.send_message(self.fd, head, blob, buffers)
            else:
                _wire.send_message(self.fd, head, blob)
                if self._sock is None:
                    self._sock = _wire.socket_for(self.conn)
                _wire.send_fds(self._sock, fds)
                for buf in buffers:
                    _wire.send_frame(self.fd, buf)
        finally:
            _wire.close_fds(fds)


def _unpicklable_result(status: int, data, exc: BaseException):
    index = -1
    if status == OK:
        for i, value in enumerate(data):
            try:
                _dumps(value)
            except Exception:  # noqa: BLE001 - any pickling failure
                index = i
                break
    message = (f"the result could not be pickled back to the parent: "
               f"{type(exc).__name__}: {exc}")
    return (index, message)


def main(conn, env: dict, idle_timeout: float, inherited=()) -> None:
    """Serve batches from ``conn`` until it closes or stays idle too long.

    ``inherited``: the parent's ends of other workers' pipes that a forked
    child got a copy of; closed at once."""
    for other in inherited:
        other.close()
    os.environ.update(env)
    # Ctrl-C in a terminal reaches the whole process group: the parent
    # decides what stops; workers are stopped by it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Nested calls in a worker get threads at the first nesting level (what
    # ProcessBackend.get_nested_backend gives), sequential beyond.
    from ._context import DEFAULT_CONFIG, set_config
    from .backends.base import ThreadingBackend
    set_config(dict(DEFAULT_CONFIG, backend=ThreadingBackend(nesting_level=1)))

    inbox: queue.SimpleQueue = queue.SimpleQueue()
    threading.Thread(target=_reader, args=(conn.fileno(), inbox), daemon=True,
                     name="joblib_fast-worker-reader").start()
    replier = _Replier(conn)
    while True:
        if inbox.empty():
            memmap = sys.modules.get("joblib_fast._memmap")
            if memmap is not None:
                memmap.worker_idle()  # nothing queued: unmap the inputs
        try:
            message = inbox.get(timeout=idle_timeout)
        except queue.Empty:
            break
        if message is None:
            break
        frame, buffers = message
        del message
        key, kind, threshold, _ = TASK_HEAD.unpack_from(frame)
        start = time.perf_counter()
        try:
            payload = pickle.loads(memoryview(frame)[TASK_HEAD.size:],
                                   buffers=buffers)
        except BaseException as exc:  # noqa: BLE001
            replier.reply(
                key, SEND_ERROR,
                (-1, "the task batch could not be unpickled in the worker: "
                     f"{type(exc).__name__}: {exc}"), 0.0)
            continue
        del frame, buffers
        status, data = _run(kind, payload)
        del payload
        replier.reply(key, status, data, time.perf_counter() - start,
                      threshold)
        del data
    conn.close()
    sys.exit(0)
