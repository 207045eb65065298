"""joblib_fast as a backend of joblib itself: joblib.Parallel and
scikit-learn, unchanged, on joblib_fast's pools."""
from __future__ import annotations

import functools
import multiprocessing
import os
import pickle
import subprocess
import sys
import threading
import warnings

import joblib
import numpy as np
import pytest
import sklearn
from helpers import joblib_tasks as tasks
from joblib import Parallel, delayed
from joblib._parallel_backends import (
    LokyBackend,
    MultiprocessingBackend,
    ThreadingBackend,
)
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.utils.parallel import Parallel as SkParallel
from sklearn.utils.parallel import delayed as sk_delayed

import joblib_fast
from joblib_fast import TerminatedWorkerError
from joblib_fast.joblib_backend import (
    FastProcessBackend,
    FastThreadingBackend,
)

NAME = "joblib_fast"


@pytest.fixture
def registered():
    """Our backends under our name and joblib's names; joblib's own
    backends are put back afterwards."""
    yield joblib_fast.register_joblib_backend(replace_builtin=True)
    joblib.register_parallel_backend("loky", LokyBackend)
    joblib.register_parallel_backend("multiprocessing", MultiprocessingBackend)
    joblib.register_parallel_backend("threading", ThreadingBackend)


def with_loky(func):
    """``func()`` run on joblib's own loky backend, whose reusable workers
    are stopped afterwards (the leak check would see them)."""
    from joblib.externals.loky import get_reusable_executor
    try:
        with joblib.parallel_config(backend=LokyBackend()):
            return func()
    finally:
        get_reusable_executor().shutdown(wait=True)


@pytest.fixture(scope="module")
def data():
    return make_classification(n_samples=60, n_features=6, random_state=0)


# ------------------------------------------------------------ registration


def test_import_joblib_fast_does_not_import_joblib():
    code = ("import sys, joblib_fast; "
            "assert 'joblib' not in sys.modules, 'joblib imported'; "
            "assert callable(joblib_fast.register_joblib_backend)")
    subprocess.run([sys.executable, "-P", "-c", code], check=True,
                   cwd=os.path.dirname(os.path.abspath(__file__)))


def test_missing_joblib_is_a_clear_import_error():
    code = ("import sys; sys.modules['joblib'] = None\n"
            "import joblib_fast\n"
            "try:\n    joblib_fast.register_joblib_backend()\n"
            "except ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-P", "-c", code], check=True,
                         capture_output=True, text=True).stdout
    assert "needs joblib" in out and "joblib_fast[joblib]" in out


def test_register_names(registered):
    from joblib.parallel import BACKENDS
    assert registered == NAME
    assert BACKENDS[NAME] is FastProcessBackend
    assert BACKENDS["loky"] is FastProcessBackend
    assert BACKENDS["multiprocessing"] is FastProcessBackend
    assert BACKENDS["threading"] is FastThreadingBackend
    assert joblib_fast.register_joblib_backend("other") == "other"
    with pytest.raises(TypeError, match="name"):
        joblib_fast.register_joblib_backend("")


def test_contract_flags():
    proc, thr = FastProcessBackend(), FastThreadingBackend()
    assert proc.supports_retrieve_callback and thr.supports_retrieve_callback
    assert proc.supports_return_generator and proc.supports_timeout
    assert proc.supports_inner_max_num_threads
    assert not thr.supports_inner_max_num_threads
    assert thr.supports_sharedmem and thr.uses_threads
    assert not proc.supports_sharedmem
    nested, n_jobs = proc.get_nested_backend()
    assert isinstance(nested, FastThreadingBackend) and n_jobs is None
    assert nested.nesting_level == 1
    nested2, _ = nested.get_nested_backend()
    assert type(nested2).__name__ == "SequentialBackend"


def test_nested_backend_pickles_without_a_pool():
    backend = FastProcessBackend(nesting_level=1, inner_max_num_threads=2)
    backend.configure(n_jobs=2)
    backend.submit(int).get(30)   # a pool exists now
    try:
        copy = pickle.loads(pickle.dumps(backend))
    finally:
        backend.terminate()
    assert type(copy) is FastProcessBackend
    assert copy.nesting_level == 1 and copy.inner_max_num_threads == 2
    with pytest.raises(RuntimeError, match="before configure"):
        copy.submit(int)


