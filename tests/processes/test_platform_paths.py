"""Each OS mechanism of the process backend behind its interface, every
implementation that can run here exercised whatever this platform
chose (``backends/processes/platform.py``): the wire (descriptors or
``Connection``), result segments (memfd, POSIX shared memory; named
segments in ``test_named_segments.py``), process
control (/proc or psutil), the deletion of dumps the OS refuses to delete,
and the worker cap of platforms that cap waits.

The whole process and NumPy test folders run once more with every
portable choice forced (``JOBLIB_FAST_PORTABLE``, see ``.ci/run``)."""
from __future__ import annotations

import multiprocessing
import os
import shutil
import subprocess
import sys
import threading
import time
import warnings

import pytest
from helpers.common import assert_private_after_fork

from joblib_fast import Parallel, delayed
from joblib_fast.backends import processes as proc_backend
from joblib_fast.backends.processes import arrays_in, platform, shm, tree, wire

np = pytest.importorskip("numpy")

pytestmark = pytest.mark.timeout(60)


# ---------------------------------------------------------------- wire


@pytest.fixture(params=sorted(wire.WIRES))
def wire_kind(request):
    """Both wires in turn, over a real pipe of this process."""
    before = wire.WIRE
    wire.select(request.param)
    yield request.param
    wire.select(before)


def _pipe():
    return multiprocessing.get_context("spawn").Pipe(duplex=True)


