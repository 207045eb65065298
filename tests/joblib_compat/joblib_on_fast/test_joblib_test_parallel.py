"""joblib's own test module for ``Parallel`` (``joblib.test.test_parallel``,
shipped inside the installed joblib) run with joblib_fast's backends
registered under joblib's names (``register_joblib_backend(
replace_builtin=True)``, by the ``jf_joblib_plugin`` pytest plugin beside
this file): joblib's Parallel on joblib_fast's pools.

This is not ../joblib_suite (joblib's tests against joblib_fast's own
Parallel): here joblib's Parallel is the one under test, ours are the pools.

Every failure must be in ``EXPECTED_FAILURES``: tests that inspect joblib's
internals (backend classes, pool objects, batch statistics) or a behaviour
of joblib's loky that joblib_fast's pools do differently on purpose.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))

# test function -> (params it fails with, or None for all; why)
EXPECTED_FAILURES = {
    # Class identity: they assert that the active backend *is* joblib's
    # LokyBackend / ThreadingBackend / MultiprocessingBackend class, or its
    # class name; ours are FastProcessBackend / FastThreadingBackend.
    "test_backend_context_manager": (None, "asserts joblib's class"),
    "test_nested_backend_context_manager": (None, "asserts joblib's class"),
    "test_backend_hinting_and_constraints": (None, "asserts joblib's class"),
    "test_backend_hinting_and_constraints_with_custom_backends": (
        None, "asserts joblib's class names in verbose output"),
    "test_overwrite_default_backend": (None, "asserts joblib's class"),
    "test_nested_parallelism_limit": (None, "asserts joblib's class names"),
    # Pool objects and batch statistics of joblib's backends.
    "test_error_capture": (None, "reads backend._workers / _pool"),
    "test_backend_batch_statistics_reset": (
        None, "reads AutoBatchingMixin's _effective_batch_size"),
    "test_batching_auto_threading": (
        None, "asserts joblib's threading never batches; ours auto-batches "
        "(the 5x speed-up on small tasks)"),
    # loky shares one executor between Parallel objects: a collected
    # generator shuts it down and the next call raises "The executor
    # underlying Parallel has been shutdown"; joblib_fast's calls have
    # their own lease on the reusable pool, so the next call just works.
    "test_multiple_generator_call_separated_gc": (
        r"loky", "expects loky's shared-executor error"),
    # loky workers may start nested process pools; joblib_fast's workers
    # are daemonic (killed with the parent), so a nested process-backed
    # loop runs in place, with joblib's warning.
    "test_nested_parallel_warnings": (
        r"loky-loky-False", "nested processes run in place (warned)"),
    # The error text is loky's ("the task to send"); ours names the task.
    "test_parallel_pickling": (None, "matches loky's error message text"),
    # joblib 1.6's loky-only worker initializer (initializer=, initargs=):
    # joblib_fast's pools have none; the backend refuses it with a
    # TypeError saying so.
    "test_initializer_context": (r"loky|multiprocessing", "no initializer"),
    "test_initializer_parallel": (r"loky|multiprocessing", "no initializer"),
    "test_initializer_reused": (None, "no initializer"),
    "test_initializer_not_reused": (None, "no initializer"),
    # Parametrized over every registered name at import, "joblib_fast"
    # included; the test's own fixture then resets joblib's registry.
    "test_nested_loop": (r"joblib_fast", "registry reset by the test"),
}


def expected(test_id: str) -> bool:
    name, _, params = test_id.partition("[")
    if name not in EXPECTED_FAILURES:
        return False
    pattern = EXPECTED_FAILURES[name][0]
    return pattern is None or re.search(pattern, params) is not None


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_joblib_test_parallel_on_joblib_fast(tmp_path):
    report = tmp_path / "report.xml"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [HERE] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    proc = subprocess.run(
        [sys.executable, "-P", "-m", "pytest", "-p", "jf_joblib_plugin",
         "--pyargs", "joblib.test.test_parallel", "-q", "-p",
         "no:cacheprovider", "--timeout", "120", "--junitxml", str(report),
         "-o", "junit_family=xunit1"],
        cwd=tmp_path, env=env, capture_output=True, text=True)
    assert report.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    failed, passed = [], 0
    for case in ET.parse(report).getroot().iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(case.get("name"))
        elif case.find("skipped") is None:
            passed += 1
    unexpected = sorted(t for t in failed if not expected(t))
    assert not unexpected, (
        f"{len(unexpected)} unexpected failures of joblib's test_parallel on "
        f"joblib_fast's backends: {unexpected}\n" + proc.stdout[-5000:])
    # The run really ran joblib's tests (on joblib_fast: the plugin ran).
    assert passed > 500, proc.stdout[-3000:]
    assert "joblib_fast backends registered" in proc.stdout
