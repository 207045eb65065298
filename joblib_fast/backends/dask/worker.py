"""What runs on a dask worker: one batch of tasks per dask task.

Imports nothing of the caller side: the nested backend (what ``Parallel``
calls made by the tasks use) comes pickled with each batch.
"""
from __future__ import annotations

import time
from typing import Any

from ... import _context
from .pickling import dumps, loads


def run_batch(blob: bytes, nested: Any, first: int, *data: Any) -> bytes:
    """Run one batch; return its results and the seconds it took, pickled.

    ``nested``: the backend of nested ``Parallel`` calls (this cluster,
    through the worker's client); ``data``: the scattered arguments the
    batch refers to.  A batch that cannot be unpickled here, or results
    that cannot be pickled, raise an error naming the tasks and the worker.
    """
    try:
        tasks = loads(blob, data)
    except BaseException as exc:
        raise RuntimeError(
            f"the batch of tasks {first}.. could not be unpickled on dask "
            f"worker {worker_address()}: {type(exc).__name__}: {exc}"
        ) from exc
    config = dict(_context.DEFAULT_CONFIG)
    config.update(backend=nested, n_jobs=-1)
    t0 = time.perf_counter()
    with _context.nested_config(config):
        results = [func(*args, **kwargs) for func, args, kwargs in tasks]
    duration = time.perf_counter() - t0
    try:
        return dumps((results, duration))
    except BaseException as exc:
        raise RuntimeError(
            f"the results of tasks {first}..{first + len(tasks) - 1} could "
            f"not be pickled on dask worker {worker_address()}: "
            f"{type(exc).__name__}: {exc}") from exc


def worker_address() -> str:
    """The address of the dask worker running this task, else "?"."""
    from distributed import get_worker
    try:
        return get_worker().address
    except ValueError:
        return "?"


def in_worker_task() -> bool:
    """True in a thread running a task of a dask worker."""
    from distributed import get_worker
    try:
        get_worker()
    except ValueError:
        return False
    return True
