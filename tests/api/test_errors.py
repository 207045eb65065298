"""Failures: task exceptions, bad arguments, bad input, Ctrl-C (timeouts:
``test_timeouts.py``).

Every failure path must end the call promptly, with a clear error, and
leave no worker thread behind (the autouse leak fixture checks the rest).
"""
from __future__ import annotations

import _thread
import os
import subprocess
import sys
import textwrap
import threading
import time
import traceback

import pytest
from helpers.common import (
    BACKENDS,
    RETURN_AS,
    CustomError,
    fail_on,
    sleep_and_return,
    square,
    wait_no_worker_threads,
    worker_threads,
)

import joblib_fast
from joblib_fast import Parallel, TaskError, delayed

# A generous bound for "returned promptly": structure, not speed.
PROMPT_SECONDS = 10.0


def run(return_as, result):
    """Consume ``result`` like a user of ``return_as`` would."""
    return result if return_as == "list" else list(result)


class Counter:
    """A thread-safe count of the tasks that started."""

    def __init__(self):
        self.lock = threading.Lock()
        self.value = 0

    def task(self, i, bad=None, seconds=0.001):
        with self.lock:
            self.value += 1
        if i == bad:
            raise ValueError(f"task {i} failed")
        time.sleep(seconds)
        return i


# ---------------------------------------------------------- exceptions


@pytest.mark.parametrize("return_as", RETURN_AS)
@pytest.mark.parametrize("n_jobs", (1, 2))
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("exc_type", (ValueError, KeyError, ZeroDivisionError,
                                      CustomError))
def test_exception_reraised_with_type_and_message(backend, n_jobs, return_as,
                                                  exc_type):
    with pytest.raises(exc_type) as info:
        run(return_as, Parallel(n_jobs=n_jobs, backend=backend,
                                return_as=return_as)(
            delayed(fail_on)(i, 7, exc_type) for i in range(40)))
    assert type(info.value) is exc_type
    if exc_type is CustomError:
        assert str(info.value) == "custom failure in task 7 (code 42)"
        assert info.value.code == 42
    elif exc_type is KeyError:
        assert info.value.args == ("task 7 failed",)
    else:
        assert str(info.value) == "task 7 failed"
    assert worker_threads() == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_traceback_shows_the_failing_task(backend):
    with pytest.raises(ValueError) as info:
        Parallel(n_jobs=2, backend=backend)(
            delayed(fail_on)(i, 3) for i in range(10))
    names = [frame.name for frame in
             traceback.extract_tb(info.value.__traceback__)]
    assert "fail_on" in names, names


@pytest.mark.parametrize("backend", BACKENDS)
def test_only_one_exception_even_if_many_tasks_fail(backend):
    with pytest.raises(ValueError, match=r"task \d+ failed"):
        Parallel(n_jobs=2, backend=backend, batch_size=1)(
            delayed(fail_on)(i, i) for i in range(20))


@pytest.mark.parametrize("backend", BACKENDS)
def test_base_exception_from_task_propagates(backend):
    class Stop(BaseException):
        pass

    def task(i):
        if i == 2:
            raise Stop("stop here")
        return i

    with pytest.raises(Stop, match="stop here"):
        Parallel(n_jobs=2, backend=backend)(delayed(task)(i) for i in range(10))
    # The call returned at once; its threads end with their task.
    assert wait_no_worker_threads() == []


@pytest.mark.parametrize("return_as", RETURN_AS)
@pytest.mark.parametrize("batch_size", (1, 50, "auto"))
@pytest.mark.parametrize("backend", BACKENDS)
def test_no_new_tasks_start_after_an_exception(backend, batch_size,
                                               return_as):
    counter = Counter()
    with pytest.raises(ValueError, match="task 5 failed"):
        run(return_as, Parallel(n_jobs=2, backend=backend,
                                batch_size=batch_size, return_as=return_as)(
            delayed(counter.task)(i, 5) for i in range(1000)))
    if backend == "sequential":
        assert counter.value == 6
    else:
        assert counter.value < 100, counter.value
    assert worker_threads() == []


@pytest.mark.parametrize("return_as", ("generator", "generator_unordered"))
def test_results_before_the_error_are_yielded(return_as):
    gen = Parallel(n_jobs=2, backend="threading", return_as=return_as,
                   batch_size=1, pre_dispatch=1)(
        delayed(fail_on)(i, 5) for i in range(10))
    got = []
    with pytest.raises(ValueError, match="task 5 failed"):
        for value in gen:
            got.append(value)  # noqa: PERF402 (keep those before the error)
    # pre_dispatch=1, batch_size=1: one task at a time, so 0..4 came first.
    assert sorted(got) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("return_as", RETURN_AS)
