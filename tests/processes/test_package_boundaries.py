"""The process backend's package boundaries: importing it patches
nothing, the first pool installs its multiprocessing adjustment, and the
worker module imports nothing of the parent side."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap

import joblib_fast.backends.processes as processes

PACKAGE_DIR = os.path.dirname(os.path.abspath(processes.__file__))

# What the worker main loop may import (beyond the standard library).
WORKER_ALLOWED = {
    "wire", "pickling", "arrays", "arrays_in", "arrays_out", "rss",
    "..._context", "..base",
    # the worker caps the BLAS/OpenMP pools it inherited
    "_native_threads",
}
PARENT_SIDE = {"pool", "registry", "context", "__init__"}


def _run(code: str, tmp_path) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
        text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_import_patches_nothing_and_registers_no_exit_hook(tmp_path):
    out = _run("""
        import atexit
        import multiprocessing.spawn as spawn
        import multiprocessing.util
        original = spawn.get_preparation_data
        before = atexit._ncallbacks()
        import joblib_fast
        import joblib_fast.backends.processes
        print(spawn.get_preparation_data is original,
              atexit._ncallbacks() == before)
    """, tmp_path)
    assert out.split() == ["True", "True"]


def test_first_pool_installs_the_spawn_patch(tmp_path):
    out = _run("""
        import multiprocessing.spawn as spawn
        from joblib_fast import Parallel, delayed
        Parallel(n_jobs=2)(delayed(abs)(-i) for i in range(4))
        print(hasattr(spawn.get_preparation_data, "_jf_original"))
    """, tmp_path)
    assert out.split() == ["True"]


def _relative_imports(path: str) -> set:
    """Names of the package-relative modules ``path`` imports."""
    with open(path) as f:
        tree = ast.parse(f.read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            dots = "." * node.level
            if node.module:
                found.add(dots + node.module if node.level > 1 else node.module)
            else:
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("joblib_fast"):
                    found.add(alias.name)
    return found


def test_worker_imports_nothing_of_the_parent_side():
    imported = _relative_imports(os.path.join(PACKAGE_DIR, "worker.py"))
    assert imported <= WORKER_ALLOWED, imported - WORKER_ALLOWED
    assert not imported & PARENT_SIDE


def test_public_exceptions_are_one_set_of_classes():
    import joblib_fast
    from joblib_fast import errors
    assert processes.TerminatedWorkerError is errors.TerminatedWorkerError
    assert joblib_fast.TerminatedWorkerError is errors.TerminatedWorkerError
    assert joblib_fast.RemoteTraceback is errors.RemoteTraceback
    assert joblib_fast.TaskError is errors.TaskError
    assert {"TaskError", "TerminatedWorkerError", "RemoteTraceback"} <= \
        set(joblib_fast.__all__)