@pytest.mark.parametrize("cls", [FastProcessBackend, FastThreadingBackend])
def test_submit_callback_once_never_inside_submit(cls):
    backend = cls()
    assert backend.configure(n_jobs=2) == 2
    calls = []
    lock = threading.Lock()
    submitting = threading.local()

    def callback(out):
        with lock:
            calls.append((getattr(submitting, "inside", False), out))

    def fail():
        raise ValueError("boom")

    try:
        for func in [int, fail] * 20:
            submitting.inside = True
            backend.submit(func, callback=callback)
            submitting.inside = False
        futures = [backend.submit(int) for _ in range(3)]
        assert [f.get(30) for f in futures] == [0, 0, 0]
    finally:
        backend.terminate()
    assert len(calls) == 40
    assert not any(inside for inside, _ in calls)
    values, errors = [], []
    for _, out in calls:
        try:
            values.append(backend.retrieve_result_callback(out))
        except ValueError as exc:
            errors.append(exc)
    assert values == [0] * 20 and len(errors) == 20


def test_configure_falls_back_to_sequential_for_one_job():
    from joblib.parallel import FallbackToBackend
    with pytest.raises(FallbackToBackend):
        FastProcessBackend().configure(n_jobs=1)


# ------------------------------------------------------- joblib.Parallel


@pytest.mark.parametrize("backend", ["loky", "threading", NAME])
@pytest.mark.parametrize("return_as", ["list", "generator",
                                       "generator_unordered"])
def test_parallel_results(registered, backend, return_as):
    out = Parallel(n_jobs=2, backend=backend, return_as=return_as)(
        delayed(tasks.square)(i) for i in range(300))
    out = list(out)
    if return_as == "generator_unordered":
        out = sorted(out)
    assert out == [i * i for i in range(300)]


def test_builtin_names_run_on_joblib_fast(registered):
    names = Parallel(n_jobs=2, backend="threading")(
        delayed(tasks.current_thread_name)(i) for i in range(20))
    assert all(n.startswith("joblib_fast-thread") for n in names)
    # require="sharedmem" (scikit-learn's forests) lands on our threads.
    names = Parallel(n_jobs=2, require="sharedmem")(
        delayed(tasks.current_thread_name)(i) for i in range(20))
    assert all(n.startswith("joblib_fast-thread") for n in names)
    with joblib.parallel_config(backend="loky"):
        pids = Parallel(n_jobs=2)(
            delayed(tasks.pid_of)(i) for i in range(20))
    assert os.getpid() not in {pid for _, pid in pids}


def test_reusable_pool_survives_terminate(registered):
    first = {p for _, p in Parallel(n_jobs=2, backend=NAME)(
        delayed(tasks.pid_of)(i) for i in range(50))}
    second = {p for _, p in Parallel(n_jobs=2, backend=NAME)(
        delayed(tasks.pid_of)(i) for i in range(50))}
    assert first & second


def test_with_block_keeps_one_pool(registered):
    with Parallel(n_jobs=2, backend=NAME) as parallel:
        a = parallel(delayed(tasks.pid_of)(i) for i in range(50))
        b = parallel(delayed(tasks.pid_of)(i) for i in range(50))
    assert [x for x, _ in a] == [x for x, _ in b] == list(range(50))
    assert {p for _, p in a} == {p for _, p in b}


@pytest.mark.parametrize("cls", [FastProcessBackend, FastThreadingBackend])
def test_abort_everything_ensure_ready(cls):
    backend = cls()
    backend.configure(n_jobs=2)
    try:
        with pytest.raises(ZeroDivisionError):
            backend.submit(functools.partial(tasks.divide, 1, 0)).get(30)
        running = backend.submit(functools.partial(
            tasks.sleep_then_return, 1, 1.0))
        backend.abort_everything(ensure_ready=True)
        with pytest.raises(Exception, match="aborted"):
            running.get(30)
        assert backend.submit(functools.partial(tasks.square, 3)).get(30) == 9
    finally:
        backend.terminate()


@pytest.mark.slow
def test_inner_max_num_threads_reapplied(registered):
    seen = []
    for n in (1, 2, 1):
        with joblib.parallel_config(backend=NAME, inner_max_num_threads=n):
            seen.append(set(Parallel(n_jobs=2)(
                delayed(tasks.inner_threads)(i) for i in range(4))))
    assert seen == [{"1"}, {"2"}, {"1"}]


def test_task_error_is_raised_as_itself(registered):
    with pytest.raises(ZeroDivisionError):
        Parallel(n_jobs=2, backend=NAME)(
            delayed(tasks.divide)(1, i - 50) for i in range(100))


# --------------------------------------------------------------- failures


