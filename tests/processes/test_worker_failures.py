"""The process backend's failures: dead workers (and the processes they
started), a killed fork server, Ctrl-C (timeouts:
``test_worker_timeouts.py``).

The few time bounds are hang guards (NO_HANG, 15 s), an order of
magnitude above what a working call needs: structure, not speed.
"""
from __future__ import annotations

import functools
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
from helpers import proc_tasks
from helpers.common import (
    NO_HANG,
    START_METHODS,
    alive,
    assert_dies,
    pids_of,
    subprocess_env,
    wait_until,
)
from helpers.proc_tasks import square

from joblib_fast import Parallel, delayed
from joblib_fast.backends.processes import (
    TerminatedWorkerError,
    reusable_pool_pids,
)

# --------------------------------------------------------- worker death


DEATHS = [
    pytest.param(proc_tasks.exit_worker, r"exit code 3", id="os._exit"),
    pytest.param(proc_tasks.sigkill_worker, r"SIGKILL", id="sigkill"),
    pytest.param(proc_tasks.segfault_worker, r"SIGSEGV", id="segfault"),
]


def _check_worker_death(parallel, func, pattern, old_pids, tmp_path):
    crash_log = tmp_path / "crash.log"
    if func is proc_tasks.segfault_worker:
        func = functools.partial(func, crash_log=str(crash_log))
    start = time.monotonic()
    with pytest.raises(TerminatedWorkerError, match=pattern):
        list(parallel(delayed(func)(i) for i in range(20)))
    assert time.monotonic() - start < NO_HANG
    if isinstance(func, functools.partial):
        # The crash was the one meant, and its report was kept off the
        # terminal.
        report = crash_log.read_text()
        assert "Fatal Python error: Segmentation fault" in report, report
        assert "in segfault_worker" in report, report
    # The broken pool is gone: none of its workers is alive.
    assert wait_until(lambda: not any(alive(pid) for pid in old_pids))
    assert not set(reusable_pool_pids()) & old_pids


@pytest.mark.timeout(60)
@pytest.mark.parametrize("func, pattern", DEATHS)
@pytest.mark.parametrize("return_as", ["list", "generator", "generator_unordered"])
def test_worker_death(func, pattern, return_as, warm_pool, tmp_path):
    _check_worker_death(Parallel(n_jobs=2, return_as=return_as), func, pattern,
                        warm_pool, tmp_path)
    # The next call works, on fresh workers.
    out = Parallel(n_jobs=2)(delayed(proc_tasks.pid_of)(i) for i in range(20))
    assert [x for x, _ in out] == list(range(20))
    assert not pids_of(out) & warm_pool
    assert pids_of(out) <= set(reusable_pool_pids())


@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.parametrize("func, pattern", DEATHS)
@pytest.mark.parametrize("method", START_METHODS)
def test_worker_death_each_start_method(func, pattern, method, tmp_path):
    parallel = Parallel(n_jobs=2, backend=mp.get_context(method))
    old = pids_of(parallel(delayed(proc_tasks.pid_of)(i) for i in range(4)))
    old |= set(reusable_pool_pids())
    _check_worker_death(parallel, func, pattern, old, tmp_path)
    out = parallel(delayed(proc_tasks.pid_of)(i) for i in range(20))
    assert [x for x, _ in out] == list(range(20))
    assert not pids_of(out) & old


def test_exit_code_zero_is_still_a_death():
    with pytest.raises(TerminatedWorkerError, match="exit code 0"):
        Parallel(n_jobs=2)(delayed(proc_tasks.exit_worker)(i, 0) for i in range(6))


def test_idle_worker_killed_between_calls(warm_pool):
    victim = min(warm_pool)
    os.kill(victim, signal.SIGKILL)
    assert wait_until(lambda: not alive(victim))
    # The fork server reaps it and then reports its exit to us: give that
    # a moment (a call racing with it is another matter).
    wait_until(lambda: not psutil.pid_exists(victim), 2.0)
    time.sleep(0.2)
    out = Parallel(n_jobs=2)(delayed(proc_tasks.pid_of)(i) for i in range(20))
    assert [x for x, _ in out] == list(range(20))
    assert victim not in pids_of(out)
    assert victim not in reusable_pool_pids()


def test_task_error_in_context_manager_then_next_call_works():
    with Parallel(n_jobs=2) as parallel:
        with pytest.raises(proc_tasks.CustomError):
            parallel(delayed(proc_tasks.raise_custom)(i) for i in range(10))
        assert parallel(delayed(square)(i) for i in range(10)) == \
            [i * i for i in range(10)]


def test_worker_death_in_context_manager(warm_pool):
    with Parallel(n_jobs=2) as parallel:
        before = pids_of(parallel(delayed(proc_tasks.pid_of)(i) for i in range(10)))
        with pytest.raises(TerminatedWorkerError):
            parallel(delayed(proc_tasks.exit_worker)(i) for i in range(20))
        out = parallel(delayed(proc_tasks.pid_of)(i) for i in range(20))
        assert [x for x, _ in out] == list(range(20))
        assert not pids_of(out) & before


