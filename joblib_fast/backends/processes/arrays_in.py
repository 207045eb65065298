"""NumPy arrays from the parent to process workers without copies
(joblib's memmapping, see its user guide; results: ``arrays_out``).

* An array larger than ``max_nbytes`` is written once per call into a file
  of a per-call folder (``joblib_fast_<pid>_n<pid namespace>c<unique>``)
  and reaches the workers as a ``numpy.memmap`` opened with ``mmap_mode``.
  Inside a ``with Parallel(...)`` block the next call reuses the file if
  the array still holds the same bytes (a ``memcmp``, about half the cost
  of writing it again).
* An array that already is a ``numpy.memmap`` (or a view of one) travels
  as its file name, offset, shape and strides.
* Anything else, small arrays included, is pickled with protocol 5, array
  data as out-of-band buffers (see ``wire``).

The folders of a call are removed when the pool is released (end of the
call or of the ``with Parallel(...)`` block, errors included), at exit,
and, for a parent that was killed, by the next pool started by any process
(``sweep_stale``: the folder name carries the pid of its creator).  A file
the OS refuses to delete while it is mapped (Windows) is deleted later:
at the next cleanup of this process, at exit, or by that sweep.
"""
from __future__ import annotations

import atexit
import itertools
import mmap
import os
import shutil
import tempfile
import threading
import weakref
from typing import Any

from . import platform, shm
from .arrays import (
    COPY_CHUNK,
    address,
    backing_memmap,
    chunks,
    memory_order,
    plain_reduce,
    reduce_by_reference,
    set_memmap_attrs,
    tables,
    write_array,
)
from .tree import alive
from .wire import NEVER

PREFIX = "joblib_fast_"
# The RAM-backed folder that dumps go to by default (platform.SHM_FOLDER:
# Linux only), or None.
SHM_FOLDER = platform.SHM_FOLDER
# A dump is written in binary mode (Windows' text mode would translate
# its bytes).
_DUMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)

_counter = itertools.count()
# Guards _LIVE_FOLDERS (folders of this process, removed at exit) and
# _AT_EXIT_REGISTERED.
_LIVE_LOCK = threading.Lock()
_LIVE_FOLDERS: set = set()
_AT_EXIT_REGISTERED = False


# ------------------------------------------------------------- folders


def _free_bytes(folder: str) -> int:
    """Bytes an unprivileged process may still write in ``folder``'s file
    system (tests patch this to fake a small /dev/shm)."""
    stats = os.statvfs(folder)
    return stats.f_bavail * stats.f_frsize


def candidate_folders(temp_folder: str | None, nbytes: int) -> list[str]:
    """Where the dump of ``nbytes`` may go, best first: ``temp_folder``,
    else ``JOBLIB_TEMP_FOLDER``, else /dev/shm when it is writable and has
    room (Docker gives it 64 MB), else the system temp folder."""
    if temp_folder:
        return [os.path.abspath(os.path.expanduser(os.fspath(temp_folder)))]
    env = os.environ.get("JOBLIB_TEMP_FOLDER")
    if env:
        return [os.path.abspath(os.path.expanduser(env))]
    folders = []
    if SHM_FOLDER and os.path.isdir(SHM_FOLDER) and \
            os.access(SHM_FOLDER, os.W_OK):
        try:
            if _free_bytes(SHM_FOLDER) >= nbytes:
                folders.append(SHM_FOLDER)
        except OSError:
            pass
    folders.append(tempfile.gettempdir())
    return folders


_NAMESPACE: str | None = None


def _namespace() -> str:
    """A token for this pid namespace: a pid means something only inside
    its namespace (containers may share /dev/shm or /tmp, not pids)."""
    global _NAMESPACE
    if _NAMESPACE is None:
        try:
            _NAMESPACE = str(os.stat("/proc/self/ns/pid").st_ino)
        except OSError:
            _NAMESPACE = "0"
    return _NAMESPACE


def _folder_name() -> str:
    """``joblib_fast_<pid>_n<pid namespace>c<unique>``."""
    return (f"{PREFIX}{os.getpid()}_n{_namespace()}c{next(_counter)}"
            f"{os.urandom(4).hex()}")


def _owner_pid(name: str) -> int | None:
    """The pid in a ``joblib_fast_<pid>_n<namespace>c...`` name made in
    this pid namespace, or None."""
    if not name.startswith(PREFIX):
        return None
    pid, _, rest = name[len(PREFIX):].partition("_")
    if not pid.isdigit() or not rest.startswith(f"n{_namespace()}c"):
        return None
    return int(pid)




