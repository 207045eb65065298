"""parallel_config, parallel_backend, prefer/require, the backend registry,
effective_n_jobs and cpu_count, as joblib documents them."""
import os
import threading

import pytest
from helpers.common import square

import joblib_fast as joblib
from joblib_fast import (
    Parallel,
    ParallelBackendBase,
    _cpu,
    cpu_count,
    delayed,
    effective_n_jobs,
    parallel_backend,
    parallel_config,
    register_parallel_backend,
)
from joblib_fast import config as _config
from joblib_fast.backends import SequentialBackend, ThreadingBackend
from joblib_fast.config import get_active_backend


class ProcessLikeBackend(ThreadingBackend):
    """Runs on threads but claims the traits of a process backend."""

    uses_threads = False
    supports_sharedmem = False
    supports_inner_max_num_threads = True


# ------------------------------------------------------- parallel_config


def test_sets_backend_and_n_jobs_for_parallel_inside():
    with parallel_config(backend="threading", n_jobs=3):
        p = Parallel()
        assert isinstance(p._backend, ThreadingBackend)
        assert p.n_jobs == 3
        assert p(delayed(square)(i) for i in range(5)) == [0, 1, 4, 9, 16]


def test_restored_on_exit_and_after_exception():
    before = get_active_backend()
    with parallel_config(backend="threading", n_jobs=2):
        pass
    assert get_active_backend()[1] is None
    with pytest.raises(KeyError), parallel_config(backend="sequential", n_jobs=5):
        assert get_active_backend()[1] == 5
        raise KeyError("boom")
    backend, n_jobs = get_active_backend()
    assert n_jobs is None
    assert type(backend) is type(before[0])


def test_nesting_inner_wins_outer_comes_back():
    with parallel_config(backend="threading", n_jobs=2, verbose=3):
        with parallel_config(n_jobs=4):
            backend, n_jobs = get_active_backend()
            assert isinstance(backend, ThreadingBackend)
            assert n_jobs == 4
            assert Parallel().verbose == 3  # kept from the outer one
        assert get_active_backend()[1] == 2
        with parallel_config(backend="sequential"):
            assert isinstance(get_active_backend()[0], SequentialBackend)
            assert get_active_backend()[1] == 2
        assert isinstance(get_active_backend()[0], ThreadingBackend)


def test_plain_call_until_unregister():
    cfg = parallel_config(backend="threading", n_jobs=2)
    try:
        assert isinstance(Parallel()._backend, ThreadingBackend)
        assert Parallel().n_jobs == 2
    finally:
        cfg.unregister()
    assert get_active_backend()[1] is None


def test_enter_returns_config_like_joblib():
    with parallel_config(backend="threading", n_jobs=2) as cfg:
        assert isinstance(cfg["backend"], ThreadingBackend)
        assert cfg["n_jobs"] == 2
    with parallel_backend("threading") as (backend, n_jobs):
        assert isinstance(backend, ThreadingBackend)
        assert n_jobs == -1  # parallel_backend's default: all CPUs
    with parallel_backend("sequential", n_jobs=3) as (backend, n_jobs):
        assert n_jobs == 3


def test_is_thread_local():
    seen = {}
    ready = threading.Event()
    release = threading.Event()

    def other():
        with parallel_config(backend="sequential", n_jobs=7):
            ready.set()
            release.wait(10)
            seen["other"] = get_active_backend()

    t = threading.Thread(target=other)
    with parallel_config(backend="threading", n_jobs=2):
        t.start()
        ready.wait(10)
        # The other thread's configuration does not leak here ...
        assert isinstance(get_active_backend()[0], ThreadingBackend)
        assert get_active_backend()[1] == 2
        release.set()
        t.join()
    # ... nor ours there.
    assert isinstance(seen["other"][0], SequentialBackend)
    assert seen["other"][1] == 7


