"""Processes seen through `/proc`: a process with its descendants (the EPP and its workers), their memory
and open file descriptors. Linux only, as the benchmarks that read them."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path

__all__ = ["descendants", "open_fds", "rss_bytes", "stat_fields"]


def stat_fields(pid: int | str) -> list[str] | None:
    """`/proc/PID/stat` after the command name (field 3, the state, first); None when it cannot be read."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def descendants(pid: int) -> list[int]:
    """`pid` and every live process below it (empty when `pid` is gone)."""
    if stat_fields(pid) is None:
        return []
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = stat_fields(entry)
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(c for c in children.get(p, ()) if c != p)
    return out


def rss_bytes(pids: Sequence[int]) -> int:
    """Resident memory of `pids`, added up."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def open_fds(pids: Sequence[int]) -> int:
    """Open file descriptors of `pids`, added up."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += len(os.listdir(f"/proc/{pid}/fd"))
    return total
