"""The prefix machinery: chained block hashing and the per-endpoint LRU index (incl. under threads)."""

from __future__ import annotations

import random
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from epp.plugins.prefix.hashing import block_hashes, seed_hash
from epp.plugins.prefix.index import PrefixIndex

SEED = seed_hash("model")

# ---- hashing ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "block", "max_blocks", "expected"),
    [
        pytest.param(63, 64, 0, 0, id="shorter-than-a-block"),
        pytest.param(64, 64, 0, 1, id="one-block"),
        pytest.param(65, 64, 0, 2, id="trailing-partial-block"),
        pytest.param(4000, 64, 0, 63, id="4000-chars"),
        pytest.param(4000, 64, 10, 10, id="max-blocks"),
        pytest.param(650, 64, 10, 10, id="max-blocks-drops-trailing"),
        pytest.param(0, 64, 0, 0, id="empty"),
    ],
)
def test_block_counts(length: int, block: int, max_blocks: int, expected: int) -> None:
    assert len(block_hashes(b"x" * length, SEED, block, max_blocks)) == expected


def test_the_seed_separates_models_and_salts() -> None:
    material = b"a" * 256
    base = block_hashes(material, seed_hash("m"), 64)
    assert block_hashes(material, seed_hash("m"), 64) == base
    assert set(block_hashes(material, seed_hash("other"), 64)).isdisjoint(base)
    assert set(block_hashes(material, seed_hash("m", "salt"), 64)).isdisjoint(base)
    assert seed_hash("m", "salt") != seed_hash("ms", "alt") != seed_hash("msalt")


def test_hashes_are_chained_so_a_block_identifies_its_whole_prefix() -> None:
    a = block_hashes(b"A" * 64 + b"same" * 16, SEED, 64)
    b = block_hashes(b"B" * 64 + b"same" * 16, SEED, 64)
    assert a[0] != b[0] and a[1] != b[1]


def test_trailing_partial_block_distinguishes_tails() -> None:
    a = block_hashes(b"p" * 64 + b"http://x/1.png", SEED, 64)
    b = block_hashes(b"p" * 64 + b"http://x/2.png", SEED, 64)
    assert a[0] == b[0] and a[1] != b[1]


@given(common=st.binary(max_size=600), a=st.binary(max_size=200), b=st.binary(max_size=200))
def test_shared_prefix_blocks_hash_equally(common: bytes, a: bytes, b: bytes) -> None:
    full = len(common) // 16
    ha = block_hashes(common + a, SEED, 16)
    hb = block_hashes(common + b, SEED, 16)
    assert ha[:full] == hb[:full]


# ---- index ------------------------------------------------------------------------------------------------


def test_unknown_hash_gives_an_empty_set() -> None:
    assert PrefixIndex().get(42) == frozenset()


def test_lookup_returns_a_copy() -> None:
    index = PrefixIndex()
    index.add("a", [1, 2], 10)
    got = index.get(1)
    index.add("b", [1], 10)
    index.remove_endpoint("a")
    assert got == {"a"}
    assert index.get(1) == {"b"}


def test_add_reports_new_hashes_and_counts_entries() -> None:
    index = PrefixIndex()
    assert sorted(index.add("a", [1, 2, 3], 10)) == [1, 2, 3]
    assert index.add("a", [1, 2, 4], 10) == [4]
    index.add("b", [1], 10)
    assert index.size() == 5
    assert index.endpoints() == {"a", "b"}


def test_lru_evicts_least_recently_used_and_keeps_the_first_block_longest() -> None:
    index = PrefixIndex()
    index.add("a", [1, 2, 3], 3)
    index.add("a", [9], 3)  # evicts the deepest block of the first prompt, not its first block
    assert index.get(1) == {"a"} and index.get(3) == frozenset()
    assert index.blocks("a") == [2, 1, 9]
    assert index.size() == 3


def test_capacity_follows_the_latest_value() -> None:
    index = PrefixIndex()
    index.add("a", list(range(10)), 10)
    assert index.capacity("a") == 10
    index.add("a", [], 4)  # the endpoint's block count shrank
    assert index.capacity("a") == 4 and index.size() == 4
    index.add("a", [100, 101], 20)
    assert len(index.blocks("a")) == 6


def test_add_longer_than_capacity_keeps_the_leading_blocks() -> None:
    index = PrefixIndex()
    added = index.add("a", [1, 2, 3, 4, 5], 2)
    assert sorted(added) == [1, 2]
    assert index.match([1, 2, 3]) == {"a": 2}


