"""The precise index: events keyed by token content, removal by engine hash, tiers, an overlay of guesses,
caps, stored-key listeners."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from epp.datalayer.kvevents.events import AllCleared, EventBatch, Removed, Stored
from epp.datalayer.kvevents.index import PreciseIndex
from epp.datalayer.kvevents.keys import BASE_SEED, block_keys, lora_seed
from epp.tools.sim.kvcache import chain_block_hashes

BS = 4


def stored(tokens, parent=None, lora=None, medium="GPU", engine_hashes=None, start=0):
    """A BlockStored for the full blocks of tokens[start*BS:], with the simulator's own chain hashes."""
    hashes = chain_block_hashes(tokens, BS, lora)
    n = len(tokens) // BS
    return Stored(
        tuple(engine_hashes or hashes[start:n]),
        parent if parent is not None else (hashes[start - 1] if start else None),
        tuple(tokens[start * BS : n * BS]),
        BS,
        lora,
        medium,
    )


def batch(*events) -> EventBatch:
    return EventBatch(0.0, tuple(events))


def keys(tokens, lora=None):
    return block_keys(tokens, BS, lora_seed(lora) if lora else BASE_SEED)


PROMPT = list(range(100, 120))  # 5 blocks


def test_stored_blocks_match_the_request_keys() -> None:
    idx = PreciseIndex()
    added = idx.apply("a", batch(stored(PROMPT)))
    assert added == list(keys(PROMPT))
    m = idx.match(keys(PROMPT), ["a", "b"], now=0.0)
    assert m.blocks == {"a": 5} and m.weighted == {"a": 5.0}
    assert idx.block_size("a") == BS and idx.batches("a") == 1 and idx.batches("b") == 0


def test_blocks_stored_in_several_events_chain_through_the_parent() -> None:
    idx = PreciseIndex()
    idx.apply("a", batch(stored(PROMPT[:8])))
    idx.apply("a", batch(stored(PROMPT, start=2)))  # blocks 2..4, parent = engine hash of block 1
    assert idx.match(keys(PROMPT), ["a"], 0.0).blocks == {"a": 5}
    assert idx.stats().unknown_blocks == 0


def test_a_block_whose_parent_was_never_seen_cannot_be_keyed_but_its_removal_is_understood() -> None:
    idx = PreciseIndex()
    idx.apply("a", batch(stored(PROMPT, start=2)))  # parent unknown: events missed
    assert idx.match(keys(PROMPT), ["a"], 0.0).blocks == {}
    assert idx.stats().unknown_blocks == 3
    engine = chain_block_hashes(PROMPT, BS)
    idx.apply("a", batch(Removed(tuple(engine[2:5]))))
    assert idx.stats().unknown_blocks == 0


def test_removed_blocks_break_the_run_at_the_first_gap() -> None:
    idx = PreciseIndex()
    idx.apply("a", batch(stored(PROMPT)))
    engine = chain_block_hashes(PROMPT, BS)
    idx.apply("a", batch(Removed((engine[2],), "GPU")))
    assert idx.match(keys(PROMPT), ["a"], 0.0).blocks == {"a": 2}
    idx.apply("a", batch(Removed((12345,))))  # unknown hashes are ignored
    assert idx.size() == 4


def test_all_blocks_cleared_forgets_one_endpoint_only() -> None:
    idx = PreciseIndex()
    idx.apply("a", batch(stored(PROMPT)))
    idx.apply("b", batch(stored(PROMPT)))
    idx.apply("a", batch(AllCleared()))
    assert idx.match(keys(PROMPT), ["a", "b"], 0.0).blocks == {"b": 5}


def test_tiers_weigh_and_a_gpu_removal_keeps_the_cpu_copy() -> None:
    idx = PreciseIndex()
    idx.apply("a", batch(stored(PROMPT, medium="CPU")))
    m = idx.match(keys(PROMPT), ["a"], 0.0, other_tier_weight=0.5)
    assert m.blocks == {"a": 5} and m.weighted == {"a": 2.5}
    assert idx.match(keys(PROMPT), ["a"], 0.0).weighted == {"a": pytest.approx(4.0)}  # the default 0.8
    idx.apply("a", batch(stored(PROMPT, medium="GPU")))
    assert idx.match(keys(PROMPT), ["a"], 0.0, other_tier_weight=0.5).weighted == {"a": 5.0}
    engine = chain_block_hashes(PROMPT, BS)
    idx.apply("a", batch(Removed(tuple(engine), "GPU")))
    m = idx.match(keys(PROMPT), ["a"], 0.0, other_tier_weight=0.5)
    assert m.blocks == {"a": 5} and m.weighted == {"a": 2.5}
    idx.apply("a", batch(Removed(tuple(engine), "CPU")))
    assert idx.match(keys(PROMPT), ["a"], 0.0).blocks == {}


