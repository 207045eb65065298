"""Task functions for tests/numpy/ (importable by process workers),
and the parent-side helpers those tests share."""
from __future__ import annotations

import gc
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np

from joblib_fast.backends.processes import arrays_in as _arrays_in
from joblib_fast.backends.processes import shm as _shm


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


# ------------------------------------------- parent-side helpers and sizes
# Shared by tests/numpy/ (defined once here, next to the tasks).

BIG = 50_000            # float64 items: 400 kB, above LIMIT
SMALL = 1_000           # 8 kB, below LIMIT
MID = 12_500            # 100 kB: below LIMIT, sent as an out-of-band buffer
LIMIT = "200k"
SHM = "/dev/shm"
# How large results travel in this run (shm.MECHANISM: the platform's
# choice, or the one JOBLIB_FAST_PORTABLE forces), and what their mappings
# look like in /proc/self/maps: memfd files by name, POSIX shared memory by
# its (deleted) name (named segments: ``joblib_fast_<pid>_r<hex>``, already
# unlinked), None: pickled (no result mapping).
SEGMENTS = _shm.MECHANISM
SHARED = 1 if SEGMENTS else 0   # result mappings per large result
RESULT_MAPS = {"posix_shm": "/dev/shm/jf",
               "named": "/dev/shm/joblib_fast_"}.get(
    SEGMENTS, "memfd:joblib_fast_result")
NAMED_MAP = re.compile(r"/dev/shm/joblib_fast_\d+_r[0-9a-f]+ \(deleted\)$")


def descriptors() -> tuple[int, int]:
    """This process's open descriptors: (how many, how many are result
    segments: memfd segments by name, POSIX shared memory by path).  Other
    tests' pools open and close descriptors meanwhile: compare segments
    exactly, the total only as "no more than before"."""
    targets = []
    for name in os.listdir("/proc/self/fd"):
        try:
            targets.append(os.readlink(f"/proc/self/fd/{name}"))
        except OSError:  # the one listdir used, closed since
            pass
    return len(targets), sum(_shm.SEGMENT_NAME in t or t.startswith(SHM + "/")
                             for t in targets)


def _is_result_line(line: str) -> bool:
    if SEGMENTS == "named":
        return NAMED_MAP.search(line.rstrip("\n")) is not None
    return RESULT_MAPS in line


def made_by_this_tree(name: str) -> bool:
    """A ``joblib_fast_<pid>_...`` entry made by this process or one of
    its children (or a name without a pid): another test run on the
    machine has its own in the same /dev/shm."""

    import psutil
    found = re.match(r"joblib_fast_(\d+)_", name)
    if found is None:
        return True
    me = psutil.Process()
    return int(found.group(1)) in {me.pid} | {
        p.pid for p in me.children(recursive=True)}


def default_dump_base() -> str:
    """Where an input dump goes by default (/dev/shm only where the
    platform uses it)."""
    import tempfile
    return _arrays_in.SHM_FOLDER or tempfile.gettempdir()



def ours(folder) -> list:
    """This process's joblib_fast entries in ``folder``."""
    prefix = f"joblib_fast_{os.getpid()}_"
    try:
        return sorted(n for n in os.listdir(folder) if n.startswith(prefix))
    except FileNotFoundError:
        return []


def result_maps() -> int:
    """Shared-memory results mapped in this process now: their data
    mappings (private, "rw-p"); a born-shared result also maps its
    segment's header page shared ("rw-s"), not counted."""
    gc.collect()
    with open("/proc/self/maps") as f:
        return sum(is_result_data_map(line) for line in f)


def is_result_data_map(line: str) -> bool:
    """A /proc/<pid>/maps line of a result's data mapping."""
    return _is_result_line(line) and line.split()[1].endswith("p")


def par(**kwargs):
    """A process-backend Parallel with the tests' ``max_nbytes``."""
    from joblib_fast import Parallel

    kwargs.setdefault("n_jobs", 2)
    kwargs.setdefault("backend", "loky")
    kwargs.setdefault("max_nbytes", LIMIT)
    return Parallel(**kwargs)


def mapped_base(a):
    """The object at the end of ``a``'s base chain (through memoryviews)."""
    b = a
    while True:
        if isinstance(b, memoryview):
            b = b.obj
        elif getattr(b, "base", None) is not None:
            b = b.base
        else:
            return b


def is_shared_result(a) -> bool:
    """``a``'s data lies in a shared-memory result mapping."""
    addr = a.__array_interface__["data"][0]
    with open("/proc/self/maps") as f:
        for line in f:
            if _is_result_line(line):
                low, high = (int(x, 16) for x in line.split()[0].split("-"))
                if low <= addr < high:
                    return True
    return False


def dead_pid() -> int:
    """The pid of a process that has already exited."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(proc.stdout)


def big_array(i, n=300_000):
    import numpy as np
    return np.full(n, i, dtype=np.float64)


# ------------------------------------------- named result segments
# (tests/processes/test_named_segments.py)

def named_segments(pid=None) -> set:
    """Names of named result segments in /dev/shm (``pid``'s only)."""
    pid_pattern = str(pid) if pid else r"\d+"
    pattern = re.compile(rf"joblib_fast_{pid_pattern}_r[0-9a-f]+$")
    try:
        return {n for n in os.listdir(SHM) if pattern.match(n)}
    except FileNotFoundError:
        return set()


_KEPT = {}


def keep(n, value):
    """Return a large array and keep it here (by pid) for later tasks."""
    a = np.full(n, float(value))
    _KEPT[os.getpid()] = a
    return os.getpid(), a


def kept_sum():
    a = _KEPT.get(os.getpid())
    return os.getpid(), None if a is None else float(a.sum())


def bump_kept():
    a = _KEPT.get(os.getpid())
    if a is not None:
        a += 100.0
    return os.getpid()


class _DieWhilePickled:
    """Pickled after a large array of the same reply: its segment exists
    then.  Records this worker's segment names in ``path``, then kills the
    worker (``block``: waits instead, after creating ``path + '.ready'``)."""

    def __init__(self, path, block=False):
        self.path, self.block = path, block

    def __reduce__(self):
        with open(self.path, "w") as f:
            f.write("\n".join(sorted(named_segments(os.getpid()))))
        if self.block:
            open(self.path + ".ready", "w").close()
            time.sleep(60)
        os.kill(os.getpid(), signal.SIGKILL)
        return (str, ())


def big_then_die(n, path):
    return [np.ones(n), _DieWhilePickled(path)]


def big_then_block(n, path):
    return [np.ones(n), _DieWhilePickled(path, block=True)]


def fail_when_ready(path, seconds=30.0):
    """Raise once ``path`` exists (or after ``seconds``)."""
    deadline = time.monotonic() + seconds
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    raise ValueError("the other task is held up")


def stop_parent_then_big(parent, n):
    """Stop the parent (it cannot open this reply's segment), then return
    a large array."""
    os.kill(parent, signal.SIGSTOP)
    return np.ones(n)
