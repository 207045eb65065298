#!/usr/bin/env python
"""joblib_fast side by side with its peers, in one process run.

Every workload runs the plain loop first, then each peer on the same tasks,
and prints the median time of the repeats and the speed-up over the loop
(``loop / peer``: above 1 is faster).  The machine is noisy: the ratios
measured side by side are the figures, never the absolute times.

    PYTHONPATH=. python benchmarks/bench.py --quick
    PYTHONPATH=. python benchmarks/bench.py --only noop,nogil10us --json out.json
    python benchmarks/bench.py --only pfor      # parallel_for vs prange, loop
    python benchmarks/bench.py --only gil_sweep # GIL-held share x task length

Pools are warm (created once, one warm-up call) unless the workload is
"cold": then pool creation is inside the timed region; pool teardown never
is (it happens after the results are back).  ``coldstart`` runs each peer
in a fresh interpreter so that nothing is warm.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import importlib
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_gil_sweep  # noqa: E402 - the folder of this script, first
import bench_pfor  # noqa: E402

MB = 1 << 20
# The parallel_for section (benchmarks/bench_pfor.py): its own table.
PFOR = "pfor"
# The GIL-share grid (benchmarks/bench_gil_sweep.py): its own table, only
# with --only (about a minute).
GIL_SWEEP = "gil_sweep"
SECTIONS = (PFOR, GIL_SWEEP)

# ------------------------------------------------------------------ tasks
# Defined at module top level so that process peers can pickle them.


def noop(x):
    return x


def on_result(index, result):
    """The callback of the progress rows: does nothing, so the row shows
    the cost of the per-task hook itself."""


def spin(n):
    """Pure-Python CPU work holding the GIL: ``n`` additions."""
    total = 0
    for i in range(n):
        total += i
    return total


def timed_spin(n):
    """``spin(n)``, returning ``(pid, start, end)`` in ``time.time()`` seconds
    (one clock for all processes)."""
    start = time.time()
    spin(n)
    return os.getpid(), start, time.time()


def array_sum(a):
    return float(a.sum())


def matmul_sum(a):
    """One BLAS call (``a @ a``), a float back (nothing large to return)."""
    return float((a @ a)[0, 0])


def fresh_array(n_floats):
    import numpy as np
    return np.ones(n_floats)


# ------------------------------------------------------------ calibration


def calibrate_spin(seconds: float) -> int:
    """``n`` such that ``spin(n)`` lasts about ``seconds`` here (best of 5)."""
    n = 1000
    while True:
        best = min(_duration(spin, n) for _ in range(5))
        if best > 5e-3:
            return max(1, int(n * seconds / best))
        n *= 4


def _duration(func: Callable, arg: Any) -> float:
    t0 = time.perf_counter()
    func(arg)
    return time.perf_counter() - t0


@dataclass
class Context:
    """Run-wide settings and the work sizes calibrated at startup."""

    quick: bool
    n_jobs: int
    repeats: int
    budget: float           # seconds of repeats per row before stopping early
    burn_k: dict[str, int] = field(default_factory=dict)
    spin_per_ms: int = 0

    @classmethod
    def calibrated(cls, quick: bool, n_jobs: int) -> Context:
        from joblib_fast._kernels import calibrate
        ctx = cls(quick=quick, n_jobs=n_jobs, repeats=3 if quick else 7,
                  budget=0.5 if quick else 5.0)
        for name, seconds in NOGIL_SIZES.items():
            ctx.burn_k[name] = calibrate(seconds)
        ctx.spin_per_ms = calibrate_spin(1e-3)
        return ctx


# -------------------------------------------------------- memory sampling


class TreeMemory:
    """Peak memory of this process and all its children, sampled by a
    background thread every ``interval`` seconds while the block runs.

    PSS (shared pages split between the processes sharing them) where the
    OS gives it, else RSS (which counts shared pages once per process).
    Alongside, the growth of the machine's shared memory (``Shmem`` in
    /proc/meminfo: tmpfs files such as memmap dumps, memfd segments such as
    joblib_fast's array results), which PSS only counts in the processes
    that touch the pages.
    """

    def __init__(self, interval: float = 0.01) -> None:
        import psutil
        self._psutil = psutil
        self._root = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name="bench-memory")
        self.metric = "PSS" if self._pss_works() else "RSS"
        self.baseline = 0
        self.peak = 0
        self.shm_baseline = self.shm_peak = self._shmem()

    @staticmethod
    def _shmem() -> int:
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("Shmem:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def _pss_works(self) -> bool:
        try:
            return self._root.memory_full_info().pss > 0
        except (AttributeError, self._psutil.AccessDenied):
            return False

    def sample(self) -> int:
        total = 0
        try:
            procs = [self._root] + self._root.children(recursive=True)
        except self._psutil.Error:
            procs = [self._root]
        for proc in procs:
            try:
                if self.metric == "PSS":
                    total += proc.memory_full_info().pss
                else:
                    total += proc.memory_info().rss
            except self._psutil.Error:
                pass   # a worker that exited between listing and reading
        return total

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak = max(self.peak, self.sample())
            self.shm_peak = max(self.shm_peak, self._shmem())

    def __enter__(self) -> None:
        self.baseline = self.peak = self.sample()
        self.shm_baseline = self.shm_peak = self._shmem()
        self._thread.start()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.sample())
        self.shm_peak = max(self.shm_peak, self._shmem())


# ------------------------------------------------------------------ peers
# A peer's ``open(n_jobs)`` is a context manager yielding ``run(func, items)``
# -> list of results, written the way that library's users write it.

Runner = Callable[[Callable, list], list]


def _chunksize(items: list, n_jobs: int) -> int:
    # Pool.map's own default (ceil(N / (4 * workers))), given explicitly so
    # that every chunked peer uses the same size.
    return max(1, len(items) // (4 * n_jobs))


@contextlib.contextmanager
def _open_loop(n_jobs: int):
    yield lambda func, items: [func(x) for x in items]


@contextlib.contextmanager
def _open_joblib_like(module: str, backend: str, n_jobs: int, **kwargs):
    lib = importlib.import_module(module)
    with lib.Parallel(n_jobs=n_jobs, backend=backend, **kwargs) as par:
        yield lambda func, items: par(lib.delayed(func)(x) for x in items)


@contextlib.contextmanager
def _open_joblib_on_fast(kind: str, n_jobs: int):
    """joblib.Parallel on joblib_fast's pools (issue 11): the process
    backend by its registered name, the thread backend as an instance
    (it is registered only as joblib's "threading")."""
    import joblib

    import joblib_fast
    from joblib_fast.joblib_backend import FastThreadingBackend
    backend = joblib_fast.register_joblib_backend() if kind == "processes" \
        else FastThreadingBackend()
    with joblib.Parallel(n_jobs=n_jobs, backend=backend) as par:
        yield lambda func, items: par(joblib.delayed(func)(x) for x in items)


@contextlib.contextmanager
def _open_executor(cls_name: str, n_jobs: int):
    import concurrent.futures
    cls = getattr(concurrent.futures, cls_name)
    with cls(max_workers=n_jobs) as ex:
        # ThreadPoolExecutor.map ignores chunksize (one future per item).
        yield lambda func, items: list(
            ex.map(func, items, chunksize=_chunksize(items, n_jobs)))


@contextlib.contextmanager
def _open_mp_pool(cls_name: str, n_jobs: int):
    import multiprocessing.pool
    with getattr(multiprocessing.pool, cls_name)(n_jobs) as pool:
        yield lambda func, items: pool.map(
            func, items, chunksize=_chunksize(items, n_jobs))


@contextlib.contextmanager
def _open_mpire(n_jobs: int):
    from mpire import WorkerPool
    with WorkerPool(n_jobs=n_jobs, keep_alive=True) as pool:
        yield lambda func, items: pool.map(
            func, items, chunk_size=_chunksize(items, n_jobs))


# One LocalCluster (2 worker processes, one thread each, on 127.0.0.1) for
# every dask peer of the run, started when first needed, closed at exit.
_DASK: dict[str, Any] = {}


def _dask_client(n_jobs: int):
    if "client" not in _DASK:
        import atexit

        from distributed import Client, LocalCluster
        cluster = LocalCluster(n_workers=n_jobs, threads_per_worker=1,
                               processes=True, host="127.0.0.1",
                               dashboard_address=None)
        _DASK["cluster"], _DASK["client"] = cluster, Client(cluster)

        def close() -> None:
            _DASK["client"].close()
            _DASK["cluster"].close()
        atexit.register(close)
    return _DASK["client"]


@contextlib.contextmanager
def _open_dask(module: str, n_jobs: int):
    lib = importlib.import_module(module)
    client = _dask_client(n_jobs)
    with lib.parallel_config(backend="dask", client=client):
        with lib.Parallel() as par:
            yield lambda func, items: par(lib.delayed(func)(x) for x in items)


def _reset_joblib_loky() -> None:
    """Shut joblib's reusable loky executor down so the next call is cold
    and its idle workers don't count in another peer's memory."""
    if "joblib" not in sys.modules:
        return
    from joblib.externals.loky import reusable_executor
    executor = reusable_executor._executor
    if executor is not None:
        executor.shutdown(wait=True, kill_workers=True)


def _reset_joblib_fast() -> None:
    """The same for joblib_fast's process-wide reusable pool."""
    processes = sys.modules.get("joblib_fast.backends.processes")
    if processes is not None:
        processes.shutdown_reusable_pools()


def reset_pools() -> None:
    """Leave no idle worker behind between peers (untimed)."""
    _reset_joblib_loky()
    _reset_joblib_fast()
    gc.collect()


@dataclass(frozen=True)
class Peer:
    name: str
    how: str                                        # the legend line
    open: Callable[[int], contextlib.AbstractContextManager[Runner]]
    modules: tuple[str, ...] = ()                   # imported before coldstart


PEERS: dict[str, Peer] = {peer.name: peer for peer in (
    Peer("loop", "[f(x) for x in items] in the caller", _open_loop),
    Peer("joblib_fast[threading]",
         "joblib_fast.Parallel(backend='threading'), delayed generator timed",
         partial(_open_joblib_like, "joblib_fast", "threading"),
         ("joblib_fast",)),
    Peer("joblib[threading]", "joblib.Parallel(backend='threading')",
         partial(_open_joblib_like, "joblib", "threading"), ("joblib",)),
    Peer("joblib->jf[threading]",
         "joblib.Parallel on joblib_fast's threads (register_joblib_backend)",
         partial(_open_joblib_on_fast, "threads"), ("joblib", "joblib_fast")),
    Peer("ThreadPoolExecutor", "concurrent.futures, ex.map (no chunking)",
         partial(_open_executor, "ThreadPoolExecutor"),
         ("concurrent.futures",)),
    Peer("mp.ThreadPool", "multiprocessing.pool.ThreadPool.map, chunked",
         partial(_open_mp_pool, "ThreadPool"), ("multiprocessing.pool",)),
    Peer("joblib_fast[loky]",
         "joblib_fast.Parallel(backend='loky'), its process backend",
         partial(_open_joblib_like, "joblib_fast", "loky"), ("joblib_fast",)),
    Peer("jf[loky] no mem guard",
         "joblib_fast[loky] with memory_growth_limit=None (the guard off)",
         partial(_open_joblib_like, "joblib_fast", "loky",
                 memory_growth_limit=None), ("joblib_fast",)),
    Peer("jf[threading]+bar",
         "joblib_fast[threading] with progress_bar=True (tqdm when installed)",
         partial(_open_joblib_like, "joblib_fast", "threading",
                 progress_bar=True), ("joblib_fast",)),
    Peer("jf[threading]+callback",
         "joblib_fast[threading] with callback= a no-op function",
         partial(_open_joblib_like, "joblib_fast", "threading",
                 callback=on_result), ("joblib_fast",)),
    Peer("jf[loky]+bar",
         "joblib_fast[loky] with progress_bar=True (tqdm when installed)",
         partial(_open_joblib_like, "joblib_fast", "loky",
                 progress_bar=True), ("joblib_fast",)),
    Peer("jf[loky]+callback",
         "joblib_fast[loky] with callback= a no-op function",
         partial(_open_joblib_like, "joblib_fast", "loky",
                 callback=on_result), ("joblib_fast",)),
    Peer("joblib[loky]", "joblib.Parallel(backend='loky')",
         partial(_open_joblib_like, "joblib", "loky"), ("joblib",)),
    Peer("joblib->jf[loky]",
         "joblib.Parallel on joblib_fast's processes (register_joblib_backend)",
         partial(_open_joblib_on_fast, "processes"), ("joblib", "joblib_fast")),
    Peer("joblib[multiprocessing]", "joblib.Parallel(backend='multiprocessing')",
         partial(_open_joblib_like, "joblib", "multiprocessing"), ("joblib",)),
    Peer("ProcessPoolExecutor", "concurrent.futures, ex.map chunked (fork)",
         partial(_open_executor, "ProcessPoolExecutor"),
         ("concurrent.futures",)),
    Peer("mp.Pool", "multiprocessing.Pool.map, chunked (fork)",
         partial(_open_mp_pool, "Pool"), ("multiprocessing.pool",)),
    Peer("mpire", "mpire.WorkerPool(keep_alive=True).map, chunked (fork)",
         _open_mpire, ("mpire",)),
    Peer("joblib_fast[dask]",
         "joblib_fast.Parallel, parallel_config(backend='dask'), LocalCluster "
         "of n_jobs worker processes x 1 thread",
         partial(_open_dask, "joblib_fast"), ("joblib_fast",)),
    Peer("joblib[dask]", "joblib.Parallel, parallel_config(backend='dask'), "
         "the same LocalCluster", partial(_open_dask, "joblib"), ("joblib",)),
)}

THREAD_PEERS = ("joblib_fast[threading]", "joblib[threading]",
                "joblib->jf[threading]",
                "ThreadPoolExecutor", "mp.ThreadPool")
PROCESS_PEERS = ("joblib_fast[loky]", "joblib[loky]", "joblib->jf[loky]",
                 "joblib[multiprocessing]",
                 "ProcessPoolExecutor", "mp.Pool", "mpire")
NUMPY_PEERS = ("joblib_fast[loky]", "joblib_fast[threading]", "joblib[loky]",
               "mp.Pool")
DASK_PEERS = ("joblib_fast[dask]", "joblib[dask]")


# -------------------------------------------------------------- workloads


@dataclass
class Prepared:
    func: Callable
    items: list
    label: str = ""          # shown after the workload name (sizes, etc.)


@dataclass(frozen=True)
class Workload:
    name: str
    peers: tuple[str, ...]
    n: tuple[int, int]                       # tasks: (full run, --quick)
    prepare: Callable[[Context, int], Prepared]
    mode: str = "warm"                       # "warm", "cold" or "subprocess"
    per_task: bool = False                   # report us per task over loop
    memory: bool = False                     # sample the process tree memory
    # peers too slow for the full N: peer -> (full run N, --quick N)
    reduced: dict[str, tuple[int, int]] = field(default_factory=dict)
    # a note on one call: (results, time.time() before/after, n_jobs) -> str
    probe: Callable[[list, tuple[float, float], int], str] | None = None
    digest: Callable[[list], Any] = list     # what must equal the loop's
    quick_repeats: int | None = None         # cap of repeats with --quick


NOGIL_SIZES = {"nogil3us": 3e-6, "nogil10us": 10e-6, "nogil100us": 100e-6,
               "nogil1ms": 1e-3}


def _prepare_noop(ctx: Context, n: int) -> Prepared:
    return Prepared(noop, list(range(n)))


def _prepare_sqrt(ctx: Context, n: int) -> Prepared:
    import math
    return Prepared(math.sqrt, list(range(n)), "math.sqrt")


def _prepare_nogil(name: str) -> Callable[[Context, int], Prepared]:
    def prepare(ctx: Context, n: int) -> Prepared:
        from joblib_fast._kernels import burn
        return Prepared(burn, [ctx.burn_k[name]] * n,
                        f"burn({ctx.burn_k[name]})")
    return prepare


def _prepare_py1ms(ctx: Context, n: int) -> Prepared:
    return Prepared(spin, [ctx.spin_per_ms] * n, f"spin({ctx.spin_per_ms})")


def _prepare_uneven(ctx: Context, n: int) -> Prepared:
    # Durations spread evenly in log scale over 0.1 ms .. 10 ms, shuffled.
    sizes = [int(ctx.spin_per_ms * 0.1 * 100 ** (i / (n - 1)))
             for i in range(n)]
    random.Random(0).shuffle(sizes)
    return Prepared(timed_spin, sizes, "0.1-10 ms mix")


def _array_floats(ctx: Context, full_mb: int, quick_mb: float) -> int:
    return int((quick_mb if ctx.quick else full_mb) * MB) // 8


def _prepare_bigarray_in(ctx: Context, n: int) -> Prepared:
    import numpy as np
    floats = _array_floats(ctx, 200, 50)
    array = np.random.default_rng(0).random(floats)
    return Prepared(array_sum, [array] * n,
                    f"one {array.nbytes / MB:.0f} MB array")


def _prepare_bigarray_out(ctx: Context, n: int) -> Prepared:
    floats = _array_floats(ctx, 50, 12.5)
    return Prepared(fresh_array, [floats] * n,
                    f"{floats * 8 / MB:.1f} MB arrays out")


def _prepare_blas(ctx: Context, n: int) -> Prepared:
    import numpy as np
    a = np.random.default_rng(0).random((300, 300))
    return Prepared(matmul_sum, [a] * n, "a @ a, 300x300 float64")


def _idle_at_end(results: list, wall: tuple[float, float], n_jobs: int) -> str:
    """Each worker's idle time between its last task's end and the call's
    end, as a share of the call's wall time."""
    start, end = wall
    last_end: dict[int, float] = {}
    for pid, _, task_end in results:
        last_end[pid] = max(last_end.get(pid, 0.0), task_end)
    idle = sorted((end - t) / (end - start) * 100 for t in last_end.values())
    shares = "/".join(f"{x:.1f}" for x in idle)
    return f"idle at end {shares} % ({len(last_end)} workers)"


def _shapes(results: list) -> list:
    return [getattr(r, "shape", r) for r in results]


def _count(results: list) -> int:
    return len(results)


WORKLOADS: dict[str, Workload] = {w.name: w for w in (
    # Issue 2: threads.
    Workload("noop", ("loop",) + THREAD_PEERS, (100_000, 100_000),
             _prepare_noop, per_task=True,
             reduced={"joblib[threading]": (100_000, 10_000),
                      "ThreadPoolExecutor": (100_000, 10_000)}),
    Workload("nogil3us", ("loop",) + THREAD_PEERS, (60_000, 15_000),
             _prepare_nogil("nogil3us"),
             reduced={"joblib[threading]": (10_000, 5_000),
                      "ThreadPoolExecutor": (10_000, 5_000)}),
    Workload("nogil10us", ("loop",) + THREAD_PEERS, (20_000, 5_000),
             _prepare_nogil("nogil10us")),
    Workload("nogil100us", ("loop",) + THREAD_PEERS, (4_000, 1_000),
             _prepare_nogil("nogil100us")),
    Workload("nogil1ms", ("loop",) + THREAD_PEERS, (400, 200),
             _prepare_nogil("nogil1ms")),
    # Issue 3: processes.
    Workload("noop_proc", ("loop", "joblib_fast[loky]",
                           "jf[loky] no mem guard") + PROCESS_PEERS[1:],
             (100_000, 100_000),
             _prepare_noop, per_task=True,
             reduced={"mpire": (100_000, 20_000)}),
    Workload("py1ms", ("loop",) + PROCESS_PEERS, (400, 200), _prepare_py1ms),
    Workload("py1ms_cold", ("loop",) + PROCESS_PEERS, (400, 200),
             _prepare_py1ms, mode="cold"),
    Workload("coldstart", ("loop",) + PROCESS_PEERS, (2, 2), _prepare_noop,
             mode="subprocess", quick_repeats=1),
    Workload("uneven", ("loop",) + PROCESS_PEERS, (300, 100), _prepare_uneven,
             probe=_idle_at_end, digest=_count),
    # The progress bar's and the callback's own cost: tiny tasks, each
    # peer beside the same backend without them.
    Workload("progress", ("loop", "joblib_fast[threading]",
                          "jf[threading]+bar", "jf[threading]+callback",
                          "joblib_fast[loky]", "jf[loky]+bar",
                          "jf[loky]+callback"),
             (1_000_000, 200_000), _prepare_sqrt, per_task=True),
    # Issue 5: numpy.
    Workload("bigarray_in", ("loop",) + NUMPY_PEERS, (8, 8),
             _prepare_bigarray_in, memory=True),
    Workload("bigarray_out", ("loop",) + NUMPY_PEERS, (8, 8),
             _prepare_bigarray_out, memory=True, digest=_shapes),
    # BLAS tasks: the loop runs with BLAS at its default thread count;
    # joblib_fast caps BLAS while its threads (or its processes) run.
    Workload("blas", ("loop", "joblib_fast[threading]", "joblib[threading]",
                      "joblib_fast[loky]", "joblib[loky]"), (300, 150),
             _prepare_blas),
    # Issue 12: dask.distributed (a LocalCluster of n_jobs workers).
    Workload("dask_trivial", ("loop",) + DASK_PEERS, (100, 100),
             _prepare_noop),
    Workload("dask_noop", ("loop",) + DASK_PEERS, (10_000, 10_000),
             _prepare_noop, per_task=True),
    Workload("dask_py1ms", ("loop",) + DASK_PEERS + ("joblib_fast[loky]",),
             (400, 200), _prepare_py1ms),
)}
# --only NAME for a group of workloads.
GROUPS = {"dask": ("dask_trivial", "dask_noop", "dask_py1ms")}
# Workloads that need an optional package: skipped, with a note, without it.
NEEDS = {name: "distributed" for name in GROUPS["dask"]}


# ----------------------------------------------------------------- timing


@dataclass
class Sample:
    """One timed call; the results are reduced at once to what the row needs
    so that they don't stay alive (and in the memory figures) later."""

    seconds: float
    digest: Any = None                     # work.digest(results)
    note: str = ""                         # work.probe(...)
    peak: int | None = None                # bytes, process tree
    baseline: int | None = None
    shm_growth: int | None = None          # bytes, machine's Shmem
    metric: str = ""
    import_s: float | None = None          # coldstart only


def timed(call: Callable[[], list], work: Workload, n_jobs: int) -> Sample:
    gc.collect()
    monitor = TreeMemory() if work.memory else None
    with monitor or contextlib.nullcontext():
        wall0 = time.time()
        t0 = time.perf_counter()
        results = call()
        seconds = time.perf_counter() - t0
        wall1 = time.time()
    sample = Sample(seconds, work.digest(results))
    if work.probe is not None:
        sample.note = work.probe(results, (wall0, wall1), n_jobs)
    if monitor is not None:
        sample.peak, sample.baseline = monitor.peak, monitor.baseline
        sample.shm_growth = monitor.shm_peak - monitor.shm_baseline
        sample.metric = monitor.metric
    return sample


def repeat(trial: Callable[[], Sample], ctx: Context) -> list[Sample]:
    """Up to ``ctx.repeats`` trials; stop early past ``ctx.budget`` seconds."""
    samples: list[Sample] = []
    start = time.perf_counter()
    while len(samples) < ctx.repeats:
        samples.append(trial())
        if time.perf_counter() - start > ctx.budget:
            break
    return samples


def measure_warm(peer: Peer, prep: Prepared, work: Workload,
                 ctx: Context) -> list[Sample]:
    with peer.open(ctx.n_jobs) as run:
        run(prep.func, prep.items[:ctx.n_jobs])      # warm-up: a task a worker
        return repeat(lambda: timed(lambda: run(prep.func, prep.items),
                                    work, ctx.n_jobs), ctx)


def _cold_trial(peer: Peer, prep: Prepared, work: Workload,
                n_jobs: int) -> Sample:
    reset_pools()
    with contextlib.ExitStack() as stack:
        def call() -> list:
            run = stack.enter_context(peer.open(n_jobs))
            return run(prep.func, prep.items)
        return timed(call, work, n_jobs)   # the pool shuts down after, untimed


def measure_cold(peer: Peer, prep: Prepared, work: Workload,
                 ctx: Context) -> list[Sample]:
    return repeat(lambda: _cold_trial(peer, prep, work, ctx.n_jobs), ctx)


class ChildFailed(Exception):
    """The coldstart child process reported an error or died."""


def measure_subprocess(peer: Peer, prep: Prepared, work: Workload,
                       ctx: Context) -> list[Sample]:
    def trial() -> Sample:
        cmd = [sys.executable, os.path.abspath(__file__), "--n-jobs",
               str(ctx.n_jobs), "--coldstart-child", peer.name]
        out = subprocess.run(cmd, capture_output=True, text=True,
                             timeout=300, check=False)
        lines = out.stdout.strip().splitlines()
        if out.returncode != 0 or not lines:
            tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
            raise ChildFailed(f"child exited {out.returncode}: {tail}")
        report = json.loads(lines[-1])
        if "error" in report:
            raise ChildFailed(report["error"])
        return Sample(report["seconds"], report["digest"],
                      import_s=report["import_s"])
    return repeat(trial, ctx)


def coldstart_child(peer_name: str, n_jobs: int) -> None:
    """In a fresh interpreter: import the peer's modules, then time the
    first call (pool creation included) of the coldstart tasks."""
    peer, work = PEERS[peer_name], WORKLOADS["coldstart"]
    try:
        t0 = time.perf_counter()
        for module in peer.modules:
            importlib.import_module(module)
        import_s = time.perf_counter() - t0
        prep = work.prepare(None, work.n[0])
        sample = _cold_trial(peer, prep, work, n_jobs)
        report = {"seconds": sample.seconds, "import_s": import_s,
                  "digest": sample.digest}
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        report = {"error": _describe(exc)}
    print(json.dumps(report), flush=True)


MEASURE = {"warm": measure_warm, "cold": measure_cold,
           "subprocess": measure_subprocess}


# ------------------------------------------------------------------- rows


@dataclass
class Row:
    workload: str
    label: str
    peer: str
    n: int
    reduced: bool
    loop_s: float | None = None
    seconds: float | None = None
    repeats: int = 0
    speedup: float | None = None
    us_per_task: float | None = None
    peak_mb: float | None = None
    delta_mb: float | None = None
    shm_mb: float | None = None
    memory_metric: str = ""
    note: str = ""
    error: str = ""


def _describe(exc: BaseException) -> str:
    text = str(exc) if isinstance(exc, ChildFailed) \
        else f"{type(exc).__name__}: {exc}"
    text = text.splitlines()[0] if text else type(exc).__name__
    return text if len(text) <= 110 else text[:107] + "..."


def run_workload(work: Workload, ctx: Context) -> list[Row]:
    """Each peer on the workload's tasks, beside the plain loop on the same
    tasks (re-timed for each reduced N).  The loop is timed before and after
    the peers, so that a slow drift of the machine's load hits both sides."""
    measure = MEASURE[work.mode]
    main_n = work.n[1] if ctx.quick else work.n[0]
    if ctx.quick and work.quick_repeats:
        ctx = dataclasses.replace(ctx, repeats=work.quick_repeats)
    preps: dict[int, Prepared] = {}
    loops: dict[int, list[Sample]] = {}
    outcomes: list[tuple[str, int, list[Sample] | str]] = []
    for name in work.peers:
        n = main_n
        if name in work.reduced:
            n = min(n, work.reduced[name][1 if ctx.quick else 0])
        if n not in preps:
            preps[n] = work.prepare(ctx, n)
            loops[n] = measure_warm(PEERS["loop"], preps[n], work, ctx)
        reset_pools()
        outcome: list[Sample] | str = loops[n]
        if name != "loop":
            try:
                outcome = measure(PEERS[name], preps[n], work, ctx)
                if outcome[-1].digest != loops[n][0].digest:
                    raise AssertionError("results differ from the loop's")
            except Exception as exc:  # noqa: BLE001 - a failing peer is a row
                outcome = _describe(exc)
        outcomes.append((name, n, outcome))
        shown = outcome if isinstance(outcome, str) else \
            _fmt_time(statistics.median(s.seconds for s in outcome))
        print(f"  {work.name:<13} {name:<24} {shown}", file=sys.stderr,
              flush=True)
    reset_pools()
    again = dataclasses.replace(ctx, repeats=max(1, ctx.repeats // 2))
    for n, prep in preps.items():
        loops[n].extend(measure_warm(PEERS["loop"], prep, work, again))
    return [_make_row(work, name, n, n != main_n, preps[n].label, loops[n],
                      outcome) for name, n, outcome in outcomes]


def _median(samples: list[Sample]) -> Sample:
    ordered = sorted(samples, key=lambda s: s.seconds)
    return ordered[(len(ordered) - 1) // 2]


def _make_row(work: Workload, peer: str, n: int, reduced: bool, label: str,
              loop: list[Sample], outcome: list[Sample] | str) -> Row:
    row = Row(work.name, label, peer, n, reduced,
              loop_s=statistics.median(s.seconds for s in loop))
    if isinstance(outcome, str):
        row.error = outcome
        return row
    row.seconds = statistics.median(s.seconds for s in outcome)
    row.repeats = len(outcome)
    if work.mode != "subprocess":
        row.speedup = row.loop_s / row.seconds
    if work.per_task:
        row.us_per_task = (row.seconds - row.loop_s) / n * 1e6
    notes = []
    if work.memory:
        row.peak_mb = max(s.peak for s in outcome) / MB
        row.delta_mb = max(s.peak - s.baseline for s in outcome) / MB
        row.memory_metric = outcome[0].metric
        row.shm_mb = max(s.shm_growth for s in outcome) / MB
        notes.append(f"peak {row.peak_mb:.0f} MB {row.memory_metric} "
                     f"(+{row.delta_mb:.0f}), shm +{row.shm_mb:.0f}")
    if work.probe is not None:
        notes.append(_median(outcome).note)
    if outcome[0].import_s is not None:
        import_s = statistics.median(s.import_s for s in outcome)
        notes.append(f"+ import {import_s * 1e3:.0f} ms")
    row.note = "; ".join(notes)
    return row


# ----------------------------------------------------------------- output


def _fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def _version(dist: str) -> str:
    import importlib.metadata
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine_info() -> dict[str, Any]:
    import psutil

    import joblib_fast
    # The copy actually imported (PYTHONPATH), and its git state.
    here = os.path.dirname(os.path.abspath(joblib_fast.__file__))
    commit = ""
    try:
        # Only a source checkout (the package at its repository's top): an
        # installed copy may sit inside some other repository (pyenv's).
        top = subprocess.run(
            ["git", "-C", here, "rev-parse", "--show-toplevel"],
            capture_output=True, text=True, timeout=10,
            check=False).stdout.strip()
        if top and os.path.samefile(top, os.path.dirname(here)):
            commit = subprocess.run(
                ["git", "-C", here, "describe", "--always", "--dirty"],
                capture_output=True, text=True, timeout=10,
                check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f
                      if line.startswith("model name")), "")
    return {
        "cpu": model or platform.processor(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_gb": round(psutil.virtual_memory().total / (1 << 30), 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "joblib_fast": f"{joblib_fast.__version__} from {here} "
                       + (f"(git {commit})" if commit else "(installed)"),
        "joblib": importlib.import_module("joblib").__version__,
        "numpy": importlib.import_module("numpy").__version__,
        "mpire": _version("mpire"),
        "psutil": psutil.__version__,
        "load_at_start": _load(),
    }


def _load() -> str:
    try:
        return ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def print_header(info: dict[str, Any], ctx: Context) -> None:
    print("joblib_fast benchmark" + (" (--quick)" if ctx.quick else ""))
    print(f"  cpu        {info['cpu']}: {info['logical_cpus']} logical, "
          f"{info['physical_cores']} physical, {info['usable_cpus']} usable; "
          f"{info['memory_gb']} GB")
    print(f"  python     {info['python']} on {info['platform']}")
    print(f"  versions   joblib_fast {info['joblib_fast']}, joblib "
          f"{info['joblib']}, numpy {info['numpy']}, mpire {info['mpire']}, "
          f"psutil {info['psutil']}")
    print(f"  load       {_load()} at the start (1, 5, 15 min averages: other "
          "work on the machine skews the ratios)")
    print(f"  n_jobs={ctx.n_jobs}; median of up to {ctx.repeats} repeats "
          f"(fewer once a row passes {ctx.budget:g} s)")
    sizes = ", ".join(f"{k}: burn({v})" for k, v in ctx.burn_k.items())
    print(f"  calibrated {sizes}; 1 ms pure Python = spin({ctx.spin_per_ms})")
    print()


COLUMNS = (("workload", 20), ("peer", 24), ("N", 8), ("loop", 9),
           ("time", 9), ("R", 2), ("speed-up", 8), ("us/task", 8))


def _line(cells: list[str]) -> str:
    return " ".join(f"{cell:<{width}}" if k < 2 else f"{cell:>{width}}"
                    for k, (cell, (_, width)) in enumerate(zip(cells, COLUMNS)))


def print_table(rows: list[Row]) -> None:
    """One block per workload: its name on the first row, its label (sizes)
    on the second."""
    head = _line([name for name, _ in COLUMNS])
    print(head + "  notes")
    print("-" * (len(head) + 24))
    position = 0
    for i, row in enumerate(rows):
        first = i == 0 or row.workload != rows[i - 1].workload
        position = 0 if first else position + 1
        if first and i:
            print()
        title = ""
        if position == 0:
            title = row.workload
        elif position == 1 and row.label:
            title = "  " + row.label
        cells = [
            title, row.peer, f"{row.n}{'*' if row.reduced else ''}",
            _fmt_time(row.loop_s),
            "n/a" if row.error else _fmt_time(row.seconds),
            str(row.repeats or ""),
            f"{row.speedup:.2f}x" if row.speedup is not None else "-",
            f"{row.us_per_task:.2f}" if row.us_per_task is not None else "",
        ]
        print(_line(cells) + "  " + (row.error or row.note))
    print()


def print_side_by_side(rows: list[Row], ours: str, theirs: str) -> None:
    """``theirs / ours`` time per workload where both ran (>1: ours faster)."""
    times = {(row.workload, row.peer): row.seconds for row in rows
             if row.seconds}
    for workload in dict.fromkeys(row.workload for row in rows):
        a, b = times.get((workload, ours)), times.get((workload, theirs))
        if a and b:
            print(f"  {workload}: {ours} is {b / a:.2f}x faster than {theirs}")


# The verdict's families: which workloads answer "which backend for this
# kind of work", and which peers are the standard library's.
FAMILIES = (
    ("threads: tasks that release the GIL",
     ("noop", "nogil3us", "nogil10us", "nogil100us", "nogil1ms")),
    ("processes: pure-Python tasks",
     ("noop_proc", "py1ms", "py1ms_cold", "uneven", "coldstart")),
    ("NumPy arrays", ("bigarray_in", "bigarray_out", "blas")),
    ("a dask cluster", ("dask_trivial", "dask_noop", "dask_py1ms")),
)
STDLIB_PEERS = ("ThreadPoolExecutor", "mp.ThreadPool", "ProcessPoolExecutor",
                "mp.Pool")
# Why a standard-library pool can beat joblib_fast on a workload, said
# where it does.
STDLIB_WINS = {
    "noop": "it maps a ready list of integers, with no delayed() tasks to "
            "make",
    "noop_proc": "it maps a ready list of integers (no delayed() tasks) on "
                 "fork workers, which need nothing pickled to start",
    "coldstart": "fork workers copy the parent instead of starting a fresh "
                 "interpreter (joblib_fast's default start method, "
                 "forkserver, is safe with threads but costs a start)",
    "py1ms_cold": "fork workers copy the parent instead of starting a fresh "
                  "interpreter",
}


def _score(row: Row) -> float | None:
    """Higher is better; comparable between the peers of one workload (the
    speed-up over the loop on the same N, else 1 / time)."""
    if row.error or not row.seconds:
        return None
    return row.speedup if row.speedup is not None else 1.0 / row.seconds


def _best(rows: list[Row], keep: Callable[[str], bool]) -> Row | None:
    scored = [r for r in rows if keep(r.peer) and _score(r) is not None]
    return max(scored, key=_score) if scored else None


def _summary(ratios: list[float]) -> str:
    """The geometric mean of per-workload ratios, and their range."""
    mean = f"{statistics.geometric_mean(ratios):.2f}x"
    if len(ratios) == 1:
        return f"{mean} (1 workload)"
    return f"{mean} ({min(ratios):.2f}x-{max(ratios):.2f}x over " \
           f"{len(ratios)} workloads)"


def print_verdict(rows: list[Row]) -> None:
    """Per family of workloads: the joblib_fast backend to use, and by how
    much it beats joblib and the standard library's best pool in this run
    (geometric mean of the per-workload ratios, and their range)."""
    lines = []
    for family, names in FAMILIES:
        ours, vs_joblib, vs_std, losses = {}, [], [], []
        for name in names:
            here = [r for r in rows if r.workload == name]
            jf = _best(here, lambda p: p.startswith("joblib_fast["))
            if jf is None:
                continue
            ours[jf.peer] = ours.get(jf.peer, 0) + 1
            jl = _best(here, lambda p: p.startswith("joblib["))
            std = _best(here, lambda p: p in STDLIB_PEERS)
            if jl is not None:
                vs_joblib.append(_score(jf) / _score(jl))
            if std is not None:
                ratio = _score(jf) / _score(std)
                vs_std.append(ratio)
                if ratio < 0.95:
                    losses.append(f"{name} ({std.peer} {1 / ratio:.2f}x "
                                  f"quicker: {STDLIB_WINS.get(name, 'see the table')})")
        if not ours:
            continue
        use = max(ours, key=ours.get)
        text = f"  {family}: use {use}"
        if vs_joblib:
            text += f"; {_summary(vs_joblib)} joblib's speed"
        if vs_std:
            text += f"; {_summary(vs_std)} the standard library's best pool's"
        lines.append(text)
        lines.extend(f"    slower than the standard library on {loss}"
                     for loss in losses)
    if lines:
        print("verdict (this run; above 1x: joblib_fast is faster):")
        print("\n".join(lines))
        print()


# The workloads of the plot: GIL-releasing tasks of these durations.
PLOT_DURATIONS = {"nogil3us": 3e-6, "nogil10us": 10e-6, "nogil100us": 100e-6,
                  "nogil1ms": 1e-3}


def write_plot(rows: list[Row], path: str, n_jobs: int,
               info: dict[str, Any]) -> None:
    """Speed-up over the plain loop against the task's duration, one line
    per peer, for the nogil workloads of ``rows``, written to ``path``."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    peers = dict.fromkeys(r.peer for r in rows
                          if r.workload in PLOT_DURATIONS and r.peer != "loop")
    for peer in peers:
        points = sorted((PLOT_DURATIONS[r.workload], r.speedup) for r in rows
                        if r.peer == peer and r.workload in PLOT_DURATIONS
                        and r.speedup is not None)
        if points:
            ax.plot(*zip(*points), marker="o", label=peer)
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.axhline(float(n_jobs), color="grey", linewidth=0.8, linestyle=":")
    ax.set_xscale("log")
    ax.set_xticks(list(PLOT_DURATIONS.values()),
                  ["3 us", "10 us", "100 us", "1 ms"])
    ax.set_xlabel("duration of one task (a GIL-releasing kernel)")
    ax.set_ylabel("speed-up over the plain loop")
    ax.set_title(f"n_jobs={n_jobs}, load {info.get('load_at_start', '?')} "
                 "at the start")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _blas_sizes() -> str:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "threadpoolctl not installed"
    return ", ".join(f"{i['internal_api']} {i.get('architecture', '')} "
                     f"{i['num_threads']} threads"
                     for i in threadpool_info() if i["user_api"] == "blas")


def print_legend(rows: list[Row], ctx: Context) -> None:
    print_side_by_side(rows, "joblib_fast[dask]", "joblib[dask]")
    used = list(dict.fromkeys(row.peer for row in rows))
    print("peers:")
    for name in used:
        print(f"  {name:<24} {PEERS[name].how}")
    print("notes:")
    print("  loop = the plain loop on the same N; speed-up = loop / time "
          "(>1 faster); R = repeats")
    print("  us/task = (time - loop) / N * 1e6: dispatch cost per task")
    print("  chunked maps use chunksize = N // (4 * n_jobs) "
          "(Pool.map's default)")
    if any(row.reduced for row in rows):
        print("  * reduced N for a slow peer; its loop is timed on the "
              "same N (compare us/task across N)")
    print("  cold / coldstart: pool creation timed, teardown not; "
          "coldstart = a fresh interpreter per repeat, imports not timed")
    if any(row.memory_metric for row in rows):
        print("  peak = whole process tree (parent + children) sampled "
              "every 10 ms; (+x) = over the start of the timed call")
        print("  shm = peak growth of the machine's shared memory (Shmem in "
              "/proc/meminfo: memmap dumps in /dev/shm, memfd results), "
              "which PSS counts only where a process touches the pages")
        print("  bigarray_in passes the same array object in every repeat: "
              "joblib reuses its memmap dump of it after the warm-up without "
              "checking its bytes (stale if the array changed); joblib_fast "
              "compares them before reusing its dump")
    if any(row.workload == "blas" for row in rows):
        print("  blas: the loop and joblib[threading] run with BLAS at its "
              f"default size ({_blas_sizes()}); joblib_fast caps it while "
              "its threads run; OPENBLAS_CORETYPE="
              f"{os.environ.get('OPENBLAS_CORETYPE', '(unset)')}")
    if ctx.quick:
        print("  --quick: fewer repeats, smaller N for the nogil/py/uneven "
              "workloads, 50 MB / 12.5 MB arrays for bigarray_in / _out")


# ------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer repeats and smaller sizes (< 1 minute)")
    parser.add_argument("--only", default="",
                        help="comma-separated workloads: "
                        + ",".join(list(WORKLOADS) + list(GROUPS)
                                   + list(SECTIONS)))
    parser.add_argument("--n-jobs", type=int, default=2)
    parser.add_argument("--json", metavar="FILE",
                        help="also write the results to FILE")
    parser.add_argument("--plot", metavar="FILE",
                        help="also draw the speed-up of each peer against "
                             "the task's duration (the nogil workloads) "
                             "to FILE, a PNG (needs matplotlib)")
    parser.add_argument("--coldstart-child", metavar="PEER",
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or \
        list(WORKLOADS) + [PFOR]
    names = [w for n in names for w in GROUPS.get(n, (n,))]
    unknown = [n for n in names if n not in WORKLOADS and n not in SECTIONS]
    if unknown:
        parser.error(f"unknown workload(s) {unknown}; choose from "
                     f"{', '.join(list(WORKLOADS) + list(SECTIONS))}")
    args.workloads = names
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.coldstart_child:
        coldstart_child(args.coldstart_child, args.n_jobs)
        return 0
    import importlib.util
    missing = sorted({NEEDS[n] for n in args.workloads if n in NEEDS
                      and importlib.util.find_spec(NEEDS[n]) is None})
    if missing:
        skipped = [n for n in args.workloads if NEEDS.get(n) in missing]
        print(f"note: skipping {', '.join(skipped)}: {', '.join(missing)} "
              "is not installed (pip install '.[bench]')")
        args.workloads = [n for n in args.workloads if n not in skipped]
        if not args.workloads:
            return 0
    started = time.perf_counter()
    ctx = Context.calibrated(args.quick, args.n_jobs)
    info = machine_info()
    print_header(info, ctx)
    rows: list[Row] = []
    pfor_rows: list[dict] = []
    sweep: dict = {}
    for name in args.workloads:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        if name == PFOR:
            pfor_rows = bench_pfor.run(ctx.n_jobs, ctx.quick)
        elif name == GIL_SWEEP:
            sweep = bench_gil_sweep.run(ctx.n_jobs, ctx.quick)
        else:
            rows.extend(run_workload(WORKLOADS[name], ctx))
        print(f"  ({time.perf_counter() - t0:.1f} s)", file=sys.stderr,
              flush=True)
    if rows:
        print_table(rows)
        print_legend(rows, ctx)
        print_verdict(rows)
    if pfor_rows:
        bench_pfor.print_rows(pfor_rows, ctx.n_jobs)
    if sweep:
        bench_gil_sweep.print_rows(sweep, ctx.n_jobs)
    elapsed = time.perf_counter() - started
    print(f"total run time {elapsed:.0f} s; load at the end {_load()}")
    if args.plot:
        write_plot(rows, args.plot, ctx.n_jobs, info)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "quick": ctx.quick,
                       "n_jobs": ctx.n_jobs, "repeats": ctx.repeats,
                       "calibration": {"burn": ctx.burn_k,
                                       "spin_per_ms": ctx.spin_per_ms},
                       "elapsed_s": elapsed, "load_at_end": _load(),
                       "rows": [row.__dict__ for row in rows],
                       "parallel_for": pfor_rows,
                       "gil_sweep": sweep}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