def test_lora_blocks_are_seeded_by_the_adapter_name() -> None:
    idx = PreciseIndex()
    idx.apply("a", batch(stored(PROMPT, lora="sql")))
    assert idx.lora_names == {"sql"}
    assert idx.match(keys(PROMPT), ["a"], 0.0).blocks == {}
    assert idx.match(keys(PROMPT, lora="sql"), ["a"], 0.0).blocks == {"a": 5}


def test_an_overlay_of_guesses_counts_until_each_expires() -> None:
    idx = PreciseIndex()
    k = keys(PROMPT)
    overlay = {key: {"a": 10.0} for key in k}
    assert idx.match(k, ["a"], now=5.0, speculative=overlay).blocks == {"a": 5}
    assert idx.match(k, ["a"], now=10.0, speculative=overlay).blocks == {}  # expired
    idx.apply("a", batch(stored(PROMPT[:8])))  # reported blocks and guesses chain into one run
    assert idx.match(k, ["a"], now=10.0, speculative={k[2]: {"a": 11.0}}).blocks == {"a": 3}


def test_the_per_endpoint_cap_evicts_the_oldest_blocks() -> None:
    idx = PreciseIndex(max_blocks_per_endpoint=3)
    idx.apply("a", batch(stored(PROMPT)))
    assert idx.size() == 3
    assert idx.match(keys(PROMPT), ["a"], 0.0).blocks == {}  # the first blocks went first
    assert not idx.holds("a", keys(PROMPT)[0]) and idx.holds("a", keys(PROMPT)[4])


def test_retain_and_remove_endpoint() -> None:
    idx = PreciseIndex()
    for e in ("a", "b", "c"):
        idx.apply(e, batch(stored(PROMPT)))
    assert sorted(idx.retain({"a"})) == ["b", "c"]
    assert idx.match(keys(PROMPT), ["a", "b", "c"], 0.0).blocks == {"a": 5}
    assert idx.stats().endpoints == 1
    idx.remove_endpoint("a")
    assert idx.size() == 0 and idx.batches("a") == 0


def test_stored_listeners_see_the_new_keys_until_removed() -> None:
    seen = []

    def listener(e, ks):
        seen.append((e, list(ks)))

    idx = PreciseIndex()
    idx.add_stored_listener(listener)
    idx.apply("a", batch(stored(PROMPT[:8])))
    idx.apply("a", batch(Removed((1,))))  # nothing stored: not told
    assert seen == [("a", list(keys(PROMPT[:8])))]
    idx.remove_stored_listener(listener)
    idx.apply("b", batch(stored(PROMPT)))
    assert len(seen) == 1


def test_held_tells_which_keys_an_endpoint_holds() -> None:
    idx = PreciseIndex()
    idx.apply("a", batch(stored(PROMPT[:8])))
    k = keys(PROMPT)
    assert idx.held("a", k) == frozenset(k[:2]) and idx.held("b", k) == frozenset()


@pytest.mark.parametrize(
    ("held", "expected"),
    [
        ({"a": [0, 1, 2, 3, 4], "b": [0, 1]}, {"a": 5, "b": 2}),
        ({"a": [0, 2, 3]}, {"a": 1}),  # consecutive from the first block only
        ({"a": [1, 2, 3]}, {}),
        ({"a": [0, 1], "b": [0, 1, 2, 3]}, {"a": 2, "b": 4}),  # per endpoint, unlike the greedy approx match
    ],
)
def test_match_counts_leading_blocks_per_endpoint(held, expected) -> None:
    idx = PreciseIndex()
    k = keys(PROMPT)
    overlay: dict[int, dict[str, float]] = {}
    for endpoint, blocks in held.items():
        for i in blocks:
            overlay.setdefault(k[i], {})[endpoint] = 99.0
    assert idx.match(k, ["a", "b"], now=1.0, speculative=overlay).blocks == expected


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["s", "r", "c"]), st.integers(0, 4), st.sampled_from(["a", "b"])),
        max_size=40,
    )
)
def test_the_index_agrees_with_a_model_of_the_engines(ops) -> None:
    """Random store / remove / clear sequences: the index holds exactly what each engine was told to hold."""
    idx = PreciseIndex()
    model: dict[str, set[int]] = {"a": set(), "b": set()}
    engine = chain_block_hashes(PROMPT, BS)
    k = keys(PROMPT)
    for op, i, e in ops:
        if op == "s":  # store blocks 0..i (vLLM stores a prefix: parents first)
            idx.apply(e, batch(stored(PROMPT[: (i + 1) * BS])))
            model[e] |= set(range(i + 1))
        elif op == "r":
            idx.apply(e, batch(Removed((engine[i],))))
            model[e].discard(i)
        else:
            idx.apply(e, batch(AllCleared()))
            model[e].clear()
    for e in ("a", "b"):
        assert {i for i in range(5) if idx.holds(e, k[i])} == model[e]
        run = 0
        while run in model[e]:
            run += 1
        assert idx.match(k, [e], 0.0).blocks.get(e, 0) == run
    assert idx.size() == len(model["a"]) + len(model["b"])
