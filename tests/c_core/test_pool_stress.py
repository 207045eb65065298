"""The C core on its own: the scheduler's stress test, and the rule that
only src_c/jf_platform.h knows the platform.

pool_stress.c is compiled with this Python's C compiler and run natively
here; ci/cross_check.sh compiles it for macOS and Windows too and runs the
Windows build under Wine.
"""
from __future__ import annotations

import pathlib
import re
import shlex
import subprocess
import sysconfig

import pytest

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SRC_C = ROOT / "src_c"

# What only the platform header may name: OS headers and calls, compiler
# builtins, platform macros.
PLATFORM_WORDS = re.compile(
    r"pthread|sched_yield|clock_gettime|<unistd\.h>|<windows\.h>|Interlocked"
    r"|SRWLOCK|__atomic|__sync_|__thread\b|_Thread_local|__declspec"
    r"|\b_WIN32\b|__APPLE__|__linux__|__unix__|_MSC_VER|__builtin_ia32")


def test_only_the_platform_header_knows_the_platform():
    sources = [p for p in sorted(SRC_C.glob("*.[ch]"))
               if p.name != "jf_platform.h"]
    sources += sorted((ROOT / "joblib_fast").glob("*.p[xy][dx]"))
    assert len(sources) >= 5
    found = {}
    for path in sources:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if PLATFORM_WORDS.search(line) or "cimport posix" in line or \
                    "from posix" in line:
                found.setdefault(path.name, []).append((n, line.strip()))
    assert found == {}


@pytest.fixture(scope="module")
def pool_stress(tmp_path_factory):
    """pool_stress.c built with this Python's C compiler, warnings as
    errors (a failed build is an error, not a skip)."""
    cc = shlex.split(sysconfig.get_config_var("CC") or "cc")
    exe = tmp_path_factory.mktemp("pool-stress") / "pool_stress"
    build = subprocess.run(
        [*cc, "-O2", "-Wall", "-Wextra", "-Werror", "-pthread",
         f"-I{SRC_C}", str(HERE / "pool_stress.c"), "-o", str(exe)],
        capture_output=True, text=True, timeout=300, check=False)
    assert build.returncode == 0, build.stdout + build.stderr
    return exe


@pytest.mark.slow
def test_pool_stress_runs_natively(pool_stress):
    run = subprocess.run([str(pool_stress), "300"], capture_output=True,
                         text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert re.fullmatch(
        r"pool_stress: 3 callers x \d+ rounds on 3 threads \(5 started\): "
        r"\d+ queues, \d+ items and \d+ chunks run by pool threads, \d+ "
        r"steal rounds \(\d+ pieces taken\), \d+ failing ranges, \d+ "
        r"stopped; \d+ cap holds: ok\n",
        run.stdout), run.stdout


@pytest.mark.slow
def test_pool_stress_rejects_bad_rounds(pool_stress):
    """A clear usage error, so that a typo in CI does not pass as a run."""
    run = subprocess.run([str(pool_stress), "0"], capture_output=True,
                         text=True, timeout=60, check=False)
    assert run.returncode == 2 and "usage" in run.stderr
