"""`epp bench overhead --smoke`: the EPP alone vs a no-op server, and TTFT through each router."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import marked_env, marked_pids

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.envoy


def test_overhead_smoke(tmp_path, rivals_available, marker) -> None:
    args = [sys.executable, "-m", "epp", "bench", "overhead", "--smoke", "--out", str(tmp_path)]
    routers = ["envoy-rr", "epp:default", "sglang-router"]
    if not rivals_available:
        args += ["--routers", "envoy-rr,epp:default"]
        routers = routers[:2]
    started = time.monotonic()
    res = subprocess.run(args, capture_output=True, text=True, timeout=240, cwd=ROOT, env=marked_env(marker))
    took = time.monotonic() - started
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert took < 150, f"smoke took {took:.0f}s"
    deadline = time.monotonic() + 10
    while marked_pids(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not marked_pids(marker), "processes left behind"
    doc = json.loads((tmp_path / "overhead.json").read_text())
    ext = {(e["server"], e["mode"]): e for e in doc["ext_proc"]}
    assert set(ext) == {("noop", "closed"), ("noop", "open"), ("epp", "closed"), ("epp", "open")}
    for e in ext.values():
        assert e["completed"] > 0 and e["errors"] == 0 and e["p99_ms"] >= e["p50_ms"] > 0
    assert 0 < doc["ext_proc_ratio"]["throughput"] < 2
    http = {(h["router"], h["rate"]): h for h in doc["http"]}
    assert set(http) == {(r, rate) for r in ["direct", *routers] for rate in (200.0, 500.0)}
    for h in http.values():
        assert h["completed"] > 0.8 * 2.0 * h["rate"] and h["errors"] == 0, h
    for rate in (200.0, 500.0):  # a proxy hop costs something
        assert http["direct", rate]["ttft_p50_ms"] < http["envoy-rr", rate]["ttft_p50_ms"]
        assert http["epp:default", rate]["router_cpu_us_per_request"] > 0
    assert doc["epp_over_envoy"]["500"]["p50_ms"] is not None
    assert "## Through the routers" in (tmp_path / "overhead.md").read_text()
