"""Run joblib's own ``test_parallel.py`` and ``test_config.py`` against
joblib_fast.

The two modules are copied from the installed joblib (the version pinned in
the ``test`` extra) into a fresh folder, their imports rewritten by
:func:`substitute.substitute`, and pytest runs them in a subprocess with
``jf_compat.py`` and ``outcomes_plugin.py`` next to them.  The outcome of
every test is compared with ``expected_failures.EXPECTED_FAILURES``.

By hand (prints the outcomes by class and what fails unexpectedly)::

    python -P tests/joblib_compat/joblib_suite/runner.py [folder] [-- extra pytest args]
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from expected_failures import EXPECTED_FAILURES  # noqa: E402
from substitute import substitute  # noqa: E402

JOBLIB_VERSION = "1.6.0"
MODULES = ("test_parallel.py", "test_config.py")
# Seconds one joblib test may take before it counts as a failure (a hang
# must not eat the CI budget; joblib's slowest test here takes about 10 s).
PER_TEST_TIMEOUT = 60
FAILED = ("failed", "error")

_PYTEST_INI = """\
[pytest]
addopts = -p no:cacheprovider
markers =
    thread_unsafe: joblib's marker (not thread-safe tests)
    slow: slow test
"""


def prepare(folder: str) -> None:
    """Write the rewritten modules and their helpers into ``folder``."""
    import joblib
    if joblib.__version__ != JOBLIB_VERSION:
        raise RuntimeError(
            f"joblib {JOBLIB_VERSION} is needed (pip install '.[test]'), "
            f"found {joblib.__version__}")
    source_dir = os.path.join(os.path.dirname(joblib.__file__), "test")
    os.makedirs(folder, exist_ok=True)
    for name in MODULES:
        with open(os.path.join(source_dir, name)) as f:
            text = substitute(f.read())
        with open(os.path.join(folder, name), "w") as f:
            f.write(text)
    for name in ("jf_compat.py", "outcomes_plugin.py"):
        shutil.copy(os.path.join(HERE, name), folder)
    with open(os.path.join(folder, "pytest.ini"), "w") as f:
        f.write(_PYTEST_INI)


def run(folder: str, extra_args: tuple = ()) -> dict[str, list[str]]:
    """Run the prepared modules; ``{nodeid: [outcome, message]}``."""
    outcomes_path = os.path.join(folder, "outcomes.json")
    # The inner run's temp folder: short (a forkserver's socket path must
    # fit in 108 bytes) and removed afterwards.
    tmp = tempfile.mkdtemp(prefix="jfs")
    env = dict(os.environ)
    env.update(JF_SUITE_OUTCOMES=outcomes_path, TMPDIR=tmp,
               PYTHONPATH=os.pathsep.join(
                   [folder] + [p for p in [env.get("PYTHONPATH")] if p]))
    cmd = [sys.executable, "-P", "-m", "pytest", "-c", "pytest.ini",
           "--rootdir", folder, "-q", "-p", "outcomes_plugin",
           "-p", "no:randomly", f"--timeout={PER_TEST_TIMEOUT}",
           "--timeout-method=thread", "--durations=10", *MODULES,
           *extra_args]
    try:
        proc = subprocess.run(cmd, cwd=folder, env=env,
                              stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    with open(os.path.join(folder, "pytest_output.txt"), "w") as f:
        f.write(proc.stdout)
    if not os.path.exists(outcomes_path):
        raise RuntimeError(
            f"the joblib suite did not run (exit {proc.returncode}):\n"
            f"{proc.stdout[-3000:]}")
    with open(outcomes_path) as f:
        return json.load(f)


def _matches(nodeid: str, pattern: str) -> bool:
    """``*`` in ``pattern`` stands for any text; everything else, brackets
    of parametrized ids included, is literal."""
    regex = ".*".join(re.escape(part) for part in pattern.split("*"))
    return re.fullmatch(regex, nodeid) is not None


def expected_reason(nodeid: str) -> str | None:
    """The reason ``nodeid`` may fail, or None when it must not."""
    for pattern, reason in EXPECTED_FAILURES.items():
        if _matches(nodeid, pattern):
            return reason
    return None


def unexpected_failures(outcomes: dict) -> dict[str, str]:
    return {nodeid: message for nodeid, (outcome, message) in outcomes.items()
            if outcome in FAILED and expected_reason(nodeid) is None}


def unused_patterns(outcomes: dict) -> list[str]:
    """Entries of the expected-failure list that match no test at all."""
    return [p for p in EXPECTED_FAILURES
            if not any(_matches(n, p) for n in outcomes)]


def summary(outcomes: dict) -> dict[str, int]:
    counts: dict[str, int] = {}
    for outcome, _ in outcomes.values():
        counts[outcome] = counts.get(outcome, 0) + 1
    expected = sum(1 for n, (o, _) in outcomes.items()
                   if o in FAILED and expected_reason(n) is not None)
    counts["expected failures that failed"] = expected
    return counts


def main(argv: list[str]) -> int:
    extra: list[str] = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1:]
        argv = argv[:argv.index("--")]
    folder = argv[0] if argv else tempfile.mkdtemp(prefix="jf-joblib-suite-")
    prepare(folder)
    outcomes = run(folder, tuple(extra))
    print(json.dumps(summary(outcomes), indent=1))
    for nodeid, message in sorted(unexpected_failures(outcomes).items()):
        print(f"UNEXPECTED {nodeid}: {message}")
    for pattern in unused_patterns(outcomes):
        print(f"UNUSED PATTERN {pattern}")
    print(f"outputs in {folder}")
    return 1 if unexpected_failures(outcomes) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
