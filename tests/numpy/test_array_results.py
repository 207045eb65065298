"""NumPy arrays out of workers: shared-memory results, pickled results,
freed by refcount.

Structure only: which type a worker sees, where a file lives, which files
exist when.  Arrays are small (a few hundred kB) with a matching
``max_nbytes``; helpers and sizes are in
``helpers/np_tasks.py``.
"""
from __future__ import annotations

import gc
import os
import pickle
import subprocess
import sys
import textwrap
import weakref

import pytest

np = pytest.importorskip("numpy")

from helpers import np_tasks
from helpers.common import assert_private_after_fork
from helpers.np_tasks import (
    BIG,
    SEGMENTS,
    SHARED,
    SHM,
    SMALL,
    is_shared_result,
    mapped_base,
    par,
    result_maps,
)

from joblib_fast import Parallel, delayed

pytestmark = pytest.mark.usefixtures("process_helpers")


# ------------------------------------------------------------ outputs


@pytest.mark.slow
def test_large_results_come_back_through_shared_memory():
    before = set(os.listdir(SHM)) if os.path.isdir(SHM) else set()
    maps = result_maps()
    small, big = par()(delayed(np_tasks.ones)(n) for n in (SMALL, BIG))
    assert type(big) is np.ndarray and not isinstance(big, np.memmap)
    assert big.flags.writeable and big.sum() == BIG
    assert result_maps() == maps + SHARED  # big only (none: pickled)
    big[:] = 5.0  # ours to write
    assert big.sum() == 5.0 * BIG
    assert type(small) is np.ndarray and small.flags.writeable
    if os.path.isdir(SHM):
        # Never a file. /dev/shm is shared with whatever else runs on the
        # machine (other processes' sem.mp-* appear there): only entries
        # named like ours count, as in conftest's leak fixture.
        new = set(os.listdir(SHM)) - before
        assert {n for n in new if "joblib" in n.lower()
                and np_tasks.made_by_this_tree(n)} == set(), new


@pytest.mark.slow
def test_shared_results_are_freed_when_collected():
    maps = result_maps()
    out = par()(delayed(np_tasks.ones)(BIG) for _ in range(3))
    assert result_maps() == maps + 3 * SHARED
    ref = weakref.ref(mapped_base(out[0]))
    del out
    gc.collect()
    assert ref() is None
    assert result_maps() == maps


def test_nested_results():
    maps = result_maps()
    one, (two, d), text = par()([delayed(np_tasks.nested)(BIG)])[0]
    assert text == "text"
    for value, arr in ((1.0, one), (2.0, two), (3.0, d["k"])):
        assert type(arr) is np.ndarray and arr.flags.writeable
        assert (arr == value).all()
        assert is_shared_result(arr) == bool(SEGMENTS)
    assert (d["small"] == 4.0).all()
    assert result_maps() == maps + 3 * SHARED


@pytest.mark.parametrize("make", [
    lambda: delayed(np_tasks.arange_2d)(400, 100, "F"),
    lambda: delayed(np_tasks.arange_2d)(400, 100, "C"),
    lambda: delayed(np_tasks.strided)(BIG),
    lambda: delayed(np_tasks.ones)(4 * BIG, "int16"),
])
def test_result_layouts(make):
    task = make()
    expected = task[0](*task[1], **task[2])
    got = par()([task])[0]
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == expected.dtype and got.flags.writeable
    assert is_shared_result(got) == bool(SEGMENTS)
    if expected.flags.c_contiguous or expected.flags.f_contiguous:
        assert got.flags.f_contiguous == expected.flags.f_contiguous


def test_more_results_than_one_message_of_descriptors():
    maps = result_maps()
    out = par(max_nbytes=1000)([delayed(np_tasks.many)(300, 200)])[0]
    assert [float(a[0]) for a in out] == [float(i) for i in range(300)]
    assert result_maps() == maps + 300 * SHARED
    del out


def test_unpicklable_result_next_to_a_shared_array():
    with pytest.raises(pickle.PicklingError, match="could not be pickled"):
        par()([delayed(np_tasks.with_lock)(BIG)])


def test_failed_reply_closes_its_shared_segments():
    """Worker side, in this process: a reply that cannot be pickled after
    its array went to shared memory closes that segment."""
    import multiprocessing
    import threading

    from joblib_fast.backends.processes import wire, worker
    ours_end, peer = multiprocessing.Pipe()
    try:
        replier = worker._Replier(ours_end)
        opened, segments = np_tasks.descriptors()
        replier.reply(7, wire.OK, [np.ones(BIG), threading.Lock()], 0.0,
                      threshold=1000)
        after, segments_after = np_tasks.descriptors()
        assert segments_after == segments
        assert after <= opened
        frame = wire.recv_frame(peer.fileno())
        key, status, _, _, n_fds = wire.REPLY_HEAD.unpack_from(frame)
        assert (key, status, n_fds) == (7, wire.SEND_ERROR, 0)
    finally:
        ours_end.close()
        peer.close()