@pytest.mark.parametrize("sizes", [(), (0,), (10, 0, 3), (wire.MMAP_BUFFER_MIN + 5, 7)])
def test_task_round_trip_on_each_wire(wire_kind, sizes):
    a, b = _pipe()
    try:
        buffers = [bytes(range(256)) * (n // 256) + bytes(n % 256)
                   for n in sizes]
        blob = b"payload-bytes"
        # A thread writes while this one reads: large frames do not fit in
        # the pipe's buffer.
        sender = threading.Thread(target=wire.send_task, args=(
            wire.endpoint(a), 7, wire.GENERAL, 123, blob, buffers))
        sender.start()
        frame, got = wire.recv_task(wire.endpoint(b))
        sender.join()
        assert wire.task_head(frame) == (7, wire.GENERAL, 123)
        assert bytes(memoryview(frame)[wire.TASK_HEAD.size:]) == blob
        assert [bytes(g) for g in got] == buffers
        # Read into writable buffers of their final size.
        assert all(memoryview(g).readonly is False for g in got)
    finally:
        a.close()
        b.close()


def test_reply_round_trip_on_each_wire(wire_kind):
    a, b = _pipe()
    try:
        wire.send_reply(wire.endpoint(a), None, 3, wire.OK, 0.5, b"data",
                        [b"xyz"], [], retire=True)
        frame, buffers, fds = wire.recv_reply(wire.endpoint(b), None)
        assert wire.split_reply(frame)[0] == (3, wire.OK, 0.5)
        assert wire.reply_retires(frame)
        assert [bytes(x) for x in buffers] == [b"xyz"] and fds == []
    finally:
        a.close()
        b.close()


def test_reply_with_segment_names_on_each_wire(wire_kind):
    a, b = _pipe()
    try:
        names = ["joblib_fast_1_rabc", "joblib_fast_1_rdef"]
        wire.send_reply(wire.endpoint(a), None, 4, wire.OK, 0.25, b"data",
                        [b"xyz", b""], names)
        frame, buffers, got = wire.recv_reply(wire.endpoint(b), None)
        (key, status, _), data = wire.split_reply(frame)
        assert (key, status, bytes(data)) == (4, wire.OK, b"data")
        assert not wire.reply_retires(frame)
        assert [bytes(x) for x in buffers] == [b"xyz", b""] and got == names
    finally:
        a.close()
        b.close()


def test_endpoint_of_the_connection_wire_is_the_connection():
    before = wire.WIRE
    a, b = _pipe()
    try:
        wire.select("connection")
        assert wire.endpoint(a) is a
        wire.select("fd")
        assert wire.endpoint(a) == a.fileno()
    finally:
        wire.select(before)
        a.close()
        b.close()


# ------------------------------------------------------------ segments


@pytest.fixture(params=sorted(set(shm.MECHANISMS) - {"named"}))
def segment_kind(request):
    """The mechanisms whose segments are descriptors."""
    return request.param


@pytest.mark.parametrize("layout", ["C", "F", "strided", "empty"])
def test_segment_holds_the_array(segment_kind, layout):
    new, fill = shm.MECHANISMS[segment_kind]
    base = np.arange(60000, dtype=np.float64).reshape(300, 200)
    a = {"C": base, "F": np.asfortranarray(base), "strided": base[::2, ::3],
         "empty": base[:0]}[layout]
    fd = new(a.nbytes)
    try:
        assert not os.get_inheritable(fd)
        fill(fd, a)
        mapped = shm.attach_private(fd, a.nbytes)
    finally:
        os.close(fd)
    order = "F" if layout == "F" else "C"
    back = np.asarray(mapped).view(a.dtype).reshape(a.shape, order=order)
    np.testing.assert_array_equal(back, a)
    back[...] = -1     # private: writable, the array unchanged
    assert (a >= 0).all()


def test_posix_segment_has_no_name_left():
    """shm_open's name is unlinked at once: nothing in /dev/shm (where
    Linux keeps those names) outlives the call, even with the descriptor
    still open."""
    if "posix_shm" not in shm.MECHANISMS:
        pytest.skip("no shm_open here")
    if not os.path.isdir("/dev/shm"):
        pytest.skip("shm_open names are not visible in this file system")
    before = set(os.listdir("/dev/shm"))
    fd = shm.MECHANISMS["posix_shm"][0](4096)
    try:
        mine = {n for n in set(os.listdir("/dev/shm")) - before
                if n.startswith(f"jf{os.getpid()}_")}
        assert mine == set()
        assert os.fstat(fd).st_size == 4096
    finally:
        os.close(fd)


def test_platform_choices_are_consistent():
    chosen = platform.describe()
    assert chosen["wire"] in wire.WIRES and wire.WIRE == chosen["wire"]
    assert chosen["control"] in tree.IMPLEMENTATIONS
    # Descriptors of segments need the fd wire; names go on any wire.
    assert shm.MECHANISM in (None, "named") or chosen["wire"] == "fd"
    assert (shm.MECHANISM == "named") == (chosen["profile"] == "windows")
    assert shm.SUPPORTED == (shm.MECHANISM is not None)
    if shm.MECHANISM != "memfd":
        assert shm.born_shared() is None
    if chosen["profile"] == "windows":
        assert chosen["max_workers"] == 31 and chosen["shm_folder"] is None


# ----------------------------------------------------- process control


@pytest.fixture(params=sorted(tree.IMPLEMENTATIONS))
def control(request):
    if request.param == "proc" and not os.path.isdir("/proc/self"):
        pytest.skip("no /proc here")
    return tree.IMPLEMENTATIONS[request.param]


_TREE_SCRIPT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print(child.pid, flush=True)
time.sleep(60)
"""


def _start_tree():
    """A process with a child of its own; (parent Popen, child pid)."""
    parent = subprocess.Popen([sys.executable, "-c", _TREE_SCRIPT],
                              stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    return parent, child


def _wait_gone(control, pid, started, seconds=10.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if control["start_time"](pid) != started:
            return True
        time.sleep(0.02)
    return False


def test_process_control_sees_and_ends_a_tree(control):
    parent, child = _start_tree()
    try:
        assert control["alive"](parent.pid)
        started = control["start_time"](parent.pid)
        child_started = control["start_time"](child)
        assert started is not None and child_started is not None
        assert control["start_time"](parent.pid) == started
        assert child in control["descendants"]([parent.pid])
        control["terminate_trees"]([parent.pid])
        assert parent.wait(10) is not None
        assert _wait_gone(control, child, child_started)
        # Reaped: neither the pid's liveness nor its start time remain.
        assert control["start_time"](parent.pid) is None
    finally:
        for pid in (child, parent.pid):
            tree.IMPLEMENTATIONS["psutil"]["kill"]([pid])
        parent.wait(10)
        parent.stdout.close()


def test_process_control_kills(control):
    parent, child = _start_tree()
    try:
        child_started = control["start_time"](child)
        control["kill"]([child, parent.pid])
        assert parent.wait(10) is not None
        assert _wait_gone(control, child, child_started)
    finally:
        parent.wait(10)
        parent.stdout.close()


def test_dead_pid_is_not_alive(control):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(10)
    assert not control["alive"](proc.pid)
    assert control["start_time"](proc.pid) is None


# -------------------------------------------------------------- inputs


def _total(a):
    return float(a.sum())


def test_dump_written_in_binary_mode():
    assert arrays_in._DUMP_FLAGS & getattr(os, "O_BINARY", 0) == \
        getattr(os, "O_BINARY", 0)
    assert arrays_in._DUMP_FLAGS & os.O_EXCL


def test_dump_folder_the_os_refuses_to_delete_goes_later(monkeypatch,
                                                          tmp_path):
    """Windows refuses to delete a file a process still maps: the call
    ends normally, the folder is deleted by a later cleanup."""
    real_rmtree, real_unlink = shutil.rmtree, os.unlink
    refused = []

    def refuse(path, *args, **kwargs):
        if "joblib_fast_" in os.fspath(path):
            refused.append(os.fspath(path))
            raise PermissionError(13, "in use", os.fspath(path))
        return real_rmtree(path, *args, **kwargs)

    a = np.arange(100000, dtype=np.float64)
    monkeypatch.setattr(shutil, "rmtree", refuse)
    out = Parallel(n_jobs=2, max_nbytes=1000, temp_folder=str(tmp_path))(
        delayed(_total)(a) for _ in range(3))
    assert out == [float(a.sum())] * 3
    assert refused, "the call did not try to delete its folder"
    left = [p for p in refused if os.path.isdir(p)]
    assert left, "the refused folder should still be there"
    monkeypatch.setattr(shutil, "rmtree", real_rmtree)
    assert os.unlink is real_unlink
    # The next call's cleanup deletes what was refused.
    Parallel(n_jobs=2, max_nbytes=1000, temp_folder=str(tmp_path))(
        delayed(_total)(a) for _ in range(2))
    assert not any(os.path.exists(p) for p in left)


@pytest.mark.parametrize("posix_mmap", [True, False])
@pytest.mark.parametrize("mode", ["r", "r+"])
def test_dump_mapped_with_either_mmap_interface(monkeypatch, tmp_path,
                                                posix_mmap, mode):
    """A worker maps a dump with mmap's POSIX arguments, or with the
    access= that Windows has (the worker side, in this process)."""
    if posix_mmap and not hasattr(__import__("mmap"), "MAP_SHARED"):
        pytest.skip("no POSIX mmap here")
    monkeypatch.setattr(arrays_in, "_POSIX_MMAP", posix_mmap)
    path = tmp_path / "dump.mmap"
    a = np.arange(1000, dtype=np.float64)
    path.write_bytes(a.tobytes())
    out = arrays_in._open_dump(str(path), a.dtype, a.shape, "C", mode)
    try:
        np.testing.assert_array_equal(out, a)
        assert out.flags.writeable == (mode == "r+")
        if mode == "r+":
            out[0] = 42.0
            out.flush()
            assert np.fromfile(path)[0] == 42.0
    finally:
        del out
        arrays_in._WORKER_MAPS.clear()


@pytest.mark.parametrize("keep", [True, False])
def test_worker_keeps_a_dump_mapped_only_where_mapped_files_can_go(
        monkeypatch, tmp_path, keep):
    """Where the OS deletes mapped files, a worker maps a dump once for
    all its tasks; elsewhere each task maps it and nothing is kept, so
    that the parent can delete the dump once the tasks are done."""
    monkeypatch.setattr(arrays_in, "_KEEP_MAPS", keep)
    path = tmp_path / "dump.mmap"
    a = np.arange(1000, dtype=np.float64)
    path.write_bytes(a.tobytes())
    try:
        one = arrays_in._open_dump(str(path), a.dtype, a.shape, "C", "r")
        two = arrays_in._open_dump(str(path), a.dtype, a.shape, "C", "r")
        same = one.__array_interface__["data"][0] == \
            two.__array_interface__["data"][0]
        assert same == keep
        assert bool(arrays_in._WORKER_MAPS) == keep
        np.testing.assert_array_equal(two, a)
    finally:
        del one, two
        arrays_in._WORKER_MAPS.clear()


def test_no_ram_folder_where_the_platform_has_none(monkeypatch):
    monkeypatch.setattr(arrays_in, "SHM_FOLDER", None)
    monkeypatch.delenv("JOBLIB_TEMP_FOLDER", raising=False)
    import tempfile
    assert arrays_in.candidate_folders(None, 10) == [tempfile.gettempdir()]


# ---------------------------------------------------------- worker cap


def _pid(_):
    return os.getpid()


def test_worker_count_capped_with_a_warning(monkeypatch):
    monkeypatch.setattr(platform, "MAX_WORKERS", 2)
    with pytest.warns(UserWarning, match=r"n_jobs=3: a process pool holds "
                                         r"at most 2 workers"):
        pids = Parallel(n_jobs=3, backend="loky")(
            delayed(_pid)(i) for i in range(40))
    assert 1 <= len(set(pids)) <= 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Parallel(n_jobs=2, backend="loky")(delayed(_pid)(i) for i in range(4))


def test_pool_refuses_more_workers_than_the_platform_waits_on(monkeypatch):
    monkeypatch.setattr(platform, "MAX_WORKERS", 2)
    with pytest.raises(ValueError, match="at most 2 on this platform"):
        proc_backend.ProcessPool(3, multiprocessing.get_context("spawn"), {})


# ------------------------------------------------------ pickled results


def _big(value):
    return np.full(1 << 17, value, dtype=np.float64)   # 1 MB


def test_pickled_large_result_is_not_shared_with_a_forked_child():
    """A large result read into an anonymous mapping (pickled: no shared
    memory asked for, or none on this platform) is this process's own:
    a child forked later writes to its copy only, as with any array."""
    if not hasattr(os, "fork"):
        pytest.skip("no fork here")
    a = Parallel(n_jobs=2, return_shared=False)(
        delayed(_big)(7.0) for _ in range(1))[0]
    assert a.nbytes > wire.MMAP_BUFFER_MIN
    assert_private_after_fork(a)
