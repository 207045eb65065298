"""Task functions for tests/joblib_compat/test_joblib_backend.py (importable by worker
processes)."""
from __future__ import annotations

import os
import signal
import threading
import time
import warnings


def square(x):
    return x * x


def pid_of(x):
    return x, os.getpid()


def divide(a, b):
    return a / b


def sleep_then_return(x, seconds):
    time.sleep(seconds)
    return x


def exit_now(x):
    if x == 3:
        os._exit(3)
    time.sleep(0.01)
    return x


def kill_self(x):
    if x == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.01)
    return x


def current_thread_name(_):
    return threading.current_thread().name


def assume_finite(_):
    import sklearn
    return sklearn.get_config()["assume_finite"]


def inner_threads(_):
    return os.environ.get("OMP_NUM_THREADS")


class TaskWarning(UserWarning):
    pass


def warn_task(x):
    warnings.warn("from a task", TaskWarning, stacklevel=1)
    return x