@pytest.mark.slow
def test_return_shared_false_pickles_results():
    maps = result_maps()
    out = par(return_shared=False)(delayed(np_tasks.ones)(BIG) for _ in range(2))
    assert result_maps() == maps
    assert all(type(a) is np.ndarray and a.flags.writeable and a.sum() == BIG
               for a in out)


@pytest.mark.slow
def test_max_nbytes_none_pickles_results():
    maps = result_maps()
    out = par(max_nbytes=None)([delayed(np_tasks.ones)(BIG)])
    assert result_maps() == maps and out[0].sum() == BIG


def test_return_shared_must_be_a_bool():
    with pytest.raises(TypeError, match="return_shared"):
        Parallel(n_jobs=2, return_shared="yes")


def test_memmapped_input_returned_comes_back_as_array(folder):
    a = np.arange(BIG, dtype=np.float64)
    big, small = par(temp_folder=folder)([
        delayed(np_tasks.same)(a), delayed(np_tasks.head)(a, 10)])
    for got, expected in ((big, a), (small, a[:10])):
        assert type(got) is np.ndarray and got.flags.writeable
        np.testing.assert_array_equal(got, expected)
    assert os.listdir(folder) == []


def test_object_array_results(folder):
    out = par()([delayed(np_tasks.object_array)(BIG // 10)])[0]
    assert out.dtype == object and out[5] == {"i": 5}


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_start_methods(folder, start_method):
    import multiprocessing
    a = np.arange(BIG, dtype=np.float64)
    info, back = par(temp_folder=folder,
                     backend=multiprocessing.get_context(start_method))(
        [delayed(np_tasks.describe)(a), delayed(np_tasks.same)(a)])
    assert info["memmap"] and info["sum"] == a.sum()
    assert is_shared_result(back) == bool(SEGMENTS) and (back == a).all()
    assert os.listdir(folder) == []

def test_result_arrays_freed_by_refcount_alone():
    """Dropping the results unmaps them at once: nothing in the unpickling
    path keeps them in a reference cycle until a full collection."""
    def mapped_now():
        with open("/proc/self/maps") as f:
            return sum(np_tasks.is_result_data_map(line) for line in f)

    gc.collect()
    before = mapped_now()
    gc.disable()
    try:
        out = par()(delayed(np_tasks.ones)(BIG) for _ in range(6))
        assert mapped_now() - before == 6 * SHARED
        del out
        assert mapped_now() == before
    finally:
        gc.enable()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_shared_result_is_copy_on_write_after_fork():
    pytest.importorskip("numpy")
    a = Parallel(n_jobs=2)(delayed(np_tasks.big_array)(7) for _ in range(1))[0]
    assert a.nbytes > 1 << 20
    assert_private_after_fork(a)


_INHERITED = []


def _global_write():
    _INHERITED[0][0] = -1.0
    return float(_INHERITED[0][0])


@pytest.fixture(autouse=True)
def _inherited_reset():
    yield
    _INHERITED.clear()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_shared_result_through_fork_pool_stays_private():
    pytest.importorskip("numpy")
    import multiprocessing
    a = Parallel(n_jobs=2)(delayed(np_tasks.big_array)(7) for _ in range(1))[0]
    _INHERITED.append(a)
    with multiprocessing.get_context("fork").Pool(1) as mp_pool:
        assert mp_pool.apply(_global_write) == -1.0
    assert a[0] == 7.0


_MANY_RESULTS = textwrap.dedent("""
    import resource, sys
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))
    import numpy as np
    from joblib_fast import Parallel, delayed
    def make(i):
        return np.full(600, i, dtype=np.float64)
    kept = []
    with Parallel(n_jobs=2, max_nbytes=1000) as p:
        for _ in range(8):
            kept += p(delayed(make)(i) for i in range(126))
    assert len(kept) == 1008, len(kept)
    assert all(k[0] == i % 126 for i, k in enumerate(kept))
    import os
    print(len(os.listdir("/proc/self/fd")))
""")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="no /proc")
def test_kept_shared_results_hold_no_descriptor(tmp_path):
    pytest.importorskip("numpy")
    proc = subprocess.run([sys.executable, "-c", _MANY_RESULTS],
                          cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout.split()[-1]) < 100
