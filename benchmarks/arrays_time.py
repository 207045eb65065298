#!/usr/bin/env python
"""Where the time of the shared-input workload goes (``bench.py --only
bigarray_in``: 8 tasks, each summing the same array, n_jobs=2, calls
repeated inside one ``with Parallel(...)`` block).

For each repeat, side by side: the plain loop; one call of joblib_fast's
process backend, split into the parent's check that its dump still holds
the array (a ``memcmp``) and each worker's sums (timed inside the task,
with the page faults the task took); one worker summing alone.

    python benchmarks/arrays_time.py            # 200 MB, 5 repeats
    python benchmarks/arrays_time.py --mb 50 --repeats 9
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time


def timed_sum(a):
    """(sum, seconds, minor page faults) of ``a.sum()`` in this process."""
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    total = float(a.sum())
    seconds = time.perf_counter() - start
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    return total, seconds, faults


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    import numpy as np

    import joblib_fast.backends.processes.arrays_in as arrays_in
    from joblib_fast import Parallel, delayed
    task = timed_sum   # from __main__: sent to the workers by value

    checks: list[float] = []
    same_bytes = arrays_in._Dump.same_bytes

    def timed_check(self, a):
        start = time.perf_counter()
        try:
            return same_bytes(self, a)
        finally:
            checks.append(time.perf_counter() - start)

    arrays_in._Dump.same_bytes = timed_check   # this script's process only
    a = np.random.default_rng(0).random(args.mb * 2**20 // 8)
    loops, calls, alone, sums, faults = [], [], [], [], []
    with Parallel(n_jobs=2) as parallel:
        parallel(delayed(task)(a) for _ in range(2))     # dump, workers
        for _ in range(args.repeats):
            start = time.perf_counter()
            for _ in range(8):
                task(a)
            loops.append(time.perf_counter() - start)
            alone.append(parallel([delayed(task)(a)])[0][1])
            start = time.perf_counter()
            out = parallel(delayed(task)(a) for _ in range(8))
            calls.append(time.perf_counter() - start)
            sums.extend(o[1] for o in out)
            faults.extend(o[2] for o in out)
    med = statistics.median
    loop, call, check = med(loops), med(calls), med(checks)
    per_sum = med(sums)
    print(f"{args.mb} MB array, 8 tasks, n_jobs=2, median of "
          f"{args.repeats} repeats")
    print(f"  loop                  {loop * 1e3:7.1f} ms "
          f"({loop / 8 * 1e3:.1f} ms a sum)")
    print(f"  call (processes)      {call * 1e3:7.1f} ms "
          f"(loop / call {loop / call:.2f})")
    print(f"    parent's memcmp     {check * 1e3:7.1f} ms")
    print(f"    4 sums per worker   {4 * per_sum * 1e3:7.1f} ms "
          f"({per_sum * 1e3:.1f} ms a sum with the other worker summing, "
          f"{med(alone) * 1e3:.1f} ms alone; page faults per task: "
          f"median {med(faults):.0f})")
    print(f"    the rest            "
          f"{(call - check - 4 * per_sum) * 1e3:7.1f} ms (dispatch, "
          "replies, wake-ups)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
