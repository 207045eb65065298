"""Tasks that wait for each other on the threading backend.

Whatever joblib's threading backend (one task per thread at a time, n_jobs
threads) runs to completion must complete here too, although tasks travel
in batches: a task that waits for a partner queued behind it in its own
batch must not wait for ever while another thread could run the partner.
Every wait is bounded (a barrier or queue timeout, then pytest-timeout), so
a regression fails instead of hanging the run.
"""
from __future__ import annotations

import queue
import threading

import pytest
from helpers.common import RETURN_AS, in_user_threads

from joblib_fast import Parallel, delayed, parallel_config

WAIT_SECONDS = 20.0

pytestmark = pytest.mark.timeout(120)


def meet_at(barrier):
    def task(i):
        barrier.wait()
        return i
    return task


def barrier_tasks(n_jobs, n_tasks):
    # Each group of n_jobs tasks meets at the barrier: they must all run
    # at once, as they do with n_jobs threads each running one task.
    barrier = threading.Barrier(n_jobs, timeout=WAIT_SECONDS)
    task = meet_at(barrier)
    return [delayed(task)(i) for i in range(n_tasks)]


def collect(out, return_as):
    out = list(out)
    return sorted(out) if return_as == "generator_unordered" else out


def task_counts(n_jobs):
    # 4 * n_jobs, and 60 rounded down to whole barrier rounds (the
    # remainder of an uneven count would wait for ever with joblib too).
    return sorted({4 * n_jobs, 60 - 60 % n_jobs})


GRID = [(n_jobs, n_tasks) for n_jobs in (2, 3, 5, 8, 16)
        for n_tasks in task_counts(n_jobs)]


@pytest.mark.parametrize("return_as", RETURN_AS)
@pytest.mark.parametrize("n_jobs,n_tasks", GRID)
def test_barrier_groups_complete(n_jobs, n_tasks, return_as):
    tasks = barrier_tasks(n_jobs, n_tasks)
    out = Parallel(n_jobs=n_jobs, backend="threading",
                   return_as=return_as)(iter(tasks))
    assert collect(out, return_as) == list(range(n_tasks))


@pytest.mark.parametrize("return_as", RETURN_AS)
@pytest.mark.parametrize("n_jobs,n_tasks", [(2, 60), (3, 12), (8, 32)])
def test_barrier_groups_complete_from_a_user_thread(n_jobs, n_tasks,
                                                    return_as):
    def body(_):
        tasks = barrier_tasks(n_jobs, n_tasks)
        out = Parallel(n_jobs=n_jobs, backend="threading",
                       return_as=return_as)(iter(tasks))
        assert collect(out, return_as) == list(range(n_tasks))
    errors, alive = in_user_threads(body, 1, 60)
    assert not errors and not alive


def producer_consumer_tasks(n_tasks):
    # Even tasks take an item that the odd task after them puts: with one
    # task per thread this completes on any n_jobs >= 2.
    q = queue.Queue()

    def task(i):
        if i % 2 == 0:
            return q.get(timeout=WAIT_SECONDS)
        q.put(i)
        return i
    return [delayed(task)(i) for i in range(n_tasks)]


@pytest.mark.parametrize("return_as", RETURN_AS)
@pytest.mark.parametrize("n_jobs", (2, 3, 8))
def test_producers_and_consumers_complete(n_jobs, return_as):
    out = Parallel(n_jobs=n_jobs, backend="threading",
                   return_as=return_as)(producer_consumer_tasks(60))
    assert sorted(collect(out, return_as)) == sorted(
        [i + 1 for i in range(0, 60, 2)] + list(range(1, 60, 2)))


@pytest.mark.parametrize("n_jobs", (2, 5))
def test_waiting_tasks_in_a_reused_pool(n_jobs):
    with Parallel(n_jobs=n_jobs, backend="threading") as parallel:
        for _ in range(3):
            assert parallel(iter(barrier_tasks(n_jobs, 4 * n_jobs))) == \
                list(range(4 * n_jobs))
            assert len(parallel(producer_consumer_tasks(40))) == 40


