"""One call's lifecycle, the same for every backend.

``Parallel`` owns one :class:`Runner`; each ``Parallel.__call__`` is one
:meth:`Runner.run`::

    provider.configure_call --n_jobs == 1 (and runs_one_job_inline) or
        sequential--> run in the caller
        | n_jobs > 1
    pool (kept across the calls of a ``with`` block, else new)
    GC relaxed, native thread pools capped (threads), reporter started,
    backend.start_call()
    provider.prepare_input --> core Call --> list | ordered | unordered
    end, exactly once however the call ends (returned, raised, generator
    exhausted, closed or collected):
        GC restored, pool.end_call(error), pool.shutdown (unmanaged),
        backend.stop_call(), backend.terminate() (unmanaged),
        native thread pools restored, reporter.finish(error)

Threads: everything here runs in the thread that called ``Parallel``
(a generator's end runs in whichever thread closes it).
"""
from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Callable

from . import _gc, _native_threads
from ._args import eval_pre_dispatch, known_length
from ._core import Call, forget_delayed, iter_sequential, run_sequential
from .backends.base import warn_timeout_unsupported
from .backends.native import CallOptions, Pool, PoolProvider
from .errors import abandons_running_tasks


@dataclass(frozen=True)
class CallStats:
    """How a call of :class:`Parallel` ran, for seeing why it was as
    quick as it was (:attr:`Parallel.last_call_stats`).

    Attributes
    ----------
    n_tasks : int
        Tasks dispatched (a joblib-style custom backend's batches count
        one each).
    n_batches : int
        Batches they were dispatched in.
    caller_tasks : int
        Tasks the calling thread ran itself.  Only the threading backend
        with a list output has the caller run tasks (beside ``n_jobs - 1``
        pool threads, or alone); 0 otherwise.
    alone_stretches : int
        Times the calling thread chose to run every task itself because
        it measured one thread doing more than the team of ``n_jobs``
        threads (tasks holding the GIL, or handing it over every few
        microseconds).  0 for tasks that run ``n_jobs`` at once.
    alone_trials : int
        Times the calling thread ran every task itself for a while to
        compare with the team (kept or not): tried only when fewer than
        0.8 * ``n_jobs`` threads ran at once on average; each trial that
        the team wins costs a few milliseconds at one thread's speed.
    """

    n_tasks: int
    n_batches: int
    caller_tasks: int
    alone_stretches: int
    alone_trials: int


class Runner:
    """Runs the calls of one ``Parallel`` instance; keeps their pool
    across the calls of a ``with Parallel(...)`` block."""

    def __init__(self, provider: PoolProvider) -> None:
        self.provider = provider
        self.backend = provider.backend
        self.managed = False       # inside `with Parallel(...)`
        self.pool: Pool | None = None   # kept while managed
        self.running = False
        self.generator_call: Call | None = None  # a return_as generator
        # The last call that ended (None: it ran in the caller, or none)
        self.last_stats: CallStats | None = None

    # ------------------------------------------------------------ block

    def enter(self) -> None:
        self.managed = True

    def exit(self) -> None:
        self.managed = False
        call, self.generator_call = self.generator_call, None
        if call is not None:
            # A return_as generator still open: its workers go with the
            # block, so it ends with a clear error rather than a broken pool.
            call.abort(RuntimeError(
                "the `with Parallel(...)` block exited before this "
                "return_as generator was consumed"))
        pool, self.pool = self.pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        self.backend.terminate()

    # ------------------------------------------------------------- call

    def run(self, iterable: Iterable, options: CallOptions, return_as: str,
            reporter: Any) -> Any:
        """Run the tasks of ``iterable``: a list, or a generator."""
        if self.running:
            # joblib's wording first: code matches on it.
            message = "This Parallel instance is already running !"
            if return_as != "list":
                message += (
                    " Before submitting new tasks, you must wait for the "
                    "completion of all the previous tasks, or clean all "
                    "references to the output generator.")
            raise RuntimeError(
                message + " (nested or concurrent calls need their own "
                "Parallel instance)")
        self.last_stats = None
        if self.provider.sequential:
            return self._run_inline(iterable, return_as, reporter, None,
                                    options.batch_size, options.timeout)
        n_jobs = self.provider.configure_call(options)
        if n_jobs is not None and n_jobs < 1:
            raise RuntimeError(
                f"{type(self.backend).__name__} has no active worker. (its "
                f"configure() returned n_jobs={n_jobs})")
        if n_jobs == 1 and self.provider.runs_one_job_inline:
            cleanup = None if self.managed else self.backend.terminate
            return self._run_inline(iterable, return_as, reporter, cleanup,
                                    options.batch_size, options.timeout)
        self.running = True
        try:
            pool = self._get_pool(n_jobs, options)
        except BaseException:
            self.running = False
            raise
        _gc.relax()  # undone by _End
        end = _End(self, pool, reporter)
        try:
            limit = self.provider.native_threads_limit(n_jobs)
            if limit is not None:
                end.native_cap = _native_threads.hold(limit)
            if reporter is not None:
                reporter.start(self.backend, n_jobs)
            self.backend.start_call()
            end.started = True
            on_result = None if reporter is None else reporter.on_result
            feed = self.provider.prepare_input(pool, iterable, options,
                                               on_result)
            on_result, on_batch = feed.on_result, None
            if reporter is not None and reporter.on_batch is not None and \
                    not feed.chunked:
                # A bar alone: told per handful of batches, not per task.
                on_result, on_batch = None, reporter.on_batch
            call = Call(
                pool, feed.source,
                pre_dispatch=eval_pre_dispatch(options.pre_dispatch, n_jobs),
                batch_size=feed.batch_size,
                target_duration=self.backend.target_batch_duration,
                timeout=feed.timeout, on_result=on_result,
                n_workers=n_jobs, on_batch=on_batch,
                total=-1 if feed.chunked else known_length(iterable))
            if reporter is not None:
                reporter.watch(call if feed.counter is None else feed.counter)
        except BaseException as exc:
            end(exc)
            raise
        end.call = call
        if return_as == "list":
            error = None
            try:
                with self.backend.retrieval_context():
                    out = call.run_list()
                if feed.chunked:
                    out = [value for chunk in out for value in chunk]
                return out
            except BaseException as exc:
                error = exc
                raise
            finally:
                end(error)
        try:
            call.start()
        except BaseException as exc:
            end(exc)
            raise
        source = call.iter_ordered() if return_as == "generator" \
            else call.iter_unordered()
        self.generator_call = call
        return guarded(self._results(source, feed.chunked), end)

    def _run_inline(self, iterable: Iterable, return_as: str, reporter: Any,
                    cleanup: Callable[[], Any] | None,
                    batch_size: int = 0, timeout: float | None = None) -> Any:
        """A call in the caller; an open generator keeps the instance
        running (as in joblib) until it ends.  An explicit ``batch_size``
        is honoured as joblib does: the input is read ``batch_size`` tasks
        ahead of their execution; a ``timeout`` cannot be enforced on the
        caller's own thread: joblib's warning says so."""
        if timeout is not None:
            warn_timeout_unsupported("SequentialBackend", timeout)
        self.running = True
        if batch_size > 1:
            iterable = _read_ahead(iterable, batch_size)

        def finish() -> None:
            self.running = False
            if cleanup is not None:
                cleanup()

        try:
            out = run_inline(iterable, return_as, reporter, finish)
        except BaseException:
            self.running = False
            raise
        return out

    def _results(self, source, chunked: bool):
        with self.backend.retrieval_context():
            if chunked:
                for chunk in source:
                    yield from chunk
            else:
                yield from source

    def _get_pool(self, n_jobs: int, options: CallOptions) -> Pool:
        pool = self.pool
        if pool is not None and self.provider.reuses(pool, n_jobs):
            return pool
        self.pool = None
        if pool is not None:
            pool.shutdown(wait=True)
        pool = self.provider.make_pool(n_jobs, options)
        if self.managed:
            self.pool = pool
        return pool


