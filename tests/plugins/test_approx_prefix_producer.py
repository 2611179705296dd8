"""approx-prefix-cache-producer: matching, recording on pick, served-endpoint correction, auto-tuning,
purging, metrics, parameters; and prefix-cache-scorer's forwarded parameters."""

from __future__ import annotations

import dataclasses

import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from epp.framework.handle import SimpleHandle
from epp.plugins.datakeys import PREFIX_CACHE_MATCH_INFO_KEY
from epp.plugins.prefix.params import PrefixCacheParams

from ._kit import build, cycle, ep, fleet, handle, req, response, result

PROMPT = "You are a helpful assistant. " * 40  # 1160 chars -> 19 blocks of 64


class RecordingMetrics:
    def __init__(self) -> None:
        self.calls: list[tuple[float, int]] = []

    def record_prefix_match(self, hit_ratio: float, hit_bytes: int) -> None:
        self.calls.append((hit_ratio, hit_bytes))


def producer(params=None, metrics=None):
    h = handle()
    if metrics is not None:
        h = SimpleHandle(metrics=metrics)
    return build("approx-prefix-cache-producer", params, h=h)


def serve(p, request, endpoints, picked, served: str = "", **others):
    """One request through the producer: prepare, pick `picked`, then the response."""
    c = cycle()
    p.prepare_data(c, request, endpoints)
    info = c.read(PREFIX_CACHE_MATCH_INFO_KEY)
    res = result(picked, **others)
    p.pre_request(c, request, res)
    if served:
        p.response_received(c, request, response(served), res)
    return info


def test_a_repeated_prompt_matches_the_endpoint_it_went_to() -> None:
    p = producer()
    eps = fleet(3)
    first = serve(p, req(PROMPT), eps, eps[1])
    assert first.scores == {}
    assert first.total_blocks("e1") == 19
    second = serve(p, req(PROMPT), eps, eps[1])
    assert second.scores == {"e1": 1.0}
    assert second.match_blocks("e1") == 19


def test_partial_overlap_scores_the_shared_fraction() -> None:
    p = producer()
    eps = fleet(2)
    serve(p, req("a" * 640), eps, eps[0])  # 10 blocks
    info = serve(p, req("a" * 320 + "b" * 320), eps, eps[1])
    assert info.scores == {"e0": pytest.approx(5 / 10)}


def test_model_and_cache_salt_partition_the_index() -> None:
    p = producer()
    eps = fleet(2)
    serve(p, req(PROMPT, model="m1"), eps, eps[0])
    assert serve(p, req(PROMPT, model="m2"), eps, eps[1]).scores == {}
    assert serve(p, req(PROMPT, model="m1", salt="tenant-a"), eps, eps[1]).scores == {}
    assert serve(p, req(PROMPT, model="m1", salt="tenant-a"), eps, eps[1]).scores == {"e1": 1.0}


def test_target_model_seeds_the_hash() -> None:
    p = producer()
    eps = fleet(2)
    serve(p, req(PROMPT, model="alias", target="real"), eps, eps[0])
    assert serve(p, req(PROMPT, model="other-alias", target="real"), eps, eps[1]).scores == {"e0": 1.0}


def test_short_prompts_have_no_blocks() -> None:
    p = producer()
    eps = fleet(2)
    serve(p, req("hi"), eps, eps[0])
    info = serve(p, req("hi"), eps, eps[0])
    assert info.scores == {} and info.total_blocks("e0") == 0
    assert p.index_size() == 0


def test_prefill_target_is_recorded_too() -> None:
    p = producer()
    eps = fleet(3)
    serve(p, req(PROMPT), eps, eps[0], prefill=(eps[2],))
    assert serve(p, req(PROMPT), eps, eps[1]).scores == {"e0": 1.0, "e2": 1.0}


def test_only_the_primary_target_is_recorded_not_fallbacks() -> None:
    p = producer()
    eps = fleet(3)
    c = cycle()
    p.prepare_data(c, req(PROMPT), eps)
    p.pre_request(c, req(PROMPT), result(eps[0], eps[1], eps[2]))
    assert serve(p, req(PROMPT), eps, eps[0]).scores == {"e0": 1.0}


def test_served_endpoint_correction_moves_the_record() -> None:
    p = producer()
    eps = fleet(3)
    # e0 already holds the first half of the prompt from an earlier request
    serve(p, req(PROMPT[:640]), eps, eps[0])
    c = cycle()
    request = req(PROMPT)
    p.prepare_data(c, request, eps)
    res = result(eps[0], eps[1])  # primary e0, fallback e1
    p.pre_request(c, request, res)
    p.response_received(c, request, response(eps[1].address), res)  # the proxy fell back to e1
    info = serve(p, req(PROMPT), eps, eps[2])
    assert info.scores == {"e1": 1.0, "e0": pytest.approx(10 / 19)}  # e0 keeps what it really had


def test_served_endpoint_outside_the_target_list_is_found_among_candidates() -> None:
    p = producer()
    eps = fleet(3)
    serve(p, req(PROMPT), eps, eps[0], served=eps[2].address)
    assert serve(p, req(PROMPT), eps, eps[1]).scores == {"e2": 1.0}


