"""Speculative entries: the producer's guesses of the blocks a routed request will make its engine store,
an overlay on the event index until the engine confirms them or they expire."""

from __future__ import annotations

from epp.datalayer.kvevents.events import EventBatch, Removed, Stored
from epp.datalayer.kvevents.index import PreciseIndex
from epp.datalayer.kvevents.keys import BASE_SEED, block_keys
from epp.plugins.kvevents.speculation import SpeculativeEntries
from epp.tools.sim.kvcache import chain_block_hashes

BS = 4
PROMPT = list(range(100, 120))  # 5 blocks
K = block_keys(PROMPT, BS, BASE_SEED)


def engine_stores(idx: PreciseIndex, endpoint: str, tokens) -> None:
    n = len(tokens) // BS
    hashes = chain_block_hashes(tokens, BS)[:n]
    idx.apply(endpoint, EventBatch(0.0, (Stored(tuple(hashes), None, tuple(tokens[: n * BS]), BS),)))


def speculation() -> tuple[PreciseIndex, SpeculativeEntries]:
    idx, spec = PreciseIndex(), SpeculativeEntries()
    idx.add_stored_listener(spec.confirm)  # as the producer wires it
    return idx, spec


def test_speculative_entries_count_until_they_expire_and_are_confirmed_by_events() -> None:
    idx, spec = speculation()
    assert spec.add(idx, "a", K, expiry=10.0, now=0.0) == 5
    assert spec.match(idx, K, ["a"], now=5.0, other_tier_weight=0.8).blocks == {"a": 5}
    assert spec.match(idx, K, ["a"], now=10.0, other_tier_weight=0.8).blocks == {}  # expired
    spec.add(idx, "a", K[:2], expiry=20.0, now=10.0)
    engine_stores(idx, "a", PROMPT)  # the engine confirms: now real, no longer speculative
    assert spec.size() == 0
    assert spec.match(idx, K, ["a"], now=30.0, other_tier_weight=0.8).blocks == {"a": 5}
    assert spec.add(idx, "a", K, expiry=40.0, now=30.0) == 0  # already held


def test_a_confirmed_block_removed_later_is_not_kept_alive_by_its_guess() -> None:
    idx, spec = speculation()
    spec.add(idx, "a", K, expiry=100.0, now=0.0)
    engine_stores(idx, "a", PROMPT)
    idx.apply("a", EventBatch(0.0, (Removed(tuple(chain_block_hashes(PROMPT, BS)[:5])),)))  # evicted
    assert spec.match(idx, K, ["a"], now=1.0, other_tier_weight=0.8).blocks == {}


def test_expired_speculative_entries_are_pruned() -> None:
    idx, spec = speculation()
    for i in range(50):
        spec.add(idx, "a", [i], expiry=1.0 + i, now=0.0)
    spec.add(idx, "a", [999], expiry=100.0, now=60.0)
    assert spec.size() == 1


def test_shorten_brings_expiries_forward_only() -> None:
    idx, spec = speculation()
    spec.add(idx, "a", K, expiry=30.0, now=0.0)
    spec.shorten("a", K[:2], expiry=5.0)
    spec.shorten("a", K, expiry=50.0)  # later: no change
    assert spec.match(idx, K, ["a"], now=6.0, other_tier_weight=0.8).blocks == {}
    spec.add(idx, "b", K, expiry=30.0, now=0.0)
    assert spec.match(idx, K, ["a", "b"], now=29.0, other_tier_weight=0.8).blocks == {"b": 5}


def test_retain_forgets_the_entries_of_endpoints_that_left() -> None:
    idx, spec = speculation()
    spec.add(idx, "a", [1], expiry=9.0, now=0.0)
    spec.add(idx, "c", [1, 2], expiry=9.0, now=0.0)
    spec.retain({"a"})
    assert spec.size() == 1
    assert spec.match(idx, [1], ["a", "c"], now=1.0, other_tier_weight=0.8).blocks == {"a": 1}