def test_failed_call_does_not_leak_into_next_call(return_as):
    def first_call_task(i):
        if i == 0:
            time.sleep(0.02)
            raise ValueError("first call failed")
        time.sleep(0.05)
        return ("old", i)

    with Parallel(n_jobs=2, backend="threading", return_as=return_as,
                  batch_size=1) as p:
        with pytest.raises(ValueError, match="first call failed"):
            run(return_as, p(delayed(first_call_task)(i) for i in range(20)))
        for _attempt in range(3):
            out = run(return_as, p(delayed(lambda i: ("new", i))(i)
                                   for i in range(30)))
            expected = [("new", i) for i in range(30)]
            if return_as == "generator_unordered":
                assert sorted(out) == expected
            else:
                assert out == expected
    assert worker_threads() == []


def test_abandoned_generator_does_not_leak_into_next_call():
    with Parallel(n_jobs=2, backend="threading",
                  return_as="generator") as p:
        gen = p(delayed(sleep_and_return)(("old", i), 0.01) for i in range(50))
        assert next(gen) == ("old", 0)
        gen.close()
        out = list(p(delayed(lambda i: ("new", i))(i) for i in range(30)))
    assert out == [("new", i) for i in range(30)]


# ------------------------------------------------------- bad arguments


def build_and_call(**kwargs):
    kwargs.setdefault("backend", "threading")
    return Parallel(**kwargs)(delayed(square)(i) for i in range(3))


@pytest.mark.parametrize("kwargs, exc_type, match", [
    ({"n_jobs": 0}, ValueError, "n_jobs"),
    ({"n_jobs": 0, "backend": "sequential"}, ValueError, "n_jobs"),
    # joblib converts n_jobs with int() (2.5 -> 2, "2" -> 2: see
    # api/test_config.py); what int() refuses is an error.
    ({"n_jobs": "two"}, ValueError, "n_jobs"),
    ({"n_jobs": [2]}, TypeError, "n_jobs"),
    ({"n_jobs": True}, TypeError, "n_jobs"),
    ({"n_jobs": 0.5}, ValueError, "n_jobs"),
    ({"backend": "no-such-backend"}, ValueError, "no-such-backend"),
    ({"return_as": "bogus"}, ValueError, "bogus"),
    ({"batch_size": 0}, ValueError, "batch_size"),
    ({"batch_size": -1}, ValueError, "batch_size"),
    ({"batch_size": "x"}, ValueError, "batch_size"),
    ({"batch_size": 1.5}, ValueError, "batch_size"),
    ({"pre_dispatch": "bogus"}, ValueError, "pre_dispatch"),
    ({"pre_dispatch": 0}, ValueError, "pre_dispatch"),
    ({"pre_dispatch": -3}, ValueError, "pre_dispatch"),
    ({"pre_dispatch": "__import__('os')"}, ValueError, "pre_dispatch"),
    ({"timeout": -1}, ValueError, "timeout"),
    ({"prefer": "gpu"}, ValueError, "gpu"),
    ({"require": "x"}, ValueError, "require"),
    ({"mmap_mode": "x"}, ValueError, "mmap_mode"),
    ({"verbose": "loud"}, TypeError, "verbose"),
], ids=lambda v: repr(v) if isinstance(v, dict) else "")
def test_bad_arguments(kwargs, exc_type, match):
    with pytest.raises(exc_type, match=match):
        build_and_call(**kwargs)


@pytest.mark.parametrize("items", [
    [1, 2, 3],
    [square],
    [(square, 1)],
    [(square, (1,), {}, "extra")],
    [delayed(square)(1), "not a task"],
    [[square, (1,), {}]],
    [(square, (1,), "not kwargs")],
], ids=["ints", "bare-func", "pair", "4-tuple", "str-later", "list",
        "bad-kwargs"])
@pytest.mark.parametrize("return_as", RETURN_AS)
@pytest.mark.parametrize("n_jobs", (1, 2))
@pytest.mark.parametrize("backend", BACKENDS)
def test_items_that_are_not_tasks(backend, n_jobs, return_as, items):
    with pytest.raises(TaskError, match="delayed") as info:
        run(return_as, Parallel(n_jobs=n_jobs, backend=backend,
                                return_as=return_as)(items))
    assert isinstance(info.value, TypeError)
    assert worker_threads() == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_task_with_non_callable_func(backend):
    with pytest.raises(TypeError, match="callable"):
        Parallel(n_jobs=2, backend=backend)([(42, (), {})])


