"""NumPy arrays from process workers back to the parent without pickling.

A result array larger than ``max_nbytes`` travels as a shared-memory
segment (``shm``): its descriptor goes with the reply (``SCM_RIGHTS``, see
``wire``), or where descriptors cannot pass its name (``"named"``
segments, held by the worker until the parent opened them), and the
parent maps it privately (copy-on-write) and closes it: the caller gets
an ordinary writable ndarray on that memory.

* Born shared: in a worker that has NumPy loaded, the NumPy allocator of
  ``shm.born_shared()`` makes every array larger than the batch's
  threshold a segment from the start, so returning it (or a large view of
  it: a slice, a transpose, a strided view) sends the segment itself, no
  byte copied.  Once sent, the worker's mapping of it is made private:
  whatever the worker writes later (an array it kept) stays its own.
* Otherwise the array is written once into a new segment.

With descriptors no name ever exists in a file system, so nothing can be
left behind: the memory is freed when the array is garbage-collected, and
by the kernel when a reply is dropped (an aborted call, a dead worker, a
killed parent).  Named segments are let go by whichever side holds them
last (``shm_named``).

Arrays backed by a user's ``numpy.memmap`` come back by reference (file
name and offset), pieces of the call's own memmapped inputs as copies
(their files go away with the call), anything else pickled with out-of-band
buffers.  Where ``shm.SUPPORTED`` (``platform.SEGMENTS``); elsewhere
large results are pickled too.
"""
from __future__ import annotations

import functools
import io
import os
import pickle
import sys
from typing import Any

from . import shm
from .arrays import (
    address,
    backing_memmap,
    extent,
    memory_order,
    plain_reduce,
    reduce_by_reference,
    tables,
)
from .arrays_in import is_dump
from .wire import NEVER

# Seconds a worker waits for its next batch before it lets go of the
# freed large arrays' memory it keeps for reuse: memory an idle worker
# holds (up to _born_shared.c's KEEP_BYTES) against reuse between calls
# that come further apart than this.
KEEP_IDLE_SECONDS = 1.0

# A view covering less than this share of its born-shared segment is
# copied into a segment of its own: sending the whole segment would keep
# all of it alive in the parent for a small piece.
MIN_SHARE_OF_SEGMENT = 0.5


