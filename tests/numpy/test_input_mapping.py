"""A memmapped input is mapped once per worker for the whole call (and the
calls of a ``with`` block) and let go when its dump is removed.

Structure only: addresses, page-fault counts, /proc/<pid>/maps.  The dumps
go to /dev/shm (the default folder), whose pages a mapping faults in a few
at a time (a file on disk may be faulted in by large folios: too few faults
to tell a new mapping from a kept one)."""
from __future__ import annotations

import os

import pytest

np = pytest.importorskip("numpy")

from helpers import np_tasks
from helpers.common import wait_until
from helpers.np_map_tasks import mapping_of, maps_of

from joblib_fast import Parallel, delayed
from joblib_fast.backends.processes import platform

pytestmark = [
    pytest.mark.usefixtures("process_helpers"),
    pytest.mark.skipif(
        not platform.DELETE_MAPPED,
        reason="workers map a dump per task where mapped files cannot be "
               "deleted (test_platform_paths.py covers that)")]

# 4 MB: a thousand pages; mapped anew, reading them faults far more than
# PAGES // 64 times (fault-around maps 16 pages at a time by default).
N = 1 << 19
PAGES = N * 8 // 4096


def _by_worker(out):
    seen = {}
    for pid, address, faults, total, _ in out:
        seen.setdefault(pid, []).append((address, faults, total))
    return seen


def test_one_mapping_per_worker_for_the_call():
    a = np.arange(N, dtype=np.float64)
    out = Parallel(n_jobs=2, max_nbytes=1000)(
        delayed(mapping_of)(a, 0.05) for _ in range(8))
    assert all(total == a.sum() for _, _, _, total, _ in out)
    base = np_tasks.default_dump_base() + os.sep
    assert all(name.startswith(base) for *_, name in out)
    for tasks in _by_worker(out).values():
        # Every task of a worker reads the same mapping ...
        assert len({address for address, _, _ in tasks}) == 1
        # ... whose page tables were set up before its first task read it
        # (MAP_POPULATE), or by that first task: never again.
        assert all(faults < PAGES // 64 for _, faults, _ in tasks[1:]), tasks


def test_mapping_kept_across_the_calls_of_a_with_block():
    a = np.arange(N, dtype=np.float64)
    with Parallel(n_jobs=2, max_nbytes=1000) as par:
        first = _by_worker(par(delayed(mapping_of)(a, 0.05) for _ in range(4)))
        second = _by_worker(par(delayed(mapping_of)(a, 0.05)
                                for _ in range(4)))
        a[0] = -1.0   # changed: a new dump, a new mapping
        third = _by_worker(par(delayed(mapping_of)(a, 0.05) for _ in range(4)))
    for pid, tasks in second.items():
        if pid in first:
            assert {x for x, _, _ in tasks} == {x for x, _, _ in first[pid]}
            assert all(faults < PAGES // 64 for _, faults, _ in tasks), tasks
    assert all(total == a.sum() for tasks in third.values()
               for _, _, total in tasks)


def test_mapping_let_go_when_the_call_ends():
    a = np.arange(N, dtype=np.float64)
    with Parallel(n_jobs=2, max_nbytes=1000) as par:
        out = par(delayed(mapping_of)(a, 0.05) for _ in range(4))
        pids = set(_by_worker(out))
        (dump,) = {name for *_, name in out}
        # The block goes on: the dump and the workers' mappings stay.
        assert all(dump in maps_of(pid) for pid in pids)
    # The reusable pool's workers outlive the block; the dump is removed
    # and each worker lets go of its mapping while idle.
    assert not os.path.exists(dump)
    assert wait_until(lambda: not any(dump in maps_of(pid)
                                      for pid in pids), 10.0), \
        [line for pid in pids for line in maps_of(pid).splitlines()
         if dump in line]
