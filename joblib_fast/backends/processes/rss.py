"""The memory guard of a worker process: has this process's resident memory
grown by more than a limit since it started?  (Worker side; imports nothing
of the package.)

A task that leaks (a C extension that never frees, a cache that only
grows) makes a reusable worker grow for as long as it lives.  The worker
measures itself after each batch and, past the limit, says so in its
reply; the parent then replaces it between batches (``pool``).

How the resident size is read, without psutil:

- Linux: ``/proc/self/statm`` kept open and re-read with one ``pread`` (a
  few microseconds a batch): resident pages minus shared ones (second and
  third fields), the private memory a leak grows.  Shared pages are left
  out: the shared-memory segments that large NumPy arrays are born in, and
  that a worker keeps for reuse once freed (``arrays_out``), are not a
  leak, and counting them replaced workers of NumPy-heavy tasks after
  every batch;
- other POSIX systems (macOS, BSD): ``getrusage``'s peak resident size
  (``ru_maxrss``): a leak raises the peak as much as the current size;
- Windows: psutil when installed, else the guard is off.
"""
from __future__ import annotations

import gc
import os
import sys
from typing import Callable


def _statm_reader() -> Callable[[], int] | None:
    try:
        fd = os.open("/proc/self/statm", os.O_RDONLY)
    except (OSError, AttributeError):
        return None
    page = os.sysconf("SC_PAGE_SIZE")

    def read() -> int:
        fields = os.pread(fd, 128, 0).split()
        return (int(fields[1]) - int(fields[2])) * page
    try:
        read()
    except (OSError, ValueError, IndexError):
        os.close(fd)
        return None
    return read


def _rusage_reader() -> Callable[[], int] | None:
    try:
        import resource
    except ImportError:
        return None
    # ru_maxrss is in bytes on macOS, in kilobytes elsewhere.
    unit = 1 if sys.platform == "darwin" else 1024

    def read() -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit
    return read


def _psutil_reader() -> Callable[[], int] | None:
    try:
        import psutil
    except ImportError:
        return None
    process = psutil.Process()

    def read() -> int:
        return process.memory_info().rss
    return read


def resident_reader() -> Callable[[], int] | None:
    """A function returning this process's resident size in bytes (see
    the module docstring), or None where it cannot be read."""
    for make in (_statm_reader, _rusage_reader, _psutil_reader):
        read = make()
        if read is not None:
            return read
    return None


class MemoryGuard:
    """Made in the worker before its first batch: the resident size then is
    the baseline."""

    def __init__(self, limit: int, read: Callable[[], int]) -> None:
        self.limit = limit
        self.read = read
        self.base = read()

    def exceeded(self) -> bool:
        """True when the worker grew past the limit.  Garbage (reference
        cycles) is collected once before saying so: memory a collection
        gives back is not a leak."""
        if self.read() - self.base <= self.limit:
            return False
        gc.collect()
        return self.read() - self.base > self.limit


def memory_guard(limit: int | None) -> MemoryGuard | None:
    """The guard for ``limit`` bytes of growth (None: no guard)."""
    if limit is None:
        return None
    read = resident_reader()
    return None if read is None else MemoryGuard(limit, read)
