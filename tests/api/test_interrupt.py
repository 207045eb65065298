"""Ctrl-C while tasks run: KeyboardInterrupt in the caller at once, and the
script exits without waiting for the running tasks."""
import os
import textwrap

import pytest
from helpers.common import interrupt_script

SCRIPT = textwrap.dedent("""
    import os, sys, time
    from joblib_fast import Parallel, delayed

    def task(i, folder):
        open(os.path.join(folder, f"started-{i}"), "w").close()
        time.sleep(120)       # far longer than the test waits
        return i

    try:
        out = Parallel(n_jobs=2, backend=sys.argv[2], return_as=sys.argv[3])(
            delayed(task)(i, sys.argv[1]) for i in range(4))
        list(out)          # a generator is consumed here
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        raise
""")

# A hang guard only: without the fix the script waits 120 s for its tasks.
NO_HANG = 30.0


@pytest.mark.slow
@pytest.mark.parametrize("return_as", ["list", "generator"])
@pytest.mark.parametrize("backend", ["threading", "loky"])
def test_ctrl_c_ends_the_script_without_waiting_for_tasks(
        tmp_path, backend, return_as):
    path = tmp_path / "script.py"
    path.write_text(SCRIPT)
    out, err, returncode = interrupt_script(
        path, [tmp_path, backend, return_as],
        lambda: len([n for n in os.listdir(tmp_path)
                     if n.startswith("started-")]) >= 2, NO_HANG)
    assert "interrupted" in out, err
    assert "KeyboardInterrupt" in err
    assert returncode != 0
