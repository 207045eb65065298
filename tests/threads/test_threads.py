"""The threading backend: real concurrency, pool reuse, thread cleanup,
nesting."""
from __future__ import annotations

import threading
import time

import pytest
from helpers.common import (
    GRACE_SECONDS,
    RETURN_AS,
    WORKER_THREAD_PREFIX,
    fail_on,
    in_user_threads,
    shared_threads,
    square,
    wait_no_worker_threads,
    worker_threads,
)

from joblib_fast import Parallel, _kernels, _threads, delayed, parallel_config
from joblib_fast._core import in_worker_thread

BARRIER_SECONDS = 10.0


def whoami(_=None):
    return threading.current_thread()


@pytest.mark.parametrize("return_as", RETURN_AS)
@pytest.mark.parametrize("batch_size", (1, "auto"))
@pytest.mark.parametrize("n_tasks", (2, 6))
def test_two_tasks_really_run_at_once(n_tasks, batch_size, return_as):
    # Each task waits for one other task at a barrier: with fewer than two
    # tasks running at the same time the barrier times out and breaks.
    # Tasks last 50 ms, far above the threading backend's target batch
    # duration, so the auto batch size stays 1 (two tasks in one batch
    # could never meet).
    barrier = threading.Barrier(2, timeout=BARRIER_SECONDS)

    def task(i):
        time.sleep(0.05)
        barrier.wait()
        return i

    out = Parallel(n_jobs=2, backend="threading", batch_size=batch_size,
                   return_as=return_as)(delayed(task)(i)
                                        for i in range(n_tasks))
    assert sorted(out) == list(range(n_tasks))


def test_three_workers_run_at_once():
    barrier = threading.Barrier(3, timeout=BARRIER_SECONDS)
    out = Parallel(n_jobs=3, backend="threading", batch_size=1)(
        delayed(barrier.wait)() for _ in range(3))
    assert sorted(out) == [0, 1, 2]  # Barrier.wait returns distinct indices


@pytest.mark.parametrize("return_as", RETURN_AS)
@pytest.mark.parametrize("n_jobs", (1, 2, -1))
def test_nogil_kernel_results(n_jobs, return_as):
    sizes = [0, 1, 10, 1000, 20_000, 5, 50_000] * 5
    expected = [_kernels.burn(n) for n in sizes]
    out = Parallel(n_jobs=n_jobs, backend="threading", return_as=return_as)(
        delayed(_kernels.burn)(n) for n in sizes)
    out = list(out)
    if return_as == "generator_unordered":
        assert sorted(out) == sorted(expected)
    else:
        assert out == expected


def test_kernels_with_and_without_gil_agree():
    for n in (0, 1, 7, 1234):
        assert _kernels.burn(n) == _kernels.burn_with_gil(n)
    assert _kernels.calibrate(0.0001) >= 1


def test_nogil_kernels_overlap_with_barrier():
    # A GIL-releasing kernel in each of two threads, then a barrier: both
    # workers are busy at once.
    barrier = threading.Barrier(2, timeout=BARRIER_SECONDS)

    def task(n):
        value = _kernels.burn(n)
        barrier.wait()
        return value

    out = Parallel(n_jobs=2, backend="threading", batch_size=1)(
        delayed(task)(n) for n in (10_000, 20_000, 30_000, 40_000))
    assert out == [_kernels.burn(n) for n in (10_000, 20_000, 30_000, 40_000)]


def test_tasks_run_in_named_daemon_worker_threads():
    # The caller may run some batches itself (test_caller_runs_batches.py); the
    # others run in the pool's threads.
    main = threading.current_thread()
    threads = [t for t in Parallel(n_jobs=2, backend="threading",
                                   batch_size=1)(
        delayed(whoami)(i) for i in range(20)) if t is not main]
    assert threads
    names = {t.name for t in threads}
    assert names <= {f"{WORKER_THREAD_PREFIX}-{i}" for i in range(2)}, names
    assert all(t.daemon for t in threads)


def test_in_worker_thread_flag():
    assert not in_worker_thread()
    flags = Parallel(n_jobs=2, backend="threading")(
        delayed(in_worker_thread)() for _ in range(10))
    assert flags == [True] * 10
    assert Parallel(n_jobs=2, backend="sequential")(
        delayed(in_worker_thread)() for _ in range(3)) == [False] * 3


@pytest.mark.parametrize("return_as", RETURN_AS)
def test_context_manager_reuses_worker_threads(return_as):
    # Thread objects are kept (not just idents, which the OS may reuse for
    # a new thread once an old one has ended).  The threads are the shared
    # pool's (the threading backend and parallel_for share it): they stay
    # alive between calls and after the block.
    calls = []
    with Parallel(n_jobs=2, backend="threading", batch_size=1,
                  return_as=return_as) as p:
        for _ in range(4):
            out = list(p(delayed(whoami)(i) for i in range(30)))
            assert len(out) == 30
            # Not counting the batches the caller ran itself.
            out = [t for t in out if t is not threading.current_thread()]
            calls.append(out)
            # Between calls, the threads stay alive, waiting for work.
            assert set(out) <= set(shared_threads())
        idents = [{t.ident for t in out} for out in calls]
    all_threads = set().union(*map(set, calls))
    assert len(all_threads) <= 2, all_threads
    assert len(set().union(*idents)) <= 2, idents
    assert worker_threads() == []


