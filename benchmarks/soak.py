#!/usr/bin/env python
"""Soak run (not a test): does anything grow over a long run?

Four phases, each sampled at intervals (RSS of this process and of its
worker processes, threads, open descriptors, /dev/shm entries):

1. 1,000,000 tasks on threads, one call (results consumed as a generator);
2. 1,000,000 tasks on processes, one call;
3. 5,000 consecutive calls on processes without a ``with`` block (the
   process-wide reusable pool), each also returning one 2.4 MB array
   through shared memory when numpy is installed;
4. 5,000 consecutive calls on processes inside one ``with Parallel(...)``;
   the same for threads in phases 5 and 6.

    PYTHONPATH=. python benchmarks/soak.py            # the full run
    PYTHONPATH=. python benchmarks/soak.py --scale 0.1

Flat columns are the result: a leak shows as a column that keeps growing
from one sample to the next within a phase.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import threading
import time

MB = 1 << 20


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _descendants() -> list[int]:
    try:
        import psutil
    except ImportError:
        return []
    me = psutil.Process()
    pids = [p.pid for p in me.children(recursive=True)]
    try:  # forkserver workers are children of the fork server
        from multiprocessing import forkserver
        server = forkserver._forkserver._forkserver_pid
        if server:
            pids += [p.pid for p in psutil.Process(server).children()]
    except Exception:  # noqa: BLE001 - best effort
        pass
    return sorted(set(pids))


def sample() -> dict:
    kids = _descendants()
    shm = os.listdir("/dev/shm") if os.path.isdir("/dev/shm") else []
    return {
        "rss_mb": _rss_kb(os.getpid()) / 1024,
        "child_rss_mb": sum(_rss_kb(p) for p in kids) / 1024,
        "procs": len(kids),
        "threads": threading.active_count(),
        "fds": len(os.listdir("/proc/self/fd")),
        "shm": len(shm),
        "shm_ours": sum(bool(re.search("joblib_fast",
                                       n)) for n in shm),
    }


HEADER = (f"{'phase':<26}{'done':>10}{'secs':>7}{'rss MB':>8}"
          f"{'kids MB':>9}{'procs':>6}{'thr':>5}{'fds':>5}{'shm':>5}"
          f"{'ours':>5}")


def show(phase: str, done: int, t0: float) -> dict:
    s = sample()
    print(f"{phase:<26}{done:>10}{time.perf_counter() - t0:>7.1f}"
          f"{s['rss_mb']:>8.1f}{s['child_rss_mb']:>9.1f}{s['procs']:>6}"
          f"{s['threads']:>5}{s['fds']:>5}{s['shm']:>5}{s['shm_ours']:>5}",
          flush=True)
    return s


def one_task(i):
    return i + 1


def array_task(n):
    import numpy as np
    return np.ones(n)


def million(backend: str, n: int, every: int) -> None:
    from joblib_fast import Parallel, delayed
    phase = f"{n:,} tasks, {backend}"
    t0 = time.perf_counter()
    show(phase, 0, t0)
    out = Parallel(n_jobs=2, backend=backend, return_as="generator")(
        delayed(one_task)(i) for i in range(n))
    for i, r in enumerate(out, 1):
        if r != i:
            raise AssertionError(f"result {i - 1} is {r}")
        if i % every == 0:
            show(phase, i, t0)


def calls(backend: str, n: int, every: int, block: bool) -> None:
    from joblib_fast import Parallel, delayed
    with_array = "numpy" in sys.modules and backend != "threading"
    phase = f"{n:,} calls, {backend}{', with' if block else ''}"

    def tasks():
        yield from (delayed(one_task)(i) for i in range(20))
        if with_array:
            yield delayed(array_task)(300_000)

    t0 = time.perf_counter()
    show(phase, 0, t0)
    if block:
        with Parallel(n_jobs=2, backend=backend) as p:
            for i in range(1, n + 1):
                out = p(tasks())
                assert out[:20] == list(range(1, 21))
                del out
                if i % every == 0:
                    show(phase, i, t0)
    else:
        for i in range(1, n + 1):
            out = Parallel(n_jobs=2, backend=backend)(tasks())
            assert out[:20] == list(range(1, 21))
            del out
            if i % every == 0:
                show(phase, i, t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply every count (0.1 for a quick look)")
    parser.add_argument("--no-numpy", action="store_true",
                        help="no array results in the call phases")
    args = parser.parse_args()
    if not args.no_numpy:
        try:
            import numpy  # noqa: F401 - arrays in the call phases
        except ImportError:
            pass
    n_tasks = int(1_000_000 * args.scale)
    n_calls = int(5_000 * args.scale)
    print(HEADER)
    million("threading", n_tasks, max(n_tasks // 10, 1))
    million("loky", n_tasks, max(n_tasks // 10, 1))
    calls("loky", n_calls, max(n_calls // 10, 1), block=False)
    calls("loky", n_calls, max(n_calls // 10, 1), block=True)
    calls("threading", n_calls, max(n_calls // 10, 1), block=False)
    calls("threading", n_calls, max(n_calls // 10, 1), block=True)
    from joblib_fast.backends.processes import shutdown_reusable_pools
    shutdown_reusable_pools()
    time.sleep(0.5)
    show("after shutdown", 0, time.perf_counter())


if __name__ == "__main__":
    main()
