"""Process workers replaced between batches: a worker whose resident memory
grew past ``memory_growth_limit`` since it started, or that ran
``max_tasks_per_child`` tasks, makes way for a fresh one; no task is lost
or run twice.  Backend keywords a backend does not document are a
TypeError naming them."""
import collections
import os

import pytest

from joblib_fast import Parallel, delayed, parallel_config
from joblib_fast.backends import ThreadingBackend

LEAK_MB = 50
# Kept alive for the worker's lifetime: what a leaking extension does.
_LEAKED = []


def leak(i):
    # b"\1" * n writes every page (bytes(n) may map zero pages that never
    # become resident).
    _LEAKED.append(b"\1" * (LEAK_MB << 20))
    return i, os.getpid()


def pid_of(i):
    return i, os.getpid()


def _tasks_per_pid(out, n):
    assert [i for i, _ in out] == list(range(n))  # none lost, none doubled
    return collections.Counter(pid for _, pid in out)


@pytest.mark.slow
@pytest.mark.parametrize("return_as", ["list", "generator_unordered"])
def test_a_leaking_worker_is_replaced_between_batches(return_as):
    n = 12
    out = Parallel(n_jobs=2, batch_size=1, memory_growth_limit="120M",
                   return_as=return_as)(delayed(leak)(i) for i in range(n))
    out = sorted(out)
    per_pid = _tasks_per_pid(out, n)
    # 120 MB allow two 50 MB tasks; the third takes a worker past the
    # limit, and it is replaced after that batch.
    assert max(per_pid.values()) <= 3, per_pid
    assert len(per_pid) >= n // 3, per_pid


