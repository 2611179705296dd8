"""`latency-scorer`, `slo-headroom-tier-filter` and `latency-slo-admitter` over `LatencyPredictionInfo`."""

from __future__ import annotations

import random

import pytest

from epp.framework.cycle import CycleState
from epp.framework.types import TypedName
from epp.plugins.latency.admitter import LatencySloAdmitter
from epp.plugins.latency.info import LATENCY_PREDICTION_INFO_KEY, LatencyPredictionInfo, request_slo
from epp.plugins.latency.scorer import LatencyScorer, LatencyScorerParams
from epp.plugins.latency.tier_filter import SloHeadroomTierFilter, SloHeadroomTierParams

from .._kit import ep, req

SLO = {"x-slo-ttft-ms": "100", "x-slo-tpot-ms": "20"}


def cycle_with(
    ttft: dict[str, float],
    tpot: dict[str, float] | None = None,
    headers: dict[str, str] | None = None,
    dispatched: dict[str, int] | None = None,
) -> CycleState:
    cycle = CycleState()
    cycle.write(
        LATENCY_PREDICTION_INFO_KEY,
        LatencyPredictionInfo.build(
            ttft,
            tpot if tpot is not None else dict.fromkeys(ttft, 10.0),
            request_slo(headers or {}),
            dispatched=dispatched if dispatched is not None else dict.fromkeys(ttft, 1),
        ),
    )
    return cycle


def scorer(**params: object) -> LatencyScorer:
    return LatencyScorer(TypedName("latency-scorer", "s"), LatencyScorerParams(**params))  # type: ignore[arg-type]


# ---- latency-scorer -------------------------------------------------------------------------------


def test_scorer_prefers_the_lower_predicted_latency_without_an_slo() -> None:
    fleet = [ep("a"), ep("b"), ep("c")]
    scores = scorer().score(cycle_with({"a": 300.0, "b": 50.0, "c": 120.0}), req(), fleet)
    assert max(scores, key=scores.__getitem__) == "b"
    assert scores["b"] > scores["c"] > scores["a"]


def test_scorer_with_an_slo_scores_only_endpoints_meeting_it_least_by_default() -> None:
    fleet = [ep("a"), ep("b"), ep("c")]
    cycle = cycle_with({"a": 90.0, "b": 20.0, "c": 150.0}, headers=SLO)
    least = scorer().score(cycle, req(headers=SLO), fleet)
    assert least["c"] == 0.0 and least["a"] > least["b"] > 0.0  # closest to the SLO: bin-packing
    most = scorer(headroomSelectionStrategy="most").score(cycle, req(headers=SLO), fleet)
    assert most["c"] == 0.0 and most["b"] > most["a"]


def test_scorer_prefers_idle_endpoints_when_none_meets_the_slo() -> None:
    fleet = [ep("a"), ep("b")]
    cycle = cycle_with({"a": 150.0, "b": 400.0}, headers=SLO, dispatched={"a": 3})
    scores = scorer().score(cycle, req(headers=SLO), fleet)
    assert scores["b"] > 0.0 and scores["a"] == 0.0


def test_scorer_falls_back_to_the_load_composite_without_predictions() -> None:
    fleet = [
        ep("a", waiting_queue_size=5, kv_cache_usage=0.9),
        ep("b", waiting_queue_size=0, kv_cache_usage=0.1),
    ]
    scores = scorer().score(CycleState(), req(), fleet)
    assert scores["b"] > scores["a"]


def test_scorer_with_every_composite_weight_zero_leaves_it_to_the_other_scorers_until_predictions() -> None:
    fleet = [
        ep("a", waiting_queue_size=5, kv_cache_usage=0.9),
        ep("b", waiting_queue_size=0, kv_cache_usage=0.1),
    ]
    neutral = scorer(compositeKVWeight=0.0, compositeQueueWeight=0.0, compositePrefixWeight=0.0)
    assert neutral.score(CycleState(), req(), fleet) == {"a": 0.0, "b": 0.0}
    ranked = neutral.score(cycle_with({"a": 300.0, "b": 50.0}), req(), fleet)
    assert ranked["b"] > ranked["a"]  # once there are predictions it scores as usual


# ---- slo-headroom-tier-filter ----------------------------------------------------------------------


def tier(eps: float = 0.0, seed: int = 0) -> SloHeadroomTierFilter:
    return SloHeadroomTierFilter(
        TypedName("slo-headroom-tier-filter", "f"),
        SloHeadroomTierParams(epsilonExploreNeg=eps),
        random.Random(seed),
    )


def test_tier_filter_keeps_the_endpoints_with_headroom() -> None:
    fleet = [ep("a"), ep("b"), ep("c")]
    cycle = cycle_with(
        {"a": 90.0, "b": 20.0, "c": 150.0}, tpot={"a": 30.0, "b": 10.0, "c": 10.0}, headers=SLO
    )
    kept = tier().filter(cycle, req(headers=SLO), fleet)
    assert [e.key for e in kept] == ["b"]  # a misses the TPOT SLO, c the TTFT SLO


def test_tier_filter_explores_the_negative_tier_with_probability_epsilon() -> None:
    fleet = [ep("a"), ep("b")]
    cycle = cycle_with({"a": 50.0, "b": 500.0}, headers=SLO)
    f = tier(eps=0.2, seed=1)
    picks = [tuple(e.key for e in f.filter(cycle, req(headers=SLO), fleet)) for _ in range(2000)]
    assert set(picks) == {("a",), ("b",)}
    assert 0.15 < picks.count(("b",)) / len(picks) < 0.25


