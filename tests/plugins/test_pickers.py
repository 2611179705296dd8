"""Pickers: max score with random tie-break, uniform random, A-Res weighted random; seeded RNGs."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from epp.framework.types import ScoredEndpoint

from ._kit import build, cycle, ep, handle, req, scored

PICKERS = ["max-score-picker", "random-picker", "weighted-random-picker"]


def keys(result) -> list[str]:
    return [e.key for e in result.targets]


# ---- max-score-picker -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scores", "count", "expected"),
    [
        pytest.param([1.0, 3.0, 2.0], 1, ["e1"], id="best"),
        pytest.param([1.0, 3.0, 2.0], 2, ["e1", "e2"], id="fallback-in-order"),
        pytest.param([1.0, 3.0, 2.0], 3, ["e1", "e2", "e0"], id="all"),
        pytest.param([1.0, 3.0, 2.0], 10, ["e1", "e2", "e0"], id="more-than-available"),
        pytest.param([5.0], 1, ["e0"], id="single"),
        pytest.param([0.0, -1.0], 1, ["e0"], id="non-positive"),
    ],
)
def test_max_score_picker_orders_by_score(scores: list[float], count: int, expected: list[str]) -> None:
    candidates = scored(*((ep(f"e{i}"), s) for i, s in enumerate(scores)))
    picker = build("max-score-picker", {"maxNumOfEndpoints": count})
    assert keys(picker.pick(cycle(), req(), candidates)) == expected


@pytest.mark.parametrize("count", [0, -3])
def test_non_positive_max_num_of_endpoints_means_one(count: int) -> None:
    candidates = scored((ep("a"), 1.0), (ep("b"), 2.0))
    for type_name in PICKERS:
        picker = build(type_name, {"maxNumOfEndpoints": count})
        assert len(picker.pick(cycle(), req(), candidates).targets) == 1


@pytest.mark.parametrize("count", [1, 2])
def test_max_score_ties_are_broken_at_random(count: int) -> None:
    candidates = scored((ep("a"), 2.0), (ep("b"), 2.0), (ep("c"), 2.0), (ep("low"), 1.0))
    picker = build("max-score-picker", {"maxNumOfEndpoints": count}, h=handle(seed=7))
    firsts = Counter(keys(picker.pick(cycle(), req(), candidates))[0] for _ in range(600))
    assert set(firsts) == {"a", "b", "c"}
    assert min(firsts.values()) > 120  # roughly uniform (expected 200 each)


def test_max_score_fallbacks_follow_ties_then_lower_scores() -> None:
    candidates = scored((ep("a"), 2.0), (ep("b"), 2.0), (ep("low"), 1.0))
    picker = build("max-score-picker", {"maxNumOfEndpoints": 3})
    for _ in range(20):
        picked = keys(picker.pick(cycle(), req(), candidates))
        assert set(picked[:2]) == {"a", "b"} and picked[2] == "low"


def test_empty_candidate_list_picks_nothing() -> None:
    for type_name in PICKERS:
        assert build(type_name).pick(cycle(), req(), []).targets == ()


# ---- random-picker ----------------------------------------------------------------------------------------


def test_random_picker_ignores_scores_and_is_uniform() -> None:
    candidates = scored((ep("a"), 100.0), (ep("b"), 0.0), (ep("c"), 0.0))
    picker = build("random-picker", h=handle(seed=3))
    counts = Counter(keys(picker.pick(cycle(), req(), candidates))[0] for _ in range(900))
    assert set(counts) == {"a", "b", "c"}
    assert min(counts.values()) > 220


def test_random_picker_fallbacks_are_distinct() -> None:
    candidates = scored(*((ep(f"e{i}"), 1.0) for i in range(5)))
    picked = keys(build("random-picker", {"maxNumOfEndpoints": 5}).pick(cycle(), req(), candidates))
    assert sorted(picked) == [f"e{i}" for i in range(5)]


# ---- weighted-random-picker -------------------------------------------------------------------------------


def test_weighted_random_probability_is_proportional_to_score() -> None:
    candidates = scored((ep("a"), 3.0), (ep("b"), 1.0), (ep("zero"), 0.0))
    picker = build("weighted-random-picker", h=handle(seed=11))
    n = 8000
    counts = Counter(keys(picker.pick(cycle(), req(), candidates))[0] for _ in range(n))
    assert "zero" not in counts
    assert counts["a"] / n == pytest.approx(0.75, abs=0.03)


def test_weighted_random_without_positive_scores_is_uniform() -> None:
    candidates = scored((ep("a"), 0.0), (ep("b"), -1.0), (ep("c"), 0.0))
    picker = build("weighted-random-picker", h=handle(seed=5))
    counts = Counter(keys(picker.pick(cycle(), req(), candidates))[0] for _ in range(900))
    assert set(counts) == {"a", "b", "c"}


def test_weighted_random_fills_fallbacks_with_zero_scores_last() -> None:
    candidates = scored((ep("a"), 0.0), (ep("b"), 1.0), (ep("c"), 0.0))
    picker = build("weighted-random-picker", {"maxNumOfEndpoints": 3})
    for _ in range(20):
        picked = keys(picker.pick(cycle(), req(), candidates))
        assert picked[0] == "b" and sorted(picked[1:]) == ["a", "c"]


# ---- RNG discipline ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("type_name", PICKERS)
def test_pickers_are_deterministic_under_a_seeded_handle(type_name: str) -> None:
    candidates = scored(*((ep(f"e{i}"), 1.0 + (i % 3)) for i in range(10)))

    def run(seed: int) -> list[list[str]]:
        picker = build(type_name, {"maxNumOfEndpoints": 3}, h=handle(seed=seed))
        return [keys(picker.pick(cycle(), req(), candidates)) for _ in range(30)]

    assert run(1) == run(1)
    assert run(1) != run(2)


@pytest.mark.parametrize("type_name", PICKERS)
def test_pickers_do_not_reseed_per_pick(type_name: str) -> None:
    candidates = scored(*((ep(f"e{i}"), 1.0) for i in range(10)))
    picker = build(type_name, h=handle(seed=1))
    picks = {keys(picker.pick(cycle(), req(), candidates))[0] for _ in range(50)}
    assert len(picks) > 3


# ---- properties -------------------------------------------------------------------------------------------


@given(
    scores=st.lists(st.floats(-5, 50) | st.just(float("nan")), max_size=15),
    count=st.integers(-2, 20),
    type_name=st.sampled_from(PICKERS),
    seed=st.integers(0, 2**32),
)
def test_picks_are_distinct_members_of_the_candidates(
    scores: list[float], count: int, type_name: str, seed: int
) -> None:
    candidates = [ScoredEndpoint(ep(f"e{i}"), s) for i, s in enumerate(scores)]
    picker = build(type_name, {"maxNumOfEndpoints": count}, h=handle(seed=seed))
    picked = keys(picker.pick(cycle(), req(), candidates))
    assert len(picked) == len(set(picked))
    assert set(picked) <= {c.endpoint.key for c in candidates}
    assert len(picked) == min(max(count, 1), len(candidates))


def test_max_score_primary_is_always_a_best_scorer() -> None:
    rng = random.Random(0)
    picker = build("max-score-picker")
    for _ in range(200):
        candidates = [ScoredEndpoint(ep(f"e{i}"), float(rng.randrange(4))) for i in range(8)]
        best = max(c.score for c in candidates)
        primary = picker.pick(cycle(), req(), candidates).targets[0]
        assert next(c.score for c in candidates if c.endpoint is primary) == best
