"""backend="dask" on a dask.distributed LocalCluster.

The cluster is conftest's ``dask_cluster`` (2 worker processes x 1 thread,
on 127.0.0.1, no dashboard, one per session), started before this module's
first leak baseline.
"""
from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

distributed = pytest.importorskip("distributed")  # the test extra has it

import numpy as np
from helpers import common, dask_tasks
from helpers.dask_tasks import square

from joblib_fast import Parallel, delayed, parallel_config
from joblib_fast.backends.base import ThreadingBackend

# Every test here needs the session's LocalCluster (seconds to start) and
# most wait for a scheduler's round trips: out of the quick loop.
pytestmark = pytest.mark.slow

# Seconds the scheduler may take to forget a cancelled call's tasks.
FORGET_SECONDS = 5.0


@pytest.fixture(scope="module", autouse=True)
def cluster(dask_cluster):
    """The session's cluster, started before the first test's leak
    baseline when this module runs first."""
    return dask_cluster


@pytest.fixture
def client(dask_client):
    return dask_client


@pytest.fixture
def scheduler(cluster):
    return cluster[0].scheduler


def call_keys(scheduler):
    return [k for k in list(scheduler.tasks) if str(k).startswith(
        "joblib_fast-")]


def wait_forgotten(scheduler, seconds=FORGET_SECONDS):
    deadline = time.monotonic() + seconds
    while call_keys(scheduler) and time.monotonic() < deadline:
        time.sleep(0.05)
    return call_keys(scheduler)


def markers(folder):
    return sorted(n for n in os.listdir(folder) if n.startswith("started-"))


def assert_nothing_starts_later(folder, before):
    time.sleep(1.0)   # longer than a task: a queued task would have started
    assert markers(folder) == before


# ------------------------------------------------------------ interface


def test_import_does_not_import_dask():
    code = ("import sys, joblib_fast; "
            "from joblib_fast import Parallel, parallel_config; "
            "assert 'dask' not in sys.modules, 'dask'; "
            "assert 'distributed' not in sys.modules, 'distributed'; "
            "assert 'joblib_fast.backends.dask' not in sys.modules")
    subprocess.run([sys.executable, "-P", "-c", code], check=True,
                   timeout=60)


@pytest.mark.parametrize("return_as", common.RETURN_AS)
@pytest.mark.parametrize("how", ["parallel_config", "Parallel"])
def test_results(client, return_as, how):
    tasks = [delayed(square)(i) for i in range(50)]
    if how == "parallel_config":
        with parallel_config(backend="dask", client=client):
            out = Parallel(return_as=return_as)(tasks)
    else:
        with client.as_current():
            out = Parallel(backend="dask", return_as=return_as)(tasks)
    expected = [i * i for i in range(50)]
    if return_as == "generator_unordered":
        out = sorted(out)
    assert list(out) == expected


def test_runs_on_the_workers_whatever_n_jobs(client):
    with parallel_config(backend="dask", client=client):
        parallel = Parallel(n_jobs=1)
        pids = parallel(delayed(dask_tasks.worker_pid)(i) for i in range(4))
        assert parallel._effective_n_jobs() == 2
    assert os.getpid() not in pids
    assert set(pids) <= {n.pid for n in client.cluster.workers.values()}


def test_current_client_and_no_client_error(client):
    with client.as_current():
        with parallel_config(backend="dask"):
            assert Parallel()(delayed(square)(i) for i in range(3)) == [0, 1, 4]
    with pytest.raises(ValueError, match="create a Dask Client"):
        with parallel_config(backend="dask"):
            pass


def test_scheduler_host(client):
    with parallel_config(backend="dask",
                         scheduler_host=client.scheduler.address) as config:
        own = config["backend"].client
        try:
            assert own is not client
            assert Parallel()(delayed(square)(i) for i in range(3)) == [0, 1, 4]
        finally:
            own.close()


def test_dask_missing_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import fails
    with pytest.raises(ValueError, match="You are trying to use 'dask' as "
                       "a joblib parallel backend but dask is not installed"):
        Parallel(backend="dask")