CTRL_C_SCRIPT = """\
import sys
import time
from helpers import proc_tasks
from joblib_fast import Parallel, delayed

pid_dir, mode = sys.argv[1], sys.argv[2]
if mode == "list":
    Parallel(n_jobs=2)(
        delayed(proc_tasks.write_pid_then_sleep)(pid_dir, i, 30)
        for i in range(8))
elif mode == "generator":
    for _ in Parallel(n_jobs=2, return_as="generator")(
            delayed(proc_tasks.write_pid_then_sleep)(pid_dir, i, 30)
            for i in range(8)):
        pass
elif mode == "with-block":
    with Parallel(n_jobs=2) as parallel:
        parallel(delayed(proc_tasks.square)(i) for i in range(8))
        parallel(delayed(proc_tasks.write_pid_then_sleep)(pid_dir, i, 30)
                 for i in range(8))
elif mode == "many-small-tasks":
    Parallel(n_jobs=2)(
        delayed(proc_tasks.write_pid_then_sleep)(pid_dir, i, 0.001)
        for i in range(10 ** 6))
elif mode == "slow-consumer":
    for _ in Parallel(n_jobs=2, return_as="generator")(
            delayed(proc_tasks.write_pid_then_sleep)(pid_dir, i, 0.01)
            for i in range(1000)):
        time.sleep(30)
print("FINISHED", flush=True)
"""


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize("mode", ["list", "generator", "with-block",
                                  "many-small-tasks", "slow-consumer"])
def test_ctrl_c_stops_the_call_and_its_workers(tmp_path, mode):
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    script = tmp_path / "ctrl_c.py"
    script.write_text(CTRL_C_SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(pid_dir), mode], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, cwd=str(tmp_path),
        env=subprocess_env())
    try:
        assert wait_until(lambda: len(list(pid_dir.glob("*.pid"))) >= 2, 30), \
            "the workers never started"
        time.sleep(0.5)
        # Everything the script started: workers, fork server, trackers.
        descendants = psutil.Process(proc.pid).children(recursive=True)
        os.kill(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=NO_HANG)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert "KeyboardInterrupt" in stderr, stderr
    assert "FINISHED" not in stdout
    assert proc.returncode != 0
    worker_pids = {int(p.stem) for p in pid_dir.glob("*.pid")}
    assert len(worker_pids) == 2
    assert wait_until(lambda: not any(alive(pid) for pid in worker_pids)), \
        [pid for pid in worker_pids if alive(pid)]
    assert wait_until(lambda: not any(alive(p.pid) for p in descendants)), \
        [(p.pid, p.name()) for p in descendants if alive(p.pid)]


def _dead(pid):
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_failed_call_kills_the_workers_process_tree(tmp_path):
    path = tmp_path / "grandchild.pid"
    with pytest.raises(ValueError, match="task 1 fails"):
        Parallel(n_jobs=2, batch_size=1)(
            delayed(proc_tasks.sleeper_or_fail)(str(path), i) for i in range(2))
    assert_dies(int(path.read_text()), "the failed call")


def _kill_fork_server():
    from multiprocessing import forkserver
    pid = forkserver._forkserver._forkserver_pid
    assert pid is not None
    os.kill(pid, 9)
    deadline = time.monotonic() + 5
    while not _dead(pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    return pid


def _workers_stopped(workers):
    deadline = time.monotonic() + 5
    while not all(map(_dead, workers)) and time.monotonic() < deadline:
        time.sleep(0.01)
    return all(map(_dead, workers))


def test_fork_server_killed_between_calls_of_a_block():
    import multiprocessing

    from joblib_fast.backends.processes import reusable_pool_pids
    from joblib_fast.errors import TerminatedWorkerError
    ctx = multiprocessing.get_context("forkserver")
    expected = list(range(1, 101))
    with Parallel(n_jobs=2, backend=ctx) as p:
        assert p(delayed(abs)(-i) for i in expected) == expected
        workers = reusable_pool_pids()
        server = _kill_fork_server()
        # The block's pool learns of it through its workers' sentinels
        # (multiprocessing says exit code 255 for each, running or not).
        with pytest.raises(TerminatedWorkerError,
                           match=rf"fork server \(pid {server}\)"):
            p(delayed(abs)(-i) for i in expected)
        # The workers, which outlived their fork server, were stopped.
        assert workers and _workers_stopped(workers)
        assert p(delayed(abs)(-i) for i in expected) == expected


def test_fork_server_killed_between_plain_calls():
    import multiprocessing

    from joblib_fast.backends.processes import reusable_pool_pids
    ctx = multiprocessing.get_context("forkserver")
    expected = list(range(1, 101))
    assert Parallel(n_jobs=2, backend=ctx)(
        delayed(abs)(-i) for i in expected) == expected
    workers = reusable_pool_pids()
    _kill_fork_server()
    # The idle reusable pool is found broken and replaced: no error.
    assert Parallel(n_jobs=2, backend=ctx)(
        delayed(abs)(-i) for i in expected) == expected
    assert workers and _workers_stopped(workers)
