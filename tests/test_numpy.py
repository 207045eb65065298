"""NumPy arrays in and out of workers: memmapped inputs (joblib's
"Working with numerical data in shared memory"), shared-memory results,
out-of-band pickling, where the files go and that they are all removed.

Structure only: which type a worker sees, where a file lives, which files
exist when.  Arrays are small (a few hundred kB) with a matching
``max_nbytes``.
"""
from __future__ import annotations

import gc
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import textwrap
import weakref

import pytest

np = pytest.importorskip("numpy")

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)

import np_tasks

import joblib_fast
from joblib_fast import Parallel, delayed, parallel_config
from joblib_fast.backends.processes import (
    TerminatedWorkerError,
    arrays_in,
    pickling,
    shutdown_reusable_pools,
)

pytestmark = pytest.mark.usefixtures("process_helpers")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(joblib_fast.__file__)))
BIG = 50_000            # float64 items: 400 kB, above LIMIT
SMALL = 1_000           # 8 kB, below LIMIT
MID = 12_500            # 100 kB: below LIMIT, sent as an out-of-band buffer
LIMIT = "200k"
SHM = "/dev/shm"
RESULT_MAPS = "memfd:joblib_fast_result"


def ours(folder) -> list:
    """This process's joblib_fast entries in ``folder``."""
    prefix = f"joblib_fast_{os.getpid()}_"
    try:
        return sorted(n for n in os.listdir(folder) if n.startswith(prefix))
    except FileNotFoundError:
        return []


def result_maps() -> int:
    """Shared-memory results mapped in this process now."""
    gc.collect()
    with open("/proc/self/maps") as f:
        return sum(RESULT_MAPS in line for line in f)


def par(**kwargs) -> Parallel:
    kwargs.setdefault("n_jobs", 2)
    kwargs.setdefault("backend", "loky")
    kwargs.setdefault("max_nbytes", LIMIT)
    return Parallel(**kwargs)


@pytest.fixture
def folder(tmp_path):
    path = tmp_path / "mm"
    path.mkdir()
    return str(path)


def _mapped_base(a):
    """The object at the end of ``a``'s base chain (through memoryviews)."""
    b = a
    while True:
        if isinstance(b, memoryview):
            b = b.obj
        elif getattr(b, "base", None) is not None:
            b = b.base
        else:
            return b


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
    assert back.flags.writeable and not _is_shared_result(back)
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


@pytest.mark.skipif(not os.access(SHM, os.W_OK), reason="no writable /dev/shm")
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
            delayed(np_tasks.fail_on)(a, 3, i) for i in range(8))
        list(out)
    assert os.listdir(folder) == []


def test_cleanup_after_exception_in_with_block(folder):
    a = np.ones(BIG)
    with par(temp_folder=folder) as p:
        with pytest.raises(ValueError):
            p(delayed(np_tasks.fail_on)(a, 1, i) for i in range(4))
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


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(proc.stdout)


def test_stale_folders_of_dead_processes_are_swept(folder):
    dead = _dead_pid()
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
    import np_tasks
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


# ------------------------------------------------------------ outputs


def _is_shared_result(a) -> bool:
    """``a``'s data lies in a shared-memory result mapping."""
    addr = a.__array_interface__["data"][0]
    with open("/proc/self/maps") as f:
        for line in f:
            if RESULT_MAPS in line:
                low, high = (int(x, 16) for x in line.split()[0].split("-"))
                if low <= addr < high:
                    return True
    return False


def test_large_results_come_back_through_shared_memory():
    before = set(os.listdir(SHM)) if os.path.isdir(SHM) else set()
    maps = result_maps()
    small, big = par()(delayed(np_tasks.ones)(n) for n in (SMALL, BIG))
    assert type(big) is np.ndarray and not isinstance(big, np.memmap)
    assert big.flags.writeable and big.sum() == BIG
    assert result_maps() == maps + 1  # big only
    big[:] = 5.0  # ours to write
    assert big.sum() == 5.0 * BIG
    assert type(small) is np.ndarray and small.flags.writeable
    if os.path.isdir(SHM):
        assert set(os.listdir(SHM)) - before == set()  # never a file


