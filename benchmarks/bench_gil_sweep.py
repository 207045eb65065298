"""The GIL-share section of bench.py (``--only gil_sweep``).

Fine-grained tasks on threads, as users write them: a Python function
whose work is partly bytecode (the GIL held) and partly a GIL-free kernel.
Each cell of the grid is a task duration (3, 10, 30, 100 us) and the share
of it spent holding the GIL (0, 10, 30, 60, 100 %): a pure-Python loop for
the held part, ``_kernels.burn`` (a nogil floating-point chain) for the
rest.  Three ways run the same tasks in one process:

    loop        [task(*a) for a in args]
    ThreadPool  multiprocessing.pool.ThreadPool(n_jobs).starmap(task, args)
    joblib_fast Parallel(n_jobs, backend="threading")(
                    delayed(task)(*a) for a in args)

A fourth run only consumes the ``delayed`` generator (no task runs): its
cost against the loop roughly bounds what anything fed by that generator
can reach for tasks that hold the GIL throughout (roughly: walking the
arguments is in both the generator's time and the loop's).  Rounds
alternate the four in a shuffled order (a noisy neighbour hits each
alike); the medians are reported, as joblib_fast's speed against the loop
and against ThreadPool (> 1: joblib_fast quicker).  A second table is the
thin wrapper of the threads issue: ``def task(k): return burn(int(k))``
around a 3, 10 or 30 us kernel, and the kernel passed to delayed directly.
"""
from __future__ import annotations

import random
import statistics
import time
from collections import deque
from multiprocessing.pool import ThreadPool

from joblib_fast import Parallel, _kernels, delayed

DURATIONS_US = (3, 10, 30, 100)
SHARES = (0.0, 0.1, 0.3, 0.6, 1.0)
# Each call lasts about this long in the loop (seconds).
CALL_SECONDS = 0.08
QUICK_CALL_SECONDS = 0.04
# Below this ratio a cell misses the target (0.97).
TARGET = 0.97


def spin(m):
    """``m`` iterations of bytecode: the GIL held throughout."""
    for _ in range(m):
        pass


def task(m, k):
    """The grid's task: ``spin(m)`` with the GIL, then ``burn(k)``
    without it."""
    if m:
        spin(m)
    return _kernels.burn(k) if k else 0.0


def wrapped(k):
    """A thin Python wrapper around the kernel (the issue's shape)."""
    return _kernels.burn(int(k))


def _best_of(func, arg, repeat=5):
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        func(arg)
        best = min(best, time.perf_counter() - t0)
    return best


def calibrate_spin(seconds: float) -> int:
    if seconds <= 0.0:
        return 0
    m = 20_000
    return max(1, int(m * seconds / _best_of(spin, m)))


def _times(runs: dict, rounds: int) -> dict:
    times: dict = {name: [] for name in runs}
    order = list(runs)
    for _ in range(rounds):
        random.shuffle(order)
        for name in order:
            t0 = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def _cell(label: str, func, args: list, tp, par, rounds: int,
          star: bool) -> dict:
    if star:
        runs = {"loop": lambda: [func(*a) for a in args],
                "ThreadPool": lambda: tp.starmap(func, args),
                "joblib_fast": lambda: par(delayed(func)(*a) for a in args),
                # The tasks' generator alone, no task run: what any
                # dispatcher pays on top of the loop under the GIL.
                "generator": lambda: deque(
                    (delayed(func)(*a) for a in args), maxlen=0)}
    else:
        runs = {"loop": lambda: [func(a) for a in args],
                "ThreadPool": lambda: tp.map(func, args),
                "joblib_fast": lambda: par(delayed(func)(a) for a in args),
                "generator": lambda: deque(
                    (delayed(func)(a) for a in args), maxlen=0)}
    times = _times(runs, rounds)
    m = {name: statistics.median(v) for name, v in times.items()}
    return {"cell": label, "tasks": len(args),
            "loop_s": m["loop"], "threadpool_s": m["ThreadPool"],
            "joblib_fast_s": m["joblib_fast"],
            "vs_loop": m["loop"] / m["joblib_fast"],
            "vs_threadpool": m["ThreadPool"] / m["joblib_fast"],
            "threadpool_vs_loop": m["loop"] / m["ThreadPool"],
            # Fastest rounds: noise from the machine only slows a run.
            "generator_share": min(times["generator"]) / min(times["loop"])}


def run(n_jobs: int, quick: bool) -> dict:
    rounds = 5 if quick else 9
    seconds = QUICK_CALL_SECONDS if quick else CALL_SECONDS
    grid, wrapper = [], []
    with ThreadPool(n_jobs) as tp, \
            Parallel(n_jobs=n_jobs, backend="threading") as par:
        for us in DURATIONS_US:
            n_tasks = max(100, int(seconds / (us * 1e-6)))
            for share in SHARES:
                m = calibrate_spin(us * 1e-6 * share)
                k = _kernels.calibrate(us * 1e-6 * (1.0 - share)) \
                    if share < 1.0 else 0
                row = _cell(f"{us} us, {share:.0%} GIL", task,
                            [(m, k)] * n_tasks, tp, par, rounds, True)
                row.update(us=us, share=share)
                grid.append(row)
        for us in (3, 10, 30):
            k = _kernels.calibrate(us * 1e-6)
            n_tasks = max(100, int(seconds / (us * 1e-6)))
            wrapper.append(_cell(f"{us} us, wrapper", wrapped,
                                 [float(k)] * n_tasks, tp, par, rounds,
                                 False))
            wrapper.append(_cell(f"{us} us, kernel", _kernels.burn,
                                 [k] * n_tasks, tp, par, rounds, False))
    return {"grid": grid, "wrapper": wrapper, "rounds": rounds}


def _mark(row: dict) -> str:
    return "met" if min(row["vs_loop"], row["vs_threadpool"]) >= TARGET \
        else "NOT met"


def _generator_share(grid: list, us: int) -> float:
    return statistics.median(r["generator_share"] for r in grid
                             if r["us"] == us)


def print_rows(result: dict, n_jobs: int) -> None:
    grid = result["grid"]
    print()
    print(f"GIL share sweep, n_jobs={n_jobs}: joblib_fast threading against "
          "the loop / against ThreadPool.starmap (medians of "
          f"{result['rounds']} shuffled rounds; > 1: joblib_fast quicker)")
    print("task     " + "".join(f"{share:>14.0%}" for share in SHARES))
    for us in DURATIONS_US:
        cells = [r for r in grid if r["us"] == us]
        print(f"{us:>4} us  " + "".join(
            f"{r['vs_loop']:>8.2f}/{r['vs_threadpool']:<5.2f}"
            for r in cells))
    met = sum(_mark(r) == "met" for r in grid)
    print(f"target (>= {TARGET} of both in every cell): {met} of "
          f"{len(grid)} cells met")
    print("the delayed generator alone (no task run) against the loop, by "
          "task duration: " + ", ".join(
              f"{us} us {_generator_share(grid, us):.1%}"
              for us in DURATIONS_US))
    print("  (tasks holding the GIL throughout run one at a time: fed by "
          "that generator, at most about 1 / (1 + that share) of the loop)")
    print()
    print("thin wrapper around a nogil kernel vs the kernel passed directly:")
    for r in result["wrapper"]:
        print(f"  {r['cell']:<18} loop {1.0:.2f}x | ThreadPool.map "
              f"{r['threadpool_vs_loop']:.2f}x | joblib_fast "
              f"{r['vs_loop']:.2f}x  ({_mark(r)}: "
              f"{r['vs_threadpool']:.2f} of ThreadPool)")
