"""Configuration: backend registry, parallel_config, cpu counting."""
from __future__ import annotations

import math
import os
import threading
from numbers import Integral
from typing import Any, Callable, Dict, Optional

from .backends.base import ParallelBackendBase
from .backends.sequential import SequentialBackend
from .backends.threading import ThreadingBackend

# name -> factory(nesting_level=..., inner_max_num_threads=..., **params)
BACKENDS: Dict[str, Callable[..., ParallelBackendBase]] = {
    "threading": ThreadingBackend,
    "sequential": SequentialBackend,
}
# Backends provided by modules imported on first use (heavy imports).
_LAZY_BACKENDS = {
    "loky": ("joblib_fast.backends.processes", "ProcessBackend"),
    "multiprocessing": ("joblib_fast.backends.processes", "ProcessBackend"),
    "dask": ("joblib_fast.backends.dask", "DaskBackend"),
}
DEFAULT_BACKEND = "loky"
DEFAULT_THREAD_BACKEND = "threading"

VALID_PREFER = (None, "threads", "processes")
VALID_REQUIRE = (None, "sharedmem")
VALID_MMAP_MODES = (None, "r+", "r", "w+", "c")


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

DEFAULT_CONFIG: Dict[str, Any] = {
    "backend": UNSET,
    "n_jobs": UNSET,
    "verbose": 0,
    "temp_folder": None,
    "max_nbytes": "1M",
    "mmap_mode": "r",
    "prefer": None,
    "require": None,
    "inner_max_num_threads": None,
    "backend_params": {},
}

_local = threading.local()


def _current_config() -> Dict[str, Any]:
    return getattr(_local, "config", DEFAULT_CONFIG)


def _set_config(config: Dict[str, Any]) -> None:
    _local.config = config


def _backend_factory(name: str) -> Callable[..., ParallelBackendBase]:
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
        f"{sorted(set(BACKENDS) | set(_LAZY_BACKENDS))}")


def _make_backend(name: str, nesting_level: Optional[int] = None,
                  **params: Any) -> ParallelBackendBase:
    factory = _backend_factory(name)
    backend = factory(nesting_level=nesting_level, **params)
    if not isinstance(backend, ParallelBackendBase):
        raise TypeError(
            f"the factory of backend {name!r} returned "
            f"{type(backend).__name__}, not a ParallelBackendBase")
    return backend


def _check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(
            f"{name} must be one of {choices}, got {value!r}")


def _check_n_jobs(n_jobs: Any, allow_none: bool = True) -> None:
    if n_jobs is None and allow_none:
        return
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, Integral):
        raise TypeError(
            f"n_jobs must be an integer (or None), got {n_jobs!r} "
            f"of type {type(n_jobs).__name__}")
    if n_jobs == 0:
        raise ValueError("n_jobs == 0 in Parallel has no meaning")


