"""Where the time goes on the threading backend: GIL and scheduler counts.

    python benchmarks/where_time_goes.py [--tasks 20000] [--us 10] [--gil]
    python benchmarks/where_time_goes.py --input 7 [--tasks 60000 --us 3]

Runs the nogil kernel workload (``--tasks`` calls of a ``--us`` microsecond
GIL-releasing kernel, n_jobs=2) with joblib_fast's threading backend and
with ``multiprocessing.pool.ThreadPool.map`` (chunked) and prints, per
thread of each system:

* ``cpu %``: share of the wall time the thread ran on a CPU, and ``runq %``
  the share it was runnable but waiting for a CPU (/proc schedstat);
* ``ctxsw/1k``: context switches per 1,000 tasks (voluntary + forced, from
  /proc/<pid>/task/<tid>/status);
* ``gil %`` (with ``--gil``, needs py-spy): share of py-spy samples in which
  that thread held the GIL, and ``gil wait %`` the share in which it was
  blocked taking it (its native stack waits in ``take_gil``).

Counts, not seconds, are the steady figures on a noisy machine.

``--input ROUNDS`` instead times, side by side, how much of the call is the
user's ``delayed`` generator (see :func:`input_share`).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable


def _task_counts() -> dict[int, dict[str, float]]:
    """Per thread of this process: name, cpu/runqueue ns, context switches."""
    out = {}
    base = f"/proc/{os.getpid()}/task"
    for tid in os.listdir(base):
        try:
            with open(f"{base}/{tid}/schedstat") as f:
                run_ns, wait_ns, _ = (int(v) for v in f.read().split())
            with open(f"{base}/{tid}/comm") as f:
                comm = f.read().strip()
            switches = 0
            with open(f"{base}/{tid}/status") as f:
                for line in f:
                    if line.endswith("ctxt_switches\n") or "ctxt_switches:" in line:
                        switches += int(line.split()[1])
        except OSError:
            continue
        out[int(tid)] = {"comm": comm, "run": run_ns, "wait": wait_ns,
                         "switches": switches}
    return out


def child(system: str, n_tasks: int, micros: float, seconds: float) -> None:
    from joblib_fast._kernels import burn, calibrate

    from joblib_fast import Parallel, delayed

    n = calibrate(micros * 1e-6)
    threading.current_thread().name = "caller"
    threading.current_thread()._name = "caller"
    if system == "joblib_fast":
        # Workers kept across calls, as ThreadPool's are.
        parallel = Parallel(n_jobs=2, backend="threading").__enter__()

        def run():
            return parallel(delayed(burn)(n) for _ in range(n_tasks))
    else:
        from multiprocessing.pool import ThreadPool
        pool = ThreadPool(2)
        items = [n] * n_tasks

        def run():
            return pool.map(burn, items, chunksize=max(1, n_tasks // 8))
    run()  # warm-up
    calls = 0
    start = _task_counts()
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds or calls < 3:
        run()
        calls += 1
    wall_ns = (time.perf_counter() - t0) * 1e9
    end = _task_counts()
    names = {t.native_id: t.name for t in threading.enumerate()}
    rows = []
    for tid, after in end.items():
        before = start.get(tid, {"run": 0, "wait": 0, "switches": 0})
        run_ns = after["run"] - before["run"]
        if run_ns < 0.001 * wall_ns:
            continue  # threads that did not take part
        rows.append({
            "tid": tid, "thread": names.get(tid, after["comm"]),
            "cpu": run_ns / wall_ns,
            "runq": (after["wait"] - before["wait"]) / wall_ns,
            "ctxsw_per_1k": 1000 * (after["switches"] - before["switches"])
            / (calls * n_tasks)})
    print(json.dumps({"system": system, "calls": calls, "wall_s": wall_ns / 1e9,
                      "tasks": calls * n_tasks, "threads": rows}))


def input_share(n_tasks: int, micros: float, rounds: int) -> None:
    """The share of the user's ``delayed`` generator, side by side in this
    process: the same work run by ThreadPool.map over a ready list (as
    benchmarks/bench.py runs it) and over the same ``delayed`` generator
    as joblib_fast's (Pool.map lists it first, then runs each task), by
    joblib_fast pulling the generator (what bench.py times), by joblib_fast
    over a ready list of the same ``delayed`` tasks (made before the timer
    starts) and, alone, the making and dropping of those tasks in one
    thread.  Rounds alternate the systems; medians."""
    from multiprocessing.pool import ThreadPool

    from joblib_fast._kernels import burn, calibrate

    from joblib_fast import Parallel, delayed

    n = calibrate(micros * 1e-6)
    items = [n] * n_tasks

    def run_task(task):
        func, args, kwargs = task
        return func(*args, **kwargs)

    def pull_alone():
        for _ in (delayed(burn)(x) for x in items):
            pass

    times: dict[str, list[float]] = collections.defaultdict(list)
    with Parallel(n_jobs=2, backend="threading") as parallel, \
            ThreadPool(2) as pool:
        systems = {
            "loop": lambda: [burn(x) for x in items],
            "mp.ThreadPool, ready list": lambda: pool.map(
                burn, items, chunksize=max(1, n_tasks // 8)),
            "mp.ThreadPool, the same delayed generator": lambda: pool.map(
                run_task, (delayed(burn)(x) for x in items),
                chunksize=max(1, n_tasks // 8)),
            "joblib_fast, delayed generator": lambda: parallel(
                delayed(burn)(x) for x in items),
            "joblib_fast, ready list of delayed tasks": None,
            "making + dropping the tasks alone": pull_alone,
        }
        for _ in range(rounds):
            for name, run in systems.items():
                tasks = None
                if run is None:
                    tasks = [delayed(burn)(x) for x in items]
                    t0 = time.perf_counter()
                    parallel(tasks)
                else:
                    t0 = time.perf_counter()
                    run()
                times[name].append(time.perf_counter() - t0)
                del tasks
    median = {name: sorted(v)[len(v) // 2] for name, v in times.items()}
    loop = median["loop"]
    print(f"\nthe input's share: median of {rounds} alternating rounds")
    print(f"  {'':<42} {'ms':>8} {'speed-up':>9}")
    for name, t in median.items():
        ratio = f"{loop / t:8.2f}x" if name != "loop" and \
            not name.startswith("making") else ""
        print(f"  {name:<42} {1e3 * t:8.2f} {ratio:>9}")
    gap = median["joblib_fast, delayed generator"] - \
        median["joblib_fast, ready list of delayed tasks"]
    print(f"  generator - ready list: {1e3 * gap:.2f} ms, "
          f"{gap / median['making + dropping the tasks alone']:.1f} x the "
          "time of making and dropping the tasks alone")


def _gil_shares(cmd: list[str], seconds: float) -> dict[str, tuple]:
    """py-spy samples of two runs of ``cmd``: per thread name, (share of the
    sampling rounds in which it held the GIL, share in which it was blocked
    taking it)."""
    with tempfile.TemporaryDirectory() as folder:
        held = os.path.join(folder, "gil.txt")
        every = os.path.join(folder, "all.txt")
        for path, flags in ((held, ["--gil"]), (every, ["--idle", "--native"])):
            subprocess.run(
                ["py-spy", "record", "-r", "500", "-t", "-f", "raw", "-o", path,
                 *flags, "--", *cmd], check=True, capture_output=True,
                timeout=seconds * 20 + 60)
        holding = _samples(held)
        everything = _samples(every, waiting=_waits_for_gil)
    # With --idle every thread is sampled each round: the caller's count is
    # the number of rounds of that run (the GIL run has as many rounds, as
    # it runs the same work for the same time).
    rounds = max((total for total, _ in everything.values()), default=1)
    return {name: (holding.get(name, (0, 0))[0] / rounds, waiting / rounds)
            for name, (_, waiting) in everything.items()}


def _waits_for_gil(stack: str) -> bool:
    """CPython 3.11 waits for the GIL in take_gil (inlined) on a timed
    condition variable; joblib_fast's own timed wait is the caller's
    (Call._wait / _sleep_until), which does not hold or want the GIL."""
    return "pthread_cond_timedwait" in stack and not any(
        own in stack for own in ("Call__wait", "_sleep_until"))


def _samples(path: str, waiting: Callable[[str], bool] | None = None):
    """Per thread name: (samples, samples whose stack ``waiting`` flags)."""
    counts: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip().rpartition(" ")
            if not stack.startswith("thread ("):
                continue
            head = stack.split(";", 1)[0]
            name = head.split("): ", 1)[1] if "): " in head else head
            counts[name][0] += int(count)
            if waiting is not None and waiting(stack):
                counts[name][1] += int(count)
    return {name: tuple(v) for name, v in counts.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--us", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--gil", action="store_true",
                        help="also sample GIL holding with py-spy")
    parser.add_argument("--input", type=int, metavar="ROUNDS", default=0,
                        help="only the input's share (see input_share), "
                        "median of ROUNDS rounds")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.tasks, args.us, args.seconds)
        return 0
    if args.input:
        print(f"nogil kernel {args.us:g} us x {args.tasks}, n_jobs=2, "
              f"{os.cpu_count()} CPUs")
        input_share(args.tasks, args.us, args.input)
        return 0
    print(f"nogil kernel {args.us:g} us x {args.tasks}, n_jobs=2, "
          f"{os.cpu_count()} CPUs")
    for system in ("joblib_fast", "mp.ThreadPool"):
        cmd = [sys.executable, os.path.abspath(__file__), "--child", system,
               "--tasks", str(args.tasks), "--us", str(args.us),
               "--seconds", str(args.seconds)]
        result = json.loads(subprocess.run(
            cmd, check=True, capture_output=True, text=True).stdout)
        print(f"\n{system}: {result['calls']} calls, "
              f"{1e6 * result['wall_s'] / result['tasks']:.2f} us/task wall")
        print(f"  {'thread':<20} {'cpu %':>6} {'runq %':>7} {'ctxsw/1k':>9}")
        for row in sorted(result["threads"], key=lambda r: r["thread"]):
            print(f"  {row['thread']:<20} {100 * row['cpu']:6.1f} "
                  f"{100 * row['runq']:7.1f} {row['ctxsw_per_1k']:9.1f}")
        if args.gil:
            shares = _gil_shares(cmd, args.seconds)
            print(f"  {'thread (py-spy)':<20} {'gil %':>6} {'gil wait %':>10}")
            for name, (held, waiting) in sorted(shares.items()):
                print(f"  {name:<20} {100 * held:6.1f} {100 * waiting:10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
