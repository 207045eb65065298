"""Relax the cyclic garbage collector while parallel calls run.

Every task is a ``(func, args, kwargs)`` tuple that stays alive from the
moment the caller pulls it until a worker runs it. With CPython's default
generation-0 threshold (700) the collector runs every few hundred tasks and
promotes the in-flight ones, which then trigger full collections: a large
share of the cost of dispatching a no-op task. Raising the threshold while
calls run, and restoring it after the last one, removes most of that.
"""
from __future__ import annotations

import gc
import threading

# Generation-0 threshold during calls.  Higher means fewer collections
# while tasks are in flight, but more garbage kept between collections
# (young cycles live longer), and past a few ten thousands the gain is
# gone.  `python benchmarks/per_task_instructions.py` (instructions per
# no-op task) or `python benchmarks/bench.py --only noop` with each
# candidate checks it.
GC_GEN0_THRESHOLD = 20000

# Guards _users and _saved: calls from several threads share one setting.
_lock = threading.Lock()
_users = 0
_saved = None


def relax() -> None:
    """Called when a parallel call starts (any thread)."""
    global _users, _saved
    with _lock:
        _users += 1
        if _users == 1:
            current = gc.get_threshold()
            if 0 < current[0] < GC_GEN0_THRESHOLD:
                _saved = current
                gc.set_threshold(GC_GEN0_THRESHOLD, *current[1:])


def restore() -> None:
    """Called when a parallel call ends; the last one restores."""
    global _users, _saved
    with _lock:
        if _users == 0:
            return
        _users -= 1
        if _users == 0 and _saved is not None:
            # Only undo our own change, not one the user made meanwhile.
            if gc.get_threshold()[0] == GC_GEN0_THRESHOLD:
                gc.set_threshold(*_saved)
            _saved = None
