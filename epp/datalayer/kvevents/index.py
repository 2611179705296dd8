"""The precise prefix index: which endpoint's KV cache holds which block, as its engine reported it.

Fleet state: written only by the KV-event source that owns it (`source.KVEventSource`: `apply`, and
`retain` on membership changes), read by plugins on the request path (`match`, `held`, `holds`,
`block_size`, `batches`, `lora_names`, `size`, `stats`; no I/O, one short lock).

Fed by KV events (`apply`): `BlockStored` maps each engine block hash to our token key (`keys.block_keys`,
chained from the parent's key, which the bridge looked up from the parent's engine hash), `BlockRemoved`
drops blocks by engine hash, `AllBlocksCleared` drops the endpoint's blocks. A stored block whose parent the
index never saw (events missed, or subscribed mid-run) cannot be keyed: it and its descendants are kept as
*unknown* so their removal is still understood, and counted in `stats().unknown_blocks`.

`match(keys, endpoints, now)` returns, per endpoint, how many leading blocks it holds consecutively, and
the tier-weighted count (GPU blocks weigh 1.0, other media `other_tier_weight`). A reader may pass its
own guesses as an overlay (`speculative`: key → endpoint → expiry, counted as GPU blocks until they
expire); the index itself holds only what the engines reported. Stored-key listeners
(`add_stored_listener`) are told the keys each `BlockStored` carried, after the batch is applied.

Each endpoint keeps at most `max_blocks_per_endpoint` bridge entries (oldest stored first out), so lost
`BlockRemoved` events cannot grow memory without bound. One lock; events and reads never interleave.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from epp.datalayer.kvevents.events import AllCleared, EventBatch, Removed, Stored
from epp.datalayer.kvevents.keys import block_keys, lora_seed
from epp.framework.notify import notify_all

__all__ = ["IndexStats", "MatchCounts", "PreciseIndex", "StoredListener"]

_GPU = 1
_OTHER = 2

#: Called with (endpoint key, keys a BlockStored carried).
StoredListener = Callable[[str, Sequence[int]], None]


def _medium_bit(medium: str | None) -> int:
    return _GPU if medium is None or medium.upper() in ("GPU", "CUDA", "DEVICE") else _OTHER


@dataclass(frozen=True, slots=True)
class IndexStats:
    endpoints: int
    blocks: int
    unknown_blocks: int
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
    def __init__(self, *, max_blocks_per_endpoint: int = 1 << 20) -> None:
        if max_blocks_per_endpoint < 1:
            raise ValueError("max_blocks_per_endpoint must be >= 1")
        self._lock = threading.Lock()
        self._endpoints: dict[str, _Endpoint] = {}
        self._holders: dict[int, dict[str, int]] = {}  # key -> endpoint -> media bitmask
        self._lora_names: frozenset[str] = frozenset()
        self._max = max_blocks_per_endpoint
        self._stored_listeners: tuple[StoredListener, ...] = ()

    @property
    def max_blocks_per_endpoint(self) -> int:
        return self._max

    # ---- listeners -----------------------------------------------------------------------------------

    def add_stored_listener(self, listener: StoredListener) -> None:
        """Call `listener(endpoint, keys)` after each applied batch that stored keys (outside the lock)."""
        with self._lock:
            self._stored_listeners = (*self._stored_listeners, listener)

    def remove_stored_listener(self, listener: StoredListener) -> None:
        with self._lock:
            self._stored_listeners = tuple(x for x in self._stored_listeners if x != listener)

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
            listeners = self._stored_listeners
        if stored and listeners:
            notify_all(listeners, endpoint, stored, what="a KV-event batch")
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
            keys = block_keys(tokens[: n * size], size, prev)
        bridge = state.bridge
        for engine_hash, key in zip(event.block_hashes, keys, strict=True):
            if engine_hash in bridge:
                bridge.move_to_end(engine_hash)
            bridge[engine_hash] = key
            if key is None:
                continue
            mask = state.blocks.get(key, 0) | bit
            state.blocks[key] = mask
            self._set_holder(key, endpoint, mask)
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
        holders = self._holders.get(key)
        if holders is None:
            self._holders[key] = {endpoint: mask}
        else:
            holders[endpoint] = mask

    # ---- reads ---------------------------------------------------------------------------------------

    def match(
        self,
        keys: Sequence[int],
        endpoints: Collection[str],
        now: float,
        *,
        speculative: Mapping[int, Mapping[str, float]] | None = None,
        other_tier_weight: float = 0.8,
    ) -> MatchCounts:
        """Per endpoint, the leading blocks of `keys` it holds without a gap (reported, or in the
        `speculative` overlay with an expiry after `now`)."""
        blocks: dict[str, int] = {}
        weighted: dict[str, float] = {}
        if not keys or not endpoints:
            return MatchCounts(blocks, weighted)
        spec_of = speculative.get if speculative else None
        with self._lock:
            holders_of = self._holders.get
            alive = list(endpoints)
            for key in keys:
                holders = holders_of(key)
                spec = spec_of(key) if spec_of is not None else None
                if holders is None and spec is None:
                    break
                survivors: list[str] = []
                for e in alive:
                    w: float | None = None
                    mask = holders.get(e) if holders is not None else None
                    if mask is not None:
                        w = 1.0 if mask & _GPU else other_tier_weight
                    elif spec is not None:
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

    def held(self, endpoint: str, keys: Iterable[int]) -> frozenset[int]:
        """The keys among `keys` that `endpoint` holds."""
        with self._lock:
            state = self._endpoints.get(endpoint)
            if state is None:
                return frozenset()
            blocks = state.blocks
            return frozenset(k for k in keys if k in blocks)

    def block_size(self, endpoint: str) -> int:
        """The block size the endpoint's events reported (0 before its first BlockStored)."""
        state = self._endpoints.get(endpoint)
        return state.block_size if state is not None else 0

    def batches(self, endpoint: str) -> int:
        """Event batches applied for `endpoint` (0: its feed has delivered nothing yet)."""
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

    def retain(self, keys: Collection[str]) -> list[str]:
        """Forget every endpoint not in `keys`; returns the forgotten ones."""
        gone = [k for k in list(self._endpoints) if k not in keys]
        for k in gone:
            self.remove_endpoint(k)
        return gone