def test_results_come_through_a_watcher_per_batch(client, monkeypatch):
    from joblib_fast.backends.dask.pool import DaskPool
    watched = []
    original = DaskPool._watch

    async def counting(pool, key, future):
        watched.append(future.key)
        await original(pool, key, future)

    monkeypatch.setattr(DaskPool, "_watch", counting)
    with parallel_config(backend="dask", client=client):
        keys = Parallel()(delayed(dask_tasks.batch_key)(i) for i in range(200))
    # One watcher per batch: the batches that ran are those watched.
    assert sorted(set(keys)) == sorted(watched)


@pytest.mark.slow
def test_no_thread_left_after_a_call_or_the_client(tmp_path):
    # distributed runs Future.add_done_callback callbacks on a thread pool
    # it starts once per process and never stops ("Dask-Callback-Thread"):
    # results come through the client's event loop instead.  Whatever else
    # the calls or the client started must be gone once the client and its
    # cluster are closed: the leak check (conftest) fails the test if not.
    cluster = distributed.LocalCluster(
        n_workers=1, threads_per_worker=2, processes=True,
        host="127.0.0.1", dashboard_address=None,
        scheduler_kwargs=common.DASK_NO_HTTP_PORT)
    try:
        with distributed.Client(cluster, set_as_default=False) as client:
            with parallel_config(backend="dask", client=client):
                assert Parallel()(delayed(square)(i) for i in range(20)) == \
                    [i * i for i in range(20)]
                with pytest.raises(ValueError, match="failed on purpose"):
                    Parallel(batch_size=1)(
                        delayed(dask_tasks.fail_at)(i, 3, str(tmp_path))
                        for i in range(8))
                gen = Parallel(return_as="generator")(
                    delayed(square)(i) for i in range(20))
                assert next(gen) == 0
                gen.close()
            names = [t.name for t in threading.enumerate()]
            assert not [n for n in names
                        if n.startswith("Dask-Callback-Thread")], names
    finally:
        cluster.close()


def test_scatter_must_be_a_list(client):
    with pytest.raises(TypeError, match="scatter must be a list/tuple, got `int`"):
        with parallel_config(backend="dask", client=client, scatter=1):
            pass


def test_submit_kwargs_go_to_client_submit(client):
    addresses = sorted(client.scheduler_info()["workers"])
    for address in addresses:
        with parallel_config(backend="dask", client=client, workers=address):
            out = Parallel()(delayed(dask_tasks.worker_address)(i)
                             for i in range(10))
        assert out == [address] * 10


def test_no_worker_errors():
    cluster = distributed.LocalCluster(n_workers=0, processes=True,
                                       host="127.0.0.1",
                                       dashboard_address=None,
                                       scheduler_kwargs=common.DASK_NO_HTTP_PORT)
    client = distributed.Client(cluster, set_as_default=False)
    try:
        with parallel_config(backend="dask", client=client,
                             wait_for_workers_timeout=0.1):
            with pytest.raises(TimeoutError, match="DaskDistributedBackend "
                               "has no worker after 0.1 seconds"):
                Parallel()(delayed(square)(i) for i in range(3))
        with parallel_config(backend="dask", client=client,
                             wait_for_workers_timeout=0):
            with pytest.raises(RuntimeError, match="DaskDistributedBackend "
                               "has no active worker"):
                Parallel()(delayed(square)(i) for i in range(3))
    finally:
        client.close()
        cluster.close()


def test_waits_for_a_first_worker():
    cluster = distributed.LocalCluster(n_workers=0, threads_per_worker=1,
                                       processes=True, host="127.0.0.1",
                                       dashboard_address=None,
                                       scheduler_kwargs=common.DASK_NO_HTTP_PORT)
    client = distributed.Client(cluster, set_as_default=False)
    try:
        cluster.scale(1)    # returns before the worker is up
        with parallel_config(backend="dask", client=client,
                             wait_for_workers_timeout=60):
            assert Parallel()(delayed(square)(i) for i in range(3)) == [0, 1, 4]
    finally:
        client.close()
        cluster.close()


def test_batches_are_auto_sized(client):
    with parallel_config(backend="dask", client=client):
        keys = Parallel()(delayed(dask_tasks.batch_key)(i) for i in range(2000))
    # 2000 tasks of a few microseconds: a handful of batches, not 2000.
    assert len(set(keys)) < 60
    assert all(k.startswith("joblib_fast-") for k in keys)


