"""Run joblib's own tests against joblib_fast: two suites, ``parallel``
(``test_parallel.py`` and ``test_config.py``) and ``dask``
(``test_dask.py``).

A suite's modules are copied from the installed joblib (the version pinned
in the ``test`` extra) into a fresh folder, with the joblib test modules
they import from (rewritten the same way, not run), their imports rewritten
by :func:`substitute.substitute`, and pytest runs them in a subprocess with
``jf_compat.py``, ``outcomes_plugin.py`` and ``jf_dask_fixtures.py`` next
to them.  The outcome of every test is compared with
``expected_failures.EXPECTED_FAILURES``.

By hand (prints the outcomes by class and what fails unexpectedly)::

    python -P tests/joblib_compat/joblib_suite/runner.py [--suite dask] \
        [folder] [-- extra pytest args]
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
# suite -> (the modules pytest runs, the modules they import from).
SUITES = {
    "parallel": (("test_parallel.py", "test_config.py"), ()),
    "dask": (("test_dask.py",), ("test_parallel.py",)),
}
# Copied beside the modules: the names joblib's modules become, the outcome
# recorder, and the fixtures joblib's own conftest (not installed with
# joblib) gives test_dask.py.
SUPPORT = ("jf_compat.py", "outcomes_plugin.py", "jf_dask_fixtures.py")
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


def prepare(folder: str, suite: str = "parallel") -> None:
    """Write the rewritten modules of ``suite`` and their helpers into
    ``folder``."""
    import joblib
    if joblib.__version__ != JOBLIB_VERSION:
        raise RuntimeError(
            f"joblib {JOBLIB_VERSION} is needed (pip install '.[test]'), "
            f"found {joblib.__version__}")
    source_dir = os.path.join(os.path.dirname(joblib.__file__), "test")
    os.makedirs(folder, exist_ok=True)
    run_modules, imported = SUITES[suite]
    for name in run_modules + imported:
        with open(os.path.join(source_dir, name)) as f:
            text = substitute(f.read())
        with open(os.path.join(folder, name), "w") as f:
            f.write(text)
    for name in SUPPORT:
        shutil.copy(os.path.join(HERE, name), folder)
    with open(os.path.join(folder, "pytest.ini"), "w") as f:
        f.write(_PYTEST_INI)


def _remove_joblib_leftovers(root: str = "/dev/shm") -> None:
    """joblib's own loky executors, run by joblib's tests in the inner
    run, leave memmapping folders named after their (now gone) process,
    which joblib's resource tracker removes a few seconds later: the
    outer leak check would take them for ours.  Remove those whose
    process has exited."""
    try:
        names = os.listdir(root)
    except OSError:
        return
    for name in names:
        match = re.match(r"joblib_memmapping_folder_(\d+)_", name)
        if match is None:
            continue
        try:
            os.kill(int(match.group(1)), 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
        except OSError:
            pass  # alive under another user: not ours to remove


def run(folder: str, extra_args: tuple = (),
        suite: str = "parallel") -> dict[str, list[str]]:
    """Run the prepared modules of ``suite``; ``{nodeid: [outcome,
    message]}``."""
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
           "-p", "jf_dask_fixtures", "-p", "no:randomly",
           f"--timeout={PER_TEST_TIMEOUT}", "--timeout-method=thread",
           "--durations=10", *SUITES[suite][0], *extra_args]
    try:
        proc = subprocess.run(cmd, cwd=folder, env=env,
                              stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_joblib_leftovers()
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


def unused_patterns(outcomes: dict, suite: str = "parallel") -> list[str]:
    """Entries of the expected-failure list for the modules of ``suite``
    that match no test at all."""
    modules = SUITES[suite][0]
    return [p for p in EXPECTED_FAILURES
            if p.split("::")[0] in modules
            and not any(_matches(n, p) for n in outcomes)]


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
    suite = "parallel"
    if argv[:1] == ["--suite"]:
        suite, argv = argv[1], argv[2:]
    folder = argv[0] if argv else tempfile.mkdtemp(prefix="jf-joblib-suite-")
    prepare(folder, suite)
    outcomes = run(folder, tuple(extra), suite)
    print(json.dumps(summary(outcomes), indent=1))
    for nodeid, message in sorted(unexpected_failures(outcomes).items()):
        print(f"UNEXPECTED {nodeid}: {message}")
    for pattern in unused_patterns(outcomes, suite):
        print(f"UNUSED PATTERN {pattern}")
    print(f"outputs in {folder}")
    return 1 if unexpected_failures(outcomes) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
