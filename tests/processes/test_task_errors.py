"""The process backend's task errors: re-raised with the remote traceback,
errors that cannot come back, dispatch stops at the first error,
abandoned generators, concurrent calls, backend names.
"""
from __future__ import annotations

import os
import threading
import time

import pytest
from helpers import proc_tasks
from helpers.common import (
    NO_HANG,
    pids_of,
    wait_until,
)
from helpers.proc_tasks import square

from joblib_fast import Parallel, delayed
from joblib_fast.backends.processes import (
    RemoteTraceback,
    TaskFailedError,
)

# -------------------------------------------------------------- errors


@pytest.mark.slow
@pytest.mark.parametrize("return_as", ["list", "generator", "generator_unordered"])
def test_task_exception_reraised_with_remote_traceback(return_as):
    received = []
    with pytest.raises(proc_tasks.CustomError,
                       match="task 3 failed on purpose") as info:
        out = Parallel(n_jobs=2, return_as=return_as)(
            delayed(proc_tasks.raise_custom)(i) for i in range(10))
        # One by one, to keep what came before the error.
        for value in out:
            received.append(value)  # noqa: PERF402
    if return_as == "generator":
        # Like joblib, the error may be raised before ready results are
        # yielded; what is yielded comes in order.
        assert received == [0, 1, 2][:len(received)]
    assert 3 not in received
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    text = str(cause)
    assert "raise_custom" in text
    assert "proc_tasks.py" in text
    assert "CustomError: task 3 failed on purpose" in text


# (An exception whose __init__ cannot take its own args comes back as
# itself: test_exception_whose_init_cannot_take_its_args_comes_back.)
@pytest.mark.parametrize("func, words", [
    (proc_tasks.raise_with_lock_attribute, ["ValueError", "carries a lock"]),
])
def test_exception_that_cannot_come_back(func, words):
    with pytest.raises(TaskFailedError) as info:
        Parallel(n_jobs=2)(delayed(func)(i) for i in range(4))
    for word in words:
        assert word in str(info.value)
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert func.__name__ in str(info.value.__cause__)


@pytest.mark.slow
@pytest.mark.parametrize("return_as", ["list", "generator"])
def test_nothing_dispatched_after_the_first_error(return_as, tmp_path):
    log = tmp_path / "started.txt"
    consumed = []

    def tasks():
        for i in range(300):
            consumed.append(i)
            yield delayed(proc_tasks.append_then_maybe_fail)(str(log), i, 10, 0.02)

    with pytest.raises(proc_tasks.CustomError, match="stop at 10"):
        for _ in Parallel(n_jobs=2, return_as=return_as)(tasks()):
            pass
    started = log.read_text().splitlines()
    # The call stopped feeding soon after task 10, not at the end.
    assert len(consumed) < 60, len(consumed)
    assert len(started) <= len(consumed)
    assert "10" in started
    # Nothing was started after the error reached the caller.
    time.sleep(0.5)
    assert log.read_text().splitlines() == started


def test_error_in_the_input_iterator():
    def tasks():
        for i in range(10):
            if i == 5:
                raise ZeroDivisionError("bad input")
            yield delayed(proc_tasks.sleep_then_return)(i, 0.02)

    with pytest.raises(ZeroDivisionError, match="bad input"):
        Parallel(n_jobs=2)(tasks())
    assert Parallel(n_jobs=2)(delayed(square)(i) for i in range(10)) == \
        [i * i for i in range(10)]


@pytest.mark.slow
@pytest.mark.parametrize("how", ["close", "break", "del"])
def test_abandoned_generator_cleans_up(how, tmp_path):
    log = tmp_path / "started.txt"
    gen = Parallel(n_jobs=2, return_as="generator")(
        delayed(proc_tasks.append_then_maybe_fail)(str(log), i, -1, 0.2)
        for i in range(50))
    if how == "break":
        for first in gen:  # noqa: B007 - kept after the loop
            break
    else:
        first = next(gen)
        if how == "close":
            gen.close()
        else:
            del gen
    assert first == 0
    # The next call runs on the same pool once the abandoned one let go.
    assert Parallel(n_jobs=2)(delayed(square)(i) for i in range(10)) == \
        [i * i for i in range(10)]
    # Not left running the other 49 tasks: once the log stops growing
    # (tasks dispatched ahead may still start: with "break" the generator
    # is alive, just not driven), only those dispatched ahead (pre_dispatch)
    # ever started. A call that kept running would log all 50.
    def log_is_still():
        before = log.read_text()
        time.sleep(0.6)  # longer than one task
        return log.read_text() == before
    assert wait_until(log_is_still, NO_HANG)
    started = log.read_text().splitlines()
    assert 1 <= len(started) <= 10, started


def test_concurrent_calls_from_threads():
    results = {}

    def run(k):
        results[k] = Parallel(n_jobs=2)(
            delayed(proc_tasks.sleep_then_return)(i + k, 0.005) for i in range(40))

    threads = [threading.Thread(target=run, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(NO_HANG * 2)
    assert results == {k: [i + k for i in range(40)] for k in range(3)}


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["loky", "multiprocessing", None])
def test_process_backend_names(backend):
    out = Parallel(n_jobs=2, backend=backend)(
        delayed(proc_tasks.pid_of)(i) for i in range(10))
    assert [x for x, _ in out] == list(range(10))
    assert os.getpid() not in pids_of(out)


def test_exception_building_its_message_comes_back_exactly():
    with pytest.raises(proc_tasks.CodeError) as info:
        Parallel(n_jobs=2)(delayed(proc_tasks.raise_code_error)(3)
                           for _ in range(2))
    assert str(info.value) == "failed with code 3"
    assert info.value.args == ("failed with code 3",)
    assert info.value.code == 3


def test_exception_whose_init_cannot_take_its_args_comes_back():
    from helpers import proc_tasks
    with pytest.raises(proc_tasks.UnpicklableError) as info:
        Parallel(n_jobs=2)(delayed(proc_tasks.raise_unpicklable_error)(i)
                           for i in range(2))
    assert info.value.args == ("left-right",)