def test_require_sharedmem_gives_threads(client):
    with parallel_config(backend="dask", client=client):
        parallel = Parallel(require="sharedmem")
        assert isinstance(parallel._backend, ThreadingBackend)
        pids = parallel(delayed(dask_tasks.worker_pid)(i) for i in range(3))
    assert pids == [os.getpid()] * 3


def test_nested_calls_run_on_the_same_cluster(client):
    # 4 outer tasks on 2 one-thread workers, each waiting for 3 inner
    # tasks: without secede/rejoin the workers' only threads would wait for
    # tasks that can never start.
    with parallel_config(backend="dask", client=client):
        out = Parallel(timeout=60)(
            delayed(dask_tasks.nested_pids)(3) for _ in range(4))
    workers = {n.pid for n in client.cluster.workers.values()}
    for backend_name, pids in out:
        assert backend_name == "DaskDistributedBackend"
        assert set(pids) <= workers
    with parallel_config(backend="dask", client=client):
        names = Parallel()(delayed(dask_tasks.nested_require)(r)
                           for r in (None, "sharedmem"))
    assert names == ["DaskDistributedBackend", "ThreadingBackend"]


def test_progress_bar_and_callback(client, capsys, no_tqdm_monitor):
    seen = []
    with parallel_config(backend="dask", client=client):
        out = Parallel(progress_bar=True,
                       callback=lambda i, r: seen.append((i, r)))(
            delayed(square)(i) for i in range(30))
    assert out == [i * i for i in range(30)]
    assert sorted(seen) == [(i, i * i) for i in range(30)]
    assert "30/30" in capsys.readouterr().err   # tqdm's or ours


# ----------------------------------------------------------- bad futures
# Each ends the call with an exception naming the cause; a hang fails the
# test after 30 s (pytest-timeout).


@pytest.mark.timeout(30)
def test_task_error_cancels_the_rest(client, scheduler, tmp_path):
    with parallel_config(backend="dask", client=client):
        with pytest.raises(ValueError, match="task 3 failed on purpose"):
            Parallel(batch_size=1)(
                delayed(dask_tasks.fail_at)(i, 3, str(tmp_path), 0.3)
                for i in range(40))
    assert wait_forgotten(scheduler) == []
    started = markers(tmp_path)
    assert len(started) < 40
    assert_nothing_starts_later(tmp_path, started)


def test_failed_tasks_are_forgotten_without_the_garbage_collector(
        client, scheduler, tmp_path):
    # A failed batch's future must not sit in a reference cycle: until the
    # collector ran, its task would stay on the scheduler (and make dask
    # place the next calls' tasks as if they had no data to be near).
    gc.disable()
    try:
        with parallel_config(backend="dask", client=client):
            try:
                Parallel(batch_size=1)(
                    delayed(dask_tasks.fail_at)(i, 1, str(tmp_path))
                    for i in range(3))
            except ValueError as exc:
                assert "task 1 failed on purpose" in str(exc)
            else:
                raise AssertionError("the call did not fail")
        assert wait_forgotten(scheduler) == []
    finally:
        gc.enable()


def test_timeout_cancels(client, scheduler, tmp_path):
    with parallel_config(backend="dask", client=client):
        with pytest.raises(TimeoutError, match="timeout=0.5"):
            Parallel(batch_size=1, timeout=0.5)(
                delayed(dask_tasks.mark_and_sleep)(i, str(tmp_path), 2.0)
                for i in range(20))
    assert wait_forgotten(scheduler) == []
    started = markers(tmp_path)
    assert len(started) <= 4
    assert_nothing_starts_later(tmp_path, started)


def test_closed_generator_cancels(client, scheduler, tmp_path):
    with parallel_config(backend="dask", client=client):
        gen = Parallel(batch_size=1, return_as="generator")(
            delayed(dask_tasks.mark_and_sleep)(i, str(tmp_path), 0.3)
            for i in range(20))
        assert next(gen) == 0
        gen.close()
    assert wait_forgotten(scheduler) == []
    started = markers(tmp_path)
    assert len(started) < 20
    assert_nothing_starts_later(tmp_path, started)


def test_ctrl_c_cancels(client, scheduler, tmp_path):
    assert threading.current_thread() is threading.main_thread()
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with parallel_config(backend="dask", client=client):
            with pytest.raises(KeyboardInterrupt):
                Parallel(batch_size=1)(
                    delayed(dask_tasks.mark_and_sleep)(i, str(tmp_path), 0.3)
                    for i in range(20))
    finally:
        timer.cancel()
        timer.join()
    assert wait_forgotten(scheduler) == []
    started = markers(tmp_path)
    assert len(started) < 20
    assert_nothing_starts_later(tmp_path, started)


