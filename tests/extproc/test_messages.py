"""The pure protobuf builders: shapes Envoy accepts (raw_value headers, chunking, immediate responses)."""

from __future__ import annotations

import pytest
from envoy.config.core.v3 import base_pb2

from epp.extproc import messages as m
from epp.extproc import wire as w
from epp.metadata import BODY_CHUNK_LIMIT

from .harness import metadata_destination, removed_headers, set_headers, streamed


def test_headers_response_uses_raw_value_and_overwrite() -> None:
    reply = m.headers_response(
        False,
        [("x-gateway-destination-endpoint", b"10.0.0.1:8000,10.0.0.2:8000")],
        ["x-gateway-destination-endpoint-served"],
        clear_route_cache=True,
        metadata=m.destination_metadata("10.0.0.1:8000,10.0.0.2:8000"),
    )
    assert reply.WhichOneof("response") == "request_headers"
    common = reply.request_headers.response
    assert common.clear_route_cache
    opt = common.header_mutation.set_headers[0]
    assert opt.header.value == ""
    assert opt.append_action == base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
    assert set_headers(reply) == {"x-gateway-destination-endpoint": "10.0.0.1:8000,10.0.0.2:8000"}
    assert removed_headers(reply) == ["x-gateway-destination-endpoint-served"]
    # header and metadata carry the same string (spec: they must not differ)
    assert metadata_destination(reply) == "10.0.0.1:8000,10.0.0.2:8000"


def test_destination_metadata_is_a_string_with_extra_namespaces() -> None:
    md = m.destination_metadata("[fd00::1]:8000", {"x.y": {"k": "v"}})
    value = md.fields["envoy.lb"].struct_value.fields["x-gateway-destination-endpoint"]
    assert value.WhichOneof("kind") == "string_value"
    assert value.string_value == "[fd00::1]:8000"
    assert md.fields["x.y"].struct_value.fields["k"].string_value == "v"


def test_streamed_body_chunks_at_the_limit_with_eos_on_last_only() -> None:
    body = bytes(range(256)) * 600  # 153,600 bytes
    replies = m.streamed_body(body, False)
    parts = [streamed(r) for r in replies]
    assert [len(b) for b, _ in parts] == [
        BODY_CHUNK_LIMIT,
        BODY_CHUNK_LIMIT,
        len(body) - 2 * BODY_CHUNK_LIMIT,
    ]
    assert [eos for _, eos in parts] == [False, False, True]
    assert b"".join(b for b, _ in parts) == body
    assert all(r.WhichOneof("response") == "request_body" for r in replies)


def test_streamed_body_exact_multiple_and_empty_and_no_eos() -> None:
    exact = m.streamed_body(b"x" * (2 * BODY_CHUNK_LIMIT), True)
    assert [(len(b), e) for b, e in map(streamed, exact)] == [
        (BODY_CHUNK_LIMIT, False),
        (BODY_CHUNK_LIMIT, True),
    ]
    assert exact[0].WhichOneof("response") == "response_body"
    empty = m.streamed_body(b"", False)
    assert [streamed(r) for r in empty] == [(b"", True)]
    open_ended = m.streamed_body(b"abc", True, end_of_stream=False)
    assert [streamed(r) for r in open_ended] == [(b"abc", False)]


def test_buffered_body_response_carries_mutation_and_optional_body() -> None:
    reply = m.buffered_body_response(
        False, b'{"model":"b"}', [("content-length", b"13")], clear_route_cache=True
    )
    common = reply.request_body.response
    assert common.body_mutation.body == b'{"model":"b"}'
    assert common.clear_route_cache
    assert set_headers(reply) == {"content-length": "13"}
    unchanged = m.buffered_body_response(False, None, [("x-gateway-destination-endpoint", b"1.2.3.4:5")])
    assert not unchanged.request_body.response.HasField("body_mutation")


def test_immediate_response_has_status_body_and_content_type() -> None:
    reply = m.immediate_response(429, "inference error: ResourceExhausted - system saturated", "epp_x")
    imm = reply.immediate_response
    assert imm.status.code == 429
    assert imm.body == b"inference error: ResourceExhausted - system saturated"
    assert imm.details == "epp_x"
    (opt,) = imm.headers.set_headers
    assert opt.header.key == "content-type" and opt.header.raw_value.startswith(b"text/plain")


def test_constants_are_distinct_per_phase_and_mode_override() -> None:
    assert m.continue_headers(False).WhichOneof("response") == "request_headers"
    assert m.continue_headers(True).WhichOneof("response") == "response_headers"
    assert m.continue_body(True).WhichOneof("response") == "response_body"
    assert m.continue_trailers(False).WhichOneof("response") == "request_trailers"
    assert m.continue_trailers(True).WhichOneof("response") == "response_trailers"
    override = m.mode_override_buffered()
    assert override.WhichOneof("response") == "request_headers"
    assert override.mode_override.request_body_mode == m.BodyMode.BUFFERED


# ---- hand-encoded replies (wire) must equal what protobuf builds ---------------------------------


def _parse(data: bytes) -> m.ProcessingResponse:
    return m.ProcessingResponse.FromString(data)


@pytest.mark.parametrize("dest", ["10.0.0.1:8000", "[fd00::1]:8000,10.0.0.2:8000", "x" * 300])
def test_wire_routing_reply_equals_protobuf(dest: str) -> None:
    sets = [("content-length", b"12345"), ("k" * 200, b"v" * 300)]
    removes = ["x-gateway-model-name-rewrite", "x-gateway-destination-endpoint-served"]
    expected = m.headers_response(
        False,
        [("x-gateway-destination-endpoint", dest.encode()), *sets],
        removes,
        clear_route_cache=True,
        metadata=m.destination_metadata(dest),
    )
    for _ in range(2):  # built, then from the cache
        assert _parse(w.routing_headers_reply(dest, sets, removes)) == expected


@pytest.mark.parametrize("response", [False, True])
def test_wire_headers_reply_and_constants_equal_protobuf(response: bool) -> None:
    phase = w.RESPONSE if response else w.REQUEST
    assert _parse(w.headers_reply(phase, [("x-a", b"1")], ["x-b"])) == m.headers_response(
        response, [("x-a", b"1")], ["x-b"]
    )
    assert _parse(w.headers_reply(phase)) == m.headers_response(response)
    assert _parse(w.continue_headers(response)) == m.continue_headers(response)
    assert _parse(w.continue_body(response)) == m.continue_body(response)
    assert _parse(w.continue_trailers(response)) == m.continue_trailers(response)


@pytest.mark.parametrize("size", [0, 1, 127, 128, 16384, BODY_CHUNK_LIMIT, BODY_CHUNK_LIMIT + 1, 200_000])
@pytest.mark.parametrize("eos", [True, False])
def test_wire_streamed_body_equals_protobuf(size: int, eos: bool) -> None:
    body = bytes(i % 251 for i in range(size))
    for response, phase in ((False, w.REQUEST), (True, w.RESPONSE)):
        got = [_parse(b) for b in w.streamed_body(body, phase, eos)]
        assert got == m.streamed_body(body, response, eos)


def test_wire_metadata_suffix_and_serializer() -> None:
    from google.protobuf import struct_pb2

    md = struct_pb2.Struct()
    md.update({"ns": {"k": "v", "n": 1.5}})
    reply = _parse(w.with_metadata(w.continue_trailers(True), md.SerializeToString()))
    assert reply.WhichOneof("response") == "response_trailers"
    assert reply.dynamic_metadata == md
    assert w.serialize(b"abc") == b"abc"
    assert w.serialize(m.continue_body(True)) == m.continue_body(True).SerializeToString()
