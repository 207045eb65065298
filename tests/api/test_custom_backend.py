"""User backends written against joblib's documented ParallelBackendBase
contract run unmodified: both the ``submit`` + ``retrieve_result_callback``
style and the older ``apply_async`` style."""
import pickle
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.pool import ThreadPool

import pytest
from helpers.common import ExecutorBackend, fail_on, square

from joblib_fast import (
    Parallel,
    ParallelBackendBase,
    delayed,
    effective_n_jobs,
    parallel_backend,
    parallel_config,
    register_parallel_backend,
)
from joblib_fast.backends import SequentialBackend, ThreadingBackend
from joblib_fast.backends.user import BatchCall
from joblib_fast.config import get_active_backend


class MyError(Exception):
    pass


class RemoteBackend(ExecutorBackend):
    """The seed example: mandatory constructor parameters."""

    def __init__(self, endpoint, api_key, nesting_level=0):
        super().__init__(nesting_level=nesting_level)
        self.endpoint = endpoint
        self.api_key = api_key


class ApplyAsyncBackend(ParallelBackendBase):
    """Older style: apply_async returning an AsyncResult with .get();
    results are retrieved in the caller (supports_retrieve_callback is
    False)."""

    def __init__(self, nesting_level=None, call_callback=True, **kwargs):
        super().__init__(nesting_level=nesting_level, **kwargs)
        self.call_callback = call_callback
        self.events = []
        self._pool = None

    def configure(self, n_jobs=1, parallel=None, **backend_kwargs):
        self.events.append("configure")
        n_jobs = self.effective_n_jobs(n_jobs)
        self._pool = ThreadPool(n_jobs)
        return n_jobs

    def effective_n_jobs(self, n_jobs):
        return 2 if n_jobs is None or n_jobs < 0 else n_jobs

    def apply_async(self, func, callback=None):
        return self._pool.apply_async(
            func, callback=callback if self.call_callback else None)

    def terminate(self):
        self.events.append("terminate")
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None


@pytest.fixture
def custom():
    register_parallel_backend("custom", RemoteBackend)
    return "custom"


# ------------------------------------------------------------ the seed


def test_seed_example_parallel_backend(custom):
    with parallel_backend("custom", endpoint="http://compute",
                          api_key="42") as (backend, n_jobs):
        out = Parallel()(delayed(square)(i) for i in range(10))
    assert out == [i * i for i in range(10)]
    assert backend.endpoint == "http://compute"
    assert backend.api_key == "42"
    assert n_jobs == -1
    assert backend.events[0] == "configure"
    assert backend.events[-2:] == ["stop_call", "terminate"]
    assert sum(backend.submitted) == 10


def test_seed_example_parallel_config(custom):
    with parallel_config(backend="custom", endpoint="http://compute",
                         api_key="42", n_jobs=2) as cfg:
        assert Parallel(n_jobs=2)(delayed(square)(i) for i in range(10)) == \
            [i * i for i in range(10)]
    assert cfg["backend"].api_key == "42"
    assert cfg["backend"].nesting_level == 0


def test_missing_mandatory_parameter_is_a_clear_error(custom):
    with pytest.raises(TypeError, match="api_key"):
        parallel_config(backend="custom", endpoint="http://compute")


# --------------------------------------------------------- both styles


@pytest.mark.parametrize("return_as",
                         ["list", "generator", "generator_unordered"])
def test_submit_style(return_as):
    backend = ExecutorBackend()
    out = Parallel(n_jobs=2, backend=backend, return_as=return_as)(
        delayed(square)(i) for i in range(50))
    out = list(out)
    if return_as == "generator_unordered":
        out = sorted(out)
    assert out == [i * i for i in range(50)]
    assert backend.events[:2] == ["configure", "start_call"]
    assert backend.events[-2:] == ["stop_call", "terminate"]


@pytest.mark.parametrize("call_callback", [True, False])
def test_apply_async_style(call_callback):
    backend = ApplyAsyncBackend(call_callback=call_callback)
    out = Parallel(n_jobs=2, backend=backend)(
        delayed(square)(i) for i in range(30))
    assert out == [i * i for i in range(30)]
    assert backend.events == ["configure", "terminate"]


def test_apply_async_style_error_keeps_type():
    backend = ApplyAsyncBackend()
    with pytest.raises(MyError, match="task 3 failed"):
        Parallel(n_jobs=2, backend=backend, batch_size=1)(
            delayed(fail_on)(i, 3, MyError) for i in range(10))
    assert backend.events[-1] == "terminate"


def test_apply_async_style_has_no_generators():
    # As in joblib: without result callbacks there is no return_as
    # generator.
    with pytest.raises(ValueError, match="return_as"):
        Parallel(n_jobs=2, backend=ApplyAsyncBackend(),
                 return_as="generator")


# -------------------------------------------------- lifecycle and errors


