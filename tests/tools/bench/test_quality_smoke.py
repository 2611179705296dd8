"""`epp bench quality --smoke` end to end: real simulators, Envoy, EPP and rival routers, clean stops."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import marked_env, marked_pids

ROOT = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.envoy


def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _bench(*args: str) -> list[str]:
    return [sys.executable, "-m", "epp", "bench", "quality", *args]


def _wait_gone(marker: str, timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    left = marked_pids(marker)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = marked_pids(marker)
    return left


def test_smoke_runs_every_workload_through_every_router(tmp_path, rivals_available, marker) -> None:
    out = tmp_path / "out"
    args = ["--smoke", "--out", str(out)]
    routers = ["epp:default", "envoy-rr", "sglang-router", "vllm-router"]
    if not rivals_available:  # only when the package index cannot be reached
        args += ["--routers", "epp:default,envoy-rr"]
        routers = routers[:2]
    started = time.monotonic()
    res = subprocess.run(
        _bench(*args), capture_output=True, text=True, timeout=300, cwd=ROOT, env=marked_env(marker)
    )
    took = time.monotonic() - started
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert not _wait_gone(marker), "processes left behind"
    assert took < 200, f"smoke took {took:.0f}s"
    doc = json.loads((out / "quality.json").read_text())
    sweep = [r for r in doc["runs"] if r["purpose"] == "sweep"]
    workloads = ["shared_prefix", "zipf", "mixed", "multiturn"]
    assert sorted((r["workload"], r["router"]) for r in sweep) == sorted(
        (w, r) for w in workloads for r in routers
    )
    assert [r["workload"] for r in sweep] == [w for w in workloads for _ in routers]
    for r in sweep:
        assert r["requests"] > 0 and r["ok"] == r["requests"], r
        assert r["ttft_p90_ms"] > 0 and r["output_tokens_per_s"] > 0
        assert r["hit_ratio"] <= r["oracle_hit_ratio"] + 1e-9
        assert sum(s["requests"] for s in r["per_server"].values()) >= r["requests"]
    by = {(r["workload"], r["router"]): r for r in sweep}
    for workload in ("zipf", "multiturn"):  # cache affinity beats round-robin on reuse
        rr = by[workload, "envoy-rr"]
        assert rr["balance_requests"] < 1.35
        for name in routers:
            if name != "envoy-rr":
                assert by[workload, name]["hit_ratio"] > rr["hit_ratio"], (workload, name)
    assert by["mixed", "epp:default"]["ttft_p90_ms_by_kind"].keys() == {"shared", "unique"}
    for workload in workloads:
        assert (out / f"quality-{workload}.png").stat().st_size > 10_000
    text = (out / "quality.md").read_text()
    assert "## multiturn" in text and "| router |" in text
    assert "quality.json" in res.stdout


def test_interrupt_stops_everything(tmp_path, rivals_available, marker) -> None:
    routers = "epp:default,sglang" if rivals_available else "epp:default,envoy-lr"
    proc = subprocess.Popen(
        _bench("--smoke", "--workloads", "zipf", "--routers", routers, "--out", str(tmp_path)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=marked_env(marker),
        # a shell running the suite in the background starts it with SIGINT ignored; Ctrl-C must be live
        preexec_fn=_sigint_default,
    )
    try:
        deadline = time.monotonic() + 120
        # 4 simulators + the harness itself; a fifth and sixth child = Envoy and the EPP are up
        while len(marked_pids(marker)) < 7 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()
        assert len(marked_pids(marker)) >= 7
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert "interrupted" in err
        assert not _wait_gone(marker), "processes left behind after Ctrl-C"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
