"""The parallel_for section of bench.py (``--only pfor``).

One loop body (a dependent floating-point chain per index, its length set
for 100 ns, 1 us or 10 us per index, or growing linearly with the index for
a triangular load of 1 us on average) run four ways in one process run:

    serial     the plain C loop
    pfor       joblib_fast's parallel_for (C API, from a Cython module)
    prange     Cython's prange (OpenMP; static schedule for even work,
               guided for the triangle), when the module builds with
               -fopenmp, else a note
    threading  Parallel(backend="threading") over 4 * n_jobs chunks, each a
               nogil call of the same body

A fifth load calls short loops back to back (200 calls of 100 us each, as
an iterative method does): per call, serial, parallel_for and prange.  Then
the cost of a call of an empty body.  Last, a body that calls BLAS (one
200 x 200 ``dgemm`` per index, pfor_blas.pyx, where SciPy is installed):
the serial loop with BLAS at its default thread count against
parallel_for, whose n_jobs threads each get cpu_count() // n_jobs BLAS
threads while it runs.

The kernels (pfor_kernels.pyx) are compiled at the start, in a temporary
folder, against the installed joblib_fast: the build recipe of
docs/user_guide/parallel_for.md.
Repeats are interleaved (serial, pfor, prange, threading, serial, ...) so
that a noisy neighbour hits every peer alike; the medians are reported.
"""
from __future__ import annotations

import importlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from array import array
from functools import partial

HERE = os.path.dirname(os.path.abspath(__file__))

SETUP = textwrap.dedent("""
    import joblib_fast
    from Cython.Build import cythonize
    from setuptools import Extension, setup

    flags = {flags!r}
    setup(ext_modules=cythonize([Extension(
        "{module}", ["{module}.pyx"],
        include_dirs=[joblib_fast.get_include()],
        extra_compile_args=["-O2"] + flags, extra_link_args=flags)],
        language_level=3, quiet=True),
        script_args=["build_ext", "--inplace"])
""")

# Total serial time of one measurement of each load (seconds).
TARGET_SECONDS = 0.04


def build(folder: str, module: str = "pfor_kernels",
          flag_choices=(["-fopenmp"], [])):
    """Compile benchmarks/<module>.pyx in `folder` and import it; with the
    first flags that build (OpenMP when it builds)."""
    shutil.copy(os.path.join(HERE, f"{module}.pyx"), folder)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    errors = []
    for flags in flag_choices:
        with open(os.path.join(folder, "setup.py"), "w") as f:
            f.write(SETUP.format(flags=flags, module=module))
        proc = subprocess.run([sys.executable, "setup.py"], cwd=folder,
                              env=env, capture_output=True, text=True,
                              check=False)
        if proc.returncode == 0:
            if folder not in sys.path:
                sys.path.insert(0, folder)
            return importlib.import_module(module), flags
        errors.append(proc.stderr[-2000:])
    raise RuntimeError(f"building benchmarks/{module}.pyx failed:\n"
                       + "\n".join(errors))


# The BLAS body: matrices of this size, this many per measurement.
GEMM_N = 200
GEMM_COUNT = 64
GEMM_CALLS = 8      # timed calls in a row of each peer, per round


