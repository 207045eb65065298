"""Behaviours joblib's own test suite checks, one test each here
too: the wording code matches on, the warnings joblib gives, and the
arguments joblib honours (initializer, batch_size with n_jobs=1)."""
import contextlib
import os
import re
import threading
import warnings

import pytest

from joblib_fast import (
    Parallel,
    delayed,
    parallel_config,
    register_parallel_backend,
)
from joblib_fast.backends.base import ParallelBackendBase, ThreadingBackend

ALREADY_RUNNING = "This Parallel instance is already running"


def square(x):
    return x * x


# ------------------------------------------------------ already running


@pytest.mark.parametrize("backend,n_jobs", [
    ("sequential", 1), ("threading", 1), ("threading", 2), ("loky", 1)])
@pytest.mark.parametrize("return_as", ["generator", "generator_unordered"])
def test_second_call_while_a_generator_is_open_raises(backend, n_jobs,
                                                      return_as):
    parallel = Parallel(n_jobs=n_jobs, backend=backend, return_as=return_as)
    gen = parallel(delayed(square)(i) for i in range(4))
    with pytest.raises(RuntimeError, match=ALREADY_RUNNING):
        parallel(delayed(square)(i) for i in range(4))
    assert sorted(gen) == [0, 1, 4, 9]
    # Once the generator is done the instance runs again.
    assert parallel(delayed(square)(i) for i in range(2)) is not None


def test_closed_sequential_generator_frees_the_instance():
    parallel = Parallel(n_jobs=1, return_as="generator")
    gen = parallel(delayed(square)(i) for i in range(4))
    gen.close()
    assert list(parallel(delayed(square)(i) for i in range(3))) == [0, 1, 4]


def test_nested_call_of_the_same_instance_raises_joblibs_words():
    parallel = Parallel(n_jobs=1)

    def inner():
        return parallel(delayed(square)(i) for i in range(2))

    with pytest.raises(RuntimeError, match=ALREADY_RUNNING):
        parallel([delayed(inner)()])


# ----------------------------------------------------- n_jobs=1 details


def test_batch_size_reads_input_ahead_with_one_job():
    events = []

    def produce():
        for i in range(6):
            events.append(f"P{i}")
            yield delayed(events.append)(f"C{i}")

    Parallel(n_jobs=1, batch_size=3)(produce())
    assert events == ["P0", "P1", "P2", "C0", "C1", "C2",
                      "P3", "P4", "P5", "C3", "C4", "C5"]


def test_auto_batch_size_with_one_job_is_one_at_a_time():
    events = []

    def produce():
        for i in range(3):
            events.append(f"P{i}")
            yield delayed(events.append)(f"C{i}")

    Parallel(n_jobs=1)(produce())
    assert events == ["P0", "C0", "P1", "C1", "P2", "C2"]


# --------------------------------------------------------- backends


class ZeroWorkerBackend(ThreadingBackend):
    def configure(self, *args, **kwargs):
        return 0


def test_backend_with_zero_workers_raises_runtime_error():
    with pytest.raises(RuntimeError,
                       match="ZeroWorkerBackend has no active worker"):
        Parallel(n_jobs=2, backend=ZeroWorkerBackend())(
            delayed(square)(i) for i in range(3))


class ProcessLike(ParallelBackendBase):
    supports_sharedmem = False

    def effective_n_jobs(self, n_jobs):
        return n_jobs


def test_sharedmem_replacing_a_configured_backend_is_reported(capsys):
    with parallel_config(ProcessLike()):
        p = Parallel(n_jobs=2, require="sharedmem", verbose=10)
        assert type(p._backend) is ThreadingBackend
        quiet = Parallel(n_jobs=2, require="sharedmem")
        assert type(quiet._backend) is ThreadingBackend
    out, err = capsys.readouterr()
    assert out.strip() == (
        "Using ThreadingBackend as joblib backend instead of ProcessLike as "
        "the latter does not provide shared memory semantics.")
    assert err == ""


def test_retrieval_context_of_a_threading_subclass_is_entered():
    entered = []

    class Counting(ThreadingBackend):
        @contextlib.contextmanager
        def retrieval_context(self):
            entered.append(1)
            yield

    register_parallel_backend("jf-test-retrieval", Counting)
    with parallel_config("jf-test-retrieval"):
        Parallel(n_jobs=2)(delayed(square)(i) for i in range(5))
        assert list(Parallel(n_jobs=2, return_as="generator")(
            delayed(square)(i) for i in range(3))) == [0, 1, 4]
    assert entered == [1, 1]


