"""Why pulling a ``delayed`` generator costs more than its own time on
threads: the same 3 us GIL-free kernel over 60 000 items, n_jobs=2.

    python benchmarks/pull_convoy.py [--rounds 11]

Rows (medians of shuffled rounds, speed-up over the plain loop):

    ThreadPool.map             a ready list of arguments
    ThreadPool, pull first     the delayed generator pulled into a list,
                               then mapped
    ThreadPool, pull meanwhile the generator pulled by the main thread
                               while the pool maps the ready list: both
                               hold the GIL in turn, and a worker back from
                               its kernel waits for a pull to let go
    joblib_fast, ready list    Parallel over a list of delayed tasks made
                               beforehand (untimed)
    joblib_fast, generator     Parallel over the delayed generator
"""
from __future__ import annotations

import argparse
import random
import statistics
import time
from multiprocessing.pool import ThreadPool

from joblib_fast import Parallel, _kernels, delayed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=11)
    args = parser.parse_args()
    k = _kernels.calibrate(3e-6)
    burn = _kernels.burn
    items = [k] * 60_000
    ready = [delayed(burn)(a) for a in items]

    with ThreadPool(2) as pool, \
            Parallel(n_jobs=2, backend="threading") as parallel:
        def pull_meanwhile():
            pending = pool.map_async(burn, items)
            pulled = list(delayed(burn)(a) for a in items)
            return pending.get(), pulled

        runs = {
            "loop": lambda: [burn(a) for a in items],
            "ThreadPool.map": lambda: pool.map(burn, items),
            "ThreadPool, pull first": lambda: pool.map(
                burn, [t[1][0] for t in (delayed(burn)(a) for a in items)]),
            "ThreadPool, pull meanwhile": pull_meanwhile,
            "joblib_fast, ready list": lambda: parallel(ready),
            "joblib_fast, generator": lambda: parallel(
                delayed(burn)(a) for a in items),
        }
        times: dict = {name: [] for name in runs}
        order = list(runs)
        for _ in range(args.rounds):
            random.shuffle(order)
            for name in order:
                t0 = time.perf_counter()
                runs[name]()
                times[name].append(time.perf_counter() - t0)
    loop = statistics.median(times["loop"])
    for name, values in times.items():
        print(f"{name:<28} {loop / statistics.median(values):5.2f}x")


if __name__ == "__main__":
    main()
