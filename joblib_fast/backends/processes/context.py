"""Start methods of the process backend: which multiprocessing context a
pool uses (``resolve_context``, ``JOBLIB_START_METHOD``), whether this
process may start workers at all (:func:`daemonic_warning`), and the two
adjustments made to multiprocessing for our workers, installed when the
first pool starts (:func:`install`), never at import."""
from __future__ import annotations

import multiprocessing as mp
import os
import sys
import threading
from multiprocessing import spawn as _mp_spawn
from typing import Any

VALID_START_METHODS = ("forkserver", "spawn", "fork")
WORKER_NAME = "joblib_fast-worker"
# What the fork server imports before forking workers, so that each new
# worker starts with them loaded.  cloudpickle too: functions from scripts
# arrive by value, and importing it in each worker would lengthen a cold
# call (`python benchmarks/bench.py --only coldstart`).  Not numpy: its
# BLAS pool would be sized before our caps.
FORKSERVER_PRELOAD = [
    "joblib_fast.backends.processes.worker",
    "joblib_fast.backends.processes.wire",
    "joblib_fast.backends.processes.pickling",
    "joblib_fast.backends.processes.arrays_in",
    "joblib_fast.backends.processes.arrays_out",
    "cloudpickle",
]

# What a process-backed call made in a daemonic process says when it runs in
# place.  Each starts with joblib's words (code filters warnings on them):
# joblib's loky wording for both backend names, "loky" being the default.
DAEMONIC_WARNING = (
    "Loky-backed parallel loops cannot be called in a multiprocessing, "
    "setting n_jobs=1 (this process is daemonic, as the workers of a "
    "multiprocessing.Pool are, and daemonic processes cannot start worker "
    "processes: the call runs sequentially in this process)")
DASK_DAEMONIC_WARNING = (
    "Inside a Dask worker with daemon=True, setting n_jobs=1 (a daemonic "
    "process cannot start worker processes: the call runs sequentially in "
    "this worker).  To let the workers of a dask cluster start processes, "
    "create the cluster with the setting 'distributed.worker.daemon' "
    "False: dask.config.set({'distributed.worker.daemon': False}), or the "
    "environment variable DASK_DISTRIBUTED__WORKER__DAEMON=False.")

# Guards the one-time patch in install().
_INSTALL_LOCK = threading.Lock()


def _preparation_data(name, *args, **kwargs):
    """multiprocessing's data for a new spawn/forkserver child, minus the
    instruction to re-import the user's __main__ for our workers: like
    joblib, scripts without an ``if __name__ == "__main__":`` guard work
    (functions from __main__ travel by value instead)."""
    data = _preparation_data._jf_original(name, *args, **kwargs)
    if name == WORKER_NAME:
        data.pop("init_main_from_path", None)
        data.pop("init_main_from_name", None)
    return data


def install() -> None:
    """Patch ``multiprocessing.spawn.get_preparation_data`` (see
    :func:`_preparation_data`); idempotent, called before a pool starts."""
    with _INSTALL_LOCK:
        current = _mp_spawn.get_preparation_data
        if getattr(current, "_jf_original", None) is not None:
            return
        _preparation_data._jf_original = current  # type: ignore
        _mp_spawn.get_preparation_data = _preparation_data


def _prepare_forkserver(context) -> None:
    """Preload our worker module in the fork server instead of the user's
    __main__ (which may run code at import), unless the user chose."""
    try:
        from multiprocessing import forkserver
        server = forkserver._forkserver
        if server._forkserver_pid is None and \
                server._preload_modules == ["__main__"]:
            context.set_forkserver_preload(FORKSERVER_PRELOAD)
    except (AttributeError, ImportError):  # pragma: no cover - other Pythons
        pass


def fork_server_pid() -> int | None:
    """The pid of multiprocessing's fork server, if it was started."""
    try:
        from multiprocessing import forkserver
        return forkserver._forkserver._forkserver_pid
    except (AttributeError, ImportError):  # pragma: no cover - other Pythons
        return None


def daemonic_warning() -> str | None:
    """None when this process may start worker processes; otherwise the
    warning of a call that runs in place instead: multiprocessing forbids
    children to a daemonic process (a ``multiprocessing.Pool`` worker, a
    dask worker with ``distributed.worker.daemon`` true, ...), where
    trying fails with an AssertionError.  The warning names dask's
    setting inside a task of a dask worker."""
    if not mp.current_process().daemon:
        return None
    if in_dask_task():
        return DASK_DAEMONIC_WARNING
    return DAEMONIC_WARNING


def in_dask_task() -> bool:
    """True in a thread running a task of a dask worker.  A dask worker has
    imported distributed already: when it is not imported this is no dask
    worker, and nothing is imported to find out."""
    distributed = sys.modules.get("distributed")
    if distributed is None:
        return False
    try:
        distributed.get_worker()
    except ValueError:
        return False
    return True


def resolve_context(context: Any = None):
    """The multiprocessing context: given one, JOBLIB_START_METHOD, or
    forkserver (safe with threads, OpenMP and BLAS pools in the parent)."""
    if context is not None:
        if isinstance(context, str):
            if context not in VALID_START_METHODS:
                raise ValueError(
                    f"unknown start method {context!r}; expected one of "
                    f"{VALID_START_METHODS}")
            return mp.get_context(context)
        if not hasattr(context, "Process"):
            raise ValueError(
                f"context must be a multiprocessing context or a start "
                f"method name, got {context!r}")
        return context
    method = os.environ.get("JOBLIB_START_METHOD", "").strip() or None
    if method is not None and method not in VALID_START_METHODS:
        raise ValueError(
            f"JOBLIB_START_METHOD={method!r} is not a start method; expected "
            f"one of {VALID_START_METHODS}")
    if method is None:
        method = "forkserver" if "forkserver" in mp.get_all_start_methods() \
            else "spawn"
    context = mp.get_context(method)
    if method == "forkserver":
        _prepare_forkserver(context)
    return context
