#!/usr/bin/env python
"""Two NumPy workloads of ``bench.py``, the peers interleaved call by call
(one call of each peer per round): on a busy machine the load moves within
a few seconds, which a peer timed in one block after another can catch on
one side only.  Prints each peer's median and its per-round times.

    python benchmarks/numpy_ab.py blas     # 300 x a @ a (300x300), threads
    python benchmarks/numpy_ab.py out      # 8 x 50 MB arrays returned
    python benchmarks/numpy_ab.py blas --rounds 11

``blas``: joblib_fast's threads with the BLAS cap (``inner_max_num_threads=1``
on 2 cores is the default rule), the same threads with the cap at 2 (BLAS
at its size here: nothing capped), joblib's threading backend.
``out``: joblib_fast's processes, joblib_fast's threads.
"""
from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time


def matmul(a):
    return float((a @ a)[0, 0])


def fresh(n: int):
    import numpy as np
    return np.ones(n)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workload", choices=("blas", "out"))
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)

    import numpy as np

    import joblib_fast
    from joblib_fast import delayed, parallel_config

    if args.workload == "blas":
        import joblib
        a = np.random.default_rng(0).random((300, 300))

        def jf(cap):
            def run():
                with parallel_config(backend="threading",
                                     inner_max_num_threads=cap):
                    joblib_fast.Parallel(n_jobs=2)(
                        delayed(matmul)(a) for _ in range(300))
            return run

        def jl():
            joblib.Parallel(n_jobs=2, backend="threading")(
                joblib.delayed(matmul)(a) for _ in range(300))
        peers = {"joblib_fast threads, BLAS capped at 1": jf(1),
                 "joblib_fast threads, cap 2 (none)": jf(2),
                 "joblib threading": jl}
        blocks = []
    else:
        n = 50 * 2**20 // 8
        procs = joblib_fast.Parallel(n_jobs=2, backend="loky")
        threads = joblib_fast.Parallel(n_jobs=2, backend="threading")
        blocks = [procs, threads]
        for block in blocks:
            block.__enter__()
            block(delayed(fresh)(n) for _ in range(2))   # warm

        def call(block):
            def run():
                out = block(delayed(fresh)(n) for _ in range(8))
                del out
            return run
        peers = {"joblib_fast processes": call(procs),
                 "joblib_fast threads": call(threads)}
    times: dict[str, list[float]] = {name: [] for name in peers}
    try:
        for _ in range(args.rounds):
            for name, run in peers.items():
                gc.collect()
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
    finally:
        for block in blocks:
            block.__exit__(None, None, None)
    for name, values in times.items():
        shown = " ".join(f"{v * 1e3:.0f}" for v in values)
        print(f"{name:<40} median {statistics.median(values) * 1e3:7.0f} ms"
              f"   ({shown})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
