"""Process-backed calls made inside a daemonic process: a
``multiprocessing.Pool`` worker, a worker of a dask ``LocalCluster`` with
worker processes (daemonic by default).

multiprocessing forbids children to a daemonic process, so such a call
runs sequentially in that process with joblib's warning (which names
dask's ``distributed.worker.daemon`` setting inside a dask worker); the
threading backend is unaffected.
"""
from __future__ import annotations

import multiprocessing as mp

import pytest
from helpers import daemonic_tasks
from helpers.common import DASK_NO_HTTP_PORT, alive, wait_until

from joblib_fast import Parallel, delayed, effective_n_jobs
from joblib_fast.backends.processes import (
    ProcessBackend,
    daemonic_warning,
)

# Seconds a task of these tests may take before it counts as a hang.
NO_HANG = 60

# joblib's words (what code filters warnings on), as each warning starts.
POOL_WARNING = ("Loky-backed parallel loops cannot be called in a "
                "multiprocessing, setting n_jobs=1")
DASK_WARNING = "Inside a Dask worker with daemon=True, setting n_jobs=1"

PROCESS_BACKENDS = [None, "loky", "multiprocessing"]


def check_ran_in_place(out, warning_start):
    assert out["daemon"] is True
    assert out["results"] == [(out["pid"], i * i) for i in range(6)]
    assert out["new_children"] == [] and out["pool_pids"] == []
    assert len(out["warnings"]) == 1, out["warnings"]
    category, message = out["warnings"][0]
    assert category == "UserWarning"
    assert message.startswith(warning_start), message
    return message


def check_threads(out):
    # Two tasks met at a barrier: two threads ran them, at once.
    assert out["daemon"] is True
    assert len(set(out["idents"])) == 2
    assert out["warnings"] == []


# --------------------------------------------------- here, not daemonic


def test_no_warning_outside_a_daemonic_process():
    assert not mp.current_process().daemon
    assert daemonic_warning() is None


def test_the_decision_is_made_by_effective_n_jobs(monkeypatch):
    # Every path (Parallel, joblib_fast.effective_n_jobs, the backend
    # used by joblib) goes through ProcessBackend.effective_n_jobs.
    monkeypatch.setattr(mp.current_process(), "daemon", True)
    with pytest.warns(UserWarning, match=POOL_WARNING):
        assert ProcessBackend().effective_n_jobs(4) == 1
    with pytest.warns(UserWarning, match=POOL_WARNING):
        assert effective_n_jobs(-1) == 1
    with pytest.warns(UserWarning, match=POOL_WARNING):
        assert Parallel(n_jobs=2)._effective_n_jobs() == 1


def test_no_warning_when_one_job_is_asked(monkeypatch, recwarn):
    monkeypatch.setattr(mp.current_process(), "daemon", True)
    assert ProcessBackend().effective_n_jobs(1) == 1
    assert Parallel(n_jobs=1)(delayed(abs)(-i) for i in range(3)) == [0, 1, 2]
    assert not [w for w in recwarn if "n_jobs=1" in str(w.message)]


# ---------------------------------------- a multiprocessing.Pool worker


def in_pool_worker(method, func, *args):
    with mp.get_context(method).Pool(1) as pool:
        out = pool.apply_async(func, args).get(timeout=NO_HANG)
        pool.close()
        pool.join()
    return out


@pytest.mark.parametrize("backend", PROCESS_BACKENDS)
def test_process_call_in_a_forked_pool_worker_runs_in_place(backend):
    out = in_pool_worker("fork", daemonic_tasks.process_call, backend)
    message = check_ran_in_place(out, POOL_WARNING)
    assert "distributed.worker.daemon" not in message


def test_joblib_parallel_on_our_processes_in_a_pool_worker():
    # joblib's own Parallel on joblib_fast's process backend decides the
    # same way.
    pytest.importorskip("joblib")
    out = in_pool_worker("fork", daemonic_tasks.joblib_process_call)
    check_ran_in_place(out, POOL_WARNING)


def test_threading_call_in_a_forked_pool_worker_uses_threads():
    check_threads(in_pool_worker("fork", daemonic_tasks.threading_call))


def test_spawned_pool_worker():
    # One spawned worker for the three calls: starting one takes seconds.
    with mp.get_context("spawn").Pool(1) as pool:
        outs = [pool.apply_async(daemonic_tasks.process_call, (backend,))
                for backend in PROCESS_BACKENDS]
        threads = pool.apply_async(daemonic_tasks.threading_call)
        for out in outs:
            out = out.get(timeout=NO_HANG)
            check_ran_in_place(out, POOL_WARNING)
            # Telling a dask worker apart imported nothing.
            assert out["distributed_imported"] is False
        check_threads(threads.get(timeout=NO_HANG))
        pool.close()
        pool.join()


# ------------------------------------------------------- a dask worker


def local_cluster(**settings):
    distributed = pytest.importorskip("distributed")
    import dask
    with dask.config.set(settings):
        cluster = distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True,
            host="127.0.0.1", dashboard_address=None,
            scheduler_kwargs=DASK_NO_HTTP_PORT)
    return cluster, distributed.Client(cluster, set_as_default=False)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_dask_worker_process():
    cluster, client = local_cluster()
    try:
        outs = [client.submit(daemonic_tasks.process_call, backend,
                              pure=False) for backend in PROCESS_BACKENDS]
        threads = client.submit(daemonic_tasks.threading_call, pure=False)
        for out in outs:
            message = check_ran_in_place(out.result(timeout=NO_HANG),
                                         DASK_WARNING)
            # The setting that lifts it, and how to set it.
            assert "'distributed.worker.daemon'" in message
            assert "DASK_DISTRIBUTED__WORKER__DAEMON=False" in message
        check_threads(threads.result(timeout=NO_HANG))
    finally:
        client.close()
        cluster.close()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_dask_setting_the_warning_names_lifts_it():
    # With distributed.worker.daemon False (what the warning advises) the
    # worker is not daemonic and the call gets worker processes.
    cluster, client = local_cluster(**{"distributed.worker.daemon": False})
    try:
        out = client.submit(daemonic_tasks.process_call, "loky",
                            pure=False).result(timeout=NO_HANG)
        worker = out["pid"]
    finally:
        client.close()
        cluster.close()
    assert out["daemon"] is False and out["warnings"] == []
    assert [r for _, r in out["results"]] == [i * i for i in range(6)]
    assert {pid for pid, _ in out["results"]} <= set(out["pool_pids"])
    assert worker not in out["pool_pids"] and out["pool_pids"]
    # Those workers end with the dask worker that started them.
    assert wait_until(lambda: not any(map(alive, out["pool_pids"])))
