"""The import substitution that points joblib's own tests at joblib_fast.

A line-by-line rewrite of a joblib test module; test bodies are not
touched.  The rules, applied in this order:

0. Relative imports (``test_dask.py`` has them) are made absolute first:
   ``from .. import`` is ``from joblib import``, ``from ..mod import`` is
   ``from joblib.mod import``, ``from .mod import`` is ``from
   joblib.test.mod import`` (joblib's test helpers), except ``from
   .test_<name> import``: the rewritten ``test_<name>.py`` copied beside
   it (its helpers call ``Parallel``: they must call joblib_fast's).

1. ``from joblib import <names>``: the public parallel names (``Parallel``,
   ``delayed``, ``parallel_config``, ``parallel_backend``,
   ``register_parallel_backend``, ``ParallelBackendBase``, ``cpu_count``,
   ``effective_n_jobs``) are imported from ``joblib_fast``; the module
   ``parallel`` is ``joblib_fast.config`` (where joblib_fast keeps what
   the tests read or set there: ``DEFAULT_BACKEND``, ``BACKENDS``,
   ``get_active_backend``); any other name (``dump``, ``load``,
   ``hash``) still comes from joblib.  This also covers the scripts the
   tests run in a subprocess (they are strings in the module).
2. ``joblib.parallel``, ``joblib._parallel_backends`` and ``joblib._dask``
   (in ``from ... import`` lines and in attribute paths such as
   ``joblib._parallel_backends.LokyBackend``) become ``jf_compat``
   (``jf_compat.py``: those modules' names, made of joblib_fast's).
3. ``joblib.__file__`` becomes ``joblib_fast.__file__``: the subprocess
   scripts put the folder of the library under test first on ``sys.path``.
4. ``import joblib`` is followed by ``import joblib_fast, jf_compat`` (the
   names rules 2 and 3 introduce).

Everything else stays joblib's: ``joblib.test.common``, ``joblib.testing``,
``joblib._multiprocessing_helpers``, loky (``joblib.externals``),
``dump``/``load``/``hash``, ``joblib.test.test_parallel.check_memmap``.
"""
from __future__ import annotations

import re

PUBLIC_NAMES = frozenset({
    "Parallel", "delayed", "parallel_config", "parallel_backend",
    "register_parallel_backend", "ParallelBackendBase", "cpu_count",
    "effective_n_jobs",
})

_FROM_JOBLIB = re.compile(r"^(\s*)from joblib import ([\w, ]+?)\s*$")
_MODULES = re.compile(r"\bjoblib\.(parallel|_parallel_backends|_dask)\b")
_RELATIVE = re.compile(r"^(\s*)from (\.{1,2})([\w.]*) import (.*)$")
_IMPORT_JOBLIB = re.compile(r"^(\s*)import joblib\s*$")


def _split_from_joblib(indent: str, names: str) -> str:
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    fast = [n for n in wanted if n in PUBLIC_NAMES]
    kept = [n for n in wanted if n not in PUBLIC_NAMES and n != "parallel"]
    lines = []
    if kept:
        lines.append(f"{indent}from joblib import {', '.join(kept)}")
    if fast:
        lines.append(f"{indent}from joblib_fast import {', '.join(fast)}")
    if "parallel" in wanted:
        lines.append(f"{indent}from joblib_fast import config as parallel")
    return "\n".join(lines)


def _absolute(line: str) -> str:
    """Rule 0: a relative import of the ``joblib.test`` package made
    absolute (other lines unchanged)."""
    match = _RELATIVE.match(line)
    if match is None:
        return line
    indent, dots, module, names = match.groups()
    if dots == ".." and not module:
        target = "joblib"
    elif dots == "..":
        target = f"joblib.{module}"
    elif module.startswith("test_"):
        target = module
    else:
        target = f"joblib.test.{module}"
    return f"{indent}from {target} import {names}"


def substitute(source: str) -> str:
    """``source`` (a joblib test module) with its imports of joblib's
    parallel API pointed at joblib_fast."""
    out = []
    for line in source.splitlines():
        line = _absolute(line)
        match = _FROM_JOBLIB.match(line)
        if match:
            out.append(_split_from_joblib(*match.groups()))
            continue
        line = _MODULES.sub("jf_compat", line)
        line = line.replace("joblib.__file__", "joblib_fast.__file__")
        match = _IMPORT_JOBLIB.match(line)
        if match:
            line = f"{line}\n{match.group(1)}import jf_compat\n" \
                   f"{match.group(1)}import joblib_fast"
        out.append(line)
    return "\n".join(out) + "\n"