def test_task_error_is_exported():
    assert joblib_fast.TaskError is TaskError
    assert issubclass(TaskError, TypeError)


@pytest.mark.parametrize("bad", [None, 1, "f", [1, 2]])
def test_delayed_non_callable(bad):
    with pytest.raises(TypeError, match="callable"):
        delayed(bad)


# ------------------------------------------------------ failing input


class InputBroke(RuntimeError):
    pass


def broken_input(n_good):
    for i in range(n_good):
        yield delayed(square)(i)
    raise InputBroke(f"input broke after {n_good} items")


@pytest.mark.parametrize("n_good", (0, 3, 200))
@pytest.mark.parametrize("return_as", RETURN_AS)
@pytest.mark.parametrize("n_jobs", (1, 2))
@pytest.mark.parametrize("backend", BACKENDS)
def test_iterable_raising_midway_propagates(backend, n_jobs, return_as,
                                            n_good):
    with pytest.raises(InputBroke, match=f"after {n_good} items"):
        run(return_as, Parallel(n_jobs=n_jobs, backend=backend,
                                return_as=return_as)(broken_input(n_good)))
    assert worker_threads() == []


@pytest.mark.parametrize("return_as", RETURN_AS)
def test_iterable_raising_in_with_block_then_reuse(return_as):
    with Parallel(n_jobs=2, backend="threading", return_as=return_as) as p:
        with pytest.raises(InputBroke):
            run(return_as, p(broken_input(10)))
        assert sorted(run(return_as, p(delayed(square)(i)
                                       for i in range(10)))) == \
            [i * i for i in range(10)]
    assert worker_threads() == []


def test_same_instance_refuses_concurrent_call():
    # A generator output still running holds the instance; a second call
    # on it is an error (not a silent mix of two calls' results).
    with Parallel(n_jobs=2, backend="threading", return_as="generator") as p:
        gen = p(delayed(square)(i) for i in range(100))
        assert next(gen) == 0
        with pytest.raises(RuntimeError):
            p(delayed(square)(i) for i in range(3))
        assert list(gen) == [i * i for i in range(1, 100)]


# --------------------------------------------------------------- Ctrl-C


