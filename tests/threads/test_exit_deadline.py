"""A script whose threading call ended by a timeout or Ctrl-C while its
tasks are stuck exits soon after: the exit hook gives all the stuck pool
threads one shared deadline, not one each."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from helpers.common import subprocess_env, wait_until

N_JOBS = 8
# The exit hook's deadline is about 1 s; joining 8 stuck threads one after
# the other took about 8 s.  A structural bound with room for a loaded
# machine, not a speed figure.
EXIT_BOUND_SECONDS = 3.0
# Hang guard: the tasks sleep 60 s.
NO_HANG = 60.0

SCRIPT = textwrap.dedent("""
    import os, sys, time
    from joblib_fast import Parallel, delayed

    def task(folder, i):
        open(os.path.join(folder, f"started-{i}"), "w").close()
        time.sleep(60)

    how, folder, n_jobs = sys.argv[1], sys.argv[2], int(sys.argv[3])
    try:
        Parallel(n_jobs=n_jobs, backend="threading",
                 timeout=0.5 if how == "timeout" else None)(
            delayed(task)(folder, i) for i in range(n_jobs))
    except (TimeoutError, KeyboardInterrupt) as exc:
        # CLOCK_MONOTONIC is one clock for every process of the machine.
        print(type(exc).__name__, time.monotonic(), flush=True)
""")


def _run(tmp_path, how):
    path = tmp_path / "script.py"
    path.write_text(SCRIPT)
    folder = tmp_path / "marks"
    folder.mkdir()
    proc = subprocess.Popen(
        [sys.executable, str(path), how, str(folder), str(N_JOBS)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=subprocess_env())
    try:
        if how == "interrupt":
            assert wait_until(
                lambda: proc.poll() is not None
                or len(os.listdir(folder)) == N_JOBS, NO_HANG)
            proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=NO_HANG)
        exited = time.monotonic()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    name, ended = out.split()
    return name, exited - float(ended)


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("how,error", [("timeout", "ParallelTimeoutError"),
                                       ("interrupt", "KeyboardInterrupt")])
def test_exit_after_stuck_threads_is_bounded_by_one_deadline(
        tmp_path, how, error):
    name, lingered = _run(tmp_path, how)
    assert name == error
    assert lingered < EXIT_BOUND_SECONDS, (
        f"the process exited {lingered:.1f} s after the call ended")
