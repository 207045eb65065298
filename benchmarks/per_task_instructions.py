"""Instructions per task of the dispatch path, counted by callgrind.

    python benchmarks/per_task_instructions.py [--backend threading] [--tasks 50000]

Runs this script's ``--child`` mode twice under ``valgrind --tool=callgrind``
(``--tasks`` no-op tasks and 1,000 of them, inside one ``with Parallel``
block, after a warm-up call) and prints the difference divided by the task
count: the instructions one task costs, all threads included.  Unlike a
time, the count barely moves when the machine is busy, so two builds can be
compared on a noisy machine (run each twice: thread interleavings move it
by about 2 %).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys


def child(n: int, backend: str) -> None:
    from joblib_fast import Parallel, delayed
    with Parallel(n_jobs=2, backend=backend) as parallel:
        parallel(delayed(abs)(-i) for i in range(100))
        parallel(delayed(abs)(-i) for i in range(n))


def count(n: int, backend: str) -> int:
    out = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
         sys.executable, "-P", os.path.abspath(__file__),
         "--child", str(n), "--backend", backend],
        capture_output=True, text=True, check=True).stderr
    return int(re.search(r"Collected : (\d+)", out).group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="threading")
    parser.add_argument("--tasks", type=int, default=50_000)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child, args.backend)
        return 0
    base = count(1000, args.backend)
    full = count(1000 + args.tasks, args.backend)
    print(f"{args.backend}: {(full - base) / args.tasks:.0f} instructions "
          f"per no-op task ({args.tasks} tasks, callgrind)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
