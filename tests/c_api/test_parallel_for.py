"""parallel_for, the C API for Cython code.

A downstream module (pfor_consumer.pyx beside this file, and the user
guide's example) is
built once per session in a temporary folder, in a subprocess, against the
installed package only: ``include_dirs=[joblib_fast.get_include()]``, no
source tree on the path, nothing to link.  A failed build is an error.
"""
from __future__ import annotations

import ctypes
import importlib
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap
import threading
import time
import traceback

import pytest
from helpers import daemonic_tasks
from helpers.common import (
    doc_blocks,
    in_forked_child,
    in_user_threads,
    shared_threads,
)

import joblib_fast
from joblib_fast import Parallel, _threads, cpu_count, delayed

HERE = pathlib.Path(__file__).resolve().parent
GUIDE = "docs/user_guide/parallel_for.md"
# Nearly every test here needs the session's Cython build of the probes
# (a compiler run of tens of seconds): out of the quick loop.
pytestmark = pytest.mark.slow
MODULES = ("pfor_consumer", "pfor_abi_probe", "mykernels")

SETUP = textwrap.dedent("""
    import os, sys
    import joblib_fast
    from Cython.Build import cythonize
    from setuptools import Extension, setup

    # The installed package, never a source checkout.
    print("joblib_fast from", joblib_fast.__file__)
    assert not os.path.exists(os.path.join(
        os.path.dirname(os.path.dirname(joblib_fast.__file__)), "src_c"))
    extensions = [Extension(name, [name + ".pyx"],
                            include_dirs=[joblib_fast.get_include()])
                  for name in {modules!r}]
    setup(ext_modules=cythonize(extensions, language_level=3, quiet=True),
          script_args=["build_ext", "--inplace"])
""")


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pfor-build")
    for name in MODULES[:2]:
        shutil.copy(HERE / f"{name}.pyx", folder / f"{name}.pyx")
    (folder / "mykernels.pyx").write_text(doc_blocks(GUIDE, "cython")[0])
    (folder / "setup.py").write_text(SETUP.format(modules=MODULES))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "setup.py"], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=600,
                          check=False)
    if proc.returncode != 0:
        pytest.fail(f"building the parallel_for consumer failed:\n"
                    f"{proc.stdout}\n{proc.stderr}", pytrace=False)
    sys.path.insert(0, str(folder))
    try:
        yield folder, {name: importlib.import_module(name)
                       for name in MODULES}
    finally:
        sys.path.remove(str(folder))


def python_outside_the_tree(code, folder, **env):
    """``python -c code folder`` run in `folder`, so that it imports the
    installed joblib_fast, never the checkout it may be run from."""
    environ = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    environ.update(env)
    return subprocess.run([sys.executable, "-c", code, str(folder)],
                          cwd=folder, env=environ, capture_output=True,
                          text=True, timeout=120, check=False)


@pytest.fixture
def consumer(built):
    return built[1]["pfor_consumer"]


def pool_idents():
    return {t.ident for t in shared_threads()}


def check_visit(consumer, out, start, stop, grain, n_workers):
    """Every index once; chunks of at least `grain`; worker ids in range;
    worker 0 is the caller, the others pool threads, one thread each."""
    n = max(stop - start, 0)
    assert out["rc"] == 0
    assert out["counts"] == [1] * n
    chunks = out["chunks"]
    assert sum(b - a for a, b, _, _ in chunks) == n
    limit = consumer.max_workers(n_workers)
    pool = pool_idents()
    thread_of = {}
    for a, b, worker, thread in chunks:
        assert start <= a < b <= stop
        assert b - a >= min(grain, n)
        assert 0 <= worker < limit
        if worker == 0:
            assert thread == out["caller"]
        else:
            assert thread in pool
        assert thread_of.setdefault(worker, thread) == thread


RANGES = [(0, 0), (5, 5), (10, 3), (0, 1), (0, 3), (7, 20), (-50, 50),
          (0, 10 ** 6)]