def numpy_temporaries(i, mb):
    import numpy as np
    # Freed before the task returns: born in shared memory, kept by the
    # worker for reuse (not a leak).
    arrays = [np.ones((mb << 20) // 8) for _ in range(3)]
    return float(sum(a[0] for a in arrays)), os.getpid()


@pytest.mark.slow
def test_freed_numpy_temporaries_do_not_count_as_growth():
    pytest.importorskip("numpy")
    n = 8
    # 3 x 120 MB of temporaries a task: more than the default limit when
    # the segments kept for reuse count as the worker's growth.
    with Parallel(n_jobs=2, batch_size=1) as parallel:
        out = parallel(delayed(numpy_temporaries)(i, 120) for i in range(n))
        out += parallel(delayed(numpy_temporaries)(i, 120) for i in range(n))
    assert [v for v, _ in out] == [3.0] * 2 * n
    assert len({pid for _, pid in out}) <= 2


@pytest.mark.slow
def test_without_a_limit_the_leaking_workers_stay():
    n = 6
    out = Parallel(n_jobs=2, batch_size=1, memory_growth_limit=None)(
        delayed(leak)(i) for i in range(n))
    assert len(_tasks_per_pid(out, n)) <= 2


@pytest.mark.slow
def test_the_memory_limit_is_a_backend_keyword_of_parallel_config():
    n = 6
    with parallel_config(backend="loky", memory_growth_limit=LEAK_MB << 19):
        out = Parallel(n_jobs=2, batch_size=1)(
            delayed(leak)(i) for i in range(n))
    # Half a leak's size: every worker is replaced after its first task.
    assert set(_tasks_per_pid(out, n).values()) == {1}


@pytest.mark.slow
@pytest.mark.parametrize("limit", [1, 2, 3])
def test_max_tasks_per_child_on_parallel(limit):
    n = 7
    out = Parallel(n_jobs=2, max_tasks_per_child=limit)(
        delayed(pid_of)(i) for i in range(n))
    per_pid = _tasks_per_pid(out, n)
    assert max(per_pid.values()) <= limit, per_pid
    assert len(per_pid) >= -(-n // limit)


@pytest.mark.slow
def test_max_tasks_per_child_through_parallel_config():
    n = 6
    with parallel_config(backend="loky", max_tasks_per_child=1):
        out = Parallel(n_jobs=2)(delayed(pid_of)(i) for i in range(n))
    assert len(_tasks_per_pid(out, n)) == n


@pytest.mark.slow
def test_max_tasks_per_child_caps_an_explicit_batch_size():
    n = 8
    out = Parallel(n_jobs=2, batch_size=4, max_tasks_per_child=2,
                   return_as="generator")(delayed(pid_of)(i) for i in range(n))
    per_pid = _tasks_per_pid(list(out), n)
    assert max(per_pid.values()) <= 2, per_pid


@pytest.mark.slow
def test_max_tasks_per_child_in_a_with_block():
    with Parallel(n_jobs=2, max_tasks_per_child=2) as parallel:
        first = parallel(delayed(pid_of)(i) for i in range(4))
        second = parallel(delayed(pid_of)(i) for i in range(4))
    per_pid = collections.Counter(pid for _, pid in first + second)
    assert max(per_pid.values()) <= 2, per_pid


@pytest.mark.parametrize("make", [
    lambda: parallel_config(backend="loky", max_task_per_child=1),
    lambda: Parallel(n_jobs=2, max_task_per_child=1),
    lambda: parallel_config(backend="multiprocessing", max_task_per_child=1),
])
def test_unknown_process_keyword_is_a_type_error_naming_it(make):
    with pytest.raises(TypeError, match="'max_task_per_child'") as info:
        make()
    assert "max_tasks_per_child" in str(info.value)  # what is accepted


@pytest.mark.parametrize("make", [
    lambda: parallel_config(backend="threading", custom_param=3),
    lambda: Parallel(n_jobs=2, backend="threading", custom_param=3),
    lambda: ThreadingBackend(custom_param=3),
    lambda: parallel_config(backend="sequential", custom_param=3),
])
def test_unknown_thread_keyword_is_a_type_error_naming_it(make):
    with pytest.raises(TypeError, match="'custom_param'"):
        make()


def test_documented_keywords_are_accepted():
    with parallel_config(backend="threading", initializer=None, initargs=()):
        assert Parallel(n_jobs=2)(delayed(abs)(-i) for i in range(3)) \
            == [0, 1, 2]
    with parallel_config(backend="loky", idle_worker_timeout=30,
                         max_tasks_per_child=None, memory_growth_limit="1G"):
        assert Parallel(n_jobs=2)(delayed(abs)(-i) for i in range(3)) \
            == [0, 1, 2]


@pytest.mark.parametrize("kwargs,match", [
    ({"max_tasks_per_child": 0}, "max_tasks_per_child must be a positive"),
    ({"max_tasks_per_child": 1.5}, "max_tasks_per_child must be a positive"),
    ({"memory_growth_limit": "lots"}, "memory_growth_limit must be"),
    ({"memory_growth_limit": 0}, "memory_growth_limit must be a positive"),
    ({"idle_worker_timeout": -1}, "idle_worker_timeout must be a positive"),
])
def test_bad_worker_settings_say_what_is_accepted(kwargs, match):
    with pytest.raises(ValueError, match=match):
        parallel_config(backend="loky", **kwargs)
    with pytest.raises(ValueError, match=match):
        Parallel(n_jobs=2, **kwargs)(delayed(abs)(i) for i in range(2))


def test_guide_example_runs(capsys):
    from helpers.common import doc_blocks
    blocks = doc_blocks("docs/user_guide/processes.md",
                        section="Replacing leaky workers")
    assert len(blocks) == 1
    exec(compile(blocks[0], "guide block", "exec"), {})  # noqa: S102
    first, second = capsys.readouterr().out.splitlines()
    assert int(first.split()[0]) >= 4
    assert second == "[0, 1, 2, 3]"


def test_idle_worker_timeout_ends_the_idle_reusable_pool():
    from helpers.common import wait_until

    from joblib_fast.backends.processes import reusable_pool_pids
    with parallel_config(backend="loky", idle_worker_timeout=0.2):
        assert Parallel(n_jobs=2)(delayed(abs)(-i) for i in range(4)) \
            == [0, 1, 2, 3]
    assert reusable_pool_pids()  # kept for the next call, for a while
    # The default keeps it 300 s; this one goes after 0.2 s.
    assert wait_until(lambda: not reusable_pool_pids(), 30)
