"""The native thread pools (BLAS, OpenMP) of loaded libraries, capped
while joblib_fast's workers run tasks, so that n_jobs workers each calling
a multithreaded library do not run n_jobs times its thread count.

Two users, one rule (:func:`inner_limit`: ``inner_max_num_threads`` when
given, else ``max(1, cpu_count() // n_jobs)``):

* a threading call with more than one thread holds a cap for as long as
  it runs (:func:`hold`, released by the call's end however it ends);
  calls that overlap (nested, several user threads) are counted: the
  lowest limit held wins and the libraries get their own sizes back when
  the last one ends;
* a worker process caps, for good, the libraries it already has when it
  starts (:func:`cap_loaded`): a ``fork`` worker inherits its parent's
  loaded OpenBLAS, whose pool the ``*_NUM_THREADS`` variables no longer
  size.

threadpoolctl finds the libraries; it is imported on first use, and only
once a module that brings such libraries (NumPy, SciPy...) is loaded: a
process without them has no pool to cap, and pays nothing.

The libraries whose pool is process-wide and sized by one C function
(OpenBLAS on its own threads, MKL: :data:`C_FUNCTIONS`) are capped in C
(``src_c/jf_cap.h``, through ``_threads``): a ``parallel_for`` running on
the pool holds the same count without the GIL, and neither kind of holder
gives those libraries their sizes back while the other runs.  The others
(OpenMP runtimes, whose setting is the calling thread's; BLIS) are set
through threadpoolctl here.
"""
from __future__ import annotations

import collections
import os
import sys
import threading
import time
from typing import Any

from . import _cpu, _threads


def _debug(message: str, exc_info: bool = False) -> None:
    # logging is imported when there is something to say: importing it
    # registers an exit hook, and importing joblib_fast must not.
    import logging
    logging.getLogger("joblib_fast").debug(message, exc_info=exc_info)

# Modules that load the libraries threadpoolctl knows (OpenBLAS, MKL,
# BLIS, OpenMP runtimes) into the process.  Until one of them is imported
# nothing is capped and threadpoolctl is not imported (importing it costs
# more than a short threading call).
POOL_MODULES = ("numpy", "scipy", "numexpr", "numba", "torch",
                "threadpoolctl")

# Guards every name below.  threadpoolctl's calls run under it too, so two
# calls starting at once apply their limits one after the other.
_LOCK = threading.Lock()
_HELD: collections.Counter = collections.Counter()  # limit -> calls holding
_applied: int | None = None       # the limit the libraries have now
_originals: list | None = None    # (library, its size) to give back
_controller: Any = None           # threadpoolctl controller, cached
_modules_seen = -1                # len(sys.modules) when it was made
_fork_hook = False
_unavailable = False              # threadpoolctl is not installed
_in_c: set = set()                # paths of the libraries capped in C

# Libraries capped in C: threadpoolctl's name -> (set, get) symbols, each
# ``void f(int)`` / ``int f(void)`` (OpenBLAS's may carry a prefix and a
# suffix: the symbol affixes below).  OpenBLAS built on OpenMP is not
# here: its size is each thread's OpenMP setting.
C_FUNCTIONS = {
    "openblas": ("openblas_set_num_threads", "openblas_get_num_threads"),
    "mkl": ("MKL_Set_Num_Threads", "MKL_Get_Max_Threads"),
}
_AFFIXES = [(prefix, suffix) for prefix in ("", "scipy_")
            for suffix in ("", "64_", "_64")]


# The CPU count inner_limit divides, read again after this many seconds:
# reading it (affinity, cgroup files) costs tens of microseconds, more than
# a short threading call's dispatch, and it changes about never.
CPU_COUNT_TTL = 1.0
_cpus: tuple[float, int, int] | None = None   # (when, pid, count)


def _cpu_count() -> int:
    global _cpus
    now, pid = time.monotonic(), os.getpid()
    cached = _cpus
    if cached is None or cached[1] != pid or now - cached[0] > CPU_COUNT_TTL:
        cached = _cpus = (now, pid, _cpu.cpu_count())
    return cached[2]


