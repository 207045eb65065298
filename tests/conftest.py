"""Shared fixtures of the joblib_fast test suite.

Leak checking
-------------
Every test runs under the autouse fixture :func:`no_leaks`, which fails the
test (an error at teardown) when, once the test is over and a grace period
of ``LEAK_GRACE_SECONDS`` has passed, one of these is still around:

* a thread that did not exist before the test (``threading.enumerate()``);
* a child process of this process that did not exist before the test
  (``psutil``, recursive), except the long-lived helpers a fixture
  declares (``_infrastructure_pids``);
* a new entry whose name contains ``joblib`` in ``tempfile.gettempdir()``
  or in ``/dev/shm`` (entries named with the pid of another live process,
  one that is not a descendant of this one, belong to someone else and are
  ignored: ``/dev/shm`` is shared with whatever else runs on the machine).

The grace period lets a thread abandoned on purpose (a task stuck past its
``timeout``) end by itself: tests that do that keep the stuck task shorter
than the grace period.

Opt-out: ``@pytest.mark.allow_leaks("threads", "processes", "files")``
disables the named checks for one test.  Use it only where a leak cannot be
avoided, and say why next to the marker.  No test uses it at the moment.

Temp files: the session runs with a private temporary directory (``TMPDIR``
and ``tempfile.tempdir`` point into it), so that a concurrent run on the same
machine cannot be mistaken for a leak.
"""
from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
import threading
import time

import psutil
import pytest

# A thread abandoned by a timed-out call must be gone within this delay
# (JF_TEST_LEAK_GRACE overrides it: test_leak_fixture.py shortens it).
LEAK_GRACE_SECONDS = float(os.environ.get("JF_TEST_LEAK_GRACE", "3.0"))
_POLL_SECONDS = 0.02
_SHM = "/dev/shm"

# The private temp dir, set before anything asks tempfile for its folder.
_SESSION_TMP = tempfile.mkdtemp(prefix="jf-tests-")
os.environ["TMPDIR"] = _SESSION_TMP
tempfile.tempdir = None  # re-read TMPDIR on the next gettempdir()
assert tempfile.gettempdir() == _SESSION_TMP

# Test modules import their shared helpers from the ``helpers`` package
# beside this file (tests/helpers/), and process workers unpickle the task
# functions of ``helpers.*_tasks`` by that name: tests/ goes first on
# sys.path (--import-mode=importlib does not put it there), before the fork
# server starts, so that spawned and forkserver workers inherit it.  The
# feature folders (numpy/, dask/, ...) have no ``__init__.py`` and must never
# get one: a folder without it cannot shadow the installed package of the
# same name.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# Test modules are imported as ``tests.<folder>.<name>`` (importlib mode);
# process workers unpickle functions defined in them by that name, so the
# folder holding ``tests`` goes at the END of sys.path: the installed
# joblib_fast still wins over the source checkout.
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from helpers import common


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "allow_leaks(*kinds): skip the leak checks of the given kinds "
        "('threads', 'processes', 'files') for this test; only where a "
        "leak is unavoidable, with a comment saying why")
    config.addinivalue_line(
        "markers",
        "slow: takes more than about half a second on 2 cores (pytest "
        "--durations=0: a started interpreter, a killed worker, a timeout "
        "waited for), or needs the dask cluster or the Cython build; "
        "`pytest -m \"not slow\"` is the quick loop, plain `pytest` (CI) "
        "runs everything")


def pytest_report_header(config):
    import joblib_fast
    return [f"joblib_fast under test: {os.path.dirname(joblib_fast.__file__)}",
            f"private TMPDIR: {_SESSION_TMP}"]


def pytest_unconfigure(config):
    shutil.rmtree(_SESSION_TMP, ignore_errors=True)


# ------------------------------------------------------------ snapshots


# The idle reusable process pool owns this timer thread (it stops the pool
# after its idle timeout); it is not a leak of the test that released it.
_POOL_THREADS = ("joblib_fast-pool-reaper",)
# Name prefixes of threads that distributed starts once per process, when
# first needed, and keeps until exit (its offload executor), and of the
# threads with which a nanny of the session's LocalCluster (dask_cluster)
# watches the worker process it restarted after a test killed one: they
# live as long as the cluster.  Not the thread running Future callbacks
# ("Dask-Callback-Thread", also kept until exit): the dask backend must not
# start it.
_DASK_THREADS = ("Dask-Offload",
                 "AsyncProcess Dask Worker process (from Nanny)")


def _threads():
    keep = {t for source in common.INFRASTRUCTURE_THREADS
            for t in source()}
    return {t for t in threading.enumerate()
            if t.is_alive() and t.name not in _POOL_THREADS
            and not t.name.startswith(_DASK_THREADS) and t not in keep}


