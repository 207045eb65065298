"""Messages between the parent and a process worker, over one socket pair:
the message kinds, their heads, framing, and the encode/decode of each
message for both sides.

parent -> worker   task: ``TASK_HEAD (key, kind, out_threshold, n_buffers)``
    followed, in the same frame, by the pickled payload, then
    ``n_buffers`` out-of-band buffer frames (pickle protocol 5); the head
    is unpacked apart so that a payload that cannot be unpickled is still
    reported against its batch;
    kind ``UNIFORM``: ``payload = (func, [args, ...])`` (one function, no
    keyword arguments: the common ``delayed(f)(x)`` case, smaller to send);
    kind ``GENERAL``: ``payload = [(func, args, kwargs), ...]``;
    ``out_threshold``: result arrays larger than this many bytes go back
    through shared memory (``arrays_out.ResultPacker``); ``NEVER``: never.
worker -> parent   reply: ``REPLY_HEAD (key, status, duration, n_buffers,
    n_fds)`` followed by the pickled data, then ``n_fds`` descriptors
    (shared-memory results), then ``n_buffers`` buffer frames;
    ``OK``: ``data`` = list of results;
    ``TASK_ERROR``: ``data = (index in batch, pickled exception or None,
    exception type name, message, worker traceback text)``;
    ``SEND_ERROR``: ``data = (index in batch or -1, message)`` when the
    batch could not be unpickled or a result could not be pickled;
    ``RETIRE`` or'ed into the status: the worker asks to be replaced
    (it grew past its memory limit); it serves on until its pipe closes;
    ``NAMES`` or'ed into the status: the ``n_fds`` segments are named
    ones (``shm_named``), their names in one frame after the buffers
    (ASCII, newline-separated) rather than descriptors.
The parent closes a worker's pipe to stop it.


A message is a run of frames in ``multiprocessing.Connection``'s format
(a 4-byte big-endian length, or -1 then an 8-byte length, then the bytes):

1. the head: a fixed ``struct`` (which says how many buffer frames and
   file descriptors follow) immediately followed by the pickle stream;
2. when the head announces descriptors: one ``SCM_RIGHTS`` message per
   ``MAX_FDS_PER_MESSAGE`` descriptors (one marker byte each), used for
   the shared-memory segments of large results;
3. one frame per out-of-band pickle buffer (pickle protocol 5), read
   straight into its final buffer so that the array built on it is not
   copied again.

Frames are written with ``writev`` from the caller's buffers and read
with ``readv`` into buffers allocated once, at their final size: neither
side copies a large buffer in user space (``Connection.recv_bytes``
allocates the whole remaining size for every chunk it reads).

That is the ``"fd"`` wire (``platform.WIRE``).  The ``"connection"`` wire
(Windows, where a pipe is a named pipe and ``fileno()`` a handle) sends
the same messages through ``Connection.send_bytes`` and reads them with
``recv_bytes`` / ``recv_bytes_into``: the head frame, then, when there are
buffers, one frame of their sizes (``<n Q``) so that each is read into a
buffer of its final size, then the buffer frames.  It passes no
descriptors: its large results travel as named segments (``NAMES``).
Callers hold an :func:`endpoint` of the connection and never see which.
"""
from __future__ import annotations

import array
import mmap
import os
import pickle
import socket
import struct
from collections.abc import Sequence

from . import platform

# Pickle protocol of every message (out-of-band buffers need 5).
PROTOCOL = 5
UNIFORM, GENERAL = 0, 1                 # task kinds
OK, TASK_ERROR, SEND_ERROR = 0, 1, 2    # reply statuses
RETIRE = 0x80                           # reply status flags
NAMES = 0x40
TASK_HEAD = struct.Struct("<qBqI")
# out_threshold meaning "no result through shared memory" (no array has
# more bytes than this).
NEVER = (1 << 63) - 1
REPLY_HEAD = struct.Struct("<qBdII")

_LEN = struct.Struct("!i")
_LEN64 = struct.Struct("!Q")
# SCM_MAX_FD in Linux: the most descriptors one sendmsg may carry.
MAX_FDS_PER_MESSAGE = 253
# Buffers from this size on are read into an anonymous mapping (never
# zero-filled by hand, page aligned, returned to the OS when freed)
# rather than a bytearray.
MMAP_BUFFER_MIN = 1 << 18
# Private: mmap.mmap(-1, n) alone maps shared anonymous memory on POSIX,
# which a process forked later would share with its parent (an array on
# it written by one, seen by the other).
_ANONYMOUS_FLAGS = {"flags": mmap.MAP_PRIVATE} if hasattr(
    mmap, "MAP_PRIVATE") else {}
# writev accepts at most IOV_MAX (1024 on Linux) parts and Linux moves at
# most about 2 GiB per call.
_MAX_CHUNK = 1 << 30


def _length_prefix(n: int) -> bytes:
    if n > 0x7FFFFFFF:
        return _LEN.pack(-1) + _LEN64.pack(n)
    return _LEN.pack(n)