def inner_limit(n_jobs: int, inner_max_num_threads: int | None = None) -> int:
    """Threads each native pool may use while ``n_jobs`` workers run."""
    if inner_max_num_threads is not None:
        return inner_max_num_threads
    return max(1, _cpu_count() // max(n_jobs, 1))


def pools_possible() -> bool:
    """Whether a module that loads native thread pools is imported (else
    there is nothing to cap, and the caller need not work out a limit)."""
    if _unavailable:
        return False
    modules = sys.modules
    return any(name in modules for name in POOL_MODULES)


def _get_controller(rescan: bool = False) -> Any:
    """threadpoolctl's view of the loaded libraries; rescanned when modules
    were imported since the last scan, or ``rescan`` (a scan walks every
    loaded shared library: too slow to do on every call).  A scan gives
    the C cap the libraries it handles (:func:`_register_in_c`)."""
    global _controller, _modules_seen, _unavailable
    if _unavailable:
        return None
    count = len(sys.modules)
    if _controller is None or count != _modules_seen or rescan:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            _unavailable = True
            _debug("threadpoolctl is not installed: native thread "
                       "pools are not capped")
            return None
        _controller = ThreadpoolController()
        _modules_seen = len(sys.modules)
        _register_in_c(_controller)
    return _controller


def _c_functions(lib: Any) -> tuple[int, int] | None:
    """The addresses of ``lib``'s set and get functions if the C cap
    handles it, else None."""
    names = C_FUNCTIONS.get(lib.internal_api)
    if names is None or getattr(lib, "threading_layer", None) == "openmp":
        return None
    import ctypes
    try:
        # Loaded already: this only counts one more reference, never let
        # go, so the library (and the addresses given to C) stays loaded.
        dll = ctypes.CDLL(lib.filepath)
    except OSError:
        return None
    affixes = _AFFIXES if lib.internal_api == "openblas" else [("", "")]
    for prefix, suffix in affixes:
        try:
            found = [getattr(dll, f"{prefix}{name}{suffix}") for name in names]
        except AttributeError:
            continue
        return tuple(ctypes.cast(f, ctypes.c_void_p).value for f in found)
    return None


def _register_in_c(controller: Any) -> None:
    for lib in controller.lib_controllers:
        if lib.filepath in _in_c:
            continue
        functions = _c_functions(lib)
        if functions is not None and _threads.cap_register(*functions):
            _in_c.add(lib.filepath)


def _scan_for_parallel_for() -> None:
    """``_threads``' scanner: the process loaded shared libraries since the
    last look; any with a pool is registered in C."""
    if not pools_possible():
        return
    with _LOCK:
        try:
            _get_controller(rescan=True)
        except Exception:  # noqa: BLE001 - parallel_for runs anyway
            _debug("looking for native thread pools failed", exc_info=True)


_threads.set_cap_scanner(_scan_for_parallel_for)


def _set_size(lib: Any, size: int) -> None:
    """Give one library's pool ``size`` threads, whichever thread asks.

    threadpoolctl lets only one live thread (the first to change it) resize
    OpenBLAS's process-wide pthreads pool and ignores the others without a
    word; our changes are serialised by ``_LOCK`` and always undone, so a
    refused change is made directly.  Goes when threadpoolctl offers a
    public way to resize from any thread."""
    lib.set_num_threads(size)
    if lib.get_num_threads() != size:
        direct = getattr(lib, "_real_set_num_threads", None)
        if direct is not None:
            direct(size)


def _apply() -> None:
    """Give the libraries the lowest limit held, or their own sizes back
    when none is (``_LOCK`` held).  A library already below the limit
    keeps its size: the cap only ever lowers."""
    global _applied, _originals
    want = min(_HELD) if _HELD else None
    if want == _applied:
        return
    if want is None:
        originals, _originals, _applied = _originals, None, None
        for lib, size in originals or ():
            _set_size(lib, size)
        return
    if _originals is None:
        controller = _get_controller()
        if controller is None:
            return
        # The sizes to give back when the last call ends.
        _originals = [(lib, size) for lib in controller.lib_controllers
                      if lib.filepath not in _in_c
                      and (size := lib.get_num_threads()) is not None]
    for lib, size in _originals:
        target = min(want, size)
        if lib.get_num_threads() != target:
            _set_size(lib, target)
    _applied = want


class Hold:
    """One call's cap (see :func:`hold`); :meth:`release` is idempotent."""

    __slots__ = ("limit", "pid", "token")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.pid = os.getpid()
        self.token = 0

    def release(self) -> None:
        limit, self.limit = self.limit, 0
        if not limit or self.pid != os.getpid():
            return  # released already, or inherited by a forked child
        token, self.token = self.token, 0
        _threads.cap_release(token)
        with _LOCK:
            _HELD[limit] -= 1
            if _HELD[limit] <= 0:
                del _HELD[limit]
            try:
                _apply()
            except Exception:  # noqa: BLE001 - never fail the user's call
                _debug("restoring native thread pools failed",
                           exc_info=True)


def hold(limit: int) -> Hold | None:
    """Cap the native pools at ``limit`` threads until the returned
    object's ``release()`` (None: nothing to cap in this process)."""
    global _fork_hook
    if not pools_possible():
        return None
    held = Hold(limit)
    with _LOCK:
        if not _fork_hook:
            if hasattr(os, "register_at_fork"):  # no fork on Windows
                os.register_at_fork(after_in_child=_after_fork_in_child)
            _fork_hook = True
        _HELD[limit] += 1
        try:
            _get_controller()  # new libraries registered in C first
            _apply()
        except Exception:  # noqa: BLE001 - never fail the user's call
            _debug("capping native thread pools failed", exc_info=True)
    held.token = _threads.cap_hold(limit)
    return held


def _after_fork_in_child() -> None:
    """A child forked while calls held a cap has none of those calls: its
    libraries get their sizes back (a process worker then caps its own)."""
    global _LOCK
    _LOCK = threading.Lock()  # it may have been held by another thread
    _HELD.clear()
    try:
        _apply()
    except Exception:  # noqa: BLE001
        _debug("restoring native thread pools failed", exc_info=True)


def cap_loaded(limit: int) -> None:
    """Give the libraries this process has loaded the pool size the
    ``*_NUM_THREADS`` variables say (``limit``), for good: what a process
    that loads them now would get (a worker process at start: a ``fork``
    worker inherited its parent's loaded OpenBLAS, sized before the
    variables were set; libraries it loads later read the variables)."""
    if not pools_possible():
        return
    try:
        controller = _get_controller()
        for lib in controller.lib_controllers if controller else ():
            if lib.get_num_threads() != limit:
                _set_size(lib, limit)
    except Exception:  # noqa: BLE001 - a worker starts anyway
        _debug("sizing native thread pools failed", exc_info=True)


def worker_limit(env: dict[str, str]) -> int | None:
    """The limit a worker process was started with (the value of its
    ``OMP_NUM_THREADS`` in ``env``, as ``_prepare_worker_env`` sets it)."""
    try:
        value = int(env.get("OMP_NUM_THREADS", ""))
    except ValueError:
        return None
    return value if value >= 1 else None
