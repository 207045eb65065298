"""Which OS mechanism each part of the process backend uses, chosen once.

=================  =================  ======================  ================
part               Linux              macOS / BSD             Windows
=================  =================  ======================  ================
``WIRE``           ``"fd"``           ``"fd"``                ``"connection"``
``SEGMENTS``       ``"memfd"``        ``"posix_shm"``         ``"named"``
``CONTROL``        ``"proc"``         ``"psutil"``            ``"psutil"``
``SHM_FOLDER``     ``/dev/shm``       None                    None
``POSIX_MMAP``     True               True                    False
``DELETE_MAPPED``  True               True                    False
``MAX_WORKERS``    None               None                    31
=================  =================  ======================  ================

* ``WIRE``: ``"fd"``: frames written with ``writev``/``readv`` on the
  pipe's descriptor, shared-memory descriptors passed with ``SCM_RIGHTS``;
  ``"connection"``: frames through ``Connection.send_bytes`` /
  ``recv_bytes_into`` (a named pipe on Windows), no descriptor passing.
* ``SEGMENTS`` (results in shared memory, ``shm``): ``"memfd"``:
  ``memfd_create``; ``"posix_shm"``: ``shm_open`` then ``shm_unlink`` at
  once (a descriptor with no name left), filled through ``mmap``; these
  two need the ``"fd"`` wire.  ``"named"``: a segment with a name that
  the reply carries, held by the worker until the parent has mapped it
  (``shm_named``; on Windows a pagefile-backed section, in the forced
  profile on Linux a POSIX ``shm_open`` name); any wire.  None: large
  results are pickled.
* ``CONTROL`` (``tree``: liveness, process trees, kill): ``"proc"``: the
  ``/proc`` file system and signals; ``"psutil"``: psutil (a dependency
  where this is chosen), never ``os.kill(pid, 0)``.
* ``SHM_FOLDER``: the RAM-backed folder input dumps go to by default.
* ``POSIX_MMAP``: dumps mapped with ``flags``/``prot`` (``MAP_POPULATE``),
  else with ``access=``.
* ``DELETE_MAPPED``: a mapped file can be deleted; where not, workers
  map an input dump per task instead of once per call.
* ``MAX_WORKERS``: the most workers one pool may have.  Windows waits on
  at most 63 handles at once and the parent waits on two per worker (its
  pipe and its process).

The test suite runs the portable paths on Linux with the environment
variable ``JOBLIB_FAST_PORTABLE`` (not a user setting): ``windows`` (or
``1``) takes every Windows choice that can run here (the connection wire,
named result segments through POSIX names, psutil, no /dev/shm for
dumps, ``access=`` mappings, dumps mapped per task, the worker cap),
``posix`` the macOS ones.  The Windows calls themselves (sections by
``tagname``, ``ACCESS_COPY`` views) have not run on Windows.  Read here only, at import.
"""
from __future__ import annotations

import mmap
import os
import sys

_FORCED = os.environ.get("JOBLIB_FAST_PORTABLE", "").strip().lower()
if _FORCED in ("", "0"):
    PROFILE = ("linux" if sys.platform.startswith("linux") else
               "windows" if sys.platform == "win32" else "posix")
elif _FORCED in ("1", "windows"):
    PROFILE = "windows"
elif _FORCED == "posix":
    PROFILE = "posix"
else:
    raise ValueError(
        f"JOBLIB_FAST_PORTABLE={_FORCED!r}: expected 0, 1, 'windows' or "
        "'posix' (a test setting that forces the portable mechanisms)")

# True when the portable mechanisms run on Linux for the tests.
FORCED = PROFILE != "linux" and sys.platform.startswith("linux")

WIRE = "connection" if PROFILE == "windows" else "fd"


def _segments() -> str | None:
    if PROFILE == "linux":
        return "memfd" if hasattr(os, "memfd_create") else None
    if PROFILE == "posix":
        return "posix_shm"
    return "named"


SEGMENTS = _segments()
CONTROL = "proc" if PROFILE == "linux" else "psutil"
SHM_FOLDER = "/dev/shm" if PROFILE == "linux" else None
# Input dumps mapped with mmap's POSIX arguments (flags, prot: MAP_SHARED,
# MAP_POPULATE), else with its portable access= (Windows has only that).
POSIX_MMAP = PROFILE != "windows" and hasattr(mmap, "MAP_SHARED")
# The OS deletes a file that is still mapped (its name goes, its pages stay
# with the mappings); Windows refuses (arrays_in defers the deletion, and
# workers do not keep dumps mapped between tasks there).
DELETE_MAPPED = PROFILE != "windows"

# WaitForMultipleObjects takes at most 64 handles; multiprocessing's wait
# keeps one for itself: 63 for the pipes and process handles, two a worker.
MAX_WAIT_HANDLES = 63
MAX_WORKERS = MAX_WAIT_HANDLES // 2 if PROFILE == "windows" else None


def describe() -> dict[str, object]:
    """The choices, for diagnostics and tests."""
    return {"profile": PROFILE, "forced": FORCED, "wire": WIRE,
            "segments": SEGMENTS, "control": CONTROL,
            "shm_folder": SHM_FOLDER, "posix_mmap": POSIX_MMAP,
            "delete_mapped": DELETE_MAPPED, "max_workers": MAX_WORKERS}