def sweep_stale(extra: str | None = None) -> list[str]:
    """Remove the folders left by joblib_fast processes that died before
    cleaning up (killed parents); returns what was removed."""
    bases = {SHM_FOLDER, tempfile.gettempdir()} - {None}
    env = os.environ.get("JOBLIB_TEMP_FOLDER")
    for folder in (env, extra):
        if folder:
            bases.add(os.path.abspath(os.path.expanduser(os.fspath(folder))))
    removed = []
    me = os.getpid()
    for base in bases:
        try:
            names = os.listdir(base)
        except OSError:
            continue
        for name in names:
            pid = _owner_pid(name)
            if pid is None or pid == me or alive(pid):
                continue
            path = os.path.join(base, name)
            try:
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                else:
                    os.unlink(path)
                removed.append(path)
            except OSError:
                pass
    return removed


def _remove_live_folders() -> None:
    """At exit: the folders of calls still running (a forked child that
    inherited the set leaves its parent's folders alone)."""
    with _LIVE_LOCK:
        folders = list(_LIVE_FOLDERS)
        _LIVE_FOLDERS.clear()
    for folder in folders:
        if _made_here(folder):
            remove_path(folder)
    _retry_deferred()


# Files and folders the OS refused to delete (Windows: still mapped by a
# worker or by an array the caller kept), tried again later.  Guarded by
# _LIVE_LOCK.
_DEFERRED: set = set()


def remove_path(path: str) -> bool:
    """Delete a dump file or a call's folder; one the OS refuses to
    delete now is remembered and deleted later (:func:`_retry_deferred`).
    True when it is gone."""
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            # Everything it can, whatever it cannot (checked below).
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
    except OSError:
        pass
    if os.path.lexists(path):
        _defer(path)
        return False
    return True


def _defer(path: str) -> None:
    global _AT_EXIT_REGISTERED
    with _LIVE_LOCK:
        if not _AT_EXIT_REGISTERED:
            atexit.register(_remove_live_folders)
            _AT_EXIT_REGISTERED = True
        _DEFERRED.add((os.getpid(), path))


def _retry_deferred() -> None:
    """Try the deferred deletions again (those still refused stay); a
    forked child leaves its parent's alone."""
    with _LIVE_LOCK:
        paths = list(_DEFERRED)
        _DEFERRED.clear()
    me = os.getpid()
    for pid, path in paths:
        if pid == me:
            remove_path(path)


def _add_live_folder(folder: str) -> None:
    """Track ``folder`` for removal at exit (the hook is registered with
    the first folder, not at import)."""
    global _AT_EXIT_REGISTERED
    with _LIVE_LOCK:
        if not _AT_EXIT_REGISTERED:
            atexit.register(_remove_live_folders)
            _AT_EXIT_REGISTERED = True
        _LIVE_FOLDERS.add(folder)


def _made_here(folder: str) -> bool:
    return os.path.basename(folder).startswith(f"{PREFIX}{os.getpid()}_")



def is_dump(filename: Any) -> bool:
    """True for a file written by :class:`ArrayExchange` (removed at the end
    of its call: never passed back by reference)."""
    if not isinstance(filename, str):
        return False
    return os.path.basename(os.path.dirname(filename)).startswith(PREFIX)


# ------------------------------------------------ worker: input dumps

# (path, mode) -> (mmap of a dump, the dump's inode), shared by every task
# the worker runs while the dump exists: the dump is mapped, and its page
# tables set up, once per worker for the call (for the calls of a `with`
# block), not once per task.  A mapping is let go once its dump was removed
# (end of the call or block) so that the memory is freed: see
# :func:`worker_idle`.  Only the worker's main thread touches it.
_WORKER_MAPS: dict[tuple[str, str], tuple[mmap.mmap, int]] = {}

# Seconds between two looks of an idle worker at whether the dumps it
# keeps mapped still exist: how long a finished call's input memory may
# outlive it, against the wake-ups of an idle worker while it keeps a
# mapping (none once it keeps none).
MAP_CHECK_SECONDS = 0.05

# MAP_POPULATE: the page tables of a mapping are filled in one system call
# rather than by one fault per few pages as the task first reads it.
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)
# mmap's POSIX arguments (flags, prot); elsewhere (Windows) its access=.
_POSIX_MMAP = platform.POSIX_MMAP
# Where the OS refuses to delete a mapped file (Windows), a worker keeping
# a dump mapped would keep it from being deleted: each task maps it then,
# and the mapping goes with the task's arrays.
_KEEP_MAPS = platform.DELETE_MAPPED


