"""Large arguments on a dask cluster: scattered once, replicated when
widely used, scattered again when lost (caller thread only).

Which arguments: those larger than ``SCATTER_MIN_BYTES`` (``dask.sizeof``),
looked for among a task's top-level arguments and one level inside tuple,
list and dict arguments (a ``(data, i)`` argument is made per task; the
``data`` in it is the same object every time).
"""
from __future__ import annotations

import contextlib
import itertools
from typing import Any

# Arguments larger than this (dask.sizeof) are scattered once per call
# instead of being pickled into every batch that uses them (joblib: 1 kB).
SCATTER_MIN_BYTES = 1000
# Containers (tuple, list, dict arguments) longer than this are looked at
# as a whole, not item by item (a long list is data, not a bundle of args).
MAX_INSPECTED_ITEMS = 32
# Never worth scattering (checked before dask.sizeof, for speed).
_SMALL_TYPES = frozenset({int, float, bool, complex, type(None), range,
                          slice})


class ScatteredData:
    """One scattered object."""

    __slots__ = ("obj", "future", "token", "uses", "replicated", "serial")

    def __init__(self, obj: Any, future: Any, token: str | None,
                 replicated: bool = False) -> None:
        self.obj = obj          # the caller's copy: kept for re-scattering
        self.future = future
        self.token = token      # dask.base.tokenize(obj) when scattered
        self.uses = 0           # tasks of the current call using it
        self.replicated = replicated
        self.serial = -1        # the last call that used it

    @property
    def lost(self) -> bool:
        return self.future.status != "finished"


class Scatter:
    """The scattered arguments of a pool.

    ``fixed``: the backend's ``scatter=`` objects (broadcast once per
    backend).  Automatic ones are scattered once per call (by identity)
    and kept for the next calls of a ``with Parallel(...)`` block while
    their content (``dask.base.tokenize``) is unchanged.
    """

    def __init__(self, client: Any, fixed: dict[int, ScatteredData],
                 keep: bool) -> None:
        self.client = client
        self.fixed = fixed
        self.keep = keep        # kept across calls (a `with` block)
        self.auto: dict[int, ScatteredData] = {}
        self.serial = 0
        self.n_workers = 1

    def begin_call(self, serial: int, n_workers: int) -> None:
        self.serial = serial
        self.n_workers = max(n_workers, 1)

    def clear(self) -> None:
        """Forget the automatic ones (their futures are released)."""
        self.auto = {}

    def refs(self, tasks: list) -> tuple[dict[int, int], list[ScatteredData]]:
        """The scattered arguments of ``tasks`` (scattering the new ones):
        ``{id(obj): index}`` and the list they index."""
        refs: dict[int, int] = {}
        data: list[ScatteredData] = []

        def swap(value: Any) -> bool:
            if id(value) in refs:
                return True
            found = self.lookup(value)
            if found is None:
                return False
            refs[id(value)] = len(data)
            data.append(found)
            return True

        for _, args, kwargs in tasks:
            for value in itertools.chain(args, kwargs.values()):
                kind = type(value)
                items = value if kind is tuple or kind is list else \
                    value.values() if kind is dict else None
                # A container holding a large object is pickled with a
                # reference to it, not scattered itself.
                if items is None or len(items) > MAX_INSPECTED_ITEMS or \
                        sum(map(swap, list(items))) == 0:
                    swap(value)
        for item in data:
            self.use(item, len(tasks))
        return refs, data

    def lookup(self, obj: Any) -> ScatteredData | None:
        """The scattered copy of ``obj``, scattering it if it is large."""
        if type(obj) in _SMALL_TYPES:
            return None
        key = id(obj)
        data = self.fixed.get(key)
        if data is not None and data.obj is obj:
            return data
        data = self.auto.get(key)
        if data is not None and data.obj is obj:
            if data.serial == self.serial:
                return data
            # A later call of a `with` block: reuse it if unchanged.
            if data.token is not None and token(obj) == data.token:
                data.serial = self.serial
                data.uses = 0
                return data
        from dask.sizeof import sizeof
        if isinstance(obj, type) or sizeof(obj) <= SCATTER_MIN_BYTES:
            return None
        data = ScatteredData(obj, self.scatter(obj),
                             token(obj) if self.keep else None)
        data.serial = self.serial
        self.auto[key] = data
        return data

    def scatter(self, obj: Any, broadcast: bool = False) -> Any:
        """A future of ``obj`` on the cluster."""
        try:
            # direct: the bytes go to the workers, not through the
            # scheduler.  hash=False: scatters with hashed keys from inside
            # tasks can be cancelled by the scheduler (dask/distributed
            # #3703, which joblib works around the same way).
            [future] = self.client.scatter(
                [obj], direct=self.client.direct_to_workers is not False,
                hash=False, broadcast=broadcast)
        except Exception as exc:
            raise RuntimeError(
                f"a {type(obj).__name__} argument (scattered, being larger "
                f"than {SCATTER_MIN_BYTES} bytes) could not be sent to the "
                f"dask workers: {type(exc).__name__}: {exc}") from exc
        return future

    def use(self, data: ScatteredData, n_tasks: int) -> None:
        """Count ``n_tasks`` more tasks using ``data``; once as many use
        it as there are workers, copy it to every worker so that tasks
        can run anywhere without fetching it first (dask otherwise prefers
        the worker holding it, and its work stealing moves some)."""
        data.uses += n_tasks
        if data.replicated or data.uses < self.n_workers \
                or self.n_workers < 2:
            return
        data.replicated = True
        # Best effort: the tasks run without it, only less spread.
        with contextlib.suppress(Exception):
            self.client.replicate([data.future])

    def rescatter(self, data: ScatteredData) -> None:
        """Scatter ``data`` again from the caller's copy (lost with the
        workers that held it)."""
        data.future = self.scatter(data.obj, broadcast=data.replicated)


def token(obj: Any) -> str | None:
    """``dask.base.tokenize(obj)``; None if it cannot say."""
    from dask.base import tokenize
    try:
        return tokenize(obj)
    except Exception:  # noqa: BLE001 - no token: scattered again next call
        return None