# ------------------------------------------------------------ messages


def test_print_hook_receives_the_verbose_lines():
    class Logged(Parallel):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.messages = []

        def _print(self, msg):
            self.messages.append(msg)

    for n_jobs in (1, 2):
        p = Logged(n_jobs=n_jobs, backend="threading", verbose=100)
        p(delayed(square)(i) for i in range(12))
        done = [m for m in p.messages if m.startswith("Done")]
        assert done and re.match(r"Done\s+12 out of\s+12 ", done[-1])


@pytest.mark.parametrize("param,kind", [("prefer", "backend hint"),
                                        ("require", "backend constraint")])
def test_bad_hint_error_has_joblibs_words(param, kind):
    with pytest.raises(ValueError, match=f"{param}=wrong is not a valid "
                                         f"{kind}"):
        parallel_config(**{param: "wrong"})


def test_backend_params_without_backend_error_has_joblibs_words():
    with pytest.raises(ValueError,
                       match="only supported when backend is not None"):
        parallel_config(inner_max_num_threads=1)
    with pytest.raises(ValueError,
                       match="only supported when backend is a string"):
        parallel_config(backend=ThreadingBackend(), backend_param=1)


# --------------------------------------------------------- initializer


_thread_state = threading.local()


def _init_thread(tag, seen):
    _thread_state.tag = tag
    seen.append(threading.get_ident())


def _read_tag(_):
    return getattr(_thread_state, "tag", None)


def _read_tag_together(barrier):
    # Two tasks meet here, so two threads ran tasks of the call (a thread
    # that runs no batch of a pool never runs its initializer).
    barrier.wait(timeout=30)
    return _read_tag(None)


def test_initializer_runs_once_in_each_worker_thread():
    seen = []
    barrier = threading.Barrier(2)
    out = Parallel(n_jobs=2, backend="threading", batch_size=1,
                   initializer=_init_thread, initargs=("ready", seen))(
        [delayed(_read_tag_together)(barrier)] * 2
        + [delayed(_read_tag)(i) for i in range(18)])
    assert out == ["ready"] * 20
    assert len(seen) == 2 and len(set(seen)) == 2


def test_initializer_from_parallel_config_for_threads():
    seen = []
    with parallel_config("threading", n_jobs=2, initializer=_init_thread,
                         initargs=("configured", seen)):
        out = Parallel()(delayed(_read_tag)(i) for i in range(6))
    assert out == ["configured"] * 6


def test_threads_of_a_with_block_are_initialized_once():
    seen = []
    barrier = threading.Barrier(2)
    with Parallel(n_jobs=2, backend="threading", batch_size=1,
                  initializer=_init_thread, initargs=("block", seen)) as p:
        for _ in range(3):
            tasks = [delayed(_read_tag_together)(barrier)] * 2 + [
                delayed(_read_tag)(i) for i in range(2)]
            assert p(tasks) == ["block"] * 4
    assert len(seen) == 2 and len(set(seen)) == 2


def test_bad_initializer_is_a_clear_error():
    with pytest.raises(TypeError, match="initializer must be a callable"):
        Parallel(n_jobs=2, backend="threading", initializer=3)(
            delayed(square)(i) for i in range(2))


def _set_env_marker(value):
    os.environ["JF_TEST_INIT_MARKER"] = value


def _get_env_marker(_):
    return os.environ.get("JF_TEST_INIT_MARKER"), os.getpid()


def test_initializer_runs_in_process_workers():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = Parallel(n_jobs=2, backend="loky", initializer=_set_env_marker,
                       initargs=("set",))(
            delayed(_get_env_marker)(i) for i in range(8))
    assert {marker for marker, _ in out} == {"set"}
    assert os.getpid() not in {pid for _, pid in out}
    assert "JF_TEST_INIT_MARKER" not in os.environ


# --------------------------------------------------------------- nesting


def _nested_processes(n_jobs):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        out = Parallel(n_jobs=n_jobs, backend="loky")(
            delayed(square)(i) for i in range(3))
    return out, [str(w.message) for w in record]


def test_processes_nested_below_threads_warn_and_run_in_place():
    results = Parallel(n_jobs=2, backend="threading")(
        delayed(_nested_processes)(n) for n in (2, 1))
    (out2, messages2), (out1, messages1) = results
    assert out2 == out1 == [0, 1, 4]
    assert messages2 == ["Multiprocessing-backed parallel loops cannot be "
                         "nested below threads, setting n_jobs=1"]
    assert messages1 == []  # n_jobs=1 asked for: nothing to say


