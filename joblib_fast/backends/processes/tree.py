"""Killing a worker together with the processes it started.

A task may start processes of its own (``subprocess.Popen``); when the
pool terminates a worker (a timeout, a failed call, a dead sibling), those
go too, as joblib does: the worker is stopped (``SIGSTOP``) so that it
starts nothing more, its descendants are found (``/proc`` on Linux,
``psutil`` elsewhere when installed) and killed, then the worker is
terminated.  Children of a worker that died by itself were handed to
init already and cannot be told apart: they are left alone.
"""
from __future__ import annotations

import os
import signal


def _children_table() -> dict[int, list[int]] | None:
    """{parent pid: [child pids]} for every process, or None if unknown."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return None
    table: dict[int, list[int]] = {}
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
            # "pid (comm) state ppid ...": comm may hold spaces and parens.
            ppid = int(data[data.rindex(b")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        table.setdefault(ppid, []).append(int(name))
    return table


def descendants(pids: list[int]) -> list[int]:
    """Every process below ``pids`` (children first, then theirs)."""
    table = _children_table()
    if table is None:
        return _descendants_psutil(pids)
    found: list[int] = []
    todo = list(pids)
    while todo:
        kids = table.get(todo.pop(), ())
        found.extend(kids)
        todo.extend(kids)
    return found


def _descendants_psutil(pids: list[int]) -> list[int]:
    try:
        import psutil
    except ImportError:
        return []
    found = []
    for pid in pids:
        try:
            found.extend(p.pid for p in psutil.Process(pid).children(
                recursive=True))
        except psutil.Error:
            pass
    return found


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except OSError:  # gone already
        pass


def terminate_trees(pids: list[int]) -> None:
    """SIGKILL the descendants of these live workers, then SIGTERM the
    workers (the caller reaps them, and SIGKILLs those that linger)."""
    if not pids:
        return
    for pid in pids:
        _signal(pid, signal.SIGSTOP)
    for pid in descendants(pids):
        _signal(pid, signal.SIGKILL)
    for pid in pids:
        _signal(pid, signal.SIGTERM)
        _signal(pid, signal.SIGCONT)


def start_time(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, from /proc),
    or None if it is gone, a zombie, or this is not Linux.  With the pid,
    it names one process for good: a pid may be reused, this pair not."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        fields = data[data.rindex(b")") + 2:].split()
        if fields[0] in (b"Z", b"X"):
            return None
        return int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def same_process(pid: int, started: int | None) -> bool:
    """``pid`` still runs the process that started at ``started``."""
    return started is not None and start_time(pid) == started
