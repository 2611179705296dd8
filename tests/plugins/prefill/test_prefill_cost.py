"""prefill-cost-scorer: the documented cost formula, its normalisation, and the scenarios it exists for."""

from __future__ import annotations

import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from epp.framework.cycle import CycleState
from epp.framework.types import Endpoint, EndpointMetrics, InferenceRequest
from epp.plugins.datakeys import PREFIX_CACHE_MATCH_INFO_KEY, PrefixCacheMatchInfo, PrefixGroup
from epp.plugins.producers.prefill_ledger import EndpointLoad
from epp.plugins.producers.prefill_load import PREFILL_LOAD_KEY, PrefillLoadSnapshot
from epp.plugins.scorers.prefill_cost import PREFILL_COST_SCORER, PrefillCostParams, PrefillCostScorer

from .._kit import handle, tn

BS = 16


def ep(key: str, waiting: int = 0, running: int = 0, kv: float = 0.0) -> Endpoint:
    metrics = EndpointMetrics(waiting_queue_size=waiting, running_requests_size=running, kv_cache_usage=kv)
    return Endpoint(key, "10.0.0.1", 8000, metrics=metrics)


def cycle_with(
    matches: dict[str, int],
    loads: dict[str, EndpointLoad],
    mean: float = 0.0,
    total: int = 100,
    slowdown: dict[str, float] | None = None,
):
    cycle = CycleState()
    group = PrefixGroup(BS, tuple(range(total)), matches)
    cycle.write(
        PREFIX_CACHE_MATCH_INFO_KEY,
        PrefixCacheMatchInfo({BS: group}, BS, {}, {k: v / total for k, v in matches.items()}),
    )
    cycle.write(PREFILL_LOAD_KEY, PrefillLoadSnapshot(loads, mean, slowdown or {}))
    return cycle


def request(tokens: int) -> InferenceRequest:
    return InferenceRequest("r", "m", "m", prefix_material=b"x" * (tokens * 4))


def scorer(**params) -> PrefillCostScorer:
    return PrefillCostScorer(tn("prefill-cost-scorer"), PrefillCostParams(**params))


@pytest.mark.parametrize(
    ("matches", "load", "metrics", "params", "expected"),
    [
        # idle, nothing cached: 2 x 1600
        ({}, EndpointLoad(), {}, {}, 3200.0),
        # 100 of 1600 blocks... 94 blocks matched = 1504 tokens: 96 uncached x 2
        ({"a": 94}, EndpointLoad(), {}, {}, 192.0),
        # queued prefill ahead + 2 queued requests (each adds one unit of miss weight) + decoding
        ({"a": 94}, EndpointLoad(500, 2, 3), {}, {}, 96 * (2 + 2) + 500 + 3 * 16),
        # scraped gauges win when larger (traffic from elsewhere), waiting x mean uncached
        ({"a": 94}, EndpointLoad(), {"waiting": 4, "running": 10}, {}, 96 * (2 + 4) + 4 * 300 + 10 * 16),
        # ... unless the metrics are switched off
        ({"a": 94}, EndpointLoad(), {"waiting": 4, "running": 10}, {"useMetrics": False}, 192.0),
        # KV pressure: linear from kvPressureStart to 1.0
        ({}, EndpointLoad(), {"kv": 0.95}, {}, 3200.0 + 2048.0),
        ({}, EndpointLoad(), {"kv": 1.0}, {"kvPressureTokens": 100}, 3300.0),
        # weights
        ({}, EndpointLoad(1000, 0, 0), {}, {"prefillWeight": 1, "queueWeight": 0.5}, 1600 + 500),
    ],
)
def test_cost_formula(matches, load, metrics, params, expected) -> None:
    e = ep("a", **metrics)
    cycle = cycle_with(matches, {"a": load}, mean=300.0)
    assert scorer(**params).costs(cycle, request(1600), [e]) == {"a": pytest.approx(expected)}


def test_scores_are_min_cost_normalised_with_a_floor() -> None:
    a, b, c = ep("a"), ep("b"), ep("c")
    cycle = cycle_with({"a": 94}, {"b": EndpointLoad(0, 0, 1)})
    s = scorer(costFloorTokens=256).score(cycle, request(1600), [a, b, c])
    assert s["a"] == 1.0
    assert s["b"] == pytest.approx((192 + 256) / (3200 + 16 + 256))
    assert s["c"] == pytest.approx((192 + 256) / (3200 + 256))


