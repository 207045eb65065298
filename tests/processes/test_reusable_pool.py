"""The process backend's reusable pool: reuse across calls, the idle
reaper, worker names, shutdown, context managers and load balance.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import random
import threading

import pytest
from helpers import proc_tasks
from helpers.common import (
    START_METHODS,
    alive,
    pids_of,
    wait_until,
)

from joblib_fast import Parallel, delayed
from joblib_fast.backends.processes import (
    reusable_pool_pids,
    shutdown_reusable_pools,
)

REAPER_NAME = "joblib_fast-pool-reaper"


# ------------------------------------------------------------ pool reuse


def test_consecutive_plain_calls_reuse_workers():
    tasks = [delayed(proc_tasks.timed)(i, 0.01) for i in range(20)]
    first = {pid for _, pid, _, _ in Parallel(n_jobs=2)(tasks)}
    pool = set(reusable_pool_pids())
    second = {pid for _, pid, _, _ in Parallel(n_jobs=2)(tasks)}
    assert len(pool) == 2
    assert first <= pool and second <= pool
    assert first == second == pool
    assert set(reusable_pool_pids()) == pool
    assert os.getpid() not in pool


def test_idle_pool_has_a_daemon_reaper_thread(warm_pool):
    reapers = [t for t in threading.enumerate() if t.name == REAPER_NAME]
    assert len(reapers) == 1
    assert reapers[0].daemon


def test_workers_are_named():
    infos = Parallel(n_jobs=2)(
        delayed(proc_tasks.worker_info)() for _ in range(4))
    assert {info["name"] for info in infos} == {"joblib_fast-worker"}


def test_shutdown_reusable_pools_stops_idle_workers(warm_pool):
    shutdown_reusable_pools()
    assert reusable_pool_pids() == []
    assert wait_until(lambda: not any(alive(pid) for pid in warm_pool))
    # And the next call builds a fresh pool.
    out = Parallel(n_jobs=2)(delayed(proc_tasks.pid_of)(i) for i in range(10))
    assert [x for x, _ in out] == list(range(10))
    assert not pids_of(out) & warm_pool


def test_context_manager_keeps_the_same_workers():
    with Parallel(n_jobs=2) as parallel:
        seen = []
        for _ in range(3):
            out = parallel(delayed(proc_tasks.timed)(i, 0.01) for i in range(20))
            assert [r[0] for r in out] == list(range(20))
            seen.append({pid for _, pid, _, _ in out})
    assert len(seen[0]) == 2
    assert seen[0] == seen[1] == seen[2]

# -------------------------------------------------------- load balance


def test_uneven_durations_keep_both_workers_busy(warm_pool):
    # Structure, not timing: with uneven task durations, both workers keep
    # taking tasks to the end of the input (neither one idles while the
    # other works through the second half), and the work is shared.
    rng = random.Random(42)
    durations = [0.001 + 0.049 * i / 59 for i in range(60)]
    rng.shuffle(durations)
    out = Parallel(n_jobs=2)(
        delayed(proc_tasks.timed)(i, d) for i, d in enumerate(durations))
    assert [r[0] for r in out] == list(range(60))
    by_worker = {}
    for i, pid, _, _ in out:
        by_worker.setdefault(pid, []).append(i)
    assert set(by_worker) == warm_pool, by_worker.keys()
    for pid, indices in by_worker.items():
        assert any(i >= 30 for i in indices), (pid, indices)
        assert len(indices) >= 10, (pid, indices)


@pytest.mark.slow
@pytest.mark.parametrize("method", START_METHODS)
def test_shutdown_lets_workers_exit_by_themselves(method, tmp_path):
    # A worker that exits by itself runs multiprocessing's exit finalizers
    # (each leaves <pid>.exit); a killed one leaves nothing.
    pids = set(Parallel(n_jobs=2, backend=mp.get_context(method))(
        delayed(proc_tasks.mark_clean_exit)(str(tmp_path), i)
        for i in range(8)))
    assert len(pids) == 2
    shutdown_reusable_pools()
    assert wait_until(lambda: not any(alive(pid) for pid in pids))
    assert {int(p.stem) for p in tmp_path.glob("*.exit")} == pids