def test_fresh_thread_sees_defaults():
    out = {}
    with parallel_config(backend="threading", n_jobs=2):
        t = threading.Thread(
            target=lambda: out.setdefault("cfg", get_active_backend()[1]))
        t.start()
        t.join()
    assert out["cfg"] is None


def test_memmapping_and_verbose_defaults_reach_parallel():
    with parallel_config(backend="threading", verbose=5, temp_folder="/tmp",
                         max_nbytes="2M", mmap_mode="r+"):
        p = Parallel()
    assert p.verbose == 5
    assert p._backend_kwargs["temp_folder"] == "/tmp"
    assert p._backend_kwargs["max_nbytes"] == 2 * 1024 ** 2
    assert p._backend_kwargs["mmap_mode"] == "r+"
    # An argument of Parallel wins over the configuration.
    with parallel_config(backend="threading", verbose=5):
        assert Parallel(verbose=0).verbose == 0


def test_explicit_none_replaces_enclosing_value():
    # As in joblib: None is a value (no memmapping, the default n_jobs).
    with parallel_config(backend="threading", n_jobs=4, max_nbytes="2M",
                         mmap_mode="r+"):
        with parallel_config(n_jobs=None, max_nbytes=None, mmap_mode=None):
            p = Parallel()
            assert p.n_jobs == 1  # the backend's default
            assert p._backend_kwargs["max_nbytes"] is None
            assert p._backend_kwargs["mmap_mode"] is None
        # backend=None means "not given": the enclosing backend stays.
        with parallel_config(backend=None):
            assert isinstance(Parallel()._backend, ThreadingBackend)


def test_backend_instance_and_params():
    backend = ThreadingBackend()
    with parallel_config(backend=backend):
        assert Parallel()._backend is backend
        assert backend.nesting_level == 0
    with parallel_config(backend="threading", initargs=(3,)):
        assert Parallel()._backend.backend_kwargs == {"initargs": (3,)}


def test_parallel_backend_is_a_parallel_config():
    with parallel_backend("threading", n_jobs=2):
        assert Parallel().n_jobs == 2
        assert Parallel()(delayed(square)(i) for i in range(3)) == [0, 1, 4]
    assert get_active_backend()[1] is None


@pytest.mark.parametrize("kwargs, error", [
    ({"prefer": "bad"}, ValueError),
    ({"require": "bad"}, ValueError),
    ({"n_jobs": 0}, ValueError),
    ({"n_jobs": "many"}, ValueError),
    ({"n_jobs": True}, TypeError),
    ({"n_jobs": [2]}, TypeError),
    ({"mmap_mode": "x"}, ValueError),
    ({"verbose": "loud"}, TypeError),
    ({"backend": "no_such_backend"}, ValueError),
    ({"backend": 3}, ValueError),
    ({"backend": "threading", "inner_max_num_threads": 0}, ValueError),
    # the caller runs the tasks: nothing to cap
    # (supports_inner_max_num_threads=False)
    ({"backend": "sequential", "inner_max_num_threads": 2}, ValueError),
    # backend parameters need a backend (name)
    ({"inner_max_num_threads": 2}, ValueError),
    ({"n_jobs": 2, "foo": 1}, ValueError),
    ({"backend": ThreadingBackend(), "foo": 1}, ValueError),
])
def test_bad_inputs_raise_clear_errors(kwargs, error):
    with pytest.raises(error):
        parallel_config(**kwargs)
    assert get_active_backend()[1] is None  # nothing was left active


def test_unknown_backend_error_names_the_choices():
    with pytest.raises(ValueError, match="threading"):
        parallel_config(backend="nope")
    with pytest.raises(ValueError, match="nope"):
        Parallel(backend="nope")
    with pytest.raises(ValueError):
        parallel_backend(None)


@pytest.mark.parametrize("value, expected", [
    (2, 2), (2.7, 2), (-1.0, -1), ("3", 3), (None, None)])
