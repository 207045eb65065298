"""Named shared-memory segments: results where the wire passes no
descriptor (``platform.SEGMENTS == "named"``: the Windows profile).

A segment is a header of ``HEADER`` bytes followed by the data::

    magic (8 bytes)  data size (u64)  opened (u32)

Worker: :func:`create` makes a segment under a fresh name
(``joblib_fast_<pid>_r<hex>``), :meth:`Segment.fill` copies an array into
it, and the reply carries the name.  Parent: :func:`attach` opens the
name, maps the data privately (copy-on-write), drops the name where names
outlive handles (POSIX), then sets ``opened``; :func:`release` does the
same for a name it will not map (a reply that failed half-way).

The hand-over: Windows frees a section with its last handle, so the
worker keeps its handle until the parent has mapped the section:
:meth:`Segment.opened` reads the flag, and the worker closes the segments
whose flag is set before each batch and while idle (``arrays_out``).
Whatever it still holds when it exits is closed, and on POSIX unlinked
(the flag unset means the parent may not have unlinked it).  A worker
that is killed cannot do that: on POSIX its parent unlinks the names made
under the dead worker's pid (:func:`forget`, from the pool); on Windows
the kernel closes its handles.  Once the reply is sent the worker never
writes a segment's data again (it keeps only the header mapped, or on
Windows a view it does not write), so nothing it does later changes what
the parent got.

Two implementations of the same functions, chosen at import:

* POSIX: ``shm_open`` (CPython's ``_posixshmem``; not
  ``multiprocessing.shared_memory``, whose resource tracker would unlink
  names behind our back) of a fresh name, the data mapped with the
  caller's ``map_private`` (libc ``mmap``, ``MAP_PRIVATE``).  Runs on
  Linux under ``JOBLIB_FAST_PORTABLE=windows``, which is how the tests
  exercise this module.
* Windows: pagefile-backed sections, ``mmap.mmap(-1, n, tagname=name)``;
  the parent's view is ``access=mmap.ACCESS_COPY``.  Not run on Windows
  yet: the tests call it on Linux with ``mmap`` replaced by a model of
  named sections.
"""
from __future__ import annotations

import mmap
import os
import struct
import sys
from typing import Any, Callable

from .arrays import chunks

# Bytes before the data: the data's offset must be a multiple of the
# allocation granularity (64 KiB on Windows, a page elsewhere).
HEADER = mmap.ALLOCATIONGRANULARITY
_HEAD = struct.Struct("<8sQI")
_OPENED = struct.calcsize("<8sQ")
MAGIC = b"jfnamed1"
PREFIX = "joblib_fast_"
# Where a POSIX system shows its shm_open names (Linux), to find those of
# a dead worker; None where they cannot be listed.
NAME_FOLDER = "/dev/shm" if os.path.isdir("/dev/shm") else None


def name_prefix(pid: int) -> str:
    """The start of every segment name made by the process ``pid``."""
    return f"{PREFIX}{pid}_r"


def _new_name() -> str:
    # 48 random bits: on Windows a name taken already opens that section
    # instead of failing (POSIX's O_EXCL tries another).  macOS's 30
    # characters do not apply: it uses "posix_shm" segments.
    return f"{name_prefix(os.getpid())}{os.urandom(6).hex()}"


def _fill(buf, a) -> None:
    """Copy ``a``'s bytes (``arrays.memory_order``) to the writable
    buffer ``buf`` from its start."""
    import numpy as np
    dest = np.frombuffer(buf, dtype=np.uint8, count=a.nbytes)
    pos = 0
    for chunk in chunks(a):
        dest[pos:pos + chunk.size] = chunk
        pos += chunk.size
    del dest


def _check_head(head, size: int, name: str) -> None:
    magic, nbytes, _ = _HEAD.unpack_from(head)
    if magic != MAGIC or nbytes < size:
        raise FileNotFoundError(
            f"shared-memory result {name!r} is gone (its worker closed it) "
            f"or is not one of ours")


# ------------------------------------------------------------------ POSIX


def posixshmem() -> Any:
    """CPython's own binding of shm_open/shm_unlink (the one
    ``multiprocessing.shared_memory`` uses), or None.  Not ctypes:
    ``shm_open`` is variadic, which ctypes cannot call on macOS arm64."""
    try:
        import _posixshmem
    except ImportError:
        return None
    return _posixshmem


def open_new(new_name: Callable[[], str]) -> tuple[str, int]:
    """``shm_open`` of a name from ``new_name()`` (with its leading
    slash) that no segment has: created exclusively, another name tried
    while one is taken.  (name, descriptor)."""
    shm = posixshmem()
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL
    for _ in range(100):
        name = new_name()
        try:
            return name, shm.shm_open(name, flags, 0o600)
        except FileExistsError:
            continue
    raise FileExistsError(  # pragma: no cover - 100 random names taken
        "no free shared-memory name")


class _PosixSegment:
    """Worker side: a named segment held by its descriptor and a shared
    mapping of its header."""

    __slots__ = ("_fd", "_head", "name", "size")

    def __init__(self, nbytes: int) -> None:
        path, fd = open_new(lambda: "/" + _new_name())
        name = path[1:]
        try:
            os.set_inheritable(fd, False)
            os.ftruncate(fd, HEADER + nbytes)
            head = mmap.mmap(fd, HEADER)
        except BaseException:
            os.close(fd)
            _unlink(name)
            raise
        _HEAD.pack_into(head, 0, MAGIC, nbytes, 0)
        self.name, self.size, self._fd, self._head = name, nbytes, fd, head

    def fill(self, a) -> None:
        """Copy ``a`` into the data (mapped for that alone)."""
        if not a.nbytes:
            return
        data = mmap.mmap(self._fd, a.nbytes, offset=HEADER)
        try:
            _fill(data, a)
        finally:
            data.close()

    def opened(self) -> bool:
        return bool(_HEAD.unpack_from(self._head)[2])

    def close(self) -> None:
        """Let go of the segment; its name too unless the parent has
        opened it (and so unlinked it already)."""
        opened = self.opened()
        self._head.close()
        os.close(self._fd)
        if not opened:
            _unlink(self.name)


