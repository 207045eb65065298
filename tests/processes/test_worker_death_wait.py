"""A dead worker is noticed by waiting on its process sentinel, not by
polling its closed pipe in a loop; a fork server that dies during a call
of a ``with Parallel(...)`` block fails that call with a clear error, and
the next call of the block starts a new fork server."""
from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time

import pytest

from joblib_fast import Parallel, delayed
from joblib_fast.backends.processes import context as proc_context
from joblib_fast.backends.processes import pool as proc_pool
from joblib_fast.errors import TerminatedWorkerError

# How long the fork server is kept stopped: the parent sees the dead
# worker's pipe closed at once, and its exit reported only after this.
STOPPED_SECONDS = 1.0


def stop_parent_and_exit(i):
    """Task 1 stops its fork server (so that its exit is not reported for a
    while) and dies; the others are quick."""
    if i == 1:
        os.kill(os.getppid(), signal.SIGSTOP)
        os._exit(3)
    time.sleep(0.01)
    return i


def kill_parent(i):
    if i == 3:
        os.kill(os.getppid(), signal.SIGKILL)
        time.sleep(0.5)
    return i


@pytest.fixture
def forkserver():
    return multiprocessing.get_context("forkserver")


@pytest.mark.timeout(60)
def test_a_dead_worker_costs_no_busy_loop_while_its_exit_is_reported(
        forkserver, monkeypatch, capfd):
    calls = []
    real_wait = proc_pool._mp_wait

    def counting_wait(*args, **kwargs):
        calls.append(time.monotonic())
        return real_wait(*args, **kwargs)

    monkeypatch.setattr(proc_pool, "_mp_wait", counting_wait)
    # Started before the call: the resumer needs the fork server's pid.
    assert Parallel(n_jobs=2, backend=forkserver)(
        delayed(abs)(-i) for i in range(4)) == [0, 1, 2, 3]
    server = proc_context.fork_server_pid()
    assert server is not None

    def resume():
        time.sleep(STOPPED_SECONDS)
        os.kill(server, signal.SIGCONT)
    resumer = threading.Thread(target=resume)
    resumer.start()
    try:
        calls.clear()
        with pytest.raises(TerminatedWorkerError, match="exit code 3"):
            Parallel(n_jobs=2, backend=forkserver, batch_size=1)(
                delayed(stop_parent_and_exit)(i) for i in range(4))
    finally:
        resumer.join()
        os.kill(server, signal.SIGCONT)
    # Polling the closed pipe woke the caller thousands of times in that
    # second; waiting on the sentinel wakes it at the core's poll period.
    assert len(calls) < 100, len(calls)
    capfd.readouterr()  # the worker's death is expected


@pytest.mark.timeout(60)
def test_fork_server_death_during_a_call_of_a_block(forkserver, capfd):
    expected = list(range(8))
    with Parallel(n_jobs=2, backend=forkserver, batch_size=1) as parallel:
        assert parallel(delayed(abs)(i) for i in expected) == expected
        server = proc_context.fork_server_pid()
        with pytest.raises(TerminatedWorkerError,
                           match=rf"fork server \(pid {server}\)"):
            parallel(delayed(kill_parent)(i) for i in expected)
        # The next call of the block works, on a new fork server.
        assert parallel(delayed(abs)(i) for i in expected) == expected
        assert proc_context.fork_server_pid() not in (None, server)
    capfd.readouterr()
