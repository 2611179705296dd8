"""The benchmark workloads (zipf, mixed, multiturn) and how `epp bench quality` sizes them per rate."""

from __future__ import annotations

import collections

import pytest

from epp.tools.bench.quality import FULL, make_workload
from epp.tools.loadgen.text import CHARS_PER_TOKEN
from epp.tools.loadgen.workloads import UNIQUE_GROUP, build_workload, mixed, multiturn, zipf


def test_zipf_is_seeded_and_skewed_so_the_hottest_group_needs_more_than_a_replica() -> None:
    a = zipf(requests=4000, seed=3)
    assert a == zipf(requests=4000, seed=3)
    assert a.sessions != zipf(requests=4000, seed=4).sessions
    counts = collections.Counter(s.group for s in a.sessions)
    share = counts["g0"] / 4000
    assert 0.18 < share < 0.27  # ~23 % at s=1.1 over 160 groups: more than 1/8 of the traffic
    ranked = [g for g, _ in counts.most_common(3)]
    assert ranked[0] == "g0" and set(ranked) <= {"g0", "g1", "g2", "g3"}
    assert len(counts) > 100  # the long tail is there
    s0 = next(s for s in a.sessions if s.group == "g0")
    assert len(s0.system) == 1500 * CHARS_PER_TOKEN and len(s0.turns[0].text) == 100 * CHARS_PER_TOKEN
    assert {s.system for s in a.sessions if s.group == "g0"} == {s0.system}
    flat = zipf(requests=4000, exponent=0.0, seed=3)
    assert collections.Counter(s.group for s in flat.sessions)["g0"] < 80  # uniform: ~25


def test_mixed_has_the_unique_share_and_unique_prompts_share_nothing() -> None:
    w = mixed(requests=2000, unique_share=0.3, unique_len=400, seed=1)
    unique = [s for s in w.sessions if s.group == UNIQUE_GROUP]
    assert 0.26 < len(unique) / 2000 < 0.34
    assert all(s.system == "" and len(s.turns[0].text) == 400 * CHARS_PER_TOKEN for s in unique)
    assert len({s.turns[0].text[:64] for s in unique}) == len(unique)  # no shared first block
    shared = [s for s in w.sessions if s.group != UNIQUE_GROUP]
    assert len({s.system for s in shared}) == 16
    assert all(s.turns[0].max_tokens == 16 for s in w.sessions)
    assert mixed(requests=50, unique_share=0.0).num_requests == 50
    with pytest.raises(ValueError, match="unique_share"):
        mixed(unique_share=1.5)


def test_multiturn_sessions_grow_with_think_time_and_are_seeded() -> None:
    w = multiturn(sessions=20, turns=4, groups=3, think_time_s=0.5, seed=2)
    assert w == multiturn(sessions=20, turns=4, groups=3, think_time_s=0.5, seed=2)
    assert w.api == "chat" and w.num_requests == 80
    assert len({s.system for s in w.sessions}) <= 3
    for s in w.sessions:
        assert s.turns[0].think_time_s == 0.0
        assert all(t.think_time_s >= 0 for t in s.turns)
    thinks = [t.think_time_s for s in w.sessions for t in s.turns[1:]]
    assert 0.3 < sum(thinks) / len(thinks) < 0.8  # exponential, mean 0.5
    assert all(t.think_time_s == 0 for s in multiturn(think_time_s=0).sessions for t in s.turns)
    with pytest.raises(ValueError, match="turns must be >= 1"):
        multiturn(turns=0)


def test_new_workloads_are_registered_by_name() -> None:
    assert build_workload("zipf", requests=5, seed=1) == zipf(requests=5, seed=1)
    assert build_workload("mixed", requests=5, seed=1) == mixed(requests=5, seed=1)
    assert build_workload("multiturn", sessions=2, seed=1) == multiturn(sessions=2, seed=1)


@pytest.mark.parametrize("name", ["shared_prefix", "zipf", "mixed"])
def test_quality_sizes_single_turn_workloads_as_rate_times_duration(name: str) -> None:
    w, session_rate = make_workload(name, 12.5, 8.0, FULL.shapes[name], seed=0)
    assert w.num_requests == len(w.sessions) == 100 and session_rate == 12.5
    again, _ = make_workload(name, 12.5, 8.0, FULL.shapes[name], seed=0)
    assert again == w


def test_quality_sizes_multiturn_by_sessions_at_rate_over_turns() -> None:
    w, session_rate = make_workload("multiturn", 30.0, 8.0, FULL.shapes["multiturn"], seed=0)
    turns = FULL.shapes["multiturn"]["turns"]
    assert session_rate == pytest.approx(30.0 / turns)
    assert len(w.sessions) == round(30.0 * 8.0 / turns)
    with pytest.raises(ValueError, match="unknown workload"):
        make_workload("nope", 1.0, 1.0, {}, seed=0)
