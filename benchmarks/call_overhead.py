"""The fixed cost of a short threading call: 8 no-op tasks per call.

    python benchmarks/call_overhead.py [--numpy]

Prints the median over 7 rounds of 300 calls of the time per call, for a
new ``Parallel`` each call and for calls inside one ``with Parallel``
block.  ``--numpy`` imports NumPy first (the native pools' cap then applies
to every call).
"""
from __future__ import annotations

import argparse
import statistics
import time

from joblib_fast import Parallel, delayed


def task(i):
    return i


def per_call(call, calls: int = 300, rounds: int = 7) -> float:
    for _ in range(50):
        call()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            call()
        times.append((time.perf_counter() - t0) / calls)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--numpy", action="store_true",
                        help="import NumPy first")
    args = parser.parse_args()
    if args.numpy:
        import numpy  # noqa: F401 - loads OpenBLAS, so calls cap it
    new = per_call(lambda: Parallel(n_jobs=2, backend="threading")(
        delayed(task)(i) for i in range(8)))
    with Parallel(n_jobs=2, backend="threading") as parallel:
        kept = per_call(lambda: parallel(delayed(task)(i) for i in range(8)))
    print(f"8 no-op tasks, n_jobs=2: {new * 1e6:.1f} us per call, "
          f"{kept * 1e6:.1f} us per call in a with block")


if __name__ == "__main__":
    main()
