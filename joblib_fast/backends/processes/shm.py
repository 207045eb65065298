"""Shared-memory segments for results: the OS mechanism, in one place.

``arrays_out`` sees only this interface::

    SUPPORTED                      segments can be made and passed here
    new_segment(nbytes) -> handle  worker: a fresh segment to copy a
                                   result into (raises OSError): a
                                   descriptor, or a named segment
    write_segment(handle, a)       worker: copy array ``a`` into it
    on_wire(handle) -> fd | name   worker: what the reply carries
    sent(handle) -> bool           worker: the reply is sent; True: close
                                   it now (descriptors), False: hold it
                                   until the parent opened it (named)
    drop(handle)                   worker: a segment that was not sent
    attach_named(name, size)       parent: :func:`attach_private` for a
                                   named segment (then its worker may let
                                   it go); release_named(name) for one it
                                   will not map
    forget_worker(pid)             parent: the worker ``pid`` died
    attach_private(fd, size)       parent: a private writable mapping of a
                                   received segment (an object with
                                   ``__array_interface__``), unmapped when
                                   the last array on it is collected
    attach_segment(fd, size, off)  parent: the same for a born-shared
                                   segment (data from ``off`` on), whose
                                   worker reuses it once told it was let go
    born_shared() -> module|None   worker: the NumPy allocator whose large
                                   arrays are segments from the start
                                   (``_born_shared.c``; its OS half is
                                   ``segment_memfd.h``: memfd only)

Descriptors travel with the reply (``wire``: SCM_RIGHTS), names as a
frame of it.  The mechanism is ``platform.SEGMENTS``:

* ``"memfd"`` (Linux): anonymous memory files (``memfd_create``), filled
  with ``write``; the born-shared allocator's OS half is
  ``segment_memfd.h``.
* ``"posix_shm"`` (macOS, BSD): ``shm_open`` of a fresh random name,
  ``shm_unlink`` at once (nothing is left behind by a crash), sized with
  one ``ftruncate`` and filled through ``mmap`` (macOS refuses ``write``
  and a second ``ftruncate`` on these).  No born-shared allocator: results
  are copied into a segment once.
* ``"named"`` (Windows: its wire passes no descriptors): a segment with
  a name, which the reply carries; the worker holds it until the parent
  has mapped it (``shm_named``: Windows sections, or POSIX ``shm_open``
  names where the tests force the Windows profile on Linux).
* None (no mechanism runs here): results are pickled.

Descriptors are mapped by the parent with libc's ``mmap``.
"""
from __future__ import annotations

import importlib
import mmap
import os
import weakref
from typing import Any

from . import platform, shm_named
from .arrays import chunks, write_array

# The name a segment shows in /proc/<pid>/maps ("memfd:joblib_fast_result";
# segment_memfd.h gives born-shared segments the same).
SEGMENT_NAME = "joblib_fast_result"


def _memfd_segment(nbytes: int) -> int:
    return os.memfd_create(SEGMENT_NAME, os.MFD_CLOEXEC)


def _posix_segment(nbytes: int) -> int:
    """``shm_open`` + ``shm_unlink`` at once, sized to ``nbytes`` (its
    one ``ftruncate``)."""
    # 30 characters at most: macOS's PSHMNAMLEN.
    name, fd = shm_named.open_new(
        lambda: f"/jf{os.getpid()}_{os.urandom(6).hex()}")
    try:
        shm_named.posixshmem().shm_unlink(name)
        os.set_inheritable(fd, False)
        if nbytes:
            os.ftruncate(fd, nbytes)
    except BaseException:
        os.close(fd)
        raise
    return fd


def new_segment(nbytes: int) -> Any:
    """A new, empty segment for ``nbytes``: a descriptor, or a named
    segment (the caller fills it with :func:`write_segment`, then
    :func:`sent` or :func:`drop`)."""
    return MECHANISMS[MECHANISM][0](nbytes)


