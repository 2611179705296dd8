"""KV-cache events as value types: what an engine reports it stored, removed or cleared.

`Stored.block_hashes` / `parent` are the engine's own block hashes (integers, bytes or tuples depending on
the engine version): opaque, only compared. `Stored.token_ids` are the tokens of the stored blocks, which
is what the index keys blocks by (`keys.block_keys`).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

__all__ = ["AllCleared", "Event", "EventBatch", "Removed", "Stored"]


@dataclass(frozen=True, slots=True)
class Stored:
    block_hashes: tuple[Hashable, ...]
    parent: Hashable | None
    token_ids: tuple[int, ...]
    block_size: int
    lora_name: str | None = None
    medium: str | None = None


@dataclass(frozen=True, slots=True)
class Removed:
    block_hashes: tuple[Hashable, ...]
    medium: str | None = None


@dataclass(frozen=True, slots=True)
class AllCleared:
    pass


Event = Stored | Removed | AllCleared


@dataclass(frozen=True, slots=True)
class EventBatch:
    ts: float
    events: tuple[Event, ...]
    rank: int | None = None
    seq: int | None = None