@pytest.mark.timeout(30)
def test_future_cancelled_by_someone_else(client, scheduler):
    def cancel_the_rest(index, result):
        if index == 0:
            futures = [distributed.Future(k, client) for k in
                       call_keys(scheduler)]
            client.cancel(futures, force=True)

    with parallel_config(backend="dask", client=client):
        with pytest.raises(RuntimeError, match="was cancelled"):
            Parallel(batch_size=1, callback=cancel_the_rest)(
                delayed(time.sleep)(0.2) for i in range(10))
    assert wait_forgotten(scheduler) == []


@pytest.mark.timeout(30)
def test_ended_future_whose_callback_never_comes(client, monkeypatch,
                                                 tmp_path):
    # The sweep (local future states, every second) ends the call.
    from joblib_fast.backends.dask.pool import DaskPool
    async def never_reports(*args):
        pass

    monkeypatch.setattr(DaskPool, "_watch", never_reports)
    with parallel_config(backend="dask", client=client):
        with pytest.raises(ValueError, match="task 0 failed on purpose"):
            Parallel()(delayed(dask_tasks.fail_at)(i, 0, str(tmp_path))
                       for i in range(1))


@pytest.mark.timeout(30)
def test_worker_killed_past_allowed_failures(client):
    with parallel_config(backend="dask", client=client):
        with pytest.raises(distributed.scheduler.KilledWorker):
            Parallel(timeout=30)(
                delayed(dask_tasks.kill_always)(i) for i in range(1))


@pytest.mark.timeout(30)
def test_argument_that_fails_to_unpickle_on_the_worker(client):
    with parallel_config(backend="dask", client=client):
        with pytest.raises(RuntimeError,
                           match="could not be unpickled on dask worker"):
            Parallel(timeout=30)(
                delayed(dask_tasks.identity)(dask_tasks.WorkerCannotLoad())
                for i in range(1))


@pytest.mark.timeout(30)
@pytest.mark.parametrize("arg, cause", [
    (dask_tasks.BigWorkerCannotLoad(), "cannot be unpickled here"),
    ([threading.Lock()] * 1000, "lock"),
], ids=["unpickle", "pickle"])
def test_scattered_argument_that_cannot_travel(client, arg, cause):
    with parallel_config(backend="dask", client=client):
        with pytest.raises(RuntimeError, match=f"could not be sent to the "
                           f"dask workers: .*{cause}"):
            Parallel()(delayed(dask_tasks.identity)(arg) for i in range(2))


@pytest.mark.timeout(30)
def test_result_that_fails_to_unpickle_in_the_caller(client):
    with parallel_config(backend="dask", client=client):
        with pytest.raises(RuntimeError,
                           match="could not be unpickled in the caller"):
            Parallel(timeout=30)(
                delayed(dask_tasks.make_caller_only)(i) for i in range(2))


# ---------------------------------------------------------- dead workers


@pytest.mark.timeout(30)
def test_worker_killed_mid_call_loses_nothing(client, tmp_path):
    with parallel_config(backend="dask", client=client):
        out = Parallel(batch_size=1, timeout=60)(
            delayed(dask_tasks.kill_once)(i, str(tmp_path), 5)
            for i in range(20))
    assert out == list(range(20))
    assert (tmp_path / "killed").exists()


@pytest.mark.timeout(30)
def test_lost_scattered_argument_is_scattered_again(client, tmp_path):
    data = np.ones(10_000, dtype=np.uint8)   # scattered (> 1 kB)
    # Used by one task only: held by one worker, which that task kills.
    with parallel_config(backend="dask", client=client):
        with Parallel(batch_size=1, timeout=60) as parallel:
            out = parallel(
                delayed(dask_tasks.kill_once)(0, str(tmp_path), 0, data)
                for _ in range(1))
            resubmitted = parallel._runner.pool.n_resubmitted
    assert out == [(0, 10_000)]
    assert (tmp_path / "killed").exists()
    assert resubmitted >= 1


# -------------------------------------------------------------- scatter


