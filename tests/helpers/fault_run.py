"""Seeded fault injection (run as a script by
tests/processes/test_random_kills.py, or by hand:
``python tests/helpers/fault_run.py SEED CALLS [joblib]``).

Repeated calls of thousands of tasks inside one ``with Parallel(...)``
block, each with a random ``return_as``, while a thread SIGKILLs a random
worker, the fork server or the resource tracker at random moments.  Prints
one JSON summary on stdout: per call, "ok" or the error raised (type and
message) and what had been killed; and what is left after the block
(processes, threads, descriptors, /dev/shm entries).  Workers share this
process's stderr: whatever they print there is the caller's to check.
"""
from __future__ import annotations

import json
import os
import random
import signal
import sys
import threading
import time
import warnings


def task(x):
    # Enough work per task that a call lasts a fraction of a second.
    s = 0
    for i in range(3000):
        s += i * x
    return x, s


def fork_server_pid():
    from multiprocessing import forkserver
    return forkserver._forkserver._forkserver_pid


def tracker_pid():
    from multiprocessing import resource_tracker
    return resource_tracker._resource_tracker._pid


def worker_pids():
    import psutil
    me = psutil.Process()
    pids = [p.pid for p in me.children(recursive=True)]
    server = fork_server_pid()
    if server is not None:
        try:
            pids += [p.pid for p in psutil.Process(server).children()]
        except psutil.Error:
            pass
    return [p for p in set(pids) if p not in (server, tracker_pid())]


class Killer(threading.Thread):
    def __init__(self, rng, stop):
        super().__init__(name="fault-killer", daemon=True)
        self.rng = rng
        self.stop = stop
        self.killed = []  # (target kind, pid) since the last take()
        self.lock = threading.Lock()

    def take(self):
        with self.lock:
            out, self.killed = self.killed, []
        return out

    def run(self):
        while not self.stop.wait(self.rng.uniform(0.05, 0.8)):
            kind = self.rng.choice(["worker", "worker", "fork server",
                                    "resource tracker"])
            if kind == "worker":
                pids = worker_pids()
                pid = self.rng.choice(pids) if pids else None
            elif kind == "fork server":
                pid = fork_server_pid()
            else:
                pid = tracker_pid()
            if pid is None:
                continue
            # Recorded first: the call may see the death before os.kill
            # returns here.
            with self.lock:
                self.killed.append((kind, pid))
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def snapshot():
    import psutil
    me = psutil.Process()
    # Entries of this process only (/dev/shm is shared with the machine:
    # another run's joblib_fast_<its pid>_... folders come and go).
    shm = sorted(n for n in os.listdir("/dev/shm")
                 if str(os.getpid()) in n) \
        if os.path.isdir("/dev/shm") else []
    return {"children": sorted(p.pid for p in me.children(recursive=True)),
            "threads": sorted(t.name for t in threading.enumerate()),
            "fds": len(os.listdir("/proc/self/fd")),
            "shm": shm}


def main(seed: int, calls: int, lib: str = "joblib_fast") -> None:
    if lib == "joblib":
        from joblib import Parallel, delayed
    else:
        from joblib_fast import Parallel, delayed
    # The parent's own note when multiprocessing restarts a killed
    # resource tracker is not what is checked here (workers' output is).
    warnings.filterwarnings("ignore", message="resource_tracker")
    rng = random.Random(seed)
    n_tasks = 3000
    expected = [task(i) for i in range(n_tasks)]
    before = snapshot()
    outcomes = []
    stop = threading.Event()
    killer = Killer(random.Random(seed + 1), stop)
    with Parallel(n_jobs=2) as p:
        p(delayed(task)(i) for i in range(10))  # start the workers
        killer.start()
        for _ in range(calls):
            return_as = rng.choice(["list", "generator", "generator_unordered"])
            p.return_as = return_as
            got = []
            error = None
            try:
                for item in p(delayed(task)(i) for i in range(n_tasks)):
                    got.append(item)
            except BaseException as exc:  # noqa: BLE001 - recorded
                error = f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}"
            if return_as == "generator_unordered":
                good = sorted(got) == sorted(set(got)) and \
                    set(got) <= set(expected) and \
                    (error is not None or len(got) == n_tasks)
            else:
                good = got == expected[:len(got)] and \
                    (error is not None or len(got) == n_tasks)
            outcomes.append({"return_as": return_as, "error": error,
                             "yielded": len(got), "consistent": good,
                             "killed": killer.take()})
        stop.set()
        killer.join()
        late = killer.take()
        outcomes.append({"killed": late})
        p.return_as = "list"
        if late:
            # A kill that landed after the last call ended is seen by the
            # next call, as a worker death (its pool is then replaced).
            try:
                p(delayed(task)(i) for i in range(10))
            except Exception:  # noqa: BLE001 - the death it may report
                pass
        # The next call after the faults works.
        final = p(delayed(task)(i) for i in range(n_tasks))
        final_ok = list(final) == expected
    time.sleep(0.5)
    if lib == "joblib_fast":
        from joblib_fast.backends.processes.registry import (
            shutdown_reusable_pools,
        )
        shutdown_reusable_pools()
    time.sleep(0.5)
    # multiprocessing's own helpers outlive the block by design (as with
    # joblib): the fork server and the resource tracker, one pipe each.
    helpers = [pid for pid in (fork_server_pid(), tracker_pid()) if pid]
    print(json.dumps({"outcomes": outcomes, "final_ok": final_ok,
                      "before": before, "after": snapshot(),
                      "helpers": helpers}))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]),
         sys.argv[3] if len(sys.argv) > 3 else "joblib_fast")
