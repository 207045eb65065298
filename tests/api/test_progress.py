"""verbose messages, progress_bar and callback, for every backend kind."""
import io
import re
import sys
import threading
import types

import pytest
from helpers.common import ExecutorBackend, fail_on, square

from joblib_fast import Parallel, _progress, delayed

# The process backend is among the kinds tested here.
pytestmark = pytest.mark.usefixtures("process_helpers")


class MyError(Exception):
    pass


# Every way a call can run: (backend, n_jobs).
KINDS = {
    "threading": ("threading", 2),
    "sequential": ("sequential", 1),
    "n_jobs=1": ("threading", 1),
    "custom": (ExecutorBackend, 2),
    "processes": ("loky", 2),
}


def make_parallel(kind, **kwargs):
    backend, n_jobs = KINDS[kind]
    if isinstance(backend, type):
        backend = backend()
    return Parallel(n_jobs=n_jobs, backend=backend, **kwargs)


def consume(out, return_as):
    out = list(out)
    return sorted(out) if return_as == "generator_unordered" else out


LINE = re.compile(r"^\[Parallel\(n_jobs=\d+\)\]: ")


def done_lines(text):
    return [line for line in text.splitlines() if "Done" in line]


# --------------------------------------------------------------- verbose


@pytest.mark.parametrize("kind", KINDS)
def test_verbose_goes_to_stderr_in_joblib_format(kind, capsys):
    out = make_parallel(kind, verbose=5)(delayed(square)(i) for i in range(10))
    assert out == [i * i for i in range(10)]
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert lines and all(LINE.match(line) for line in lines)
    assert re.search(
        r"Done  10 out of  10 \| elapsed: +\d+\.\ds finished$", lines[-1])
    workers = KINDS[kind][1]
    using = [line for line in lines if "Using backend" in line]
    if workers > 1:
        assert len(using) == 1
        assert using[0].endswith(f"with {workers} concurrent workers.")
    else:
        assert using == []


def test_verbose_above_50_goes_to_stdout(capsys):
    make_parallel("threading", verbose=100)(
        delayed(square)(i) for i in range(5))
    captured = capsys.readouterr()
    assert captured.err == ""
    assert "Done   5 out of   5" in captured.out


def test_verbose_zero_is_silent(capsys):
    make_parallel("threading")(delayed(square)(i) for i in range(5))
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize("kind", KINDS)
def test_verbose_above_10_reports_every_task(kind, capsys):
    make_parallel(kind, verbose=11)(delayed(square)(i) for i in range(20))
    lines = done_lines(capsys.readouterr().err)
    counts = [int(re.search(r"Done +(\d+)", line).group(1)) for line in lines]
    # One line per task; the last one is the "finished" line (which may
    # repeat the last count when the runner could not know it was last).
    assert counts[:19] == list(range(1, 20))
    assert counts[-1] == 20 and lines[-1].endswith("finished")
    assert len(lines) in (20, 21)


def test_more_verbose_means_more_messages(capsys):
    counts = []
    for verbose in (1, 5, 10, 11):
        make_parallel("threading", verbose=verbose)(
            delayed(square)(i) for i in range(300))
        counts.append(len(done_lines(capsys.readouterr().err)))
    assert counts == sorted(counts)
    assert counts[0] < counts[-1] == 300
    assert counts[0] >= 2  # at least one progress line and the final one


def test_verbose_total_known_from_len(capsys):
    make_parallel("threading", verbose=11)(
        [delayed(square)(i) for i in range(12)])
    lines = done_lines(capsys.readouterr().err)
    # Counts are as wide as the known total, as in joblib.
    assert "Done  1 out of 12 | elapsed:" in lines[0]
    assert "remaining:" in lines[0]


def test_verbose_total_unknown_for_a_generator(capsys):
    make_parallel("sequential", verbose=11)(
        delayed(square)(i) for i in range(12))
    lines = done_lines(capsys.readouterr().err)
    assert re.search(r"Done   1 tasks +\| elapsed:", lines[0])
    assert "out of  12" in lines[-1]


def test_no_finished_line_after_an_error(capsys):
    with pytest.raises(MyError):
        make_parallel("threading", verbose=5)(
            delayed(fail_on)(i, 3, MyError) for i in range(10))
    assert "finished" not in capsys.readouterr().err


def test_parallel_print_hook_for_backends(capsys):
    Parallel(n_jobs=2, backend="threading", verbose=10)._print("hello")
    Parallel(n_jobs=2, backend="threading", verbose=0)._print("quiet")
    assert capsys.readouterr().err == "[Parallel(n_jobs=2)]: hello\n"


@pytest.mark.parametrize("seconds, text", [
    (0.04, "   0.0s"), (1.25, "   1.2s"), (59.0, "  59.0s"),
    (90.0, " 1.5min"), (7200.0, "120.0min")])
def test_format_elapsed(seconds, text):
    assert _progress.format_elapsed(seconds) == text


# ---------------------------------------------------------- progress bar


@pytest.fixture
def builtin_bar(monkeypatch):
    """Force the built-in bar (as when tqdm is not installed)."""
    monkeypatch.setattr(_progress, "_tqdm_class", lambda: None)