def _infrastructure_pids():
    """Processes meant to outlive a test: the workers of the process-wide
    reusable pool, multiprocessing's fork server and resource tracker."""
    pids = set()
    for source in common.INFRASTRUCTURE_PIDS:
        pids.update(source())
    processes = sys.modules.get("joblib_fast.backends.processes")
    if processes is not None:
        pids.update(processes.reusable_pool_pids())
    try:
        from multiprocessing import forkserver, resource_tracker
        for pid in (forkserver._forkserver._forkserver_pid,
                    resource_tracker._resource_tracker._pid):
            if pid:
                pids.add(pid)
    except (ImportError, AttributeError):
        pass
    return pids


def _children():
    try:
        keep = _infrastructure_pids()
        return {(p.pid, p.create_time())
                for p in psutil.Process().children(recursive=True)
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE
                and p.pid not in keep}
    except psutil.Error:
        return set()


def _joblib_files():
    found = set()
    for folder in (tempfile.gettempdir(), _SHM):
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        found.update(os.path.join(folder, n) for n in names
                     if "joblib" in n.lower() and not _foreign(n))
    return found


# Names already found foreign (they stay foreign: checking is not free).
_FOREIGN_NAMES = set()


def _foreign(name):
    """True when ``name`` carries the pid of a live process that is neither
    this one nor one of its descendants (another test run or a benchmark
    on the same machine: joblib names its folders ``..._<pid>_...``)."""
    if name in _FOREIGN_NAMES:
        return True
    pids = [int(tok) for tok in re.split(r"[_.\-]", name) if tok.isdigit()]
    if not pids or os.getpid() in pids:
        return False
    for pid in pids:
        try:
            ancestors = {p.pid for p in psutil.Process(pid).parents()}
        except psutil.Error:
            continue  # not a live process: may be our dead child's
        if os.getpid() not in ancestors:
            _FOREIGN_NAMES.add(name)
            return True
    return False


def _describe_threads(threads):
    out = []
    frames = sys._current_frames()
    for t in sorted(threads, key=lambda t: t.name):
        frame = frames.get(t.ident)
        where = ""
        if frame is not None:
            where = f" at {frame.f_code.co_filename}:{frame.f_lineno}" \
                    f" in {frame.f_code.co_name}"
        out.append(f"{t.name} (daemon={t.daemon}){where}")
    return ", ".join(out)


@pytest.fixture(autouse=True)
def no_leaks(request):
    """Fail the test if it leaves a thread, child process or temp file."""
    marker = request.node.get_closest_marker("allow_leaks")
    allowed = set(marker.args) if marker is not None else set()
    unknown = allowed - {"threads", "processes", "files"}
    if unknown:
        pytest.fail(f"allow_leaks: unknown kinds {sorted(unknown)}")
    threads_before = _threads()
    common.BASELINE_THREADS = frozenset(threads_before)
    children_before = _children()
    files_before = _joblib_files()

    yield

    def leaks():
        found = {}
        if "threads" not in allowed:
            new = _threads() - threads_before
            if new:
                found["threads"] = _describe_threads(new)
        if "processes" not in allowed:
            new = _children() - children_before
            if new:
                found["processes"] = sorted(pid for pid, _ in new)
        if "files" not in allowed:
            new = _joblib_files() - files_before
            if new:
                found["files"] = sorted(new)
        return found

    deadline = time.monotonic() + LEAK_GRACE_SECONDS
    found = leaks()
    while found and time.monotonic() < deadline:
        time.sleep(_POLL_SECONDS)
        found = leaks()
    if found:
        pytest.fail(
            f"the test leaked (still there {LEAK_GRACE_SECONDS:g} s after "
            f"it ended): {found}", pytrace=False)


# Set in this process's environment by a dask LocalCluster with worker
# processes (distributed's nanny pre-spawn environment) and never undone:
# left there, they cap every later test's subprocesses and worker
# processes (a process pool's BLAS, parallel_for in a worker).
_CLUSTER_ENVIRON = ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                    "OPENBLAS_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_")


@pytest.fixture(autouse=True)
def isolated_environ():
    """Put back the variables a dask cluster sets in this process."""
    before = {name: os.environ.get(name) for name in _CLUSTER_ENVIRON}
    yield
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(autouse=True)
def isolated_config(no_leaks):
    """Undo what a test did to the backend registry and the active
    configuration, and fail the test if it left a ``parallel_config``
    active; stop the reusable process pool and the shared worker threads (they
    outlive calls by design) before ``no_leaks`` looks for leftovers."""
    from joblib_fast import _context
    from joblib_fast import config as _config
    backends = dict(_config.BACKENDS)
    external = dict(_config.EXTERNAL_BACKENDS)
    default = _config.DEFAULT_BACKEND
    config = _context.current_config()
    yield
    leaked_config = _context.current_config() is not config
    _config.BACKENDS.clear()
    _config.BACKENDS.update(backends)
    _config.EXTERNAL_BACKENDS.clear()
    _config.EXTERNAL_BACKENDS.update(external)
    _config.DEFAULT_BACKEND = default
    _context.set_config(config)
    processes = sys.modules.get("joblib_fast.backends.processes")
    if processes is not None:
        processes.shutdown_reusable_pools()
    # The threads shared by the threading backend and parallel_for outlive
    # calls by design: each test starts without them (and this checks that
    # they stop).  A task stuck past its timeout may still be running:
    # no_leaks gives it its grace period.
    threads = sys.modules.get("joblib_fast._threads")
    if threads is not None:
        threads.shutdown_shared_pool(timeout=LEAK_GRACE_SECONDS)
    assert not leaked_config, "the test left a parallel_config active"


