"""Hand-encoded `ProcessingResponse` bytes for the replies sent on every request (the hot path).

Building nested protobuf messages and serialising them costs several microseconds per reply; these
replies have a fixed shape, so they are written directly in protobuf wire format. The server's response
serialiser passes `bytes` through unchanged and serialises messages as usual, so the servicer may yield
either. Every encoder here is checked against the protobuf classes in the unit tests.

Field numbers (envoy/service/ext_proc/v3/external_processor.proto, config/core/v3/base.proto,
google/protobuf/struct.proto):

    ProcessingResponse: request_headers=1 response_headers=2 request_body=3 response_body=4
                        request_trailers=5 response_trailers=6 dynamic_metadata=8
    HeadersResponse / BodyResponse: response=1 (CommonResponse)
    CommonResponse: header_mutation=2 body_mutation=3 clear_route_cache=5
    HeaderMutation: set_headers=1 (HeaderValueOption) remove_headers=2
    HeaderValueOption: header=1 (HeaderValue) append_action=3 (OVERWRITE_IF_EXISTS_OR_ADD = 2)
    HeaderValue: key=1 raw_value=3
    BodyMutation: streamed_response=3 (StreamedBodyResponse: body=1 end_of_stream=2)
    Struct: fields=1 (map entry: key=1 value=2); Value: string_value=3 struct_value=5
    ProcessingResponse.mode_override=9 (ProcessingMode: response_body_mode=4 response_trailer_mode=6)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from epp.metadata import BODY_CHUNK_LIMIT, DESTINATION_ENDPOINT, ENVOY_LB_NAMESPACE

__all__ = [
    "REQUEST",
    "RESPONSE",
    "continue_body",
    "continue_headers",
    "continue_trailers",
    "destination_struct",
    "headers_reply",
    "routing_headers_reply",
    "serialize",
    "streamed_body",
    "with_metadata",
    "with_response_mode",
    "without_response_path",
]

# ProcessingResponse oneof field numbers per phase
REQUEST = (1, 3)  # (headers, body)
RESPONSE = (2, 4)


_SMALL = [bytes((i,)) for i in range(0x80)]


def _varint(n: int) -> bytes:
    if n < 0x80:
        return _SMALL[n]
    if n < 0x4000:
        return bytes(((n & 0x7F) | 0x80, n >> 7))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _ld(field: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


_OVERWRITE = b"\x18\x02"  # HeaderValueOption.append_action = OVERWRITE_IF_EXISTS_OR_ADD
_CLEAR_ROUTE_CACHE = b"\x28\x01"  # CommonResponse.clear_route_cache = true
_EOS = b"\x10\x01"  # StreamedBodyResponse.end_of_stream = true
_METADATA_HEAD = _ld(1, ENVOY_LB_NAMESPACE.encode())  # Struct map entry key "envoy.lb"
_DEST_KEY = _ld(1, DESTINATION_ENDPOINT.encode())


def _header_option(key: str, value: bytes) -> bytes:
    return _ld(1, _ld(1, _ld(1, key.encode()) + _ld(3, value)) + _OVERWRITE)


def _mutation(set_headers: Sequence[tuple[str, bytes]], remove_headers: Iterable[str]) -> bytes:
    parts = [_header_option(k, v) for k, v in set_headers]
    parts.extend(_ld(2, name.encode()) for name in remove_headers)
    return b"".join(parts)


def destination_struct(destination: str) -> bytes:
    """Struct `{"envoy.lb": {"x-gateway-destination-endpoint": destination}}`."""
    inner = _ld(1, _DEST_KEY + _ld(2, _ld(3, destination.encode())))  # Struct{fields: {key: Value(string)}}
    return _ld(1, _METADATA_HEAD + _ld(2, _ld(5, inner)))


def headers_reply(
    phase: tuple[int, int],
    set_headers: Sequence[tuple[str, bytes]] = (),
    remove_headers: Iterable[str] = (),
    *,
    clear_route_cache: bool = False,
    destination: str | None = None,
) -> bytes:
    """A headers reply (request or response phase) with a header mutation and optional routing metadata."""
    common = b""
    mutation = _mutation(set_headers, remove_headers)
    if mutation:
        common += _ld(2, mutation)
    if clear_route_cache:
        common += _CLEAR_ROUTE_CACHE
    out = _ld(phase[0], _ld(1, common))
    if destination is not None:
        out += _ld(8, destination_struct(destination))
    return out


_DEST_CACHE: dict[str, tuple[bytes, bytes]] = {}
_DEST_CACHE_MAX = 4096


def _destination_parts(destination: str) -> tuple[bytes, bytes]:
    """(the destination header option, the dynamic_metadata field) for a destination, cached."""
    parts = _DEST_CACHE.get(destination)
    if parts is None:
        if len(_DEST_CACHE) >= _DEST_CACHE_MAX:
            _DEST_CACHE.clear()
        parts = _DEST_CACHE[destination] = (
            _header_option(DESTINATION_ENDPOINT, destination.encode()),
            _ld(8, destination_struct(destination)),
        )
    return parts


def routing_headers_reply(
    destination: str, set_headers: Sequence[tuple[str, bytes]], remove_headers: Iterable[str]
) -> bytes:
    """The request-headers reply that routes: mutation (the destination header first, then `set_headers`),
    clear_route_cache and the `envoy.lb` metadata. The destination's parts are cached."""
    dest_option, metadata = _destination_parts(destination)
    mutation = dest_option + _mutation(set_headers, remove_headers)
    common = _ld(2, mutation) + _CLEAR_ROUTE_CACHE
    return _ld(1, _ld(1, common)) + metadata