@pytest.mark.parametrize("n_workers", (-1, 1, 2, 3, -2))
@pytest.mark.parametrize("grain", (0, 1, 7, 1000))
@pytest.mark.parametrize(("start", "stop"), RANGES)
def test_every_index_once(consumer, start, stop, grain, n_workers):
    out = consumer.visit(start, stop, grain, n_workers)
    check_visit(consumer, out, start, stop, grain, n_workers)


def test_every_index_once_when_called_with_the_gil(consumer):
    out = consumer.visit(0, 100_000, 0, -1, gil=True)
    check_visit(consumer, out, 0, 100_000, 0, -1)


def test_max_workers_follows_n_jobs_rules(consumer):
    cap = _threads.thread_cap()
    assert consumer.max_workers(-1) == cap
    assert consumer.max_workers(-2) == max(cap - 1, 1)
    assert consumer.max_workers(-1000) == 1
    assert consumer.max_workers(5) == 5
    assert consumer.max_workers(0) == 0


def test_bodies_run_on_the_pool_threads(consumer):
    # Slow enough bodies that an idle pool thread joins (retried: the
    # machine may be busy with other work).
    for spin in (2_000, 20_000, 200_000):
        out = consumer.visit(0, 400, 1, -1, spin=spin)
        check_visit(consumer, out, 0, 400, 1, -1)
        helpers = {w for _, _, w, _ in out["chunks"] if w != 0}
        if helpers:
            break
    assert helpers, "no pool thread ever joined"
    assert {t for _, _, w, t in out["chunks"] if w != 0} <= pool_idents()


def test_thread_count_does_not_grow_over_many_calls(consumer):
    assert consumer.count(10_000) == 10_000
    before = threading.active_count()
    pool = set(shared_threads())
    for _ in range(1000):
        assert consumer.count(10_000) == 10_000
    # No more than before: another test's thread may end meanwhile.
    assert threading.active_count() <= before
    assert set(shared_threads()) == pool
    assert len(pool) <= _threads.thread_cap()


@pytest.mark.parametrize("code", (7, -5, 1))
def test_first_non_zero_code_is_returned_and_stops_the_loop(consumer, code):
    n = 200_000
    out = consumer.visit(0, n, 100, -1, spin=50, bad=0, code=code)
    assert out["rc"] == code
    # The failing chunk returned at once; chunks not yet started never
    # ran: far fewer indices than the range were visited.
    assert sum(out["counts"]) < n // 2
    assert max(out["counts"]) <= 1


@pytest.mark.parametrize("gil", (False, True))
@pytest.mark.parametrize("where", ("first", "last"))
def test_python_exception_in_a_body_is_reraised(consumer, gil, where):
    n = 2000
    bad = 0 if where == "first" else n - 1
    with pytest.raises(ValueError, match=f"^bad index {bad}$"):
        consumer.visit(0, n, 1, -1, spin=2000, bad=bad, code=-1, gil=gil)
    # The pool still works afterwards.
    out = consumer.visit(0, n, 1, -1)
    check_visit(consumer, out, 0, n, 1, -1)


@pytest.mark.parametrize("code", (0, 3))
def test_no_body_runs_after_return(consumer, code):
    # Bodies long enough that pool threads are inside when the caller runs
    # out of chunks (or fails at once): parallel_for waits for them.
    bad = None if code == 0 else 0
    out = consumer.visit(0, 400, 1, -1, spin=5000, bad=bad, code=code,
                         linger=0.05)
    assert out["rc"] == code
    assert out["in_flight_after"] == 0
    assert out["started_after"] == 0


def _until_a_helper_ran(call, tries=50):
    """Repeat ``call()`` (-> (value, helper_ran)) until a pool thread ran
    the failing body: the test then checks the pool thread's path."""
    for _ in range(tries):
        value, helper_ran = call()
        if helper_ran:
            return value
    pytest.fail(f"no pool thread joined in {tries} calls")


def _raise_in_helper():
    raise KeyError("from a pool thread")


@pytest.mark.parametrize("gil", (False, True))
def test_exception_from_a_pool_thread_keeps_type_message_traceback(consumer,
                                                                   gil):
    def call():
        try:
            consumer.on_helpers(_raise_in_helper, gil=gil)
        except KeyError as exc:
            return exc, True
        return None, False

    exc = _until_a_helper_ran(call)
    assert exc.args == ("from a pool thread",)
    frames = [f.name for f in traceback.extract_tb(exc.__traceback__)]
    assert frames[-1] == "_raise_in_helper", frames


