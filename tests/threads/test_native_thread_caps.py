"""Native thread pools (BLAS/OpenMP) are capped while threads run tasks,
and given their size back after; process workers cap what they loaded."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import pytest

np = pytest.importorskip("numpy")
threadpoolctl = pytest.importorskip("threadpoolctl")

from helpers.blas_tasks import blas_threads, blas_threads_at, blas_threads_pid, fail
from helpers.common import interrupt_script, subprocess_env

import joblib_fast
from joblib_fast import Parallel, delayed, parallel_config

# The parent's BLAS pool is set to this many threads for each test, so a
# cap is visible (below it) on any machine.
BIG = 4
NO_HANG = 30.0


def _cap(n_jobs):
    return max(1, joblib_fast.cpu_count() // n_jobs)


@pytest.fixture(autouse=True)
def big_blas_pool():
    if not [i for i in threadpoolctl.threadpool_info()
            if i["user_api"] == "blas"]:
        pytest.fail("NumPy's BLAS is not visible to threadpoolctl")
    with threadpoolctl.threadpool_limits(limits=BIG, user_api="blas"):
        before = blas_threads()
        assert before == BIG
        yield
        # Every test leaves the pool as it found it.
        assert blas_threads() == BIG


@pytest.mark.parametrize("n_jobs", [2, 3])
def test_threads_see_the_cap_and_it_is_restored(n_jobs):
    out = Parallel(n_jobs=n_jobs, backend="threading")(
        delayed(blas_threads)() for _ in range(8))
    assert out == [min(BIG, _cap(n_jobs))] * 8
    assert blas_threads() == BIG


def test_one_thread_is_not_capped():
    out = Parallel(n_jobs=1, backend="threading")(
        delayed(blas_threads)() for _ in range(3))
    assert out == [BIG] * 3


def test_inner_max_num_threads_overrides_the_rule():
    with parallel_config(backend="threading", inner_max_num_threads=3):
        out = Parallel(n_jobs=2)(delayed(blas_threads)() for _ in range(4))
    assert out == [3] * 4
    # The cap only lowers: a pool already smaller keeps its size.
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        with parallel_config(backend="threading", inner_max_num_threads=3):
            out = Parallel(n_jobs=2)(delayed(blas_threads)()
                                     for _ in range(4))
        assert out == [2] * 4
        assert blas_threads() == 2


def test_restored_after_a_task_error():
    with pytest.raises(ValueError, match="on purpose"):
        Parallel(n_jobs=2, backend="threading")(
            [delayed(blas_threads)(), delayed(fail)(), delayed(blas_threads)()])
    assert blas_threads() == BIG


@pytest.mark.parametrize("return_as", ["generator", "generator_unordered"])
def test_held_while_a_generator_is_open(return_as):
    gen = Parallel(n_jobs=2, backend="threading", return_as=return_as)(
        delayed(blas_threads)() for _ in range(20))
    assert next(gen) == min(BIG, _cap(2))
    assert blas_threads() == min(BIG, _cap(2))   # the call still runs
    gen.close()
    assert blas_threads() == BIG


def test_overlapping_calls_are_counted():
    """Two user threads run calls at once: the lower limit wins while both
    run, the other one's holds after the first ends, none after both."""
    barrier = threading.Barrier(2)
    first_done = threading.Event()
    seen = {}

    def long_call():
        with parallel_config(backend="threading", inner_max_num_threads=3):
            seen["a"] = Parallel(n_jobs=2)(
                [delayed(blas_threads_at)(barrier),
                 delayed(blas_threads_at)(barrier)])
            # Runs after the other call ended: its own cap only.
            assert first_done.wait(NO_HANG)
            seen["a_after"] = Parallel(n_jobs=2)(
                delayed(blas_threads)() for _ in range(2))

    def short_call():
        with parallel_config(backend="threading", inner_max_num_threads=2):
            seen["b"] = Parallel(n_jobs=2)(
                [delayed(blas_threads_at)(barrier),
                 delayed(blas_threads_at)(barrier)])

    # The two calls' tasks meet at one barrier of 2: they overlap.
    barrier = threading.Barrier(4)
    threads = [threading.Thread(target=long_call),
               threading.Thread(target=short_call)]
    for t in threads:
        t.start()
    threads[1].join(NO_HANG)
    first_done.set()
    threads[0].join(NO_HANG)
    assert not any(t.is_alive() for t in threads)
    assert seen["a"] == [2, 2] and seen["b"] == [2, 2]
    assert seen["a_after"] == [3, 3]
    assert blas_threads() == BIG


