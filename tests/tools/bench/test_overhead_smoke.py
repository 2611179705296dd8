"""`epp bench overhead --smoke`: the EPP alone vs a no-op server, and streamed tokens through each router."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import marked_env, marked_pids

ROOT = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.envoy

TOKENS = (1, 16)  # the smoke run's token counts
RATE = 100.0
DURATION = 1.0  # the smoke run's seconds per measurement
PROCESSES = {
    "envoy-rr": {"envoy"},
    "epp:default": {"epp", "envoy"},
    "epp-duplex:default": {"epp", "envoy"},
    "sglang-router": {"router"},
}


def test_overhead_smoke(tmp_path, rivals_available, marker) -> None:
    args = [sys.executable, "-m", "epp", "bench", "overhead", "--smoke", "--out", str(tmp_path)]
    routers = ["envoy-rr", "epp:default", "epp-duplex:default", "sglang-router"]
    if not rivals_available:
        args += ["--routers", "envoy-rr,epp:default,epp-duplex:default"]
        routers = routers[:3]
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

    http = {(h["router"], h["tokens"], h["usage"], h["rate"]): h for h in doc["http"]}
    assert set(http) == {(r, n, u, RATE) for r in ["direct", *routers] for n in TOKENS for u in (False, True)}
    for (router, tokens, usage, _), h in http.items():
        # every request answered, each with exactly the tokens it asked for
        assert h["sent"] > 0.8 * DURATION * RATE and h["completed"] == h["sent"], h
        assert h["errors"] == 0 and h["wrong_tokens"] == 0, h
        assert h["ttft_p99_ms"] >= h["ttft_p50_ms"] > 0
        if router == "direct":
            assert h["cpu_us_per_request"] == {}
            continue
        # the CPU of each process of the router, separately
        assert set(h["cpu_us_per_request_raw"]) == PROCESSES[router], h
        assert all(v > 0 for v in h["cpu_us_per_request_raw"].values()), h
        epp = h["epp_metrics"]
        if not router.startswith("epp"):
            assert epp == {}
            continue
        # the EPP routed and metered every request; who read the body says which Envoy config ran
        assert epp["requests"] == h["sent"] and epp["completed"] == h["sent"], h
        path = "body:observer-only" if router == "epp:default" else "body:full-duplex"
        assert {k: v for k, v in epp.items() if k.startswith("body:")} == {path: h["sent"]}, h
        if (
            usage
        ):  # the usage reached the EPP: through the observer, or every chunk through the routing stream
            assert epp["usage_responses"] == h["sent"] and epp["usage_tokens"] == h["sent"] * tokens, h
        else:
            assert "usage_responses" not in epp, h
    for tokens in TOKENS:  # a proxy hop costs something
        assert (
            http["direct", tokens, False, RATE]["ttft_p50_ms"]
            < http["envoy-rr", tokens, False, RATE]["ttft_p50_ms"]
        )

    # CPU per streamed token, per process, from the slope between the token counts
    per_token = {(p["router"], p["usage"], p["process"]): p["cpu_us_per_token"] for p in doc["per_token"]}
    for router in routers:
        for process in PROCESSES[router]:
            for usage in (False, True):
                assert per_token[router, usage, process].keys() == {"16v1"}
    assert {("epp:default", False, "total"), ("epp-duplex:default", True, "total")} <= set(per_token)
    goals = {(g["router"], g["usage"], g["goal"], g["at"]): g for g in doc["goals"]}
    for router in ("epp:default", "epp-duplex:default"):
        for usage in (False, True):
            assert goals[router, usage, "epp_cpu_us_per_token", "16v1"]["value"] is not None
            assert goals[router, usage, "ttft_p50_added_ms", "16 tokens"]["value"] is not None
            ratio = goals[router, usage, "cpu_vs_sglang", "16 tokens"]
            assert (ratio["value"] is not None) == rivals_available
    assert set(doc["idle_cpu_share"]) == set(routers)

    md = (tmp_path / "overhead.md").read_text()
    for heading in ("## Through the routers", "### 1 output token per request", "### 16 output tokens",
                    "### CPU per streamed token", "### Against the goals"):  # fmt: skip
        assert heading in md
