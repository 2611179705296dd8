"""Decoding vLLM-style KV event batches: the simulator's encoding, older layouts, hostile payloads."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from epp.datalayer.kvevents.wire import AllCleared, Removed, Stored, decode_batch, decode_message
from epp.tools.sim.kv_events import encode_batch
from epp.tools.sim.kvcache import AllBlocksCleared, BlockRemoved, BlockStored


def test_decodes_what_the_simulator_publishes() -> None:
    events = [
        BlockStored((11, 12), None, tuple(range(32)), 16, None, None),
        BlockStored((13,), 12, tuple(range(32, 48)), 16, 1, "sql"),
        BlockRemoved((11,)),
        AllBlocksCleared(),
    ]
    batch = decode_batch(encode_batch(events, 12.5, dp_rank=3), seq=7)
    assert batch.ts == 12.5 and batch.rank == 3 and batch.seq == 7
    assert batch.events == (
        Stored((11, 12), None, tuple(range(32)), 16, None, "GPU"),
        Stored((13,), 12, tuple(range(32, 48)), 16, "sql", "GPU"),
        Removed((11,), "GPU"),
        AllCleared(),
    )


def _pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # vLLM before media and LoRA names: [tag, hashes, parent, tokens, block_size, lora_id]
        (["BlockStored", [1], None, [0] * 4, 4, None], Stored((1,), None, (0,) * 4, 4, None, None)),
        (["BlockRemoved", [1, 2]], Removed((1, 2), None)),
        (["BlockRemoved", [1], "CPU"], Removed((1,), "CPU")),
        # newer vLLM: bytes block hashes
        (
            ["BlockStored", [b"\x01" * 32], b"\x00" * 32, [1, 2], 2, None, "GPU", None],
            Stored((b"\x01" * 32,), b"\x00" * 32, (1, 2), 2, None, "GPU"),
        ),
        (["AllBlocksCleared"], AllCleared()),
    ],
)
def test_older_and_newer_layouts(raw, expected) -> None:
    assert decode_batch(_pack([1.0, [raw]])).events == (expected,)


def test_unknown_event_types_are_skipped() -> None:
    batch = decode_batch(_pack([1.0, [["SomethingNew", 1, 2], ["AllBlocksCleared"]]]))
    assert batch.events == (AllCleared(),)
    assert batch.rank is None


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xc1",
        _pack({"ts": 1}),
        _pack([1.0]),
        _pack(["x", []]),
        _pack([1.0, [["BlockStored", [1], None]]]),
        _pack([1.0, [["BlockStored", [1], None, ["a"], 16]]]),
        _pack([1.0, [["BlockStored", [1], None, [1], 0]]]),
        _pack([1.0, [["BlockStored", "nope", None, [1], 16]]]),
        _pack([1.0, [["BlockRemoved"]]]),
        _pack([1.0, [[]]]),
        _pack([1.0, ["BlockStored"]]),
    ],
)
def test_malformed_payloads_raise_value_error(payload: bytes) -> None:
    with pytest.raises(ValueError):
        decode_batch(payload)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_hostile_bytes_never_raise_anything_else(payload: bytes) -> None:
    with contextlib.suppress(ValueError):
        decode_batch(payload)


def test_multipart_messages() -> None:
    payload = _pack([2.0, [["AllBlocksCleared"]], 0])
    topic, batch = decode_message([b"kv@10.0.0.1:8000@m", (5).to_bytes(8, "big"), payload])
    assert topic == "kv@10.0.0.1:8000@m" and batch.seq == 5 and batch.events == (AllCleared(),)
    topic, batch = decode_message([b"t", payload])
    assert topic == "t" and batch.seq is None
    with pytest.raises(ValueError):
        decode_message([payload])