def test_minus_one_without_an_exception_on_a_pool_thread(consumer):
    def call():
        try:
            consumer.on_helpers(lambda: None, code=-1, always=True)
        except SystemError as exc:
            return str(exc), True
        return None, False

    assert "without setting" in _until_a_helper_ran(call)


def test_a_stray_exception_with_another_code_is_dropped(consumer):
    # A body that sets an exception but returns 5 breaks the rule; the code
    # is returned and the exception dropped, in the caller and in the pool
    # thread, where it would otherwise poison what that thread runs next.
    assert _until_a_helper_ran(
        lambda: consumer.on_helpers(_raise_in_helper, code=5)) == 5
    for _ in range(20):   # both pool threads, whichever failed above
        rc, _ = consumer.on_helpers(lambda: None, code=-1, spin=2_000)
        assert rc == 0
    out = Parallel(n_jobs=2, backend="threading", batch_size=1)(
        delayed(abs)(-i) for i in range(20))
    assert out == list(range(20))


def test_minus_one_without_an_exception_is_a_system_error(consumer):
    with pytest.raises(SystemError, match="without setting"):
        consumer.minus_one_without_exception(100)


def test_bad_arguments(consumer):
    with pytest.raises(ValueError, match="n_workers == 0"):
        consumer.bad_call(0, 0)
    with pytest.raises(ValueError, match="grain"):
        consumer.bad_call(-1, -1)
    big = sys.maxsize
    with pytest.raises(OverflowError, match="larger than PY_SSIZE_T_MAX"):
        consumer.bad_call(0, -1, -2, big)
    # The extremes themselves are fine.
    assert consumer.bad_call(0, -1, -big - 1, -big + 999) == 1000
    assert consumer.bad_call(0, -1, big - 1000, big) == 1000


def test_automatic_grain_shares_a_costly_tail(consumer):
    # Only the last 5% of the range costs anything: with grain 0 no chunk
    # holds more than half of it (guided chunks, a small floor), and a
    # pool thread runs some of it.
    for _ in range(20):
        largest, helper_ran, visited = consumer.cheap_start(4000, 3800,
                                                            50_000)
        assert visited == 200
        assert largest <= 100
        if helper_ran:
            return
    pytest.fail("no pool thread ran a costly chunk in 20 calls")


def test_nested_parallel_for_runs_inline(consumer):
    out = consumer.visit(0, 64, 1, -1, spin=20_000, nested=True)
    check_visit(consumer, out, 0, 64, 1, -1)
    # Every nested call ran on its body's thread, as worker 0 only.
    assert out["nested_ok"] == len(out["chunks"])
    assert out["nested_mw"] == 1


def test_inline_inside_a_threading_backend_task(consumer):
    def task(i):
        out = consumer.visit(0, 500, 1, -1, spin=1000)
        return (threading.get_ident(), consumer.max_workers(-1),
                {(w, t) for _, _, w, t in out["chunks"]}, out["counts"])

    results = Parallel(n_jobs=2, backend="threading")(
        delayed(task)(i) for i in range(6))
    for ident, limit, chunks, counts in results:
        assert limit == 1
        assert chunks == {(0, ident)}
        assert counts == [1] * 500


def test_threading_backend_and_parallel_for_share_the_pool(consumer):
    # While a threading call keeps every pool thread busy, parallel_for from
    # another thread gets no pool thread (no oversubscription) and no new
    # thread is started for it: it runs on its caller alone.
    base = _threads.shared_workers().base
    started = threading.Semaphore(0)
    release = threading.Event()

    def task(i):
        started.release()
        release.wait(60)
        return threading.get_ident()

    result = {}

    def run():
        result["out"] = Parallel(n_jobs=base, backend="threading",
                                 batch_size=1)(
            delayed(task)(i) for i in range(base))

    caller = threading.Thread(target=run)
    caller.start()
    try:
        for _ in range(base):
            assert started.acquire(timeout=60)
        busy = set(shared_threads())
        assert len(busy) == base
        out = consumer.visit(0, 2000, 1, -1, spin=2000)
        assert set(shared_threads()) == busy
    finally:
        release.set()
        caller.join(60)
    check_visit(consumer, out, 0, 2000, 1, -1)
    assert {(w, t) for _, _, w, t in out["chunks"]} == {(0, out["caller"])}
    assert set(result["out"]) == {t.ident for t in busy}