def blas_rows(folder: str, n_jobs: int, repeats: int) -> list[dict]:
    """The "BLAS body" load (no row, and a note, without SciPy)."""
    try:
        import numpy as np
        import scipy.linalg  # noqa: F401 - its cython_blas is the kernel's
    except ImportError:
        print("note: NumPy or SciPy is not installed: no BLAS body row")
        return []
    blas, _ = build(folder, "pfor_blas", ([],))
    n = GEMM_N
    a = np.random.default_rng(0).random(n * n)
    c = np.zeros(GEMM_COUNT * n * n)

    def warm(fn, *args):
        # OpenBLAS's threads spin for a while after a multithreaded call
        # before they sleep: a peer run right after the serial loop would
        # share the cores with them.  Each peer runs warm, several calls
        # in a row (the first two not timed): its median call.
        for _ in range(2):
            fn(*args)
        times = []
        for _ in range(GEMM_CALLS):
            t0 = time.perf_counter()
            fn(*args)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    peers = {"serial": partial(warm, blas.serial, a, c, n, GEMM_COUNT),
             "pfor": partial(warm, blas.pfor, a, c, n, GEMM_COUNT, n_jobs)}
    return measure("BLAS body", GEMM_COUNT, peers, max(repeats // 3, 3),
                   n_jobs)


def calibrate(kernels, seconds_per_index: float) -> int:
    """Steps of the chain that last `seconds_per_index` here."""
    out = array("d", bytes(8 * 2000))
    reps = 64
    while True:
        best = min(kernels.serial(out, reps, False) for _ in range(5))
        if best > 2e-3:
            break
        reps *= 2
    return max(1, round(reps * seconds_per_index * len(out) / best))


def measure(name: str, n: int, peers: dict, repeats: int,
            n_jobs: int = 2) -> list[dict]:
    """Rounds of every peer back to back (after a warm-up); a row each."""
    for peer in peers.values():
        peer()
    times = {p: [] for p in peers}
    for _ in range(repeats):
        for p, peer in peers.items():
            times[p].append(peer())
    rows = []
    for p in peers:
        # Each round runs every peer back to back: the ratio within a
        # round is the paired measurement.
        ratio = statistics.median(
            s / t for s, t in zip(times["serial"], times[p]))
        rows.append({"load": name, "n": n, "peer": p,
                     "seconds": statistics.median(times[p]),
                     "speedup": ratio,
                     "best": min(times["serial"]) / min(times[p]),
                     "vs_ideal": n_jobs / ratio})
    return rows


def run(n_jobs: int = 2, quick: bool = False) -> list[dict]:
    """Measure every load; return one row per (load, peer)."""
    from joblib_fast import Parallel, delayed

    # Many repeats: the best ones show the machine when it is quiet.
    repeats = 5 if quick else 15
    folder = tempfile.mkdtemp(prefix="pfor-bench-")
    try:
        kernels, flags = build(folder)
        rows = []
        with Parallel(n_jobs=n_jobs, backend="threading") as parallel:
            for name, per_index, tri in (("100ns", 100e-9, False),
                                         ("1us", 1e-6, False),
                                         ("10us", 10e-6, False),
                                         ("triangular 1us", 1e-6, True)):
                reps = calibrate(kernels, per_index)
                n = max(int(TARGET_SECONDS / per_index), 4 * n_jobs)
                if quick:
                    n //= 4
                out = array("d", bytes(8 * n))
                bounds = [n * k // (4 * n_jobs) for k in range(4 * n_jobs + 1)]

                def threading(out=out, reps=reps, tri=tri, bounds=bounds):
                    t0 = time.perf_counter()
                    parallel(delayed(kernels.chunk)(out, a, b, reps, tri)
                             for a, b in zip(bounds, bounds[1:]))
                    return time.perf_counter() - t0

                peers = {
                    "serial": partial(kernels.serial, out, reps, tri),
                    "pfor": partial(kernels.pfor, out, reps, tri, n_jobs),
                    "threading": threading,
                }
                if kernels.has_openmp():
                    peers["prange"] = partial(kernels.prange_loop, out, reps,
                                              tri, n_jobs)
                rows += measure(name, n, peers, repeats, n_jobs)
            # Short loops called back to back (an iterative method): 100 us
            # per call, 1,000 indices of 100 ns, the per-call time.
            reps = calibrate(kernels, 100e-9)
            out = array("d", bytes(8 * 1000))
            calls = 50 if quick else 200
            peers = {
                "serial": partial(kernels.calls_serial, out, reps, calls),
                "pfor": partial(kernels.calls_pfor, out, reps, calls, n_jobs),
            }
            if kernels.has_openmp():
                peers["prange"] = partial(kernels.calls_prange, out, reps,
                                          calls, n_jobs)
            rows += measure("short calls", 1000, peers, repeats, n_jobs)
            # Dispatch cost per call: an empty body over 1,000 indices.
            calls = 2000 if quick else 20000
            empty = {"pfor": partial(kernels.empty_pfor, calls, 1000, n_jobs)}
            if kernels.has_openmp():
                empty["prange"] = partial(kernels.empty_prange, calls, 1000,
                                          n_jobs)

            def empty_threading():
                k = 200
                t0 = time.perf_counter()
                for _ in range(k):
                    parallel(delayed(kernels.chunk)(out, 0, 0, 0, False)
                             for _ in range(n_jobs))
                return (time.perf_counter() - t0) / k

            empty["threading"] = empty_threading
            times = {p: [] for p in empty}
            for _ in range(repeats):
                for p, peer in empty.items():
                    times[p].append(peer())
            for p in empty:
                rows.append({"load": "empty body", "n": 1000, "peer": p,
                             "seconds": statistics.median(times[p]),
                             "best_seconds": min(times[p]),
                             "speedup": None, "vs_ideal": None})
        rows += blas_rows(folder, n_jobs, repeats)
        for row in rows:
            row["openmp"] = bool(flags)
        return rows
    finally:
        sys.path[:] = [p for p in sys.path if p != folder]
        shutil.rmtree(folder, ignore_errors=True)


def _prange_speedup(rows: list[dict], load: str) -> float:
    return next((r["speedup"] for r in rows if r["load"] == load
                 and r["peer"] == "prange" and r["speedup"] is not None),
                0.0)


# The project's targets for 2 workers: (what, is it met by this row).
TARGETS = {
    ("100ns", "pfor"): ("target >= 1.8x",
                        lambda row, rows: row["speedup"] >= 1.8),
    ("1us", "pfor"): ("target >= 1.9x and >= prange",
                      lambda row, rows: row["speedup"] >= 1.9
                      and row["speedup"] >= _prange_speedup(rows, "1us")),
    ("triangular 1us", "pfor"): ("target <= 1.3x ideal",
                                 lambda row, rows: row["vs_ideal"] <= 1.3),
    ("empty body", "pfor"): ("target <= 10 us",
                             lambda row, rows: row["seconds"] <= 10e-6),
    # n_jobs threads of BLAS at its default size would oversubscribe.
    ("BLAS body", "pfor"): ("target >= 1.0x (BLAS capped)",
                            lambda row, rows: row["speedup"] >= 1.0),
}


def target_status(row: dict, rows: list[dict], n_jobs: int) -> str:
    """The target of a row and whether this run meets it ("" when the row
    has none; the speed-up targets are set for 2 workers)."""
    target = TARGETS.get((row["load"], row["peer"]))
    if target is None or row["speedup"] is None and row["load"] != "empty body":
        return ""
    text, met = target
    if n_jobs != 2 and row["load"] != "empty body":
        return f"{text} (set for n_jobs=2: not checked)"
    return f"{text}: {'met' if met(row, rows) else 'NOT MET'}"


def print_rows(rows: list[dict], n_jobs: int) -> None:
    print(f"\nparallel_for (n_jobs={n_jobs}): speed-up over the serial C loop"
          " (median over rounds of serial / peer, measured back to back;"
          " 'best': fastest serial round / fastest peer round, what a quiet"
          " machine gives, noise when above n_jobs); time / ideal"
          " (serial / n_jobs); cost per call for the empty body (median,"
          " best)")
    if rows and not rows[0]["openmp"]:
        print("note: the kernels did not build with -fopenmp: no prange row")
    print(f"{'load':16} {'peer':10} {'median':>10} {'speed-up':>9} "
          f"{'/ideal':>7} {'best':>11}  ")

    def fmt(t):
        return f"{t * 1e6:.1f} us" if t < 1e-3 else f"{t * 1e3:.2f} ms"

    for row in rows:
        speed = ideal = best = ""
        if row["speedup"] is not None and row["peer"] != "serial":
            speed = f"{row['speedup']:.2f}x"
            ideal = f"{row['vs_ideal']:.2f}"
            best = f"{row['best']:.2f}x"
        if row["load"] == "empty body":
            best = fmt(row["best_seconds"])
        print(f"{row['load']:16} {row['peer']:10} {fmt(row['seconds']):>10} "
              f"{speed:>9} {ideal:>7} {best:>11}  "
              f"{target_status(row, rows, n_jobs)}")


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    print_rows(run(n), n)
