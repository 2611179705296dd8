"""The paged KV cache with automatic prefix caching, modelled on vLLM V1's BlockPool.

A fixed number of blocks of `block_size` tokens. Full prompt blocks are identified by a chain hash
(each block's hash covers its parent's hash, its tokens and the LoRA adapter), so equal hashes mean
equal prefixes. Blocks held by requests are pinned (ref_cnt > 0); freed blocks keep their hash and
join the tail of one LRU free queue, and an allocation takes the head of that queue, evicting the
cached content it held. Usage is 1 - free/total, as vLLM reports it (cached-but-free blocks count as
free). Every cache change can be recorded as a vLLM-style KV event (BlockStored / BlockRemoved /
AllBlocksCleared) for the ZMQ publisher.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import xxhash

__all__ = [
    "AllBlocksCleared",
    "Block",
    "BlockPool",
    "BlockRemoved",
    "BlockStored",
    "KVEvent",
    "chain_block_hashes",
]


@dataclass(slots=True, eq=False)
class Block:
    """One KV block. `block_hash` is set while the block holds a cached full prompt block."""

    block_id: int
    ref_cnt: int = 0
    block_hash: int | None = None


@dataclass(frozen=True, slots=True)
class BlockStored:
    block_hashes: tuple[int, ...]
    parent_block_hash: int | None
    token_ids: tuple[int, ...]
    block_size: int
    lora_id: int | None
    lora_name: str | None


@dataclass(frozen=True, slots=True)
class BlockRemoved:
    block_hashes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class AllBlocksCleared:
    pass


KVEvent = BlockStored | BlockRemoved | AllBlocksCleared


def chain_block_hashes(token_ids: Sequence[int], block_size: int, lora: str | None = None) -> list[int]:
    """64-bit chain hashes of the full blocks of `token_ids` (a trailing partial block has none)."""
    hashes: list[int] = []
    parent = xxhash.xxh3_64_intdigest((lora or "").encode("utf-8"))
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        chunk = token_ids[start : start + block_size]
        data = struct.pack(f"<Q{len(chunk)}q", parent, *chunk)
        parent = xxhash.xxh3_64_intdigest(data)
        hashes.append(parent)
    return hashes


class BlockPool:
    """Allocation, pinning, LRU eviction and the hash -> block map of cached blocks."""

    def __init__(self, num_blocks: int, block_size: int, *, record_events: bool = False) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be >= 1")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.blocks = [Block(i) for i in range(num_blocks)]
        self._free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self._cached: dict[int, Block] = {}
        self._record_events = record_events
        self._events: list[KVEvent] = []
        self.evictions = 0  # cached blocks whose content was dropped to make room

    # ---- queries -------------------------------------------------------------------------------

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_cached(self) -> int:
        return len(self._cached)

    @property
    def usage(self) -> float:
        return 1.0 - len(self._free) / self.num_blocks

    def blocks_for_tokens(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def is_cached(self, block_hash: int) -> bool:
        return block_hash in self._cached

    def lookup(self, block_hashes: Iterable[int]) -> list[Block]:
        """The cached blocks of the longest cached prefix of `block_hashes`."""
        hits: list[Block] = []
        for h in block_hashes:
            block = self._cached.get(h)
            if block is None:
                break
            hits.append(block)
        return hits

    # ---- mutation ------------------------------------------------------------------------------

    def touch(self, blocks: Iterable[Block]) -> None:
        """Pin cache-hit blocks for a request (taking free ones out of the free queue)."""
        for block in blocks:
            if block.ref_cnt == 0:
                del self._free[block.block_id]
            block.ref_cnt += 1

    def allocate(self, n: int) -> list[Block]:
        """Take `n` blocks from the head of the free queue, evicting their cached content."""
        if n > len(self._free):
            raise ValueError(f"cannot allocate {n} blocks: {len(self._free)} free")
        out: list[Block] = []
        removed: list[int] = []
        for _ in range(n):
            block_id, _ = self._free.popitem(last=False)
            block = self.blocks[block_id]
            if block.block_hash is not None:
                if self._cached.get(block.block_hash) is block:
                    del self._cached[block.block_hash]
                    removed.append(block.block_hash)
                    self.evictions += 1
                block.block_hash = None
            block.ref_cnt = 1
            out.append(block)
        if removed and self._record_events:
            self._events.append(BlockRemoved(tuple(removed)))
        return out

    def free(self, blocks: Sequence[Block]) -> None:
        """Unpin a request's blocks; the tail of the request is queued first, so it is evicted first."""
        for block in reversed(blocks):
            block.ref_cnt -= 1
            if block.ref_cnt == 0:
                self._free[block.block_id] = None

    def cache_full_blocks(
        self,
        blocks: Sequence[Block],
        block_hashes: Sequence[int],
        parent_hash: int | None,
        token_ids: Sequence[int],
        lora_id: int | None = None,
        lora_name: str | None = None,
    ) -> None:
        """Register newly computed full prompt blocks under their hashes (duplicates stay uncached)."""
        for block, h in zip(blocks, block_hashes, strict=True):
            if block.block_hash is None and h not in self._cached:
                block.block_hash = h
                self._cached[h] = block
        if self._record_events and block_hashes:
            self._events.append(
                BlockStored(
                    tuple(block_hashes), parent_hash, tuple(token_ids), self.block_size, lora_id, lora_name
                )
            )

    def reset_prefix_cache(self) -> int:
        """Forget every cached block (blocks in use stay allocated). Returns how many were dropped."""
        dropped = len(self._cached)
        for block in self._cached.values():
            block.block_hash = None
        self._cached.clear()
        if self._record_events:
            self._events.append(AllBlocksCleared())
        return dropped

    def drain_events(self) -> list[KVEvent]:
        events, self._events = self._events, []
        return events
