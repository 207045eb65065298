"""NumPy arrays from process workers back to the parent without pickling.

A result array larger than ``max_nbytes`` is written once, in the worker,
into an anonymous shared-memory file (``memfd_create``); its descriptor
travels with the reply (``SCM_RIGHTS``, see ``wire``) and the parent maps
it privately (copy-on-write, see ``_PrivateMapping``) and closes it: the
caller gets an ordinary writable ndarray on that memory.  No name
ever exists in a file system, so nothing can be left behind: the memory is
freed when the array is garbage-collected, and by the kernel when a reply
is dropped (an aborted call, a dead worker, a killed parent).

Arrays backed by a user's ``numpy.memmap`` come back by reference (file
name and offset), pieces of the call's own memmapped inputs as copies
(their files go away with the call), anything else pickled with out-of-band
buffers.  Linux only (``memfd_create``); elsewhere results are pickled.
"""
from __future__ import annotations

import functools
import io
import mmap
import os
import pickle
import weakref

from .arrays import (
    backing_memmap,
    memory_order,
    plain_reduce,
    reduce_by_reference,
    tables,
    write_array,
)
from .arrays_in import is_dump
from .wire import NEVER


class ResultPacker:
    """Worker side: pickles a reply, large arrays into shared memory.

    One per worker, used by its main thread only: ``threshold`` is set for
    each reply, the reply pickled with ``pickling.dumps(data, packer)``;
    ``fds`` then holds the descriptors to send with it (the caller closes
    them once sent, or calls :meth:`discard` if pickling failed).
    """

    def __init__(self) -> None:
        self.threshold = NEVER
        self.fds: list[int] = []
        self._tables: dict[bool, dict] = {}

    def dispatch_table(self, cloud: bool = False) -> dict:
        # A pickling pass starts: the descriptors of a failed earlier pass
        # (plain pickle, before the cloudpickle retry) are closed.
        self.discard()
        return tables(self, cloud)

    def _reduce(self, a):
        m = backing_memmap(a)
        if m is not None and m.mode != "c" and a.size and not is_dump(m.filename):
            return reduce_by_reference(a, m)
        if a.nbytes > self.threshold and not a.dtype.hasobject:
            index = self._share(a)
            if index is not None:
                return _shared_result, (index, a.dtype, a.shape,
                                        memory_order(a))
        if m is not None:
            # A piece of an input's memmap: a copy of its own, writable as
            # it would be without memmapping (mode "r" maps are not).
            import numpy as np
            return plain_reduce(np.array(a))
        return plain_reduce(a)

    def _share(self, a) -> int | None:
        try:
            fd = os.memfd_create("joblib_fast_result", os.MFD_CLOEXEC)
        except OSError:  # out of descriptors: send it in the message
            return None
        try:
            write_array(fd, a)
        except OSError:
            os.close(fd)
            return None
        self.fds.append(fd)
        return len(self.fds) - 1

    def discard(self) -> None:
        fds, self.fds = self.fds, []
        for fd in fds:
            os.close(fd)


def _shared_result(*args):
    raise pickle.UnpicklingError(
        "a shared-memory array result can only be unpickled by the parent "
        "that received its descriptor")


class ReplyUnpickler(pickle.Unpickler):
    """Unpickles a reply whose large arrays came as descriptors."""

    def __init__(self, file, buffers, fds: list[int]) -> None:
        super().__init__(file, buffers=buffers)
        self.fds = fds

    def find_class(self, module, name):
        if module == __name__ and name == "_shared_result":
            # Not a bound method: the unpickler's memo keeps what GLOBAL
            # returns, and a reference back to the unpickler would make a
            # cycle that holds every result array until a full collection.
            return functools.partial(_map_shared, self.fds)
        return super().find_class(module, name)


def _map_shared(fds: list[int], index, dtype, shape, order):
    """Map the descriptor of one result array (and close it)."""
    import numpy as np
    fd, fds[index] = fds[index], -1
    count = 1
    for n in shape:
        count *= n
    try:
        owner = _PrivateMapping(fd, count * dtype.itemsize)
    finally:
        os.close(fd)
    return np.asarray(owner).view(dtype)[:count].reshape(shape, order=order)


class _PrivateMapping:
    """A private, writable mapping of a result's shared-memory file,
    unmapped when the last array on it is collected.

    ``MAP_PRIVATE``: what the parent (or a process it forks) writes goes
    to its own copy-on-write pages, so a forked child and its parent never
    see each other's writes, as with any array; pages nobody writes stay
    the worker's pages (zero copy).  Mapped with libc's ``mmap`` because
    ``mmap.mmap`` keeps a duplicate of the descriptor for as long as the
    mapping lives (one descriptor per kept result; ``trackfd=False`` comes
    with Python 3.13): the segment lives on through the mapping alone.
    """

    __slots__ = ("__array_interface__", "__weakref__")

    def __init__(self, fd: int, size: int) -> None:
        libc = _libc()
        length = max(size, 1)
        addr = libc.mmap(None, length, mmap.PROT_READ | mmap.PROT_WRITE,
                         mmap.MAP_PRIVATE, fd, 0)
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


def loads_reply(blob, buffers, fds: list[int]):
    """Unpickle a reply; every descriptor is closed when this returns."""
    if not fds:
        return pickle.loads(blob, buffers=buffers)
    try:
        return ReplyUnpickler(io.BytesIO(blob), buffers, fds).load()
    finally:
        for fd in fds:
            if fd >= 0:
                os.close(fd)
