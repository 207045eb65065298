"""The process-worker main loop (runs inside each worker process).

Protocol, over one duplex pipe per worker:

parent -> worker   two frames: a header ``struct HEADER (key, kind)`` and
    the pickled payload (kept apart so a payload that cannot be unpickled
    is still reported against its batch);
    kind ``UNIFORM``: ``payload = (func, [args, ...])`` (one function, no
    keyword arguments: the common ``delayed(f)(x)`` case, smaller to send);
    kind ``GENERAL``: ``payload = [(func, args, kwargs), ...]``.
worker -> parent   ``(key, status, data, duration)``
    ``OK``: ``data`` = list of results;
    ``TASK_ERROR``: ``data = (index in batch, pickled exception or None,
    exception type name, message, worker traceback text)``;
    ``SEND_ERROR``: ``data = (index in batch or -1, message)`` when the
    batch could not be unpickled or a result could not be pickled.

A reader thread drains the inbound pipe into a queue so that the parent
never blocks on a full pipe while this process is busy sending results
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

UNIFORM, GENERAL = 0, 1
OK, TASK_ERROR, SEND_ERROR = 0, 1, 2
HEADER = struct.Struct("<qB")
PROTOCOL = pickle.HIGHEST_PROTOCOL


def _dumps(obj) -> bytes:
    """Plain pickle on the fast path; cloudpickle for what it cannot do."""
    try:
        return pickle.dumps(obj, protocol=PROTOCOL)
    except Exception:  # noqa: BLE001 - any pickling failure
        import cloudpickle
        return cloudpickle.dumps(obj, protocol=PROTOCOL)


def _reader(conn, inbox: queue.SimpleQueue) -> None:
    try:
        while True:
            inbox.put(conn.recv_bytes())
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


def _reply(conn, key, status, data, duration) -> None:
    try:
        blob = pickle.dumps((key, status, data, duration), protocol=PROTOCOL)
    except Exception:  # noqa: BLE001 - any pickling failure
        try:
            blob = _dumps((key, status, data, duration))
        except Exception as exc:  # noqa: BLE001 - any pickling failure
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
            blob = pickle.dumps((key, SEND_ERROR, (index, message), duration),
                                protocol=PROTOCOL)
    conn.send_bytes(blob)


def main(conn, env: dict, idle_timeout: float) -> None:
    """Serve batches from ``conn`` until it closes or stays idle too long."""
    os.environ.update(env)
    # Ctrl-C in a terminal reaches the whole process group: the parent
    # decides what stops; workers are stopped by it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from .backends.processes import ProcessBackend
    from .config import _enter_worker
    _enter_worker(ProcessBackend(nesting_level=0), None)

    inbox: queue.SimpleQueue = queue.SimpleQueue()
    threading.Thread(target=_reader, args=(conn, inbox), daemon=True,
                     name="joblib_fast-worker-reader").start()
    while True:
        try:
            message = inbox.get(timeout=idle_timeout)
        except queue.Empty:
            break
        if message is None:
            break
        key, kind = HEADER.unpack(message)
        message = inbox.get()
        if message is None:
            break
        start = time.perf_counter()
        try:
            payload = pickle.loads(message)
        except BaseException as exc:  # noqa: BLE001
            _reply(conn, key, SEND_ERROR,
                   (-1, "the task batch could not be unpickled in the worker: "
                        f"{type(exc).__name__}: {exc}"), 0.0)
            continue
        del message
        status, data = _run(kind, payload)
        del payload
        _reply(conn, key, status, data, time.perf_counter() - start)
        del data
    conn.close()
    sys.exit(0)
