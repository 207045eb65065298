"""How batches and results travel: one pickle per batch, one per result
list, made and read by joblib_fast (both sides).

A batch's scattered arguments are left in its pickle as references
(``persistent_id``) to the data futures submitted with it, so that a large
object is pickled once (by ``client.scatter``), not once per batch.  Plain
pickle is tried first (fast); cloudpickle takes what it cannot do and
functions of ``__main__`` (which the workers cannot import).
"""
from __future__ import annotations

import io
import pickle
from typing import Any

PROTOCOL = 5


class _Referencing(pickle.Pickler):
    def __init__(self, file: Any, refs: dict[int, int]) -> None:
        super().__init__(file, protocol=PROTOCOL)
        self.refs = refs

    def persistent_id(self, obj: Any) -> int | None:
        return self.refs.get(id(obj))


def _cloud_referencing(file: Any, refs: dict[int, int]) -> pickle.Pickler:
    import cloudpickle

    class CloudReferencing(cloudpickle.Pickler):
        def persistent_id(self, obj: Any) -> int | None:
            return refs.get(id(obj))

    return CloudReferencing(file, protocol=PROTOCOL)


def dumps(obj: Any, refs: dict[int, int] | None = None) -> bytes:
    """Pickle ``obj``; objects whose id is in ``refs`` become references
    to ``refs[id(obj)]`` (see :func:`loads`)."""
    try:
        if refs:
            f = io.BytesIO()
            _Referencing(f, refs).dump(obj)
            blob = f.getvalue()
        else:
            blob = pickle.dumps(obj, protocol=PROTOCOL)
        if b"__main__" not in blob:
            return blob
    except Exception:  # noqa: BLE001 - any pickling failure: cloudpickle
        pass
    if refs:
        f = io.BytesIO()
        _cloud_referencing(f, refs).dump(obj)
        return f.getvalue()
    import cloudpickle
    return cloudpickle.dumps(obj, protocol=PROTOCOL)


class _Resolving(pickle.Unpickler):
    def __init__(self, blob: bytes, data: tuple) -> None:
        super().__init__(io.BytesIO(blob))
        self.data = data

    def persistent_load(self, pid: int) -> Any:
        return self.data[pid]


def loads(blob: bytes, data: tuple = ()) -> Any:
    """Unpickle what :func:`dumps` made; reference ``i`` is ``data[i]``."""
    if not data:
        return pickle.loads(blob)
    return _Resolving(blob, data).load()


def find_unpicklable(tasks: list) -> tuple[int, BaseException] | None:
    """The index of the first task that cannot be pickled, with the error."""
    for i, task in enumerate(tasks):
        try:
            dumps(task)
        except Exception as exc:  # noqa: BLE001 - any pickling failure
            return i, exc
    return None