def test_two_calling_threads(consumer):
    def user(k):
        for i in range(200):
            n = 1000 + 37 * i + k
            out = consumer.visit(k, k + n, i % 5, -1)
            check_visit(consumer, out, k, k + n, i % 5, -1)

    errors, _ = in_user_threads(user, 2, 120)
    assert not errors, errors[:1]


def a_pool_thread_joins(consumer):
    """Ranges of longer and longer bodies until a pool thread of this
    process runs a chunk; every range visited right."""
    for spin in (2_000, 20_000, 200_000):
        out = consumer.visit(0, 400, 1, -1, spin=spin)
        check_visit(consumer, out, 0, 400, 1, -1)
        if any(w != 0 for _, _, w, _ in out["chunks"]):
            return
    raise AssertionError("no pool thread joined a range")


def test_forked_child_gets_a_working_pool(consumer):
    consumer.visit(0, 1000, 1, -1, spin=1000)  # the parent's pool exists
    assert in_forked_child(lambda: a_pool_thread_joins(consumer),
                           timeout=60) == 0


def test_daemonic_pool_worker_runs_parallel_for_on_threads(consumer,
                                                           monkeypatch):
    # multiprocessing forbids children to a daemonic process, not threads:
    # a process-backed call runs in place there, parallel_for does not.
    # OMP_NUM_THREADS caps parallel_for in a worker process (a dask
    # LocalCluster with processes sets it to 1 in its parent): unset, the
    # forked worker inherits none.
    import multiprocessing
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    with multiprocessing.get_context("fork").Pool(1) as pool:
        daemon, outs, joined = pool.apply_async(
            daemonic_tasks.parallel_for_call, ("pfor_consumer",)).get(60)
        pool.close()
        pool.join()
    assert daemon is True
    for out in outs:
        assert out["rc"] == 0 and out["counts"] == [1] * 400
    assert joined, "no pool thread of the worker joined a range"


def test_threading_with_block_in_a_forked_child():
    # A with block's pool (a lease on the parent's threads) is inherited by
    # a child forked inside the block: the child's next call gets threads
    # of its own instead of queueing batches for threads that do not exist
    # there, and leaving the block touches nothing of the parent's pool.
    def child(parallel):
        out = parallel(delayed(abs)(-i) for i in range(100))
        assert out == list(range(100))
        assert shared_threads(), "the child's call ran on no pool thread"

    with Parallel(n_jobs=2, backend="threading") as parallel:
        assert parallel(delayed(abs)(-i) for i in range(10)) == list(range(10))
        assert in_forked_child(lambda: child(parallel), timeout=60) == 0
        # The parent's block goes on with its own pool.
        assert parallel(delayed(abs)(-i) for i in range(10)) == list(range(10))


def test_forked_inside_a_threading_task_gets_a_pool(consumer):
    # The forking thread was a pool thread running a task: in the child it
    # is the main thread of a new process, and parallel_for runs on the
    # child's own pool, not inline.
    def child():
        assert consumer.max_workers(-1) == _threads.thread_cap()
        a_pool_thread_joins(consumer)

    def task():
        assert consumer.max_workers(-1) == 1   # inline here
        return in_forked_child(child, timeout=60)

    (code,) = Parallel(n_jobs=2, backend="threading")(
        delayed(task)() for _ in range(1))
    assert code == 0


