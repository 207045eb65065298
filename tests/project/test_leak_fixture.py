"""The autouse leak fixture of conftest.py really catches leaks.

A small test file that leaks on purpose runs in a separate pytest process
with the suite's conftest.py (and the helpers package it imports) and a
short grace period.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
import uuid

import pytest

import joblib_fast

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LEAKY_TESTS = textwrap.dedent('''
    import os, subprocess, tempfile, threading, time
    import pytest

    def test_clean():
        t = threading.Thread(target=time.sleep, args=(0.05,))
        t.start()
        t.join()

    def test_short_thread_ends_within_grace():
        threading.Thread(target=time.sleep, args=(0.1,), daemon=True).start()

    def test_leaks_thread():
        threading.Thread(target=time.sleep, args=(3,), daemon=True).start()

    def test_leaks_process():
        subprocess.Popen(["sleep", "3"])

    def test_leaks_temp_file():
        open(os.path.join(tempfile.gettempdir(), "joblib_leaky_file"),
             "w").close()

    def test_leaks_shm_file():
        token = os.environ["JF_LEAKY_TOKEN"]
        open(f"/dev/shm/joblib_leaky_{token}_{os.getpid()}", "w").close()

    def test_unrelated_temp_file_is_fine():
        open(os.path.join(tempfile.gettempdir(), "unrelated"), "w").close()

    @pytest.mark.allow_leaks("threads")
    def test_opted_out():
        threading.Thread(target=time.sleep, args=(3,), daemon=True).start()
''')


@pytest.mark.slow
def test_leak_fixture_catches_each_kind(tmp_path):
    shutil.copy(os.path.join(TESTS, "conftest.py"), tmp_path / "conftest.py")
    shutil.copytree(os.path.join(TESTS, "helpers"), tmp_path / "helpers",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "test_leaky.py").write_text(LEAKY_TESTS)
    package_root = os.path.dirname(os.path.dirname(joblib_fast.__file__))
    token = uuid.uuid4().hex
    env = dict(os.environ, JF_TEST_LEAK_GRACE="0.4", PYTHONPATH=package_root,
               JF_LEAKY_TOKEN=token)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider",
         "--import-mode=importlib", "-p", "no:randomly", str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
        check=False)
    shm_leak = [n for n in os.listdir("/dev/shm")
                if n.startswith(f"joblib_leaky_{token}_")]
    for name in shm_leak:
        os.unlink(os.path.join("/dev/shm", name))
    report = proc.stdout + proc.stderr

    def teardown_error(test):
        assert re.search(rf"^PASSED \S*::{test}$", report, re.MULTILINE), \
            f"{test} did not run:\n{report}"
        found = re.search(rf"ERROR at teardown of {test} _+\n(.*)$", report,
                          re.MULTILINE)
        return found.group(1) if found else None

    for test in ("test_clean", "test_short_thread_ends_within_grace",
                 "test_unrelated_temp_file_is_fine", "test_opted_out"):
        assert teardown_error(test) is None, report
    for test, kind in (("test_leaks_thread", "threads"),
                       ("test_leaks_process", "processes"),
                       ("test_leaks_temp_file", "files"),
                       ("test_leaks_shm_file", "files")):
        error = teardown_error(test)
        assert error and "leaked" in error and repr(kind) in error, report
    assert len(shm_leak) == 1