@pytest.mark.parametrize("served", ["", "127.0.1.1:8000", "10.99.0.1:8000"])
def test_no_correction_when_served_is_absent_the_pick_or_unknown(served: str) -> None:
    p = producer()
    eps = fleet(2)
    serve(p, req(PROMPT), eps, eps[0], served=served)
    assert serve(p, req(PROMPT), eps, eps[1]).scores == {"e0": 1.0}


def test_correction_applies_once() -> None:
    p = producer()
    eps = fleet(3)
    c = cycle()
    request = req(PROMPT)
    p.prepare_data(c, request, eps)
    res = result(eps[0], eps[1], eps[2])
    p.pre_request(c, request, res)
    p.response_received(c, request, response(eps[1].address), res)
    p.response_received(c, request, response(eps[2].address), res)
    assert serve(p, req(PROMPT), eps, eps[0]).scores == {"e1": 1.0}


def test_served_ipv6_address_matches_its_endpoint() -> None:
    p = producer()
    eps = [ep("v6a", ip="fd00::1", port=8000), ep("v6b", ip="fd00::2", port=8000)]
    serve(p, req(PROMPT), eps, eps[0], served="[fd00:0::2]:8000")
    assert serve(p, req(PROMPT), eps, eps[0]).scores == {"v6b": 1.0}


def test_data_parallel_ranks_are_separate_endpoints() -> None:
    p = producer()
    eps = [ep("pod-rank-0", ip="10.0.0.5", port=8000), ep("pod-rank-1", ip="10.0.0.5", port=8001)]
    serve(p, req(PROMPT), eps, eps[1])
    assert serve(p, req(PROMPT), eps, eps[0]).scores == {"pod-rank-1": 1.0}


def test_pre_request_without_prepare_data_still_records() -> None:
    p = producer()
    eps = fleet(2)
    p.pre_request(cycle(), req(PROMPT), result(eps[1]))
    assert serve(p, req(PROMPT), eps, eps[0]).scores == {"e1": 1.0}


# ---- auto-tuning ------------------------------------------------------------------------------------------


def test_block_size_is_the_candidates_consensus_not_the_first_endpoint() -> None:
    p = producer()
    eps = [
        ep("odd", cache_block_size=32),
        ep("b", cache_block_size=8),
        ep("c", cache_block_size=8),
        ep("unknown"),
    ]
    c = cycle()
    p.prepare_data(c, req(PROMPT), eps)
    info = c.read(PREFIX_CACHE_MATCH_INFO_KEY)
    assert info.default_block_size == 8
    assert info.block_size("unknown") == 8 and info.block_size("odd") == 32
    assert info.total_blocks("b") == 37  # 1160 / 32 chars, trailing block included
    assert info.total_blocks("odd") == 10  # 1160 / 128


def test_endpoints_with_other_block_sizes_match_at_their_own_size() -> None:
    p = producer()
    eps = [ep("big", cache_block_size=32), ep("b", cache_block_size=8), ep("c", cache_block_size=8)]
    serve(p, req(PROMPT), eps, eps[0])
    serve(p, req(PROMPT), eps, eps[1])
    info = serve(p, req(PROMPT), eps, eps[2])
    assert info.scores == {"big": 1.0, "b": 1.0}


def test_without_reports_the_configured_block_size_is_used() -> None:
    p = producer({"blockSizeTokens": 4})
    c = cycle()
    p.prepare_data(c, req(PROMPT), fleet(2))
    assert c.read(PREFIX_CACHE_MATCH_INFO_KEY).total_blocks("e0") == 73  # 1160 / 16


def test_auto_tune_off_ignores_reported_sizes() -> None:
    p = producer({"autoTune": False, "blockSizeTokens": 4, "lruCapacityPerServer": 5})
    eps = [ep("a", cache_block_size=64, cache_num_blocks=1000)]
    info = serve(p, req(PROMPT), eps, eps[0])
    assert info.total_blocks("a") == 73
    assert p.index.capacity("a") == 5 and p.index_size() == 5


def test_lru_capacity_follows_the_endpoint_block_count() -> None:
    p = producer()
    a = ep("a", cache_num_blocks=7)
    serve(p, req(PROMPT), [a], a)
    assert p.index.capacity("a") == 7 and p.index_size() == 7
    grown = dataclasses.replace(a, metrics=dataclasses.replace(a.metrics, cache_num_blocks=100))
    serve(p, req(PROMPT), [grown], grown)
    assert p.index.capacity("a") == 100 and p.index_size() == 19
    unknown = ep("b")
    serve(p, req(PROMPT), [unknown], unknown)
    assert p.index.capacity("b") == 31_250


# ---- lifecycle and metrics --------------------------------------------------------------------------------