def test_calls_without_a_with_block_reuse_the_shared_threads():
    # Before the shared pool, each call started and joined its threads;
    # now consecutive calls run on the same process-wide threads.
    main = {threading.current_thread()}
    first = set(Parallel(n_jobs=2, backend="threading")(
        delayed(whoami)(i) for i in range(10))) - main
    second = set(Parallel(n_jobs=2, backend="threading")(
        delayed(whoami)(i) for i in range(10))) - main
    assert first and second
    assert first | second <= set(shared_threads())
    assert len(first | second) <= 2
    assert all(t.is_alive() for t in first | second)


def test_shared_pool_grows_for_a_call_and_shrinks_back():
    # A call with more workers than CPUs gets them all at once (a barrier
    # of 3 passes), and the pool goes back to its base size afterwards.
    base = _threads.shared_workers().base
    n = base + 1
    barrier = threading.Barrier(n, timeout=BARRIER_SECONDS)

    def task(i):
        barrier.wait()
        return whoami(i)

    out = Parallel(n_jobs=n, backend="threading", batch_size=1)(
        delayed(task)(i) for i in range(n))
    assert len(set(out)) == n
    deadline = time.monotonic() + GRACE_SECONDS
    while len(shared_threads()) > base and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(shared_threads()) <= base


# ------------------------------------------------------------ cleanup
# The pool is joined when the call (or the with-block) ends: no waiting.


@pytest.mark.parametrize("return_as", RETURN_AS)
def test_no_thread_left_after_call(return_as):
    out = Parallel(n_jobs=2, backend="threading", return_as=return_as)(
        delayed(square)(i) for i in range(100))
    assert len(list(out)) == 100
    assert worker_threads() == []


def test_no_thread_left_after_with_block():
    with Parallel(n_jobs=3, backend="threading") as p:
        p(delayed(square)(i) for i in range(10))
        p(delayed(square)(i) for i in range(10))
        # Three threads reserved for the block, from the shared pool.
        assert len(shared_threads()) >= 3
    assert worker_threads() == []


def test_no_thread_left_after_empty_with_block():
    with Parallel(n_jobs=2, backend="threading"):
        pass
    assert worker_threads() == []


def test_no_thread_left_after_with_block_exits_on_exception():
    with pytest.raises(KeyError), Parallel(n_jobs=2, backend="threading") as p:
        p(delayed(square)(i) for i in range(10))
        raise KeyError("user code failed")
    assert worker_threads() == []


@pytest.mark.parametrize("return_as", RETURN_AS)
def test_no_thread_left_after_task_exception(return_as):
    with pytest.raises(ValueError, match="task 13 failed"):
        list(Parallel(n_jobs=2, backend="threading", return_as=return_as)(
            delayed(fail_on)(i, 13) for i in range(50)))
    assert worker_threads() == []


@pytest.mark.parametrize("return_as", RETURN_AS)
def test_no_thread_left_after_task_exception_in_with_block(return_as):
    with Parallel(n_jobs=2, backend="threading", return_as=return_as) as p:  # noqa: SIM117
        with pytest.raises(ValueError, match="task 3 failed"):
            list(p(delayed(fail_on)(i, 3) for i in range(50)))
    assert worker_threads() == []


@pytest.mark.parametrize("return_as", ("generator", "generator_unordered"))
def test_no_thread_left_after_generator_closed_early(return_as):
    gen = Parallel(n_jobs=2, backend="threading", return_as=return_as)(
        delayed(square)(i) for i in range(1000))
    next(gen)
    gen.close()
    # Closing returns at once; the threads end with their task.
    assert wait_no_worker_threads() == []


@pytest.mark.parametrize("return_as", ("generator", "generator_unordered"))
def test_no_thread_left_after_generator_dropped_unconsumed(return_as):
    gen = Parallel(n_jobs=2, backend="threading", return_as=return_as)(
        delayed(square)(i) for i in range(1000))
    del gen
    # Closing returns at once; the threads end with their task.
    assert wait_no_worker_threads() == []


def test_generator_closed_early_in_with_block_then_reused():
    with Parallel(n_jobs=2, backend="threading",
                  return_as="generator") as p:
        gen = p(delayed(square)(i) for i in range(1000))
        assert next(gen) == 0
        gen.close()
        assert list(p(delayed(square)(i) for i in range(5))) == \
            [0, 1, 4, 9, 16]
    assert worker_threads() == []


