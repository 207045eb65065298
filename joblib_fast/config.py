"""Configuration: backend registry, parallel_config, backend choice.

The settings themselves live in :mod:`joblib_fast._context` (thread-local);
this module is what users call to change them, and the registry of backend
names.
"""
from __future__ import annotations

import inspect
import weakref
from multiprocessing.context import BaseContext
from numbers import Integral
from typing import Any, Callable

from ._context import (
    UNSET,
    check_n_jobs,
    current_config,
    set_config,
)
from ._cpu import cpu_count
from .backends.base import ParallelBackendBase, SequentialBackend, ThreadingBackend

# name -> factory(**backend_params); a factory that accepts it also gets
# nesting_level=...
BACKENDS: dict[str, Callable[..., ParallelBackendBase]] = {
    "threading": ThreadingBackend,
    "sequential": SequentialBackend,
}
# Backends provided by modules imported on first use (heavy imports).
_LAZY_BACKENDS = {
    "loky": ("joblib_fast.backends.processes", "ProcessBackend"),
    "multiprocessing": ("joblib_fast.backends.processes", "ProcessBackend"),
    "dask": ("joblib_fast.backends.dask", "DaskDistributedBackend"),
}
# name -> a function that registers that backend, called the first time the
# name is asked for: how third-party packages make their backend known
# without being imported first (joblib.parallel.EXTERNAL_BACKENDS).
EXTERNAL_BACKENDS: dict[str, Callable[[], Any]] = {}
DEFAULT_BACKEND = "loky"
DEFAULT_THREAD_BACKEND = "threading"
DEFAULT_PROCESS_BACKEND = "loky"

VALID_PREFER = (None, "threads", "processes")
VALID_REQUIRE = (None, "sharedmem")
VALID_MMAP_MODES = (None, "r+", "r", "w+", "c")


# ------------------------------------------------------------- backends


def _backend_factory(name: str) -> Callable[..., ParallelBackendBase]:
    if not isinstance(name, str):
        raise TypeError(f"a backend name must be a string, got {name!r}")
    if name in BACKENDS:
        return BACKENDS[name]
    if name in EXTERNAL_BACKENDS:
        EXTERNAL_BACKENDS[name]()
        if name in BACKENDS:
            return BACKENDS[name]
    if name in _LAZY_BACKENDS:
        import importlib
        module, attr = _LAZY_BACKENDS[name]
        try:
            factory = getattr(importlib.import_module(module), attr)
        except ImportError as exc:
            raise ValueError(
                f"backend {name!r} is not available: {exc}") from exc
        return factory
    raise ValueError(
        f"Invalid backend: {name!r}, expected one of "
        f"{sorted(set(BACKENDS) | set(_LAZY_BACKENDS) | set(EXTERNAL_BACKENDS))}")


# factory -> {keyword: accepted}: inspect.signature costs more than the
# dispatch of a short call, and every call makes its backend.  Weak keys:
# a factory unregistered and dropped is not kept.
_ACCEPTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _accepts_keyword(factory: Callable[..., Any], name: str) -> bool:
    """True when ``factory(name=...)`` would be accepted."""
    try:
        known = _ACCEPTS.setdefault(factory, {})
    except TypeError:       # not weakly referable, or unhashable
        known = {}
    if name not in known:
        known[name] = _signature_accepts(factory, name)
    return known[name]


