"""The parallel_for extension template (examples/parallel_for_extension)
is the one the user guide shows, and its documented install command
builds it in a new virtual environment.

The environment is made with ``venv`` and sees the packages of the
running interpreter (joblib_fast, Cython, setuptools, wheel) through a
``.pth`` file, with ``--no-index``: no package index is used.
"""
from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys
import sysconfig

import pytest
from helpers.common import TESTS_DIR, doc_blocks

ROOT = pathlib.Path(TESTS_DIR).resolve().parent
TEMPLATE = ROOT / "examples" / "parallel_for_extension"
GUIDE = "docs/user_guide/parallel_for.md"


def _guide_commands():
    (block,) = [b for b in doc_blocks(GUIDE, "bash")
                if "--no-build-isolation" in b]
    return [re.sub(r"\s+#.*$", "", line).strip()
            for line in block.strip().splitlines()]


def test_the_template_is_the_guide_example():
    (pyx,) = doc_blocks(GUIDE, "cython")
    assert (TEMPLATE / "mykernels.pyx").read_text() == pyx
    (setup,) = [b for b in doc_blocks(GUIDE) if b.startswith("# setup.py")]
    assert (TEMPLATE / "setup.py").read_text() == setup
    (toml,) = doc_blocks(GUIDE, "toml")
    assert (TEMPLATE / "pyproject.toml").read_text() == toml
    first, install, run = _guide_commands()
    assert first.startswith("pip install") and "[cython]" in first
    assert install == "pip install --no-build-isolation ./parallel_for_extension"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_documented_install_command_builds_it(tmp_path):
    env_dir = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True,
                   timeout=120)
    python = env_dir / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
         "['purelib'])"], check=True, capture_output=True, text=True,
        timeout=60).stdout.strip()
    # What the running interpreter sees (joblib_fast and the build tools).
    seen = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}
    seen |= {p for p in sys.path if p.endswith("-packages")}
    pathlib.Path(site, "parent_env.pth").write_text(
        "\n".join(sorted(seen)) + "\n")
    shutil.copytree(TEMPLATE, tmp_path / "parallel_for_extension")
    _, install, run = _guide_commands()
    bin_dir = str(env_dir / "bin")
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PIP_REQUIRE_VIRTUALENV")}
    env.update(PATH=bin_dir + os.pathsep + env["PATH"],
               VIRTUAL_ENV=str(env_dir), PIP_NO_INDEX="1",
               PIP_DISABLE_PIP_VERSION_CHECK="1")
    proc = subprocess.run(install, shell=True, cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    proc = subprocess.run(run, shell=True, cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[2. 2. 2.]"
    # Installed into the new environment, not the running one.
    assert list((env_dir / "lib").glob("python*/site-packages/mykernels*"))