def write_segment(handle, a) -> None:
    """Copy ``a``'s bytes (``arrays.memory_order``) into the segment
    ``handle`` from :func:`new_segment`."""
    MECHANISMS[MECHANISM][1](handle, a)


def on_wire(handle) -> int | str:
    """What a reply carries for ``handle``: a descriptor, or a name."""
    return handle if isinstance(handle, int) else handle.name


def sent(handle) -> bool:
    """The reply carrying ``handle`` was sent (or failed to be): a
    descriptor is closed (True); a named segment is kept (False) until
    ``handle.opened()`` or the worker's exit, then ``handle.close()``."""
    if isinstance(handle, int):
        os.close(handle)
        return True
    return False


def drop(handle) -> None:
    """A segment that no reply carried: closed (and its name unlinked)."""
    if isinstance(handle, int):
        os.close(handle)
    else:
        handle.close()


def _write_mapped(fd: int, a) -> None:
    """Fill a segment through a mapping (``write`` refused)."""
    if not a.nbytes:
        return
    import numpy as np
    mm = mmap.mmap(fd, a.nbytes)
    try:
        dest = np.frombuffer(mm, dtype=np.uint8)
        pos = 0
        for chunk in chunks(a):
            dest[pos:pos + chunk.size] = chunk
            pos += chunk.size
        del dest
    finally:
        mm.close()


def _write_named(segment, a) -> None:
    segment.fill(a)


# (new segment, fill it) of each mechanism that runs here.
MECHANISMS = {"posix_shm": (_posix_segment, _write_mapped)}
if shm_named.AVAILABLE:
    MECHANISMS["named"] = (shm_named.create, _write_named)
if hasattr(os, "memfd_create"):
    MECHANISMS["memfd"] = (_memfd_segment, write_array)
if shm_named.posixshmem() is None:  # pragma: no cover - no shm_open
    del MECHANISMS["posix_shm"]

# The mechanism of this process: platform.SEGMENTS where it runs.
MECHANISM = platform.SEGMENTS if platform.SEGMENTS in MECHANISMS else None
SUPPORTED = MECHANISM is not None


class _PrivateMapping:
    """A private, writable mapping of a result's segment, unmapped when
    the last array on it is collected.

    ``MAP_PRIVATE``: what the parent (or a process it forks) writes goes
    to its own copy-on-write pages, so a forked child and its parent never
    see each other's writes, as with any array; pages nobody writes stay
    the worker's pages (zero copy).  Mapped with libc's ``mmap`` because
    ``mmap.mmap`` keeps a duplicate of the descriptor for as long as the
    mapping lives (one descriptor per kept result; ``trackfd=False`` comes
    with Python 3.13): the segment lives on through the mapping alone.
    """

    __slots__ = ("__array_interface__", "__weakref__")

    def __init__(self, fd: int, size: int, offset: int = 0) -> None:
        libc = _libc()
        length = max(size, 1)
        addr = libc.mmap(None, length, mmap.PROT_READ | mmap.PROT_WRITE,
                         mmap.MAP_PRIVATE, fd, offset)
        if addr is None or addr == _MAP_FAILED:
            import ctypes
            err = ctypes.get_errno()
            raise OSError(err, f"mmap of a {size}-byte result failed: "
                               f"{os.strerror(err)}")
        self.__array_interface__ = {
            "data": (addr, False), "shape": (size,), "typestr": "|u1",
            "version": 3}
        finalizer = weakref.finalize(self, libc.munmap, addr, length)
        # At exit the memory may still be in use: the OS frees it.
        finalizer.atexit = False


def attach_private(fd: int, size: int) -> Any:
    """Map ``size`` bytes of the segment ``fd`` privately (see
    :class:`_PrivateMapping`); ``fd`` may be closed right after."""
    return _PrivateMapping(fd, size)


