"""Results born in shared memory: a worker's large NumPy arrays are
allocated in shared memory (its NumPy allocator, NEP 49), so returning one
sends the memory itself; what the worker does afterwards never reaches the
parent.

Structure only: the worker allocator's counters, /proc maps and
descriptors, values."""
from __future__ import annotations

import gc
import os
import time

import pytest

np = pytest.importorskip("numpy")

from helpers import born_tasks, np_tasks
from helpers.np_tasks import SEGMENTS, is_shared_result, result_maps

from joblib_fast import Parallel, delayed
from joblib_fast.backends.processes import TerminatedWorkerError

pytestmark = [pytest.mark.usefixtures("process_helpers"),
              pytest.mark.skipif(
                  SEGMENTS != "memfd",
                  reason=f"born-shared segments are memfd files (Linux); "
                         f"results here: {SEGMENTS or 'pickled'}")]

N = 1 << 17          # 1 MB of float64, above LIMIT
LIMIT = 100_000      # max_nbytes of these tests


def par(**kwargs):
    kwargs.setdefault("n_jobs", 2)
    kwargs.setdefault("max_nbytes", LIMIT)
    return Parallel(**kwargs)


def test_the_allocator_is_built():
    # Built with the package wherever NumPy is there at build time: a
    # missing module is a build error, never a reason to skip.
    from joblib_fast.backends.processes import _born_shared, shm
    assert shm.born_shared() is _born_shared


def test_a_result_is_the_workers_allocation():
    with par() as p:
        p(delayed(born_tasks.ones)(10) for _ in range(2))  # numpy loaded
        out = p(delayed(born_tasks.counted)(born_tasks.ones, N)
                for _ in range(6))
        after = p(delayed(born_tasks.counters)() for _ in range(2))
    for a, _before in out:
        assert is_shared_result(a) and a.flags.writeable
        assert (a == 1.0).all()
    # Every array was sent as the segment it was allocated in (the
    # allocator's "sent"), none copied into a new one; none is left.
    assert sum(c["sent"] for c in after) == 6, after
    assert all(c["live"] == 0 for c in after), after


def test_arrays_the_task_kept_are_made_private_the_others_not():
    with par() as p:
        p(delayed(born_tasks.ones)(10) for _ in range(2))
        before = p(delayed(born_tasks.stats)() for _ in range(2))
        kept = p(delayed(born_tasks.keep)(N) for _ in range(2))
        free = p(delayed(born_tasks.ones)(N) for _ in range(2))
        after = p(delayed(born_tasks.stats)() for _ in range(2))
        p(delayed(born_tasks.mutate_kept)() for _ in range(8))
    sent = sum(c["sent"] for c in after) - sum(c["sent"] for c in before)
    unreferenced = sum(c["sent_unreferenced"] for c in after) - \
        sum(c["sent_unreferenced"] for c in before)
    assert sent == 4 and unreferenced == 2, (before, after)
    assert all((a == 7.0).all() for a in kept)
    assert all((a == 1.0).all() for a in free)


G: list = []


class _Holder:
    pass


def _plain():
    a = np.ones(10)
    return [a], [a]


def _view_alone():
    v = np.ones(10)[1:]
    return [v], [v]


def _twice_nested():
    a = np.ones(10)
    return [(a, {"x": a})], [a]


def _array_and_view():
    a = np.ones(10)
    return [a, a.T], [a, a.T]


def _held_by_a_global():
    a = np.ones(10)
    G.append(a)
    return [a], [a]


def _view_held_by_a_global():
    a = np.ones(10)
    G.append(a[2:])
    return [a], [a]


def _held_by_an_object_of_the_reply():
    a = np.ones(10)
    h = _Holder()
    h.x = a
    return [h, a], [a]