def _unlink(name: str) -> None:
    try:
        posixshmem().shm_unlink("/" + name)
    except FileNotFoundError:
        pass


def _posix_attach(name: str, size: int,
                  map_private: Callable[[int, int, int], Any]) -> Any:
    shm = posixshmem()
    fd = shm.shm_open("/" + name, os.O_RDWR, 0)
    try:
        head = mmap.mmap(fd, HEADER)
        try:
            _check_head(head, size, name)
            owner = map_private(fd, size, HEADER)
            _unlink(name)
            struct.pack_into("<I", head, _OPENED, 1)
        finally:
            head.close()
    finally:
        os.close(fd)
    return owner


def _posix_release(name: str) -> None:
    try:
        fd = posixshmem().shm_open("/" + name, os.O_RDWR, 0)
    except FileNotFoundError:
        return
    try:
        _unlink(name)
        head = mmap.mmap(fd, HEADER)
        struct.pack_into("<I", head, _OPENED, 1)
        head.close()
    except (OSError, ValueError, struct.error):
        pass  # not one of ours after all, or already gone
    finally:
        os.close(fd)


def _posix_forget(pid: int) -> None:
    if NAME_FOLDER is None:
        return  # pragma: no cover - names that cannot be listed
    prefix = name_prefix(pid)
    try:
        names = [n for n in os.listdir(NAME_FOLDER) if n.startswith(prefix)]
    except OSError:  # pragma: no cover
        return
    for name in names:
        _unlink(name)


# ---------------------------------------------------------------- Windows


class _WinSegment:
    """Worker side: a pagefile-backed section, held by its one view."""

    __slots__ = ("_mm", "name", "size")

    def __init__(self, nbytes: int) -> None:
        # A fresh random name (_new_name): CreateFileMapping would open an
        # existing section of that name rather than fail.
        name = _new_name()
        self._mm = mmap.mmap(-1, HEADER + nbytes, tagname=name)
        _HEAD.pack_into(self._mm, 0, MAGIC, nbytes, 0)
        self.name, self.size = name, nbytes

    def fill(self, a) -> None:
        if a.nbytes:
            view = memoryview(self._mm)
            try:
                _fill(view[HEADER:], a)
            finally:
                view.release()

    def opened(self) -> bool:
        return bool(_HEAD.unpack_from(self._mm)[2])

    def close(self) -> None:
        self._mm.close()


def _win_attach(name: str, size: int,
                map_private: Callable[[int, int, int], Any]) -> Any:
    import numpy as np

    # Opening a name that no longer exists makes a fresh zeroed section:
    # the magic tells.
    head = mmap.mmap(-1, HEADER, tagname=name, access=mmap.ACCESS_WRITE)
    try:
        _check_head(head, size, name)
        data = mmap.mmap(-1, max(size, 1), tagname=name,
                         access=mmap.ACCESS_COPY, offset=HEADER)
        struct.pack_into("<I", head, _OPENED, 1)
    finally:
        head.close()
    return np.frombuffer(data, dtype=np.uint8)


def _win_release(name: str) -> None:
    head = mmap.mmap(-1, HEADER, tagname=name, access=mmap.ACCESS_WRITE)
    try:
        if _HEAD.unpack_from(head)[0] == MAGIC:
            struct.pack_into("<I", head, _OPENED, 1)
    finally:
        head.close()


def _win_forget(pid: int) -> None:
    """Nothing: the kernel closed the dead worker's handles."""


# (segment class, attach, release, forget) of each implementation.
IMPLEMENTATIONS = {
    "posix": (_PosixSegment, _posix_attach, _posix_release, _posix_forget),
    "windows": (_WinSegment, _win_attach, _win_release, _win_forget),
}
IMPLEMENTATION = "windows" if sys.platform == "win32" else "posix"
# Whether named segments can be made here.
AVAILABLE = IMPLEMENTATION == "windows" or posixshmem() is not None


def create(nbytes: int):
    """Worker: a new segment for ``nbytes`` of data (``.name``,
    ``.fill(a)``, ``.opened()``, ``.close()``)."""
    return IMPLEMENTATIONS[IMPLEMENTATION][0](nbytes)


def attach(name: str, size: int,
           map_private: Callable[[int, int, int], Any]) -> Any:
    """Parent: map ``size`` bytes of the segment ``name`` privately and
    tell its worker so (see the module docstring); raises
    FileNotFoundError when it is gone.  ``map_private(fd, size, offset)``
    maps a descriptor (POSIX)."""
    return IMPLEMENTATIONS[IMPLEMENTATION][1](name, size, map_private)


def release(name: str) -> None:
    """Parent: a segment of a reply it will not map: let it go."""
    IMPLEMENTATIONS[IMPLEMENTATION][2](name)


def forget(pid: int) -> None:
    """Parent: the worker ``pid`` is dead; drop the names it left."""
    IMPLEMENTATIONS[IMPLEMENTATION][3](pid)
