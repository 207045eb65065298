"""``timeout=``: a task running longer raises the builtin ``TimeoutError``
promptly, per task (not per call or per batch), and the instance stays
usable; backends without timeout support warn as joblib does.

The process backend's timeouts (the stuck worker and its own children are
killed) are in ``tests/processes/test_worker_timeouts.py``."""
from __future__ import annotations

import threading
import time

import pytest
from helpers.common import (
    RETURN_AS,
    ExecutorBackend,
    sleep_and_return,
    square,
    wait_no_worker_threads,
    worker_threads,
)

from joblib_fast import Parallel, delayed

# A generous bound for "returned promptly": structure, not speed.
PROMPT_SECONDS = 10.0


def run(return_as, result):
    """Consume ``result`` like a user of ``return_as`` would."""
    return result if return_as == "list" else list(result)


@pytest.mark.parametrize("return_as, stuck_seconds",
                         [pytest.param("list", 2.0, marks=pytest.mark.slow),
                          ("generator", 1.0),
                          ("generator_unordered", 1.0)])
def test_timeout_raises_promptly(return_as, stuck_seconds):
    # The stuck task outlives the call; its thread is abandoned and ends by
    # itself within the leak fixture's grace period.
    stuck_done = threading.Event()

    def task(i):
        if i == 1:
            time.sleep(stuck_seconds)
            stuck_done.set()
        else:
            time.sleep(0.001)
        return i

    start = time.monotonic()
    with pytest.raises(TimeoutError):
        run(return_as, Parallel(n_jobs=2, backend="threading", timeout=0.3,
                                return_as=return_as)(
            delayed(task)(i) for i in range(6)))
    # The caller did not wait for the stuck task to end.
    assert not stuck_done.is_set()
    assert time.monotonic() - start < PROMPT_SECONDS
    # Only the stuck thread may stay (the others are told to exit, without
    # a join), and it ends with its task (loose bound for loaded machines).
    deadline = time.monotonic() + 5.0
    while len(worker_threads()) > 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(worker_threads()) <= 1, worker_threads()
    assert wait_no_worker_threads() == []


def test_timeout_error_is_the_builtin():
    with pytest.raises(TimeoutError) as info:
        Parallel(n_jobs=2, backend="threading", timeout=0.2)(
            delayed(time.sleep)(s) for s in (0.0, 1.0))
    assert type(info.value) is TimeoutError or isinstance(info.value,
                                                          TimeoutError)
    assert isinstance(info.value, OSError)  # builtin TimeoutError is OSError


def test_timeout_is_per_task_not_per_call():
    # 20 tasks of 20 ms on 2 workers take ~0.2 s in all; none is near 1 s.
    out = Parallel(n_jobs=2, backend="threading", timeout=1.0)(
        delayed(sleep_and_return)(i, 0.02) for i in range(20))
    assert out == list(range(20))


def test_timeout_not_triggered_by_fast_tasks():
    out = Parallel(n_jobs=2, backend="threading", timeout=5)(
        delayed(square)(i) for i in range(5000))
    assert out == [i * i for i in range(5000)]


@pytest.mark.slow
@pytest.mark.parametrize("return_as", RETURN_AS)
def test_timeout_in_with_block_then_next_call_works(return_as):
    with Parallel(n_jobs=2, backend="threading", timeout=0.3,
                  return_as=return_as) as p:
        with pytest.raises(TimeoutError):
            run(return_as, p(delayed(time.sleep)(s) for s in (0.0, 1.0, 0.0)))
        out = run(return_as, p(delayed(square)(i) for i in range(20)))
        assert sorted(out) == [i * i for i in range(20)]
    assert wait_no_worker_threads() == []


@pytest.mark.slow
def test_timeout_after_some_generator_results():
    gen = Parallel(n_jobs=2, backend="threading", timeout=0.3,
                   return_as="generator", batch_size=1)(
        delayed(sleep_and_return)(i, 1.5 if i == 3 else 0.0)
        for i in range(6))
    got = []
    with pytest.raises(TimeoutError):
        for value in gen:
            got.append(value)  # noqa: PERF402 (keep those before the error)
    assert got == [0, 1, 2]


def test_timeout_counts_each_task_not_its_batch():
    # A batch of 10 tasks of 50 ms lasts 0.5 s; no task is near timeout=0.4.
    out = Parallel(n_jobs=2, backend="threading", timeout=0.4, batch_size=10)(
        delayed(sleep_and_return)(i, 0.05) for i in range(20))
    assert out == list(range(20))


def test_timeout_with_one_job_warns_as_joblib():
    with pytest.warns(UserWarning) as record:
        Parallel(n_jobs=1, timeout=1)(delayed(square)(i) for i in range(3))
    assert [str(w.message) for w in record] == [
        "The backend class 'SequentialBackend' does not support timeout. "
        "You have set 'timeout=1' in Parallel but the 'timeout' parameter "
        "will not be used."]


def _sleep(seconds):
    import time
    time.sleep(seconds)
    return seconds


@pytest.mark.parametrize("backend", ["threading", "loky"])
def test_timeout_is_both_timeout_errors(backend):
    import multiprocessing
    with pytest.raises(TimeoutError) as info:
        Parallel(n_jobs=2, backend=backend, timeout=0.05)(
            delayed(_sleep)(s) for s in (0.0, 1.0))
    assert isinstance(info.value, multiprocessing.TimeoutError)


class TimeoutBackend(ExecutorBackend):
    supports_timeout = True


def test_timeout_for_a_backend_that_supports_it():
    backend = TimeoutBackend()
    with pytest.raises(TimeoutError):
        Parallel(n_jobs=2, backend=backend, timeout=0.1, batch_size=1)(
            delayed(time.sleep)(d) for d in (0.0, 0.6))
    assert ("abort_everything", False) in backend.events


def test_timeout_warns_for_a_backend_without_support():
    class NoTimeout(ExecutorBackend):
        supports_timeout = False

    with pytest.warns(UserWarning, match="timeout"):
        out = Parallel(n_jobs=2, backend=NoTimeout(), timeout=5)(
            delayed(square)(i) for i in range(3))
    assert out == [0, 1, 4]
