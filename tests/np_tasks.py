"""Task functions for tests/test_numpy.py (importable by process workers)."""
from __future__ import annotations

import os
import signal
import time

import numpy as np


def describe(a):
    """What a worker received: type, memmap mode and file, layout, sum."""
    return {
        "type": type(a).__name__,
        "memmap": isinstance(a, np.memmap),
        "mode": getattr(a, "mode", None),
        "filename": getattr(a, "filename", None),
        "writeable": bool(a.flags.writeable),
        "c_contiguous": bool(a.flags.c_contiguous),
        "f_contiguous": bool(a.flags.f_contiguous),
        "shape": a.shape,
        "sum": float(a.sum()),
        "pid": os.getpid(),
    }


def folder_listing(a):
    """The names in the folder of the dump backing ``a``."""
    return sorted(os.listdir(os.path.dirname(a.filename)))


def try_write(a):
    """Write 1 into a[0]; returns the error type name, or None."""
    try:
        a[0] = 1.0
    except (ValueError, TypeError) as exc:
        return type(exc).__name__
    return None


def write_and_read(a, value):
    """Write ``value`` into a[0] and return what a[0] then holds."""
    a[0] = value
    return float(a[0])


def write_then_filename(a, value):
    a[0] = value
    if hasattr(a, "flush"):
        a.flush()
    return a.filename


def first(a):
    return float(a[0])


def fill_slice(out, start, stop, value):
    """The joblib shared-output pattern: fill out[start:stop]."""
    out[start:stop] = value


def ones(n, dtype="float64"):
    return np.ones(n, dtype=dtype)


def arange_2d(rows, cols, order):
    return np.asarray(np.arange(rows * cols, dtype=np.float64).reshape(rows, cols),
                      order=order)


def strided(n):
    """A non-contiguous large result."""
    return np.arange(2 * n, dtype=np.float64)[::2]


def nested(n):
    return (np.full(n, 1.0), [np.full(n, 2.0), {"k": np.full(n, 3.0),
                                                 "small": np.full(3, 4.0)}],
            "text")


def same(a):
    return a


def head(a, n):
    return a[:n]


def sleep_then(a, seconds):
    time.sleep(seconds)
    return float(a.sum())


def fail_at_index(a, bad, index):
    if index == bad:
        raise ValueError(f"task {index} fails on purpose")
    return float(a[0])


def die_on(a, bad, index):
    if index == bad:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.2)
    return float(a[0])


def object_array(n):
    return np.array([{"i": i} for i in range(n)], dtype=object)


def is_ndarray_copy(a):
    """(type name, writeable, owns or shares) of a plain received array."""
    return type(a).__name__, bool(a.flags.writeable)


def many(count, n):
    return [np.full(n, float(i)) for i in range(count)]


def with_lock(n):
    import threading
    return np.ones(n), threading.Lock()


def open_fds():
    return len(os.listdir("/proc/self/fd"))
