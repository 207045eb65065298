"""NumPy arrays: every file made for a call is removed (after calls,
errors, timeouts, killed workers, closed generators, dead parents).

Structure only: which type a worker sees, where a file lives, which files
exist when.  Arrays are small (a few hundred kB) with a matching
``max_nbytes``; helpers and sizes are in
``helpers/np_tasks.py``.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

np = pytest.importorskip("numpy")

from helpers import np_tasks
from helpers.common import REPO_ROOT, TESTS_DIR
from helpers.np_tasks import (
    BIG,
    dead_pid,
    ours,
    par,
)

from joblib_fast import delayed
from joblib_fast.backends.processes import (
    TerminatedWorkerError,
    arrays_in,
    shutdown_reusable_pools,
)

pytestmark = pytest.mark.usefixtures("process_helpers")


# ------------------------------------------------------------ cleanup


def test_cleanup_after_call_and_after_with_block(folder):
    a = np.ones(BIG)
    par(temp_folder=folder)(delayed(np_tasks.first)(a) for _ in range(4))
    assert os.listdir(folder) == []
    with par(temp_folder=folder) as p:
        p(delayed(np_tasks.first)(a) for _ in range(4))
        assert len(ours(folder)) == 1  # kept for the block's next calls
        p(delayed(np_tasks.first)(a) for _ in range(4))
    assert os.listdir(folder) == []


@pytest.mark.parametrize("return_as", ["list", "generator"])
def test_cleanup_after_task_exception(folder, return_as):
    a = np.ones(BIG)
    with pytest.raises(ValueError, match="fails on purpose"):
        out = par(temp_folder=folder, return_as=return_as)(
            delayed(np_tasks.fail_at_index)(a, 3, i) for i in range(8))
        list(out)
    assert os.listdir(folder) == []


def test_cleanup_after_exception_in_with_block(folder):
    a = np.ones(BIG)
    with par(temp_folder=folder) as p:
        with pytest.raises(ValueError):
            p(delayed(np_tasks.fail_at_index)(a, 1, i) for i in range(4))
        assert os.listdir(folder) == []
        assert p(delayed(np_tasks.first)(a) for _ in range(2)) == [1.0, 1.0]
    assert os.listdir(folder) == []


def test_cleanup_after_timeout(folder):
    a = np.ones(BIG)
    with pytest.raises(TimeoutError):
        par(temp_folder=folder, timeout=0.3)(
            delayed(np_tasks.sleep_then)(a, s) for s in (0.0, 2.0, 0.0))
    assert os.listdir(folder) == []


def test_cleanup_after_killed_worker(folder):
    a = np.ones(BIG)
    with pytest.raises(TerminatedWorkerError):
        par(temp_folder=folder)(
            delayed(np_tasks.die_on)(a, 2, i) for i in range(6))
    assert os.listdir(folder) == []


def test_cleanup_after_generator_closed_early(folder):
    a = np.ones(BIG)
    gen = par(temp_folder=folder, return_as="generator")(
        delayed(np_tasks.first)(a) for _ in range(8))
    assert next(gen) == 1.0
    gen.close()
    assert os.listdir(folder) == []

def test_stale_folders_of_dead_processes_are_swept(folder):
    dead = dead_pid()
    ns = arrays_in._namespace()
    stale = os.path.join(folder, f"joblib_fast_{dead}_n{ns}c1abc")
    os.mkdir(stale)
    open(os.path.join(stale, "a1.mmap"), "wb").close()
    kept = [
        f"joblib_fast_1_n{ns}c1abc",        # pid 1: alive
        f"joblib_fast_{dead}_n1{ns}c1abc",  # another pid namespace
        "joblib_fast_notapid",
    ]
    for name in kept:
        os.mkdir(os.path.join(folder, name))
    shutdown_reusable_pools()  # the next call starts a pool
    par(temp_folder=folder)(delayed(abs)(-i) for i in range(2))
    assert sorted(os.listdir(folder)) == sorted(kept)
    for name in kept:
        os.rmdir(os.path.join(folder, name))


KILLED_PARENT = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    import numpy as np
    from helpers import np_tasks
    from joblib_fast import Parallel, delayed

    def suicide(index, result):
        os.kill(os.getpid(), signal.SIGKILL)

    a = np.ones({n})
    Parallel(n_jobs=2, max_nbytes="200k", temp_folder={folder!r},
             callback=suicide)(delayed(np_tasks.first)(a) for _ in range(4))
""")


def test_leftovers_of_a_killed_parent_are_swept_by_the_next_pool(folder):
    script = KILLED_PARENT.format(tests=TESTS_DIR, n=BIG, folder=folder)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [REPO_ROOT] + sys.path))
    # cwd: not the checkout, whose source folder would shadow the install.
    proc = subprocess.run([sys.executable, "-c", script], env=env, check=False,
                          capture_output=True, text=True, timeout=60,
                          cwd=TESTS_DIR)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    left = os.listdir(folder)
    assert len(left) == 1 and left[0].startswith("joblib_fast_"), left
    shutdown_reusable_pools()
    par(temp_folder=folder)(delayed(abs)(-i) for i in range(2))
    assert os.listdir(folder) == []
