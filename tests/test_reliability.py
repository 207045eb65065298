"""Regression tests of issue 13 (reliability): exact exceptions from
process workers, argument parsing limits, shared-memory results after
fork and without descriptors, whole process trees killed on timeout, and
clear errors when a worker or the fork server is killed."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import psutil
import pytest
import rel_tasks

from joblib_fast import Parallel, delayed


def test_exception_building_its_message_comes_back_exactly():
    with pytest.raises(rel_tasks.CodeError) as info:
        Parallel(n_jobs=2)(delayed(rel_tasks.raise_code_error)(3)
                           for _ in range(2))
    assert str(info.value) == "failed with code 3"
    assert info.value.args == ("failed with code 3",)
    assert info.value.code == 3


def test_exception_whose_init_cannot_take_its_args_comes_back():
    import proc_tasks
    with pytest.raises(proc_tasks.UnpicklableError) as info:
        Parallel(n_jobs=2)(delayed(proc_tasks.raise_unpicklable_error)(i)
                           for i in range(2))
    assert info.value.args == ("left-right",)


@pytest.mark.parametrize("value", ["1e400", "1+" * 2500 + "1",
                                   "n_jobs*1e308*10", "-(" * 3000 + "1"
                                   + ")" * 3000],
                         ids=["1e400", "long-sum", "inf", "deep-parens"])
def test_pre_dispatch_out_of_range_is_a_value_error(value):
    with pytest.raises(ValueError, match="pre_dispatch"):
        Parallel(n_jobs=2, backend="threading", pre_dispatch=value)(
            delayed(abs)(i) for i in range(4))


@pytest.mark.parametrize("max_nbytes", [1e6, -1, 0.5, 1e300, float("inf")])
def test_max_nbytes_accepts_what_joblib_accepts(max_nbytes):
    np = pytest.importorskip("numpy")
    a = np.arange(10.0)
    out = Parallel(n_jobs=2, max_nbytes=max_nbytes)(
        delayed(np.sum)(a + i) for i in range(3))
    assert out == [np.sum(a + i) for i in range(3)]


def _is_memmap(a):
    import numpy as np
    return isinstance(a, np.memmap)


def test_max_nbytes_minus_one_memmaps_every_array():
    np = pytest.importorskip("numpy")
    small = np.arange(3.0)
    out = Parallel(n_jobs=2, max_nbytes=-1, mmap_mode="r")(
        delayed(_is_memmap)(small) for _ in range(2))
    assert out == [True, True]
    # Small results still come back right (-1 is not "never" any more).
    res = Parallel(n_jobs=2, max_nbytes=-1)(
        delayed(rel_tasks.big_array)(i, 10) for i in range(3))
    assert [r.tolist() for r in res] == [[float(i)] * 10 for i in range(3)]


@pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="memfd only")
def test_shared_result_is_copy_on_write_after_fork():
    pytest.importorskip("numpy")
    a = Parallel(n_jobs=2)(delayed(rel_tasks.big_array)(7) for _ in range(1))[0]
    assert a.nbytes > 1 << 20
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.read(r, 1)  # the parent wrote a[1] before this
            seen = a[1]
            a[0] = -1.0
            os._exit(0 if seen == 7.0 else 3)
        finally:
            os._exit(4)
    a[1] = 1.0
    os.write(w, b"x")
    _, status = os.waitpid(pid, 0)
    os.close(r)
    os.close(w)
    assert os.waitstatus_to_exitcode(status) == 0, "the child saw our write"
    assert a[0] == 7.0, "we saw the child's write"


_INHERITED = []


def _global_write():
    _INHERITED[0][0] = -1.0
    return float(_INHERITED[0][0])


@pytest.fixture(autouse=True)
def _inherited_reset():
    yield
    _INHERITED.clear()


@pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="memfd only")
def test_shared_result_through_fork_pool_stays_private():
    pytest.importorskip("numpy")
    import multiprocessing
    a = Parallel(n_jobs=2)(delayed(rel_tasks.big_array)(7) for _ in range(1))[0]
    _INHERITED.append(a)
    with multiprocessing.get_context("fork").Pool(1) as mp_pool:
        assert mp_pool.apply(_global_write) == -1.0
    assert a[0] == 7.0


_MANY_RESULTS = textwrap.dedent("""
    import resource, sys
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))
    import numpy as np
    from joblib_fast import Parallel, delayed
    def make(i):
        return np.full(600, i, dtype=np.float64)
    kept = []
    with Parallel(n_jobs=2, max_nbytes=1000) as p:
        for _ in range(8):
            kept += p(delayed(make)(i) for i in range(126))
    assert len(kept) == 1008, len(kept)
    assert all(k[0] == i % 126 for i, k in enumerate(kept))
    import os
    print(len(os.listdir("/proc/self/fd")))
""")


@pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="memfd only")
def test_kept_shared_results_hold_no_descriptor(tmp_path):
    pytest.importorskip("numpy")
    proc = subprocess.run([sys.executable, "-c", _MANY_RESULTS],
                          cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout.split()[-1]) < 100


def _dead(pid):
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _assert_dies(pid, after):
    """The task's own child is gone within 5 s (killed here if not)."""
    deadline = time.monotonic() + 5
    while not _dead(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    alive = not _dead(pid)
    if alive:
        os.kill(pid, 9)
    assert not alive, f"the task's own child survived {after}"


def test_timeout_kills_the_workers_process_tree(tmp_path):
    path = tmp_path / "grandchild.pid"
    with pytest.raises(TimeoutError):
        Parallel(n_jobs=2, timeout=2)(
            delayed(rel_tasks.spawn_sleeper_then_hang)(str(path))
            for _ in range(1))
    _assert_dies(int(path.read_text()), "the timeout")


def test_failed_call_kills_the_workers_process_tree(tmp_path):
    path = tmp_path / "grandchild.pid"
    with pytest.raises(ValueError, match="task 1 fails"):
        Parallel(n_jobs=2, batch_size=1)(
            delayed(rel_tasks.sleeper_or_fail)(str(path), i) for i in range(2))
    _assert_dies(int(path.read_text()), "the failed call")


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