def test_waiting_tasks_through_parallel_config():
    with parallel_config(backend="threading", n_jobs=3):
        assert Parallel()(iter(barrier_tasks(3, 30))) == list(range(30))


@pytest.mark.parametrize("n_jobs", (2, 4))
def test_one_explicit_batch_of_waiting_tasks(n_jobs):
    # All tasks in one batch (batch_size): joblib's batches would run them
    # one after the other and deadlock; here idle threads take the
    # unstarted tasks of the batch whose task waits.
    n_tasks = 4 * n_jobs
    out = Parallel(n_jobs=n_jobs, backend="threading",
                   batch_size=n_tasks)(iter(barrier_tasks(n_jobs, n_tasks)))
    assert out == list(range(n_tasks))


def test_waiting_tasks_after_short_ones_while_the_caller_runs_batches():
    # Thousands of tiny tasks first: the caller runs batches itself (a
    # list output on two threads) when the pairs that must meet arrive.
    barrier = threading.Barrier(2, timeout=WAIT_SECONDS)

    def task(i):
        if i >= 20_000:
            barrier.wait()
        return i
    n = 20_000 + 200
    out = Parallel(n_jobs=2, backend="threading")(
        delayed(task)(i) for i in range(n))
    assert out == list(range(n))


def test_tasks_keep_their_batches():
    # Stealing is for tasks that wait: short tasks still travel in batches
    # of many (the structure the dispatch speed rests on).
    from joblib_fast._core import Call, ThreadPool
    pool = ThreadPool(2, shared=True)
    try:
        call = Call(pool, (delayed(abs)(-i) for i in range(20_000)),
                    pre_dispatch=4, n_workers=2)
        assert call.run_list() == list(range(20_000))
        assert call.n_batches < 2_000
    finally:
        pool.shutdown()


def test_errors_in_stolen_tasks_are_raised():
    barrier = threading.Barrier(2, timeout=WAIT_SECONDS)

    def task(i):
        barrier.wait()
        if i == 7:
            raise KeyError("seven")
        return i
    with pytest.raises(KeyError, match="seven"):
        Parallel(n_jobs=2, backend="threading", batch_size=8)(
            delayed(task)(i) for i in range(8))


class Concurrency:
    """The most tasks seen running at once."""

    def __init__(self):
        self.lock = threading.Lock()
        self.now = 0
        self.most = 0

    def __enter__(self):
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)

    def __exit__(self, *exc):
        with self.lock:
            self.now -= 1


def spin_python(seconds):
    import time
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def spin_nogil(seconds):
    from joblib_fast import _kernels
    _kernels.burn(_kernels.calibrate(seconds))


@pytest.mark.slow
@pytest.mark.parametrize("spin", (spin_python, spin_nogil))
@pytest.mark.parametrize("return_as", ("list", "generator"))
def test_tasks_that_compute_never_get_more_threads_than_n_jobs(spin,
                                                               return_as):
    # Long tasks that compute (holding the GIL, or not) start no task for
    # far longer than a rescue waits, but they use a CPU: no thread beyond
    # n_jobs may join them.
    seen = Concurrency()

    def task(i):
        with seen:
            spin(0.15)
        return i
    out = Parallel(n_jobs=2, backend="threading", return_as=return_as)(
        delayed(task)(i) for i in range(8))
    assert list(out) == list(range(8))
    assert seen.most <= 2


def test_waiting_tasks_get_a_thread_beyond_n_jobs_only_while_all_wait():
    # Two threads, both holding a task that waits for a task queued
    # behind the other: one more thread runs it, as joblib's one task per
    # thread would have.
    seen = Concurrency()
    q = queue.Queue()

    def task(i):
        with seen:
            if i % 2 == 0:
                return q.get(timeout=WAIT_SECONDS)
            q.put(i)
            return i
    with Parallel(n_jobs=2, backend="threading") as parallel:
        for _ in range(5):
            assert len(parallel(delayed(task)(i) for i in range(40))) == 40
    assert seen.most <= 3
