"""How many CPUs this process may use: its affinity mask, bounded by a cgroup CPU quota."""

from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = ["MAX_AUTO_WORKERS", "cgroup_cpu_limit", "default_workers", "usable_cpus"]

#: `--workers 0` (auto) never starts more than this many workers.
MAX_AUTO_WORKERS = 8

_CGROUP = Path("/sys/fs/cgroup")


def cgroup_cpu_limit(root: Path = _CGROUP) -> float | None:
    """CPUs allowed by the cgroup quota (v2 `cpu.max`, else v1 `cpu.cfs_quota_us`); None = no quota."""
    try:
        quota, _, period = (root / "cpu.max").read_text().strip().partition(" ")
        if quota != "max" and period:
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def usable_cpus(root: Path = _CGROUP) -> int:
    """The CPUs in this process's affinity mask, fewer when a cgroup quota allows fewer (rounded up)."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        count = min(count, max(1, math.ceil(limit)))
    return max(1, count)


def default_workers(root: Path = _CGROUP) -> int:
    """What `--workers 0` means: the usable CPUs, at most `MAX_AUTO_WORKERS`."""
    return min(MAX_AUTO_WORKERS, usable_cpus(root))
