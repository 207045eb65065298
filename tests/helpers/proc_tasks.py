"""Task functions for the process backend tests (tests/processes/ and the
process cases of tests/api/).

They live in an importable module (not in the test file) so that worker
processes started by spawn or forkserver can unpickle them by reference.
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

# Set by the parent at run time: a forked worker sees the parent's value,
# a spawned or forkserver worker imports this module afresh and sees None.
PARENT_MARK = None


from helpers.common import square  # noqa: F401 - the one shared definition


def identity(x):
    return x


def pid_of(x):
    return x, os.getpid()


def sleep_then_return(x, seconds):
    time.sleep(seconds)
    return x


def timed(x, seconds):
    """(x, pid, start, end) with wall-clock times comparable across
    processes."""
    start = time.time()
    time.sleep(seconds)
    return x, os.getpid(), start, time.time()


def worker_info():
    """How this worker was started (see test_start_method_*)."""
    import multiprocessing

    return {"pid": os.getpid(), "ppid": os.getppid(), "mark": PARENT_MARK,
            "name": multiprocessing.current_process().name}


class CustomError(Exception):
    pass


def raise_custom(x):
    if x == 3:
        raise CustomError(f"task {x} failed on purpose")
    return x


class UnpicklableError(Exception):
    """Pickles fine but cannot be unpickled: __init__ needs two arguments
    while ``args`` holds one."""

    def __init__(self, a, b):
        super().__init__(f"{a}-{b}")


def raise_unpicklable_error(x):
    raise UnpicklableError("left", "right")


def raise_with_lock_attribute(x):
    exc = ValueError("carries a lock")
    exc.lock = threading.Lock()
    raise exc


def append_then_maybe_fail(path, x, fail_at, seconds):
    """Write x to ``path`` (one line per started task), fail at ``fail_at``."""
    with open(path, "a") as f:
        f.write(f"{x}\n")
    if x == fail_at:
        raise CustomError(f"stop at {x}")
    time.sleep(seconds)
    return x


def return_lock(x):
    if x == 5:
        return threading.Lock()
    return x


def write_pid(directory, x):
    with open(os.path.join(directory, f"{os.getpid()}.pid"), "w") as f:
        f.write(str(os.getpid()))
    return x


def write_pid_then_sleep(directory, x, seconds):
    write_pid(directory, x)
    time.sleep(seconds)
    return x


def exit_worker(x, code=3):
    if x == 2:
        os._exit(code)
    time.sleep(0.01)
    return x


def sigkill_worker(x):
    if x == 2:
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(10)
    time.sleep(0.01)
    return x


def segfault_worker(x, crash_log=None):
    """Task 2 crashes its worker with SIGSEGV.  With ``crash_log`` (a
    path), the fault handler's report goes to that file: a fork worker
    inherits pytest's fault handler, whose report of every thread's stack
    would otherwise reach the terminal of a passing run."""
    if x == 2:
        import ctypes
        import faulthandler
        if crash_log is not None:
            log = open(crash_log, "w")  # left open: the crash ends the process
            faulthandler.enable(file=log, all_threads=False)
        ctypes.string_at(0)
    time.sleep(0.01)
    return x


def nested_parallel(n):
    """Run a nested Parallel inside a worker; report what it used."""
    import psutil

    from joblib_fast import Parallel, delayed
    from joblib_fast.config import get_active_backend

    results = Parallel(n_jobs=2)(delayed(square)(i) for i in range(n))
    backend = type(get_active_backend()[0]).__name__
    children = len(psutil.Process().children(recursive=True))
    return results, backend, children


def env_vars(names):
    return {name: os.environ.get(name) for name in names}


def _fail_in_another_process(creator):
    if os.getpid() != creator:
        raise RuntimeError("this object only unpickles in the process "
                           "that created it")
    return OnlyInParent()


class OnlyInParent:
    """Pickles anywhere, unpickles only in the process that made it."""

    def __init__(self):
        self.creator = os.getpid()

    def __reduce__(self):
        return _fail_in_another_process, (self.creator,)


def make_unpicklable_result(x):
    """A result that pickles in the worker and fails to unpickle in the
    parent."""
    if x == 4:
        return OnlyInParent()
    return x


def openblas_threads():
    """Threads the OpenBLAS bundled with numpy will use here, or None when
    it cannot be found (numpy missing, or not a wheel with its own
    OpenBLAS)."""
    import ctypes
    import glob

    try:
        import numpy
    except ImportError:
        return None
    libs = os.path.join(os.path.dirname(os.path.dirname(numpy.__file__)),
                        "numpy.libs")
    for path in glob.glob(os.path.join(libs, "lib*openblas*.so*")):
        lib = ctypes.CDLL(path)
        for name in ("scipy_openblas_get_num_threads64_",
                     "scipy_openblas_get_num_threads",
                     "openblas_get_num_threads64_",
                     "openblas_get_num_threads"):
            if hasattr(lib, name):
                return getattr(lib, name)()
    return None


def _write_exit_mark(path):
    with open(path, "w") as f:
        f.write("clean exit")


def mark_clean_exit(directory, x):
    """Leave ``<pid>.exit`` in ``directory`` if this worker later exits by
    itself (multiprocessing's exit finalizers run); a killed worker leaves
    nothing."""
    from multiprocessing import util

    path = os.path.join(directory, f"{os.getpid()}.exit")
    if not getattr(util, "_jf_test_exit_mark", None):
        util._jf_test_exit_mark = util.Finalize(
            None, _write_exit_mark, args=(path,), exitpriority=100)
    time.sleep(0.05)
    return os.getpid()


class CodeError(Exception):
    """Builds its own message from its argument."""

    def __init__(self, code):
        super().__init__(f"failed with code {code}")
        self.code = code


def raise_code_error(code):
    raise CodeError(code)


def spawn_sleeper_then_hang(path):
    """Start a grandchild, write its pid to ``path``, then hang."""
    child = subprocess.Popen(["sleep", "600"])
    with open(path + ".tmp", "w") as f:
        f.write(str(child.pid))
    os.replace(path + ".tmp", path)  # whole or absent
    time.sleep(600)


def sleeper_or_fail(path, i):
    """Task 0 starts a grandchild and hangs; task 1 fails once it runs."""
    if i == 0:
        spawn_sleeper_then_hang(path)
    while not os.path.exists(path):
        time.sleep(0.01)
    raise ValueError("task 1 fails")