class ResultPacker:
    """Worker side: pickles a reply, large arrays into shared memory.

    One per worker, used by its main thread only: ``threshold`` is set for
    each reply, the reply pickled with ``pickling.dumps(data, packer)``;
    ``fds`` then holds the segments to send with it (descriptors or named
    segments, ``shm.on_wire``; the caller passes them to
    :meth:`hand_over` once sent, or calls :meth:`discard` if pickling
    failed).  Named segments are held until the parent has opened them:
    :meth:`sweep` lets go of those, :meth:`close` of all at exit.
    """

    def __init__(self) -> None:
        self.threshold = NEVER
        self.fds: list[int] = []
        self._tables: dict[bool, dict] = {}
        # The allocator (``shm.born_shared()``), installed once NumPy is
        # loaded; False where there is none.
        self._born: Any = None
        # Born-shared segments this reply sends: data start -> index of
        # its descriptor in ``fds`` (one per segment, however many views),
        # and the arrays of the reply on each.
        self._sending: dict[int, int] = {}
        self._arrays: dict[int, list] = {}
        # Named segments sent and not yet known to be opened by the parent.
        self.held: list = []

    def hand_over(self, handles: list) -> None:
        """The reply carrying ``handles`` was sent (or failed to be)."""
        for handle in handles:
            if not shm.sent(handle):
                self.held.append(handle)

    def sweep(self) -> None:
        """Let go of the named segments the parent has opened."""
        if self.held:
            kept = []
            for segment in self.held:
                if segment.opened():
                    segment.close()
                else:
                    kept.append(segment)
            self.held = kept

    def close(self) -> None:
        """At exit: let go of every named segment still held (the parent
        will not open them any more)."""
        held, self.held = self.held, []
        for segment in held:
            segment.close()

    def expect(self, threshold: int) -> None:
        """A batch is about to run with this reply threshold: its large
        arrays are born in shared memory (NumPy loaded: the allocator is
        installed in this thread the first time)."""
        born = self._born
        if born is None:
            if "numpy" not in sys.modules:
                return
            born = shm.born_shared() or False
            if born and not born.install():
                born = False
            self._born = born
        if born:
            born.set_threshold(threshold)

    def keeps_memory(self) -> bool:
        return bool(self._born) and self._born.kept() > 0

    def let_go(self) -> None:
        """Release the freed segments kept for reuse."""
        if self._born:
            self._born.trim()

    def sent(self, data) -> None:
        """The reply ``data`` was pickled: for each born-shared segment it
        sends, the worker must never write to it again.  When the reply
        holds the only references to the segment's arrays (the task kept
        none: :func:`only_in`), nothing can; the segment stays mapped as
        it is (reused as it is once the parent let go of it).  Otherwise
        the worker's mapping becomes private: its later writes stay
        here."""
        sending, self._sending = self._sending, {}
        arrays, self._arrays = self._arrays, {}
        for start in sending:
            if only_in(data, arrays.get(start, [])):
                self._born.lend(start)
            else:
                self._born.make_private(start)

    def dispatch_table(self, cloud: bool = False) -> dict:
        # A pickling pass starts: the descriptors of a failed earlier pass
        # (plain pickle, before the cloudpickle retry) are closed.
        self.discard()
        return tables(self, cloud)

    def _reduce(self, a):
        m = backing_memmap(a)
        if m is not None and m.mode != "c" and a.size and not is_dump(m.filename):
            return reduce_by_reference(a, m)
        if a.nbytes > self.threshold and not a.dtype.hasobject:
            ref = self._born_ref(a) if self._born else None
            if ref is not None:
                return _segment_result, ref
            index = self._share(a)
            if index is not None:
                return _shared_result, (index, a.dtype, a.shape,
                                        memory_order(a))
        if m is not None:
            # A piece of an input's memmap: a copy of its own, writable as
            # it would be without memmapping (mode "r" maps are not).
            import numpy as np
            return plain_reduce(np.array(a))
        return plain_reduce(a)

    def _born_ref(self, a) -> tuple | None:
        """``a`` as (descriptor index, data size, data offset in the
        segment, offset in the data, dtype, shape, strides) when its data
        lies in a born-shared segment this reply may send, else None."""
        low, high = extent(a)
        found = self._born.find(low)
        if found is None:
            return None
        fd, start, size, shared, data_offset = found
        if high > start + size or (high - low) < MIN_SHARE_OF_SEGMENT * size:
            return None
        index = self._sending.get(start)
        if index is None:
            if not shared:
                return None  # sent before: the worker's copy may differ
            try:
                fd = os.dup(fd)
            except OSError:  # out of descriptors: copy it
                return None
            self.fds.append(fd)
            index = self._sending[start] = len(self.fds) - 1
        self._arrays.setdefault(start, []).append(a)
        return (index, size, data_offset, address(a) - start, a.dtype,
                a.shape, a.strides)

    def _share(self, a) -> int | None:
        try:
            handle = shm.new_segment(a.nbytes)
        except OSError:  # out of descriptors: send it in the message
            return None
        try:
            shm.write_segment(handle, a)
        except BaseException as exc:
            shm.drop(handle)
            if isinstance(exc, OSError):
                return None
            raise
        self.fds.append(handle)
        return len(self.fds) - 1

    def discard(self) -> None:
        fds, self.fds = self.fds, []
        self._sending, self._arrays = {}, {}
        for handle in fds:
            shm.drop(handle)


def on_wire(handles: list) -> list:
    """What a reply carries for these segments: descriptors or names."""
    return [shm.on_wire(h) for h in handles]