class parallel_config:
    """Set the defaults of every ``Parallel`` created in this thread.

    Usable as a context manager (settings restored on exit, also after an
    exception) or as a plain call (settings stay until ``unregister()``).
    Parameters left unset keep the value of the enclosing configuration.

    Parameters
    ----------
    backend : str or ParallelBackendBase, optional
        ``"loky"``/``"multiprocessing"`` (processes), ``"threading"``,
        ``"sequential"``, ``"dask"`` or a registered name or instance.
    n_jobs : int, optional
        Default number of workers (``-1``: all CPUs).
    verbose, temp_folder, max_nbytes, mmap_mode, prefer, require
        Defaults of the same ``Parallel`` parameters.
    inner_max_num_threads : int, optional
        Cap of BLAS/OpenMP threads inside process workers.
    **backend_params
        Passed to the backend's constructor when ``backend`` is a name.

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
                 inner_max_num_threads: Any = UNSET,
                 **backend_params: Any) -> None:
        if n_jobs is not UNSET:
            _check_n_jobs(n_jobs)
        if prefer is not UNSET:
            _check_choice("prefer", prefer, VALID_PREFER)
        if require is not UNSET:
            _check_choice("require", require, VALID_REQUIRE)
        if mmap_mode is not UNSET:
            _check_choice("mmap_mode", mmap_mode, VALID_MMAP_MODES)
        if verbose is not UNSET and verbose is not None and (
                isinstance(verbose, bool) or not isinstance(verbose, Integral)):
            raise TypeError(f"verbose must be an integer, got {verbose!r}")
        if inner_max_num_threads not in (UNSET, None) and (
                not isinstance(inner_max_num_threads, Integral)
                or inner_max_num_threads < 1):
            raise ValueError(
                "inner_max_num_threads must be a positive integer, got "
                f"{inner_max_num_threads!r}")
        self.old_config = _current_config()
        new = dict(self.old_config)
        given = {
            "n_jobs": n_jobs, "verbose": verbose, "temp_folder": temp_folder,
            "max_nbytes": max_nbytes, "mmap_mode": mmap_mode,
            "prefer": prefer, "require": require,
            "inner_max_num_threads": inner_max_num_threads,
        }
        for key, value in given.items():
            if value is not UNSET and value is not None:
                new[key] = value
            elif value is None and key in ("prefer", "require"):
                pass  # None keeps the outer hint, as in joblib
        if backend is not UNSET and backend is not None:
            if isinstance(backend, str):
                inner = new["inner_max_num_threads"]
                extra = {}
                if inner is not None:
                    extra["inner_max_num_threads"] = inner
                backend = _make_backend(backend, **extra, **backend_params)
            elif isinstance(backend, ParallelBackendBase):
                if backend_params:
                    raise ValueError(
                        "backend parameters are only accepted with a backend "
                        "name, not with a backend instance")
                if inner_max_num_threads not in (UNSET, None):
                    if not backend.supports_inner_max_num_threads:
                        raise ValueError(
                            f"backend {backend!r} does not support "
                            "inner_max_num_threads")
                    backend.inner_max_num_threads = inner_max_num_threads
            elif hasattr(backend, "Pool") and hasattr(backend, "Lock"):
                backend = _make_backend("multiprocessing", context=backend,
                                        **backend_params)
            else:
                raise ValueError(
                    f"Invalid backend: {backend!r}, expected a backend name "
                    "or a ParallelBackendBase instance")
            new["backend"] = backend
        elif backend_params:
            raise ValueError(
                "backend parameters "
                f"{sorted(backend_params)} need a backend name")
        _set_config(new)
        self.config = new

    def __enter__(self) -> "parallel_config":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.unregister()

    def unregister(self) -> None:
        """Restore the configuration in force before this one."""
        _set_config(self.old_config)


class parallel_backend(parallel_config):
    """Older form of :class:`parallel_config`: ``backend`` first, and
    ``n_jobs`` defaults to -1 (all CPUs).

    Examples
    --------
    >>> from joblib_fast import Parallel, delayed, parallel_backend
    >>> with parallel_backend("threading", n_jobs=2):
    ...     Parallel()(delayed(abs)(-i) for i in range(3))
    [0, 1, 2]
    """

    def __init__(self, backend: Any, n_jobs: int = -1,
                 inner_max_num_threads: Optional[int] = None,
                 **backend_params: Any) -> None:
        super().__init__(backend=backend, n_jobs=n_jobs,
                         inner_max_num_threads=inner_max_num_threads,
                         **backend_params)

    def __enter__(self):
        # joblib's parallel_backend yields (backend, n_jobs).
        return self.config["backend"], self.config["n_jobs"]


def register_parallel_backend(name: str, factory: Callable[..., Any],
                              make_default: bool = False) -> None:
    """Make ``factory`` available as ``backend=name``.

    ``factory`` is called with the backend parameters given to
    ``parallel_config``/``parallel_backend`` (and ``nesting_level``), and must
    return a :class:`ParallelBackendBase`.  ``make_default=True`` makes it
    the backend of ``Parallel`` calls that name none.
    """
    global DEFAULT_BACKEND
    if not isinstance(name, str) or not name:
        raise TypeError(
            f"backend name must be a non-empty string, got {name!r}")
    if not callable(factory):
        raise TypeError(
            f"backend factory for {name!r} must be callable, got {factory!r}")
    BACKENDS[name] = factory
    if make_default:
        DEFAULT_BACKEND = name


def get_active_backend(prefer: Optional[str] = None,
                       require: Optional[str] = None,
                       verbose: int = 0):
    """Return ``(backend instance, n_jobs)`` a new Parallel would use."""
    backend, config = _resolve_backend(prefer, require)
    n_jobs = config["n_jobs"]
    return backend, (None if n_jobs is UNSET else n_jobs)


def _resolve_backend(prefer: Optional[str] = None,
                     require: Optional[str] = None):
    """Backend from the active configuration and the soft/hard hints."""
    config = _current_config()
    if prefer is None:
        prefer = config["prefer"]
    if require is None:
        require = config["require"]
    backend = config["backend"]
    nested_level = getattr(_local, "nesting_level", None)
    if backend is not UNSET:
        if require == "sharedmem" and not getattr(
                backend, "supports_sharedmem", False):
            return ThreadingBackend(nesting_level=backend.nesting_level), config
        return backend, config
    if require == "sharedmem" or prefer == "threads":
        return ThreadingBackend(nesting_level=nested_level), config
    return _make_backend(DEFAULT_BACKEND, nesting_level=nested_level), config


def _nesting_level() -> Optional[int]:
    """Nesting level of this thread (None in the user's own threads)."""
    config = _current_config()
    backend = config["backend"]
    if backend is not UNSET:
        return backend.nesting_level
    return getattr(_local, "nesting_level", None)


def _enter_worker(backend: ParallelBackendBase, n_jobs: Optional[int]) -> None:
    """Called at the start of each worker thread: nested calls there use
    the backend's nested backend."""
    nested, nested_n_jobs = backend.get_nested_backend()
    config = dict(DEFAULT_CONFIG)
    config["backend"] = nested
    if nested_n_jobs is not None:
        config["n_jobs"] = nested_n_jobs
    _set_config(config)
    _local.nesting_level = nested.nesting_level


# ------------------------------------------------------------- CPU counts


def _cgroup_cpu_limit() -> Optional[float]:
    """CPU quota of the cgroup (v2, then v1), or None when unlimited."""
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as f:
            quota_us = int(f.read())
        with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as f:
            period_us = int(f.read())
        if quota_us > 0 and period_us > 0:
            return quota_us / period_us
    except (OSError, ValueError):
        pass
    return None


def _physical_cores(cpus: set) -> Optional[int]:
    """Distinct cores among ``cpus``, from the kernel's topology files."""
    cores = set()
    for cpu in cpus:
        base = f"/sys/devices/system/cpu/cpu{cpu}/topology/"
        try:
            with open(base + "core_id") as f:
                core = f.read().strip()
            with open(base + "physical_package_id") as f:
                package = f.read().strip()
        except OSError:
            return None
        cores.add((package, core))
    return len(cores) or None


def cpu_count(only_physical_cores: bool = False) -> int:
    """Number of CPUs this process may use.

    Takes the smallest of the machine's CPUs, the CPU affinity of the
    process, the cgroup CPU quota (rounded up) and ``LOKY_MAX_CPU_COUNT``.
    With ``only_physical_cores=True``, hyper-threads of one core count once.
    """
    try:
        cpus = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        cpus = set(range(os.cpu_count() or 1))
    count = len(cpus) or (os.cpu_count() or 1)
    quota = _cgroup_cpu_limit()
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    env = os.environ.get("LOKY_MAX_CPU_COUNT")
    if env:
        try:
            count = min(count, max(1, int(env)))
        except ValueError:
            pass
    if only_physical_cores:
        physical = _physical_cores(cpus)
        if physical is not None:
            count = min(count, physical)
    return max(1, count)


def _effective_n_jobs(n_jobs: Optional[int]) -> int:
    if n_jobs is None:
        return 1
    _check_n_jobs(n_jobs)
    if n_jobs < 0:
        return max(cpu_count() + 1 + int(n_jobs), 1)
    return int(n_jobs)


def effective_n_jobs(n_jobs: Optional[int] = -1) -> int:
    """Number of workers ``Parallel(n_jobs)`` would use with the active
    backend (``-1`` means all CPUs, ``-2`` all but one, ...)."""
    if n_jobs == 1:
        return 1
    backend, config_n_jobs = get_active_backend()
    if n_jobs is None:
        n_jobs = config_n_jobs
    return backend.effective_n_jobs(n_jobs if n_jobs is not None else 1)
