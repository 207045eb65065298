"""Helpers shared by the test modules (``from helpers.common import ...``;
conftest.py puts tests/ first on ``sys.path``)."""
from __future__ import annotations

import multiprocessing
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psutil

import joblib_fast
from joblib_fast import ParallelBackendBase

# The in-process kinds, for suites whose tasks share state with the test
# (counters, events); tests/api/test_backend_contract.py runs the backend
# contract over
# every kind, the process backend and a user backend included.
BACKENDS = ("threading", "sequential")
RETURN_AS = ("list", "generator", "generator_unordered")
WORKER_THREAD_PREFIX = "joblib_fast-thread"
# How long abandoned worker threads may take to end (as conftest's grace).
GRACE_SECONDS = 3.0
_POLL_SECONDS = 0.02


# Threads alive when the current test started (set by conftest's leak
# fixture): a thread leaked by an earlier test fails that test only, not
# every later test that looks for worker threads.
BASELINE_THREADS = frozenset()

# Functions returning the pids of processes a module fixture keeps alive
# across its tests (the workers of the dask tests' LocalCluster, restarted
# by their nanny when a test kills one): conftest's leak check ignores
# them.
INFRASTRUCTURE_PIDS = []
# The same for threads (functions returning thread objects).
INFRASTRUCTURE_THREADS = []
# scheduler_kwargs of a test LocalCluster: the scheduler's HTTP server
# (metrics; the dashboard is off) on a free port of 127.0.0.1 rather than
# 8787, which another cluster on the machine may hold.
DASK_NO_HTTP_PORT = {"dashboard_address": "127.0.0.1:0"}


def shared_threads():
    """The threads of the process-wide pool (the threading backend's and
    parallel_for's): they outlive calls by design."""
    from joblib_fast import _threads
    return _threads.shared_pool_threads()


def worker_threads():
    """joblib_fast worker threads alive now and started during this test,
    other than the shared pool's (which outlive calls by design; conftest
    stops them after each test)."""
    shared = set(shared_threads())
    return [t for t in threading.enumerate()
            if t.name.startswith(WORKER_THREAD_PREFIX) and t.is_alive()
            and t not in BASELINE_THREADS and t not in shared]


def wait_no_worker_threads(seconds=GRACE_SECONDS):
    """Wait until no joblib_fast worker thread is alive; return the rest."""
    deadline = time.monotonic() + seconds
    while worker_threads() and time.monotonic() < deadline:
        time.sleep(_POLL_SECONDS)
    return worker_threads()


def square(x):
    return x * x


def sleep_and_return(value, seconds):
    """Sleep (the GIL is released) then return ``value``."""
    time.sleep(seconds)
    return value


def add(a, b=0, *, c=0):
    return a + b + c


class ExecutorBackend(ParallelBackendBase):
    """The user guide's minimal backend (ThreadPoolExecutor), recording
    every hook joblib calls."""

    supports_retrieve_callback = True

    def __init__(self, nesting_level=None, **kwargs):
        super().__init__(nesting_level=nesting_level, **kwargs)
        self.events = []
        self.submitted = []
        self._executor = None

    def configure(self, n_jobs=1, parallel=None, **backend_kwargs):
        self.events.append("configure")
        self.configure_kwargs = backend_kwargs
        self.parallel = parallel
        n_jobs = self.effective_n_jobs(n_jobs)
        self._executor = ThreadPoolExecutor(n_jobs)
        return n_jobs

    def effective_n_jobs(self, n_jobs):
        if n_jobs is None:
            return 1
        return 2 if n_jobs < 0 else n_jobs

    def start_call(self):
        self.events.append("start_call")

    def stop_call(self):
        self.events.append("stop_call")

    def terminate(self):
        self.events.append("terminate")
        if self._executor is not None:
            self._executor.shutdown()
            self._executor = None

    def abort_everything(self, ensure_ready=True):
        self.events.append(("abort_everything", ensure_ready))

    def submit(self, func, callback):
        self.submitted.append(len(func))
        future = self._executor.submit(func)
        future.add_done_callback(callback)
        return future

    def retrieve_result_callback(self, future):
        return future.result()


# ------------------------------------------------------ shared tasks
# Defined here, in an importable module, so that process workers (spawn,
# forkserver) can unpickle them by reference.


class CustomError(Exception):
    """An exception with extra state and a two-argument constructor."""

    def __init__(self, message, code):
        super().__init__(message, code)
        self.message = message
        self.code = code

    def __str__(self):
        return f"{self.message} (code {self.code})"


