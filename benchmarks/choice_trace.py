"""How the threading backend ran one cell of the GIL-share grid, call by call.

    python benchmarks/choice_trace.py --us 10 --share 1.0 [--calls 4]
        [--set ALONE_MARGIN=1.0 ...] [--pieces]

For each call of ``Parallel(n_jobs=2, backend="threading")`` over the
tasks of ``bench_gil_sweep`` (``--us`` microseconds, ``--share`` of them
holding the GIL), after the plain loop over the same tasks: the two times,
``last_call_stats``, every decision of the caller between running with the
pool threads (the team) and alone, and where the call's wall time went:
how much of it some thread ran tasks, the tasks the caller and the pool
threads ran and how long each took, and the pool threads' tasks that ran
after the caller's last one (a tail the caller waited for).  ``--pieces``
also lists every piece of a batch a thread ran.  ``--set`` changes the
decision's constants for the run (``_core._tuning``), to compare rules
in one process on a machine whose speed drifts between runs.

This reads the core's private recording hook (``_core._record``); it is a
tool for working on the dispatch, not a benchmark of it (see bench.py).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_gil_sweep as grid  # noqa: E402 - the folder of this script

from joblib_fast import Parallel, _core, _kernels, delayed  # noqa: E402


def _coverage(pieces: list) -> float:
    """Seconds during which at least one piece ran."""
    total, start, end = 0.0, None, None
    for s, e in sorted((p[1], p[2]) for p in pieces):
        if end is None or s > end:
            if end is not None:
                total += end - start
            start, end = s, e
        else:
            end = max(end, e)
    return total + (end - start if end is not None else 0.0)


def report(log: list, show_pieces: bool) -> None:
    pieces = [e for e in log if e[0] == "piece"]
    if not pieces:
        print("   (no piece ran in a thread: the call ran inline)")
        return
    base = min(p[1] for p in pieces)
    span = max(p[2] for p in pieces) - base
    by_caller = [p for p in pieces if p[4]]
    by_pool = [p for p in pieces if not p[4]]
    caller_end = max((p[2] for p in by_caller), default=base)
    tail = [p for p in by_pool if p[1] >= caller_end]

    def part(name, ps):
        secs = sum(p[2] - p[1] for p in ps)
        tasks = sum(p[3] for p in ps)
        per = secs / tasks * 1e6 if tasks else 0.0
        return (f"{name} {tasks} tasks in {secs * 1e3:.1f} ms "
                f"({per:.2f} us each)")

    print(f"   {span * 1e3:.1f} ms from the first piece to the last; some "
          f"thread ran tasks {_coverage(pieces) * 1e3:.1f} ms of it; "
          f"{part('caller', by_caller)}; {part('pool', by_pool)}; "
          f"after the caller's last: {part('pool', tail)}")
    for e in sorted(log, key=lambda e: e[1]):
        if e[0] == "choice":
            _, t, event, rate, running = e
            extra = "" if event == "window starts" else \
                f" rate {rate / 1e3:.1f}k/s, running {running:.2f}"
            print(f"   {(t - base) * 1e3:8.2f} ms  {event}{extra}")
        elif show_pieces:
            _, t0, t1, ran, caller = e
            who = "caller" if caller else "pool  "
            print(f"   {(t0 - base) * 1e3:8.2f} ms  {who} ran {ran} tasks "
                  f"until {(t1 - base) * 1e3:.2f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--us", type=float, default=10.0)
    parser.add_argument("--share", type=float, default=1.0)
    parser.add_argument("--calls", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=grid.CALL_SECONDS,
                        help="each call lasts about this long in the loop")
    parser.add_argument("--set", action="append", default=[],
                        metavar="NAME=VALUE")
    parser.add_argument("--pieces", action="store_true")
    args = parser.parse_args()
    if not 0.0 <= args.share <= 1.0:
        parser.error(f"--share is a fraction in [0, 1], got {args.share}")
    if args.us <= 0 or args.calls < 1:
        parser.error("--us must be positive and --calls at least 1")
    changes = {}
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set takes NAME=VALUE, got {item!r}")
        changes[name] = float(value)
    print("constants:", _core._tuning(**changes))
    m = grid.calibrate_spin(args.us * 1e-6 * args.share)
    k = _kernels.calibrate(args.us * 1e-6 * (1.0 - args.share)) \
        if args.share < 1.0 else 0
    tasks = [(m, k)] * max(100, int(args.seconds / (args.us * 1e-6)))
    with Parallel(n_jobs=2, backend="threading") as parallel:
        for _ in range(args.calls):
            t0 = time.perf_counter()
            [grid.task(*a) for a in tasks]
            loop = time.perf_counter() - t0
            log = _core._record(True)
            try:
                t0 = time.perf_counter()
                parallel(delayed(grid.task)(*a) for a in tasks)
                took = time.perf_counter() - t0
            finally:
                _core._record(False)
            print(f"loop {loop * 1e3:.1f} ms, joblib_fast {took * 1e3:.1f} ms "
                  f"({loop / took:.2f}x the loop); {parallel.last_call_stats}")
            report(log, args.pieces)
    return 0


if __name__ == "__main__":
    sys.exit(main())
