"""The approximate prefix-cache index: which endpoints are believed to hold which prompt blocks.

Two maps kept consistent under one lock: block hash → endpoint keys holding it, and per endpoint an LRU of
its block hashes (capacity in blocks, typically the endpoint's GPU block count). Every operation is one
critical section, so concurrent adds, removals and lookups never see a half-applied change. Holders are
kept as immutable tuples (replaced, never mutated; also ~200 bytes per block smaller than a set), so what a
lookup hands out can never change under the caller.

Hashes of one request are inserted deepest block first, so the first block (shared by every longer prefix)
ends up most recently used and is the last to be evicted.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Collection, Sequence

__all__ = ["PrefixIndex"]


class PrefixIndex:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owners: dict[int, tuple[str, ...]] = {}
        self._lrus: dict[str, OrderedDict[int, None]] = {}
        self._capacity: dict[str, int] = {}
        self._size = 0

    # ---- writes ------------------------------------------------------------------------------------

    def add(self, key: str, hashes: Sequence[int], capacity: int) -> list[int]:
        """Record that endpoint `key` now caches `hashes`; returns the hashes that were new for it.

        `capacity` (blocks, >= 1) also resizes the endpoint's LRU when it changed since the last add.
        """
        if capacity < 1:
            raise ValueError(f"LRU capacity must be >= 1, got {capacity}")
        with self._lock:
            lru = self._lrus.get(key)
            if lru is None:
                lru = self._lrus[key] = OrderedDict()
            self._capacity[key] = capacity
            owners = self._owners
            added: list[int] = []
            for h in reversed(hashes):
                if h in lru:
                    lru.move_to_end(h)
                    continue
                lru[h] = None
                holders = owners.get(h)
                owners[h] = (key,) if holders is None else (*holders, key)
                added.append(h)
            self._size += len(added)
            if len(lru) > capacity:
                self._evict(key, lru, len(lru) - capacity)
                added = [h for h in added if h in lru]
            return added

    def remove(self, key: str, hashes: Collection[int]) -> None:
        """Forget that endpoint `key` caches `hashes` (unknown ones are ignored)."""
        with self._lock:
            lru = self._lrus.get(key)
            if lru is None:
                return
            for h in hashes:
                if h in lru:
                    del lru[h]
                    self._drop_owner(h, key)
                    self._size -= 1

    def remove_endpoint(self, key: str) -> None:
        with self._lock:
            self._remove_endpoint(key)

    def retain(self, keys: Collection[str]) -> list[str]:
        """Purge every endpoint not in `keys`; returns the purged keys."""
        with self._lock:
            gone = [k for k in self._lrus if k not in keys]
            for k in gone:
                self._remove_endpoint(k)
            return gone

    # ---- reads -------------------------------------------------------------------------------------

    def get(self, block_hash: int) -> frozenset[str]:
        """The endpoints holding `block_hash` (a copy; empty when unknown)."""
        with self._lock:
            holders = self._owners.get(block_hash)
            return frozenset(holders) if holders else frozenset()

    def match(self, hashes: Sequence[int]) -> dict[str, int]:
        """Greedy longest-prefix match: per endpoint, the number of blocks held among the leading blocks
        up to the first block no endpoint holds (upstream's `matchLongestPrefix`)."""
        counts: dict[str, int] = {}
        with self._lock:
            owners = self._owners
            for h in hashes:
                holders = owners.get(h)
                if not holders:
                    break
                for key in holders:
                    counts[key] = counts.get(key, 0) + 1
        return counts

    def size(self) -> int:
        """Total (endpoint, block) entries."""
        return self._size

    def endpoints(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._lrus)

    def capacity(self, key: str) -> int | None:
        with self._lock:
            return self._capacity.get(key)

    def blocks(self, key: str) -> list[int]:
        """The endpoint's hashes, least recently used first (a copy)."""
        with self._lock:
            lru = self._lrus.get(key)
            return list(lru) if lru is not None else []

    # ---- internals (lock held) ----------------------------------------------------------------------

    def _evict(self, key: str, lru: OrderedDict[int, None], count: int) -> None:
        for _ in range(count):
            h, _unused = lru.popitem(last=False)
            self._drop_owner(h, key)
        self._size -= count

    def _drop_owner(self, h: int, key: str) -> None:
        holders = self._owners.get(h)
        if holders is None:
            return
        if len(holders) == 1:
            if holders[0] == key:
                del self._owners[h]
            return
        self._owners[h] = tuple(k for k in holders if k != key)

    def _remove_endpoint(self, key: str) -> None:
        lru = self._lrus.pop(key, None)
        self._capacity.pop(key, None)
        if lru is None:
            return
        for h in lru:
            self._drop_owner(h, key)
        self._size -= len(lru)
