"""Parallel and delayed: argument checking and the user-facing loop.

The work itself happens in the compiled core (``_core.pyx``); this module
decides the backend, the number of workers and the batching parameters,
owns the pool across calls inside ``with Parallel(...)``, and cleans up.
"""
from __future__ import annotations

import ast
import functools
import sys
from collections.abc import Iterable
from numbers import Integral, Real
from typing import Any, Callable

from . import _context, _gc, _progress
from . import config as _config
from ._core import Call, delayed, iter_sequential, run_sequential
from .backends.base import ParallelBackendBase
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

VALID_RETURN_AS = ("list", "generator", "generator_unordered")
_SIZE_UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def memstr_to_bytes(text: Any) -> int | None:
    """``"1M"`` -> 1048576; ints pass through; None stays None."""
    if text is None:
        return None
    if isinstance(text, Integral) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"max_nbytes must be >= 0, got {text}")
        return int(text)
    if isinstance(text, str):
        value = text.strip().lower()
        unit = 1
        if value and value[-1] in _SIZE_UNITS:
            unit = _SIZE_UNITS[value[-1]]
            value = value[:-1]
        try:
            number = float(value)
        except ValueError:
            number = -1.0
        if number >= 0:
            return int(number * unit)
    raise ValueError(
        "max_nbytes must be None, a number of bytes or a string like "
        f"'1M', '200k', '2G'; got {text!r}")


def _eval_pre_dispatch(value: Any, n_jobs: int) -> int:
    """``'all'``, a positive int, or an expression of ``n_jobs``."""
    if isinstance(value, str):
        if value.strip() == "all":
            return sys.maxsize
        try:
            number = _eval_expr(ast.parse(value.strip(), mode="eval").body,
                                n_jobs)
        except (SyntaxError, ValueError, ZeroDivisionError) as exc:
            raise ValueError(
                "pre_dispatch must be 'all', a positive integer or an "
                f"expression such as '2*n_jobs'; got {value!r} ({exc})"
            ) from None
    elif isinstance(value, Real) and not isinstance(value, bool):
        number = value
    else:
        raise ValueError(
            "pre_dispatch must be 'all', a positive integer or an "
            f"expression such as '2*n_jobs'; got {value!r}")
    if number < 1:
        raise ValueError(f"pre_dispatch must be at least 1, got {value!r}")
    return int(number)


def _eval_expr(node: ast.AST, n_jobs: int) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return node.value
    if isinstance(node, ast.Name) and node.id == "n_jobs":
        return n_jobs
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        operand = _eval_expr(node.operand, n_jobs)
        return operand if isinstance(node.op, ast.UAdd) else -operand
    if isinstance(node, ast.BinOp):
        left = _eval_expr(node.left, n_jobs)
        right = _eval_expr(node.right, n_jobs)
        if isinstance(node.op, ast.Add):
            return left + right
        if isinstance(node.op, ast.Sub):
            return left - right
        if isinstance(node.op, ast.Mult):
            return left * right
        if isinstance(node.op, ast.Div):
            return left / right
        if isinstance(node.op, ast.FloorDiv):
            return left // right
    raise ValueError("only numbers, n_jobs and + - * / are allowed")