def worker_idle() -> bool:
    """Let go of the mappings whose dump was removed; True while some
    remain (then call again within ``MAP_CHECK_SECONDS``)."""
    for key, (_, inode) in list(_WORKER_MAPS.items()):
        try:
            kept = os.stat(key[0]).st_ino == inode
        except OSError:
            kept = False
        if not kept:
            # Arrays a task kept still hold the mmap object (and its pages).
            del _WORKER_MAPS[key]
    return bool(_WORKER_MAPS)


def _map_dump(path: str, mode: str) -> tuple[mmap.mmap, int]:
    with open(path, "rb" if mode == "r" else "r+b") as f:
        inode = os.fstat(f.fileno()).st_ino
        if not _POSIX_MMAP:
            access = mmap.ACCESS_READ if mode == "r" else mmap.ACCESS_WRITE
            return mmap.mmap(f.fileno(), 0, access=access), inode
        prot = mmap.PROT_READ if mode == "r" else \
            mmap.PROT_READ | mmap.PROT_WRITE
        try:
            mm = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED | _POPULATE,
                           prot=prot)
        except OSError:
            if not _POPULATE:
                raise
            mm = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED, prot=prot)
    return mm, inode


def _open_dump(path, dtype, shape, order, mode):
    """Worker side of a dump: a ``numpy.memmap`` opened with ``mode``."""
    import numpy as np
    if mode not in ("r", "r+"):  # "c": every task gets its private copy
        return np.memmap(path, dtype=dtype, mode=mode, shape=shape,
                         order=order)
    key = (path, mode)
    entry = _WORKER_MAPS.get(key)
    if entry is None:
        entry = _map_dump(path, mode)
        if _KEEP_MAPS:
            _WORKER_MAPS[key] = entry
    mm = entry[0]
    out = np.ndarray.__new__(np.memmap, shape, dtype=dtype, buffer=mm,
                             order=order)
    return set_memmap_attrs(out, mm, path, 0, mode)


# ---------------------------------------------- parent: one lease's dumps


class _Dump:
    __slots__ = ("generation", "layout", "order", "path", "ref", "view")

    def __init__(self, ref, path, order, layout, generation):
        self.ref = ref
        self.path = path
        self.order = order
        self.layout = layout
        self.generation = generation
        self.view = None  # the dump mapped read-only, once compared

    def same_bytes(self, a) -> bool:
        """Whether the dump still holds ``a``'s bytes (the array may have
        been modified since, or the dump by an "r+" worker).  The mapping
        is kept for the next comparison (its pages stay mapped)."""
        if self.view is None:
            self.view = _map_readonly(self.path)
            if self.view is None:
                return False
        disk = self.view
        if disk.size != a.nbytes:
            return False
        pos = 0
        for chunk in chunks(a):
            if not _equal(chunk, disk[pos:pos + chunk.size]):
                return False
            pos += chunk.size
        return True


def _layout(a) -> tuple:
    return (a.dtype, a.shape, a.strides, address(a))


