"""How many CPUs this process may use (what ``cpu_count`` reports).

The count is the smallest of: the machine's logical CPUs, the CPU affinity
of the process (``taskset``, container cpusets), the cgroup CPU bandwidth
quota (``docker --cpus``), rounded up, and the ``LOKY_MAX_CPU_COUNT``
environment variable, the same constraints joblib (through loky) applies.
"""
from __future__ import annotations

import math
import os

# cgroup v2, then v1 files holding the CPU bandwidth quota (module constants
# so that tests can point them at fake files).
CGROUP_V2_CPU_MAX = "/sys/fs/cgroup/cpu.max"
CGROUP_V1_QUOTA = "/sys/fs/cgroup/cpu/cpu.cfs_quota_us"
CGROUP_V1_PERIOD = "/sys/fs/cgroup/cpu/cpu.cfs_period_us"
SYS_CPU_DIR = "/sys/devices/system/cpu"


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def cgroup_cpu_limit() -> int | None:
    """CPUs allowed by the cgroup quota (rounded up), None when unlimited."""
    text = _read(CGROUP_V2_CPU_MAX)
    if text is not None:
        parts = text.split()
        if len(parts) == 2:
            if parts[0] == "max":
                return None
            return _quota_cpus(parts[0], parts[1])
        # A malformed v2 file: fall back to v1, as loky does.
    quota, period = _read(CGROUP_V1_QUOTA), _read(CGROUP_V1_PERIOD)
    if quota is None or period is None:
        return None
    return _quota_cpus(quota, period)


def _quota_cpus(quota: str, period: str) -> int | None:
    try:
        quota_us, period_us = int(quota), int(period)
    except ValueError:
        return None
    if quota_us <= 0 or period_us <= 0:
        return None  # a negative quota disables the limit
    return max(1, math.ceil(quota_us / period_us))


def allowed_cpus() -> set[int]:
    """The CPU ids this process may run on."""
    try:
        cpus = os.sched_getaffinity(0)
        if cpus:
            return set(cpus)
    except (AttributeError, OSError, NotImplementedError):
        pass
    return set(range(os.cpu_count() or 1))


def env_cpu_limit() -> int | None:
    """``LOKY_MAX_CPU_COUNT``, when set to a positive integer."""
    text = os.environ.get("LOKY_MAX_CPU_COUNT", "").strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return value if value > 0 else None


def physical_cores(cpus: set[int]) -> int | None:
    """Distinct (package, core) pairs among ``cpus``, from sysfs."""
    cores = set()
    for cpu in cpus:
        base = f"{SYS_CPU_DIR}/cpu{cpu}/topology/"
        core = _read(base + "core_id")
        package = _read(base + "physical_package_id")
        if core is None or package is None:
            return None
        cores.add((package, core))
    return len(cores) or None


def cpu_count(only_physical_cores: bool = False) -> int:
    """Number of CPUs this process may use; always at least 1.

    Parameters
    ----------
    only_physical_cores : bool, default=False
        Count each physical core once (ignore hyper-threads / SMT).  As in
        joblib this is not applied when the count is already limited by the
        affinity, the cgroup quota or ``LOKY_MAX_CPU_COUNT``, and the logical
        count is returned when the topology cannot be read.

    Examples
    --------
    >>> from joblib_fast import cpu_count
    >>> cpu_count() >= cpu_count(only_physical_cores=True) >= 1
    True
    """
    machine = os.cpu_count() or 1
    cpus = allowed_cpus()
    user = len(cpus)
    for limit in (cgroup_cpu_limit(), env_cpu_limit()):
        if limit is not None:
            user = min(user, limit)
    count = max(1, min(machine, user))
    if not only_physical_cores or user < machine:
        return count
    physical = physical_cores(cpus)
    return max(1, physical) if physical is not None else count