def test_n_workers_up_to_int_max(consumer):
    # limit - 1 places: a count doubled in an int overflowed above 2**30.
    for n_workers in (2 ** 30 + 1, 2 ** 31 - 1):
        assert consumer.max_workers(n_workers) == n_workers
        for _ in range(20):
            out = consumer.visit(0, 400, 1, n_workers, spin=20_000)
            check_visit(consumer, out, 0, 400, 1, n_workers)
            if any(w != 0 for _, _, w, _ in out["chunks"]):
                break
        else:
            pytest.fail(f"n_workers={n_workers}: no pool thread joined")


SUBINTERPRETER = """
import sys, threading
sys.path.insert(0, sys.argv[1])
import _xxsubinterpreters as interpreters
import pfor_consumer
interpreters.destroy(interpreters.create())
# Without the GIL, with it, and a body taking the GIL on the pool threads.
assert pfor_consumer.count(100_000) == 100_000
out = pfor_consumer.visit(0, 2000, 1, -1, spin=2000, gil=True)
assert out["counts"] == [1] * 2000
try:
    pfor_consumer.visit(0, 2000, 1, -1, spin=2000, bad=1999, code=-1)
except ValueError as exc:
    assert str(exc) == "bad index 1999"
else:
    raise AssertionError("no exception")
print("ok")
"""


def test_calls_after_a_subinterpreter_existed(built):
    # PyGILState_Check() says "held" in every thread once a subinterpreter
    # was created: parallel_for must not release a GIL it does not hold.
    proc = python_outside_the_tree(SUBINTERPRETER, built[0])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "ok"


SPIN = """
import sys
sys.path.insert(0, sys.argv[1])
import pfor_consumer
for n in (10, 1000, 100_000):
    for _ in range(50):
        assert pfor_consumer.count(n) == n
print("ok")
"""


@pytest.mark.parametrize("value", ("0", "1", "20000"))
def test_spin_setting(built, value):
    # JOBLIB_FAST_SPIN_US: how long helpers poll for the next range (0:
    # they sleep at once).  Calls back to back stay right with any value.
    proc = python_outside_the_tree(SPIN, built[0], JOBLIB_FAST_SPIN_US=value)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "ok"


@pytest.mark.parametrize("value", ("-1", "abc", "1e9"))
def test_bad_spin_setting_is_a_clear_error(built, value):
    proc = python_outside_the_tree("import joblib_fast", built[0],
                                   JOBLIB_FAST_SPIN_US=value)
    assert proc.returncode != 0
    assert "JOBLIB_FAST_SPIN_US must be microseconds" in proc.stderr
    assert repr(value) in proc.stderr


def test_queued_tasks_after_a_range_all_get_threads(consumer):
    # Right after a parallel_for a helper polls for work: two tasks pushed
    # before it takes the first must not both be left to it (they meet at
    # a barrier: one thread for both would wait forever).
    broken = 0
    for _ in range(40):
        consumer.visit(0, 2000, 1, -1, spin=20_000)
        barrier = threading.Barrier(2, timeout=2)
        try:
            Parallel(n_jobs=2, backend="threading")(
                delayed(barrier.wait)() for _ in range(2))
        except threading.BrokenBarrierError:
            broken += 1
        time.sleep(0.005)
    assert broken == 0, f"{broken} of 40 calls ran both tasks on one thread"


def _max_workers_in_worker(folder):
    sys.path.insert(0, folder)
    import pfor_consumer
    return pfor_consumer.max_workers(-1), os.environ.get("OMP_NUM_THREADS")


def test_process_worker_uses_its_thread_cap(built):
    folder = str(built[0])
    out = Parallel(n_jobs=2, backend="loky")(
        delayed(_max_workers_in_worker)(folder) for _ in range(2))
    for limit, omp in out:
        assert omp is not None
        assert limit == max(min(cpu_count(), int(omp)), 1)


