"""Named result segments (``shm_named``: the Windows profile's results in
shared memory): the segment and its hand-over between worker and parent
in this process, the Windows calls against a model of named sections,
and whole calls under ``JOBLIB_FAST_PORTABLE=windows`` (where the pool
uses them): values, private memory, and no name left behind by a killed
worker, an aborted call or a killed parent."""
from __future__ import annotations

import mmap
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

np = pytest.importorskip("numpy")

from helpers import np_tasks
from helpers.np_tasks import BIG, SEGMENTS, is_shared_result, named_segments, par

from joblib_fast import delayed
from joblib_fast.backends.processes import arrays_out, shm, shm_named
from joblib_fast.errors import TerminatedWorkerError

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.usefixtures("process_helpers")]

posix_names = pytest.mark.skipif(
    not shm_named.AVAILABLE or shm_named.NAME_FOLDER is None,
    reason="no POSIX shm_open names visible in /dev/shm here")
in_calls = pytest.mark.skipif(
    SEGMENTS != "named",
    reason=f"results here: {SEGMENTS or 'pickled'} "
           "(named segments: JOBLIB_FAST_PORTABLE=windows)")


def _fds_on(name: str) -> int:
    """This process's descriptors on the segment ``name`` (named or, once
    unlinked, "(deleted)").  Counted by target, not in total: other tests'
    pools and reapers open and close descriptors while this one runs."""
    path = f"/dev/shm/{name}"
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:   # closed since the listing
            continue
        count += target in (path, path + " (deleted)")
    return count


def _array(layout):
    base = np.arange(60000, dtype=np.float64).reshape(300, 200)
    return {"C": base, "F": np.asfortranarray(base), "strided": base[::2, ::3],
            "empty": base[:0]}[layout]


def _as_result(owner, a):
    order = "F" if a.flags.f_contiguous and not a.flags.c_contiguous else "C"
    return np.asarray(owner).view(a.dtype)[:a.size].reshape(a.shape,
                                                             order=order)


# ------------------------------------------ the segment, in this process


@posix_names
@pytest.mark.parametrize("layout", ["C", "F", "strided", "empty"])
def test_named_segment_round_trip(layout):
    a = _array(layout)
    segment = shm_named.create(a.nbytes)
    try:
        assert _fds_on(segment.name) > 0
        segment.fill(a)
        assert segment.name in named_segments(os.getpid())
        assert not segment.opened()
        owner = shm.attach_named(segment.name, a.nbytes)
        # Mapped, name gone, the worker told.
        assert segment.name not in named_segments(os.getpid())
        assert segment.opened()
    finally:
        segment.close()
    back = _as_result(owner, a)
    np.testing.assert_array_equal(back, a)
    back[...] = -1  # private, writable; the source unchanged
    assert (a >= 0).all()
    del back, owner
    assert _fds_on(segment.name) == 0


@posix_names
def test_worker_holds_a_segment_until_the_parent_opened_it():
    packer = arrays_out.ResultPacker()
    a = np.full(5000, 7.0)
    segment = shm_named.create(a.nbytes)
    try:
        segment.fill(a)
        holding = _fds_on(segment.name)
        assert holding > 0
        assert not shm.sent(segment)   # held, not closed
        packer.hand_over([segment])
        packer.sweep()
        assert packer.held == [segment]
        assert _fds_on(segment.name) == holding
        owner = shm.attach_named(segment.name, a.nbytes)
        packer.sweep()
        # Let go once opened: the worker's descriptors closed, and the data
        # stays with the parent's mapping.
        assert packer.held == [] and _fds_on(segment.name) == 0
        assert (_as_result(owner, a) == 7.0).all()
        assert segment.name not in named_segments(os.getpid())
    finally:
        packer.close()   # what is still held, if an assertion failed
        shm.release_named(segment.name)


@posix_names
def test_segments_never_opened_go_at_the_workers_exit():
    packer = arrays_out.ResultPacker()
    segments = [shm_named.create(4096) for _ in range(3)]
    packer.hand_over(segments)
    assert {s.name for s in segments} <= named_segments(os.getpid())
    assert all(_fds_on(s.name) > 0 for s in segments)
    packer.close()
    assert packer.held == []
    assert sum(_fds_on(s.name) for s in segments) == 0
    assert named_segments(os.getpid()) & {s.name for s in segments} == set()
    with pytest.raises(FileNotFoundError):
        shm.attach_named(segments[0].name, 4096)


@posix_names
def test_parent_releases_what_it_does_not_map():
    segment = shm_named.create(4096)
    try:
        shm.release_named(segment.name)
        assert segment.opened()
        assert segment.name not in named_segments(os.getpid())
        shm.release_named(segment.name)   # gone already: nothing
    finally:
        segment.close()


@posix_names
def test_forget_drops_the_names_of_a_pid():
    segments = [shm_named.create(4096) for _ in range(2)]
    try:
        shm_named.forget(os.getpid())
        assert named_segments(os.getpid()) & {s.name for s in segments} \
            == set()
    finally:
        for s in segments:
            s.close()   # its name gone already: nothing more


def test_unknown_or_truncated_segment_is_refused(monkeypatch):
    head = bytearray(shm_named.HEADER)
    shm_named._HEAD.pack_into(head, 0, b"notours!", 10, 0)
    with pytest.raises(FileNotFoundError, match="not one of ours"):
        shm_named._check_head(head, 10, "x")
    shm_named._HEAD.pack_into(head, 0, shm_named.MAGIC, 10, 0)
    with pytest.raises(FileNotFoundError):
        shm_named._check_head(head, 11, "x")
    shm_named._check_head(head, 10, "x")


# ------------------------------- the Windows calls, on a model of sections