def only_in(data, arrays: list) -> bool:
    """Whether ``arrays`` (the arrays of one segment that a reply sends)
    and the array owning their memory are referred to by ``data`` (the
    reply: lists, tuples and dicts of results), by each other and by
    ``arrays``, and by nothing else: then nothing of the worker can write
    to that memory once the reply is dropped.  Counts references exactly
    (``sys.getrefcount``); anything it cannot account for (an array held
    by a task's global, a closure, another thread, an object of the reply
    that is not a list, tuple or dict) says False."""
    import numpy as np
    objects = {id(a): a for a in arrays}
    owners = {id(a.base): a.base for a in arrays
              if isinstance(a.base, np.ndarray)}
    if any(o.base is not None for o in owners.values()):
        return False   # a base that is itself a view: not counted here
    objects.update(owners)
    # References each object should have: from the views among them, from
    # `arrays`, and from the reply's containers (counted below).
    expected = {key: sum(a.base is obj for a in objects.values())
                + sum(a is obj for a in arrays)
                for key, obj in objects.items()}
    _count_in(data, expected)
    # Ours beside those: the dict `objects`, `owners` for an owner, and
    # getrefcount's argument.
    return all(sys.getrefcount(objects[key]) ==
               count + 2 + (key in owners)
               for key, count in expected.items())


def _count_in(data, counts: dict) -> None:
    """Add to ``counts[id(x)]`` each reference to ``x`` from the lists,
    tuples and dicts that make up ``data`` (a function of its own: none of
    its locals outlives it to hold a reference)."""
    seen: set[int] = set()
    stack = [data]
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if type(item) is dict:
            children = [*item.keys(), *item.values()]
        elif type(item) in (list, tuple):
            children = item
        else:
            continue
        for child in children:
            if id(child) in counts:
                counts[id(child)] += 1
            elif type(child) in (list, tuple, dict):
                stack.append(child)


def _shared_result(*args):
    raise pickle.UnpicklingError(
        "a shared-memory array result can only be unpickled by the parent "
        "that received its descriptor")


def _segment_result(*args):
    _shared_result()


class ReplyUnpickler(pickle.Unpickler):
    """Unpickles a reply whose large arrays came as descriptors."""

    def __init__(self, file, buffers, fds: list[int]) -> None:
        super().__init__(file, buffers=buffers)
        self.fds = fds
        # Descriptor index -> its mapping (views of one segment share it).
        self.owners: dict[int, object] = {}

    def find_class(self, module, name):
        if module == __name__ and name in _MAPPERS:
            # Not a bound method: the unpickler's memo keeps what GLOBAL
            # returns, and a reference back to the unpickler would make a
            # cycle that holds every result array until a full collection.
            return functools.partial(_MAPPERS[name], self.fds, self.owners)
        return super().find_class(module, name)


def _map_shared(fds: list, owners, index, dtype, shape, order):
    """Map the segment of one result array (and close its descriptor, or
    hand over its name)."""
    import numpy as np
    fd, fds[index] = fds[index], -1
    count = 1
    for n in shape:
        count *= n
    if isinstance(fd, str):
        owner = shm.attach_named(fd, count * dtype.itemsize)
    else:
        try:
            owner = shm.attach_private(fd, count * dtype.itemsize)
        finally:
            os.close(fd)
    return np.asarray(owner).view(dtype)[:count].reshape(shape, order=order)


def _map_segment(fds: list[int], owners, index, size, data_offset, offset,
                 dtype, shape, strides):
    """Map a worker's born-shared segment once per reply (and close its
    descriptor): the array lies at ``offset`` in its data, with these
    strides."""
    import numpy as np
    owner = owners.get(index)
    if owner is None:
        fd, fds[index] = fds[index], -1
        try:
            owner = owners[index] = shm.attach_segment(fd, size, data_offset)
        finally:
            os.close(fd)
    return np.ndarray(shape, dtype, buffer=np.asarray(owner), offset=offset,
                      strides=strides)


# The reducers whose arguments name a descriptor of the reply.  They have
# distinct names on the wire (the unpickler maps by name).
_MAPPERS = {"_shared_result": _map_shared, "_segment_result": _map_segment}


def loads_reply(blob, buffers, fds: list):
    """Unpickle a reply; every descriptor is closed, and every named
    segment mapped or released, when this returns."""
    if not fds:
        return pickle.loads(blob, buffers=buffers)
    try:
        return ReplyUnpickler(io.BytesIO(blob), buffers, fds).load()
    finally:
        for fd in fds:
            if isinstance(fd, str):
                shm.release_named(fd)
            elif fd >= 0:
                os.close(fd)