@pytest.fixture
def scatter_calls(client, scheduler, monkeypatch):
    """Counts client.scatter calls (checking they go straight to the
    workers) and scatters served by the scheduler."""
    calls = {"client": 0, "scheduler": 0}
    original = client.scatter

    def counting(*args, **kwargs):
        assert kwargs.get("direct") is True
        calls["client"] += 1
        return original(*args, **kwargs)

    handler = scheduler.handlers["scatter"]

    def scheduler_scatter(*args, **kwargs):
        calls["scheduler"] += 1
        return handler(*args, **kwargs)

    monkeypatch.setattr(client, "scatter", counting)
    monkeypatch.setitem(scheduler.handlers, "scatter", scheduler_scatter)
    return calls


def test_scatter_argument_broadcast_once(client, scatter_calls):
    data = np.arange(10_000)
    with parallel_config(backend="dask", client=client, scatter=[data]):
        assert scatter_calls["client"] == 1
        for _ in range(2):
            out = Parallel(batch_size=1)(
                delayed(dask_tasks.nbytes_on)(data, i) for i in range(6))
            assert [n for n, _ in out] == [10_000] * 6
    assert scatter_calls == {"client": 1, "scheduler": 0}


def test_automatic_scatter_once_per_object_per_call(client, scatter_calls):
    a = np.ones(5_000, dtype=np.uint8)
    b = np.ones(5_000, dtype=np.uint8)
    small = np.ones(10, dtype=np.uint8)
    with parallel_config(backend="dask", client=client):
        out = Parallel(batch_size=1)(
            [delayed(dask_tasks.first)(a, a, key=a) for _ in range(3)]
            + [delayed(dask_tasks.first)((b, 1)) for _ in range(3)]
            + [delayed(dask_tasks.first)([a, b]) for _ in range(3)]
            + [delayed(dask_tasks.first)({"k": b}) for _ in range(3)]
            + [delayed(dask_tasks.first)(small) for _ in range(3)])
        assert len(out) == 15
        assert scatter_calls["client"] == 2      # a and b
        Parallel()(delayed(dask_tasks.first)(a) for _ in range(3))
        assert scatter_calls["client"] == 3      # a again: a new call
    assert scatter_calls["scheduler"] == 0


def test_unchanged_object_not_scattered_again_in_a_with_block(
        client, scatter_calls):
    a = np.ones(5_000, dtype=np.uint8)
    with parallel_config(backend="dask", client=client):
        with Parallel() as parallel:
            parallel(delayed(dask_tasks.nbytes_on)(a) for _ in range(3))
            parallel(delayed(dask_tasks.nbytes_on)(a) for _ in range(3))
            assert scatter_calls["client"] == 1
            a[0] = 7    # changed: sent again
            parallel(delayed(dask_tasks.nbytes_on)(a) for _ in range(3))
            assert scatter_calls["client"] == 2


@pytest.mark.parametrize("fails", [False, True])
def test_scattered_data_released_when_the_call_ends(client, scheduler,
                                                    tmp_path, fails):
    before = set(scheduler.tasks)
    data = np.ones(10_000, dtype=np.uint8)
    with parallel_config(backend="dask", client=client):
        if fails:
            with pytest.raises(ValueError, match="failed on purpose"):
                Parallel()(delayed(dask_tasks.fail_at)(i, 2, str(tmp_path),
                                                       0.2, data)
                           for i in range(10))
        else:
            Parallel()(delayed(dask_tasks.nbytes_on)(data) for _ in range(4))
    deadline = time.monotonic() + FORGET_SECONDS
    while set(scheduler.tasks) - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert set(scheduler.tasks) - before == set()


def test_widely_used_data_is_replicated_so_tasks_spread(client, monkeypatch):
    replicated = []
    original = client.replicate

    def counting(futures, *args, **kwargs):
        replicated.extend(futures)
        return original(futures, *args, **kwargs)

    monkeypatch.setattr(client, "replicate", counting)
    data = np.zeros(50 * 2**20, dtype=np.uint8)
    with parallel_config(backend="dask", client=client):
        where = Parallel()(
            delayed(dask_tasks.sleep_on)(data, 0.2) for _ in range(20))
    counts = {a: where.count(a) for a in set(where)}
    assert len(counts) == 2 and min(counts.values()) >= 5, counts
    assert len(replicated) == 1     # once 2 tasks (2 workers) used it
