"""Seeded fault injection: repeated calls inside one ``with
Parallel(...)`` block while workers, the fork server and the resource
tracker are SIGKILLed at random moments (``helpers/fault_run.py``, run in a child
process so that its stderr, shared with its workers, can be checked)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), "helpers", "fault_run.py")


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("seed", [13])
def test_random_kills_lose_nothing_and_leave_nothing(seed, tmp_path):
    proc = subprocess.run([sys.executable, SCRIPT, str(seed), "40"],
                          cwd=tmp_path, capture_output=True, text=True,
                          timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr == "", "printed on stderr:\n" + proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    *calls, last = report["outcomes"]
    killed_so_far = set()
    failed = 0
    for call in calls:
        killed_so_far |= {pid for _, pid in call["killed"]}
        assert call["consistent"], call  # nothing lost, doubled, reordered
        if call["error"] is None:
            assert call["yielded"] == 3000
            continue
        failed += 1
        assert call["error"].startswith(
            "joblib_fast.errors.TerminatedWorkerError: "), call
        named = re.search(r"\(pid (\d+)\)", call["error"])
        assert named and int(named.group(1)) in killed_so_far, call["error"]
        assert ("worker process" in call["error"]
                or "fork server" in call["error"]), call
    assert failed, "no kill landed during a call: the test tested nothing"
    assert report["final_ok"]
    before, after = report["before"], report["after"]
    # Only multiprocessing's fork server and resource tracker outlive the
    # block (as with joblib), each with its one pipe in this process.
    assert set(after["children"]) <= set(report["helpers"])
    assert after["threads"] == before["threads"]
    assert after["shm"] == before["shm"]
    assert after["fds"] <= before["fds"] + 2
