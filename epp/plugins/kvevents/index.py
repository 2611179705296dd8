"""The precise prefix index: which endpoint's KV cache holds which block, as its engine reported it.

Fed by KV events (`apply`): `BlockStored` maps each engine block hash to our token key (`tokens.block_keys`,
chained from the parent's key, which the bridge looked up from the parent's engine hash), `BlockRemoved`
drops blocks by engine hash, `AllBlocksCleared` drops the endpoint's blocks. A stored block whose parent the
index never saw (events missed, or subscribed mid-run) cannot be keyed: it and its descendants are kept as
*unknown* so their removal is still understood, and counted in `stats().unknown_blocks`.

Between routing and the engine's `BlockStored`, `speculate` inserts entries with an expiry (speculative
entries) for the blocks a request will create, so the next request of the same prefix already sees them.
A `BlockStored` for the same key confirms (replaces) the speculative entry.

`match(keys, endpoints)` returns, per endpoint, how many leading blocks it holds consecutively (real or
unexpired speculative), and the tier-weighted count (GPU blocks weigh 1.0, other media `other_tier_weight`).

Each endpoint keeps at most `max_blocks_per_endpoint` bridge entries (oldest stored first out), so lost
`BlockRemoved` events cannot grow memory without bound. One lock; events and reads never interleave.
"""

from __future__ import annotations

import heapq
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Hashable, Iterable, Sequence
from dataclasses import dataclass, field

from epp.plugins.kvevents.tokens import block_keys, lora_seed
from epp.plugins.kvevents.wire import AllCleared, EventBatch, Removed, Stored

__all__ = ["IndexStats", "MatchCounts", "PreciseIndex"]

_GPU = 1
_OTHER = 2


def _medium_bit(medium: str | None) -> int:
    return _GPU if medium is None or medium.upper() in ("GPU", "CUDA", "DEVICE") else _OTHER


@dataclass(frozen=True, slots=True)
class IndexStats:
    endpoints: int
    blocks: int
    unknown_blocks: int
    speculative: int
    batches: int


@dataclass(frozen=True, slots=True)
class MatchCounts:
    """Consecutive leading blocks held per endpoint, and the tier-weighted count."""

    blocks: dict[str, int]
    weighted: dict[str, float]


@dataclass(slots=True)
class _Endpoint:
    # engine hash -> our key (None: unknown chain); insertion order = age for the cap
    bridge: OrderedDict[Hashable, int | None] = field(default_factory=OrderedDict)
    # our key -> media bitmask
    blocks: dict[int, int] = field(default_factory=dict)
    block_size: int = 0
    batches: int = 0


