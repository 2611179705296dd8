"""Decoding vLLM's KV-cache event batches (msgpack, msgspec `array_like` + tagged layout).

A ZMQ message is multipart `[topic, seq, payload]` (`seq`: 8-byte big-endian counter); `payload` is
`[ts, [event, ...], data_parallel_rank]` and each event a tagged array:

    ["BlockStored", block_hashes, parent_block_hash, token_ids, block_size, lora_id, medium, lora_name]
    ["BlockRemoved", block_hashes, medium]
    ["AllBlocksCleared"]

Older vLLM versions omit the trailing fields (`medium`, `lora_name`; the batch's rank); block hashes are
integers or bytes depending on the version and are kept opaque. Unknown event tags are skipped; a payload
that is not a batch raises `ValueError` (the subscriber counts and drops it). The event types are in
`events.py` (re-exported here).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import msgpack

from epp.datalayer.kvevents.events import AllCleared, Event, EventBatch, Removed, Stored

__all__ = ["AllCleared", "Event", "EventBatch", "Removed", "Stored", "decode_batch", "decode_message"]


def _hashes(value: Any) -> tuple[Hashable, ...]:
    if not isinstance(value, list | tuple):
        raise ValueError("block_hashes must be a list")
    out: list[Hashable] = []
    for h in value:
        if isinstance(h, list):  # a hash encoded as an array of ints: make it hashable
            h = tuple(h)
        if not isinstance(h, int | bytes | str | tuple):
            raise ValueError(f"unsupported block hash {h!r}")
        out.append(h)
    return tuple(out)


def _opt_str(fields: Sequence[Any], i: int) -> str | None:
    if len(fields) <= i:
        return None
    value = fields[i]
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value if isinstance(value, str) and value else None


def _event(raw: Any) -> Event | None:
    if not isinstance(raw, list | tuple) or not raw:
        raise ValueError("an event must be a tagged array")
    tag = raw[0]
    if isinstance(tag, bytes):
        tag = tag.decode("utf-8", "replace")
    fields = raw[1:]
    if tag == "BlockStored":
        if len(fields) < 4:
            raise ValueError("BlockStored needs block_hashes, parent, token_ids and block_size")
        parent = fields[1]
        if isinstance(parent, list):
            parent = tuple(parent)
        tokens = fields[2]
        if not isinstance(tokens, list | tuple) or not all(type(t) is int for t in tokens):
            raise ValueError("BlockStored token_ids must be a list of ints")
        size = fields[3]
        if type(size) is not int or size <= 0:
            raise ValueError("BlockStored block_size must be a positive int")
        return Stored(
            _hashes(fields[0]), parent, tuple(tokens), size, _opt_str(fields, 6), _opt_str(fields, 5)
        )
    if tag == "BlockRemoved":
        if not fields:
            raise ValueError("BlockRemoved needs block_hashes")
        return Removed(_hashes(fields[0]), _opt_str(fields, 1))
    if tag == "AllBlocksCleared":
        return AllCleared()
    return None  # an event type this EPP does not use


def decode_batch(payload: bytes, seq: int | None = None) -> EventBatch:
    """Decode one msgpack event batch; raises ValueError when it is not one."""
    try:
        raw = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except Exception as exc:
        raise ValueError(f"not msgpack: {exc}") from None
    if not isinstance(raw, list) or len(raw) < 2 or not isinstance(raw[1], list):
        raise ValueError("an event batch must be [ts, [events...], rank]")
    ts = raw[0]
    if not isinstance(ts, int | float):
        raise ValueError("batch timestamp must be a number")
    events = tuple(e for e in (_event(r) for r in raw[1]) if e is not None)
    rank = raw[2] if len(raw) > 2 and type(raw[2]) is int else None
    return EventBatch(float(ts), events, rank, seq)


def decode_message(frames: Sequence[bytes]) -> tuple[str, EventBatch]:
    """A ZMQ multipart message `[topic, seq, payload]` (or `[topic, payload]`): its topic and batch."""
    if len(frames) == 3:
        topic, seq_bytes, payload = frames
        seq = int.from_bytes(seq_bytes, "big") if len(seq_bytes) == 8 else None
    elif len(frames) == 2:
        topic, payload = frames
        seq = None
    else:
        raise ValueError(f"expected 2 or 3 frames, got {len(frames)}")
    return topic.decode("utf-8", "replace"), decode_batch(payload, seq)
