"""``Parallel.last_call_stats``: how the last call ran (tasks, batches,
tasks the calling thread ran itself, times it tried and chose to run
alone), set when the call ends, whatever the backend and the output."""
from __future__ import annotations

import threading

import pytest
from helpers.common import square

from joblib_fast import CallStats, Parallel, delayed

N = 2000


def ident(i):
    return threading.get_ident()


def test_none_before_any_call_and_for_calls_run_in_the_caller():
    parallel = Parallel(n_jobs=2, backend="threading")
    assert parallel.last_call_stats is None
    sequential = Parallel(n_jobs=1)
    assert sequential(delayed(square)(i) for i in range(5)) == \
        [i * i for i in range(5)]
    assert sequential.last_call_stats is None


def test_threading_list_counts_the_callers_tasks():
    parallel = Parallel(n_jobs=2, backend="threading")
    idents = parallel(delayed(ident)(i) for i in range(N))
    stats = parallel.last_call_stats
    assert isinstance(stats, CallStats)
    assert stats.n_tasks == N
    assert 1 <= stats.n_batches <= N
    me = threading.get_ident()
    assert stats.caller_tasks == sum(i == me for i in idents)


@pytest.mark.parametrize("return_as", ["generator", "generator_unordered"])
def test_generator_output_sets_them_when_consumed(return_as):
    parallel = Parallel(n_jobs=2, backend="threading", return_as=return_as)
    out = parallel(delayed(square)(i) for i in range(N))
    assert parallel.last_call_stats is None     # not ended yet
    assert sorted(out) == sorted(i * i for i in range(N))
    stats = parallel.last_call_stats
    assert stats.n_tasks == N
    assert stats.caller_tasks == 0              # your code's thread


def test_processes_never_run_tasks_in_the_caller():
    with Parallel(n_jobs=2, backend="loky") as parallel:
        assert parallel(delayed(square)(i) for i in range(200)) == \
            [i * i for i in range(200)]
        stats = parallel.last_call_stats
    assert stats.n_tasks == 200
    assert stats.caller_tasks == 0 and stats.alone_stretches == 0
    assert stats.alone_trials == 0


def test_a_failed_call_reports_what_it_dispatched():
    def fail_at(i):
        if i == 50:
            raise ValueError("task 50")
        return i

    parallel = Parallel(n_jobs=2, backend="threading", batch_size=10)
    with pytest.raises(ValueError, match="task 50"):
        parallel(delayed(fail_at)(i) for i in range(N))
    stats = parallel.last_call_stats
    assert 60 <= stats.n_tasks <= N
    assert stats.n_batches == stats.n_tasks // 10


def test_each_call_replaces_the_last():
    with Parallel(n_jobs=2, backend="threading") as parallel:
        parallel(delayed(square)(i) for i in range(N))
        first = parallel.last_call_stats
        parallel(delayed(square)(i) for i in range(10))
        assert parallel.last_call_stats.n_tasks == 10
    assert first.n_tasks == N
    with pytest.raises(AttributeError):
        first.n_tasks = 1                       # frozen
