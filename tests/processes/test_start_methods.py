"""The process backend's start methods: contexts, JOBLIB_START_METHOD,
the forkserver default.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import sys
import textwrap

import pytest
from helpers import proc_tasks
from helpers.common import (
    START_METHODS,
    subprocess_env,
)
from helpers.proc_tasks import square

from joblib_fast import Parallel, delayed
from joblib_fast.backends.processes import (
    shutdown_reusable_pools,
)

# --------------------------------------------------------- start methods


def _expected_start(method: str, info: dict) -> bool:
    """fork: our child, with our module state; spawn: our child, fresh
    module state; forkserver: child of the fork server, fresh state."""
    me = os.getpid()
    if method == "fork":
        return info["ppid"] == me and info["mark"] == "parent"
    if method == "spawn":
        return info["ppid"] == me and info["mark"] is None
    return info["ppid"] != me and info["mark"] is None


@pytest.mark.parametrize("how", ["context-as-backend", "context-kwarg"])
@pytest.mark.parametrize("method", START_METHODS)
def test_start_method_from_context(method, how, monkeypatch):
    shutdown_reusable_pools()
    monkeypatch.setattr(proc_tasks, "PARENT_MARK", "parent")
    monkeypatch.delenv("JOBLIB_START_METHOD", raising=False)
    context = mp.get_context(method)
    if how == "context-as-backend":
        parallel = Parallel(n_jobs=2, backend=context)
    else:
        parallel = Parallel(n_jobs=2, backend="loky", context=context)
    infos = parallel(delayed(proc_tasks.worker_info)() for _ in range(8))
    assert len(infos) == 8
    for info in infos:
        assert _expected_start(method, info), (method, info, os.getpid())
    out = parallel(delayed(square)(i) for i in range(50))
    assert out == [i * i for i in range(50)]


def test_default_start_method_is_forkserver(monkeypatch):
    if "forkserver" not in mp.get_all_start_methods():
        pytest.skip("no forkserver on this platform")
    monkeypatch.setattr(proc_tasks, "PARENT_MARK", "parent")
    monkeypatch.delenv("JOBLIB_START_METHOD", raising=False)
    infos = Parallel(n_jobs=2)(delayed(proc_tasks.worker_info)() for _ in range(4))
    for info in infos:
        assert _expected_start("forkserver", info), info


@pytest.mark.slow
@pytest.mark.parametrize("method", START_METHODS)
def test_start_method_from_environment(method, tmp_path):
    code = textwrap.dedent("""
        import json, os
        from helpers import proc_tasks
        proc_tasks.PARENT_MARK = "parent"
        from joblib_fast import Parallel, delayed
        infos = Parallel(n_jobs=2)(
            delayed(proc_tasks.worker_info)() for _ in range(8))
        squares = Parallel(n_jobs=2)(delayed(proc_tasks.square)(i) for i in range(20))
        print(json.dumps({"pid": os.getpid(), "infos": infos, "squares": squares}))
    """)
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True,
        check=False, timeout=60, cwd=str(tmp_path),
        env=subprocess_env(JOBLIB_START_METHOD=method))
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    assert data["squares"] == [i * i for i in range(20)]
    for info in data["infos"]:
        parent_is_script = info["ppid"] == data["pid"]
        if method == "fork":
            assert parent_is_script and info["mark"] == "parent", info
        elif method == "spawn":
            assert parent_is_script and info["mark"] is None, info
        else:
            assert not parent_is_script and info["mark"] is None, info


def test_bad_start_method_in_environment(monkeypatch):
    monkeypatch.setenv("JOBLIB_START_METHOD", "telepathy")
    with pytest.raises(ValueError, match="telepathy"):
        Parallel(n_jobs=2)(delayed(square)(i) for i in range(4))