def send_message(fd: int, head: bytes, blob, buffers=()) -> None:
    """Write the head frame (``head + blob``) and one frame per buffer,
    in as few ``writev`` calls as the parts allow, without joining them."""
    views = [memoryview(_length_prefix(len(head) + len(blob))),
             memoryview(head), memoryview(blob).cast("B")]
    for buf in buffers:
        view = memoryview(buf).cast("B")
        views.append(memoryview(_length_prefix(view.nbytes)))
        views.append(view)
    _writev_all(fd, views)


def send_frame(fd: int, *parts) -> None:
    """Write one frame holding the concatenation of ``parts``."""
    views = [memoryview(p).cast("B") for p in parts]
    views.insert(0, memoryview(_length_prefix(sum(v.nbytes for v in views))))
    _writev_all(fd, views)


def _writev_all(fd: int, views: list) -> None:
    views = [v for v in views if v.nbytes]
    while views:
        batch = []
        size = 0
        for v in views:
            if len(batch) == 64 or size >= _MAX_CHUNK:
                break
            part = v[:_MAX_CHUNK - size]
            batch.append(part)
            size += part.nbytes
        written = os.writev(fd, batch)
        while written:
            head = views[0]
            if written >= head.nbytes:
                written -= head.nbytes
                views.pop(0)
            else:
                views[0] = head[written:]
                written = 0


def _read_exact(fd: int, n: int) -> bytes:
    data = os.read(fd, n)
    if len(data) == n:
        return data
    if not data:
        raise EOFError
    out = bytearray(data)
    while len(out) < n:
        chunk = os.read(fd, n - len(out))
        if not chunk:
            raise EOFError
        out += chunk
    return bytes(out)


def _frame_size(fd: int) -> int:
    size, = _LEN.unpack(_read_exact(fd, 4))
    if size == -1:
        size, = _LEN64.unpack(_read_exact(fd, 8))
    return size


def recv_frame(fd: int) -> bytes:
    """Read one small frame (the head) as bytes."""
    size = _frame_size(fd)
    return _read_exact(fd, size) if size else b""


def _new_buffer(size: int):
    """A writable buffer of ``size`` bytes for one frame."""
    if size >= MMAP_BUFFER_MIN:
        return mmap.mmap(-1, size, **_ANONYMOUS_FLAGS)
    return bytearray(size)


def recv_buffer(fd: int):
    """Read one frame into a new writable buffer of its exact size."""
    size = _frame_size(fd)
    buf = _new_buffer(size)
    view = memoryview(buf)
    pos = 0
    try:
        while pos < size:
            n = os.readv(fd, [view[pos:]])
            if n == 0:
                raise EOFError
            pos += n
    finally:
        view.release()
    return buf


def send_fds(sock: socket.socket, fds: Sequence[int]) -> None:
    """Pass descriptors to the peer; it must call :func:`recv_fds` with the
    same count at the same point of the stream."""
    for i in range(0, len(fds), MAX_FDS_PER_MESSAGE):
        chunk = array.array("i", fds[i:i + MAX_FDS_PER_MESSAGE])
        sock.sendmsg([b"F"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, chunk)])


def recv_fds(sock: socket.socket, count: int) -> list[int]:
    """Receive ``count`` descriptors sent by :func:`send_fds`.  On failure
    the descriptors already received are closed."""
    fds: list[int] = []
    try:
        while len(fds) < count:
            want = min(MAX_FDS_PER_MESSAGE, count - len(fds))
            item = array.array("i")
            msg, ancdata, _flags, _addr = sock.recvmsg(
                1, socket.CMSG_SPACE(want * item.itemsize))
            for level, kind, data in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    item.frombytes(data[:len(data) - len(data) % item.itemsize])
                    fds.extend(item)
            if not msg:
                raise EOFError
            if msg != b"F" or len(fds) > count:
                raise OSError("protocol error while receiving descriptors")
    except BaseException:
        close_fds(fds)
        raise
    return fds