def _known_length(iterable: Any) -> int:
    """len(iterable) for sized inputs (lists, tuples), else -1."""
    if isinstance(iterable, (list, tuple)):
        return len(iterable)
    return -1


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
        Progress messages (see the README).
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
    callback : callable, optional
        ``callback(index, result)`` called in the calling thread for every
        finished task, in completion order.  Not in joblib.
    return_shared : bool, default=True
        Process workers hand result arrays larger than ``max_nbytes`` back
        through shared memory: the caller gets a writable ndarray that
        maps the worker's copy instead of unpickling one.  ``False``
        pickles them (out-of-band buffers).  Not in joblib.
    **backend_kwargs
        Passed to the backend's ``configure``.

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
        _eval_pre_dispatch(pre_dispatch, 1 << 20)

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
            backend = _config.resolve_backend(prefer, require)[0]
        elif isinstance(backend, ParallelBackendBase):
            if backend.nesting_level is None:
                backend.nesting_level = level
        elif isinstance(backend, str):
            backend = _config.make_backend(backend, nesting_level=level)
        elif hasattr(backend, "Pool") and hasattr(backend, "Lock"):
            backend_kwargs["context"] = backend
            backend = _config.make_backend("multiprocessing",
                                            nesting_level=level)
        else:
            raise ValueError(
                f"Invalid backend: {backend!r}, expected a backend name, a "
                "ParallelBackendBase instance or a multiprocessing context")
        if require == "sharedmem" and not getattr(
                backend, "supports_sharedmem", False):
            raise ValueError(
                f"Backend {backend!r} does not support shared memory "
                "(require='sharedmem')")
        if n_jobs is UNSET or n_jobs is None:
            n_jobs = config["n_jobs"]
            if n_jobs is UNSET or n_jobs is None:
                n_jobs = backend.default_n_jobs
        if return_as != "list" and not getattr(
                backend, "_jf_sequential", False) and not \
                backend.supports_return_generator:
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
        self._managed = False   # inside `with Parallel(...)`
        self._pool = None       # the pool kept across calls when managed
        self._pool_n_jobs = 0
        self._running = False
        self._generator_call = None  # the return_as generator running now

    # ------------------------------------------------------------ pools

    def __enter__(self) -> Parallel:
        self._managed = True
        return self

    def __exit__(self, *exc: Any) -> None:
        self._managed = False
        call, self._generator_call = self._generator_call, None
        if call is not None:
            # A return_as generator still open: its workers go with the
            # block, so it ends with a clear error rather than a broken pool.
            call.abort(RuntimeError(
                "the `with Parallel(...)` block exited before this "
                "return_as generator was consumed"))
        self._discard_pool(wait=True)
        self._backend.terminate()

    def _discard_pool(self, wait: bool) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=wait)

    def _configure(self) -> int:
        # return_shared is ours: joblib backends (_foreign) don't get it.
        return self._backend.configure(
            n_jobs=self.n_jobs, parallel=self, prefer=self.prefer,
            require=self.require, return_shared=self.return_shared,
            **self._backend_kwargs)

    def _get_pool(self, n_jobs: int):
        if self._pool is not None and self._pool_n_jobs == n_jobs and \
                not getattr(self._pool, "closed", False):
            return self._pool
        self._discard_pool(wait=True)
        pool = self._backend._jf_make_pool(n_jobs)
        if self._managed:
            self._pool, self._pool_n_jobs = pool, n_jobs
        return pool

    def _end_call(self, pool, error: BaseException | None) -> None:
        """Release what the call used (caller thread, after the call)."""
        _gc.restore()
        # A task stuck past its timeout may never finish: don't wait for it.
        wait = not isinstance(error, TimeoutError)
        if pool is self._pool:
            if error is not None:
                # Never carry a failed call's leftovers into the next call.
                self._pool = None
                pool.shutdown(wait=wait)
            else:
                end_call = getattr(pool, "end_call", None)
                if end_call is not None:
                    end_call()
        else:
            pool.shutdown(wait=wait)
        self._backend.stop_call()
        if not self._managed:
            self._backend.terminate()

    # ------------------------------------------------------------- call

    def __call__(self, iterable: Iterable) -> Any:
        """Run the tasks of ``iterable`` (``delayed(f)(*args)`` items)."""
        if self._running:
            raise RuntimeError(
                "this Parallel instance is already running a call; nested "
                "or concurrent calls need their own Parallel instance")
        reporter = _progress.make_reporter(
            repr(self), self.verbose, self.progress_bar, self.callback,
            iterable)
        if not self._backend._jf_native and not getattr(
                self._backend, "_jf_sequential", False):
            from ._foreign import run_foreign
            return run_foreign(self, iterable, reporter)
        n_jobs = self._configure()
        if getattr(self._backend, "_jf_sequential", False) or n_jobs == 1:
            return self._run_sequential(iterable, reporter)
        self._running = True
        try:
            pool = self._get_pool(n_jobs)
        except BaseException:
            self._running = False
            raise
        _gc.relax()  # undone by _end_call
        if reporter is not None:
            reporter.start(self._backend, n_jobs)
        try:
            self._backend.start_call()
            call = Call(
                pool, iterable,
                pre_dispatch=_eval_pre_dispatch(self.pre_dispatch, n_jobs),
                batch_size=self._batch_size_for_call(),
                target_duration=self._backend.target_batch_duration,
                timeout=self.timeout,
                on_result=None if reporter is None else reporter.on_result,
                n_workers=n_jobs,
                total=_known_length(iterable),
            )
        except BaseException as exc:
            self._running = False
            self._end_call(pool, exc)
            if reporter is not None:
                reporter.finish(exc)
            raise
        if reporter is not None:
            reporter.watch(call)
        if self.return_as == "list":
            error = None
            try:
                return call.run_list()
            except BaseException as exc:
                error = exc
                raise
            finally:
                self._running = False
                self._end_call(pool, error)
                if reporter is not None:
                    reporter.finish(error)
        try:
            call.start()
            source = call.iter_ordered() if self.return_as == "generator" \
                else call.iter_unordered()
        except BaseException as exc:
            call.abort()
            self._running = False
            self._end_call(pool, exc)
            if reporter is not None:
                reporter.finish(exc)
            raise
        gen = guarded(source, functools.partial(
            self._finish_generator, call, pool, reporter))
        self._generator_call = call
        return gen

    def _batch_size_for_call(self) -> int:
        if self.timeout is not None and not self._backend.uses_threads:
            # A process worker is timed per batch: one task per batch.
            return 1
        return 0 if self.batch_size == "auto" else self.batch_size

    def _finish_generator(self, call: Call, pool, reporter,
                          error: BaseException | None) -> None:
        call.abort()
        if self._generator_call is call:
            self._generator_call = None
        self._running = False
        self._end_call(pool, error)
        if reporter is not None:
            reporter.finish(error)

    def _run_sequential(self, iterable: Iterable, reporter=None,
                        cleanup: Callable[[], Any] | None = None) -> Any:
        """n_jobs=1: the tasks run in the caller, one after the other."""
        on_result = None if reporter is None else reporter.on_result
        if self.return_as == "list":
            error = None
            try:
                return run_sequential(iterable, on_result)
            except BaseException as exc:
                error = exc
                raise
            finally:
                _finish_sequential(reporter, cleanup, error)
        source = iter_sequential(iterable, on_result)
        if reporter is None and cleanup is None:
            return source
        return guarded(source, functools.partial(
            _finish_sequential, reporter, cleanup))

    def _print(self, msg: str) -> None:
        """joblib's message hook, used by some backends: ``[Parallel(...)]:
        msg`` on stderr (stdout from verbose 50) when verbose is set."""
        _progress.print_message(repr(self), self.verbose, msg)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n_jobs={self.n_jobs})"


def guarded(source, finish: Callable[[BaseException | None], Any]):
    """A generator over ``source`` that calls ``finish(error)`` exactly
    once however it ends: exhausted, raising, closed or garbage-collected.
    It is primed (its try block entered) before it is returned, so that
    even a generator never iterated is cleaned up when closed."""
    def run():
        error = None
        try:
            yield None
            yield from source
        except BaseException as exc:
            error = exc
            raise
        finally:
            finish(error)
    gen = run()
    next(gen)
    return gen


def _finish_sequential(reporter, cleanup, error):
    if cleanup is not None:
        cleanup()
    if reporter is not None:
        reporter.finish(error)


# joblib exposes delayed from this module too.
delayed = delayed
