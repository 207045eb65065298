"""NumPy arrays into workers: memmapped inputs (joblib's "Working with
numerical data in shared memory"), out-of-band buffers, where the
files go, the threading backend, the user guide's NumPy examples.

Structure only: which type a worker sees, where a file lives, which files
exist when.  Arrays are small (a few hundred kB) with a matching
``max_nbytes``; helpers and sizes are in
``helpers/np_tasks.py``.
"""
from __future__ import annotations

import os
import tempfile

import pytest

np = pytest.importorskip("numpy")

from helpers import np_tasks
from helpers.common import doc_blocks
from helpers.np_tasks import (
    BIG,
    MID,
    SHM,
    SMALL,
    is_shared_result,
    ours,
    par,
)

from joblib_fast import Parallel, delayed, parallel_config
from joblib_fast.backends.processes import arrays_in, pickling

pytestmark = pytest.mark.usefixtures("process_helpers")


# ------------------------------------------------------------- inputs


def test_large_array_reaches_worker_as_readonly_memmap(folder):
    a = np.arange(BIG, dtype=np.float64)
    small = np.arange(SMALL, dtype=np.float64)
    big, little = par(temp_folder=folder)(
        delayed(np_tasks.describe)(x) for x in (a, small))
    assert big["memmap"] and big["mode"] == "r" and not big["writeable"]
    assert big["sum"] == a.sum()
    assert os.path.dirname(os.path.dirname(big["filename"])) == folder
    assert little["type"] == "ndarray" and not little["memmap"]
    assert little["writeable"] and little["sum"] == small.sum()
    assert ours(folder) == []


@pytest.mark.parametrize("limit, memmapped", [
    ("200k", {BIG}), (100_000, {BIG}), ("1M", set()), (None, set()),
    (0, {SMALL, BIG}),
])
def test_max_nbytes(folder, limit, memmapped):
    sizes = (SMALL, BIG)
    out = par(temp_folder=folder, max_nbytes=limit)(
        delayed(np_tasks.describe)(np.ones(n)) for n in sizes)
    assert {n for n, d in zip(sizes, out) if d["memmap"]} == memmapped
    assert [d["sum"] for d in out] == [float(n) for n in sizes]


def test_max_nbytes_and_mmap_mode_from_parallel_config(folder):
    tasks = [delayed(np_tasks.describe)(np.ones(BIG))]
    with parallel_config(max_nbytes=None):
        assert not Parallel(n_jobs=2, temp_folder=folder)(tasks)[0]["memmap"]
    with parallel_config(max_nbytes="200k", mmap_mode="c", temp_folder=folder):
        info = Parallel(n_jobs=2)(tasks)[0]
    assert info["memmap"] and info["mode"] == "c"
    assert os.path.dirname(os.path.dirname(info["filename"])) == folder


@pytest.mark.parametrize("mode", ["r", "r+", "w+", "c"])
def test_mmap_modes(folder, mode):
    a = np.arange(BIG, dtype=np.float64)
    b = np.zeros(BIG)
    info, error = par(temp_folder=folder, mmap_mode=mode)([
        delayed(np_tasks.describe)(a), delayed(np_tasks.try_write)(b)])
    assert info["memmap"] and info["sum"] == a.sum()  # w+ did not zero it
    assert info["mode"] == {"w+": "r+"}.get(mode, mode)
    if mode == "r":
        assert error == "ValueError"
    else:
        assert error is None
    assert b[0] == 0.0  # the parent's array is never written


@pytest.mark.parametrize("mode, expected", [("r+", 7.0), ("c", 0.0)])
def test_mmap_mode_r_plus_writes_reach_the_dump(folder, mode, expected):
    # The dump outlives the call inside a `with` block: read it back.
    a = np.zeros(BIG)
    with par(temp_folder=folder, mmap_mode=mode) as p:
        path = p([delayed(np_tasks.write_then_filename)(a, 7.0)])[0]
        assert np.fromfile(path)[0] == expected
    assert a[0] == 0.0


def test_mmap_mode_none_sends_writable_copies(folder):
    a = np.arange(BIG, dtype=np.float64)
    info, error = par(temp_folder=folder, mmap_mode=None)([
        delayed(np_tasks.describe)(a), delayed(np_tasks.try_write)(a)])
    assert info["type"] == "ndarray" and info["writeable"]
    assert info["sum"] == a.sum() and error is None
    assert os.listdir(folder) == []


def test_same_array_is_dumped_once_per_call(folder):
    a = np.ones(BIG)
    b = np.full(BIG, 2.0)
    tasks = [delayed(np_tasks.folder_listing)(x) for x in [a] * 6 + [b] * 3]
    listings = par(temp_folder=folder, batch_size=1)(tasks)
    assert {len(names) for names in listings} <= {1, 2}
    assert len(set().union(*map(set, listings))) == 2
    assert ours(folder) == []


