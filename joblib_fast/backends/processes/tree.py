"""Killing a worker together with the processes it started.

A task may start processes of its own (``subprocess.Popen``); when the
pool terminates a worker (a timeout, a failed call, a dead sibling), those
go too, as joblib does: the worker is stopped (``SIGSTOP``) so that it
starts nothing more, its descendants are found and killed, then the
worker is terminated.  Children of a worker that died by itself were
handed to init already and cannot be told apart: they are left alone.

The interface (``platform.CONTROL`` picks one implementation)::

    descendants(pids) -> [pid]     every process below these
    terminate_trees(pids)          stop, kill the descendants, terminate
    kill(pids)                     kill now (SIGKILL, TerminateProcess)
    start_time(pid) -> int|None    names one process for good, with its pid
    same_process(pid, started)     still that process
    alive(pid) -> bool             some process has this pid

``"proc"`` (Linux): ``/proc`` and signals.  ``"psutil"``: psutil, whose
process handles on Windows never use ``os.kill(pid, 0)`` (a terminate
there).
"""
from __future__ import annotations

import os
import signal

from . import platform


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


def _proc_descendants(pids: list[int]) -> list[int]:
    """Every process below ``pids`` (children first, then theirs)."""
    table = _children_table()
    if table is None:  # /proc hidden (a sandbox): psutil if there is one
        try:
            return _ps_descendants(pids)
        except ImportError:
            return []
    found: list[int] = []
    todo = list(pids)
    while todo:
        kids = table.get(todo.pop(), ())
        found.extend(kids)
        todo.extend(kids)
    return found


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except OSError:  # gone already
        pass


def _proc_terminate_trees(pids: list[int]) -> None:
    """SIGKILL the descendants of these live workers, then SIGTERM the
    workers (the caller reaps them, and SIGKILLs those that linger)."""
    if not pids:
        return
    for pid in pids:
        _signal(pid, signal.SIGSTOP)
    for pid in _proc_descendants(pids):
        _signal(pid, signal.SIGKILL)
    for pid in pids:
        _signal(pid, signal.SIGTERM)
        _signal(pid, signal.SIGCONT)


def _proc_kill(pids: list[int]) -> None:
    for pid in pids:
        _signal(pid, signal.SIGKILL)


def _proc_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, someone else's
        return True
    return True


def _proc_start_time(pid: int) -> int | None:
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


# ------------------------------------------------------------- psutil


def _psutil():
    try:
        import psutil
    except ImportError as exc:  # pragma: no cover - a dependency there
        raise ImportError(
            "joblib_fast's process backend needs psutil on this platform "
            "(pip install psutil)") from exc
    return psutil


def _processes(pids: list[int]) -> list:
    psutil = _psutil()
    out = []
    for pid in pids:
        try:
            out.append(psutil.Process(pid))
        except psutil.Error:
            pass
    return out


def _ps_descendants(pids: list[int]) -> list[int]:
    psutil = _psutil()
    found: list[int] = []
    for proc in _processes(pids):
        try:
            found.extend(p.pid for p in proc.children(recursive=True))
        except psutil.Error:
            pass
    return found


def _ps_each(procs: list, method: str) -> None:
    psutil = _psutil()
    for proc in procs:
        try:
            getattr(proc, method)()
        except psutil.Error:  # gone already
            pass


def _ps_terminate_trees(pids: list[int]) -> None:
    if not pids:
        return
    psutil = _psutil()
    workers = _processes(pids)
    _ps_each(workers, "suspend")
    below = []
    for proc in workers:
        try:
            below.extend(proc.children(recursive=True))
        except psutil.Error:
            pass
    _ps_each(below, "kill")
    _ps_each(workers, "terminate")
    _ps_each(workers, "resume")


def _ps_kill(pids: list[int]) -> None:
    _ps_each(_processes(pids), "kill")


def _ps_start_time(pid: int) -> int | None:
    """Creation time in microseconds (psutil gives seconds as a float),
    None if gone or a zombie."""
    psutil = _psutil()
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return round(proc.create_time() * 1e6)
    except psutil.Error:
        return None


def _ps_alive(pid: int) -> bool:
    return _psutil().pid_exists(pid)


# Each implementation of the interface, by platform.CONTROL name.
IMPLEMENTATIONS = {
    "proc": {"descendants": _proc_descendants,
             "terminate_trees": _proc_terminate_trees,
             "kill": _proc_kill, "start_time": _proc_start_time,
             "alive": _proc_alive},
    "psutil": {"descendants": _ps_descendants,
               "terminate_trees": _ps_terminate_trees,
               "kill": _ps_kill, "start_time": _ps_start_time,
               "alive": _ps_alive},
}
_chosen = IMPLEMENTATIONS[platform.CONTROL]
descendants = _chosen["descendants"]
terminate_trees = _chosen["terminate_trees"]
kill = _chosen["kill"]
start_time = _chosen["start_time"]
alive = _chosen["alive"]


def same_process(pid: int, started: int | None) -> bool:
    """``pid`` still runs the process that started at ``started``."""
    return started is not None and start_time(pid) == started
