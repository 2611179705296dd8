"""vLLM-style KV-cache events over ZeroMQ PUB, for precise (event-driven) prefix scorers.

Wire format as vLLM publishes it (`vllm/distributed/kv_events.py`, msgspec structs with
`array_like=True, tag=True`): each message is multipart `[topic, seq, payload]` where `seq` is an
8-byte big-endian counter from 0 and `payload` is msgpack of `[ts, [event, ...], data_parallel_rank]`
with events encoded as tagged arrays:

    ["BlockStored", block_hashes, parent_block_hash, token_ids, block_size, lora_id, medium, lora_name]
    ["BlockRemoved", block_hashes, medium]
    ["AllBlocksCleared"]

Block hashes are the simulator's own 64-bit chain hashes (consumers that need content keys use the
token ids). The socket binds; a port of 0 or `*` picks a free one (see `endpoint`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import msgpack
import zmq

from epp.tools.sim.kvcache import AllBlocksCleared, BlockRemoved, BlockStored, KVEvent

__all__ = ["KVEventPublisher", "encode_batch", "encode_event"]

MEDIUM = "GPU"


def encode_event(event: KVEvent) -> list[Any]:
    if isinstance(event, BlockStored):
        return [
            "BlockStored",
            list(event.block_hashes),
            event.parent_block_hash,
            list(event.token_ids),
            event.block_size,
            event.lora_id,
            MEDIUM,
            event.lora_name,
        ]
    if isinstance(event, BlockRemoved):
        return ["BlockRemoved", list(event.block_hashes), MEDIUM]
    if isinstance(event, AllBlocksCleared):
        return ["AllBlocksCleared"]
    raise TypeError(f"not a KV event: {event!r}")


def encode_batch(events: Sequence[KVEvent], ts: float, dp_rank: int = 0) -> bytes:
    packed: bytes = msgpack.packb([ts, [encode_event(e) for e in events], dp_rank], use_bin_type=True)
    return packed


class KVEventPublisher:
    """A bound PUB socket; `publish` never blocks (PUB drops messages for slow subscribers)."""

    def __init__(self, endpoint: str, topic: str = "") -> None:
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.PUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self.hwm = 100_000
        self._sock.setsockopt(zmq.SNDHWM, self.hwm)
        base, _, port = endpoint.rpartition(":")
        try:
            if base and port in ("0", "*"):
                chosen = self._sock.bind_to_random_port(base)
                self.endpoint = f"{base}:{chosen}"
            else:
                self._sock.bind(endpoint)
                self.endpoint = endpoint
        except zmq.ZMQError as exc:
            self.close()
            raise ValueError(f"--kv-events-endpoint {endpoint}: {exc}") from exc
        self.topic = topic
        self._topic_bytes = topic.encode("utf-8")
        self._seq = 0

    @property
    def sequence(self) -> int:
        """The sequence number the next batch will carry."""
        return self._seq

    def publish(self, events: Sequence[KVEvent], ts: float | None = None) -> None:
        if not events:
            return
        payload = encode_batch(events, time.time() if ts is None else ts)
        try:
            self._sock.send_multipart(
                [self._topic_bytes, self._seq.to_bytes(8, "big"), payload], flags=zmq.NOBLOCK
            )
        except zmq.ZMQError:
            return
        self._seq += 1

    def close(self) -> None:
        self._sock.close(linger=0)
        self._ctx.term()