@pytest.mark.slow
@pytest.mark.timeout(30)
@pytest.mark.parametrize("how", ["exit", "kill"])
def test_dead_worker_raises(registered, how):
    from joblib.externals.loky.process_executor import (
        TerminatedWorkerError as LokyTerminatedWorkerError,
    )
    func = tasks.exit_now if how == "exit" else tasks.kill_self
    with pytest.raises(TerminatedWorkerError) as info:
        Parallel(n_jobs=2, backend=NAME)(
            delayed(func)(i) for i in range(10))
    # Code written for joblib catches loky's exception.
    assert isinstance(info.value, LokyTerminatedWorkerError)
    # The next call gets fresh workers.
    assert Parallel(n_jobs=2, backend=NAME)(
        delayed(tasks.square)(i) for i in range(5)) == [0, 1, 4, 9, 16]


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_timeout_kills_only_the_stuck_worker(registered):
    pids = {p for _, p in Parallel(n_jobs=2, backend=NAME)(
        delayed(tasks.pid_of)(i) for i in range(50))}
    assert len(pids) == 2
    with pytest.raises(multiprocessing.TimeoutError):
        Parallel(n_jobs=2, backend=NAME, timeout=0.5, batch_size=1)(
            delayed(tasks.sleep_then_return)(i, 30 if i == 3 else 0)
            for i in range(8))
    after = {p for _, p in Parallel(n_jobs=2, backend=NAME)(
        delayed(tasks.pid_of)(i) for i in range(50))}
    assert len(pids & after) == 1


@pytest.mark.slow
@pytest.mark.parametrize("backend", [NAME, "threading"])
def test_many_single_task_batches_no_recursion(registered, backend):
    out = Parallel(n_jobs=2, backend=backend, batch_size=1)(
        delayed(tasks.square)(i) for i in range(10_000))
    assert out == [i * i for i in range(10_000)]


# ----------------------------------------------------------- scikit-learn


# joblib's loky leaves its resource tracker process and a memmapping folder
# for the life of the interpreter, by design.
@pytest.mark.slow
@pytest.mark.allow_leaks("processes", "files")
def test_cross_val_score_same_as_loky(registered, data):
    X, y = data

    def run():
        return cross_val_score(LogisticRegression(), X, y, cv=3, n_jobs=2)

    expected = with_loky(run)
    with joblib.parallel_config(backend=NAME):
        got = run()
    np.testing.assert_array_equal(got, expected)


# joblib's loky leaves its resource tracker process and a memmapping folder
# for the life of the interpreter, by design.
@pytest.mark.slow
@pytest.mark.allow_leaks("processes", "files")
def test_grid_search_same_as_loky(registered, data):
    X, y = data
    grid = {"C": [0.1, 1.0, 10.0]}

    def run():
        search = GridSearchCV(LogisticRegression(), grid, cv=3, n_jobs=2)
        return search.fit(X, y)

    expected = with_loky(run)
    got = run()  # "loky" is joblib_fast's here
    assert got.best_params_ == expected.best_params_
    np.testing.assert_array_equal(got.cv_results_["mean_test_score"],
                                  expected.cv_results_["mean_test_score"])


def test_random_forest_sharedmem_same_as_joblib(registered, data):
    X, y = data

    def run():
        forest = RandomForestClassifier(n_estimators=8, n_jobs=2,
                                        random_state=0).fit(X, y)
        return forest.predict_proba(X)

    got = run()   # prefer="threads" / require="sharedmem": our threads
    joblib.register_parallel_backend("threading", ThreadingBackend)
    expected = run()
    np.testing.assert_array_equal(got, expected)


# joblib's loky leaves its resource tracker process and a memmapping folder
# for the life of the interpreter, by design.
@pytest.mark.slow
@pytest.mark.allow_leaks("processes", "files")
def test_nested_grid_search_of_forests(registered, data):
    X, y = data

    def run():
        forest = RandomForestClassifier(n_estimators=4, n_jobs=2,
                                        random_state=0)
        search = GridSearchCV(forest, {"max_depth": [2, 4]}, cv=2, n_jobs=2)
        return search.fit(X, y)

    expected = with_loky(run)
    with joblib.parallel_config(backend=NAME):
        got = run()
    assert got.best_params_ == expected.best_params_
    np.testing.assert_array_equal(got.cv_results_["mean_test_score"],
                                  expected.cv_results_["mean_test_score"])


@pytest.mark.slow
@pytest.mark.parametrize("backend", [NAME, "threading"])
def test_sklearn_config_visible_in_tasks(registered, backend):
    with sklearn.config_context(assume_finite=True):
        seen = SkParallel(n_jobs=2, backend=backend)(
            sk_delayed(tasks.assume_finite)(i) for i in range(6))
    assert seen == [True] * 6
    seen = SkParallel(n_jobs=2, backend=backend)(
        sk_delayed(tasks.assume_finite)(i) for i in range(6))
    assert seen == [False] * 6


@pytest.mark.slow
def test_sklearn_warning_filters_visible_in_tasks(registered):
    with warnings.catch_warnings():
        warnings.simplefilter("error", category=tasks.TaskWarning)
        with pytest.raises(tasks.TaskWarning):
            SkParallel(n_jobs=2, backend=NAME)(
                sk_delayed(tasks.warn_task)(i) for i in range(4))
