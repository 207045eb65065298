"""The threading backend's caller runs batches itself.

While it waits for a list of short tasks, the calling thread runs queued
batches as one of the n_jobs workers (n_jobs - 1 pool threads then run the
others), under the configuration a worker has; when the threads take turns
(tasks holding the GIL, or handing it over every few microseconds), it
runs them alone when that is quicker.  Not with a
generator output, a timeout, a per-worker initializer or long tasks.
"""
from __future__ import annotations

import os
import textwrap
import threading
import time

import pytest
from helpers.common import interrupt_script
from joblib_fast._kernels import burn, calibrate

from joblib_fast import Parallel, _threads, delayed, parallel_config
from joblib_fast._context import nested_backend_config
from joblib_fast._core import Call, ThreadPool, in_worker_thread
from joblib_fast.backends.base import ThreadingBackend

N_SHORT = 3000
NO_HANG = 30.0


@pytest.fixture(scope="module")
def k20us():
    return calibrate(20e-6)


def where(k):
    burn(k)
    return threading.get_ident()


def in_caller(idents):
    me = threading.get_ident()
    return sum(ident == me for ident in idents)


@pytest.mark.parametrize("n_jobs", [2, 3])
def test_caller_runs_some_batches_of_short_tasks(k20us, n_jobs):
    def where_named(k):
        return where(k), threading.current_thread().name
    out = Parallel(n_jobs=n_jobs, backend="threading")(
        delayed(where_named)(k20us) for _ in range(N_SHORT))
    assert len(out) == N_SHORT
    assert 0 < in_caller([ident for ident, _ in out]) < N_SHORT
    # The other tasks ran on the shared pool's threads (by name: a thread
    # the pool grew for this call may have exited since).
    assert all(name.startswith(_threads.SHARED_THREAD_NAME + "-")
               for ident, name in out if ident != threading.get_ident())


@pytest.mark.parametrize("options", [
    {"return_as": "generator"},
    {"return_as": "generator_unordered"},
    {"timeout": 60},
    {"initializer": int},
], ids=["generator", "generator_unordered", "timeout", "initializer"])
def test_caller_runs_no_task(k20us, options):
    idents = list(Parallel(n_jobs=2, backend="threading", **options)(
        delayed(where)(k20us) for _ in range(N_SHORT)))
    assert len(idents) == N_SHORT
    assert in_caller(idents) == 0


def test_caller_runs_no_long_task():
    # 15 ms per task: above the 10 ms the caller accepts (it sees Ctrl-C
    # only between the batches it runs).
    idents = Parallel(n_jobs=2, backend="threading")(
        delayed(lambda: (time.sleep(0.015), threading.get_ident())[1])()
        for _ in range(12))
    assert in_caller(idents) == 0


@pytest.mark.parametrize("n_jobs", [2, 3])
def test_no_more_than_n_jobs_tasks_at_once(n_jobs):
    lock = threading.Lock()
    state = {"now": 0, "most": 0}

    def task():
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        time.sleep(0.0005)  # releases the GIL: the others may start
        with lock:
            state["now"] -= 1
        return threading.get_ident()

    idents = Parallel(n_jobs=n_jobs, backend="threading")(
        delayed(task)() for _ in range(600))
    assert in_caller(idents) > 0
    assert 2 <= state["most"] <= n_jobs, state