def test_remove_and_retain() -> None:
    index = PrefixIndex()
    index.add("a", [1, 2], 10)
    index.add("b", [1, 3], 10)
    index.remove("a", [1, 77])
    assert index.get(1) == {"b"} and index.get(2) == {"a"}
    assert index.retain({"b", "unknown"}) == ["a"]
    assert index.endpoints() == {"b"} and index.get(2) == frozenset()
    assert index.size() == 2


def test_invalid_capacity_is_rejected() -> None:
    with pytest.raises(ValueError, match="capacity"):
        PrefixIndex().add("a", [1], 0)


@pytest.mark.parametrize(
    ("entries", "query", "expected"),
    [
        pytest.param({"a": [1, 2, 3], "b": [1, 2]}, [1, 2, 3, 4], {"a": 3, "b": 2}, id="longest"),
        pytest.param({"a": [2, 3]}, [1, 2, 3], {}, id="first-block-missing"),
        pytest.param(
            {"a": [1, 3], "b": [1, 2]}, [1, 2, 3], {"a": 2, "b": 2}, id="not-per-endpoint-contiguous"
        ),
        pytest.param({}, [], {}, id="empty"),
    ],
)
def test_match_is_greedy_up_to_the_first_block_nobody_holds(
    entries: dict[str, list[int]], query: list[int], expected: dict[str, int]
) -> None:
    index = PrefixIndex()
    for key, hashes in entries.items():
        index.add(key, hashes, 100)
    assert index.match(query) == expected


@given(
    prompts=st.lists(st.binary(min_size=0, max_size=300), min_size=1, max_size=8),
    query=st.binary(max_size=300),
    extra=st.binary(min_size=1, max_size=100),
)
def test_match_is_monotone_in_the_shared_prefix(prompts: list[bytes], query: bytes, extra: bytes) -> None:
    index = PrefixIndex()
    for i, p in enumerate(prompts):
        index.add(f"e{i % 3}", block_hashes(p, SEED, 16), 1000)
    hashes = block_hashes(query, SEED, 16)
    longer = block_hashes(query + extra, SEED, 16)
    short, long_ = index.match(hashes), index.match(longer)
    full_blocks = len(query) // 16
    shorter_full = index.match(hashes[:full_blocks])
    for key, n in shorter_full.items():
        # extending the prompt never lowers the match of its full-block prefix
        assert long_.get(key, 0) >= n
    assert all(n <= len(hashes) for n in short.values())


def _consistent(index: PrefixIndex) -> None:
    with index._lock:
        pairs_from_lrus = {(h, k) for k, lru in index._lrus.items() for h in lru}
        pairs_from_owners = {(h, k) for h, keys in index._owners.items() for k in keys}
        assert pairs_from_lrus == pairs_from_owners
        assert all(index._owners.values()), "empty holder entries must be dropped"
        assert all(len(set(keys)) == len(keys) for keys in index._owners.values()), "duplicate holders"
        assert index._size == len(pairs_from_lrus)
        for k, lru in index._lrus.items():
            assert len(lru) <= index._capacity[k]


def test_concurrent_adds_removals_and_lookups_stay_consistent() -> None:
    index = PrefixIndex()
    keys = [f"e{i}" for i in range(6)]
    prompts = [[random.Random(p).getrandbits(64) for _ in range(40)] for p in range(12)]
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(1500):
                key = rng.choice(keys)
                op = rng.random()
                if op < 0.6:
                    index.add(key, rng.choice(prompts)[: rng.randrange(1, 40)], rng.choice([16, 64, 500]))
                elif op < 0.8:
                    index.remove(key, rng.choice(prompts)[:10])
                elif op < 0.9:
                    index.remove_endpoint(key)
                else:
                    index.retain(set(rng.sample(keys, 4)))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    def reader() -> None:
        try:
            while not stop.is_set():
                for p in prompts:
                    for h in p[:5]:
                        got = index.get(h)
                        snapshot = set(got)
                        assert got <= set(keys)
                        assert set(got) == snapshot  # a copy: never mutated under the caller
                    counts = index.match(p)
                    assert all(0 < n <= len(p) for n in counts.values())
        except BaseException as exc:
            errors.append(exc)

    writers = [threading.Thread(target=writer, args=(s,)) for s in range(4)]
    readers = [threading.Thread(target=reader) for _ in range(2)]
    for t in writers + readers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in readers:
        t.join()
    assert not errors, errors
    _consistent(index)
