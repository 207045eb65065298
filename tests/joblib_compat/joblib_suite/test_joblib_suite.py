"""joblib's own tests of Parallel and of its dask backend pass on
joblib_fast.

One test per suite: ``runner.py`` copies joblib's ``test_parallel.py`` and
``test_config.py`` (the "parallel" suite), or ``test_dask.py`` (the "dask"
suite), from the installed joblib (pinned in the ``test`` extra), points
their imports at joblib_fast (``substitute.py``) and runs them in a
subprocess; the test fails when a test outside
``expected_failures.EXPECTED_FAILURES`` fails, or when too few pass.
"""
import os
import re
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import runner

# joblib 1.6.0 passes 651 of these 669 tests on this machine; the issue
# asks for at least 600 on joblib_fast.
MIN_PASSED = 600
# The tests of joblib 1.6.0's test_dask.py (with parametrizations).
DASK_TESTS = 36


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_joblib_own_parallel_tests(tmp_path):
    folder = str(tmp_path / "joblib_suite")
    runner.prepare(folder)
    outcomes = runner.run(folder)
    counts = runner.summary(outcomes)
    unexpected = runner.unexpected_failures(outcomes)
    assert not unexpected, (
        f"{len(unexpected)} joblib tests failed that are not in "
        "expected_failures.py:\n" + "\n".join(
            f"{nodeid}: {message}" for nodeid, message in
            sorted(unexpected.items())) + f"\n(outcomes: {counts})")
    assert counts.get("passed", 0) >= MIN_PASSED, counts
    unused = runner.unused_patterns(outcomes)
    assert not unused, f"expected-failure entries that match no test: {unused}"


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_joblib_own_dask_tests(tmp_path):
    pytest.importorskip("distributed")   # in the test extra: runs in CI
    folder = str(tmp_path / "joblib_dask_suite")
    runner.prepare(folder, "dask")
    outcomes = runner.run(folder, suite="dask")
    counts = runner.summary(outcomes)
    unexpected = runner.unexpected_failures(outcomes)
    assert not unexpected, (
        f"{len(unexpected)} joblib dask tests failed that are not in "
        "expected_failures.py:\n" + "\n".join(
            f"{nodeid}: {message}" for nodeid, message in
            sorted(unexpected.items())) + f"\n(outcomes: {counts})")
    # Every test ran (none skipped) and all but the listed ones passed.
    assert len(outcomes) == DASK_TESTS, counts
    assert counts.get("passed", 0) + counts["expected failures that failed"] \
        == DASK_TESTS, counts
    unused = runner.unused_patterns(outcomes, "dask")
    assert not unused, f"expected-failure entries that match no test: {unused}"


# A changed line is an import (relative imports name no joblib) or names
# a joblib module path.
_IMPORT = re.compile(r"^\s*(from \S+ import |import )")


@pytest.mark.parametrize("module", ["test_parallel.py", "test_dask.py"])
def test_substitution_is_imports_only(module):
    # The rewrite touches import lines and module paths only: every line it
    # changes is an import or mentions joblib, and test bodies are
    # otherwise identical.
    import joblib
    from substitute import substitute
    path = os.path.join(os.path.dirname(joblib.__file__), "test", module)
    with open(path) as f:
        source = f.read()
    new = substitute(source)
    old_lines = source.splitlines()
    assert "from joblib_fast import" in new
    assert "from joblib.parallel import" not in new
    assert not re.search(r"^\s*from \.", new, re.MULTILINE)
    changed = [line for line in old_lines if line not in new.splitlines()]
    assert changed, "the substitution changed nothing"
    assert all("joblib" in line or _IMPORT.match(line) for line in changed), \
        changed
    assert len(new.splitlines()) - len(old_lines) <= 2 * len(changed)