# ------------------------------------------------- generators and workers


def _wait_for_file(path, i):
    import time
    if i == 1:
        deadline = time.monotonic() + 10
        while not os.path.exists(path):
            if time.monotonic() > deadline:
                return "gave up"
            time.sleep(0.01)
        return "released"
    return i


def test_unordered_generator_on_processes_does_not_queue_behind_a_busy_worker(
        tmp_path):
    # Task 1 runs until the test has received every other result: if a
    # batch were queued on its worker, the 9 results could not all arrive.
    flag = str(tmp_path / "release")
    gen = Parallel(n_jobs=2, backend="loky", batch_size=1,
                   return_as="generator_unordered")(
        delayed(_wait_for_file)(flag, i) for i in range(10))
    fast = [next(gen) for _ in range(9)]
    open(flag, "w").close()
    assert "gave up" not in fast
    assert sorted(fast) == [0, 2, 3, 4, 5, 6, 7, 8, 9]
    assert list(gen) == ["released"]


def _wait_event(event, i):
    event.wait(30)
    return i


def test_dropped_thread_generator_does_not_hold_up_another_call():
    release = threading.Event()
    # Ends the blocked tasks if the test fails (a call waiting for them).
    watchdog = threading.Timer(5.0, release.set)
    watchdog.start()
    try:
        gen = Parallel(n_jobs=2, backend="threading", return_as="generator")(
            delayed(_wait_event)(release, i) for i in range(4))
        del gen  # its two running tasks still wait on `release`
        out = list(Parallel(n_jobs=2, backend="threading",
                            return_as="generator")(
            delayed(square)(i) for i in range(4)))
        # Reached while the dropped call's tasks are still blocked.
        assert not release.is_set()
        assert out == [0, 1, 4, 9]
    finally:
        watchdog.cancel()
        release.set()


# ------------------------------------------------------ process workers


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("not today")


def test_unpicklable_task_error_starts_with_joblibs_words():
    import pickle
    with pytest.raises(pickle.PicklingError) as info:
        Parallel(n_jobs=2, backend="loky")(
            delayed(id)(_Unpicklable()) for _ in range(4))
    message = str(info.value)
    assert message.startswith(
        "Could not pickle the task to send it to the workers.")
    assert "not today" in message  # ours: which task, and why


def _pid_after_init(marker, _):
    return os.environ.get("JF_TEST_INIT_MARKER") == marker, os.getpid()


@pytest.mark.slow
def test_process_workers_reused_only_for_the_same_initializer_arguments():
    def run(marker):
        out = Parallel(n_jobs=2, backend="loky", batch_size=1,
                       initializer=_set_env_marker, initargs=(marker,))(
            delayed(_pid_after_init)(marker, i) for i in range(8))
        assert all(ok for ok, _ in out), out
        return {pid for _, pid in out}

    first = run("a")
    again = run("a")
    other = run("b")
    assert again <= first       # same arguments: the same workers
    assert not other & first    # other arguments: fresh workers


def _failing_initializer():
    raise ValueError("initializer failed on purpose")


def test_failing_initializer_ends_the_process_call_with_a_clear_error():
    from joblib_fast import TerminatedWorkerError
    with pytest.raises(TerminatedWorkerError, match="died unexpectedly"):
        Parallel(n_jobs=2, backend="loky", initializer=_failing_initializer)(
            delayed(square)(i) for i in range(4))


def test_unpicklable_initargs_for_processes_is_a_clear_error():
    import pickle
    with pytest.raises(pickle.PicklingError, match="initializer=.*initargs"):
        Parallel(n_jobs=2, backend="loky", initializer=_set_env_marker,
                 initargs=(threading.Lock(),))(
            delayed(square)(i) for i in range(4))


def _recurse(n):
    return _recurse(n + 1)


def _deep_recursion_with_traceback_pickling():
    # What importing dask.distributed does in a worker: exceptions then
    # pickle their traceback, which is too deep to pickle here.
    from tblib import pickling_support
    pickling_support.install()
    _recurse(0)


def test_error_with_an_unpicklable_traceback_comes_back_as_itself():
    pytest.importorskip("tblib")
    with pytest.raises(RecursionError):
        Parallel(n_jobs=2, backend="loky")(
            delayed(_deep_recursion_with_traceback_pickling)()
            for _ in range(2))
