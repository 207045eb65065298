"""Pickling for the process backend, both sides: one "pickle, else
cloudpickle" fallback (:func:`dumps_any`) and one "which item cannot be
pickled" diagnosis (:func:`find_unpicklable`), for tasks and results.

Arrays are handled by an owner's dispatch table (``arrays_in.ArrayExchange``
in the parent, ``arrays_out.ResultPacker`` in a worker); with one, buffers
from ``OUT_OF_BAND_MIN`` bytes on travel out-of-band (see ``wire``).
"""
from __future__ import annotations

import io
import pickle
from typing import Any

from .wire import PROTOCOL

# Pickle buffers from this size on travel out-of-band (a frame of their
# own, never copied into the pickle stream); smaller ones cost less to
# copy than a frame costs to send and receive.
OUT_OF_BAND_MIN = 1 << 16


def dumps(obj, tables=None, cloud: bool = False):
    """Pickle ``obj`` with protocol 5 (cloudpickle if ``cloud``), arrays
    handled by ``tables.dispatch_table(cloud)`` when given; returns
    (bytes, out-of-band buffers as flat memoryviews)."""
    if tables is None:
        if not cloud:
            return pickle.dumps(obj, protocol=PROTOCOL), []
        import cloudpickle
        return cloudpickle.dumps(obj, protocol=PROTOCOL), []
    buffers: list[Any] = []

    def out_of_band(buf) -> bool:
        if memoryview(buf).nbytes < OUT_OF_BAND_MIN:
            return True  # in-band
        buffers.append(buf)
        return False

    f = io.BytesIO()
    table = tables.dispatch_table(cloud)
    if cloud:
        pickler = _cloud_pickler_class()(f, table, out_of_band)
    else:
        pickler = pickle.Pickler(f, protocol=PROTOCOL,
                                 buffer_callback=out_of_band)
        pickler.dispatch_table = table
    pickler.dump(obj)
    return f.getvalue(), [b.raw() for b in buffers]


def dumps_any(obj, tables=None, refuse_main: bool = False,
              passthrough: tuple = (OSError,)):
    """Plain pickle on the fast path; cloudpickle for what it cannot do.

    ``refuse_main``: a plain pickle naming ``__main__`` is not good enough
    (the parent's script functions travel by value).  ``passthrough``:
    errors that are not pickling problems (writing an array's memmap
    failed) and are raised as they are."""
    try:
        blob, buffers = dumps(obj, tables)
        if not (refuse_main and b"__main__" in blob):
            return blob, buffers
    except passthrough:
        raise
    except Exception:  # noqa: BLE001 - any pickling failure
        pass
    return dumps(obj, tables, cloud=True)


def find_unpicklable(items) -> tuple[int, BaseException] | None:
    """The index of the first item that neither pickle nor cloudpickle
    can pickle, with cloudpickle's error; None if every item can be."""
    for i, item in enumerate(items):
        try:
            dumps_any(item, passthrough=())
        except Exception as exc:  # noqa: BLE001 - any pickling failure
            return i, exc
    return None


_CloudPickler = None


def _cloud_pickler_class():
    """cloudpickle's Pickler taking a dispatch table: its class attribute
    ``dispatch_table`` hides the C pickler's, which is read at ``__init__``
    (so it is set on the instance before)."""
    global _CloudPickler
    if _CloudPickler is None:
        import cloudpickle

        class CloudPickler(cloudpickle.Pickler):
            def __init__(self, file, table, buffer_callback):
                if table is not None:
                    self.dispatch_table = table
                super().__init__(file, protocol=PROTOCOL,
                                 buffer_callback=buffer_callback)

        _CloudPickler = CloudPickler
    return _CloudPickler


def dumps_exception(exc: BaseException) -> bytes | None:
    """Pickle an exception raised in a worker so that the parent gets the
    same type, message (``args``) and attributes, or None if it cannot.

    The default pickling calls ``type(exc)(*exc.args)``: an exception whose
    ``__init__`` builds its message from its arguments would build it
    again from the message ("failed with code failed with code 3").  When
    that round trip changes the exception, it travels as its class, args
    and ``__dict__`` and is rebuilt without calling ``__init__``."""
    for candidate in (exc, _ExactException(exc)):
        try:
            blob = dumps_any(candidate, passthrough=())[0]
            back = pickle.loads(blob)
            if type(back) is type(exc) and back.args == exc.args \
                    and str(back) == str(exc):
                return blob
        except Exception:  # noqa: BLE001 - any pickling failure
            pass
    return None


class _ExactException:
    """Pickles as ``rebuild_exception(type, args, __dict__)``."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def __reduce__(self):
        exc = self.exc
        return rebuild_exception, (type(exc), exc.args,
                                   getattr(exc, "__dict__", None) or None)


def rebuild_exception(cls, args: tuple, state: dict | None):
    """An exception of class ``cls`` with these args and attributes, made
    without running its ``__init__``."""
    exc = cls.__new__(cls, *args)
    exc.args = args
    if state:
        exc.__dict__.update(state)
    return exc
