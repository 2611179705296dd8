"""Speculative entries: the blocks a routed request will make its engine store, before the engine says so.

When `precise-prefix-cache-producer` sends a request to an endpoint with a live event feed, the request's
block keys are entered here for that endpoint with an expiry, so the next request of the same prefix
already sees them (the engine's `BlockStored` only comes once it has prefilled). They are this EPP's own
guesses, so they live in the plugin, not in the event index the data layer feeds: the index's `match`
takes them as an overlay (`entries`), counted as GPU blocks until they expire.

- `add` skips the keys the endpoint already holds (the event index says so), so a later `BlockRemoved`
  is not hidden by a guess;
- `confirm` (called with the keys of each `BlockStored`) drops the entries the engine confirmed: from
  then on the event index alone says whether the block is there;
- `shorten` brings expiries forward (the response ended: the blocks must show up in events soon);
- expired entries are pruned lazily (a heap by expiry) on `add`, and ignored by `match` meanwhile.

One lock. `match` holds it while the index matches (lock order: this one, then the index's), and
`confirm` takes it after the index has released its own, so a guess and the event that confirms it never
cross.
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Collection, Iterable, Sequence

from epp.datalayer.kvevents.index import MatchCounts, PreciseIndex

__all__ = ["SpeculativeEntries"]


class SpeculativeEntries:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[int, dict[str, float]] = {}  # key -> endpoint -> expiry
        self._queue: list[tuple[float, int, str]] = []  # a heap by expiry

    def add(self, index: PreciseIndex, endpoint: str, keys: Sequence[int], expiry: float, now: float) -> int:
        """Enter `keys` for `endpoint` until `expiry`, except those `index` says it holds; returns how many
        were new."""
        added = 0
        with self._lock:
            self._prune(now)
            held = index.held(endpoint, keys)
            for key in keys:
                if key in held:
                    continue
                spec = self._entries.get(key)
                if spec is None:
                    spec = self._entries[key] = {}
                if endpoint not in spec:
                    added += 1
                spec[endpoint] = expiry
                heapq.heappush(self._queue, (expiry, key, endpoint))
        return added

    def shorten(self, endpoint: str, keys: Iterable[int], expiry: float) -> None:
        """Bring the expiry of `endpoint`'s entries for `keys` forward to `expiry`."""
        with self._lock:
            for key in keys:
                spec = self._entries.get(key)
                if spec is not None:
                    old = spec.get(endpoint)
                    if old is not None and old > expiry:
                        spec[endpoint] = expiry
                        heapq.heappush(self._queue, (expiry, key, endpoint))

    def confirm(self, endpoint: str, keys: Iterable[int]) -> None:
        """The engine stored `keys`: its entries for them are no longer guesses."""
        with self._lock:
            entries = self._entries
            for key in keys:
                spec = entries.get(key)
                if spec is not None and spec.pop(endpoint, None) is not None and not spec:
                    del entries[key]

    def match(
        self,
        index: PreciseIndex,
        keys: Sequence[int],
        endpoints: Collection[str],
        now: float,
        other_tier_weight: float,
    ) -> MatchCounts:
        """`index.match` with these entries as an overlay."""
        with self._lock:
            return index.match(
                keys, endpoints, now, speculative=self._entries, other_tier_weight=other_tier_weight
            )

    def retain(self, endpoints: Collection[str]) -> None:
        """Forget the entries of every endpoint not in `endpoints`."""
        with self._lock:
            for key in list(self._entries):
                spec = self._entries[key]
                for endpoint in [e for e in spec if e not in endpoints]:
                    del spec[endpoint]
                if not spec:
                    del self._entries[key]

    def size(self) -> int:
        """(endpoint, key) entries, expired ones not yet pruned included."""
        with self._lock:
            return sum(len(s) for s in self._entries.values())

    def _prune(self, now: float) -> None:
        queue = self._queue
        while queue and queue[0][0] <= now:
            expiry, key, endpoint = heapq.heappop(queue)
            spec = self._entries.get(key)
            if spec is not None and spec.get(endpoint) == expiry:
                del spec[endpoint]
                if not spec:
                    del self._entries[key]
