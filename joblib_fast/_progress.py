"""Progress of one Parallel call: verbose lines, a progress bar, a callback.

The compiled core (and the sequential runners) call ``on_result(index,
value)`` for every finished task, in the caller's thread, in completion
order; a :class:`Reporter` turns that into

- joblib-style ``verbose`` lines: ``[Parallel(n_jobs=2)]: Done  10 out of
  10 | elapsed:    0.1s finished``, on stderr, or on stdout from
  ``verbose >= 50`` (joblib's threshold); more often as ``verbose`` grows,
  every task above 10;
- a live progress bar (``progress_bar=True``): tqdm when it is installed, a
  one-line bar on stderr otherwise, with count, rate and ETA.  The total is
  known from ``len(iterable)`` or once the input is exhausted.  The bar is
  told of finished tasks at most ``1 / BAR_UPDATE_SECONDS`` times a
  second, never task by task: the per-task hook only counts, and reads the
  clock every ``_step`` tasks (about ten times per update period);
- the user's ``callback(index, value)``, per task as documented; alone, it
  is handed to the core as the hook itself (no frame of ours per task).

Everything here runs in the caller's thread, so no lock is needed.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Callable

# The built-in bar redraws at most this often (seconds): often enough to
# look live, rarely enough to cost nothing next to the tasks.
BAR_REDRAW_SECONDS = 0.1
# A bar (tqdm or ours) is updated at most this often (seconds), with the
# tasks finished since its last update.  Shorter looks livelier and costs
# a tqdm update (a few microseconds) more often; the per-task share is
# checked by `python benchmarks/bench.py --only progress`.
BAR_UPDATE_SECONDS = 0.1
# Clock reads per update period: the tasks between two reads follow the
# measured rate, so a slow call still updates about on time.
_CHECKS_PER_UPDATE = 10
BAR_WIDTH = 24


def format_elapsed(seconds: float) -> str:
    """``'   1.2s'`` below a minute, ``' 2.5min'`` above (joblib's layout)."""
    seconds = max(seconds, 0.0)
    if seconds > 60:
        return f"{seconds / 60:4.1f}min"
    return f" {seconds:5.1f}s"


def format_clock(seconds: float) -> str:
    """``'01:05'`` or ``'2:01:05'``."""
    seconds = int(max(seconds, 0.0) + 0.5)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{minutes:02d}:{secs:02d}"


def print_message(name: str, verbose: int, message: str) -> None:
    """Write ``[name]: message`` when ``verbose`` is non-zero."""
    if not verbose:
        return
    stream = sys.stdout if verbose >= 50 else sys.stderr
    stream.write(f"[{name}]: {message}\n")
    stream.flush()


def known_length(iterable: Any) -> int | None:
    """``len(iterable)`` when it has one, else None."""
    try:
        return len(iterable)
    except (TypeError, AttributeError, NotImplementedError):
        return None


class TextBar:
    """A one-line progress bar redrawn in place with ``\\r``.

    ``45/100 [#########-----------]  45% | 120.3 tasks/s | ETA 00:05``, or
    ``45 tasks | 120.3 tasks/s | elapsed 00:02`` while the total is unknown.
    """

    def __init__(self, total: int | None = None, stream: Any = None,
                 redraw_seconds: float = BAR_REDRAW_SECONDS) -> None:
        self.total = total
        self.n = 0
        self.stream = stream if stream is not None else sys.stderr
        self.redraw_seconds = redraw_seconds
        self.start = time.monotonic()
        self._last_draw = float("-inf")
        self._width = 0
        self.closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last_draw >= self.redraw_seconds:
            self._draw(now)

    def set_total(self, total: int) -> None:
        self.total = total

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._draw(time.monotonic())
        self.stream.write("\n")
        self.stream.flush()

    def render(self, now: float) -> str:
        elapsed = now - self.start
        rate = self.n / elapsed if elapsed > 0 else 0.0
        if self.total:
            frac = min(self.n / self.total, 1.0)
            fill = int(frac * BAR_WIDTH)
            bar = "#" * fill + "-" * (BAR_WIDTH - fill)
            eta = (self.total - self.n) / rate if rate > 0 else 0.0
            return (f"{self.n}/{self.total} [{bar}] {frac * 100:3.0f}% | "
                    f"{rate:.1f} tasks/s | ETA {format_clock(eta)}")
        return (f"{self.n} tasks | {rate:.1f} tasks/s | "
                f"elapsed {format_clock(elapsed)}")

    def _draw(self, now: float) -> None:
        self._last_draw = now
        line = self.render(now)
        pad = max(self._width - len(line), 0)
        self._width = len(line)
        self.stream.write("\r" + line + " " * pad)
        self.stream.flush()


class _TqdmBar:
    """tqdm behind the small interface of :class:`TextBar`."""

    def __init__(self, tqdm_class: Any, total: int | None) -> None:
        self.bar = tqdm_class(total=total, unit="task")

    def update(self, n: int = 1) -> None:
        self.bar.update(n)

    def set_total(self, total: int) -> None:
        self.bar.total = total
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def _tqdm_class() -> Any:
    """tqdm's auto class (notebook widget or text), or None."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm


def make_bar(total: int | None):
    tqdm_class = _tqdm_class()
    if tqdm_class is not None:
        return _TqdmBar(tqdm_class, total)
    return TextBar(total)


class Reporter:
    """Progress of one call (caller's thread only).

    ``watch(source)`` gives an object with ``n_tasks`` and ``exhausted``
    (the core's ``Call``) so the total is learnt when the input ends.
    """

    def __init__(self, name: str, verbose: int, progress_bar: bool,
                 callback: Callable[[int, Any], Any] | None,
                 total: int | None,
                 printer: Callable[[str], Any] | None = None) -> None:
        self.name = name
        self.verbose = verbose
        # Where verbose lines go: Parallel._print (a hook subclasses
        # override, as in joblib), else print_message.
        self.printer = printer
        self.callback = callback
        self.total = total
        self.width = len(str(total)) if total else 3
        self.done = 0
        self.source: Any = None
        self.start_time = time.monotonic()
        self._next_report = 1
        self.bar = make_bar(total) if progress_bar else None
        # Bar updates: tasks the bar was told of, when, and the count at
        # which the clock is read next (and the count and time of the last
        # read, for the rate).
        self._shown = 0
        self._shown_at = self._checked_at = self.start_time
        self._checked = 0
        self._next_check = 1
        # The per-task hook the core calls (see on_result), and with a bar
        # alone the per-batch one instead (on_batch: a count of tasks).
        self.on_batch: Callable[[int], Any] | None = None
        if callback is not None and not verbose and not progress_bar:
            self.on_result = callback
        elif progress_bar and not verbose and callback is None:
            self.on_result = self._count
            self.on_batch = self._count_batch

    # ------------------------------------------------------------ events

    def start(self, backend: Any, n_jobs: int) -> None:
        """Before the first task of a call that uses workers."""
        self._print(
            f"Using backend {type(backend).__name__} with {n_jobs} "
            "concurrent workers.")

    def watch(self, source: Any) -> None:
        self.source = source

    def _count(self, index: int, value: Any) -> None:
        """The hook with only a bar to feed: a count, and now and then a
        look at the clock."""
        self.done += 1
        if self.done >= self._next_check:
            self._tick()

    def _count_batch(self, n: int) -> None:
        """A bar alone, told of `n` more finished tasks by the core once
        per handful of batches (where a generator input ends too)."""
        self.done += n
        if self.done >= self._next_check:
            self._tick()

    def on_result(self, index: int, value: Any) -> None:
        """Called by the core for every finished task, in the caller's
        thread (the instance attribute of that name, when set, is a
        cheaper hook for the same work: see ``__init__``)."""
        self.done += 1
        if self.total is None and self.source is not None and \
                self.source.exhausted:
            self._learn_total(self.source.n_tasks)
        if self.bar is not None and self.done >= self._next_check:
            self._tick()
        if self.verbose and self.done >= self._next_report:
            self._next_report = self.done + self._report_step(self.done)
            if self.total is None or self.done < self.total:
                self._report_progress()
        if self.callback is not None:
            self.callback(index, value)

    def finish(self, error: BaseException | None = None) -> None:
        """After the call: final line and bar closed (also on error)."""
        if error is None:
            self._learn_total(self.done)
        if self.bar is not None:
            bar, self.bar = self.bar, None
            if self.done > self._shown:
                bar.update(self.done - self._shown)
            bar.close()
        if error is None:
            self._print(
                f"Done {self.done:{self.width}d} out of "
                f"{self.done:{self.width}d} | elapsed: "
                f"{format_elapsed(time.monotonic() - self.start_time)} "
                "finished")

    # ----------------------------------------------------------- helpers

    def _tick(self) -> None:
        """Read the clock: update the bar if its period has passed, and
        choose how many tasks until the next read from the rate."""
        now = time.monotonic()
        if self.total is None and self.source is not None and \
                self.source.exhausted:
            self._learn_total(self.source.n_tasks)
        if now - self._shown_at >= BAR_UPDATE_SECONDS:
            self.bar.update(self.done - self._shown)
            self._shown, self._shown_at = self.done, now
        elapsed = now - self._checked_at
        tasks = self.done - self._checked
        step = 1
        if elapsed > 0:
            step = int(tasks / elapsed * BAR_UPDATE_SECONDS
                       / _CHECKS_PER_UPDATE)
        self._checked, self._checked_at = self.done, now
        self._next_check = self.done + max(step, 1)

    def _learn_total(self, total: int) -> None:
        if self.total is None:
            self.total = total
            if self.bar is not None:
                self.bar.set_total(total)

    def _report_step(self, done: int) -> int:
        """Tasks until the next verbose line: 1 above verbose 10, else a
        gap growing with ``done`` and shrinking as ``verbose`` grows (about
        x3 per line at 1, +20% at 10)."""
        if self.verbose > 10:
            return 1
        return max(1, done * (11 - max(self.verbose, 1)) // 5)

    def _report_progress(self) -> None:
        elapsed = time.monotonic() - self.start_time
        w = self.width
        if self.total is None:
            pad = " " * (len("out of ") + w - len("tasks"))
            message = (f"Done {self.done:{w}d} tasks {pad}| elapsed: "
                       f"{format_elapsed(elapsed)}")
        else:
            remaining = elapsed / self.done * (self.total - self.done)
            message = (f"Done {self.done:{w}d} out of {self.total:{w}d} | "
                       f"elapsed: {format_elapsed(elapsed)} remaining: "
                       f"{format_elapsed(remaining)}")
        self._print(message)

    def _print(self, message: str) -> None:
        if not self.verbose:
            return
        if self.printer is not None:
            self.printer(message)
        else:
            print_message(self.name, self.verbose, message)


def make_reporter(name: str, verbose: int, progress_bar: bool,
                  callback: Callable[[int, Any], Any] | None,
                  iterable: Any,
                  printer: Callable[[str], Any] | None = None
                  ) -> Reporter | None:
    """A :class:`Reporter`, or None when nothing is to be reported (then
    the core runs without a per-task hook)."""
    if not verbose and not progress_bar and callback is None:
        return None
    return Reporter(name, verbose, progress_bar, callback,
                    known_length(iterable), printer)
