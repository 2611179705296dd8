"""The engine's whole-list score combination gives exactly what the per-endpoint definition gives, and the
lazy `ScoredEndpoints` sequence (with the max-score picker's fast path on it) behaves like a list."""

from __future__ import annotations

import math
import random
import struct

import pytest

from epp.framework.cycle import CycleState
from epp.framework.types import ScoredEndpoint, ScoredEndpoints
from epp.plugins.pickers.max_score import MaxScorePicker
from epp.scheduling.profile import SchedulerProfile, WeightedScorer

from ._fakes import Fake, RecordingObserver, ep, req

SPECIAL = [0.0, -0.0, 1.0, 0.5, 1.7, -0.3, math.nan, math.inf, -math.inf, 1, 0, True]


def reference_totals(endpoints, scorer_outputs, weights):
    """The definition: total = 0.0, then += clamp(score) * weight per scorer (a left-out key adds 0)."""
    totals = dict.fromkeys((e.key for e in endpoints), 0.0)
    for scores, weight in zip(scorer_outputs, weights, strict=True):
        for key, value in scores.items():
            if key in totals:
                totals[key] += (1.0 if value > 1.0 else value if value > 0.0 else 0.0) * weight
    return [totals[e.key] for e in endpoints]


def bits(values):
    return [struct.pack("<d", float(v)) for v in values]


@pytest.mark.parametrize("seed", range(60))
def test_totals_are_bit_identical_to_the_per_endpoint_definition(seed: int) -> None:
    rng = random.Random(seed)
    endpoints = [ep(f"e{i}") for i in range(rng.randrange(1, 12))]
    n_scorers = rng.randrange(0, 6)
    outputs = []
    for _ in range(n_scorers):
        keys = [e.key for e in endpoints]
        if rng.random() < 0.3:
            rng.shuffle(keys)  # another order than the candidates'
        if rng.random() < 0.3:
            keys = keys[: rng.randrange(len(keys) + 1)]  # some endpoints left out
        if rng.random() < 0.2:
            keys.append("not-a-candidate")
        special = rng.random() < 0.4
        outputs.append({k: rng.choice(SPECIAL) if special else rng.random() for k in keys})
    weights = [rng.choice([1.0, 2.0, 3.0, 0.5, 0.0, -1.0, 1e-3]) for _ in range(n_scorers)]
    scorers = [Fake(f"s{i}", scores=out) for i, out in enumerate(outputs)]
    picker = Fake("picker")
    profile = SchedulerProfile(
        "p", (), tuple(WeightedScorer(s, w) for s, w in zip(scorers, weights, strict=True)), picker
    )
    profile.run(CycleState(), req(), endpoints, RecordingObserver())
    seen = picker.seen[0]
    assert bits(seen[e.key] for e in endpoints) == bits(reference_totals(endpoints, outputs, weights))


def test_scored_endpoints_reads_like_a_list_of_scored_endpoints() -> None:
    endpoints = [ep("a"), ep("b"), ep("c")]
    scored = ScoredEndpoints(endpoints, [0.5, 2.0, 1.0])
    as_list = [
        ScoredEndpoint(endpoints[0], 0.5),
        ScoredEndpoint(endpoints[1], 2.0),
        ScoredEndpoint(endpoints[2], 1.0),
    ]
    assert len(scored) == 3
    assert list(scored) == as_list
    assert scored[1] == as_list[1] and scored[-1] == as_list[-1]
    assert scored[1:] == as_list[1:]
    assert scored[1].endpoint is endpoints[1] and scored[1].score == 2.0
    assert as_list[2] in scored and scored.index(as_list[2]) == 2
    assert list(reversed(scored)) == as_list[::-1]
    with pytest.raises(IndexError):
        scored[3]
    with pytest.raises(ValueError):
        ScoredEndpoints(endpoints, [1.0])


@pytest.mark.parametrize("seed", range(40))
def test_max_score_picker_fast_path_picks_and_draws_exactly_like_the_list_path(seed: int) -> None:
    rng = random.Random(seed)
    endpoints = [ep(f"e{i}") for i in range(rng.randrange(1, 10))]
    pool = [0.0, 1.0, 2.0, 3.5] if rng.random() < 0.5 else [rng.random() for _ in range(50)]
    scores = [rng.choice(pool) for _ in endpoints]
    if rng.random() < 0.2:
        scores[rng.randrange(len(scores))] = math.nan
    fast = MaxScorePicker(Fake("x").typed_name, rng=random.Random(seed))
    slow = MaxScorePicker(Fake("x").typed_name, rng=random.Random(seed))
    for _ in range(5):  # the same winners, and the random streams stay in step
        picked_fast = fast.pick(CycleState(), req(), ScoredEndpoints(endpoints, scores)).targets
        picked_slow = slow.pick(CycleState(), req(), list(ScoredEndpoints(endpoints, scores))).targets
        assert picked_fast == picked_slow
