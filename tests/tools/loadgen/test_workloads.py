"""Workloads are fully determined by their parameters and seed, and have inference-perf's shape."""

from __future__ import annotations

import itertools
import random
import statistics

import pytest

from epp.tools.loadgen.runner import poisson_arrivals
from epp.tools.loadgen.text import CHARS_PER_TOKEN, synthetic_text
from epp.tools.loadgen.workloads import (
    WORKLOADS,
    Session,
    Turn,
    Workload,
    build_workload,
    register_workload,
    shared_prefix,
)


def test_synthetic_text_has_the_requested_length_and_depends_only_on_the_rng_state() -> None:
    for tokens in (0, 1, 7, 250, 3000):
        assert len(synthetic_text(random.Random(1), tokens)) == tokens * CHARS_PER_TOKEN
    assert synthetic_text(random.Random(5), 500) == synthetic_text(random.Random(5), 500)
    assert synthetic_text(random.Random(5), 500) != synthetic_text(random.Random(6), 500)
    with pytest.raises(ValueError, match="tokens must be >= 0"):
        synthetic_text(random.Random(0), -1)


def test_shared_prefix_same_seed_same_workload_other_seed_other_workload() -> None:
    a = shared_prefix(groups=3, prompts_per_group=4, system_prompt_len=100, question_len=10, seed=7)
    b = shared_prefix(groups=3, prompts_per_group=4, system_prompt_len=100, question_len=10, seed=7)
    c = shared_prefix(groups=3, prompts_per_group=4, system_prompt_len=100, question_len=10, seed=8)
    assert a == b
    assert a.sessions != c.sessions
    assert {s.system for s in a.sessions}.isdisjoint({s.system for s in c.sessions})


def test_shared_prefix_shape() -> None:
    w = shared_prefix(groups=5, prompts_per_group=6, system_prompt_len=200, question_len=12, output_len=9)
    assert w.name == "shared_prefix"
    assert len(w.sessions) == w.num_requests == 30
    assert len({s.id for s in w.sessions}) == 30
    by_group: dict[str, list[Session]] = {}
    for s in w.sessions:
        by_group.setdefault(s.group, []).append(s)
        assert len(s.turns) == 1
        assert s.turns[0].max_tokens == 9
        assert len(s.system) == 200 * CHARS_PER_TOKEN
        assert len(s.turns[0].text) == 12 * CHARS_PER_TOKEN
    assert sorted(len(v) for v in by_group.values()) == [6] * 5
    systems = [{s.system for s in v} for v in by_group.values()]
    assert all(len(x) == 1 for x in systems)  # one system prompt per group ...
    firsts = {next(iter(x))[:64] for x in systems}
    assert len(firsts) == 5  # ... and groups differ from their first KV block (16 tokens) on
    questions = [s.turns[0].text for s in w.sessions]
    assert len(set(questions)) == 30
    assert "groups=5" in w.describe() and "seed" not in w.describe()


def test_shared_prefix_interleaves_groups_unless_told_not_to() -> None:
    shuffled = shared_prefix(groups=4, prompts_per_group=8, system_prompt_len=10, question_len=2, seed=3)
    ordered = shared_prefix(
        groups=4, prompts_per_group=8, system_prompt_len=10, question_len=2, seed=3, shuffle=False
    )
    assert [s.group for s in ordered.sessions] == [f"g{g}" for g in range(4) for _ in range(8)]
    assert [s.group for s in shuffled.sessions] != [s.group for s in ordered.sessions]
    assert sorted(s.id for s in shuffled.sessions) == sorted(s.id for s in ordered.sessions)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"groups": 0}, "groups must be >= 1"),
        ({"prompts_per_group": 0}, "prompts_per_group must be >= 1"),
        ({"output_len": 0}, "output_len must be >= 1"),
        ({"system_prompt_len": -1}, "must be >= 0"),
    ],
)
def test_shared_prefix_rejects_bad_parameters(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        shared_prefix(**kwargs)


def test_workloads_are_built_by_name_and_new_ones_can_be_registered() -> None:
    assert build_workload("shared_prefix", groups=2, prompts_per_group=2, seed=1) == shared_prefix(
        groups=2, prompts_per_group=2, seed=1
    )
    with pytest.raises(ValueError, match=r"unknown workload 'nope'; known: .*shared_prefix"):
        build_workload("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_workload("shared_prefix", shared_prefix)

    def two_turns(*, seed: int = 0) -> Workload:
        turns = (Turn("hello", 4), Turn("and then?", 4, think_time_s=0.5))
        return Workload("two_turns", (Session(id=f"s{seed}", group="chat", turns=turns),), api="chat")

    register_workload("test-two-turns", two_turns)
    try:
        w = build_workload("test-two-turns", seed=3)
        assert w.num_requests == 2 and w.api == "chat" and w.sessions[0].id == "s3"
    finally:
        del WORKLOADS["test-two-turns"]


def test_poisson_arrivals_are_seeded_and_have_the_requested_rate() -> None:
    a = poisson_arrivals(4000, rate=50.0, seed=1)
    assert a == poisson_arrivals(4000, rate=50.0, seed=1)
    assert a != poisson_arrivals(4000, rate=50.0, seed=2)
    assert a[0] == 0.0 and all(x < y for x, y in itertools.pairwise(a))
    gaps = [y - x for x, y in itertools.pairwise(a)]
    assert statistics.mean(gaps) == pytest.approx(1 / 50, rel=0.06)
    # exponential gaps: the standard deviation equals the mean
    assert statistics.stdev(gaps) == pytest.approx(1 / 50, rel=0.1)
    with pytest.raises(ValueError, match="rate must be > 0"):
        poisson_arrivals(3, rate=0, seed=0)
