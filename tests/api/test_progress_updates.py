"""The progress bar is updated per period, never per task: the number of
bar updates of a call is bounded by its duration (at most ten a second),
not by its number of tasks; the bar still ends at the exact count.  The
callback keeps its contract: every task, in the caller's thread."""
import math
import sys
import threading
import time
import types

import pytest

from joblib_fast import Parallel, _progress, delayed

N_TASKS = 200_000


@pytest.fixture
def counting_tqdm(monkeypatch):
    bars = []

    class CountingTqdm:
        def __init__(self, total=None, **kwargs):
            self.total = total
            self.n = 0
            self.updates = 0
            self.closed = False
            bars.append(self)

        def update(self, n=1):
            self.n += n
            self.updates += 1

        def refresh(self):
            pass

        def close(self):
            self.closed = True

    auto = types.ModuleType("tqdm.auto")
    auto.tqdm = CountingTqdm
    package = types.ModuleType("tqdm")
    package.auto = auto
    monkeypatch.setitem(sys.modules, "tqdm", package)
    monkeypatch.setitem(sys.modules, "tqdm.auto", auto)
    return bars


def _bound(seconds):
    # At most one update per period, the final flush, and one period of
    # slack for the rate-based clock reads.
    return math.ceil(seconds / _progress.BAR_UPDATE_SECONDS) + 2


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["threading", "loky", "sequential"])
@pytest.mark.parametrize("sized", [True, False])
def test_bar_updates_are_bounded_by_time_not_tasks(backend, sized,
                                                   counting_tqdm):
    tasks = (delayed(math.sqrt)(i) for i in range(N_TASKS))
    if sized:
        tasks = list(tasks)
    n_jobs = 1 if backend == "sequential" else 2
    start = time.monotonic()
    out = Parallel(n_jobs=n_jobs, backend=backend, progress_bar=True)(tasks)
    seconds = time.monotonic() - start
    assert len(out) == N_TASKS
    (bar,) = counting_tqdm
    assert bar.closed and bar.n == N_TASKS and bar.total == N_TASKS
    assert bar.updates <= _bound(seconds), (bar.updates, seconds)


def test_slow_tasks_still_update_the_bar(counting_tqdm):
    # 20 tasks of 20 ms on 2 threads: about 0.2 s, so more than one update
    # and never more than the bound.
    start = time.monotonic()
    Parallel(n_jobs=2, backend="threading", progress_bar=True, batch_size=1)(
        delayed(time.sleep)(0.02) for _ in range(20))
    seconds = time.monotonic() - start
    (bar,) = counting_tqdm
    assert bar.n == 20
    assert 1 <= bar.updates <= _bound(seconds)


def test_builtin_bar_updates_are_bounded_too(monkeypatch, capsys):
    monkeypatch.setattr(_progress, "_tqdm_class", lambda: None)
    updates = []
    real = _progress.TextBar.update

    def counting(self, n=1):
        updates.append(n)
        real(self, n)

    monkeypatch.setattr(_progress.TextBar, "update", counting)
    start = time.monotonic()
    Parallel(n_jobs=2, backend="threading", progress_bar=True)(
        delayed(math.sqrt)(i) for i in range(N_TASKS))
    seconds = time.monotonic() - start
    assert sum(updates) == N_TASKS
    assert len(updates) <= _bound(seconds)
    final = capsys.readouterr().err.rstrip("\n").split("\r")[-1]
    assert final.startswith(f"{N_TASKS}/{N_TASKS} [")


@pytest.mark.parametrize("backend", ["threading", "loky"])
def test_callback_alone_is_called_for_every_task_in_the_caller(backend):
    seen = []
    caller = threading.get_ident()

    def callback(index, result):
        seen.append((index, threading.get_ident()))

    Parallel(n_jobs=2, backend=backend, callback=callback)(
        delayed(math.sqrt)(i) for i in range(5000))
    assert sorted(i for i, _ in seen) == list(range(5000))
    assert {t for _, t in seen} == {caller}