def test_abi_mismatch_is_an_import_error_naming_both_versions(built,
                                                             monkeypatch):
    probe = built[1]["pfor_abi_probe"]
    table = (ctypes.c_int * 16)(999)
    new = ctypes.PYFUNCTYPE(ctypes.py_object, ctypes.c_void_p,
                            ctypes.c_void_p, ctypes.c_void_p)(
        ("PyCapsule_New", ctypes.pythonapi))
    name = ctypes.create_string_buffer(
        b"joblib_fast._threads.parallel_for_api")
    capsule = new(ctypes.addressof(table), ctypes.addressof(name), None)
    monkeypatch.setattr(_threads, "parallel_for_api", capsule)
    version = _threads.PARALLEL_FOR_ABI_VERSION
    with pytest.raises(ImportError,
                       match=f"ABI version {version}\\b.*ABI version 999"):
        probe.do_import()
    monkeypatch.delattr(_threads, "parallel_for_api")
    with pytest.raises(ImportError, match="no parallel_for table"):
        probe.do_import()
    monkeypatch.undo()
    probe.do_import()


def test_get_include_holds_the_header():
    header = pathlib.Path(joblib_fast.get_include(), "joblib_fast",
                          "parallel_for.h")
    assert header.is_file()
    assert pathlib.Path(joblib_fast.__file__).with_name(
        "parallel_for.pxd").is_file()


def test_guide_example_runs(built):
    mykernels = built[1]["mykernels"]
    import numpy as np
    x = np.arange(100_000, dtype=float)
    mykernels.double_all(x)
    assert (x == 2 * np.arange(100_000, dtype=float)).all()
    # The guide's build recipe is the one used here.
    (setup,) = [b for b in doc_blocks(GUIDE, "python") if "Extension(" in b]
    assert "include_dirs=[joblib_fast.get_include()]" in setup


INTERRUPT = """
import os, signal, sys, threading, time
sys.path.insert(0, sys.argv[1])
import pfor_consumer
spin = 20_000
t = time.perf_counter()
pfor_consumer.spin_with_the_gil(200, spin)
per_index = (time.perf_counter() - t) / 200
n = int(8.0 / per_index)          # several seconds even on two CPUs
threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
try:
    pfor_consumer.spin_with_the_gil(n, spin)
except KeyboardInterrupt:
    print("interrupted", pfor_consumer.visited_so_far(), n)
else:
    print("finished", n, n)
"""


def test_ctrl_c_stops_a_long_loop_called_with_the_gil(built):
    # Called from Python (GIL held), parallel_for looks for Ctrl-C between
    # the caller's chunks: KeyboardInterrupt is raised, and no chunk
    # starts after it (the loop stops well before its end).
    proc = python_outside_the_tree(INTERRUPT, built[0])
    assert proc.returncode == 0, proc.stderr[-3000:]
    word, visited, n = proc.stdout.split()
    assert word == "interrupted"
    assert int(visited) < int(n)


# ------------------------------------------- native thread pools (BLAS)
# While a parallel_for runs on n threads, the process-wide pools of the
# libraries its bodies may call (OpenBLAS, MKL) are capped at cpu_count()
# // n, in C, sharing one count with the threading backend's calls.

BIG = 4  # the BLAS pool's size around each test: a cap shows below it


@pytest.fixture
def blas_pool():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from helpers.blas_tasks import blas_threads
    with threadpoolctl.threadpool_limits(limits=BIG, user_api="blas"):
        assert blas_threads() == BIG
        yield blas_threads
        assert blas_threads() == BIG