def fail_on(i, bad, exc_type=ValueError):
    """Return ``i``, or raise ``exc_type("task <i> failed")`` when
    ``i == bad`` (``CustomError`` gets its own message and a code)."""
    if i == bad:
        if exc_type is CustomError:
            raise CustomError(f"custom failure in task {i}", 42)
        raise exc_type(f"task {i} failed")
    return i


def where_am_i(x):
    """(x, pid, thread id) of the worker running the task."""
    import os

    return x, os.getpid(), threading.get_ident()


# ------------------------------------------------- process backend helpers

# The tests/ folder (holding the ``helpers`` package).
TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The folder holding the INSTALLED joblib_fast (first on a child's path).
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(joblib_fast.__file__)))
START_METHODS = [m for m in ("fork", "spawn", "forkserver")
                 if m in multiprocessing.get_all_start_methods()]
# Seconds a failing call may take before we call it a hang (a working one
# needs well under a second): a hang guard, not a speed check.
NO_HANG = 15.0
# Seconds given to processes and threads to go away after a call.
PROC_GRACE = 5.0


def alive(pid):
    """True while process ``pid`` exists and is not a zombie."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_until(predicate, seconds=PROC_GRACE):
    """Poll ``predicate`` until it is true (True) or ``seconds`` pass."""
    deadline = time.monotonic() + seconds
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def assert_dies(pid, after):
    """Process ``pid`` (a task's own child) is gone within ``PROC_GRACE``
    seconds; it is killed here if not, and the test fails naming
    ``after`` (what should have killed it)."""
    died = wait_until(lambda: not alive(pid))
    if not died:
        os.kill(pid, 9)
    assert died, f"the task's own child survived {after}"


def in_user_threads(body, n, seconds):
    """Run ``body(k)`` in ``n`` threads of the test at once, k = 0..n-1;
    wait up to ``seconds`` for each.  Returns ``(errors, alive)``: the
    exceptions the bodies raised and the threads still running."""
    errors = []

    def user(k):
        try:
            body(k)
        except BaseException as exc:  # noqa: BLE001 (returned)
            errors.append(exc)

    users = [threading.Thread(target=user, args=(k,)) for k in range(n)]
    for t in users:
        t.start()
    for t in users:
        t.join(seconds)
    return errors, [t for t in users if t.is_alive()]


def in_forked_child(body, timeout):
    """Run ``body()`` in a child forked from this process; its exit code:
    0 when it returned, 1 when it raised (the traceback on stderr), -14
    (SIGALRM) when it ran over ``timeout`` seconds, so a hang fails."""
    import signal
    import traceback
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            signal.alarm(int(timeout))
            body()
            code = 0
        except BaseException:  # noqa: BLE001 - reported by the exit code
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def interrupt_script(path, args, started, seconds):
    """Run the script ``path`` with ``args`` in a child Python, send it
    SIGINT once ``started()`` is true, and return ``(stdout, stderr,
    returncode)``; the child is killed if it is still alive at the end.
    ``seconds`` bounds each wait (a hang guard)."""
    import signal
    import subprocess
    import sys
    proc = subprocess.Popen([sys.executable, str(path), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=subprocess_env())
    try:
        assert wait_until(lambda: proc.poll() is not None or started(),
                          seconds), "the script never got ready"
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=seconds)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return out, err, proc.returncode


def subprocess_env(**extra):
    """Environment for a child Python that imports the installed package
    and the test helpers (``helpers.proc_tasks``)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [REPO_ROOT, TESTS_DIR]
        + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.pop("JOBLIB_START_METHOD", None)
    env.update(extra)
    return env


def pids_of(results):
    """The pids of ``(value, pid)`` results."""
    return {pid for _, pid in results}


def doc_blocks(page, language="python", section=None):
    """The ``language`` code blocks of ``page`` (a path from the root of
    the checkout, e.g. ``"docs/user_guide/progress.md"`` or
    ``"README.md"``: the checkout's, next to the tests folder, so these
    tests are never skipped), only those of its ``## <section>`` when
    given."""
    import pathlib
    import re

    text = (pathlib.Path(TESTS_DIR).resolve().parent / page).read_text()
    if section is not None:
        start = text.index(f"## {section}\n")
        end = text.find("\n## ", start + 1)
        text = text[start:] if end < 0 else text[start:end]
    return re.findall(rf"```{language}\n(.*?)```", text, re.DOTALL)


def assert_private_after_fork(a):
    """``a`` (every element 7.0) is this process's own after a fork: a
    write here after the fork is not seen by the child, and the child's
    write is not seen here."""
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