def test_a_cheap_hit_avoids_the_replica_busy_with_a_long_uncached_prefill() -> None:
    """Both a and b hold the prefix; a has just been sent an 8,000-token unique prompt."""
    a, b = ep("a"), ep("b")
    cycle = cycle_with({"a": 94, "b": 94}, {"a": EndpointLoad(8000, 1, 0), "b": EndpointLoad(0, 0, 2)})
    s = scorer().score(cycle, request(1600), [a, b])
    assert s["b"] == 1.0 and s["a"] < 0.1


def test_a_hot_holder_spills_only_when_its_queue_outweighs_the_miss() -> None:
    holder, other = ep("holder"), ep("other")
    for queued_tokens, spills in [(1000, False), (3000, False), (6000, True)]:
        cycle = cycle_with({"holder": 94}, {"holder": EndpointLoad(queued_tokens, 0, 0)})
        s = scorer().score(cycle, request(1600), [holder, other])
        assert (s["other"] > s["holder"]) is spills, queued_tokens


def test_a_slower_hardware_class_costs_its_slowdown_times_the_work() -> None:
    """`slow` holds the prefix with 2000 tokens queued; on equal hardware the hit wins, on hardware
    measured 2.5x slower the same queue is a longer wait than prefilling elsewhere."""
    slow, fast = ep("slow"), ep("fast")
    loads = {"slow": EndpointLoad(2000, 1, 0)}
    equal = scorer().costs(cycle_with({"slow": 94}, loads), request(1600), [slow, fast])
    slower = scorer().costs(
        cycle_with({"slow": 94}, loads, slowdown={"slow": 2.5}), request(1600), [slow, fast]
    )
    assert slower == {"slow": pytest.approx(2.5 * equal["slow"]), "fast": pytest.approx(equal["fast"])}
    assert equal["slow"] < equal["fast"] < slower["slow"]


def test_without_match_info_or_ledger_it_still_scores() -> None:
    s = scorer().score(CycleState(), request(100), [ep("a", waiting=1), ep("b")])
    assert s["b"] == 1.0 and 0.0 < s["a"] < 1.0
    assert scorer().score(CycleState(), request(100), []) == {}


ENDPOINTS = st.lists(
    st.tuples(
        st.integers(0, 100),  # matched blocks
        st.integers(0, 50_000),  # pending tokens
        st.integers(0, 20),  # pending requests
        st.integers(0, 300),  # decoding
        st.integers(0, 50),  # scraped waiting
        st.floats(0.0, 1.0),  # kv
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=300, deadline=None)
@given(ENDPOINTS, st.integers(1, 20_000), st.floats(0.0, 5000.0))
def test_scores_are_in_0_1_deterministic_and_the_cheapest_scores_1(specs, tokens, mean) -> None:
    endpoints = [ep(f"e{i}", waiting=w, kv=kv) for i, (_, _, _, _, w, kv) in enumerate(specs)]
    matches = {f"e{i}": m for i, (m, *_rest) in enumerate(specs) if m}
    loads = {f"e{i}": EndpointLoad(p, q, d) for i, (_, p, q, d, _, _) in enumerate(specs)}
    sc = scorer()
    first = sc.score(cycle_with(matches, loads, mean), request(tokens), endpoints)
    again = sc.score(cycle_with(matches, loads, mean), request(tokens), endpoints)
    assert first == again
    assert set(first) == {e.key for e in endpoints}
    assert all(0.0 < v <= 1.0 for v in first.values())
    costs = sc.costs(cycle_with(matches, loads, mean), request(tokens), endpoints)
    cheapest = min(costs, key=costs.__getitem__)
    assert first[cheapest] == 1.0
    for x in costs:  # cheaper always scores higher
        for y in costs:
            if costs[x] < costs[y]:
                assert first[x] > first[y]


def test_registry_entry() -> None:
    built = PREFILL_COST_SCORER.build("pc", {"prefillWeight": 3}, handle())
    assert built.params.prefillWeight == 3 and built.category.value == "balance"
    assert PREFILL_COST_SCORER.consumes == {"PrefixCacheMatchInfo", "PrefillLoad"}
    with pytest.raises(pydantic.ValidationError):
        PREFILL_COST_SCORER.build("pc", {"costFloorTokens": 0}, handle())
    with pytest.raises(pydantic.ValidationError):
        PREFILL_COST_SCORER.build("pc", {"kvPressureStart": 1.0}, handle())