def test_task_error_keeps_type_and_aborts():
    backend = ExecutorBackend()
    with pytest.raises(MyError, match="task 5 failed"):
        Parallel(n_jobs=2, backend=backend, batch_size=1)(
            delayed(fail_on)(i, 5, MyError) for i in range(20))
    # A plain call: the backend need not be usable again.
    assert ("abort_everything", False) in backend.events
    assert backend.events[-2:] == ["stop_call", "terminate"]


def test_managed_block_configures_once_and_keeps_backend_ready():
    backend = ExecutorBackend()
    with Parallel(n_jobs=2, backend=backend) as parallel:
        assert parallel(delayed(square)(i) for i in range(5)) == \
            [0, 1, 4, 9, 16]
        with pytest.raises(MyError):
            parallel(delayed(fail_on)(i, 2, MyError) for i in range(5))
        assert parallel(delayed(square)(i) for i in range(3)) == [0, 1, 4]
        assert "terminate" not in backend.events
    assert backend.events.count("configure") == 1
    assert ("abort_everything", True) in backend.events
    assert backend.events.count("start_call") == 3
    assert backend.events.count("stop_call") == 3
    assert backend.events[-1] == "terminate"


def test_generator_closed_early_aborts():
    backend = ExecutorBackend()
    gen = Parallel(n_jobs=2, backend=backend, return_as="generator",
                   batch_size=1)(
        delayed(time.sleep)(0.01) for _ in range(50))
    next(gen)
    gen.close()
    assert ("abort_everything", False) in backend.events
    assert backend.events[-1] == "terminate"


def test_configure_receives_joblib_arguments():
    backend = ExecutorBackend()
    parallel = Parallel(n_jobs=2, backend=backend, my_option=7,
                        max_nbytes="1K")
    parallel(delayed(square)(i) for i in range(3))
    kwargs = backend.configure_kwargs
    assert backend.parallel is parallel
    assert kwargs["my_option"] == 7
    assert kwargs["max_nbytes"] == 1024
    for key in ("temp_folder", "mmap_mode", "prefer", "require", "verbose"):
        assert key in kwargs


def test_configure_returning_one_runs_in_the_caller():
    backend = ExecutorBackend()
    caller = threading.get_ident()
    out = Parallel(n_jobs=1, backend=backend)(
        delayed(threading.get_ident)() for _ in range(3))
    assert out == [caller] * 3
    assert "start_call" not in backend.events
    assert backend.events[-1] == "terminate"


class WrongResults(ExecutorBackend):
    def retrieve_result_callback(self, future):
        return future.result()[:-1]


def test_backend_returning_a_wrong_result_list():
    with pytest.raises(RuntimeError, match="expected the list"):
        Parallel(n_jobs=2, backend=WrongResults(), batch_size=2)(
            delayed(square)(i) for i in range(4))


# ------------------------------------------------------------- batching


class BatchingBackend(ExecutorBackend):
    def __init__(self, size=4, **kwargs):
        super().__init__(**kwargs)
        self.size = size
        self.completed = []

    def compute_batch_size(self):
        return self.size

    def batch_completed(self, batch_size, duration):
        assert duration >= 0
        self.completed.append(batch_size)


@pytest.mark.parametrize("return_as",
                         ["list", "generator", "generator_unordered"])
def test_compute_batch_size_is_honoured(return_as):
    backend = BatchingBackend(size=4)
    seen = []
    out = Parallel(n_jobs=2, backend=backend, return_as=return_as,
                   callback=lambda i, v: seen.append((i, v)))(
        delayed(square)(i) for i in range(23))
    out = list(out)
    if return_as == "generator_unordered":
        out = sorted(out)
    assert out == [i * i for i in range(23)]
    assert backend.submitted == [4, 4, 4, 4, 4, 3]
    assert sorted(backend.completed) == sorted(backend.submitted)
    assert sorted(seen) == [(i, i * i) for i in range(23)]


def test_fixed_batch_size_wins_over_compute_batch_size():
    backend = BatchingBackend(size=4)
    Parallel(n_jobs=2, backend=backend, batch_size=5)(
        delayed(square)(i) for i in range(12))
    assert backend.submitted == [5, 5, 2]
    assert sum(backend.completed) == 12


def test_batches_have_a_length_and_pickle():
    batch = BatchCall([(square, (3,), {}), (square, (4,), {})], {})
    assert len(batch) == 2
    assert list(pickle.loads(pickle.dumps(batch))()) == [9, 16]


def test_bad_items_are_reported_in_chunked_mode():
    with pytest.raises(TypeError, match="delayed"):
        Parallel(n_jobs=2, backend=BatchingBackend())([square, square])


# --------------------------------------------------------------- nesting


class NestedSequential(ExecutorBackend):
    def get_nested_backend(self):
        return SequentialBackend(nesting_level=7), None


def active_backend_in_task(_):
    backend, n_jobs = get_active_backend()
    return type(backend).__name__, backend.nesting_level, n_jobs