def close_fds(fds: Sequence[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def socket_for(conn) -> socket.socket:
    """A socket object on a duplicate of ``conn``'s descriptor (for
    ``sendmsg``/``recvmsg``; the connection keeps its own)."""
    return socket.fromfd(conn.fileno(), socket.AF_UNIX, socket.SOCK_STREAM)


def _fd_recv_buffers(fd: int, count: int) -> list:
    return [recv_buffer(fd) for _ in range(count)]


# ------------------------------------------------- the connection wire


def _conn_send_message(conn, head: bytes, blob, buffers=()) -> None:
    """The head frame, the sizes frame when there are buffers, then one
    frame per buffer (the pickle stream is joined to the head: a copy of
    the small part, never of the buffers)."""
    conn.send_bytes(b"".join((head, memoryview(blob).cast("B"))))
    if buffers:
        views = [memoryview(buf).cast("B") for buf in buffers]
        conn.send_bytes(struct.pack(f"<{len(views)}Q",
                                    *(v.nbytes for v in views)))
        for view in views:
            conn.send_bytes(view)


def _conn_recv_frame(conn) -> bytes:
    return conn.recv_bytes()


def _conn_send_frame(conn, data: bytes) -> None:
    conn.send_bytes(data)


def _conn_recv_buffers(conn, count: int) -> list:
    if not count:
        return []
    sizes = struct.unpack(f"<{count}Q", conn.recv_bytes())
    out = []
    for size in sizes:
        buf = _new_buffer(size)
        if size:
            got = conn.recv_bytes_into(buf)
            if got != size:
                raise OSError(f"protocol error: a {got}-byte frame where "
                              f"{size} bytes were announced")
        else:
            conn.recv_bytes()
        out.append(buf)
    return out


# (send a message, read a head frame, read n buffer frames, send one
# frame) of each wire.
WIRES = {
    "fd": (send_message, recv_frame, _fd_recv_buffers, send_frame),
    "connection": (_conn_send_message, _conn_recv_frame, _conn_recv_buffers,
                   _conn_send_frame),
}


def select(name: str) -> None:
    """Use the wire ``name`` in this process (``platform.WIRE`` at
    import; tests switch to exercise both on one pipe, both ends in this
    process, before any worker starts)."""
    global WIRE, _send_message, _recv_frame, _recv_buffers, _send_frame
    _send_message, _recv_frame, _recv_buffers, _send_frame = WIRES[name]
    WIRE = name


select(platform.WIRE)


def endpoint(conn):
    """What the message functions below take for ``conn``: its descriptor
    (``"fd"`` wire) or the connection itself."""
    return conn.fileno() if WIRE == "fd" else conn


# ------------------------------------------------------------ messages


def send_task(fd: int, key: int, kind: int, out_threshold: int, blob,
              buffers) -> None:
    """Parent side: send one task batch (see the module docstring)."""
    _send_message(fd, TASK_HEAD.pack(key, kind, out_threshold, len(buffers)),
                  blob, buffers)


def recv_task(fd: int):
    """Worker side: read one whole task message, (head frame, buffers)."""
    frame = _recv_frame(fd)
    n_buffers = TASK_HEAD.unpack_from(frame)[3]
    return frame, _recv_buffers(fd, n_buffers)


def task_head(frame) -> tuple[int, int, int]:
    """(key, kind, out_threshold) of a task message."""
    return TASK_HEAD.unpack_from(frame)[:3]


def task_payload(frame, buffers):
    """The unpickled payload of a task message (its head is read apart, so
    that a payload that cannot be unpickled is reported against its key)."""
    return pickle.loads(memoryview(frame)[TASK_HEAD.size:], buffers=buffers)


def send_reply(fd: int, sock_for_fds, key: int, status: int,
               duration: float, blob, buffers, fds,
               retire: bool = False) -> None:
    """Worker side: send one reply; ``fds``: descriptors, or names of
    named segments; ``sock_for_fds()`` gives the socket that passes
    descriptors (called only when there are some)."""
    if retire:
        status |= RETIRE
    names = bool(fds) and isinstance(fds[0], str)
    if names:
        status |= NAMES
    head = REPLY_HEAD.pack(key, status, duration, len(buffers), len(fds))
    if not fds or names:
        _send_message(fd, head, blob, buffers)
        if names:
            _send_frame(fd, "\n".join(fds).encode("ascii"))
        return
    if WIRE != "fd":  # pragma: no cover - shm makes no descriptor there
        raise OSError("this wire passes no descriptors")
    send_message(fd, head, blob)
    send_fds(sock_for_fds(), fds)
    for buf in buffers:
        send_frame(fd, buf)


def recv_reply(fd: int, sock_for_fds):
    """Parent side: read one whole reply, (head frame, buffers,
    descriptors or segment names); received descriptors are closed if
    reading fails (names come last: once read, nothing can fail)."""
    frame = _recv_frame(fd)
    status, _, n_buffers, n_fds = REPLY_HEAD.unpack_from(frame)[1:]
    if status & NAMES:
        buffers = _recv_buffers(fd, n_buffers)
        names = _recv_frame(fd).decode("ascii").split("\n")
        if len(names) != n_fds:
            raise OSError(f"protocol error: {len(names)} segment names "
                          f"where {n_fds} were announced")
        return frame, buffers, names
    fds = recv_fds(sock_for_fds(), n_fds) if n_fds else []
    try:
        buffers = _recv_buffers(fd, n_buffers)
    except BaseException:
        close_fds(fds)
        raise
    return frame, buffers, fds


def split_reply(frame):
    """(key, status, duration) of a reply (``RETIRE`` and ``NAMES``
    masked out), and its pickled data."""
    key, status, duration = REPLY_HEAD.unpack_from(frame)[:3]
    return ((key, status & ~(RETIRE | NAMES), duration),
            memoryview(frame)[REPLY_HEAD.size:])


def reply_retires(frame) -> bool:
    """The worker that sent this reply asks to be replaced."""
    return bool(REPLY_HEAD.unpack_from(frame)[1] & RETIRE)