def streamed_body(
    body: bytes, phase: tuple[int, int], end_of_stream: bool = True, limit: int = BODY_CHUNK_LIMIT
) -> list[bytes]:
    """FULL_DUPLEX_STREAMED body chunks of at most `limit` bytes; end_of_stream on the last (if asked).

    Each chunk is copied once: the nested length prefixes are computed, not built by wrapping.
    """
    tag = _varint(phase[1] << 3 | 2)
    n = len(body)
    out: list[bytes] = []
    start = 0
    while True:
        end = min(start + limit, n)
        chunk = body if (start == 0 and end == n) else memoryview(body)[start:end]  # joined: one copy
        size = end - start
        eos = end_of_stream and end == n
        # StreamedBodyResponse{body, end_of_stream} inside BodyMutation(3) inside CommonResponse(3) inside
        # BodyResponse(1) inside ProcessingResponse(request_body=3 | response_body=4)
        body_field = b"\x0a" + _varint(size) if size else b""
        sr_len = len(body_field) + size + (2 if eos else 0)
        bm = _varint(sr_len)
        bm_len = 1 + len(bm) + sr_len
        cr = _varint(bm_len)
        cr_len = 1 + len(cr) + bm_len
        br = _varint(cr_len)
        br_len = 1 + len(br) + cr_len
        head = b"".join((tag, _varint(br_len), b"\x0a", br, b"\x1a", cr, b"\x1a", bm, body_field))
        out.append(b"".join((head, chunk, _EOS) if eos else (head, chunk)))
        if end >= n:
            return out
        start = end


def serialize(reply: object) -> bytes:
    """The server's response serialiser: bytes pass through, messages are serialised."""
    if reply.__class__ is bytes:
        return reply
    return reply.SerializeToString()  # type: ignore[attr-defined,no-any-return]


_CONTINUE_HEADERS = (_ld(1, b""), _ld(2, b""))  # (request, response): HeadersResponse{} with no mutation
_CONTINUE_BODY = (_ld(3, b""), _ld(4, b""))
_CONTINUE_TRAILERS = (_ld(5, b""), _ld(6, b""))


def continue_headers(response: bool) -> bytes:
    return _CONTINUE_HEADERS[response]


def continue_body(response: bool) -> bytes:
    return _CONTINUE_BODY[response]


def continue_trailers(response: bool) -> bytes:
    return _CONTINUE_TRAILERS[response]


def with_metadata(reply: bytes, struct_bytes: bytes) -> bytes:
    """`reply` plus `dynamic_metadata` (a serialised google.protobuf.Struct); the reply must not have any."""
    return reply + _ld(8, struct_bytes)


_TRAILERS_SKIP = b"\x30\x02"  # ProcessingMode.response_trailer_mode = SKIP


def with_response_mode(reply: bytes, body_mode: int) -> bytes:
    """`reply` (a response-headers reply) plus `mode_override`: the response body in `body_mode`
    (BodySendMode: NONE=0, STREAMED=1, BUFFERED=2) and no response trailers. Envoy honours it only with
    `allow_mode_override` and neither configured body mode FULL_DUPLEX_STREAMED."""
    return reply + _ld(9, b"\x20" + _varint(body_mode) + _TRAILERS_SKIP)


# ProcessingMode, as protobuf writes it: response_header_mode=2 SKIP(2), request_body_mode=3 BUFFERED(2),
# request_trailer_mode=5 SKIP(2), response_trailer_mode=6 SKIP(2); response_body_mode=4 NONE is the default
_NO_RESPONSE_PATH = _ld(9, b"\x10\x02\x18\x02\x28\x02\x30\x02")


def without_response_path(reply: bytes) -> bytes:
    """`reply` (a request-headers reply, BUFFERED request body) plus `mode_override`: the body still
    BUFFERED, and nothing of the response: no headers, no body, no trailers. Envoy 1.40 replaces the
    whole processing mode with an override, so every field the request still needs is spelled out."""
    return reply + _NO_RESPONSE_PATH