class _Sections:
    """A stand-in for the ``mmap`` module as Windows has it: ``mmap(-1,
    n, tagname=...)`` opens the named section (made, zero-filled, when
    new), ``ACCESS_COPY`` views are copy-on-write.  Each section is a
    memfd here; every call is recorded."""

    ALLOCATIONGRANULARITY = mmap.ALLOCATIONGRANULARITY
    ACCESS_DEFAULT, ACCESS_READ, ACCESS_WRITE, ACCESS_COPY = (
        mmap.ACCESS_DEFAULT, mmap.ACCESS_READ, mmap.ACCESS_WRITE,
        mmap.ACCESS_COPY)

    def __init__(self):
        self.fds = {}
        self.calls = []

    def mmap(self, fileno, length, tagname=None, access=mmap.ACCESS_DEFAULT,
             offset=0):
        assert fileno == -1 and tagname and offset % self.ALLOCATIONGRANULARITY == 0
        self.calls.append((tagname, length, access, offset))
        fd = self.fds.get(tagname)
        if fd is None:
            fd = self.fds[tagname] = os.memfd_create("section")
        if os.fstat(fd).st_size < offset + length:
            os.ftruncate(fd, offset + length)
        if access == mmap.ACCESS_DEFAULT:
            access = mmap.ACCESS_WRITE
        return mmap.mmap(fd, length, access=access, offset=offset)

    def close(self):
        for fd in self.fds.values():
            os.close(fd)


@pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="no memfd")
def test_windows_calls_on_a_model_of_named_sections(monkeypatch):
    sections = _Sections()
    monkeypatch.setattr(shm_named, "mmap", sections)
    create, attach, release, _ = shm_named.IMPLEMENTATIONS["windows"]
    a = _array("F")
    segment = create(a.nbytes)
    try:
        segment.fill(a)
        assert not segment.opened()
        owner = attach(segment.name, a.nbytes, None)
        assert segment.opened()
        # The data view: the worker's section by name, copy-on-write,
        # past the header.
        assert (segment.name, a.nbytes, mmap.ACCESS_COPY, shm_named.HEADER) \
            in sections.calls
        back = _as_result(owner, a)
        np.testing.assert_array_equal(back, a)
        back[...] = -1
        # Private: the section keeps the worker's bytes.
        check = attach(segment.name, a.nbytes, None)
        np.testing.assert_array_equal(_as_result(check, a), a)
        del back, owner, check
        # A name nobody holds opens a fresh, empty section: refused.
        with pytest.raises(FileNotFoundError):
            attach("joblib_fast_1_rgone", 8, None)
        release("joblib_fast_1_rgone2")   # nothing to tell, no error
    finally:
        segment.close()
        sections.close()


# -------------------------------------------------- whole calls (windows)


@in_calls
def test_large_results_arrive_through_named_segments():
    before = named_segments()
    small, big = par()(delayed(np_tasks.ones)(n) for n in (10, BIG))
    assert (big == 1.0).all() and big.flags.writeable and (small == 1).all()
    # Its memory maps a /dev/shm name that was already unlinked.
    assert is_shared_result(big) and not is_shared_result(small)
    assert named_segments() - before == set()


@in_calls
def test_parent_and_worker_writes_stay_apart():
    with par() as p:
        out = p(delayed(np_tasks.keep)(BIG, i) for i in range(2))
        assert all(is_shared_result(a) for _, a in out)
        for _, a in out:
            a[:] = -1.0                     # the parent writes its results
        kept = dict(p(delayed(np_tasks.kept_sum)() for _ in range(4)))
        p(delayed(np_tasks.bump_kept)() for _ in range(4))  # workers write
    values = {pid: i for i, (pid, _) in enumerate(out)}
    for pid, total in kept.items():
        if pid in values and total is not None:
            assert total == BIG * float(values[pid])
    assert all((a == -1.0).all() for _, a in out)


@in_calls
def test_killed_worker_leaves_no_name(tmp_path):
    before = named_segments()
    record = tmp_path / "names"
    with pytest.raises(TerminatedWorkerError):
        par()([delayed(np_tasks.big_then_die)(BIG, str(record))])
    held = record.read_text().split()
    assert len(held) == 1       # it held one when it died
    assert named_segments() - before == set()


@in_calls
def test_aborted_call_leaves_no_name(tmp_path):
    before = named_segments()
    record = tmp_path / "names"
    with pytest.raises(ValueError, match="held up"):
        par(batch_size=1)([
            delayed(np_tasks.big_then_block)(BIG, str(record)),
            delayed(np_tasks.fail_when_ready)(str(record) + ".ready")])
    assert len(record.read_text().split()) == 1
    assert named_segments() - before == set()


@in_calls
def test_killed_parent_leaves_no_name(tmp_path):
    psutil = pytest.importorskip("psutil")
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {os.path.dirname(os.path.dirname(__file__))!r})
        from helpers import np_tasks
        from joblib_fast import delayed
        np_tasks.par()([delayed(np_tasks.stop_parent_then_big)(
            os.getpid(), {BIG})])
    """)
    proc = subprocess.Popen([sys.executable, "-P", "-c", script])
    try:
        parent = psutil.Process(proc.pid)
        # Stopped by its worker, which then sends a segment it cannot open.
        deadline = time.monotonic() + 30
        held: set = set()
        while not held:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
            if parent.status() == psutil.STATUS_STOPPED:
                workers = parent.children(recursive=True)
                held = set().union(*(named_segments(w.pid) for w in workers))
        assert len(held) == 1
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # Its workers see their pipe close, let go and exit.
        _, alive = psutil.wait_procs(workers, timeout=30)
        assert alive == []
        assert named_segments() & held == set()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