def attach_named(name: str, size: int) -> Any:
    """Map ``size`` bytes of the named segment ``name`` privately (an
    object with ``__array_interface__``); its name is gone (POSIX) and
    its worker told it may let go (``shm_named``)."""
    return shm_named.attach(name, size, _PrivateMapping)


def release_named(name: str) -> None:
    """A named segment of a reply that will not be mapped: let go."""
    shm_named.release(name)


def forget_worker(pid: int) -> None:
    """The worker ``pid`` is dead: the named segments it made and no
    parent opened are dropped (POSIX names; nothing elsewhere)."""
    if MECHANISM == "named":
        shm_named.forget(pid)


class _LentMapping:
    """A born-shared segment in the parent: its data mapped privately
    (as :class:`_PrivateMapping`), its first page (``_born_shared.c``'s
    header) shared.  When the last array on it is collected, the data is
    unmapped, then the header's ``released`` set: the worker may reuse the
    segment's pages for its next large array.  Not if this process forked
    since it mapped them: a child may still map them (the worker then
    never reuses them)."""

    __slots__ = ("__array_interface__", "__weakref__")

    def __init__(self, fd: int, size: int, data_offset: int) -> None:
        libc = _libc()
        length = max(size, 1)
        head = libc.mmap(None, data_offset, mmap.PROT_READ | mmap.PROT_WRITE,
                         mmap.MAP_SHARED, fd, 0)
        if head is None or head == _MAP_FAILED:
            _raise_errno(size)
        addr = libc.mmap(None, length, mmap.PROT_READ | mmap.PROT_WRITE,
                         mmap.MAP_PRIVATE, fd, data_offset)
        if addr is None or addr == _MAP_FAILED:
            libc.munmap(head, data_offset)
            _raise_errno(size)
        self.__array_interface__ = {
            "data": (addr, False), "shape": (size,), "typestr": "|u1",
            "version": 3}
        _watch_forks()
        finalizer = weakref.finalize(self, _let_go, addr, length, head,
                                     data_offset, _forks)
        finalizer.atexit = False


def attach_segment(fd: int, size: int, data_offset: int) -> Any:
    """Map a worker's born-shared segment (see :class:`_LentMapping`);
    ``fd`` may be closed right after."""
    return _LentMapping(fd, size, data_offset)


def _let_go(addr: int, length: int, head: int, head_length: int,
            forks: int) -> None:
    libc = _libc()
    libc.munmap(addr, length)
    if forks == _forks:
        import ctypes
        ctypes.c_uint32.from_address(head).value = 1   # header.released
    libc.munmap(head, head_length)


_forks = 0            # forks of this process (both sides count)
_watching = False


def _count_fork() -> None:
    global _forks
    _forks += 1


def _watch_forks() -> None:
    global _watching
    if not _watching:
        _watching = True
        os.register_at_fork(after_in_parent=_count_fork,
                            after_in_child=_count_fork)


def _raise_errno(size: int) -> None:
    import ctypes
    err = ctypes.get_errno()
    raise OSError(err, f"mmap of a {size}-byte result failed: "
                       f"{os.strerror(err)}")


_MAP_FAILED = (1 << 64) - 1  # (void *) -1 as ctypes returns it
_LIBC = None


def _libc():
    global _LIBC
    if _LIBC is None:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
                              ctypes.c_int, ctypes.c_int, ctypes.c_long]
        libc.munmap.restype = ctypes.c_int
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        _LIBC = libc
    return _LIBC


def born_shared() -> Any:
    """The worker allocator module, or None where it was not built (no
    NumPy at build time, another platform) or cannot load (a NumPy older
    than its headers allow)."""
    if MECHANISM != "memfd":
        return None  # its OS half is segment_memfd.h alone
    # Imported by name, when first asked for: importing it imports NumPy,
    # and it exists only where it was built (an optional extension).
    try:
        return importlib.import_module(f"{__package__}._born_shared")
    except ImportError:
        return None
