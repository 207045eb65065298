"""The process-wide registry of reusable process pools.

Pools are reused across calls, keyed by (workers, start method, worker
environment); one idle pool is kept at a time.  An idle pool is shut down
after ``IDLE_TIMEOUT`` seconds and at interpreter exit; a process forked
from ours forgets them (their pipes are ours).
"""
from __future__ import annotations

import atexit
import os
import threading

from .arrays_in import sweep_stale
from .pool import ProcessPool

# Seconds an idle reusable pool lives (loky uses 300), unless the backend
# keyword idle_worker_timeout says otherwise.
IDLE_TIMEOUT = 300.0

# Guards _REUSABLE, _HOOKS_INSTALLED and each registered pool's `in_use`
# and `_timer`.
_REGISTRY_LOCK = threading.Lock()
_REUSABLE: dict[tuple, ProcessPool] = {}
_HOOKS_INSTALLED = False


def _pool_key(n_workers: int, context, env: dict[str, str],
              initializer: bytes | None, memory_limit: int | None) -> tuple:
    # Workers started with another initializer, or other initargs, are not
    # reused (joblib's rule); "the same" is "pickles to the same bytes".
    # The memory limit is given to each worker when it starts.
    return (n_workers, context.get_start_method(), tuple(sorted(env.items())),
            initializer, memory_limit)


def get_pool(n_workers: int, context, env: dict[str, str],
             temp_folder: str | None = None,
             initializer: bytes | None = None,
             memory_limit: int | None = None,
             idle_timeout: float | None = None) -> ProcessPool:
    """Lease the reusable pool for this configuration, or make one.

    Starting a pool also removes the memmap folders that killed
    joblib_fast processes left behind (in ``temp_folder`` too)."""
    _install_hooks()
    key = _pool_key(n_workers, context, env, initializer, memory_limit)
    stale = []
    with _REGISTRY_LOCK:
        pool = _REUSABLE.get(key)
        if pool is not None and not pool.in_use:
            if pool._timer is not None:
                pool._timer.cancel()
                pool._timer = None
            if pool.alive():
                pool.in_use = True
                pool.idle_timeout = idle_timeout or IDLE_TIMEOUT
                return pool
            del _REUSABLE[key]
            stale.append(pool)
            pool = None
        # A pool leased by another thread's call stays theirs: this call
        # gets a private pool, stopped when it ends.
        reusable = pool is None
        if reusable:
            # One reusable pool at a time: a new size replaces the old one.
            for other_key, other in list(_REUSABLE.items()):
                if not other.in_use:
                    del _REUSABLE[other_key]
                    stale.append(other)
    for old in stale:
        old.terminate()
    sweep_stale(temp_folder)
    pool = ProcessPool(n_workers, context, env, reusable=reusable,
                       owner=_OWNER, initializer=initializer,
                       memory_limit=memory_limit)
    pool.in_use = True
    pool.idle_timeout = idle_timeout or IDLE_TIMEOUT
    if reusable:
        with _REGISTRY_LOCK:
            if key in _REUSABLE:  # another thread registered one meanwhile
                pool.reusable = False
            else:
                _REUSABLE[key] = pool
    return pool


def _release(pool: ProcessPool) -> None:
    with _REGISTRY_LOCK:
        pool.in_use = False
        timer = threading.Timer(pool.idle_timeout, _reap, args=(pool,))
        timer.daemon = True
        timer.name = "joblib_fast-pool-reaper"
        pool._timer = timer
        timer.start()


def _forget(pool: ProcessPool) -> None:
    with _REGISTRY_LOCK:
        for key, other in list(_REUSABLE.items()):
            if other is pool:
                del _REUSABLE[key]
        pool.in_use = False


def _reap(pool: ProcessPool) -> None:
    with _REGISTRY_LOCK:
        if pool.in_use:
            return
        for key, other in list(_REUSABLE.items()):
            if other is pool:
                del _REUSABLE[key]
        pool._timer = None
    pool.close(wait=True)


def shutdown_reusable_pools() -> None:
    """Stop the idle reusable pools now (also run at interpreter exit)."""
    with _REGISTRY_LOCK:
        pools = [p for p in _REUSABLE.values() if not p.in_use]
        for key in [k for k, p in _REUSABLE.items() if not p.in_use]:
            del _REUSABLE[key]
    for pool in pools:
        pool.close(wait=True)


def reusable_pool_pids() -> list[int]:
    """Pids of the workers kept by reusable pools (for leak checks)."""
    with _REGISTRY_LOCK:
        return [pid for p in _REUSABLE.values() for pid in p.pids]


def _forget_pools_in_child() -> None:
    """A process forked from ours (by the user, or a fork worker) does not
    own our pools: their pipes belong to us."""
    global _REGISTRY_LOCK
    _REGISTRY_LOCK = threading.Lock()
    _REUSABLE.clear()


_OWNER_PID = os.getpid()


def _shutdown_at_exit() -> None:
    if os.getpid() == _OWNER_PID:
        shutdown_reusable_pools()


def _install_hooks() -> None:
    """Shut the idle pools down at exit, and forget them in forked
    children; registered with the first pool, not at import."""
    global _HOOKS_INSTALLED
    with _REGISTRY_LOCK:
        if _HOOKS_INSTALLED:
            return
        _HOOKS_INSTALLED = True
    atexit.register(_shutdown_at_exit)
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_forget_pools_in_child)


class _Owner:
    """The registry as its pools see it (``pool.PoolOwner``)."""

    release = staticmethod(_release)
    forget = staticmethod(_forget)


_OWNER = _Owner()
