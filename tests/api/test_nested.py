"""Nested Parallel calls (2 and 3 levels) and concurrent calls from several
user threads: right results, the documented nested backends, no deadlock
and no thread explosion."""
import os
import threading

import pytest
from helpers.common import ExecutorBackend, square, worker_threads

from joblib_fast import (
    Parallel,
    delayed,
    parallel_config,
)
from joblib_fast.config import get_active_backend

# The process backend is among the kinds tested here.
pytestmark = pytest.mark.usefixtures("process_helpers")


def where():
    backend, _n_jobs = get_active_backend()
    return type(backend).__name__, backend.nesting_level


def level2(i, n_jobs=2, backend=None):
    inner = Parallel(n_jobs=n_jobs, backend=backend)
    return where(), inner(delayed(square)(i + k) for k in range(3))


def level3(i, n_jobs=2):
    def mid(j):
        out = Parallel(n_jobs=n_jobs)(
            delayed(leaf)(j, k) for k in range(2))
        return where(), out
    return where(), Parallel(n_jobs=n_jobs)(
        delayed(mid)(i * 10 + j) for j in range(2))


def leaf(j, k):
    return where(), j * 100 + k, len(worker_threads())


# ------------------------------------------------------------- 2 levels


def test_threads_then_sequential():
    out = Parallel(n_jobs=2, backend="threading")(
        delayed(level2)(i) for i in range(4))
    for i, (place, values) in enumerate(out):
        assert values == [(i + k) ** 2 for k in range(3)]
        # Inside a thread worker the default is to run in place.
        assert place == ("SequentialBackend", 1)


def test_explicit_threads_inside_threads_do_not_deadlock():
    out = Parallel(n_jobs=2, backend="threading")(
        delayed(level2)(i, 2, "threading") for i in range(4))
    assert [values for _, values in out] == [
        [(i + k) ** 2 for k in range(3)] for i in range(4)]


def test_custom_backend_nests_threads_then_sequential():
    # The base get_nested_backend: threads first, then sequential (joblib).
    out = Parallel(n_jobs=2, backend=ExecutorBackend())(
        delayed(level3)(i) for i in range(2))
    for i, (top, mids) in enumerate(out):
        assert top == ("ThreadingBackend", 1)
        for j, (mid, leaves) in enumerate(mids):
            assert mid == ("SequentialBackend", 2)
            assert [value for _, value, _ in leaves] == [
                (i * 10 + j) * 100 + k for k in range(2)]


def test_sequential_outer_keeps_the_active_configuration():
    with parallel_config(backend="threading", n_jobs=2):
        out = Parallel(n_jobs=1)(delayed(where)() for _ in range(2))
    assert out == [("ThreadingBackend", 0)] * 2


def test_worker_threads_do_not_see_the_callers_configuration():
    with parallel_config(backend="threading", n_jobs=2, verbose=0):
        out = Parallel()(delayed(get_active_backend)() for _ in range(2))
    for backend, n_jobs in out:
        assert type(backend).__name__ == "SequentialBackend"
        assert n_jobs is None


# ------------------------------------------------------------- 3 levels


@pytest.mark.slow
@pytest.mark.parametrize("outer, max_threads", [
    ("threading", 2),  # nested calls in thread workers run in place
    ("custom", 4),     # threads at the first nested level, then in place
    ("loky", 2),       # in each worker process: threads, then in place
])
def test_three_levels(outer, max_threads):
    backend = ExecutorBackend() if outer == "custom" else outer
    # Threads left by earlier tests (abandoned on purpose) do not count.
    before = len(worker_threads()) if outer != "loky" else 0
    out = Parallel(n_jobs=2, backend=backend)(
        delayed(level3)(i) for i in range(3))
    for i, (_top, mids) in enumerate(out):
        for j, (_mid, leaves) in enumerate(mids):
            assert [value for _, value, _ in leaves] == [
                (i * 10 + j) * 100 + k for k in range(2)]
            for place, _, n_threads in leaves:
                assert place[0] == "SequentialBackend"
                # Bounded by the outer pools: no thread explosion.
                assert n_threads - before <= max_threads