# ------------------------------------------------------------ nesting


def inner_call(k, backend=None):
    outer_thread = threading.current_thread()
    kwargs = {} if backend is None else {"backend": backend}
    inner = Parallel(n_jobs=2, **kwargs)(
        delayed(lambda j: (j * k, threading.current_thread()))(j)
        for j in range(5))
    values = [v for v, _ in inner]
    same_thread = all(t is outer_thread for _, t in inner)
    return values, same_thread


@pytest.mark.parametrize("return_as", RETURN_AS)
def test_nested_parallel_in_thread_task_runs_in_place(return_as):
    out = Parallel(n_jobs=2, backend="threading", return_as=return_as)(
        delayed(inner_call)(k) for k in range(6))
    out = list(out)
    assert sorted(values for values, _ in out) == \
        sorted([j * k for j in range(5)] for k in range(6))
    # The nested call ran sequentially, in the outer worker thread.
    assert all(same for _, same in out)
    assert worker_threads() == []


def test_nested_parallel_creates_no_extra_worker_threads():
    seen = []

    def task(k):
        seen.append(len(worker_threads()))
        return sum(Parallel(n_jobs=2)(delayed(square)(j) for j in range(4)))

    out = Parallel(n_jobs=2, backend="threading")(
        delayed(task)(k) for k in range(6))
    assert out == [14] * 6
    assert max(seen) <= 2, seen


@pytest.mark.parametrize("inner_backend", ("threading", "sequential"))
def test_nested_parallel_with_explicit_backend(inner_backend):
    out = Parallel(n_jobs=2, backend="threading")(
        delayed(inner_call)(k, inner_backend) for k in range(4))
    assert [values for values, _ in out] == \
        [[j * k for j in range(5)] for k in range(4)]
    assert worker_threads() == []


@pytest.mark.parametrize("return_as", RETURN_AS)
def test_concurrent_calls_from_user_threads_do_not_mix(return_as):
    # Four user threads each run their own Parallel at the same time; each
    # gets exactly its own results.
    results = {}

    def user(k):
        out = Parallel(n_jobs=2, backend="threading", return_as=return_as)(
            delayed(lambda i: (k, i))(i) for i in range(300))
        results[k] = sorted(out)

    errors, _ = in_user_threads(user, 4, 60)
    assert not errors, errors
    assert results == {k: [(k, i) for i in range(300)] for k in range(4)}
    assert worker_threads() == []


def test_many_calls_opening_and_closing_at_once_finish():
    # Leases open and close from many threads at once: the shared pool's
    # kept-thread count follows the reservations in order, and a lease
    # opening never starts threads that exit at once (a CI run once hung
    # here, one thread starting threads forever while holding the pool's
    # lock).
    def user(k):
        for _ in range(15):
            out = Parallel(n_jobs=2, backend="threading")(
                delayed(abs)(-i) for i in range(60))
            assert out == list(range(60))

    errors, alive = in_user_threads(user, 8, 60)
    assert not alive, "a call never ended"
    assert not errors, errors
    assert len(shared_threads()) <= 16


def test_concurrent_calls_share_one_context_managed_instance_safely():
    # Two user threads calling the same managed instance: one runs, the
    # other gets a clear RuntimeError or waits; never mixed results.
    start = threading.Barrier(2, timeout=BARRIER_SECONDS)
    outcomes = []

    with Parallel(n_jobs=2, backend="threading") as p:
        def user(k):
            start.wait()
            try:
                out = p(delayed(lambda i: (k, time.sleep(0.001) or i))(i)
                        for i in range(100))
                outcomes.append(("ok", k, out))
            except RuntimeError as exc:
                outcomes.append(("refused", k, str(exc)))

        users = [threading.Thread(target=user, args=(k,)) for k in range(2)]
        for t in users:
            t.start()
        for t in users:
            t.join(60)
    assert len(outcomes) == 2
    for status, k, out in outcomes:
        if status == "ok":
            assert out == [(k, i) for i in range(100)]
    assert any(status == "ok" for status, _, _ in outcomes)
    assert worker_threads() == []


def test_n_jobs_from_parallel_config_gives_real_concurrency():
    barrier = threading.Barrier(2, timeout=BARRIER_SECONDS)

    def task(i):
        time.sleep(0.05)
        barrier.wait()
        return i

    with parallel_config(n_jobs=2):
        out = Parallel(backend="threading")(delayed(task)(i) for i in range(4))
    assert out == [0, 1, 2, 3]


@pytest.mark.parametrize("n_jobs", (None, 1))
def test_one_job_runs_in_the_calling_thread(n_jobs):
    threads = Parallel(n_jobs=n_jobs, backend="threading")(
        delayed(whoami)(i) for i in range(5))
    assert all(t is threading.current_thread() for t in threads)
    assert worker_threads() == []
