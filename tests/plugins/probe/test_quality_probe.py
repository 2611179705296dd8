"""The in-process quality probe: the benchmark's workloads on a virtual clock, deterministic, and the
routers it compares behave as documented."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest

from epp.tools.bench.probe_routers import CacheAware, Clairvoyant, LeastRequest, RoundRobin
from epp.tools.bench.probe_workloads import probe_workload
from epp.tools.bench.quality import SMOKE, make_workload
from epp.tools.bench.quality_probe import make_router, run_probe
from epp.tools.loadgen.client import build_body
from epp.tools.loadgen.runner import poisson_arrivals
from epp.tools.sim.config import SimConfig
from epp.tools.sim.engine import Engine
from epp.tools.sim.tokenizer import CharTokenizer

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


def _req(rid: str, prompt: str = "p", **body: object):
    from epp.tools.bench.probe_workloads import ProbeRequest

    return ProbeRequest(rid, 0.0, "/v1/completions", {"prompt": prompt, **body}, "g", "shared", 0)


def test_unknown_router_spec() -> None:
    with pytest.raises(ValueError, match="unknown router"):
        make_router("nginx", 0)


@dataclass
class _View:
    config: SimConfig
    engines: list[Engine]
    tokenizer: CharTokenizer = field(default_factory=lambda: CharTokenizer(128256))
    busy: list[bool] = field(default_factory=list)
    step_end: list[float] = field(default_factory=list)


def _first_token_at(engine: Engine, rid: str, start: float) -> float:
    t = start
    while True:
        result = engine.step(t)
        assert result.duration > 0.0
        t = result.end
        if any(o.request_id == rid and o.index == 0 for o in result.outputs):
            return t


def test_clairvoyant_predicts_the_engines_exact_first_token_time() -> None:
    config = SimConfig(kv_blocks=256)
    engines = [Engine(config), Engine(config)]
    # engine 0 is mid-way through a long prefill step; engine 1 is idle but holds the prompt's prefix
    engines[0].add_request("long", list(range(1, 1500)), 4, None, 0.0)
    step = engines[0].step(0.0)
    prefix = list(range(2000, 2800))
    engines[1].add_request("warm", [*prefix, 7], 1, None, 0.0)
    _first_token_at(engines[1], "warm", 0.0)
    while engines[1].has_work:
        engines[1].step(1.0)
    view = _View(config, engines, busy=[True, False], step_end=[step.end, 0.0])
    router = Clairvoyant(2)
    router.bind(view)
    now = step.start + step.duration / 4
    prompt = [*prefix, 9, 9, 9]
    predicted = [router.predict_ttft(i, prompt, 2, now) for i in range(2)]
    assert predicted[1] < predicted[0]  # the idle holder beats the busy stranger
    for i, engine in enumerate(engines):
        engine.add_request(f"new{i}", prompt, 2, None, now)
        start = step.end if i == 0 else now
        assert _first_token_at(engine, f"new{i}", start) - now == pytest.approx(predicted[i])
    text = "".join(chr(t % 90 + 32) for t in prompt)  # no cached prefix anywhere: the idle engine wins
    assert router.route(_req("r", text, model=config.model, max_tokens=2), [], now) == 1


def test_clairvoyant_finishes_everything_and_beats_round_robin() -> None:
    bound = run_probe("zipf", 16.0, "clairvoyant", seed=1, sizing="smoke", duration=1.5)
    rr = run_probe("zipf", 16.0, "round-robin", seed=1, sizing="smoke", duration=1.5)
    assert bound.requests == bound.finished > 10
    assert bound.ttft_p90 <= rr.ttft_p90
    assert bound.ttft_p50 < rr.ttft_p50


def test_warm_p90_counts_only_the_requests_after_the_cold_start_window() -> None:
    everything = run_probe(
        "zipf", 16.0, "round-robin", seed=1, sizing="smoke", duration=1.5, warm_after_s=0.0
    )
    later = run_probe("zipf", 16.0, "round-robin", seed=1, sizing="smoke", duration=1.5, warm_after_s=0.75)
    assert everything.ttft_p90_warm == everything.ttft_p90
    assert not math.isnan(later.ttft_p90_warm) and later.ttft_p90_warm != later.ttft_p90
    none = run_probe("zipf", 16.0, "round-robin", seed=1, sizing="smoke", duration=1.5, warm_after_s=5.0)
    assert math.isnan(none.ttft_p90_warm)