def test_dump_reused_across_calls_of_a_block_unless_changed(folder):
    a = np.ones(BIG)
    with par(temp_folder=folder) as p:
        first = p([delayed(np_tasks.describe)(a)])[0]
        again = p([delayed(np_tasks.describe)(a)])[0]
        assert again["filename"] == first["filename"]
        a[-1] = 100.0  # changed between calls: a new dump
        changed = p([delayed(np_tasks.describe)(a)])[0]
        assert changed["filename"] != first["filename"]
        assert changed["sum"] == BIG - 1 + 100.0
        assert not os.path.exists(first["filename"])
        assert len(ours(folder)) == 1
    assert ours(folder) == []


@pytest.mark.slow
@pytest.mark.parametrize("order", ["C", "F"])
def test_layouts_survive_the_dump(folder, order):
    a = np.asarray(np.arange(400 * 100, dtype=np.float64).reshape(400, 100),
                   order=order)
    views = [a, a[::2], a[:, ::3], a.T, a[::-1, ::-1]]
    out = par(temp_folder=folder)(delayed(np_tasks.same)(v) for v in views)
    for view, back in zip(views, out):
        np.testing.assert_array_equal(back, view)
    info = par(temp_folder=folder)([delayed(np_tasks.describe)(a)])[0]
    assert info["memmap"] and info["f_contiguous"] == (order == "F")


