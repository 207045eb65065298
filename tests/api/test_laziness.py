"""The input is consumed lazily, in the calling thread; generator outputs
hand out results as soon as they are ready."""
from __future__ import annotations

import threading

import pytest
from helpers.common import BACKENDS, RETURN_AS, square

from joblib_fast import Parallel, delayed

GENERATORS = ("generator", "generator_unordered")
N_INPUT = 10_000
# How long a blocked task waits for the test before giving up (a failure).
BLOCK_SECONDS = 10.0


class CountingInput:
    """A generator of tasks that records how, and from where, it is pulled."""

    def __init__(self, func, n):
        self.func = func
        self.n = n
        self.pulled = 0
        self.thread_ids = set()

    def __iter__(self):
        for i in range(self.n):
            self.thread_ids.add(threading.get_ident())
            self.pulled += 1
            yield delayed(self.func)(i)


@pytest.mark.slow
@pytest.mark.parametrize("batch_size", (1, "auto"))
@pytest.mark.parametrize("return_as", GENERATORS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_first_result_needs_a_bounded_prefix(backend, return_as, batch_size):
    n = 10 * N_INPUT
    source = CountingInput(square, n)
    gen = Parallel(n_jobs=2, backend=backend, return_as=return_as,
                   batch_size=batch_size)(iter(source))
    first = next(gen)
    pulled_at_first = source.pulled
    rest = list(gen)
    assert sorted([first] + rest) == [i * i for i in range(n)]
    # pre_dispatch="2*n_jobs" batches in flight, each at most twice the
    # last: a few dozen tasks on a quiet machine.  Under load the worker of
    # the first batch can be off its CPU while the other finishes batch
    # after batch, each one freeing a place for a batch twice as big (1538
    # tasks once, with two busy processes beside the test); the first
    # result still needs only a part of the input.
    assert 1 <= pulled_at_first <= n // 2, pulled_at_first


@pytest.mark.parametrize("pre_dispatch", (1, 2, 3, "2*n_jobs"))
@pytest.mark.parametrize("return_as", RETURN_AS)
def test_pre_dispatch_bounds_tasks_in_flight(pre_dispatch, return_as):
    # batch_size=1: at most `pre_dispatch` tasks pulled and not finished.
    n_jobs = 2
    bound = pre_dispatch if isinstance(pre_dispatch, int) else 2 * n_jobs
    lock = threading.Lock()
    state = {"done": 0, "pulled": 0, "max_outstanding": 0}

    def task(i):
        with lock:
            state["done"] += 1
        return i

    def source():
        for i in range(300):
            with lock:
                state["pulled"] += 1
                outstanding = state["pulled"] - state["done"]
                state["max_outstanding"] = max(state["max_outstanding"],
                                               outstanding)
            yield delayed(task)(i)

    out = Parallel(n_jobs=n_jobs, backend="threading", batch_size=1,
                   pre_dispatch=pre_dispatch, return_as=return_as)(source())
    assert sorted(out) == list(range(300))
    assert 1 <= state["max_outstanding"] <= bound, state


def test_pre_dispatch_all_consumes_whole_input_up_front():
    release = threading.Event()
    source = CountingInput(lambda i: release.wait(BLOCK_SECONDS) and i, 50)
    gen = Parallel(n_jobs=2, backend="threading", return_as="generator",
                   pre_dispatch="all", batch_size=1)(iter(source))
    try:
        # Nothing can finish yet, and still everything has been pulled.
        assert source.pulled == 50
    finally:
        release.set()
    assert list(gen) == list(range(50))


@pytest.mark.parametrize("return_as", RETURN_AS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_input_pulled_from_calling_thread_only(backend, return_as):
    source = CountingInput(square, 2000)
    out = Parallel(n_jobs=2, backend=backend, return_as=return_as)(
        iter(source))
    assert sorted(out) == [i * i for i in range(2000)]
    assert source.pulled == 2000
    assert source.thread_ids == {threading.get_ident()}


@pytest.mark.parametrize("return_as", RETURN_AS)
def test_input_pulled_from_calling_thread_when_not_main(return_as):
    # The caller is a user thread; tasks are slow enough that workers run
    # while the input is still being pulled.
    source = CountingInput(square, 500)
    box = {}

    def caller():
        box["ident"] = threading.get_ident()
        try:
            out = Parallel(n_jobs=2, backend="threading",
                           return_as=return_as)(iter(source))
            box["out"] = sorted(out)
        except BaseException as exc:  # noqa: BLE001 (asserted below)
            box["error"] = exc

    t = threading.Thread(target=caller, name="user-caller")
    t.start()
    t.join(60)
    assert not t.is_alive()
    assert "error" not in box, box.get("error")
    assert box["out"] == [i * i for i in range(500)]
    assert source.thread_ids == {box["ident"]}


@pytest.mark.parametrize("batch_size", (1, "auto"))
@pytest.mark.parametrize("return_as", GENERATORS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_generator_yields_before_later_tasks_finish(backend, return_as,
                                                   batch_size):
    # Tasks i > 0 block until the test has received result 0: a generator
    # that waited for every task would make them time out.
    release = threading.Event()

    def task(i):
        if i == 0:
            return ("ok", 0)
        return ("ok" if release.wait(BLOCK_SECONDS) else "blocked", i)

    gen = Parallel(n_jobs=2, backend=backend, return_as=return_as,
                   batch_size=batch_size)(delayed(task)(i) for i in range(8))
    try:
        first = next(gen)
    finally:
        release.set()
    assert first == ("ok", 0)
    rest = list(gen)
    got = [first] + rest
    assert sorted(got) == [("ok", i) for i in range(8)]
    if return_as == "generator":
        assert got == [("ok", i) for i in range(8)]


def test_unordered_yields_fast_results_before_slow_earlier_ones():
    # Task 0 blocks until the test has received every other result.
    release = threading.Event()

    def task(i):
        if i == 0:
            return ("ok" if release.wait(BLOCK_SECONDS) else "blocked", 0)
        return ("ok", i)

    gen = Parallel(n_jobs=2, backend="threading", batch_size=1,
                   return_as="generator_unordered")(
        delayed(task)(i) for i in range(6))
    got = []
    try:
        for _ in range(5):
            got.append(next(gen))
    finally:
        release.set()
    assert sorted(got) == [("ok", i) for i in range(1, 6)]
    assert list(gen) == [("ok", 0)]


@pytest.mark.parametrize("return_as", GENERATORS)
def test_sequential_generator_runs_tasks_on_demand(return_as):
    ran = []

    def task(i):
        ran.append(i)
        return i

    gen = Parallel(n_jobs=1, backend="sequential", return_as=return_as)(
        delayed(task)(i) for i in range(5))
    assert ran == []
    assert next(gen) == 0
    assert ran == [0]
    assert next(gen) == 1
    assert ran == [0, 1]
    assert list(gen) == [2, 3, 4]