def test_n_jobs_converted_to_int_as_documented(value, expected):
    assert Parallel(n_jobs=value, backend="threading").n_jobs == (
        expected if expected is not None else 1)
    with parallel_config(backend="threading", n_jobs=value):
        assert Parallel().n_jobs == (expected if expected is not None else 1)


# ------------------------------------------------------ prefer / require


def test_prefer_threads_picks_the_thread_backend():
    assert isinstance(Parallel(prefer="threads")._backend, ThreadingBackend)
    with parallel_config(prefer="threads"):
        assert isinstance(Parallel()._backend, ThreadingBackend)
        assert Parallel(n_jobs=2)(
            delayed(square)(i) for i in range(4)) == [0, 1, 4, 9]


def test_prefer_is_only_a_hint_an_explicit_backend_wins():
    register_parallel_backend("proc_like", ProcessLikeBackend)
    with parallel_config(backend="proc_like", prefer="threads"):
        assert isinstance(Parallel()._backend, ProcessLikeBackend)
    with parallel_config(backend="proc_like"):
        assert isinstance(Parallel(prefer="threads")._backend,
                          ProcessLikeBackend)
    assert isinstance(Parallel(backend="proc_like", prefer="threads")._backend,
                      ProcessLikeBackend)


def test_prefer_processes_replaces_a_thread_default(monkeypatch):
    register_parallel_backend("proc_like", ProcessLikeBackend)
    register_parallel_backend("threads_default", ThreadingBackend,
                              make_default=True)
    monkeypatch.setattr(_config, "DEFAULT_PROCESS_BACKEND", "proc_like")
    assert isinstance(Parallel()._backend, ThreadingBackend)
    assert isinstance(Parallel(prefer="processes")._backend,
                      ProcessLikeBackend)
    # An explicit thread backend is kept.
    with parallel_config(backend="threading", prefer="processes"):
        assert isinstance(Parallel()._backend, ThreadingBackend)


def test_require_sharedmem_always_gives_threads():
    register_parallel_backend("proc_like", ProcessLikeBackend)
    assert isinstance(Parallel(require="sharedmem")._backend,
                      ThreadingBackend)
    with parallel_config(backend="proc_like", n_jobs=2):
        p = Parallel(require="sharedmem")
        assert type(p._backend) is ThreadingBackend
    with parallel_config(backend="proc_like", require="sharedmem"):
        assert type(Parallel()._backend) is ThreadingBackend
    # The sequential backend shares memory: kept.
    with parallel_config(backend="sequential"):
        assert isinstance(Parallel(require="sharedmem")._backend,
                          SequentialBackend)


def test_require_sharedmem_documented_example():
    shared = set()

    def collect(x):
        shared.add(x)

    out = Parallel(n_jobs=2, require="sharedmem")(
        delayed(collect)(i) for i in range(5))
    assert out == [None] * 5
    assert sorted(shared) == [0, 1, 2, 3, 4]


def test_require_sharedmem_conflicts():
    register_parallel_backend("proc_like", ProcessLikeBackend)
    with pytest.raises(ValueError, match="shared memory"):
        Parallel(backend="proc_like", require="sharedmem")
    with pytest.raises(ValueError, match="inconsistent"):
        Parallel(prefer="processes", require="sharedmem")
    with pytest.raises(ValueError):
        Parallel(prefer="fast")
    with pytest.raises(ValueError):
        Parallel(require="gpu")


# ------------------------------------------------------------- registry


class Recording(ThreadingBackend):
    pass


def test_register_then_use_by_name():
    register_parallel_backend("rec", Recording)
    assert isinstance(Parallel(backend="rec")._backend, Recording)
    with parallel_config(backend="rec", n_jobs=2):
        assert Parallel()(delayed(square)(i) for i in range(3)) == [0, 1, 4]


def test_register_make_default():
    register_parallel_backend("rec", Recording, make_default=True)
    assert isinstance(Parallel()._backend, Recording)
    assert isinstance(get_active_backend()[0], Recording)


