"""The in-process quality probe: the benchmark's workloads on a virtual clock, deterministic, and the
routers it compares behave as documented."""

from __future__ import annotations

import math

import pytest

from epp.bench.probe_routers import CacheAware, LeastRequest, RoundRobin
from epp.bench.probe_workloads import probe_workload
from epp.bench.quality import SMOKE, make_workload
from epp.bench.quality_probe import make_router, run_probe
from epp.loadgen.client import build_body
from epp.loadgen.runner import poisson_arrivals

RECOMMENDED = "epp:profiles/recommended.yaml"


def test_workloads_are_the_benchmarks_scaled_to_engine_time() -> None:
    probe = probe_workload("mixed", 8.0, seed=3, sizing=SMOKE)
    workload, session_rate = make_workload("mixed", 8.0, SMOKE.duration_s, SMOKE.shapes["mixed"], 3)
    arrivals = poisson_arrivals(len(workload.sessions), session_rate, 3)
    assert len(probe.requests) == len(workload.sessions)
    for req, session, at in zip(probe.requests, workload.sessions, arrivals, strict=True):
        assert req.arrival == pytest.approx(at / SMOKE.time_scale)
        assert req.body == build_body("completions", session, session.turns[0], [], req.body["model"])
        assert req.kind == ("unique" if session.group == "unique" else "shared")


def test_multiturn_replays_the_answers_received() -> None:
    probe = probe_workload("multiturn", 8.0, seed=1, sizing=SMOKE)
    first = probe.requests[0]
    nxt = probe.next_turn(first, 1.0, "the answer")
    assert nxt is not None and nxt.turn == 1 and nxt.arrival >= 1.0
    messages = nxt.body["messages"]
    assert messages[-2] == {"role": "assistant", "content": "the answer"}
    assert messages[:-2] == first.body["messages"]


@pytest.mark.parametrize("router", ["round-robin", "least-request", "cache-aware", RECOMMENDED])
def test_a_run_finishes_everything_and_is_deterministic(router: str) -> None:
    a = run_probe("zipf", 12.0, router, seed=1, sizing="smoke", duration=1.5)
    b = run_probe("zipf", 12.0, router, seed=1, sizing="smoke", duration=1.5)
    assert a.requests == a.finished > 10
    assert (a.ttft_p90, a.hit_ratio, a.max_mean_requests) == (b.ttft_p90, b.hit_ratio, b.max_mean_requests)
    assert a.precise_live == -1
    assert (sum(a.decisions.values()) == a.requests) is router.startswith("epp:")
    assert 0.0 <= a.hit_ratio <= a.oracle_hit_ratio + 1e-9 and not math.isnan(a.ttft_p50)


def test_cache_affinity_shows_in_hits_and_latency() -> None:
    rr = run_probe("shared_prefix", 16.0, "round-robin", seed=2, sizing="smoke", duration=4.0)
    ours = run_probe("shared_prefix", 16.0, RECOMMENDED, seed=2, sizing="smoke", duration=4.0)
    assert ours.hit_ratio > rr.hit_ratio + 0.1
    assert ours.ttft_p50 < rr.ttft_p50


def test_precise_producer_is_fed_the_engines_events() -> None:
    config = (
        "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n"
        "- type: precise-prefix-cache-producer\n- type: prefix-cache-scorer\n"
    )
    result = run_probe(
        "shared_prefix", 8.0, f"epp-text:precise={config}", seed=0, sizing="smoke", duration=1.5
    )
    assert result.finished == result.requests and result.hit_ratio > 0.0
    assert result.precise_live == SMOKE.servers  # every engine's events arrived and matched our keys
    assert result.decisions["best"] > 0


def test_rival_models() -> None:
    rr = RoundRobin(3)
    assert [rr.route(None, [], 0.0) for _ in range(4)] == [0, 1, 2, 0]  # type: ignore[arg-type]
    lr = LeastRequest(2, seed=0)
    assert {lr.route(_req(f"r{i}"), [], 0.0) for i in range(2)} == {0, 1}
    ca = CacheAware(2, balance_abs=2)
    prompt = "x" * 400
    first = ca.route(_req("a", prompt), [], 0.0)
    assert ca.route(_req("b", prompt + "y"), [], 0.0) == first  # match rate > 0.3: same worker
    # imbalanced (3 in flight vs 0, > abs 2 and > 1.5 x): the least-loaded worker, whatever the match
    ca.route(_req("c", prompt), [], 0.0)
    assert ca.route(_req("d", prompt), [], 0.0) == 1 - first


def _req(rid: str, prompt: str = "p"):
    from epp.bench.probe_workloads import ProbeRequest

    return ProbeRequest(rid, 0.0, "/v1/completions", {"prompt": prompt}, "g", "shared", 0)


def test_unknown_router_spec() -> None:
    with pytest.raises(ValueError, match="unknown router"):
        make_router("nginx", 0)
