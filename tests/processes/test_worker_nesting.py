"""The process backend's workers: nested Parallel calls and BLAS thread
caps.
"""
from __future__ import annotations

import multiprocessing as mp
import os

import pytest
from helpers import proc_tasks
from helpers.common import (
    START_METHODS,
)

import joblib_fast
from joblib_fast import Parallel, delayed, parallel_config
from joblib_fast.backends.base import MAX_NUM_THREADS_VARS
from joblib_fast.backends.processes import (
    shutdown_reusable_pools,
)

# ------------------------------------------------------------- nesting


def test_nested_parallel_in_a_worker_uses_threads():
    sizes = [3, 10, 25, 40]
    out = Parallel(n_jobs=2)(delayed(proc_tasks.nested_parallel)(n) for n in sizes)
    for n, (results, backend, children) in zip(sizes, out):
        assert results == [i * i for i in range(n)]
        assert backend == "ThreadingBackend"
        assert children == 0  # no grandchild processes


# ---------------------------------------------------------- BLAS caps


def _worker_env(**parallel_kwargs):
    envs = Parallel(n_jobs=2, **parallel_kwargs)(
        delayed(proc_tasks.env_vars)(MAX_NUM_THREADS_VARS) for _ in range(4))
    assert all(env == envs[0] for env in envs)
    return envs[0]


@pytest.fixture
def no_thread_vars(monkeypatch):
    for var in MAX_NUM_THREADS_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_blas_caps_in_workers(no_thread_vars):
    expected = str(max(joblib_fast.cpu_count() // 2, 1))
    assert _worker_env() == {var: expected for var in MAX_NUM_THREADS_VARS}


def test_blas_caps_respect_user_settings(no_thread_vars):
    no_thread_vars.setenv("OMP_NUM_THREADS", "7")
    expected = str(max(joblib_fast.cpu_count() // 2, 1))
    env = _worker_env()
    assert env.pop("OMP_NUM_THREADS") == "7"
    assert env == {var: expected for var in MAX_NUM_THREADS_VARS
                   if var != "OMP_NUM_THREADS"}


def test_blas_caps_do_not_leak_into_the_parent(no_thread_vars):
    _worker_env()
    for var in MAX_NUM_THREADS_VARS:
        assert var not in os.environ


@pytest.mark.parametrize("with_backend", [True, False],
                         ids=["backend-named", "default-backend"])
def test_inner_max_num_threads(no_thread_vars, with_backend):
    if not with_backend:
        # As in joblib: the cap is a parameter of a named backend.
        with pytest.raises(ValueError, match="inner_max_num_threads"):
            parallel_config(inner_max_num_threads=3)
        return
    with parallel_config(inner_max_num_threads=3, backend="loky"):
        env = _worker_env()
    assert env == {var: "3" for var in MAX_NUM_THREADS_VARS}


# Not "fork": a forked worker inherits the parent's already-sized OpenBLAS
# pool, and the env var cap cannot resize it (a known limitation, stated in
# the README; fixing it needs threadpoolctl in the workers).
@pytest.mark.slow
@pytest.mark.parametrize("method", [m for m in START_METHODS if m != "fork"])
def test_blas_cap_is_effective(no_thread_vars, method):
    """The cap must reach the BLAS thread pool itself, also when the parent
    had loaded BLAS before the workers started (fork copies it already
    sized from the parent's settings)."""
    if proc_tasks.openblas_threads() is None:
        pytest.skip("no numpy-bundled OpenBLAS to inspect")
    cap = max(joblib_fast.cpu_count() // 2, 1)
    shutdown_reusable_pools()  # workers start after numpy is loaded here
    counts = Parallel(n_jobs=2, backend=mp.get_context(method))(
        delayed(proc_tasks.openblas_threads)() for _ in range(4))
    assert counts == [cap] * 4