@pytest.mark.parametrize("build, expected", [
    (_plain, True), (_view_alone, True), (_twice_nested, True),
    (_array_and_view, False),   # two distinct .T objects: one not sent
    (_held_by_a_global, False), (_view_held_by_a_global, False),
    (_held_by_an_object_of_the_reply, False),
])
def test_only_in_counts_every_reference(build, expected):
    """The check that lets a sent segment stay mapped: True only when the
    reply holds every reference to the arrays and their base."""
    from joblib_fast.backends.processes.arrays_out import only_in
    data, arrays = build()
    try:
        assert only_in(data, arrays) is expected
    finally:
        G.clear()


def test_later_writes_in_the_worker_never_reach_the_parent():
    with par(n_jobs=1 + 1) as p:
        kept = p(delayed(born_tasks.keep)(N) for _ in range(4))
        mutated = sum(p(delayed(born_tasks.mutate_kept)() for _ in range(8)))
    assert mutated == 4
    for a in kept:
        assert is_shared_result(a)
        assert (a == 7.0).all()


def test_a_result_let_go_is_reused_by_its_worker():
    """A segment the parent let go of is the worker's next large array
    (its pages already there); one the parent keeps never is."""
    with par() as p:
        p(delayed(born_tasks.ones)(10) for _ in range(2))
        p(delayed(born_tasks.counters)() for _ in range(2))   # trims
        kept = p(delayed(born_tasks.full)(N, 1.0) for _ in range(4))
        again = p(delayed(born_tasks.full)(N, 2.0) for _ in range(4))
        assert all((a == 1.0).all() for a in kept)    # never reused
        assert all((a == 2.0).all() for a in again)
        before = p(delayed(born_tasks.stats)() for _ in range(2))
        del kept, again
        gc.collect()
        third = p(delayed(born_tasks.full)(N, 3.0) for _ in range(4))
        after = p(delayed(born_tasks.stats)() for _ in range(2))
    assert all((a == 3.0).all() for a in third)
    recycled = sum(c["recycled"] for c in after) - \
        sum(c["recycled"] for c in before)
    assert recycled >= 1, (before, after)


@pytest.mark.slow
def test_an_idle_worker_lets_go_of_the_memory_it_keeps():
    from joblib_fast.backends.processes.arrays_out import KEEP_IDLE_SECONDS
    with par() as p:
        p(delayed(born_tasks.ones)(10) for _ in range(2))
        out = p(delayed(born_tasks.full)(N, 1.0) for _ in range(4))
        del out
        gc.collect()
        busy = p(delayed(born_tasks.stats)() for _ in range(2))
        time.sleep(KEEP_IDLE_SECONDS + 0.5)
        idle = p(delayed(born_tasks.stats)() for _ in range(2))
    assert sum(c["kept"] for c in busy) >= 1, busy
    assert sum(c["kept"] for c in idle) == 0, idle


def test_a_result_mapped_by_a_forked_child_is_never_reused():
    with par() as p:
        p(delayed(born_tasks.ones)(10) for _ in range(2))
        p(delayed(born_tasks.counters)() for _ in range(2))   # trims
        out = p(delayed(born_tasks.full)(N, 1.0) for _ in range(4))
        go_r, go_w = os.pipe()
        back_r, back_w = os.pipe()
        pid = os.fork()
        if pid == 0:   # the child keeps its copies of the results
            try:
                os.read(go_r, 1)
                ok = all((a == 1.0).all() for a in out)
                os.write(back_w, b"1" if ok else b"0")
            finally:
                os._exit(0)
        try:
            del out
            gc.collect()
            p(delayed(born_tasks.full)(N, 9.0) for _ in range(8))
            stats = p(delayed(born_tasks.stats)() for _ in range(2))
            os.write(go_w, b"x")
            seen = os.read(back_r, 1)
        finally:
            os.waitpid(pid, 0)
            for fd in (go_r, go_w, back_r, back_w):
                os.close(fd)
    assert seen == b"1"
    assert sum(c["recycled"] for c in stats) == 0, stats


