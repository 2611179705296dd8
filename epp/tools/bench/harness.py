"""What every `epp bench` run shares: the machine description, child-process bookkeeping, clean exits.

`machine_info()` records what a result depends on (CPUs, CPU model, load average, Python, tool
versions). `Children` remembers every process a benchmark started (PIDs, and the process groups of
the rival routers) so that `run_async_main` can kill what is still running on the way out, whatever
happened: an exception (its traceback too with `EPP_BENCH_DEBUG=1`), Ctrl-C (exit 130) or SIGTERM
(exit 143). Only our own children are signalled,
by PID (a PID whose parent is no longer this process is left alone), and the rival routers' own
process groups.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Coroutine, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from epp.tools.procs import descendants, stat_fields

__all__ = [
    "Children",
    "cpu_seconds",
    "load_average",
    "machine_info",
    "run_async_main",
    "tidy_workdir",
    "tree_cpu_seconds",
    "write_report",
]

T = TypeVar("T")


def load_average() -> tuple[float, float, float]:
    try:
        return os.getloadavg()
    except OSError:
        return (0.0, 0.0, 0.0)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _envoy_version() -> str:
    try:
        from epp.tools.proxy.envoy_process import find_envoy

        out = subprocess.run([find_envoy(), "--version"], capture_output=True, text=True, timeout=20).stdout
    except Exception:  # a missing Envoy is reported where it is needed
        return "unknown"
    marker = "version: "
    line = next((x for x in out.splitlines() if marker in x), out.strip())
    return line.split(marker, 1)[-1].split("/")[1] if "/" in line else line.strip()


def machine_info(**extra: Any) -> dict[str, Any]:
    """The machine and software a result was measured on."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    return {
        "nproc": usable,
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "load_average": [round(x, 2) for x in load_average()],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "envoy": _envoy_version(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **extra,
    }


def tidy_workdir(workdir: Path, ok: bool, say: Callable[[str], None]) -> None:
    """Delete a benchmark's working directory after a clean run; after a failure keep it and say where."""
    if ok:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        say(f"logs kept in {workdir}")


def write_report(out_dir: Path, stem: str, doc: Mapping[str, Any], markdown: str) -> None:
    """Write `<stem>.json` and `<stem>.md` into `out_dir` and print the markdown and where it went."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.json").write_text(json.dumps(doc, indent=1) + "\n")
    (out_dir / f"{stem}.md").write_text(markdown)
    print()
    print(markdown)
    print(f"results in {out_dir}/ ({stem}.json, {stem}.md)")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (0.0 when it cannot be read)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process and all its descendants, including what the children
    they already reaped used (0.0 when the process cannot be read). Meant for differences over a window."""

    ticks = 0
    for p in descendants(pid):
        fields = stat_fields(p)
        if fields is not None:
            ticks += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def _parent_of(pid: int) -> int | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
    except OSError:
        return None
    if not fields or fields[0] == "Z":
        return None
    return int(fields[1])


class Children:
    """Processes this benchmark started: direct children by PID, rival routers by process group."""

    def __init__(self) -> None:
        self.pids: set[int] = set()
        self.groups: set[int] = set()

    def add(self, pids: Iterable[int]) -> None:
        self.pids.update(p for p in pids if p)

    def add_group(self, pgid: int) -> None:
        self.groups.add(pgid)

    def discard_group(self, pgid: int) -> None:
        """Forget a group once it is known to be empty (its id may be reused later)."""
        self.groups.discard(pgid)

    def kill_leftovers(self) -> list[int]:
        """SIGKILL what is still running; returns the PIDs / groups signalled."""
        killed: list[int] = []
        me = os.getpid()
        for pid in sorted(self.pids):
            if _parent_of(pid) == me:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
        for pgid in sorted(self.groups):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
                killed.append(-pgid)
        return killed


def run_async_main(
    prog: str, make: Callable[[Children], Coroutine[Any, Any, T]], children: Children | None = None
) -> tuple[int, T | None]:
    """Run `make(children)` under asyncio; returns (exit status, result).

    Status 0 with the result, 1 on an exception (printed), 130 on Ctrl-C, 143 on SIGTERM; children left
    running are killed in every case.
    """
    children = children if children is not None else Children()
    terminated: list[bool] = []

    async def main() -> T:
        task = asyncio.current_task()
        assert task is not None

        def on_term() -> None:
            terminated.append(True)
            task.cancel()

        with contextlib.suppress(NotImplementedError, RuntimeError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, on_term)
        return await make(children)

    try:
        return 0, asyncio.run(main())
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted; everything it started is stopped", file=sys.stderr)
        return 130, None
    except asyncio.CancelledError:
        if terminated:
            print(f"{prog}: terminated; everything it started is stopped", file=sys.stderr)
            return 143, None
        raise
    except Exception as exc:
        if os.environ.get("EPP_BENCH_DEBUG"):
            traceback.print_exc()
        print(f"{prog}: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1, None
    finally:
        children.kill_leftovers()