def test_tier_filter_keeps_all_without_predictions_or_without_an_slo() -> None:
    fleet = [ep("a"), ep("b")]
    assert tier().filter(CycleState(), req(), fleet) == fleet
    assert list(tier().filter(cycle_with({"a": 50.0, "b": 500.0}), req(), fleet)) == fleet


def test_tier_filter_with_only_a_ttft_slo_ignores_tpot() -> None:
    fleet = [ep("a"), ep("b")]
    headers = {"x-slo-ttft-ms": "100"}
    cycle = cycle_with({"a": 50.0, "b": 500.0}, tpot={"a": 900.0, "b": 1.0}, headers=headers)
    assert [e.key for e in tier().filter(cycle, req(headers=headers), fleet)] == ["a"]


# ---- latency-slo-admitter --------------------------------------------------------------------------

BUSY = {"running_requests_size": 8, "kv_cache_usage": 0.5}


def admitter() -> LatencySloAdmitter:
    return LatencySloAdmitter(TypedName("latency-slo-admitter", "a"))


def test_admitter_refuses_a_sheddable_request_predicted_to_miss_its_slo() -> None:
    fleet = [ep("a", **BUSY), ep("b", **BUSY)]
    cycle = cycle_with({"a": 300.0, "b": 500.0}, headers=SLO)
    reason = admitter().admit(cycle, req(headers=SLO, priority=-1), fleet)
    assert reason is not None and "SLO" in reason


def test_admitter_admits_critical_requests_and_requests_without_an_slo() -> None:
    fleet = [ep("a", **BUSY)]
    cycle = cycle_with({"a": 300.0}, headers=SLO)
    assert admitter().admit(cycle, req(headers=SLO, priority=0), fleet) is None
    assert admitter().admit(cycle, req(headers=SLO, priority=5), fleet) is None
    assert admitter().admit(cycle_with({"a": 300.0}), req(priority=-1), fleet) is None


def test_admitter_admits_when_one_endpoint_meets_the_slo_or_is_idle_or_cold() -> None:
    sheddable = req(headers=SLO, priority=-1)
    cycle = cycle_with({"a": 300.0, "b": 50.0}, headers=SLO)
    assert admitter().admit(cycle, sheddable, [ep("a", **BUSY), ep("b", **BUSY)]) is None
    missing = cycle_with({"a": 300.0, "b": 500.0}, headers=SLO)
    idle = ep("b", running_requests_size=0, kv_cache_usage=0.5)
    assert admitter().admit(missing, sheddable, [ep("a", **BUSY), idle]) is None
    cold = ep("b", running_requests_size=3, kv_cache_usage=0.01)
    assert admitter().admit(missing, sheddable, [ep("a", **BUSY), cold]) is None


def test_admitter_fails_open_without_predictions() -> None:
    assert admitter().admit(CycleState(), req(headers=SLO, priority=-1), [ep("a", **BUSY)]) is None


# ---- prefix-cache-affinity-filter's TTFT gate -------------------------------------------------------


def test_affinity_filter_breaks_stickiness_when_the_cached_endpoint_is_predicted_too_slow() -> None:
    from epp.plugins.datakeys import PREFIX_CACHE_MATCH_INFO_KEY, PrefixCacheMatchInfo
    from epp.plugins.filters.prefix_cache_affinity import PrefixCacheAffinityFilter, PrefixCacheAffinityParams

    f = PrefixCacheAffinityFilter(
        TypedName("prefix-cache-affinity-filter", "f"),
        PrefixCacheAffinityParams(explorationProbability=0.0, maxTTFTPenaltyMs=500.0),
    )
    fleet = [ep("hot"), ep("cold")]
    cycle = cycle_with({"hot": 900.0, "cold": 100.0})
    cycle.write(PREFIX_CACHE_MATCH_INFO_KEY, PrefixCacheMatchInfo({}, 16, scores={"hot": 1.0}))
    assert [e.key for e in f.filter(cycle, req(), fleet)] == ["hot", "cold"]  # 800 ms worse: keep all
    near = cycle_with({"hot": 300.0, "cold": 100.0})
    near.write(PREFIX_CACHE_MATCH_INFO_KEY, PrefixCacheMatchInfo({}, 16, scores={"hot": 1.0}))
    assert [e.key for e in f.filter(near, req(), fleet)] == ["hot"]
    no_predictions = CycleState()
    no_predictions.write(PREFIX_CACHE_MATCH_INFO_KEY, PrefixCacheMatchInfo({}, 16, scores={"hot": 1.0}))
    assert [e.key for e in f.filter(no_predictions, req(), fleet)] == ["hot"]


def test_accuracy_scaling_weighs_the_scores_by_the_models_recent_accuracy() -> None:
    info = LatencyPredictionInfo.build({"a": 100.0, "b": 300.0}, {"a": 10.0, "b": 10.0}, ttft_error=0.4)
    cycle = CycleState()
    cycle.write(LATENCY_PREDICTION_INFO_KEY, info)
    endpoints = [ep("a"), ep("b")]
    plain = LatencyScorer(TypedName("latency-scorer", "s")).score(cycle, req("hi"), endpoints)
    scaled = LatencyScorer(TypedName("latency-scorer", "s"), LatencyScorerParams(accuracyScaling=True)).score(
        cycle, req("hi"), endpoints
    )
    assert plain["a"] > plain["b"]
    assert scaled == pytest.approx({k: v * 0.6 for k, v in plain.items()})
