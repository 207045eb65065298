"""The process backend's timeouts: the worker running a task past
``timeout`` is terminated (with the processes it started), whatever the
start method; a call within its timeout keeps its results.

The few time bounds are hang guards (NO_HANG, 15 s), an order of
magnitude above what a working call needs: structure, not speed.
"""
from __future__ import annotations

import multiprocessing as mp
import time

import pytest
from helpers import proc_tasks
from helpers.common import (
    NO_HANG,
    START_METHODS,
    alive,
    assert_dies,
    pids_of,
    wait_until,
)
from helpers.proc_tasks import square

from joblib_fast import Parallel, delayed
from joblib_fast.backends.processes import reusable_pool_pids


@pytest.mark.slow
def test_timeout_kills_the_workers_process_tree(tmp_path):
    path = tmp_path / "grandchild.pid"
    with pytest.raises(TimeoutError):
        Parallel(n_jobs=2, timeout=2)(
            delayed(proc_tasks.spawn_sleeper_then_hang)(str(path))
            for _ in range(1))
    assert_dies(int(path.read_text()), "the timeout")


@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", START_METHODS)
@pytest.mark.parametrize("return_as", ["list", "generator"])
def test_timeout_terminates_the_worker(tmp_path, method, return_as):
    context = mp.get_context(method)
    Parallel(n_jobs=2, backend=context)(delayed(square)(i) for i in range(4))
    pool = set(reusable_pool_pids())
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        list(Parallel(n_jobs=2, timeout=0.5, return_as=return_as,
                      backend=context)(
            delayed(proc_tasks.write_pid_then_sleep)(str(tmp_path), i, 30)
            for i in range(2)))
    assert time.monotonic() - start < NO_HANG
    pids = {int(p.stem) for p in tmp_path.glob("*.pid")}
    assert pids and pids <= pool
    assert wait_until(lambda: not any(alive(pid) for pid in pids)), \
        [pid for pid in pids if alive(pid)]
    out = Parallel(n_jobs=2)(delayed(proc_tasks.pid_of)(i) for i in range(10))
    assert [x for x, _ in out] == list(range(10))
    assert not pids_of(out) & pids


def test_timeout_not_reached_keeps_results():
    out = Parallel(n_jobs=2, timeout=10)(
        delayed(proc_tasks.sleep_then_return)(i, 0.01) for i in range(10))
    assert out == list(range(10))