@pytest.fixture
def warm_pool():
    """Make sure the default reusable process pool (2 workers) exists;
    return its pids."""
    from joblib_fast import Parallel, delayed
    from joblib_fast.backends.processes import reusable_pool_pids
    Parallel(n_jobs=2)(delayed(common.square)(i) for i in range(4))
    pids = set(reusable_pool_pids())
    assert len(pids) == 2
    return pids


@pytest.fixture
def folder(tmp_path):
    """A fresh folder for memory-mapped copies (``temp_folder=``)."""
    path = tmp_path / "mm"
    path.mkdir()
    return str(path)


@pytest.fixture(scope="session", autouse=True)
def process_helpers():
    """Start the process backend's process-lifetime helpers (the
    multiprocessing forkserver and resource tracker) once, before any
    test's leak baseline: they are not leaks, and this way the fork
    server's folder never lands in the session's private TMPDIR."""
    try:
        from joblib_fast.backends import processes
    except ImportError:
        yield None
        return
    import multiprocessing.util

    from joblib_fast import Parallel, delayed
    # multiprocessing keeps a folder (pymp-*: the forkserver's socket, and
    # with spawn whatever asks for it later) until the interpreter exits,
    # after pytest_unconfigure removed the session's private TMPDIR: make
    # it now, outside, where its own exit hook removes it.
    saved = tempfile.tempdir
    tempfile.tempdir = os.path.dirname(_SESSION_TMP)
    try:
        multiprocessing.util.get_temp_dir()
        Parallel(n_jobs=2, backend="loky")(delayed(abs)(-i) for i in range(2))
    finally:
        tempfile.tempdir = saved
    processes.shutdown_reusable_pools()
    yield processes


# The session's dask cluster: a worker killed twice running the same task
# ends its future with KilledWorker (dask's default, 3, would make
# the dask tests slower).
DASK_ALLOWED_FAILURES = 1


@pytest.fixture(scope="session")
def dask_cluster():
    """One dask.distributed LocalCluster for the session (2 worker
    processes x 1 thread, on 127.0.0.1, no dashboard) and a client that is
    not the default one; started by the first test that needs it.

    What it starts is declared to the leak check: its worker processes
    (also those a nanny restarts after a test killed a worker), the
    threads the cluster and client started, and the thread feeding each
    nanny's queue to its worker."""
    distributed = pytest.importorskip("distributed")
    import dask

    from joblib_fast import Parallel, delayed, parallel_config
    before = set(threading.enumerate())
    with dask.config.set({"distributed.scheduler.allowed-failures":
                          DASK_ALLOWED_FAILURES}):
        cluster = distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True,
            host="127.0.0.1", dashboard_address=None,
            scheduler_kwargs=common.DASK_NO_HTTP_PORT)
    client = distributed.Client(cluster, set_as_default=False)
    # dask's lazily created threads (callbacks, offload) start now too.
    with parallel_config(backend="dask", client=client):
        Parallel()(delayed(common.square)(i) for i in range(4))
    started = set(threading.enumerate()) - before

    def worker_pids():
        return [n.pid for n in list(cluster.workers.values()) if n.pid]

    def cluster_threads():
        yield from started
        for nanny in list(cluster.workers.values()):
            process = nanny.process
            for q in (getattr(process, "init_result_q", None),
                      getattr(process, "child_stop_q", None)):
                thread = getattr(q, "_thread", None)
                if thread is not None:
                    yield thread

    common.INFRASTRUCTURE_PIDS.append(worker_pids)
    common.INFRASTRUCTURE_THREADS.append(cluster_threads)
    try:
        yield cluster, client
    finally:
        client.close()
        cluster.close()
        common.INFRASTRUCTURE_PIDS.remove(worker_pids)
        common.INFRASTRUCTURE_THREADS.remove(cluster_threads)


@pytest.fixture
def dask_client(dask_cluster):
    """The session cluster's client, with both workers up (before and
    after the test: a test may kill one)."""
    client = dask_cluster[1]
    client.wait_for_workers(2, timeout=30)
    yield client
    client.wait_for_workers(2, timeout=30)


@pytest.fixture
def no_tqdm_monitor(monkeypatch):
    """tqdm's monitor thread would outlive a test that shows a bar."""
    try:
        import tqdm
    except ImportError:
        return
    monkeypatch.setattr(tqdm.tqdm, "monitor_interval", 0)