def test_factory_without_nesting_level_parameter():
    # joblib documents "any callable that takes no argument".
    register_parallel_backend("plain", lambda: Recording())
    assert isinstance(Parallel(backend="plain")._backend, Recording)
    with parallel_config(backend="plain"):
        assert Parallel()._backend.nesting_level == 0


@pytest.mark.parametrize("name, factory, error", [
    (3, Recording, TypeError),
    (None, Recording, TypeError),
    ("", Recording, TypeError),
    ("x", 3, TypeError),
    ("x", "threading", TypeError),
])
def test_bad_registrations(name, factory, error):
    with pytest.raises(error):
        register_parallel_backend(name, factory)
    assert "x" not in _config.BACKENDS


def test_factory_returning_a_non_backend():
    register_parallel_backend("broken", lambda: object())
    with pytest.raises(TypeError, match="ParallelBackendBase"):
        Parallel(backend="broken")


def test_public_names_like_joblib():
    for name in ("Parallel", "delayed", "parallel_config", "parallel_backend",
                 "register_parallel_backend", "ParallelBackendBase",
                 "cpu_count", "effective_n_jobs"):
        assert hasattr(joblib, name)
    assert joblib.parallel.ParallelBackendBase is ParallelBackendBase


# ------------------------------------------------------ effective_n_jobs


def test_effective_n_jobs():
    n = cpu_count()
    assert effective_n_jobs(1) == 1
    assert effective_n_jobs(3) == 3
    with parallel_config(backend="threading"):
        assert effective_n_jobs() == n
        assert effective_n_jobs(-1) == n
        assert effective_n_jobs(-2) == max(n - 1, 1)
        assert effective_n_jobs(-n - 5) == 1
        assert effective_n_jobs(None) == 1
    with parallel_config(backend="threading", n_jobs=3):
        assert effective_n_jobs(None) == 3
    with pytest.raises(ValueError):
        effective_n_jobs(0)
    with pytest.raises(TypeError):
        effective_n_jobs([1])


def test_effective_n_jobs_asks_the_active_backend():
    class Capped(ThreadingBackend):
        def effective_n_jobs(self, n_jobs):
            return 2

    with parallel_config(backend=Capped()):
        assert effective_n_jobs(-1) == 2
        assert effective_n_jobs(8) == 2


# ------------------------------------------------------------ cpu_count


@pytest.fixture
def fake_cgroup(tmp_path, monkeypatch):
    """Point the cgroup files at ``tmp_path``; returns a writer."""
    paths = {
        "v2": tmp_path / "cpu.max",
        "quota": tmp_path / "cpu.cfs_quota_us",
        "period": tmp_path / "cpu.cfs_period_us",
    }
    monkeypatch.setattr(_cpu, "CGROUP_V2_CPU_MAX", str(paths["v2"]))
    monkeypatch.setattr(_cpu, "CGROUP_V1_QUOTA", str(paths["quota"]))
    monkeypatch.setattr(_cpu, "CGROUP_V1_PERIOD", str(paths["period"]))
    monkeypatch.delenv("LOKY_MAX_CPU_COUNT", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)),
                        raising=False)

    def write(**files):
        for key, text in files.items():
            paths[key].write_text(text)
    return write


def test_cpu_count_basic():
    assert 1 <= cpu_count() <= (os.cpu_count() or 1)
    assert 1 <= cpu_count(only_physical_cores=True) <= cpu_count()
    if hasattr(os, "sched_getaffinity") and \
            _cpu.cgroup_cpu_limit() is None and \
            "LOKY_MAX_CPU_COUNT" not in os.environ:
        assert cpu_count() == len(os.sched_getaffinity(0))
    assert joblib.cpu_count is cpu_count


