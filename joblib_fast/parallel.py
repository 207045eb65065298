"""Parallel and delayed: argument checking and backend choice.

This module checks ``Parallel``'s arguments, resolves the backend and hands
each call to :class:`joblib_fast._run.Runner` (the call lifecycle); the work
itself happens in the compiled core (``_core.pyx``).
"""
from __future__ import annotations

from collections.abc import Iterable
from multiprocessing.context import BaseContext
from numbers import Integral, Real
from typing import Any, Callable

from . import _context, _progress
from . import config as _config
from ._args import VALID_RETURN_AS, eval_pre_dispatch, memstr_to_bytes
from ._core import delayed
from ._run import CallStats, Runner
from .backends.base import ParallelBackendBase, check_backend_keywords
from .backends.native import CallOptions, PoolProvider
from .backends.user import UserBackendProvider
from .config import (  # noqa: F401 - joblib.parallel exposes these too
    EXTERNAL_BACKENDS,
    UNSET,
    cpu_count,
    effective_n_jobs,
    get_active_backend,
    parallel_backend,
    parallel_config,
    register_parallel_backend,
)

__all__ = ["Parallel", "delayed"]

class Parallel:
    """Run ``delayed`` calls in parallel; same signature as joblib's.

    Parameters
    ----------
    n_jobs : int or None
        Workers to use; ``-1`` all CPUs, ``-2`` all but one, ...; ``None``
        means 1 unless ``parallel_config`` sets it.  ``0`` is an error.
    backend : str, ParallelBackendBase or multiprocessing context, optional
        ``"loky"`` (default, processes), ``"multiprocessing"``,
        ``"threading"``, ``"sequential"`` or a registered name.
    return_as : {"list", "generator", "generator_unordered"}
        All results at the end in input order, a generator yielding them in
        input order as they become ready, or in completion order.
    verbose : int
        Progress messages in joblib's format, more as it grows (on stderr;
        on stdout from 50).
    timeout : float, optional
        Seconds a single task may run; past that ``TimeoutError`` is raised.
    pre_dispatch : {"all", int, str}
        Batches dispatched ahead of completion (an expression of ``n_jobs``).
    batch_size : int or "auto"
        Tasks per batch; ``"auto"`` sizes batches from measured task costs.
    temp_folder : str, optional
        Folder of the memory-mapped copies of large arrays (process
        backends).  Default: ``JOBLIB_TEMP_FOLDER``, else ``/dev/shm`` when
        it has room for the array, else the system temp folder.
    max_nbytes : int, str or None, default="1M"
        Arrays larger than this (bytes, or a string such as ``"1M"`` or
        ``"200k"``) reach process workers as memory maps, and come back
        through shared memory; ``None`` disables both.
    mmap_mode : {"r", "r+", "w+", "c", None}, default="r"
        How workers open those memory maps (as ``numpy.memmap``; ``"w+"``
        opens the copy ``"r+"``); ``None`` sends copies instead.
    prefer : {"threads", "processes"}, optional
        Soft hint used when no backend is chosen explicitly.
    require : {"sharedmem"}, optional
        Hard constraint: a backend whose workers share memory (threads).
    progress_bar : bool, default=False
        Show a live progress bar (count, rate, ETA): tqdm when installed,
        a one-line bar on stderr otherwise.  Not in joblib.

        .. versionadded:: 0.1.0
    callback : callable, optional
        ``callback(index, result)`` called in the calling thread for every
        finished task, in completion order.  Not in joblib.

        .. versionadded:: 0.1.0
    return_shared : bool, default=True
        Process workers hand result arrays larger than ``max_nbytes`` back
        through shared memory: the caller gets a writable ndarray that
        maps the worker's copy instead of unpickling one.  ``False``
        pickles them (out-of-band buffers).  Not in joblib.

        .. versionadded:: 0.1.0
    **backend_kwargs
        Passed to the backend's ``configure``.  Those a backend does not
        document are a ``TypeError`` naming them.  Processes:
        ``initializer``, ``initargs``, ``max_tasks_per_child`` (a worker
        is replaced after this many tasks; auto batches then hold one
        task), ``memory_growth_limit`` (a worker whose resident memory
        grew by more than this since it started is replaced between
        batches; bytes or ``"300M"``, default 300 MiB, None: never),
        ``idle_worker_timeout`` (seconds an idle reusable pool lives,
        default 300).  Threads: ``initializer``, ``initargs``.

    Examples
    --------
    >>> from math import sqrt
    >>> from joblib_fast import Parallel, delayed
    >>> Parallel(n_jobs=2, backend="threading")(
    ...     delayed(sqrt)(i ** 2) for i in range(4))
    [0.0, 1.0, 2.0, 3.0]
    """

    def __init__(self, n_jobs: Any = UNSET, backend: Any = None,
                 return_as: str = "list", verbose: Any = UNSET,
                 timeout: float | None = None,
                 pre_dispatch: Any = "2 * n_jobs",
                 batch_size: Any = "auto", temp_folder: Any = UNSET,
                 max_nbytes: Any = UNSET, mmap_mode: Any = UNSET,
                 prefer: Any = UNSET, require: Any = UNSET,
                 progress_bar: bool = False,
                 callback: Callable[[int, Any], Any] | None = None,
                 return_shared: bool = True,
                 **backend_kwargs: Any) -> None:
        if return_as not in VALID_RETURN_AS:
            raise ValueError(
                f"return_as must be one of {VALID_RETURN_AS}, got {return_as!r}")
        prefer = None if prefer is UNSET else prefer
        require = None if require is UNSET else require
        _config.check_choice("prefer", prefer, _config.VALID_PREFER)
        _config.check_choice("require", require, _config.VALID_REQUIRE)
        if n_jobs is not UNSET:
            n_jobs = _context.check_n_jobs(n_jobs)
        if not isinstance(return_shared, bool):
            raise TypeError(
                f"return_shared must be True or False, got {return_shared!r}")
        if callback is not None and not callable(callback):
            raise TypeError(
                f"callback must be a callable(index, result) or None, got "
                f"{callback!r}")
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, Real) \
                    or not timeout > 0:
                raise ValueError(
                    f"timeout must be a positive number of seconds or None, "
                    f"got {timeout!r}")
        if batch_size != "auto" and (
                isinstance(batch_size, bool)
                or not isinstance(batch_size, Integral) or batch_size < 1):
            raise ValueError(
                "batch_size must be 'auto' or a positive integer, got: "
                f"{batch_size!r}")
        # The form is checked now so that a bad value fails at construction;
        # its value (which depends on the effective n_jobs) at each call.
        eval_pre_dispatch(pre_dispatch, 1 << 20)

        config = dict(_context.current_config())
        level = _context.nesting_level()
        for key, value in (("verbose", verbose), ("temp_folder", temp_folder),
                           ("max_nbytes", max_nbytes),
                           ("mmap_mode", mmap_mode)):
            if value is not UNSET:
                config[key] = value
        _config.check_choice("mmap_mode", config["mmap_mode"],
                              _config.VALID_MMAP_MODES)
        verbose = config["verbose"]
        if verbose is None:
            verbose = 0
        if isinstance(verbose, bool) or not isinstance(verbose, Integral):
            raise TypeError(f"verbose must be an integer, got {verbose!r}")

        if backend is None or backend is UNSET:
            backend = _config.resolve_backend(prefer, require, verbose)[0]
        elif isinstance(backend, ParallelBackendBase):
            if backend.nesting_level is None:
                backend.nesting_level = level
        elif isinstance(backend, str):
            backend = _config.make_backend(backend, nesting_level=level)
        elif isinstance(backend, BaseContext):
            backend_kwargs["context"] = backend
            backend = _config.make_backend("multiprocessing",
                                            nesting_level=level)
        else:
            raise ValueError(
                f"Invalid backend: {backend!r}, expected a backend name, a "
                "ParallelBackendBase instance or a multiprocessing context")
        check_backend_keywords(backend, backend_kwargs, "Parallel(...)")
        if require == "sharedmem" and not backend.supports_sharedmem:
            raise ValueError(
                f"Backend {backend!r} does not support shared memory "
                "(require='sharedmem')")
        if n_jobs is UNSET or n_jobs is None:
            n_jobs = config["n_jobs"]
            if n_jobs is UNSET or n_jobs is None:
                n_jobs = backend.default_n_jobs
        provider = backend if isinstance(backend, PoolProvider) \
            else UserBackendProvider(backend)
        if return_as != "list" and not provider.sequential and \
                not backend.supports_return_generator:
            raise ValueError(
                f"Backend {backend!r} does not support return_as={return_as!r}")

        self.n_jobs = n_jobs
        self.return_as = return_as
        self.verbose = verbose
        self.timeout = timeout
        self.pre_dispatch = pre_dispatch
        self.batch_size = batch_size
        self.prefer = prefer
        self.require = require
        self.progress_bar = bool(progress_bar)
        self.callback = callback
        self.return_shared = return_shared
        self._backend = backend
        self._backend_kwargs = dict(backend_kwargs)
        self._backend_kwargs.update(
            temp_folder=config["temp_folder"],
            max_nbytes=memstr_to_bytes(config["max_nbytes"]),
            mmap_mode=config["mmap_mode"],
        )
        self._runner = Runner(provider)

    def __enter__(self) -> Parallel:
        self._runner.enter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._runner.exit()

    @property
    def last_call_stats(self) -> CallStats | None:
        """How this instance's last call ran, once it ended (a
        ``return_as`` generator's: once consumed or closed): a
        :class:`~joblib_fast.CallStats`, or None when the call ran in the
        calling thread (``n_jobs=1``, the sequential backend) or none has
        ended.  An addition to joblib's API.

        >>> from joblib_fast import Parallel, delayed
        >>> def held(n):                  # pure Python: holds the GIL
        ...     return sum(range(n))
        >>> parallel = Parallel(n_jobs=2, backend="threading")
        >>> out = parallel(delayed(held)(10) for _ in range(1000))
        >>> stats = parallel.last_call_stats
        >>> stats.n_tasks, stats.caller_tasks <= stats.n_tasks
        (1000, True)
        """
        return self._runner.last_stats

    def _effective_n_jobs(self) -> int:
        """Workers a call would use (joblib has this private method too,
        and code in the wild calls it)."""
        return self._backend.effective_n_jobs(self.n_jobs)

    def _options(self) -> CallOptions:
        kwargs = self._backend_kwargs
        return CallOptions(
            n_jobs=self.n_jobs, timeout=self.timeout,
            batch_size=0 if self.batch_size == "auto" else self.batch_size,
            pre_dispatch=self.pre_dispatch,
            temp_folder=kwargs["temp_folder"],
            max_nbytes=kwargs["max_nbytes"], mmap_mode=kwargs["mmap_mode"],
            return_shared=self.return_shared, managed=self._runner.managed,
            prefer=self.prefer, require=self.require, verbose=self.verbose,
            backend_kwargs=tuple(kwargs.items()), parallel=self)

    def __call__(self, iterable: Iterable) -> Any:
        """Run the tasks of ``iterable`` (``delayed(f)(*args)`` items)."""
        reporter = _progress.make_reporter(
            repr(self), self.verbose, self.progress_bar, self.callback,
            iterable, self._print)
        return self._runner.run(iterable, self._options(), self.return_as,
                                reporter)

    def _print(self, msg: str) -> None:
        """joblib's message hook, used by some backends: ``[Parallel(...)]:
        msg`` on stderr (stdout from verbose 50) when verbose is set."""
        _progress.print_message(repr(self), self.verbose, msg)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n_jobs={self.n_jobs})"


# joblib exposes delayed from this module too.
delayed = delayed
