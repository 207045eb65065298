"""The configuration in force in this thread, and what workers run under.

The lowest Python layer below the backends and ``config``: it holds the
thread-local settings of ``parallel_config`` and the rules that turn
``n_jobs`` into a worker count, so that backends can read them without
importing ``config`` (which imports the backends).

Which thread reads what: the active configuration is thread-local, so a
``parallel_config`` in one user thread never changes another thread's
``Parallel`` calls.  Worker threads and the tasks of user-registered
backends run under the configuration of their backend's nested backend
(:func:`enter_worker`, :func:`nested_config`).
"""
from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator
from numbers import Integral, Real
from typing import Any

from ._cpu import cpu_count


class _Unset:
    """Marker of a parameter the user did not give (distinct from None)."""

    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "default"

    def __reduce__(self):
        return (_Unset, ())


UNSET: Any = _Unset()

# What a thread that never entered a parallel_config sees.  A value given
# explicitly, None included, replaces the enclosing one (max_nbytes=None
# and mmap_mode=None mean "no memmapping", n_jobs=None "the backend's
# default"), as in joblib; UNSET keeps the enclosing value.
DEFAULT_CONFIG: dict[str, Any] = {
    "backend": UNSET,
    "n_jobs": UNSET,
    "verbose": 0,
    "temp_folder": None,
    "max_nbytes": "1M",
    "mmap_mode": "r",
    "prefer": None,
    "require": None,
}

_local = threading.local()


def current_config() -> dict[str, Any]:
    return getattr(_local, "config", DEFAULT_CONFIG)


def set_config(config: dict[str, Any]) -> None:
    _local.config = config


# joblib's words first (code matches on them), then what is accepted.
N_JOBS_ZERO = (
    "n_jobs == 0 in Parallel has no meaning (n_jobs=-1: every CPU, -2: all "
    "but one, and so on; k > 0: k workers; None: 1, unless parallel_config "
    "sets it)")


def check_n_jobs(n_jobs: Any, allow_none: bool = True) -> int | None:
    """Return ``n_jobs`` as an int, or None.

    As documented for joblib, a float is converted to an integer (``2.7``
    gives 2) and so is a numeric string; 0 has no meaning.
    """
    if n_jobs is None and allow_none:
        return None
    if isinstance(n_jobs, bool):
        raise TypeError(f"n_jobs must be an integer or None, got {n_jobs!r}")
    if isinstance(n_jobs, Integral):
        value = int(n_jobs)
    elif isinstance(n_jobs, Real):
        if not math.isfinite(n_jobs):
            raise ValueError(f"n_jobs must be finite, got {n_jobs!r}")
        value = int(n_jobs)
    elif isinstance(n_jobs, str):
        try:
            value = int(n_jobs.strip())
        except ValueError:
            raise ValueError(
                f"n_jobs could not be converted to int: {n_jobs!r}") from None
    else:
        raise TypeError(
            f"n_jobs must be an integer or None, got {n_jobs!r} "
            f"of type {type(n_jobs).__name__}")
    if value == 0:
        raise ValueError(N_JOBS_ZERO)
    return value


def resolve_n_jobs(n_jobs: int | None) -> int:
    if n_jobs is None:
        return 1
    n_jobs = check_n_jobs(n_jobs)
    if n_jobs < 0:
        return max(cpu_count() + 1 + n_jobs, 1)
    return n_jobs


def nesting_level() -> int:
    """Nesting level of this thread: 0 in the user's own threads."""
    backend = current_config()["backend"]
    if backend is not UNSET and backend.nesting_level is not None:
        return backend.nesting_level
    return 0


def nested_backend_config(backend: Any) -> dict[str, Any]:
    """The configuration tasks of ``backend`` run under: its nested
    backend (``get_nested_backend`` may return a backend or, as in joblib,
    a ``(backend, n_jobs)`` pair) and nothing else from the caller."""
    nested = backend.get_nested_backend()
    n_jobs = None
    if isinstance(nested, tuple):
        nested, n_jobs = nested
    config = dict(DEFAULT_CONFIG)
    if nested is not None:
        config["backend"] = nested
    if n_jobs is not None:
        config["n_jobs"] = n_jobs
    return config


def enter_worker(backend: Any, n_jobs: int | None) -> None:
    """Called at the start of each worker thread or process: nested calls
    there use the backend's nested backend."""
    set_config(nested_backend_config(backend))


@contextlib.contextmanager
def nested_config(config: dict[str, Any]) -> Iterator[None]:
    """Run a batch under ``config`` (from :func:`nested_backend_config`)
    in whatever thread a user-registered backend runs it, then restore."""
    old = swap_config(config)
    try:
        yield
    finally:
        restore_config(old)


def swap_config(config: dict[str, Any]) -> dict[str, Any] | None:
    """Make ``config`` this thread's; return what it replaced (None: the
    thread had none) for :func:`restore_config`."""
    old = getattr(_local, "config", None)
    _local.config = config
    return old


def restore_config(old: dict[str, Any] | None) -> None:
    if old is None:
        del _local.config
    else:
        _local.config = old
