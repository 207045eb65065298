"""What the benchmark concludes: a verdict per family of workloads (the
backend to use, how it compares with joblib and the standard library,
and why a standard-library pool wins where it does), and whether each
parallel_for target is met.  On made-up rows: no benchmark is run."""
from __future__ import annotations

import importlib
import pathlib
import sys

import pytest
from helpers.common import TESTS_DIR

BENCHMARKS = pathlib.Path(TESTS_DIR).resolve().parent / "benchmarks"


@pytest.fixture
def bench():
    pytest.importorskip("psutil")
    saved = list(sys.path)
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("bench")
    finally:  # bench.py puts its folder on sys.path itself
        sys.path[:] = saved
        for name in ("bench", "bench_pfor", "bench_gil_sweep"):
            sys.modules.pop(name, None)


def _row(bench, workload, peer, speedup):
    return bench.Row(workload, "", peer, 1000, False, loop_s=1.0,
                     seconds=1.0 / speedup, speedup=speedup)


def test_verdict_names_the_backend_and_the_ratios(bench, capsys):
    rows = [_row(bench, "py1ms", "joblib_fast[loky]", 1.8),
            _row(bench, "py1ms", "joblib[loky]", 1.2),
            _row(bench, "py1ms", "ProcessPoolExecutor", 1.5),
            _row(bench, "noop_proc", "joblib_fast[loky]", 0.5),
            _row(bench, "noop_proc", "joblib[loky]", 0.1),
            _row(bench, "noop_proc", "mp.Pool", 2.0)]
    bench.print_verdict(rows)
    out = capsys.readouterr().out
    (line,) = [x for x in out.splitlines() if "processes" in x]
    assert "use joblib_fast[loky]" in line
    # joblib: 1.8 / 1.2 and 0.5 / 0.1; geometric mean of 1.5 and 5.
    assert "2.74x (1.50x-5.00x over 2 workloads) joblib's speed" in line
    assert "slower than the standard library on noop_proc (mp.Pool 4.00x " \
        "quicker: it maps a ready list" in out
    assert "py1ms (" not in out  # 1.8 / 1.5: not a loss


def test_pfor_targets_say_met_or_not(bench):
    pfor = bench.bench_pfor
    rows = [{"load": "1us", "peer": "prange", "speedup": 1.95,
             "vs_ideal": 1.03, "seconds": 1.0},
            {"load": "1us", "peer": "pfor", "speedup": 1.92,
             "vs_ideal": 1.04, "seconds": 1.0},
            {"load": "100ns", "peer": "pfor", "speedup": 1.85,
             "vs_ideal": 1.08, "seconds": 1.0},
            {"load": "empty body", "peer": "pfor", "speedup": None,
             "vs_ideal": None, "seconds": 12e-6}]
    status = [pfor.target_status(r, rows, 2) for r in rows]
    assert status[0] == ""
    assert status[1] == "target >= 1.9x and >= prange: NOT MET"
    assert status[2] == "target >= 1.8x: met"
    assert status[3] == "target <= 10 us: NOT MET"
    assert "not checked" in pfor.target_status(rows[2], rows, 4)


def test_plot_is_written(bench, tmp_path):
    pytest.importorskip("matplotlib")  # in the test extra: runs in CI
    rows = [_row(bench, name, peer, speedup)
            for name in bench.PLOT_DURATIONS
            for peer, speedup in (("joblib_fast[threading]", 1.9),
                                  ("joblib[threading]", 0.5))]
    path = tmp_path / "plot.png"
    bench.write_plot(rows, str(path), 2, {"load_at_start": "0.1"})
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_gil_sweep_says_which_cells_meet_the_target(bench, capsys):
    sweep = sys.modules["bench_gil_sweep"]
    grid = []
    for us in sweep.DURATIONS_US:
        for share in sweep.SHARES:
            # Every cell met but one: 3 us at 100 % reads 0.9x the loop.
            low = us == 3 and share == 1.0
            grid.append({"cell": f"{us} {share}", "us": us, "share": share,
                         "vs_loop": 0.9 if low else 1.5,
                         "vs_threadpool": 1.0, "threadpool_vs_loop": 1.5,
                         "generator_share": 0.06 if us == 3 else 0.01})
    wrapper = [{"cell": "3 us, wrapper", "vs_loop": 1.2,
                "vs_threadpool": 0.8, "threadpool_vs_loop": 1.5}]
    sweep.print_rows({"grid": grid, "wrapper": wrapper, "rounds": 9}, 2)
    out = capsys.readouterr().out
    assert "19 of 20 cells met" in out
    assert "0.90/1.00" in out
    assert "NOT met: 0.80 of ThreadPool" in out
    # What the generator alone costs, by duration (the bound for tasks
    # that hold the GIL throughout).
    assert "3 us 6.0%, 10 us 1.0%" in out