def _pfor_limit(consumer):
    return max(1, cpu_count() // consumer.max_workers(-1))


@pytest.mark.parametrize("gil", (False, True))
def test_bodies_on_pool_threads_see_the_blas_cap(consumer, blas_pool, gil):
    seen = []

    def call():
        seen.clear()
        rc, helper_ran = consumer.on_helpers(
            lambda: seen.append(blas_pool()), spin=2_000, gil=gil)
        assert rc == 0
        return None, helper_ran

    _until_a_helper_ran(call)
    assert seen and set(seen) == {min(BIG, _pfor_limit(consumer))}
    assert blas_pool() == BIG   # given back when the call returned
    assert _threads.cap_state()["holders"] == 0


def test_a_threading_call_and_a_parallel_for_share_one_count(consumer,
                                                            blas_pool):
    # A threading call's hold outlives a parallel_for's: the parallel_for
    # ending must not give the pool its size back while the call runs.
    from joblib_fast import _native_threads
    held = _native_threads.hold(1)
    try:
        assert blas_pool() == 1
        consumer.visit(0, 10_000, 1, -1, spin=10)
        assert blas_pool() == 1
    finally:
        held.release()
    assert blas_pool() == BIG


def test_pool_given_back_when_a_body_raises(consumer, blas_pool):
    with pytest.raises(KeyError):
        _until_a_helper_ran(
            lambda: (None, consumer.on_helpers(_raise_in_helper)[1]))
    assert blas_pool() == BIG
    assert _threads.cap_state()["holders"] == 0


def test_library_loaded_after_the_first_call_is_capped(built):
    # NumPy (and its OpenBLAS) loaded after a first parallel_for, the
    # next ones called without the GIL: the loaded library is found (the
    # dynamic loader's count changed) and capped.
    code = textwrap.dedent("""
        import sys, time
        sys.path.insert(0, sys.argv[1])
        import pfor_consumer
        from joblib_fast import _threads
        assert "numpy" not in sys.modules
        pfor_consumer.visit(0, 1000, 1, -1)
        assert _threads.cap_state()["libraries"] == 0
        import numpy, threadpoolctl
        threadpoolctl.threadpool_limits(limits=4, user_api="blas")
        seen = []
        def size():
            seen.append(threadpoolctl.threadpool_info()[0]["num_threads"])
        for _ in range(200):
            time.sleep(0.02)    # past the check interval
            seen.clear()
            if pfor_consumer.on_helpers(size, spin=2_000)[1]:
                break
        print(_threads.cap_state()["libraries"], sorted(set(seen)))
        print(threadpoolctl.threadpool_info()[0]["num_threads"])
    """)
    proc = python_outside_the_tree(code, built[0])
    assert proc.returncode == 0, proc.stderr
    registered, seen = proc.stdout.splitlines()[0].split(" ", 1)
    limit = max(1, cpu_count() // built[1]["pfor_consumer"].max_workers(-1))
    assert int(registered) >= 1
    assert seen == str([min(4, limit)])
    assert proc.stdout.splitlines()[1] == "4"


INTERRUPT_BLAS = """
import os, signal, sys, threading, time
sys.path.insert(0, sys.argv[1])
import numpy, threadpoolctl
import pfor_consumer
threadpoolctl.threadpool_limits(limits=4, user_api="blas")

def size():
    return threadpoolctl.threadpool_info()[0]["num_threads"]

seen = []
def interrupt():
    seen.append(size())           # while the loop runs
    os.kill(os.getpid(), signal.SIGINT)

spin = 20_000
t = time.perf_counter()
pfor_consumer.spin_with_the_gil(200, spin)
n = int(8.0 / ((time.perf_counter() - t) / 200))
threading.Timer(0.3, interrupt).start()
try:
    pfor_consumer.spin_with_the_gil(n, spin)
except KeyboardInterrupt:
    print("interrupted", seen[0], size())
"""


def test_blas_pool_given_back_after_ctrl_c(built):
    proc = python_outside_the_tree(INTERRUPT_BLAS, built[0])
    assert proc.returncode == 0, proc.stderr[-3000:]
    limit = max(1, cpu_count() // built[1]["pfor_consumer"].max_workers(-1))
    assert proc.stdout.split() == ["interrupted", str(min(4, limit)), "4"]


SCAN_INTERRUPTED = """
import sys, time
sys.path.insert(0, sys.argv[1])
import pfor_consumer
from joblib_fast import _threads

def scanner():
    raise KeyboardInterrupt

pfor_consumer.visit(0, 1000, 1, -1)       # the loader's count recorded
_threads.set_cap_scanner(scanner)
time.sleep(0.05)                          # past the check interval
assert "_sqlite3" not in sys.modules
import _sqlite3                           # a shared library loaded: a scan
try:
    pfor_consumer.visit(0, 1000, 1, -1)
    time.sleep(1.0)
except KeyboardInterrupt:
    print("interrupted")
"""


def test_ctrl_c_during_a_library_scan_is_raised(built):
    # A scan is Python code run from C: a KeyboardInterrupt there is not
    # lost, it is raised again in the caller.
    proc = python_outside_the_tree(SCAN_INTERRUPTED, built[0])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["interrupted"]
