"""The process backend's pickling: lambdas and closures, scripts without a
main guard, unpicklable tasks, arguments and results, large payloads.
"""
from __future__ import annotations

import multiprocessing as mp
import pickle
import re
import subprocess
import sys
import threading

import pytest
from helpers import proc_tasks
from helpers.common import (
    START_METHODS,
    subprocess_env,
)
from helpers.proc_tasks import square

from joblib_fast import Parallel, delayed

# ------------------------------------------------------------ pickling


@pytest.mark.parametrize("method", START_METHODS)
def test_lambdas_and_closures(method):
    offset = 10

    def closure(x):
        return x + offset

    def make_adder(n):
        return lambda x: x + n

    context = mp.get_context(method)
    parallel = Parallel(n_jobs=2, backend=context)
    assert parallel(delayed(lambda x: x * 3)(i) for i in range(10)) == \
        [i * 3 for i in range(10)]
    assert parallel(delayed(closure)(i) for i in range(10)) == \
        [i + 10 for i in range(10)]
    assert parallel(delayed(make_adder(i))(i) for i in range(10)) == \
        [2 * i for i in range(10)]
    # A lambda as an argument and a lambda as a result.
    out = parallel(delayed(make_adder)(i) for i in range(4))
    assert [f(1) for f in out] == [1, 2, 3, 4]


NO_GUARD_SCRIPT = """\
import os
from joblib_fast import Parallel, delayed

print("SCRIPT START", os.getpid(), flush=True)


def cube(x):
    return x ** 3


offset = 100
results = Parallel(n_jobs=2)(delayed(cube)(i) for i in range(20))
shifted = Parallel(n_jobs=2)(delayed(lambda x: x + offset)(i) for i in range(5))
print("RESULT", results, shifted, flush=True)
"""


@pytest.mark.parametrize("method", START_METHODS)
def test_script_without_main_guard(method, tmp_path):
    script = tmp_path / "no_guard.py"
    script.write_text(NO_GUARD_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True,
        check=False, timeout=60, cwd=str(tmp_path),
        env=subprocess_env(JOBLIB_START_METHOD=method))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    # The workers did not run the script again.
    assert sum(line.startswith("SCRIPT START") for line in lines) == 1, proc.stdout
    results = [line for line in lines if line.startswith("RESULT")]
    assert results == [
        f"RESULT {[i ** 3 for i in range(20)]} {[i + 100 for i in range(5)]}"]


def test_unpicklable_task_raises_pickling_error():
    args = [1] * 7 + [threading.Lock()] + [1] * 3
    with pytest.raises(pickle.PicklingError) as info:
        Parallel(n_jobs=2)(delayed(proc_tasks.identity)(a) for a in args)
    assert "identity" in str(info.value)
    assert "lock" in str(info.value)
    # The pool still works afterwards.
    assert Parallel(n_jobs=2)(delayed(square)(i) for i in range(10)) == \
        [i * i for i in range(10)]


def test_unpicklable_task_message_gives_its_index_in_the_call():
    # Task 7 holds the lock: the message should say 7, the only index the
    # user knows (batches are an internal detail).
    args = [1] * 7 + [threading.Lock()] + [1] * 3
    with pytest.raises(pickle.PicklingError) as info:
        Parallel(n_jobs=2)(delayed(proc_tasks.identity)(a) for a in args)
    assert re.search(r"\btask 7\b", str(info.value), re.I), str(info.value)


def test_unpicklable_result_raises_pickling_error():
    with pytest.raises(pickle.PicklingError) as info:
        Parallel(n_jobs=2)(delayed(proc_tasks.return_lock)(i) for i in range(10))
    assert re.search(r"\btask 5\b", str(info.value)), str(info.value)
    assert "result" in str(info.value)
    assert Parallel(n_jobs=2)(delayed(square)(i) for i in range(10)) == \
        [i * i for i in range(10)]


def test_result_that_cannot_be_unpickled_in_the_parent():
    with pytest.raises(pickle.UnpicklingError) as info:
        Parallel(n_jobs=2)(
            delayed(proc_tasks.make_unpicklable_result)(i) for i in range(8))
    assert "only unpickles in the process" in str(info.value)
    assert Parallel(n_jobs=2)(delayed(square)(i) for i in range(10)) == \
        [i * i for i in range(10)]


def test_argument_that_cannot_be_unpickled_in_the_worker():
    args = [proc_tasks.OnlyInParent() if i == 4 else i for i in range(10)]
    with pytest.raises(pickle.PicklingError) as info:
        Parallel(n_jobs=2)(delayed(proc_tasks.identity)(a) for a in args)
    assert "only unpickles in the process" in str(info.value)
    assert re.search(r"\b4\b", str(info.value)), str(info.value)
    assert Parallel(n_jobs=2)(delayed(square)(i) for i in range(10)) == \
        [i * i for i in range(10)]


@pytest.mark.slow
def test_large_arguments_and_results_do_not_deadlock():
    blob = b"x" * (8 << 20)
    out = Parallel(n_jobs=2)(delayed(proc_tasks.identity)(blob) for _ in range(8))
    assert [len(b) for b in out] == [len(blob)] * 8
