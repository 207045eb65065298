"""Task functions for tests/processes/test_daemonic_parent.py, run inside other pools'
workers (a ``multiprocessing.Pool`` worker, a dask worker).

They live in an importable module (not in the test file) so that spawned
workers and dask workers unpickle them by reference.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import sys
import threading
import warnings

# Seconds two tasks wait for each other at a barrier: a call that runs
# them one after the other fails after this long instead of hanging.
MEET_SECONDS = 20.0


def _children():
    import psutil
    return sorted(p.pid for p in psutil.Process().children(recursive=True))


def _report(run):
    """Run ``run()`` (a process-backed call) here: what ran where, what it
    said, and the processes it started."""
    from joblib_fast.backends.processes import reusable_pool_pids
    before = _children()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        results = run()
    return {
        "daemon": mp.current_process().daemon,
        "pid": os.getpid(),
        "results": results,
        "warnings": [(type(w.message).__name__, str(w.message))
                     for w in record],
        "new_children": sorted(set(_children()) - set(before)),
        "pool_pids": sorted(reusable_pool_pids()),
        "distributed_imported": "distributed" in sys.modules,
    }


def process_call(backend, n_jobs=2):
    """A process-backed ``Parallel`` call made here (``backend=None``: the
    default one); see :func:`_report`."""
    from joblib_fast import Parallel, delayed
    return _report(lambda: Parallel(n_jobs=n_jobs, backend=backend)(
        delayed(pid_and_square)(i) for i in range(6)))


def joblib_process_call():
    """``joblib.Parallel`` on joblib_fast's process backend, called here;
    see :func:`_report`."""
    import joblib

    import joblib_fast
    name = joblib_fast.register_joblib_backend()

    def run():
        with joblib.parallel_config(backend=name):
            return joblib.Parallel(n_jobs=2)(
                joblib.delayed(pid_and_square)(i) for i in range(6))
    return _report(run)


def pid_and_square(i):
    return os.getpid(), i * i


def _meet(barrier):
    barrier.wait()
    return threading.get_ident()


def threading_call(n_jobs=2):
    """A threading call of two tasks that must run at the same time (they
    meet at a barrier): the thread idents that ran them, and the warnings
    the call gave."""
    from joblib_fast import Parallel, delayed
    barrier = threading.Barrier(2, timeout=MEET_SECONDS)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        idents = Parallel(n_jobs=n_jobs, backend="threading")(
            delayed(_meet)(barrier) for _ in range(2))
    return {
        "daemon": mp.current_process().daemon,
        "idents": idents,
        "warnings": [str(w.message) for w in record],
    }



def parallel_for_call(module, spins=(2_000, 20_000, 200_000)):
    """``parallel_for`` (through the compiled test consumer ``module``)
    here: ranges of longer and longer bodies until a pool thread of this
    process runs a chunk.  Each range's output, and whether a pool thread
    joined."""
    import importlib
    consumer = importlib.import_module(module)
    outs = []
    for spin in spins:
        out = consumer.visit(0, 400, 1, -1, spin=spin)
        outs.append(out)
        if any(worker != 0 for _, _, worker, _ in out["chunks"]):
            return mp.current_process().daemon, outs, True
    return mp.current_process().daemon, outs, False
