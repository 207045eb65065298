"""Diagnostics go to the "joblib_fast" logger (where an application can
filter or redirect them), not to a bare print: a failing per-thread
initializer, a failing callback of a batch pushed by joblib."""
from __future__ import annotations

import logging
import threading

import pytest
from helpers.common import square

from joblib_fast import Parallel, delayed


def _failing_initializer():
    raise RuntimeError("initializer failed on purpose")


def _errors(caplog):
    return [r for r in caplog.records
            if r.name == "joblib_fast" and r.levelno == logging.ERROR]


def test_failing_thread_initializer_is_logged(caplog, capfd):
    caplog.set_level(logging.ERROR, logger="joblib_fast")
    out = Parallel(n_jobs=2, backend="threading", batch_size=1,
                   initializer=_failing_initializer)(
        delayed(square)(i) for i in range(8))
    assert out == [i * i for i in range(8)]  # the threads still serve
    records = _errors(caplog)
    assert records, "nothing logged"
    for record in records:
        assert "initializer" in record.getMessage()
        assert record.exc_info[0] is RuntimeError
        assert "on purpose" in str(record.exc_info[1])
    # Through logging only: nothing printed beside it.
    assert "Traceback" not in capfd.readouterr().err


def test_failing_callback_of_a_pushed_batch_is_logged(caplog, capfd):
    pytest.importorskip("joblib")
    from joblib_fast.joblib_backend import FastThreadingBackend
    caplog.set_level(logging.ERROR, logger="joblib_fast")
    called = threading.Event()

    def callback(outcome):
        called.set()
        raise ValueError("callback failed on purpose")

    backend = FastThreadingBackend()
    backend.configure(n_jobs=2)
    try:
        outcome = backend.submit(lambda: [square(3)], callback=callback)
        assert outcome.get(timeout=30) == [9]
        assert called.wait(30)
        # The dispatcher goes on: a next batch runs.
        assert backend.submit(lambda: [square(4)]).get(timeout=30) == [16]
    finally:
        backend.terminate()
    records = _errors(caplog)
    assert len(records) == 1, records
    assert "callback" in records[0].getMessage()
    assert records[0].exc_info[0] is ValueError
    assert "Traceback" not in capfd.readouterr().err
