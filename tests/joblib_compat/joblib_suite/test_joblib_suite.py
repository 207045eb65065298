"""joblib's own tests of Parallel pass on joblib_fast.

One test: ``runner.py`` copies joblib's ``test_parallel.py`` and
``test_config.py`` from the installed joblib (pinned in the ``test`` extra),
points their imports at joblib_fast (``substitute.py``) and runs them in a
subprocess; this test fails when a test outside
``expected_failures.EXPECTED_FAILURES`` fails, or when too few pass.
"""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import runner

# joblib 1.6.0 passes 651 of these 669 tests on this machine; the issue
# asks for at least 600 on joblib_fast.
MIN_PASSED = 600


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


def test_substitution_is_imports_only():
    # The rewrite touches import lines and module paths only: every line it
    # changes mentions joblib, and test bodies are otherwise identical.
    import joblib
    from substitute import substitute
    path = os.path.join(os.path.dirname(joblib.__file__), "test",
                        "test_parallel.py")
    with open(path) as f:
        source = f.read()
    new = substitute(source)
    old_lines = source.splitlines()
    assert "from joblib_fast import" in new
    assert "from joblib.parallel import" not in new
    changed = [line for line in old_lines if line not in new.splitlines()]
    assert changed, "the substitution changed nothing"
    assert all("joblib" in line for line in changed), changed
