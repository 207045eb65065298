"""The compiled core against a tiny pure-Python model (hypothesis).

The model of one call with inputs ``x_0 .. x_{n-1}``:

* batches are consecutive runs of tasks: batch ``k`` starts where batch
  ``k-1`` ended; a fixed ``batch_size`` b gives runs of b (the last may be
  shorter); an auto batch is at least 1 task and at most twice the previous
  batch;
* at most ``pre_dispatch`` batches are submitted and not finished, and the
  input is pulled no further than the tasks of submitted batches (auto
  batches: and the next batch's, at most as many as the largest batch);
* ``run_list`` returns ``[f(x_0), ..., f(x_{n-1})]``;
* ``iter_ordered`` yields the same list, each value only once every batch up
  to its own has finished;
* ``iter_unordered`` yields the results of each batch, batch after batch, in
  the order the batches finished;
* a task error is raised to the caller, and no batch is submitted once a
  batch carrying an error has been delivered.

A fake pool (``submit`` + ``wait``, the interface the process backend uses)
finishes the submitted batches in an order drawn by hypothesis, in the
caller's thread, so every completion order can be explored
deterministically.  A second set of tests runs the same model on the real
``ThreadPool`` and through ``Parallel``.
"""
from __future__ import annotations

import time
from collections import Counter

import pytest
from helpers.common import worker_threads
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from joblib_fast import Parallel, delayed
from joblib_fast._core import Call, ThreadPool

