"""pytest plugin loaded by the inner run: writes each test's outcome to the
JSON file named by ``JF_SUITE_OUTCOMES`` (``{nodeid: [outcome, message]}``,
outcome one of passed, failed, error, skipped, xfailed, xpassed)."""
import json
import os

_OUTCOMES = {}


def pytest_runtest_logreport(report):
    nodeid = report.nodeid
    if report.when == "call" or (report.when != "call" and not report.passed):
        if hasattr(report, "wasxfail"):
            outcome = "xfailed" if report.skipped else "xpassed"
        elif report.skipped:
            outcome = "skipped"
        elif report.failed:
            outcome = "failed" if report.when == "call" else "error"
        else:
            outcome = "passed"
        if nodeid in _OUTCOMES and _OUTCOMES[nodeid][0] != "passed":
            return  # keep the first problem (a teardown error after a failure)
        message = ""
        if report.failed:
            crash = getattr(report.longrepr, "reprcrash", None)
            message = crash.message if crash is not None else str(
                report.longrepr)
            message = message.strip().splitlines()[0][:300] if message else ""
        _OUTCOMES[nodeid] = [outcome, message]


def pytest_sessionfinish(session):
    path = os.environ.get("JF_SUITE_OUTCOMES")
    if path:
        with open(path, "w") as f:
            json.dump(_OUTCOMES, f, indent=0, sort_keys=True)
