"""Scorers: upstream formulas as tables, edge cases, and properties (scores in [0, 1], one per endpoint)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from epp.plugins.datakeys import (
    INFLIGHT_LOAD_KEY,
    PREFIX_CACHE_MATCH_INFO_KEY,
    InFlightLoad,
    PrefixCacheMatchInfo,
)

from ._kit import build, cycle, ep, req

# ---- queue-scorer / running-requests-size-scorer (min-max) ---------------------------------------------

MIN_MAX_CASES = [
    pytest.param([0, 5, 10], [1.0, 0.5, 0.0], id="spread"),
    pytest.param([3, 3, 3], [1.0, 1.0, 1.0], id="all-equal"),
    pytest.param([7], [1.0], id="single"),
    pytest.param([1000, 1001], [1.0, 0.0], id="relative-only"),
    pytest.param([0, 0, 4], [1.0, 1.0, 0.0], id="two-best"),
    pytest.param([], [], id="empty"),
]


@pytest.mark.parametrize(("queues", "expected"), MIN_MAX_CASES)
def test_queue_scorer(queues: list[int], expected: list[float]) -> None:
    eps = [ep(f"e{i}", waiting_queue_size=q) for i, q in enumerate(queues)]
    scores = build("queue-scorer").score(cycle(), req(), eps)
    assert [scores[e.key] for e in eps] == pytest.approx(expected)
    assert set(scores) == {e.key for e in eps}


@pytest.mark.parametrize(("running", "expected"), MIN_MAX_CASES)
def test_running_requests_size_scorer(running: list[int], expected: list[float]) -> None:
    eps = [ep(f"e{i}", running_requests_size=r, waiting_queue_size=99) for i, r in enumerate(running)]
    scores = build("running-requests-size-scorer").score(cycle(), req(), eps)
    assert [scores[e.key] for e in eps] == pytest.approx(expected)


# ---- kv-cache-utilization-scorer --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        (0.0, 1.0),
        (0.25, 0.75),
        (1.0, 0.0),
        (1.7, 0.0),  # a bogus report is clamped, not trusted
        (-0.5, 1.0),
        (math.nan, 0.0),
    ],
)
def test_kv_cache_utilization_scorer(usage: float, expected: float) -> None:
    e = ep("a", kv_cache_usage=usage)
    assert build("kv-cache-utilization-scorer").score(cycle(), req(), [e]) == {"a": pytest.approx(expected)}


def test_kv_scorer_uses_absolute_usage_not_relative() -> None:
    eps = [ep("a", kv_cache_usage=0.5), ep("b", kv_cache_usage=0.6)]
    assert build("kv-cache-utilization-scorer").score(cycle(), req(), eps) == {
        "a": pytest.approx(0.5),
        "b": pytest.approx(0.4),
    }


# ---- lora-affinity-scorer ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("metrics", "expected"),
    [
        pytest.param({"active_models": {"ad"}, "max_active_models": 1}, 1.0, id="active"),
        pytest.param({"active_models": {"ad", "x"}, "max_active_models": 1}, 1.0, id="active-over-limit"),
        pytest.param({"active_models": {"x"}, "max_active_models": 4}, 0.8, id="room"),
        pytest.param({"max_active_models": 2}, 0.8, id="empty-with-room"),
        pytest.param(
            {"active_models": {"x"}, "waiting_models": {"ad"}, "max_active_models": 2}, 0.6, id="waits"
        ),
        pytest.param({"active_models": {"x", "y"}, "max_active_models": 2}, 0.0, id="full"),
        pytest.param({}, 0.0, id="no-lora-info"),
    ],
)
def test_lora_affinity_scorer(metrics: dict, expected: float) -> None:
    e = ep("a", **metrics)
    assert build("lora-affinity-scorer").score(cycle(), req(target="ad"), [e]) == {"a": expected}


def test_lora_affinity_scorer_matches_the_target_model_not_the_requested_one() -> None:
    e = ep("a", active_models={"rewritten"}, max_active_models=1)
    scorer = build("lora-affinity-scorer")
    assert scorer.score(cycle(), req(model="incoming", target="rewritten"), [e]) == {"a": 1.0}
    assert scorer.score(cycle(), req(model="rewritten", target="incoming"), [e]) == {"a": 0.0}


# ---- token-load-scorer ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tokens", "threshold", "expected"),
    [
        (0, 1000, 1.0),
        (250, 1000, 0.75),
        (1000, 1000, 0.0),
        (5000, 1000, 0.0),
        (-3, 1000, 1.0),
        (2_097_152, 0, 0.5),  # threshold <= 0 means the default 4194304
    ],
)
def test_token_load_scorer(tokens: int, threshold: int, expected: float) -> None:
    c = cycle()
    c.write(INFLIGHT_LOAD_KEY, {"a": InFlightLoad(requests=1, tokens=tokens)})
    scorer = build("token-load-scorer", {"queueThresholdTokens": threshold})
    assert scorer.score(c, req(), [ep("a")]) == {"a": pytest.approx(expected)}


def test_token_load_scorer_without_load_data_scores_everyone_one() -> None:
    eps = [ep("a"), ep("b")]
    assert build("token-load-scorer").score(cycle(), req(), eps) == {"a": 1.0, "b": 1.0}


# ---- prefix-cache-scorer ----------------------------------------------------------------------------------


def test_prefix_cache_scorer_reads_the_match_info() -> None:
    c = cycle()
    c.write(PREFIX_CACHE_MATCH_INFO_KEY, PrefixCacheMatchInfo({}, 16, {}, {"a": 0.75, "gone": 1.0}))
    eps = [ep("a"), ep("b")]
    assert build("prefix-cache-scorer").score(c, req(), eps) == {"a": 0.75, "b": 0.0}


def test_prefix_cache_scorer_without_a_producer_scores_zero() -> None:
    eps = [ep("a"), ep("b")]
    assert build("prefix-cache-scorer").score(cycle(), req(), eps) == {"a": 0.0, "b": 0.0}


# ---- properties -------------------------------------------------------------------------------------------

SCORERS = [
    "queue-scorer",
    "kv-cache-utilization-scorer",
    "running-requests-size-scorer",
    "lora-affinity-scorer",
    "token-load-scorer",
    "prefix-cache-scorer",
]

endpoint_metrics = st.fixed_dictionaries(
    {
        "waiting_queue_size": st.integers(0, 10_000),
        "running_requests_size": st.integers(0, 10_000),
        "kv_cache_usage": st.floats(allow_nan=True, allow_infinity=True),
        "active_models": st.frozensets(st.sampled_from(["a", "b", "c"]), max_size=3),
        "waiting_models": st.frozensets(st.sampled_from(["a", "b", "c"]), max_size=3),
        "max_active_models": st.integers(0, 4),
        "update_time": st.sampled_from([0.0, 1.0, 1e9]),  # never scraped, stale, fresh
    }
)


@given(
    metrics=st.lists(endpoint_metrics, max_size=12),
    target=st.sampled_from(["a", "b", "base"]),
    loads=st.lists(st.integers(-10, 10**8), max_size=12),
    ratios=st.lists(st.floats(0, 1), max_size=12),
)
def test_every_scorer_returns_one_score_in_unit_range_per_endpoint(
    metrics: list[dict], target: str, loads: list[int], ratios: list[float]
) -> None:
    eps = [ep(f"e{i}", **m) for i, m in enumerate(metrics)]
    c = cycle()
    c.write(INFLIGHT_LOAD_KEY, {f"e{i}": InFlightLoad(1, t) for i, t in enumerate(loads)})
    c.write(
        PREFIX_CACHE_MATCH_INFO_KEY,
        PrefixCacheMatchInfo({}, 16, {}, {f"e{i}": r for i, r in enumerate(ratios)}),
    )
    for type_name in SCORERS:
        scores = build(type_name).score(c, req(target=target), eps)
        assert set(scores) == {e.key for e in eps}, type_name
        for value in scores.values():
            assert 0.0 <= value <= 1.0, (type_name, value)