def test_tasks_run_under_the_nested_backend():
    out = Parallel(n_jobs=2, backend=ExecutorBackend())(
        delayed(active_backend_in_task)(i) for i in range(2))
    assert out == [("ThreadingBackend", 1, None)] * 2
    out = Parallel(n_jobs=2, backend=NestedSequential())(
        delayed(active_backend_in_task)(i) for i in range(2))
    assert out == [("SequentialBackend", 7, None)] * 2


def test_old_style_nested_backend_without_n_jobs():
    class OldNested(ExecutorBackend):
        def get_nested_backend(self):
            return SequentialBackend(nesting_level=1)

    out = Parallel(n_jobs=2, backend=OldNested())(
        delayed(active_backend_in_task)(i) for i in range(2))
    assert out == [("SequentialBackend", 1, None)] * 2


def test_effective_n_jobs_uses_the_custom_backend(custom):
    with parallel_config(backend="custom", endpoint="e", api_key="k"):
        assert effective_n_jobs(-1) == 2
        assert effective_n_jobs(3) == 3


# ------------------------------------------------- the base class contract


def test_base_class_helpers_joblib_backends_use():
    backend = ExecutorBackend()
    assert "OMP_NUM_THREADS" in backend.MAX_NUM_THREADS_VARS
    assert backend.in_main_thread() is True
    assert backend.supports_return_generator is True
    assert backend.supports_timeout is True
    assert ApplyAsyncBackend().supports_return_generator is False
    assert ApplyAsyncBackend().compute_batch_size() == 1
    with backend.retrieval_context():
        pass
    nested, n_jobs = backend.get_nested_backend()
    assert isinstance(nested, ThreadingBackend) and n_jobs is None
    with pytest.raises(TypeError):
        ParallelBackendBase()  # effective_n_jobs is abstract


class CappedThreads(ExecutorBackend):
    supports_inner_max_num_threads = True


def test_inner_max_num_threads_reaches_a_supporting_backend(monkeypatch):
    register_parallel_backend("capped", CappedThreads)
    with parallel_config(backend="capped", inner_max_num_threads=3) as cfg:
        backend = cfg["backend"]
    assert backend.inner_max_num_threads == 3
    env = backend._prepare_worker_env(n_jobs=4)
    assert env["OMP_NUM_THREADS"] == "3"
    assert env["OPENBLAS_NUM_THREADS"] == "3"
    assert env["MKL_NUM_THREADS"] == "3"


def test_default_worker_env_divides_the_cpus(monkeypatch):
    from joblib_fast import _cpu
    monkeypatch.setattr(_cpu, "cpu_count", lambda only_physical_cores=False: 8)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("MKL_NUM_THREADS", "5")
    env = CappedThreads()._prepare_worker_env(n_jobs=4)
    assert env["OMP_NUM_THREADS"] == "2"
    assert env["MKL_NUM_THREADS"] == "5"  # the user's setting is kept


def test_external_backends_register_on_first_use(monkeypatch):
    # The user guide's third-party mechanism: joblib.parallel.EXTERNAL_BACKENDS
    from joblib_fast import parallel

    calls = []

    def register():
        calls.append(1)
        register_parallel_backend("lazy_custom", ExecutorBackend)

    monkeypatch.setitem(parallel.EXTERNAL_BACKENDS, "lazy_custom", register)
    with parallel_config(backend="lazy_custom", n_jobs=2):
        assert Parallel()(delayed(square)(i) for i in range(4)) == [0, 1, 4, 9]
    assert Parallel(backend="lazy_custom")._backend.__class__ is ExecutorBackend
    assert calls == [1]


class GuideBackend(ParallelBackendBase):
    """Shaped as the user guide's minimal backend: an executor made in
    configure, effective_n_jobs returning n_jobs as is, and mandatory
    constructor parameters."""

    supports_retrieve_callback = True

    def __init__(self, endpoint, api_key, nesting_level=0):
        super().__init__(nesting_level=nesting_level)
        self.endpoint = endpoint
        self.api_key = api_key

    def configure(self, n_jobs=1, parallel=None, **backend_kwargs):
        self.n_jobs = n_jobs
        n_jobs = self.effective_n_jobs(n_jobs)
        self._executor = ThreadPoolExecutor(n_jobs)
        return n_jobs

    def terminate(self):
        self._executor.shutdown()
        self._executor = None

    def effective_n_jobs(self, n_jobs):
        return n_jobs

    def submit(self, func, callback):
        future = self._executor.submit(func)
        future.add_done_callback(callback)
        return future

    def retrieve_result_callback(self, future):
        return future.result()


@pytest.mark.parametrize("n_jobs", [None, 2])
def test_user_guide_backend(n_jobs):
    register_parallel_backend("guide", GuideBackend)
    with parallel_config("guide", endpoint="http://compute", api_key="42"):
        out = Parallel(n_jobs)(delayed(square)(i) for i in range(10))
        backend, _ = get_active_backend()
    assert out == [i * i for i in range(10)]
    assert (backend.endpoint, backend.api_key) == ("http://compute", "42")
    assert backend.n_jobs == (n_jobs or 1)  # None: the backend's default