def test_views_slices_and_fortran_arrays():
    n = 1 << 18
    a = np.arange(n, dtype=np.float64)
    f = np.asfortranarray(a.reshape(8, -1))
    expected = [a[3:], a[::-1], a[::2], f, f.T, a.reshape(8, -1)[:, 1:],
                a[: n // 10]]
    with par() as p:
        p(delayed(born_tasks.ones)(10) for _ in range(2))
        got = p([delayed(born_tasks.views)(n)])[0]
        after = p(delayed(born_tasks.counters)() for _ in range(2))
    for x, y in zip(got, expected):
        assert x.shape == y.shape and x.dtype == y.dtype
        np.testing.assert_array_equal(x, y)
        assert x.flags.writeable
    assert got[3].flags.f_contiguous and got[1].strides[0] < 0
    # The six large views came as their segments (two segments: `a`, and
    # `f`'s copy), the small slice was copied.
    assert sum(c["sent"] for c in after) == 2


@pytest.mark.slow
@pytest.mark.parametrize("m", [N * 2, N // 2, 10])
def test_realloc(m):
    with par() as p:
        p(delayed(born_tasks.ones)(10) for _ in range(2))
        out = p([delayed(born_tasks.resized)(N, m)])[0]
    expected = np.arange(N, dtype=np.float64)
    expected.resize(m, refcheck=False)
    np.testing.assert_array_equal(out, expected)


def test_fork_in_a_task_shares_no_writes():
    with par() as p:
        p(delayed(born_tasks.ones)(10) for _ in range(2))
        here, child = p([delayed(born_tasks.fork_and_write)(N)])[0]
    assert here == 1.0    # the child's write did not reach the worker
    assert child == 2.0   # nor the worker's the child


def test_no_descriptor_or_mapping_left_in_the_worker():
    with par() as p:
        # numpy loaded, and the socket that passes descriptors made.
        p(delayed(born_tasks.ones)(N) for _ in range(4))
        p(delayed(born_tasks.counters)() for _ in range(2))   # trims
        before = dict(p(delayed(_pid_and)(born_tasks.descriptors_and_maps)
                        for _ in range(4)))
        p(delayed(born_tasks.churn)(N, 20) for _ in range(4))
        results = p(delayed(born_tasks.ones)(N) for _ in range(4))
        del results
        stats = p(delayed(born_tasks.counters)() for _ in range(2))
        after = dict(p(delayed(_pid_and)(born_tasks.descriptors_and_maps)
                       for _ in range(4)))
    assert sum(c["created"] for c in stats) > 0
    assert all(c["live"] == 0 and c["kept"] == 0 for c in stats), stats
    for pid, counts in after.items():
        if pid in before:
            assert counts == before[pid], (before, after)


def _pid_and(func):
    return os.getpid(), func()


def test_worker_killed_mid_reply_leaks_nothing_in_the_parent():
    maps, (opened, segments) = result_maps(), np_tasks.descriptors()
    with pytest.raises(TerminatedWorkerError, match="exit code 3"):
        with par() as p:
            p(delayed(born_tasks.ones)(10) for _ in range(2))
            p([delayed(born_tasks.die_mid_reply)(N)])
    assert result_maps() == maps
    after, segments_after = np_tasks.descriptors()
    assert segments_after == segments     # none received and kept
    # No more than before (another test's pool may close one meanwhile).
    assert after <= opened


def test_return_shared_false_allocates_on_the_heap():
    with par(return_shared=False) as p:
        p(delayed(born_tasks.ones)(10) for _ in range(2))
        before = p(delayed(born_tasks.counters)() for _ in range(2))
        out = p(delayed(born_tasks.ones)(N) for _ in range(4))
        after = p(delayed(born_tasks.counters)() for _ in range(2))
    assert not any(is_shared_result(a) for a in out)
    assert sum(c["created"] for c in after) == \
        sum(c["created"] for c in before)