def test_tasks_in_the_caller_run_as_in_a_worker(k20us):
    def probe():
        burn(k20us)
        nested = Parallel(n_jobs=2)(delayed(threading.get_ident)()
                                    for _ in range(2))
        return (threading.get_ident(), in_worker_thread(),
                _threads.max_workers(-1), len(set(nested)))

    with parallel_config(n_jobs=3, verbose=0):
        out = Parallel(n_jobs=2, backend="threading")(
            delayed(probe)() for _ in range(N_SHORT // 2))
        # The caller's own configuration is back after the call.
        from joblib_fast._context import current_config
        assert current_config()["n_jobs"] == 3
    me = threading.get_ident()
    mine = [row for row in out if row[0] == me]
    assert mine, "the caller ran no batch"
    for _, flag, pfor_workers, nested_threads in out:
        assert flag is True             # in_worker_thread()
        assert pfor_workers == 1        # parallel_for runs inline
        assert nested_threads == 1      # nested calls run sequentially
    assert not in_worker_thread()
    assert _threads.max_workers(-1) == _threads.thread_cap()


def test_errors_in_caller_run_batches_are_raised(k20us):
    def maybe_fail(i):
        burn(k20us)
        if i == N_SHORT - 10:
            raise ValueError(f"task {i} failed")
        return i

    with pytest.raises(ValueError, match=f"task {N_SHORT - 10} failed"):
        Parallel(n_jobs=2, backend="threading")(
            delayed(maybe_fail)(i) for i in range(N_SHORT))
    # The pool is usable again (its limit restored).
    assert Parallel(n_jobs=2, backend="threading")(
        delayed(abs)(-i) for i in range(100)) == list(range(100))


def hand_over_often(i):
    """Releases the GIL 20 times for a few dozen nanoseconds each: two
    threads running it hand the GIL over so often that the hand-overs cost
    more than the second thread gains (on any machine)."""
    for _ in range(20):
        burn(10)
    return threading.get_ident()


def longest_in_caller(idents):
    me, longest, run = threading.get_ident(), 0, 0
    for ident in idents:
        run = run + 1 if ident == me else 0
        longest = max(longest, run)
    return longest


# The choice below is measured, and so is the machine: a window that
# catches the machine busy elsewhere (another process on a core) can keep
# the team for a stretch, and on a machine with no core to spare the team
# gets more CPU time than one thread, so alone may rightly lose.  A call is
# made up to this many times and the choice must show in one; a rule that
# never goes alone fails every one.
ATTEMPTS = 5


@pytest.mark.slow
def test_tasks_that_hand_the_gil_over_run_in_the_caller_alone():
    # The caller measures the team against itself alone and keeps the
    # quicker: here alone, for long stretches (every task in the caller).
    # With no trial alone (_core._tuning(ALONE_TRY_BELOW=0)), the longest
    # run of these tasks in the caller is a few batches, a few thousand
    # tasks at most on a busy machine: a long run is well above that.
    seen = []
    for _ in range(ATTEMPTS):
        parallel = Parallel(n_jobs=2, backend="threading")
        idents = parallel(delayed(hand_over_often)(i)
                          for i in range(120_000))
        stats = parallel.last_call_stats
        assert stats.caller_tasks == in_caller(idents)
        longest = longest_in_caller(idents)
        seen.append((stats.alone_trials, stats.alone_stretches, longest))
        if stats.alone_stretches >= 1:
            # The first stretch alone follows a trial, whatever came after.
            assert stats.alone_trials >= 1, seen
            if longest >= 8_000:
                break
    else:
        pytest.fail(f"no call ran alone for long: (trials, stretches, "
                    f"longest run in the caller) {seen}")


@pytest.mark.slow
def test_the_team_comes_back_when_the_tasks_become_gil_free():
    # The same tasks, then GIL-free ones: the choice is measured again
    # within the call (after as long as the call has run), and the pool
    # thread runs tasks again by the end.
    k50us = calibrate(50e-6)
    seen = []
    for _ in range(ATTEMPTS):
        tasks = [delayed(hand_over_often)(i) for i in range(100_000)]
        tasks += [delayed(where)(k50us) for _ in range(20_000)]
        parallel = Parallel(n_jobs=2, backend="threading")
        idents = parallel(tasks)
        stretches = parallel.last_call_stats.alone_stretches
        # The team back by the end, whether or not alone was chosen.
        assert in_caller(idents[-5000:]) < 5000
        seen.append(stretches)
        if stretches >= 1:
            break
    else:
        pytest.fail(f"no call went alone at all: stretches {seen}")


def test_gil_free_kernels_keep_the_team():
    # 200 us GIL-free tasks: the threads run at once, no trial alone.
    k = calibrate(200e-6)
    parallel = Parallel(n_jobs=2, backend="threading")
    idents = parallel(delayed(where)(k) for _ in range(1500))
    assert parallel.last_call_stats.alone_stretches == 0
    assert parallel.last_call_stats.caller_tasks == in_caller(idents)
    assert 0 < in_caller(idents) < len(idents)


def test_the_caller_runs_a_batch_its_pool_thread_has_not_begun(k20us):
    # A pool thread takes a batch from the queue without the GIL, then
    # waits for the GIL to begin it, and the caller running tasks that hold
    # the GIL can keep it waiting for long.  Here the thread is held where
    # the pool runs a lease's per-thread start, after it took its batch:
    # the caller runs that batch itself and the call ends, the thread
    # still held (before, the call waited for it).
    release = threading.Event()
    held = threading.Event()        # set while the first thread is held
    entered = []
    lock = threading.Lock()

    def hold_the_first_thread():
        with lock:
            first = not entered
            entered.append(threading.get_ident())
        if first:
            held.set()
            try:
                release.wait(NO_HANG)
            finally:
                held.clear()

    pool = ThreadPool(2, shared=True, initializer=hold_the_first_thread,
                      caller_config=nested_backend_config(ThreadingBackend()))
    try:
        call = Call(pool, (delayed(where)(k20us) for _ in range(400)),
                    pre_dispatch=4, n_workers=2)
        idents = call.run_list()
        ended_while_held = held.is_set()
    finally:
        release.set()
        shut = pool.shutdown(wait=True, timeout=NO_HANG)
    assert shut
    assert ended_while_held
    assert len(idents) == 400
    assert entered[0] not in idents     # the held thread ran no task
    assert in_caller(idents) > 0


def test_tasks_that_wait_keep_every_thread():
    # Sleeping tasks are off the CPU like tasks waiting for the GIL, but
    # they gain from every thread: the caller never runs them alone.
    parallel = Parallel(n_jobs=4, backend="threading")
    out = parallel(delayed(time.sleep)(0.002) for _ in range(1500))
    assert out == [None] * 1500
    assert parallel.last_call_stats.alone_stretches == 0


SCRIPT = textwrap.dedent("""
    import os, sys, threading
    from joblib_fast import Parallel, delayed
    from joblib_fast._kernels import burn, calibrate

    k = calibrate(50e-6)
    main = threading.get_ident()

    def task(i):
        burn(k)
        if threading.get_ident() == main and i % 100 == 0:
            open(os.path.join(sys.argv[1], "caller-ran"), "w").close()
        return i

    def forever():
        i = 0
        while True:
            yield delayed(task)(i)
            i += 1

    try:
        Parallel(n_jobs=2, backend="threading")(forever())
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        raise
""")


def test_ctrl_c_while_the_caller_runs_batches(tmp_path):
    path = tmp_path / "script.py"
    path.write_text(SCRIPT)
    out, err, returncode = interrupt_script(
        path, [tmp_path], lambda: os.path.exists(tmp_path / "caller-ran"),
        NO_HANG)
    assert "interrupted" in out, err
    assert "KeyboardInterrupt" in err
    assert returncode != 0