class ArrayExchange:
    """Parent-side array handling for one lease of a pool (a call, or the
    calls of a ``with Parallel(...)`` block).

    Only the thread running the call uses it (pickling happens in
    ``ProcessPool.submit``/``wait``); ``cleanup`` may also run at exit.
    """

    def __init__(self, max_nbytes: int | None = None,
                 mmap_mode: str | None = None,
                 temp_folder: str | None = None,
                 return_shared: bool = True) -> None:
        self.max_nbytes = max_nbytes
        self.mmap_mode = mmap_mode
        self.temp_folder = temp_folder
        # Workers write results larger than this many bytes to shared
        # memory (an int for the wire; wire.NEVER: never).
        self.out_threshold = result_threshold(max_nbytes) if (
            return_shared and shm.SUPPORTED) else NEVER
        self._dump_threshold = max_nbytes if mmap_mode is not None else None
        self._worker_mode = "r+" if mmap_mode == "w+" else mmap_mode
        self._dumps: dict[int, _Dump] = {}   # id(array) -> its dump
        self._folders: dict[str, str] = {}   # base folder -> our folder in it
        self._generation = 0                 # calls ended in this lease
        self._tables: dict[bool, dict] = {}

    # ------------------------------------------------------ pickling

    def dispatch_table(self, cloud: bool = False) -> dict:
        return tables(self, cloud)

    def _reduce(self, a):
        m = backing_memmap(a)
        if m is not None and m.mode != "c" and a.size:
            return reduce_by_reference(a, m)
        threshold = self._dump_threshold
        if threshold is None or not a.nbytes > threshold or not a.nbytes \
                or a.dtype.hasobject:
            return plain_reduce(a)
        path, order = self._dump(a)
        return _open_dump, (path, a.dtype, a.shape, order, self._worker_mode)

    # --------------------------------------------------------- dumps

    def _dump(self, a) -> tuple[str, str]:
        """The file holding ``a``: written once per call; a dump from an
        earlier call of the same ``with`` block is reused if the array
        still holds the same bytes."""
        entry = self._dumps.get(id(a))
        if entry is not None:
            if entry.ref() is a and entry.layout == _layout(a) and (
                    entry.generation == self._generation
                    or entry.same_bytes(a)):
                entry.generation = self._generation
                return entry.path, entry.order
            self._drop(id(a))
        path = self._write(a)
        order = memory_order(a)
        self._dumps[id(a)] = _Dump(weakref.ref(a), path, order, _layout(a),
                                   self._generation)
        return path, order

    def _write(self, a) -> str:
        folders = candidate_folders(self.temp_folder, a.nbytes)
        for i, base in enumerate(folders):
            try:
                path = os.path.join(
                    self._folder(base),
                    f"a{next(_counter)}-{os.urandom(4).hex()}.mmap")
                fd = os.open(path, _DUMP_FLAGS, 0o600)
            except OSError as exc:
                if i == len(folders) - 1:
                    raise _dump_error(a, base, exc) from exc
                continue
            try:
                write_array(fd, a)
            except OSError as exc:
                os.close(fd)
                remove_path(path)
                if i == len(folders) - 1:
                    raise _dump_error(a, base, exc) from exc
                continue  # no room after all: next folder
            os.close(fd)
            return path
        raise AssertionError("unreachable")  # pragma: no cover

    def _folder(self, base: str) -> str:
        folder = self._folders.get(base)
        if folder is None:
            os.makedirs(base, exist_ok=True)
            folder = os.path.join(base, _folder_name())
            os.mkdir(folder, 0o700)
            _add_live_folder(folder)
            self._folders[base] = folder
        return folder

    def _drop(self, key: int) -> None:
        entry = self._dumps.pop(key)
        entry.view = None  # our own mapping of it, if compared
        remove_path(entry.path)

    # ------------------------------------------------------ lifetime

    def end_call(self) -> None:
        """A call of the ``with`` block ended: later calls re-check the
        dumps they reuse; dumps of arrays that are gone are removed."""
        self._generation += 1
        for key in [k for k, e in self._dumps.items() if e.ref() is None]:
            self._drop(key)

    def cleanup(self) -> None:
        """Remove every file and folder of this lease."""
        _retry_deferred()
        self._dumps.clear()
        self._tables.clear()  # its entries are bound methods of self: a cycle
        folders, self._folders = list(self._folders.values()), {}
        for folder in folders:
            if _made_here(folder):  # not in a forked copy of the parent
                remove_path(folder)
            with _LIVE_LOCK:
                _LIVE_FOLDERS.discard(folder)


def result_threshold(max_nbytes: float | None) -> int:
    """``max_nbytes`` as the wire's integer threshold: an array goes to
    shared memory when ``a.nbytes > threshold``, as joblib compares it
    (floats are floored, a negative value means every array)."""
    if max_nbytes is None or max_nbytes >= NEVER:
        return NEVER
    return max(int(max_nbytes // 1), 0)


def _dump_error(a, folder: str, exc: OSError) -> OSError:
    return type(exc)(
        exc.errno,
        f"could not write a {a.nbytes / 2**20:.1f} MB array to {folder} to "
        f"memory-map it for the workers ({exc.strerror or exc}); choose "
        "another temp_folder=, or pass max_nbytes=None to send copies")


def _map_readonly(path: str):
    """The file at ``path`` as a read-only uint8 array, or None."""
    import numpy as np
    try:
        with open(path, "rb") as f:
            return np.frombuffer(
                mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ),
                dtype=np.uint8)
    except (OSError, ValueError):
        return None


_memcmp = None


def _equal(x, y) -> bool:
    """Two uint8 arrays of one size hold the same bytes (memcmp)."""
    global _memcmp
    if _memcmp is None:
        try:
            import ctypes
            libc = ctypes.CDLL(None)
            func = libc.memcmp
            func.restype = ctypes.c_int
            func.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
            _memcmp = func
        except (ImportError, OSError, AttributeError, TypeError):
            _memcmp = False  # no C library to load by None (Windows)
    if _memcmp:
        return _memcmp(address(x), address(y), x.size) == 0
    import numpy as np  # pragma: no cover - no libc
    step = COPY_CHUNK
    return all(np.array_equal(x[i:i + step], y[i:i + step])
               for i in range(0, x.size, step))