def test_removed_endpoints_are_purged() -> None:
    p = producer()
    eps = fleet(3)
    serve(p, req(PROMPT), eps, eps[0])
    serve(p, req(PROMPT), eps, eps[1])
    p.endpoints_changed(frozenset({"e1", "e2"}))
    assert p.index.endpoints() == {"e1"}
    assert serve(p, req(PROMPT), eps, eps[2]).scores == {"e1": 1.0}


def test_hit_ratio_and_bytes_are_reported_for_the_primary_target() -> None:
    metrics = RecordingMetrics()
    p = producer(metrics=metrics)
    eps = fleet(2)
    serve(p, req("a" * 640), eps, eps[0])
    serve(p, req("a" * 640 + "b" * 640), eps, eps[0])
    serve(p, req("a" * 640 + "b" * 640), eps, eps[1])
    assert metrics.calls == [(0.0, 0), (0.5, 10 * 16 * 4), (0.0, 0)]


def test_max_prefix_blocks_limits_hashing() -> None:
    p = producer({"maxPrefixBlocksToMatch": 5})
    c = cycle()
    p.prepare_data(c, req(PROMPT), fleet(1))
    assert c.read(PREFIX_CACHE_MATCH_INFO_KEY).total_blocks("e0") == 5


# ---- parameters -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "tokens", "max_blocks_at_16"),
    [
        ({}, 16, 256),
        ({"blockSizeTokens": 32}, 32, 256),
        ({"blockSize": 64}, 16, 256),
        ({"hashBlockSize": 128}, 32, 256),
        ({"blockSize": 2}, 1, 256),
        ({"blockSizeTokens": 8, "blockSize": 400}, 8, 256),
        ({"maxPrefixBlocksToMatch": 0}, 16, 0),
        ({"maxPrefixTokensToMatch": 160}, 16, 10),
        ({"maxPrefixTokensToMatch": 4}, 16, 1),
    ],
)
def test_parameter_interpretation(params: dict, tokens: int, max_blocks_at_16: int) -> None:
    parsed = PrefixCacheParams.model_validate(params)
    assert parsed.block_size_tokens == tokens
    assert parsed.max_blocks(16) == max_blocks_at_16


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"blockSize": 64, "hashBlockSize": 128}, "disagree"),
        ({"blockSizeTokens": 0}, "greater than 0"),
        ({"lruCapacityPerServer": 0}, "greater than 0"),
        ({"maxPrefixBlocksToMatch": -1}, "greater than or equal to 0"),
        ({"lruCapacity": 10}, "lruCapacity"),
    ],
)
def test_bad_parameters_are_rejected(params: dict, message: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=message):
        producer(params)


def test_v05_style_parameters_on_the_scorer_are_forwarded() -> None:
    scorer = build(
        "prefix-cache-scorer",
        {"hashBlockSize": 64, "maxPrefixBlocksToMatch": 256, "lruCapacityPerServer": 31250},
    )
    assert scorer.producer_parameters() == {
        "hashBlockSize": 64,
        "maxPrefixBlocksToMatch": 256,
        "lruCapacityPerServer": 31250,
    }
    forwarded = producer(scorer.producer_parameters())
    assert forwarded.params.block_size_tokens == 16


def test_scorer_without_index_parameters_forwards_nothing() -> None:
    assert build("prefix-cache-scorer").producer_parameters() is None
    assert build("prefix-cache-scorer", {}).producer_parameters() is None


def test_scorer_validates_forwarded_parameters_up_front() -> None:
    with pytest.raises(pydantic.ValidationError, match="disagree"):
        build("prefix-cache-scorer", {"blockSize": 64, "hashBlockSize": 32})
    with pytest.raises(pydantic.ValidationError, match="greater than 0"):
        build("prefix-cache-scorer", {"blockSizeTokens": 0})


def test_scorer_params_expose_producer_parameters_before_building() -> None:
    from epp.plugins.scorers.prefix_cache import PrefixCacheScorerParams

    assert PrefixCacheScorerParams().producer_parameters() is None
    assert PrefixCacheScorerParams.model_validate(
        {"autoTune": False, "blockSizeTokens": 8}
    ).producer_parameters() == {
        "autoTune": False,
        "blockSizeTokens": 8,
    }


@settings(max_examples=60, deadline=None)
@given(
    stored=st.text(alphabet="abc ", min_size=64, max_size=900),
    cuts=st.lists(st.integers(0, 900), min_size=2, max_size=5),
    tail=st.text(alphabet="xyz", min_size=1, max_size=200),
)
def test_matched_blocks_grow_with_the_shared_prefix(stored: str, cuts: list[int], tail: str) -> None:
    p = producer({"autoTune": False, "blockSizeTokens": 4})  # 16-character blocks
    eps = fleet(2)
    serve(p, req(stored), eps, eps[0])
    matched = []
    for cut in sorted(cuts):
        c = cycle()
        p.prepare_data(c, req(stored[:cut] + tail), eps)
        matched.append(c.read(PREFIX_CACHE_MATCH_INFO_KEY).match_blocks("e0"))
        assert matched[-1] >= min(cut, len(stored)) // 16  # every fully shared block matches
    assert matched == sorted(matched)