def test_shared_results_are_freed_when_collected():
    maps = result_maps()
    out = par()(delayed(np_tasks.ones)(BIG) for _ in range(3))
    assert result_maps() == maps + 3
    ref = weakref.ref(_mapped_base(out[0]))
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
        assert (arr == value).all() and _is_shared_result(arr)
    assert (d["small"] == 4.0).all()
    assert result_maps() == maps + 3


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
    assert _is_shared_result(got)
    if expected.flags.c_contiguous or expected.flags.f_contiguous:
        assert got.flags.f_contiguous == expected.flags.f_contiguous


def test_more_results_than_one_message_of_descriptors():
    maps = result_maps()
    out = par(max_nbytes=1000)([delayed(np_tasks.many)(300, 200)])[0]
    assert [float(a[0]) for a in out] == [float(i) for i in range(300)]
    assert result_maps() == maps + 300
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
        fds = len(os.listdir("/proc/self/fd"))
        replier.reply(7, wire.OK, [np.ones(BIG), threading.Lock()], 0.0,
                      threshold=1000)
        assert len(os.listdir("/proc/self/fd")) == fds
        frame = wire.recv_frame(peer.fileno())
        key, status, _, _, n_fds = wire.REPLY_HEAD.unpack_from(frame)
        assert (key, status, n_fds) == (7, wire.SEND_ERROR, 0)
    finally:
        ours_end.close()
        peer.close()


def test_return_shared_false_pickles_results():
    maps = result_maps()
    out = par(return_shared=False)(delayed(np_tasks.ones)(BIG) for _ in range(2))
    assert result_maps() == maps
    assert all(type(a) is np.ndarray and a.flags.writeable and a.sum() == BIG
               for a in out)


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
    assert _is_shared_result(back) and (back == a).all()
    assert os.listdir(folder) == []


# ---------------------------------------------------------- threading


def test_threading_backend_copies_nothing():
    a = np.arange(BIG, dtype=np.float64)
    same, view = Parallel(n_jobs=2, backend="threading", max_nbytes=0)([
        delayed(np_tasks.same)(a), delayed(np_tasks.head)(a, 10)])
    assert same is a
    assert np.shares_memory(view, a)
    made = Parallel(n_jobs=2, backend="threading")([delayed(np_tasks.nested)(BIG)])
    assert type(made[0][0]) is np.ndarray and not _is_shared_result(made[0][0])


# -------------------------------------------------------------- README


def _readme_blocks(title):
    import pathlib
    import re
    # The checkout's README, next to the tests folder (never skipped).
    readme = pathlib.Path(TESTS_DIR).resolve().parent / "README.md"
    text = readme.read_text()
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start:end], re.DOTALL)


@pytest.mark.parametrize("index", range(2))
def test_readme_numpy_examples_run(index):
    blocks = _readme_blocks("NumPy arrays")
    assert len(blocks) == 2
    code = compile(blocks[index], f"README NumPy block {index}", "exec")
    exec(code, {"__name__": "__main__"})  # noqa: S102 - the README's own examples


def test_result_arrays_freed_by_refcount_alone():
    """Dropping the results unmaps them at once: nothing in the unpickling
    path keeps them in a reference cycle until a full collection."""
    def mapped_now():
        with open("/proc/self/maps") as f:
            return sum(RESULT_MAPS in line for line in f)

    gc.collect()
    before = mapped_now()
    gc.disable()
    try:
        out = par()(delayed(np_tasks.ones)(BIG) for _ in range(6))
        assert mapped_now() - before == 6
        del out
        assert mapped_now() == before
    finally:
        gc.enable()