def test_nested_call_in_a_thread_task():
    def outer(_):
        inner = Parallel(n_jobs=2, backend="threading")(
            delayed(blas_threads)() for _ in range(2))
        return blas_threads(), inner

    out = Parallel(n_jobs=2, backend="threading")(
        delayed(outer)(i) for i in range(4))
    cap = min(BIG, _cap(2))
    assert out == [(cap, [cap, cap])] * 4
    assert blas_threads() == BIG


def test_with_block_caps_each_call_only():
    with Parallel(n_jobs=2, backend="threading") as parallel:
        assert parallel(delayed(blas_threads)() for _ in range(2)) == \
            [min(BIG, _cap(2))] * 2
        assert blas_threads() == BIG   # between the calls of the block
        assert parallel(delayed(blas_threads)() for _ in range(2)) == \
            [min(BIG, _cap(2))] * 2
    assert blas_threads() == BIG


def test_fork_workers_cap_what_they_loaded():
    """A fork worker inherits the parent's loaded OpenBLAS (BIG threads):
    the variables can no longer size it, the worker caps it itself."""
    import multiprocessing
    ctx = multiprocessing.get_context("fork")
    with parallel_config(backend="loky", context=ctx):
        out = Parallel(n_jobs=2)(delayed(blas_threads_pid)() for _ in range(4))
    assert {size for size, _ in out} == {min(BIG, _cap(2))}
    assert os.getpid() not in {pid for _, pid in out}
    with parallel_config(backend="loky", context=ctx,
                         inner_max_num_threads=3):
        out = Parallel(n_jobs=2)(delayed(blas_threads_pid)() for _ in range(4))
    assert {size for size, _ in out} == {3}


def test_a_child_forked_during_a_call_gets_the_sizes_back():
    """The calls holding the cap do not exist in a forked child: its
    libraries get their own sizes back (in C, for OpenBLAS)."""
    from helpers.common import in_forked_child

    from joblib_fast import _native_threads, _threads
    held = _native_threads.hold(1)
    try:
        assert blas_threads() == 1

        def child():
            assert blas_threads() == BIG
            assert _threads.cap_state()["holders"] == 0

        assert in_forked_child(child, timeout=NO_HANG) == 0
        assert blas_threads() == 1    # the parent's call still holds it
    finally:
        held.release()
    assert blas_threads() == BIG


def test_import_does_not_load_threadpoolctl():
    code = ("import sys, joblib_fast; "
            "print('threadpoolctl' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                         text=True, timeout=NO_HANG, env=subprocess_env(),
                         cwd=os.path.dirname(os.path.abspath(__file__)))
    assert out.stdout.strip() == "False", out.stderr


CTRL_C_SCRIPT = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    from threadpoolctl import threadpool_info, threadpool_limits
    from joblib_fast import Parallel, delayed

    def blas():
        return [i["num_threads"] for i in threadpool_info()
                if i["user_api"] == "blas"][0]

    def task(i, folder):
        open(os.path.join(folder, f"started-{i}-{blas()}"), "w").close()
        time.sleep(120)       # far longer than the test waits

    threadpool_limits(limits=4, user_api="blas")
    try:
        Parallel(n_jobs=2, backend="threading")(
            delayed(task)(i, sys.argv[1]) for i in range(4))
    except KeyboardInterrupt:
        print("after", blas(), flush=True)
        os._exit(0)   # the sleeping tasks are not waited for
""")


@pytest.mark.slow
def test_restored_after_ctrl_c(tmp_path):
    path = tmp_path / "script.py"
    path.write_text(CTRL_C_SCRIPT)

    def started():
        return len([n for n in os.listdir(tmp_path)
                    if n.startswith("started-")]) >= 2

    out, err, code = interrupt_script(path, [tmp_path], started, NO_HANG)
    seen = {n.rsplit("-", 1)[1] for n in os.listdir(tmp_path)
            if n.startswith("started-")}
    assert seen == {str(min(4, _cap(2)))}, (seen, err)
    assert "after 4" in out, err
    assert code == 0, err