@pytest.mark.parametrize("return_as", RETURN_AS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_keyboard_interrupt_stops_the_call(backend, return_as):
    counter = Counter()

    def task(i):
        if i == 3:
            _thread.interrupt_main()  # as if the user pressed Ctrl-C
        return counter.task(i, seconds=0.005)

    with pytest.raises(KeyboardInterrupt):
        run(return_as, Parallel(n_jobs=2, backend=backend,
                                return_as=return_as)(
            delayed(task)(i) for i in range(1000)))
    assert counter.value < 500, counter.value
    # The call returned at once; its threads end with their task.
    assert wait_no_worker_threads() == []


@pytest.mark.parametrize("return_as", RETURN_AS)
def test_keyboard_interrupt_in_with_block_then_reuse(return_as):
    def task(i):
        if i == 2:
            _thread.interrupt_main()
        time.sleep(0.005)
        return i

    with Parallel(n_jobs=2, backend="threading", return_as=return_as) as p:
        with pytest.raises(KeyboardInterrupt):
            run(return_as, p(delayed(task)(i) for i in range(1000)))
        assert sorted(run(return_as, p(delayed(square)(i)
                                       for i in range(10)))) == \
            [i * i for i in range(10)]
    # The call returned at once; its threads end with their task.
    assert wait_no_worker_threads() == []


SIGINT_SCRIPT = textwrap.dedent("""
    import os, signal, threading, time
    from joblib_fast import Parallel, delayed

    started = []

    def task(i):
        started.append(i)
        if i == 3:
            os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.005)
        return i

    t0 = time.monotonic()
    try:
        Parallel(n_jobs=2, backend="threading")(
            delayed(task)(i) for i in range(2000))
        print("RESULT completed")
    except KeyboardInterrupt:
        # The call returns at once; its tasks end with their 5 ms.  The
        # shared pool's threads outlive calls (at most n_jobs of them); no
        # other worker thread may be left.
        from joblib_fast import _threads
        shared = set(_threads.shared_pool_threads())
        assert len(shared) <= 2, shared
        def left_threads():
            return [t.name for t in threading.enumerate() if t.is_alive()
                    and t.name.startswith("joblib_fast-thread")
                    and t not in shared]
        deadline = time.monotonic() + 3.0
        while left_threads() and time.monotonic() < deadline:
            time.sleep(0.01)
        left = left_threads()
        print("RESULT interrupted", len(started), len(left),
              round(time.monotonic() - t0, 3))
""")


def test_real_sigint_in_subprocess(tmp_path):
    package_root = os.path.dirname(os.path.dirname(joblib_fast.__file__))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [package_root] + [p for p in env.get("PYTHONPATH", "").split(
            os.pathsep) if p])
    # cwd elsewhere: `python -c` puts it first on sys.path, and a source
    # checkout there (without the compiled core) would shadow the install.
    proc = subprocess.run([sys.executable, "-c", SIGINT_SCRIPT], env=env,
                          capture_output=True, text=True, timeout=60,
                          cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines()
             if line.startswith("RESULT")]
    assert len(lines) == 1, proc.stdout + proc.stderr
    words = lines[0].split()
    assert words[1] == "interrupted", lines[0]
    n_started, n_left = int(words[2]), int(words[3])
    assert n_started < 1000, lines[0]
    assert n_left == 0, lines[0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_task_with_non_iterable_args(backend):
    with pytest.raises(TaskError, match="delayed"):
        Parallel(n_jobs=2, backend=backend)([(square, 5, {})])


@pytest.mark.parametrize("return_as", RETURN_AS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_non_iterable_argument(backend, return_as):
    p = Parallel(n_jobs=2, backend=backend, return_as=return_as)
    with pytest.raises(TypeError):
        run(return_as, p(5))
    # Nothing is left running and the instance still works.
    assert worker_threads() == []
    out = run(return_as, p(delayed(square)(i) for i in range(3)))
    if return_as == "generator_unordered":
        out = sorted(out)
    assert out == [0, 1, 4]


def test_generator_consumed_after_with_block_ends_cleanly():
    # The with-block released the pool while a generator output was still
    # open: finishing it must give every result or raise a clear error,
    # never hang, and leave no thread.
    with Parallel(n_jobs=2, backend="threading", return_as="generator") as p:
        gen = p(delayed(sleep_and_return)(i, 0.002) for i in range(100))
        assert next(gen) == 0
    try:
        rest = list(gen)
    except RuntimeError:
        pass
    else:
        assert rest == list(range(1, 100))
    assert worker_threads() == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_exception_in_nested_call_reaches_the_caller(backend):
    def outer(k):
        return Parallel(n_jobs=2, backend="threading")(
            delayed(fail_on)(j, 2) for j in range(4))

    with pytest.raises(ValueError, match="task 2 failed"):
        Parallel(n_jobs=2, backend=backend)(delayed(outer)(k) for k in range(3))
    assert worker_threads() == []


def test_task_error_names_the_bad_item():
    with pytest.raises(TaskError, match=r"item 2\b"):
        Parallel(n_jobs=2, backend="threading")(
            [delayed(square)(0), delayed(square)(1), "oops"])


@pytest.mark.parametrize("backend", [42, object(), 3.5])
def test_backend_of_wrong_type(backend):
    with pytest.raises(ValueError, match="backend"):
        Parallel(n_jobs=2, backend=backend)


def test_unknown_backend_in_parallel_config():
    with pytest.raises(ValueError, match="no-such-backend"):
        joblib_fast.parallel_config(backend="no-such-backend")


@pytest.mark.parametrize("backend", ["threading", "loky"])
def test_generator_used_after_with_block_raises_clearly(backend):
    # (The sequential backend has no workers to lose: it keeps yielding.)
    with Parallel(n_jobs=2, backend=backend, return_as="generator") as p:
        gen = p(delayed(sleep_and_return)(i, 0.01) for i in range(200))
        assert next(gen) == 0
    with pytest.raises(RuntimeError, match="block exited"):
        list(gen)
    assert wait_no_worker_threads() == []


@pytest.mark.parametrize("value", ["1e400", "1+" * 2500 + "1",
                                   "n_jobs*1e308*10", "-(" * 3000 + "1"
                                   + ")" * 3000],
                         ids=["1e400", "long-sum", "inf", "deep-parens"])
def test_pre_dispatch_out_of_range_is_a_value_error(value):
    with pytest.raises(ValueError, match="pre_dispatch"):
        Parallel(n_jobs=2, backend="threading", pre_dispatch=value)(
            delayed(abs)(i) for i in range(4))
