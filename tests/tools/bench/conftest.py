"""Fixtures for the benchmark tests: the rival routers (installed once into .cache/), process tracking."""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from epp.tools.bench.rivals import InstallError, ensure_tool


@pytest.fixture(scope="session")
def rivals_available() -> bool:
    """Install sglang-router and vllm-router (cached); False only when the package index is unreachable."""
    try:
        for name in ("sglang-router", "vllm-router"):
            ensure_tool(name, install=True)
    except InstallError as exc:
        if exc.offline:
            return False
        raise
    return True


@pytest.fixture
def marker() -> Iterator[str]:
    """A unique environment marker: every process a benchmark starts inherits it.

    Whatever still carries it after the test (a benchmark killed by its timeout leaves its simulators,
    Envoy and routers orphaned) is stopped, so that it does not load the rest of the suite.
    """
    mark = f"epp-bench-test-{uuid.uuid4().hex}"
    yield mark
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in marked_pids(mark):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 5
        while marked_pids(mark) and time.monotonic() < deadline:
            time.sleep(0.05)


def marked_pids(marker: str) -> list[int]:
    """Live processes whose environment carries `marker` (i.e. started by the benchmark under test)."""
    needle = f"EPP_BENCH_TEST_RUN={marker}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if needle in Path(f"/proc/{entry}/environ").read_bytes():
                state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[-1].split()[0]
                if state != "Z":
                    found.append(int(entry))
        except OSError:
            continue
    return found


def marked_env(marker: str) -> dict[str, str]:
    return {**os.environ, "EPP_BENCH_TEST_RUN": marker, "PYTHONUNBUFFERED": "1"}
