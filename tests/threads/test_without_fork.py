"""The threading layer where ``os`` has no ``register_at_fork`` (Windows):
the hooks it installs at first use are skipped, not an AttributeError.

Run in a fresh interpreter (the hooks are installed once per process),
with NumPy loaded so that the native thread caps are taken too.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

CODE = textwrap.dedent("""
    import os
    del os.register_at_fork
    import numpy  # loaded: the threads cap its BLAS pool while they run
    from joblib_fast import Parallel, delayed
    out = Parallel(n_jobs=2, backend="threading")(
        delayed(abs)(-i) for i in range(100))
    assert out == list(range(100)), out
    print("ok")
""")


def test_threading_runs_without_register_at_fork(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # Run outside the checkout: the installed package, never the sources.
    run = subprocess.run([sys.executable, "-c", CODE], cwd=tmp_path,
                         env=env, capture_output=True, text=True,
                         timeout=120, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.splitlines()[-1] == "ok"