def _signature_accepts(factory: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(
        p.kind is p.VAR_KEYWORD
        or (p.name == name and p.kind in (p.POSITIONAL_OR_KEYWORD,
                                          p.KEYWORD_ONLY))
        for p in params)


def make_backend(name: str, nesting_level: int | None = None,
                  inner_max_num_threads: int | None = None,
                  **params: Any) -> ParallelBackendBase:
    """Instantiate the backend registered as ``name``.

    joblib documents factories as called with the backend parameters only
    (a user's class may take mandatory ones, and no ``nesting_level``), so
    ``nesting_level`` is passed only to a factory that accepts it, and set
    as an attribute otherwise.
    """
    factory = _backend_factory(name)
    if nesting_level is not None and _accepts_keyword(factory,
                                                       "nesting_level"):
        params["nesting_level"] = nesting_level
    backend = factory(**params)
    if not isinstance(backend, ParallelBackendBase):
        raise TypeError(
            f"the factory of backend {name!r} returned "
            f"{type(backend).__name__}, not a ParallelBackendBase instance")
    if backend.nesting_level is None:
        backend.nesting_level = nesting_level
    if inner_max_num_threads is not None:
        _set_inner_max_num_threads(backend, inner_max_num_threads)
    return backend


def _set_inner_max_num_threads(backend: ParallelBackendBase,
                               value: int) -> None:
    if not backend.supports_inner_max_num_threads:
        raise ValueError(
            f"{type(backend).__name__} does not accept setting the "
            "inner_max_num_threads argument (its "
            "supports_inner_max_num_threads is False)")
    backend.inner_max_num_threads = value


# What joblib calls each setting in its error messages.
_CHOICE_KINDS = {"prefer": "backend hint", "require": "backend constraint"}


def check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        # joblib's wording (code matches on it), with the value's repr.
        raise ValueError(
            f"{name}={value} is not a valid "
            f"{_CHOICE_KINDS.get(name, 'value')}, expected one of "
            f"{choices} (got {value!r})")


# ------------------------------------------------------ parallel_config


class parallel_config:
    """Set the defaults of every ``Parallel`` created in this thread.

    Usable as a context manager (the previous settings come back on exit,
    also after an exception) or as a plain call (the settings stay until
    :meth:`unregister`).  Settings are thread-local and nest: parameters
    not given keep the value of the enclosing configuration.

    Parameters
    ----------
    backend : str or ParallelBackendBase, optional
        ``"loky"``/``"multiprocessing"`` (processes), ``"threading"``,
        ``"sequential"``, a name registered with
        :func:`register_parallel_backend`, or a backend instance.
    n_jobs : int, optional
        Default number of workers (``-1``: all CPUs).  ``None`` means the
        backend's default (1).
    verbose : int, optional
        Default ``verbose`` of ``Parallel``.
    temp_folder, max_nbytes, mmap_mode
        Defaults of the memmapping parameters of ``Parallel`` (``None``
        disables memmapping for the last two).
    prefer : {"threads", "processes"}, optional
        Soft hint: the backend used when no backend is set explicitly.
    require : {"sharedmem"}, optional
        Hard constraint: a thread-based backend, whatever ``backend`` says.
    inner_max_num_threads : int, optional
        Cap of BLAS/OpenMP threads in each worker; only with a ``backend``
        whose ``supports_inner_max_num_threads`` is true (processes).
    **backend_params
        Passed to the backend's constructor; ``backend`` must be a name.

    Examples
    --------
    >>> from joblib_fast import Parallel, delayed, parallel_config
    >>> with parallel_config(backend="threading", n_jobs=2):
    ...     Parallel()(delayed(abs)(-i) for i in range(3))
    [0, 1, 2]
    """

    def __init__(self, backend: Any = UNSET, n_jobs: Any = UNSET,
                 verbose: Any = UNSET, temp_folder: Any = UNSET,
                 max_nbytes: Any = UNSET, mmap_mode: Any = UNSET,
                 prefer: Any = UNSET, require: Any = UNSET,
                 inner_max_num_threads: Any = None,
                 **backend_params: Any) -> None:
        if n_jobs is not UNSET:
            n_jobs = check_n_jobs(n_jobs)
        if prefer is not UNSET:
            check_choice("prefer", prefer, VALID_PREFER)
        if require is not UNSET:
            check_choice("require", require, VALID_REQUIRE)
        if mmap_mode is not UNSET:
            check_choice("mmap_mode", mmap_mode, VALID_MMAP_MODES)
        if verbose is not UNSET and verbose is not None and (
                isinstance(verbose, bool) or not isinstance(verbose, Integral)):
            raise TypeError(f"verbose must be an integer, got {verbose!r}")
        if inner_max_num_threads is not None and (
                isinstance(inner_max_num_threads, bool)
                or not isinstance(inner_max_num_threads, Integral)
                or inner_max_num_threads < 1):
            raise ValueError(
                "inner_max_num_threads must be a positive integer, got "
                f"{inner_max_num_threads!r}")
        self.old_config = current_config()
        if backend is not UNSET and backend is not None:
            backend = self._make(backend, inner_max_num_threads,
                                 backend_params)
        elif inner_max_num_threads is not None or backend_params:
            given = sorted(backend_params)
            if inner_max_num_threads is not None:
                given.insert(0, "inner_max_num_threads")
            raise ValueError(
                "inner_max_num_threads and other constructor parameters "
                "backend_params are only supported when backend is not "
                f"None. ({', '.join(given)}: backend parameters are only "
                "accepted together with a backend)")
        else:
            backend = UNSET
        new = dict(self.old_config)
        given = {
            "backend": backend, "n_jobs": n_jobs, "verbose": verbose,
            "temp_folder": temp_folder, "max_nbytes": max_nbytes,
            "mmap_mode": mmap_mode, "prefer": prefer, "require": require,
        }
        new.update((k, v) for k, v in given.items() if v is not UNSET)
        set_config(new)
        self.config = new

    def _make(self, backend: Any, inner_max_num_threads: int | None,
              backend_params: dict[str, Any]) -> ParallelBackendBase:
        outer = self.old_config["backend"]
        level = 0 if outer is UNSET else outer.nesting_level
        if isinstance(backend, str):
            return make_backend(backend, nesting_level=level,
                                 inner_max_num_threads=inner_max_num_threads,
                                 **backend_params)
        if backend_params:
            raise ValueError(
                "Constructor parameters backend_params are only supported "
                f"when backend is a string. (backend parameters "
                f"{sorted(backend_params)} are only accepted with a backend "
                f"name, not with {backend!r})")
        if isinstance(backend, ParallelBackendBase):
            if inner_max_num_threads is not None:
                _set_inner_max_num_threads(backend, inner_max_num_threads)
            if backend.nesting_level is None:
                backend.nesting_level = level
            return backend
        if isinstance(backend, BaseContext):
            return make_backend("multiprocessing", nesting_level=level,
                                 inner_max_num_threads=inner_max_num_threads,
                                 context=backend, **backend_params)
        raise ValueError(
            f"Invalid backend: {backend!r}, expected a backend name, a "
            "ParallelBackendBase instance or a multiprocessing context")

    def __enter__(self) -> dict[str, Any]:
        # joblib returns the active configuration.
        return self.config

    def __exit__(self, *exc: object) -> None:
        self.unregister()

    def unregister(self) -> None:
        """Restore the configuration in force before this one."""
        set_config(self.old_config)


class parallel_backend(parallel_config):
    """Older form of :class:`parallel_config`: ``backend`` is required and
    ``n_jobs`` defaults to -1 (all CPUs).

    Entering it returns ``(backend, n_jobs)``.

    Examples
    --------
    >>> from joblib_fast import Parallel, delayed, parallel_backend
    >>> with parallel_backend("threading", n_jobs=2):
    ...     Parallel()(delayed(abs)(-i) for i in range(3))
    [0, 1, 2]
    """

    def __init__(self, backend: Any, n_jobs: Any = -1,
                 inner_max_num_threads: int | None = None,
                 **backend_params: Any) -> None:
        if backend is None or backend is UNSET:
            raise ValueError("parallel_backend needs a backend")
        super().__init__(backend=backend, n_jobs=n_jobs,
                         inner_max_num_threads=inner_max_num_threads,
                         **backend_params)

    def __enter__(self):
        return self.config["backend"], self.config["n_jobs"]


def register_parallel_backend(name: str, factory: Callable[..., Any],
                              make_default: bool = False) -> None:
    """Make ``factory`` available as ``backend=name``.

    ``factory`` (typically a :class:`ParallelBackendBase` subclass) is
    called with the backend parameters given to ``parallel_config`` /
    ``parallel_backend`` and must return a :class:`ParallelBackendBase`.
    ``make_default=True`` makes it the backend of every ``Parallel`` that
    names none.  Registering an existing name replaces it.

    Examples
    --------
    >>> from joblib_fast import register_parallel_backend
    >>> from joblib_fast.backends import ThreadingBackend
    >>> register_parallel_backend("my_threads", ThreadingBackend)
    """
    global DEFAULT_BACKEND
    if not isinstance(name, str) or not name:
        raise TypeError(
            f"backend name must be a non-empty string, got {name!r}")
    if not callable(factory):
        raise TypeError(
            f"backend factory for {name!r} must be callable (a "
            f"ParallelBackendBase subclass or a function), got {factory!r}")
    BACKENDS[name] = factory
    if make_default:
        DEFAULT_BACKEND = name


# ------------------------------------------------------- backend choice


def get_active_backend(prefer: str | None = None,
                       require: str | None = None,
                       verbose: int = 0) -> tuple[ParallelBackendBase,
                                                  int | None]:
    """Return ``(backend, n_jobs)`` a new ``Parallel()`` would use here
    (``n_jobs`` is None when no configuration sets it)."""
    backend, config = resolve_backend(prefer, require, verbose)
    n_jobs = config["n_jobs"]
    return backend, (None if n_jobs is UNSET else n_jobs)


def resolve_backend(prefer: str | None = None,
                     require: str | None = None, verbose: int = 0):
    """Backend from the active configuration and the soft/hard hints.

    ``prefer`` and ``require`` given to ``Parallel`` win over the
    configured ones.  A configured backend is used as is, unless
    ``require="sharedmem"`` and its workers do not share memory; without
    one, ``prefer`` picks the default thread or process backend.  With
    ``verbose >= 10``, replacing a configured backend is reported.
    """
    config = current_config()
    if prefer is None:
        prefer = config["prefer"]
    if require is None:
        require = config["require"]
    check_choice("prefer", prefer, VALID_PREFER)
    check_choice("require", require, VALID_REQUIRE)
    if prefer == "processes" and require == "sharedmem":
        raise ValueError(
            "prefer='processes' and require='sharedmem' are inconsistent: "
            "processes do not share memory")
    backend = config["backend"]
    if backend is not UNSET:
        if require == "sharedmem" and not backend.supports_sharedmem:
            threads = make_backend(DEFAULT_THREAD_BACKEND,
                                   nesting_level=backend.nesting_level)
            if verbose >= 10:
                # joblib's words, on stdout as joblib prints them.
                print(f"Using {type(threads).__name__} as joblib backend "
                      f"instead of {type(backend).__name__} as the latter "
                      "does not provide shared memory semantics.")
            return threads, config
        return backend, config
    # The lazily imported defaults (processes, dask) neither use threads nor
    # share memory: no need to import them to know it.
    backend = None if DEFAULT_BACKEND not in BACKENDS else make_backend(
        DEFAULT_BACKEND, nesting_level=0)
    threads = backend is not None and backend.uses_threads
    sharedmem = backend is not None and backend.supports_sharedmem
    if (require == "sharedmem" and not sharedmem) or (
            prefer == "threads" and not threads):
        return make_backend(DEFAULT_THREAD_BACKEND, nesting_level=0), config
    if prefer == "processes" and threads:
        return make_backend(DEFAULT_PROCESS_BACKEND, nesting_level=0), config
    if backend is None:
        backend = make_backend(DEFAULT_BACKEND, nesting_level=0)
    return backend, config


# ------------------------------------------------------------- CPU counts


def effective_n_jobs(n_jobs: int | None = -1) -> int:
    """Number of workers ``Parallel(n_jobs)`` would use with the active
    backend (``-1`` means all CPUs, ``-2`` all but one, ``None`` the
    configured or default count).

    Examples
    --------
    >>> from joblib_fast import effective_n_jobs, parallel_config
    >>> effective_n_jobs(1)
    1
    >>> with parallel_config(backend="threading", n_jobs=3):
    ...     effective_n_jobs(None)
    3
    """
    if n_jobs == 1:
        return 1
    if n_jobs is not None:
        n_jobs = check_n_jobs(n_jobs)
    backend, config_n_jobs = get_active_backend()
    if n_jobs is None:
        n_jobs = config_n_jobs
    return backend.effective_n_jobs(n_jobs if n_jobs is not None else 1)


__all__ = [
    "cpu_count",
    "effective_n_jobs",
    "get_active_backend",
    "parallel_backend",
    "parallel_config",
    "register_parallel_backend",
]