@pytest.fixture
def fake_tqdm(monkeypatch):
    """A stand-in tqdm module recording what the bar is told."""
    bars = []

    class FakeTqdm:
        def __init__(self, total=None, **kwargs):
            self.total = total
            self.n = 0
            self.closed = False
            self.kwargs = kwargs
            self.thread = threading.get_ident()
            bars.append(self)

        def update(self, n=1):
            assert not self.closed
            self.n += n

        def refresh(self):
            pass

        def close(self):
            self.closed = True

    auto = types.ModuleType("tqdm.auto")
    auto.tqdm = FakeTqdm
    package = types.ModuleType("tqdm")
    package.auto = auto
    monkeypatch.setitem(sys.modules, "tqdm", package)
    monkeypatch.setitem(sys.modules, "tqdm.auto", auto)
    return bars


@pytest.mark.parametrize("return_as",
                         ["list", "generator", "generator_unordered"])
@pytest.mark.parametrize("kind", KINDS)
def test_tqdm_bar_every_backend(kind, return_as, fake_tqdm):
    out = make_parallel(kind, progress_bar=True, return_as=return_as)(
        [delayed(square)(i) for i in range(25)])
    assert consume(out, return_as) == [i * i for i in range(25)]
    (bar,) = fake_tqdm
    assert bar.total == 25
    assert bar.n == 25
    assert bar.closed
    assert bar.thread == threading.get_ident()


@pytest.mark.parametrize("kind", KINDS)
def test_tqdm_bar_learns_the_total_of_a_generator(kind, fake_tqdm):
    make_parallel(kind, progress_bar=True)(
        delayed(square)(i) for i in range(30))
    (bar,) = fake_tqdm
    assert bar.n == 30 and bar.total == 30 and bar.closed


def test_tqdm_bar_closed_on_error_and_on_early_exit(fake_tqdm):
    with pytest.raises(MyError):
        make_parallel("threading", progress_bar=True)(
            delayed(fail_on)(i, 5, MyError) for i in range(50))
    gen = make_parallel("threading", progress_bar=True,
                        return_as="generator")(
        delayed(square)(i) for i in range(50))
    next(gen)
    gen.close()
    assert [bar.closed for bar in fake_tqdm] == [True, True]


@pytest.mark.parametrize("return_as", ["list", "generator"])
@pytest.mark.parametrize("kind", KINDS)
def test_builtin_bar_every_backend(kind, return_as, builtin_bar, capsys):
    out = make_parallel(kind, progress_bar=True, return_as=return_as)(
        delayed(square)(i) for i in range(40))
    assert list(out) == [i * i for i in range(40)]
    err = capsys.readouterr().err
    assert err.endswith("\n")
    final = err.rstrip("\n").split("\r")[-1]
    assert final.startswith("40/40 [")
    assert "100%" in final
    assert "tasks/s" in final and "ETA" in final


def test_builtin_bar_render():
    bar = _progress.TextBar(total=200, stream=io.StringIO())
    bar.n = 50
    line = bar.render(bar.start + 10.0)
    assert line.startswith("50/200 [######------------------]  25%")
    assert "5.0 tasks/s" in line and "ETA 00:30" in line
    bar.total = None
    assert bar.render(bar.start + 65.0).startswith("50 tasks | 0.8 tasks/s")
    assert "elapsed 01:05" in bar.render(bar.start + 65.0)
    bar.close()
    assert bar.stream.getvalue().endswith("\n")


def test_real_tqdm_when_installed(capsys, monkeypatch):
    tqdm = pytest.importorskip("tqdm")
    monkeypatch.setattr(tqdm.tqdm, "monitor_interval", 0)  # no monitor thread
    make_parallel("threading", progress_bar=True)(
        delayed(square)(i) for i in range(10))
    assert "10/10" in capsys.readouterr().err


# -------------------------------------------------------------- callback


@pytest.mark.parametrize("return_as",
                         ["list", "generator", "generator_unordered"])
@pytest.mark.parametrize("kind", KINDS)
def test_callback_gets_every_index_and_result_in_caller(kind, return_as):
    seen = []
    caller = threading.get_ident()

    def callback(index, result):
        seen.append((index, result, threading.get_ident()))

    out = make_parallel(kind, callback=callback, return_as=return_as)(
        delayed(square)(i) for i in range(33))
    assert consume(out, return_as) == [i * i for i in range(33)]
    assert sorted((i, r) for i, r, _ in seen) == [
        (i, i * i) for i in range(33)]
    assert {t for _, _, t in seen} == {caller}


def test_callback_runs_as_results_arrive_in_a_generator():
    seen = []
    gen = make_parallel("sequential", return_as="generator",
                        callback=lambda i, r: seen.append(i))(
        delayed(square)(i) for i in range(5))
    assert next(gen) == 0
    assert seen == [0]
    assert list(gen) == [1, 4, 9, 16]
    assert seen == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("kind", KINDS)
def test_callback_error_stops_the_call(kind):
    def callback(index, result):
        if index == 3:
            raise MyError("stop")

    with pytest.raises(MyError, match="stop"):
        make_parallel(kind, callback=callback, batch_size=1)(
            delayed(square)(i) for i in range(20))


def test_bad_callback():
    with pytest.raises(TypeError, match="callback"):
        Parallel(n_jobs=2, callback="print")


def test_everything_together(fake_tqdm, capsys):
    seen = []
    out = make_parallel("threading", verbose=11, progress_bar=True,
                        callback=lambda i, r: seen.append(i))(
        delayed(square)(i) for i in range(8))
    assert out == [i * i for i in range(8)]
    assert sorted(seen) == list(range(8))
    assert fake_tqdm[0].n == 8
    assert len(done_lines(capsys.readouterr().err)) == 8