class _End:
    """Ends one call (caller thread, exactly once)."""

    def __init__(self, runner: Runner, pool: Pool, reporter: Any) -> None:
        self.runner = runner
        self.pool = pool
        self.reporter = reporter
        self.call: Call | None = None
        self.started = False   # backend.start_call() ran
        self.ended = False
        # The native thread pools' cap held for this call (released last).
        self.native_cap: _native_threads.Hold | None = None

    def __call__(self, error: BaseException | None) -> None:
        if self.ended:
            return
        self.ended = True
        runner, pool = self.runner, self.pool
        try:
            forget_delayed()
            _gc.restore()
            if self.call is not None:
                self.call.abort()   # a generator closed early: stop feeding
                self.call.close_input()   # and let go of the input now
                call = self.call
                runner.last_stats = CallStats(
                    call.n_tasks, call.n_batches, call.caller_tasks,
                    call.alone_stretches, call.alone_trials)
            if runner.generator_call is self.call:
                runner.generator_call = None
            pool.end_call(error)
            if pool is not runner.pool:
                pool.shutdown(wait=not abandons_running_tasks(error))
            elif pool.closed:
                runner.pool = None
            if self.started:
                runner.backend.stop_call()
            if not runner.managed:
                runner.backend.terminate()
        finally:
            runner.running = False
            cap, self.native_cap = self.native_cap, None
            if cap is not None:
                cap.release()
            if self.reporter is not None:
                self.reporter.finish(error)


def run_inline(iterable: Iterable, return_as: str, reporter: Any = None,
               cleanup: Callable[[], Any] | None = None) -> Any:
    """The tasks run in the caller, one after the other (``n_jobs=1``)."""
    on_result = None if reporter is None else reporter.on_result

    def finish(error: BaseException | None) -> None:
        if cleanup is not None:
            cleanup()
        if reporter is not None:
            reporter.finish(error)

    if return_as == "list":
        error = None
        try:
            return run_sequential(iterable, on_result)
        except BaseException as exc:
            error = exc
            raise
        finally:
            finish(error)
    source = iter_sequential(iterable, on_result)
    if reporter is None and cleanup is None:
        return source
    return guarded(source, finish)


def _read_ahead(iterable: Iterable, batch_size: int):
    """The items of ``iterable``, pulled ``batch_size`` at a time."""
    iterator = iter(iterable)
    while True:
        batch = list(itertools.islice(iterator, batch_size))
        if not batch:
            return
        yield from batch


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