class PreciseIndex:
    def __init__(
        self,
        *,
        max_blocks_per_endpoint: int = 1 << 20,
        other_tier_weight: float = 0.8,
        on_stored: Callable[[str, Sequence[int]], None] | None = None,
    ) -> None:
        if max_blocks_per_endpoint < 1:
            raise ValueError("max_blocks_per_endpoint must be >= 1")
        self._lock = threading.Lock()
        self._endpoints: dict[str, _Endpoint] = {}
        self._holders: dict[int, dict[str, float]] = {}
        self._spec: dict[int, dict[str, float]] = {}
        self._spec_queue: list[tuple[float, int, str]] = []  # a heap by expiry
        self._lora_names: frozenset[str] = frozenset()
        self._max = max_blocks_per_endpoint
        self._other_weight = other_tier_weight
        self._on_stored = on_stored

    # ---- events --------------------------------------------------------------------------------------

    def apply(self, endpoint: str, batch: EventBatch) -> list[int]:
        """Apply one event batch from `endpoint`; returns the keys it stored."""
        stored: list[int] = []
        with self._lock:
            state = self._endpoints.get(endpoint)
            if state is None:
                state = self._endpoints[endpoint] = _Endpoint()
            state.batches += 1
            for event in batch.events:
                if isinstance(event, Stored):
                    self._stored(endpoint, state, event, stored)
                elif isinstance(event, Removed):
                    self._removed(endpoint, state, event.block_hashes, _medium_bit(event.medium))
                elif isinstance(event, AllCleared):
                    self._clear(endpoint, state)
        if stored and self._on_stored is not None:
            self._on_stored(endpoint, stored)
        return stored

    def _stored(self, endpoint: str, state: _Endpoint, event: Stored, out: list[int]) -> None:
        size = event.block_size
        state.block_size = size
        if event.lora_name and event.lora_name not in self._lora_names:
            self._lora_names = self._lora_names | {event.lora_name}
        if event.parent is None:
            prev: int | None = lora_seed(event.lora_name)
        else:
            prev = state.bridge.get(event.parent)
        bit = _medium_bit(event.medium)
        tokens = event.token_ids
        n = len(event.block_hashes)
        keys: Sequence[int | None]
        if prev is None or len(tokens) < n * size:
            keys = [None] * n
        else:
            keys = _continue(prev, tokens[: n * size], size)
        bridge = state.bridge
        for engine_hash, key in zip(event.block_hashes, keys, strict=True):
            if engine_hash in bridge:
                bridge.move_to_end(engine_hash)
            bridge[engine_hash] = key
            if key is None:
                continue
            mask = state.blocks.get(key, 0)
            state.blocks[key] = mask | bit
            self._set_holder(key, endpoint, mask | bit)
            spec = self._spec.get(key)
            if spec is not None and spec.pop(endpoint, None) is not None and not spec:
                del self._spec[key]
            out.append(key)
        while len(bridge) > self._max:
            _old_hash, old_key = bridge.popitem(last=False)
            if old_key is not None:
                self._drop(endpoint, state, old_key, _GPU | _OTHER)

    def _removed(self, endpoint: str, state: _Endpoint, hashes: Iterable[Hashable], bit: int) -> None:
        bridge = state.bridge
        for engine_hash in hashes:
            if engine_hash not in bridge:
                continue
            key = bridge[engine_hash]
            if key is None:
                del bridge[engine_hash]
                continue
            if self._drop(endpoint, state, key, bit):
                del bridge[engine_hash]

    def _drop(self, endpoint: str, state: _Endpoint, key: int, bits: int) -> bool:
        """Clear `bits` of the key's media; True when no medium is left (the block is gone)."""
        mask = state.blocks.get(key, 0) & ~bits
        if mask:
            state.blocks[key] = mask
            self._set_holder(key, endpoint, mask)
            return False
        state.blocks.pop(key, None)
        holders = self._holders.get(key)
        if holders is not None:
            holders.pop(endpoint, None)
            if not holders:
                del self._holders[key]
        return True

    def _clear(self, endpoint: str, state: _Endpoint) -> None:
        for key in state.blocks:
            holders = self._holders.get(key)
            if holders is not None:
                holders.pop(endpoint, None)
                if not holders:
                    del self._holders[key]
        state.blocks.clear()
        state.bridge.clear()

    def _set_holder(self, key: int, endpoint: str, mask: int) -> None:
        weight = 1.0 if mask & _GPU else self._other_weight
        holders = self._holders.get(key)
        if holders is None:
            self._holders[key] = {endpoint: weight}
        else:
            holders[endpoint] = weight

    # ---- speculative entries -------------------------------------------------------------------------

    def speculate(self, endpoint: str, keys: Iterable[int], expiry: float, now: float) -> int:
        """Insert speculative entries for `keys` on `endpoint` until `expiry`; returns how many were new."""
        added = 0
        with self._lock:
            self._prune(now)
            state = self._endpoints.get(endpoint)
            held = state.blocks if state is not None else {}
            for key in keys:
                if key in held:
                    continue
                spec = self._spec.get(key)
                if spec is None:
                    spec = self._spec[key] = {}
                if endpoint not in spec:
                    added += 1
                spec[endpoint] = expiry
                heapq.heappush(self._spec_queue, (expiry, key, endpoint))
        return added

    def shorten(self, endpoint: str, keys: Iterable[int], expiry: float) -> None:
        """Bring the expiry of `endpoint`'s speculative entries for `keys` forward to `expiry`."""
        with self._lock:
            for key in keys:
                spec = self._spec.get(key)
                if spec is not None:
                    old = spec.get(endpoint)
                    if old is not None and old > expiry:
                        spec[endpoint] = expiry
                        heapq.heappush(self._spec_queue, (expiry, key, endpoint))

    def _prune(self, now: float) -> None:
        queue = self._spec_queue
        while queue and queue[0][0] <= now:
            expiry, key, endpoint = heapq.heappop(queue)
            spec = self._spec.get(key)
            if spec is not None and spec.get(endpoint) == expiry:
                del spec[endpoint]
                if not spec:
                    del self._spec[key]

    # ---- reads ---------------------------------------------------------------------------------------

    def match(self, keys: Sequence[int], endpoints: Collection[str], now: float) -> MatchCounts:
        """Per endpoint, the leading blocks of `keys` it holds without a gap (real or speculative)."""
        blocks: dict[str, int] = {}
        weighted: dict[str, float] = {}
        if not keys or not endpoints:
            return MatchCounts(blocks, weighted)
        with self._lock:
            holders_of = self._holders.get
            spec_of = self._spec.get
            alive = list(endpoints)
            for key in keys:
                holders = holders_of(key)
                spec = spec_of(key)
                if holders is None and spec is None:
                    break
                survivors: list[str] = []
                for e in alive:
                    w = holders.get(e) if holders is not None else None
                    if w is None and spec is not None:
                        expiry = spec.get(e)
                        if expiry is not None and expiry > now:
                            w = 1.0
                    if w is not None:
                        blocks[e] = blocks.get(e, 0) + 1
                        weighted[e] = weighted.get(e, 0.0) + w
                        survivors.append(e)
                if not survivors:
                    break
                alive = survivors
        return MatchCounts(blocks, weighted)

    def holds(self, endpoint: str, key: int) -> bool:
        with self._lock:
            state = self._endpoints.get(endpoint)
            return state is not None and key in state.blocks

    def block_size(self, endpoint: str) -> int:
        """The block size the endpoint's events reported (0 before its first BlockStored)."""
        state = self._endpoints.get(endpoint)
        return state.block_size if state is not None else 0

    def batches(self, endpoint: str) -> int:
        state = self._endpoints.get(endpoint)
        return state.batches if state is not None else 0

    @property
    def lora_names(self) -> frozenset[str]:
        """LoRA adapter names seen in BlockStored events (to seed request keys for adapters)."""
        return self._lora_names

    def stats(self) -> IndexStats:
        with self._lock:
            blocks = sum(len(s.blocks) for s in self._endpoints.values())
            bridged = sum(len(s.bridge) for s in self._endpoints.values())
            return IndexStats(
                endpoints=len(self._endpoints),
                blocks=blocks,
                unknown_blocks=bridged - blocks if bridged > blocks else 0,
                speculative=sum(len(s) for s in self._spec.values()),
                batches=sum(s.batches for s in self._endpoints.values()),
            )

    def size(self) -> int:
        """Total (endpoint, block) entries."""
        with self._lock:
            return sum(len(s.blocks) for s in self._endpoints.values())

    # ---- membership ----------------------------------------------------------------------------------

    def remove_endpoint(self, endpoint: str) -> None:
        with self._lock:
            state = self._endpoints.pop(endpoint, None)
            if state is not None:
                self._clear(endpoint, state)
            for key in [k for k, s in self._spec.items() if endpoint in s]:
                spec = self._spec[key]
                del spec[endpoint]
                if not spec:
                    del self._spec[key]

    def retain(self, keys: Collection[str]) -> list[str]:
        """Forget every endpoint not in `keys`; returns the forgotten ones."""
        gone = [k for k in list(self._endpoints) if k not in keys]
        for k in gone:
            self.remove_endpoint(k)
        return gone


def _continue(prev: int, tokens: Sequence[int], block_size: int) -> list[int | None]:
    """Keys of `tokens` (whole blocks) chained on from the parent key `prev`."""
    return list(block_keys(tokens, block_size, prev))