FAST = settings(max_examples=30, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

inputs = st.lists(st.integers(-1000, 1000), max_size=60)
batch_sizes = st.one_of(st.just(0), st.integers(1, 7))  # 0: auto
pre_dispatches = st.integers(1, 6)
modes = st.sampled_from(("list", "generator", "generator_unordered"))


def f(x):
    return 3 * x + 1


class Failure(Exception):
    pass


def f_or_fail(x, bad):
    if x == bad:
        raise Failure(f"input {x}")
    return f(x)


class PullCounter:
    """The user's iterator, counting the items pulled."""

    def __init__(self, items):
        self.items = list(items)
        self.pulled = 0

    def __iter__(self):
        for item in self.items:
            self.pulled += 1
            yield item


class ModelPool:
    """Runs submitted batches one at a time, in an order chosen by `rng`,
    and checks the core's side of the model as it goes."""

    def __init__(self, rng, source, pre_dispatch, batch_size):
        self.rng = rng
        self.source = source
        self.pre_dispatch = pre_dispatch
        self.batch_size = batch_size
        self.pending = []        # submitted, not finished
        self.submitted = []      # (start, size) in submission order
        self.finished = set()    # batch ids finished
        self.completion = []     # batch results in completion order
        self.errored = False     # a batch with an error was delivered

    @property
    def n_submitted_tasks(self):
        return sum(size for _, size in self.submitted)

    def submit(self, batch):
        assert not self.errored, "a batch was submitted after an error"
        tasks = batch.task_list()
        size = len(tasks)
        assert size >= 1
        expected_start = self.n_submitted_tasks
        assert batch.start == expected_start, (batch.start, expected_start)
        assert batch.id == len(self.submitted)
        if self.batch_size:
            if self.submitted:
                _, prev_size = self.submitted[-1]
                assert prev_size == self.batch_size, \
                    "only the last fixed-size batch may be short"
            assert size <= self.batch_size
        elif self.submitted:
            assert size <= 2 * self.submitted[-1][1], \
                (size, self.submitted[-1][1])
        self.submitted.append((batch.start, size))
        self.pending.append(batch)
        assert len(self.pending) <= self.pre_dispatch, \
            (len(self.pending), self.pre_dispatch)
        # A fixed batch size pulls only the submitted tasks; auto batches
        # pull the next batch's tasks with this one (so that the end of the
        # input is seen early): never more than the largest batch so far
        # (a batch may be smaller than the one before it).
        ahead = self.source.pulled - self.n_submitted_tasks
        if self.batch_size:
            assert ahead == 0, ahead
        else:
            largest = max(n for _, n in self.submitted)
            assert 0 <= ahead <= largest, (ahead, largest)

    def wait(self, call, seconds):
        assert self.pending, "the core waits while nothing is running"
        batch = self.pending.pop(self.rng.randrange(len(self.pending)))
        results, error, error_index = [], None, -1
        t0 = time.perf_counter()
        for k, (func, args, kwargs) in enumerate(batch.task_list()):
            try:
                results.append(func(*args, **kwargs))
            except Exception as exc:  # noqa: BLE001 (delivered to the core)
                results, error, error_index = None, exc, batch.start + k
                self.errored = True
                break
        self.finished.add(batch.id)
        self.completion.append(results)
        call.complete(batch, results, time.perf_counter() - t0, error,
                      error_index)

    def finished_prefix_tasks(self):
        """Tasks in the longest run of finished batches from batch 0."""
        n = 0
        for batch_id, (_, size) in enumerate(self.submitted):
            if batch_id not in self.finished:
                break
            n += size
        return n


def run_model_call(xs, batch_size, pre_dispatch, mode, rng, func=f):
    source = PullCounter(delayed(func)(x) for x in xs)
    pool = ModelPool(rng, source, pre_dispatch, batch_size)
    seen = {}
    call = Call(pool, iter(source), pre_dispatch=pre_dispatch,
                batch_size=batch_size, target_duration=0.002,
                on_result=lambda i, v: seen.setdefault(i, v))
    if mode == "list":
        out = call.run_list()
    else:
        call.start()
        gen = call.iter_ordered() if mode == "generator" \
            else call.iter_unordered()
        out = []
        for value in gen:
            out.append(value)
            if mode == "generator":
                assert len(out) <= pool.finished_prefix_tasks()
    return out, pool, seen, source


@FAST
@given(xs=inputs, batch_size=batch_sizes, pre_dispatch=pre_dispatches,
       mode=modes, rng=st.randoms(use_true_random=False))
def test_core_matches_model(xs, batch_size, pre_dispatch, mode, rng):
    out, pool, seen, source = run_model_call(xs, batch_size, pre_dispatch,
                                             mode, rng)
    expected = [f(x) for x in xs]
    if mode == "generator_unordered":
        assert out == [v for results in pool.completion for v in results]
        assert Counter(out) == Counter(expected)
    else:
        assert out == expected
    assert source.pulled == len(xs)
    assert pool.n_submitted_tasks == len(xs)
    assert not pool.pending
    if batch_size:
        assert len(pool.submitted) == -(-len(xs) // batch_size)
    # on_result saw every task once, under its input index.
    assert seen == dict(enumerate(expected))


@FAST
@given(xs=st.lists(st.integers(0, 30), min_size=1, max_size=60),
       batch_size=batch_sizes, pre_dispatch=pre_dispatches, mode=modes,
       rng=st.randoms(use_true_random=False), data=st.data())
def test_core_error_model(xs, batch_size, pre_dispatch, mode, rng, data):
    bad = data.draw(st.sampled_from(xs))

    def func(x):
        return f_or_fail(x, bad)

    with pytest.raises(Failure, match=f"input {bad}$"):
        run_model_call(xs, batch_size, pre_dispatch, mode, rng, func)


def test_core_empty_input():
    import random
    for mode in ("list", "generator", "generator_unordered"):
        out, pool, seen, _ = run_model_call([], 0, 2, mode, random.Random(0))
        assert out == [] and pool.submitted == [] and seen == {}


# ------------------------------------------------ the real thread pool


def run_on_threads(xs, durations, batch_size, pre_dispatch, mode, n_threads):
    def task(x, seconds):
        if seconds:
            time.sleep(seconds)
        return f(x)

    pool = ThreadPool(n_threads)
    try:
        call = Call(pool, (delayed(task)(x, d) for x, d in zip(xs, durations)),
                    pre_dispatch=pre_dispatch, batch_size=batch_size)
        if mode == "list":
            return call.run_list()
        call.start()
        gen = call.iter_ordered() if mode == "generator" \
            else call.iter_unordered()
        return list(gen)
    finally:
        assert pool.shutdown(wait=True)


tasks_with_durations = st.lists(
    st.tuples(st.integers(-100, 100), st.sampled_from((0.0, 0.0, 0.0005,
                                                       0.002))),
    max_size=40)


@FAST
@given(tasks=tasks_with_durations, batch_size=batch_sizes,
       pre_dispatch=pre_dispatches, mode=modes,
       n_threads=st.integers(1, 3))
def test_thread_pool_matches_model(tasks, batch_size, pre_dispatch, mode,
                                   n_threads):
    xs = [x for x, _ in tasks]
    out = run_on_threads(xs, [d for _, d in tasks], batch_size, pre_dispatch,
                         mode, n_threads)
    expected = [f(x) for x in xs]
    if mode == "generator_unordered":
        assert Counter(out) == Counter(expected)
    else:
        assert out == expected


@FAST
@given(tasks=tasks_with_durations,
       batch_size=st.one_of(st.just("auto"), st.integers(1, 7)),
       pre_dispatch=st.one_of(st.integers(1, 6),
                              st.sampled_from(("all", "2*n_jobs", "n_jobs",
                                               "3*n_jobs"))),
       mode=modes, n_jobs=st.integers(1, 3),
       backend=st.sampled_from(("threading", "sequential")))
def test_parallel_matches_model(tasks, batch_size, pre_dispatch, mode,
                                n_jobs, backend):
    def task(x, seconds):
        if seconds:
            time.sleep(seconds)
        return f(x)

    out = Parallel(n_jobs=n_jobs, backend=backend, batch_size=batch_size,
                   pre_dispatch=pre_dispatch, return_as=mode)(
        delayed(task)(x, d) for x, d in tasks)
    out = list(out)
    expected = [f(x) for x, _ in tasks]
    if mode == "generator_unordered":
        assert Counter(out) == Counter(expected)
    else:
        assert out == expected
    assert worker_threads() == []


# ------------------------------------------------------ core arguments


def test_thread_pool_needs_a_thread():
    with pytest.raises(ValueError, match="n_threads"):
        ThreadPool(0)


def test_thread_pool_threads_and_shutdown():
    pool = ThreadPool(3, name="jf-core-test")
    try:
        assert pool.n_threads == 3
        assert [t.name for t in pool.threads] == \
            [f"jf-core-test-{i}" for i in range(3)]
        assert all(t.daemon and t.is_alive() for t in pool.threads)
        assert not pool.closed
    finally:
        assert pool.shutdown(wait=True)
    assert pool.closed
    assert not any(t.is_alive() for t in pool.threads)
    assert pool.shutdown(wait=True)  # a second shutdown is harmless


def test_thread_pool_initializer_runs_in_each_thread():
    import threading
    seen = set()
    lock = threading.Lock()

    def init():
        with lock:
            seen.add(threading.current_thread().name)

    pool = ThreadPool(2, name="jf-init", initializer=init)
    assert pool.shutdown(wait=True)
    assert seen == {"jf-init-0", "jf-init-1"}


def test_call_after_pool_shutdown_raises():
    pool = ThreadPool(1)
    assert pool.shutdown(wait=True)
    call = Call(pool, [delayed(f)(1)], pre_dispatch=1)
    with pytest.raises(RuntimeError):
        call.run_list()


@pytest.mark.parametrize("kwargs", [{"pre_dispatch": 0},
                                    {"pre_dispatch": 1, "batch_size": -1}])
def test_call_rejects_bad_arguments(kwargs):
    pool = ThreadPool(1)
    try:
        with pytest.raises(ValueError):
            Call(pool, [], **kwargs)
    finally:
        assert pool.shutdown(wait=True)


@pytest.mark.parametrize("bad", [None, (f,), (f, (1,), {}, 0), (3, (), {}),
                                 (f, 1, {})])
def test_pushed_tasks_are_checked(bad):
    # Call.push (joblib_backend's way in) checks its tasks as pulled ones
    # are: a clear TaskError, never a crash of the thread running them.
    from joblib_fast.errors import TaskError

    pool = ThreadPool(1)
    try:
        call = Call(pool, (), pre_dispatch=1, stop_on_error=False)
        with pytest.raises(TaskError, match="task|item"):
            call.push([delayed(f)(1), bad])
        call.push([delayed(f)(2), (f, [3], None)])
        done = call.take_done()
        while not done:
            time.sleep(0.01)
            done = call.take_done()
        [(_, results, error)] = done
        assert error is None and results == [f(2), f(3)]
    finally:
        assert pool.shutdown(wait=True)