def test_three_levels_with_require_sharedmem_inside():
    shared = []

    def inner(i):
        return Parallel(n_jobs=2, require="sharedmem")(
            delayed(shared.append)(i * 10 + k) for k in range(3))

    Parallel(n_jobs=2, backend="threading")(
        delayed(lambda i: Parallel(n_jobs=2)(
            delayed(inner)(i * 10 + j) for j in range(2)))(i)
        for i in range(2))
    assert sorted(shared) == sorted(
        (i * 10 + j) * 10 + k
        for i in range(2) for j in range(2) for k in range(3))


# ------------------------------------------------------ inner threads cap


def read_env(name):
    return os.environ.get(name)


@pytest.fixture
def processes():
    return pytest.importorskip("joblib_fast.backends.processes")


def test_inner_max_num_threads_caps_process_workers(processes):
    with parallel_config(backend="loky", inner_max_num_threads=2):
        out = Parallel(n_jobs=2)(
            delayed(read_env)("OMP_NUM_THREADS") for _ in range(4))
    assert out == ["2"] * 4


def test_process_workers_default_cap(processes, monkeypatch):
    from joblib_fast import cpu_count
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    out = Parallel(n_jobs=2, backend="loky")(
        delayed(read_env)("OMP_NUM_THREADS") for _ in range(2))
    assert out == [str(max(cpu_count() // 2, 1))] * 2


def test_process_workers_nest_threads(processes):
    out = Parallel(n_jobs=2, backend="loky")(
        delayed(where)() for _ in range(2))
    assert out == [("ThreadingBackend", 1)] * 2


# ----------------------------------------------- concurrent user threads


def run_in_threads(n_threads, target):
    barrier = threading.Barrier(n_threads)
    results = [None] * n_threads
    errors = []

    def body(k):
        try:
            barrier.wait(10)
            results[k] = target(k)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(k,))
               for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    return results


def offset(x, k):
    return x + 1000 * k


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["threading", "loky"])
@pytest.mark.parametrize("return_as", ["list", "generator"])
def test_two_user_threads_run_parallel_at_once(backend, return_as):
    # joblib issue 1743: concurrent calls from two threads must not share
    # (and shut down) each other's workers.
    def target(k):
        outs = []
        for _ in range(10):
            out = Parallel(n_jobs=2, backend=backend, return_as=return_as,
                           batch_size=1)(
                delayed(offset)(i, k) for i in range(50))
            outs.append(list(out))
        return outs

    results = run_in_threads(2, target)
    for k, outs in enumerate(results):
        for out in outs:
            assert out == [i + 1000 * k for i in range(50)]


def test_two_user_threads_with_their_own_configuration():
    def target(k):
        backend = "threading" if k == 0 else ExecutorBackend()
        with parallel_config(backend=backend, n_jobs=2):
            outs = [Parallel()(delayed(offset)(i, k) for i in range(40))
                    for _ in range(5)]
            return outs, type(get_active_backend()[0]).__name__

    results = run_in_threads(2, target)
    assert results[0][1] == "ThreadingBackend"
    assert results[1][1] == "ExecutorBackend"
    for k, (outs, _) in enumerate(results):
        for out in outs:
            assert out == [i + 1000 * k for i in range(40)]


def test_concurrent_nested_calls():
    def target(k):
        return Parallel(n_jobs=2, backend="threading")(
            delayed(level3)(i) for i in range(2))

    first, second = run_in_threads(2, target)
    assert [[v for _, v, _ in leaves] for _, mids in first
            for _, leaves in mids] == \
        [[v for _, v, _ in leaves] for _, mids in second
         for _, leaves in mids]
