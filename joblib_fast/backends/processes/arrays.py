"""NumPy array helpers shared by both directions of the process backend:
an array's bytes in memory order, references to ``numpy.memmap`` files,
and the pickler dispatch tables (``arrays_in``, ``arrays_out``)."""
from __future__ import annotations

import copyreg
import mmap
import os
from typing import Any

from .wire import PROTOCOL

# Arrays that are not contiguous are written this many bytes at a time.
COPY_CHUNK = 1 << 24
# os.write moves at most about 2 GiB per call on Linux.
WRITE_CHUNK = 1 << 30


def backing_memmap(a) -> Any:
    """The ``numpy.memmap`` whose file holds ``a``'s data, or None."""
    import numpy as np
    b = a
    while b is not None:
        if isinstance(b, np.memmap) and getattr(b, "_mmap", None) is not None \
                and isinstance(getattr(b, "filename", None), str):
            return b
        b = getattr(b, "base", None)
    return None


def address(a) -> int:
    return a.__array_interface__["data"][0]


def extent(a) -> tuple[int, int]:
    """Addresses of ``a``'s lowest byte and one past its highest."""
    low = high = address(a)
    for n, stride in zip(a.shape, a.strides):
        if stride < 0:
            low += (n - 1) * stride
        else:
            high += (n - 1) * stride
    return low, high + a.itemsize


def memory_order(a) -> str:
    """The order :func:`write_array` writes ``a`` in: "F" for Fortran-only
    contiguous arrays, else "C" (non-contiguous ones are copied in C order)."""
    return "F" if a.flags.f_contiguous and not a.flags.c_contiguous else "C"


def _flat_bytes(a):
    """``a``'s bytes as a 1-d uint8 view in memory order (``a`` contiguous)."""
    import numpy as np
    return a.ravel(order="K").view(np.uint8)


def chunks(a):
    """``a``'s bytes in ``memory_order(a)``: one view when ``a`` is
    contiguous, else C-order copies of about ``COPY_CHUNK`` bytes."""
    import numpy as np
    if a.flags.c_contiguous or a.flags.f_contiguous:
        yield _flat_bytes(a)
        return
    row = max(1, a[0].nbytes) if a.ndim else 1
    step = max(1, COPY_CHUNK // row)
    for i in range(0, a.shape[0], step):
        yield np.ascontiguousarray(a[i:i + step]).reshape(-1).view(np.uint8)


def write_array(fd: int, a) -> None:
    """Write ``a``'s bytes (in ``memory_order(a)``) at ``fd``'s position."""
    for chunk in chunks(a):
        view = memoryview(chunk)
        pos, size = 0, view.nbytes
        while pos < size:
            pos += os.write(fd, view[pos:pos + WRITE_CHUNK])


def plain_reduce(a):
    """``a`` by value: contiguous data as a protocol-5 buffer."""
    import numpy as np
    if type(a) is not np.ndarray:
        a = np.asarray(a)
    return a.__reduce_ex__(PROTOCOL)


def reduce_by_reference(a, m):
    """``a`` (backed by the memmap ``m``) as file name, offset, layout."""
    import numpy as np
    mode = "r+" if m.mode == "w+" else m.mode
    try:
        mapped = np.frombuffer(m._mmap, dtype=np.uint8)
    except (ValueError, TypeError, BufferError):  # closed: send the data
        return plain_reduce(a)
    map_start = m.offset - m.offset % mmap.ALLOCATIONGRANULARITY
    low, high = extent(a)
    file_offset = map_start + (low - address(mapped))
    if a.flags.c_contiguous or a.flags.f_contiguous:
        args = (m.filename, a.dtype, mode, file_offset, a.shape,
                memory_order(a))
        return _open_memmap, args
    args = (m.filename, a.dtype, mode, file_offset, a.shape, a.strides,
            high - low, address(a) - low)
    return _open_strided, args


def set_memmap_attrs(out, mm, filename: str, offset: int, mode: str):
    out._mmap = mm
    out.filename = filename
    out.offset = offset
    out.mode = mode
    return out


def _open_memmap(filename, dtype, mode, offset, shape, order):
    """Worker side of :func:`reduce_by_reference`, contiguous case."""
    import numpy as np
    return np.memmap(filename, dtype=dtype, mode=mode, offset=offset,
                     shape=shape, order=order)


def _open_strided(filename, dtype, mode, offset, shape, strides, span, first):
    """Worker side of :func:`reduce_by_reference`, strided views."""
    import numpy as np
    base = np.memmap(filename, dtype=np.uint8, mode=mode, offset=offset,
                     shape=(span,))
    out = np.ndarray.__new__(np.memmap, shape, dtype=dtype, buffer=base,
                             offset=first, strides=strides)
    return set_memmap_attrs(out, base._mmap, base.filename, offset, mode)


def tables(owner, cloud: bool) -> dict:
    """``owner``'s dispatch table (arrays -> ``owner._reduce``) for the plain
    pickler or for cloudpickle's, built once."""
    table = owner._tables.get(cloud)
    if table is None:
        import numpy as np
        if cloud:
            import cloudpickle
            table = dict(cloudpickle.Pickler.dispatch_table)
        else:
            table = dict(copyreg.dispatch_table)
        table[np.ndarray] = table[np.memmap] = owner._reduce
        owner._tables[cloud] = table
    return table