def test_cpu_count_unlimited(fake_cgroup):
    assert cpu_count() == 8
    fake_cgroup(v2="max 100000\n")
    assert cpu_count() == 8


def test_cpu_count_respects_affinity(fake_cgroup, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {2, 5})
    assert cpu_count() == 2


@pytest.mark.parametrize("files, expected", [
    ({"v2": "150000 100000\n"}, 2),      # 1.5 CPUs rounds up
    ({"v2": "50000 100000\n"}, 1),
    ({"v2": "300000 100000\n"}, 3),
    ({"v2": "garbage\n", "quota": "200000", "period": "100000"}, 2),  # v2 bad
    ({"quota": "400000", "period": "100000"}, 4),                  # v1
    ({"quota": "-1", "period": "100000"}, 8),                      # no limit
    ({"v2": "4000000 100000\n"}, 8),     # quota above the machine
])
def test_cpu_count_respects_cgroup_quota(fake_cgroup, files, expected):
    fake_cgroup(**files)
    assert cpu_count() == expected


def test_cpu_count_respects_loky_max_cpu_count(fake_cgroup, monkeypatch):
    monkeypatch.setenv("LOKY_MAX_CPU_COUNT", "3")
    assert cpu_count() == 3
    monkeypatch.setenv("LOKY_MAX_CPU_COUNT", "not a number")
    assert cpu_count() == 8


def test_cpu_count_only_physical_cores(fake_cgroup, monkeypatch, tmp_path):
    sysfs = tmp_path / "cpu"
    for cpu in range(8):  # 4 cores with 2 hyper-threads each
        topo = sysfs / f"cpu{cpu}" / "topology"
        topo.mkdir(parents=True)
        (topo / "core_id").write_text(str(cpu // 2))
        (topo / "physical_package_id").write_text("0")
    monkeypatch.setattr(_cpu, "SYS_CPU_DIR", str(sysfs))
    assert cpu_count() == 8
    assert cpu_count(only_physical_cores=True) == 4
    # Not applied when the count is already limited (as joblib/loky).
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
    assert cpu_count(only_physical_cores=True) == 3
    # Unreadable topology: the logical count.
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.setattr(_cpu, "SYS_CPU_DIR", str(tmp_path / "missing"))
    assert cpu_count(only_physical_cores=True) == 8


def test_effective_n_jobs_follows_cpu_count(fake_cgroup):
    fake_cgroup(v2="200000 100000\n")
    with parallel_config(backend="threading"):
        assert effective_n_jobs(-1) == 2
        assert Parallel(n_jobs=-1)._effective_n_jobs() == 2


# ------------------------------------------------- per-call fixed costs


def test_a_call_reads_its_settings_once_not_per_call(monkeypatch):
    # A short threading call costs about 100 us: re-reading the backend
    # factory's signature, the pre_dispatch expression or the CPU count at
    # every call cost as much again.  Each is worked out once.
    import ast
    import inspect

    from joblib_fast import _cpu, _native_threads

    counts = {"signature": 0, "parse": 0, "cpu_count": 0}

    def counting(name, func):
        def wrapper(*args, **kwargs):
            counts[name] += 1
            return func(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(inspect, "signature",
                        counting("signature", inspect.signature))
    monkeypatch.setattr(ast, "parse", counting("parse", ast.parse))
    monkeypatch.setattr(_cpu, "cpu_count",
                        counting("cpu_count", _cpu.cpu_count))
    monkeypatch.setattr(_native_threads, "_cpus", None)
    monkeypatch.setattr(_native_threads, "pools_possible", lambda: True)
    for _ in range(20):
        assert joblib.Parallel(n_jobs=2, backend="threading",
                               pre_dispatch="3*n_jobs + 1")(
            joblib.delayed(square)(i) for i in range(4)) == [0, 1, 4, 9]
    assert counts["signature"] <= 1, counts
    assert counts["parse"] <= 1, counts
    assert counts["cpu_count"] <= 1, counts