def test_object_and_structured_arrays(folder):
    objects = np.array([{"i": i} for i in range(BIG // 10)] * 10, dtype=object)
    records = np.zeros(BIG, dtype=[("x", "f8"), ("n", "i4")])
    records["n"] = np.arange(BIG)
    obj_info, rec = par(temp_folder=folder)([
        delayed(np_tasks.is_ndarray_copy)(objects), delayed(np_tasks.same)(records)])
    assert obj_info == ("ndarray", True)  # pickled: object arrays never map
    np.testing.assert_array_equal(rec, records)


def test_existing_memmap_is_passed_by_filename(folder, tmp_path):
    path = str(tmp_path / "data.bin")
    m = np.memmap(path, dtype=np.float64, mode="w+", shape=(400, 100))
    m[:] = np.arange(m.size).reshape(m.shape)
    m.flush()
    views = [m, m[10:20], m[::3, 5:], np.asarray(m)[::-2]]
    out = par(temp_folder=folder, max_nbytes=None)(
        delayed(np_tasks.describe)(v) for v in views)
    for view, info in zip(views, out):
        assert info["memmap"] and info["filename"] == path
        assert info["mode"] == "r+"  # w+ reopened without truncating
        assert info["shape"] == view.shape and info["sum"] == view.sum()
    assert os.listdir(folder) == []  # no copy written
    back = par(temp_folder=folder)([delayed(np_tasks.head)(m, 5)])[0]
    assert isinstance(back, np.memmap) and back.filename == path  # by reference
    del m, views, back


def test_existing_memmap_at_an_offset(folder, tmp_path):
    path = str(tmp_path / "offset.bin")
    np.arange(10_000, dtype=np.float64).tofile(path)
    m = np.memmap(path, dtype=np.float64, mode="r", offset=8 * 1001,
                  shape=(3000,))
    views = [m, m[7:2000:3], m[::-1]]
    out = par(temp_folder=folder, max_nbytes=None)(
        delayed(np_tasks.same)(v) for v in views)
    for view, back in zip(views, out):
        assert isinstance(back, np.memmap) and back.filename == path
        np.testing.assert_array_equal(back, view)
    del m, views, out


@pytest.mark.parametrize("mode", ["r+", "w+"])
def test_shared_output_pattern(tmp_path, folder, mode):
    """joblib's documented pattern: workers fill slices of a memmap."""
    path = str(tmp_path / "out.bin")
    out = np.memmap(path, dtype=np.float64, mode="w+", shape=(8, 1000))
    if mode == "r+":
        out = np.memmap(path, dtype=np.float64, mode="r+", shape=(8, 1000))
    par(temp_folder=folder, mmap_mode=mode)(
        delayed(np_tasks.fill_slice)(out, i, i + 1, float(i)) for i in range(8))
    np.testing.assert_array_equal(out[:, 0], np.arange(8.0))
    assert (out[3] == 3.0).all()
    del out


def test_small_arrays_travel_as_out_of_band_buffers():
    mid = np.arange(MID, dtype=np.float64)     # below max_nbytes
    tiny = np.arange(10, dtype=np.float64)     # cheaper to copy in-band
    exchange = arrays_in.ArrayExchange(max_nbytes=1 << 20, mmap_mode="r")
    blob, buffers = pickling.dumps([mid, mid, tiny], exchange)
    assert len(buffers) == 1 and len(blob) < 1000  # data not in the stream
    assert np.shares_memory(np.frombuffer(buffers[0], dtype=np.float64), mid)
    exchange.cleanup()
    info, back = par()([delayed(np_tasks.describe)(mid),
                        delayed(np_tasks.same)(mid)])
    assert info["type"] == "ndarray" and info["writeable"]
    assert info["sum"] == mid.sum()
    assert back.flags.writeable and not is_shared_result(back)
    np.testing.assert_array_equal(back, mid)


# -------------------------------------------------- where files live


def test_temp_folder_is_honoured(folder):
    info = par(temp_folder=folder)([delayed(np_tasks.describe)(np.ones(BIG))])[0]
    name = os.path.basename(os.path.dirname(info["filename"]))
    assert os.path.dirname(os.path.dirname(info["filename"])) == folder
    assert name.startswith(f"joblib_fast_{os.getpid()}_")
    assert os.listdir(folder) == []


def test_joblib_temp_folder_env(folder, monkeypatch):
    monkeypatch.setenv("JOBLIB_TEMP_FOLDER", folder)
    info = par()([delayed(np_tasks.describe)(np.ones(BIG))])[0]
    assert os.path.dirname(os.path.dirname(info["filename"])) == folder


@pytest.mark.skipif(arrays_in.SHM_FOLDER is None or not os.access(SHM, os.W_OK),
                    reason="no writable /dev/shm, or not used on this platform")
def test_default_folder_is_dev_shm(monkeypatch):
    monkeypatch.delenv("JOBLIB_TEMP_FOLDER", raising=False)
    info = par()([delayed(np_tasks.describe)(np.ones(BIG))])[0]
    assert os.path.dirname(os.path.dirname(info["filename"])) == SHM
    assert ours(SHM) == []


def test_small_dev_shm_falls_back_to_temp_dir(monkeypatch):
    """Docker's 64 MB /dev/shm must not make a call fail."""
    monkeypatch.delenv("JOBLIB_TEMP_FOLDER", raising=False)
    real = arrays_in._free_bytes
    monkeypatch.setattr(arrays_in, "_free_bytes", lambda path: (
        100_000 if path == SHM else real(path)))
    info = par()([delayed(np_tasks.describe)(np.ones(BIG))])[0]
    assert os.path.dirname(os.path.dirname(info["filename"])) == \
        tempfile.gettempdir()
    assert info["sum"] == BIG
    assert ours(tempfile.gettempdir()) == []


@pytest.mark.skipif(arrays_in.SHM_FOLDER is None,
                    reason="one default folder only: nothing to fall back to")
def test_full_folder_falls_back_on_write_error(monkeypatch):
    """Room reported but the write fails (ENOSPC): the next folder."""
    monkeypatch.delenv("JOBLIB_TEMP_FOLDER", raising=False)
    real_write = arrays_in.write_array
    failed = []

    def write(fd, a):
        if not failed:
            failed.append(True)
            raise OSError(28, "No space left on device")
        real_write(fd, a)

    monkeypatch.setattr(arrays_in, "write_array", write)
    info = par()([delayed(np_tasks.describe)(np.ones(BIG))])[0]
    assert failed and info["sum"] == BIG
    assert os.path.dirname(os.path.dirname(info["filename"])) == \
        tempfile.gettempdir()


def test_unwritable_temp_folder_fails_clearly(folder, monkeypatch):
    def no_room(fd, a):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(arrays_in, "write_array", no_room)
    with pytest.raises(OSError, match="temp_folder=.*max_nbytes=None"):
        par(temp_folder=folder)([delayed(np_tasks.first)(np.ones(BIG))])
    assert os.listdir(folder) == []

# ---------------------------------------------------------- threading


def test_threading_backend_copies_nothing():
    a = np.arange(BIG, dtype=np.float64)
    same, view = Parallel(n_jobs=2, backend="threading", max_nbytes=0)([
        delayed(np_tasks.same)(a), delayed(np_tasks.head)(a, 10)])
    assert same is a
    assert np.shares_memory(view, a)
    made = Parallel(n_jobs=2, backend="threading")([delayed(np_tasks.nested)(BIG)])
    assert type(made[0][0]) is np.ndarray and not is_shared_result(made[0][0])


# --------------------------------------------------------- the user guide


@pytest.mark.parametrize("index", range(2))
def test_guide_numpy_examples_run(index):
    blocks = doc_blocks("docs/user_guide/numpy.md")
    assert len(blocks) == 2
    code = compile(blocks[index], f"NumPy guide block {index}", "exec")
    exec(code, {"__name__": "__main__"})  # noqa: S102 - the guide's own examples


@pytest.mark.parametrize("max_nbytes", [1e6, -1, 0.5, 1e300, float("inf")])
def test_max_nbytes_accepts_what_joblib_accepts(max_nbytes):
    np = pytest.importorskip("numpy")
    a = np.arange(10.0)
    out = Parallel(n_jobs=2, max_nbytes=max_nbytes)(
        delayed(np.sum)(a + i) for i in range(3))
    assert out == [np.sum(a + i) for i in range(3)]


def _is_memmap(a):
    import numpy as np
    return isinstance(a, np.memmap)


def test_max_nbytes_minus_one_memmaps_every_array():
    np = pytest.importorskip("numpy")
    small = np.arange(3.0)
    out = Parallel(n_jobs=2, max_nbytes=-1, mmap_mode="r")(
        delayed(_is_memmap)(small) for _ in range(2))
    assert out == [True, True]
    # Small results still come back right (-1 is not "never" any more).
    res = Parallel(n_jobs=2, max_nbytes=-1)(
        delayed(np_tasks.big_array)(i, 10) for i in range(3))
    assert [r.tolist() for r in res] == [[float(i)] * 10 for i in range(3)]
