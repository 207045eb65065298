"""Task functions for tests/dask/.

They live in an importable module (not in the test file) so that dask
worker processes unpickle them by reference.
"""
from __future__ import annotations

import os
import signal
import time


def square(x):
    return x * x


def worker_pid(_=None):
    return os.getpid()


def worker_address(_=None):
    from distributed import get_worker
    return get_worker().address


def batch_key(_=None):
    """The dask key of the batch running this task."""
    from distributed import get_worker
    return get_worker().get_current_task()


def nbytes_on(data, i=0):
    from distributed import get_worker
    return len(data), get_worker().address


def sleep_on(data, seconds):
    from distributed import get_worker
    time.sleep(seconds)
    return get_worker().address


def fail_at(i, bad, folder, seconds=0.0, data=None):
    """Leave a marker file, sleep, raise ValueError when i == bad."""
    open(os.path.join(folder, f"started-{i}"), "w").close()
    if i == bad:
        raise ValueError(f"task {i} failed on purpose")
    time.sleep(seconds)
    return i


def mark_and_sleep(i, folder, seconds):
    open(os.path.join(folder, f"started-{i}"), "w").close()
    time.sleep(seconds)
    return i


def kill_once(i, folder, victim, data=None, seconds=0.05):
    """Task `victim` SIGKILLs its worker on its first run only (a marker
    file says it ran already)."""
    if i == victim:
        try:
            fd = os.open(os.path.join(folder, "killed"),
                         os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            pass
        else:
            os.close(fd)
            os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(seconds)
    return i if data is None else (i, len(data))


def kill_always(_=None):
    os.kill(os.getpid(), signal.SIGKILL)


def nested_pids(n):
    """A Parallel call inside a dask task: the same cluster runs it."""
    from joblib_fast import Parallel, delayed
    parallel = Parallel()
    pids = parallel(delayed(worker_pid)(i) for i in range(n))
    return type(parallel._backend).__name__, pids


def nested_require(require):
    from joblib_fast import Parallel
    return type(Parallel(require=require)._backend).__name__


def _explode():
    raise RuntimeError("this object cannot be unpickled here")


def _explode_outside_worker():
    from distributed import get_worker
    try:
        get_worker()
    except ValueError:
        raise RuntimeError("this object can only be unpickled on a "
                           "dask worker") from None
    return CallerOnly()


class WorkerCannotLoad:
    """Pickles fine; unpickling it raises (on the worker)."""

    def __reduce__(self):
        return (_explode, ())


class CallerOnly:
    """A result that unpickles on the worker only (not in the caller)."""

    def __reduce__(self):
        return (_explode_outside_worker, ())


def make_caller_only(_=None):
    return CallerOnly()


def identity(x):
    return x


def first(x, *rest, **kwargs):
    return x if not isinstance(x, (tuple, list, dict)) else 0


class BigWorkerCannotLoad:
    """Large (scattered), pickles fine, unpickling raises."""

    def __init__(self):
        self.payload = b"x" * 10_000

    def __sizeof__(self):
        return 10_100

    def __reduce__(self):
        return (_explode, ())
