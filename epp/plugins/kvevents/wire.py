"""Moved: KV-event decoding is the data layer's (`epp.datalayer.kvevents.wire`); this alias remains for
`epp.tools.bench.probe_routers`, which feeds decoded batches to the producer's index. New code imports
the data layer module."""

from __future__ import annotations

from epp.datalayer.kvevents.wire import (
    AllCleared,
    Event,
    EventBatch,
    Removed,
    Stored,
    decode_batch,
    decode_message,
)

__all__ = ["AllCleared", "Event", "EventBatch", "Removed", "Stored", "decode_batch", "decode_message"]
