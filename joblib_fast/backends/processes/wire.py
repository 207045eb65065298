"""Messages between the parent and a process worker, over one socket pair.

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
"""
from __future__ import annotations

import array
import mmap
import os
import socket
import struct
from collections.abc import Sequence

_LEN = struct.Struct("!i")
_LEN64 = struct.Struct("!Q")
# SCM_MAX_FD in Linux: the most descriptors one sendmsg may carry.
MAX_FDS_PER_MESSAGE = 253
# Buffers from this size on are read into an anonymous mapping (never
# zero-filled by hand, page aligned, returned to the OS when freed)
# rather than a bytearray.
MMAP_BUFFER_MIN = 1 << 18
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


def recv_buffer(fd: int):
    """Read one frame into a new writable buffer of its exact size."""
    size = _frame_size(fd)
    if size >= MMAP_BUFFER_MIN:
        buf = mmap.mmap(-1, size)
    else:
        buf = bytearray(size)
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
