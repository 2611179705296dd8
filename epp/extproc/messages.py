"""Pure builders of the ext_proc `ProcessingResponse` messages the EPP sends to the proxy.

No state, no I/O: each function returns a fresh message (or a shared constant one that is never mutated).
Header values always go in `raw_value`: Envoy 1.40 ignores `value` there and applies an empty header.
Messages are built by filling sub-fields in place (cheaper than nested keyword constructors, which copy).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf import struct_pb2

from epp.metadata import BODY_CHUNK_LIMIT, CONTENT_TYPE, DESTINATION_ENDPOINT, ENVOY_LB_NAMESPACE

__all__ = [
    "BodyMode",
    "HeaderPairs",
    "ProcessingRequest",
    "ProcessingResponse",
    "buffered_body_response",
    "continue_body",
    "continue_headers",
    "continue_trailers",
    "destination_metadata",
    "header_option",
    "headers_response",
    "immediate_response",
    "mode_override_buffered",
    "streamed_body",
]

ProcessingRequest = pb.ProcessingRequest
ProcessingResponse = pb.ProcessingResponse
BodyMode = processing_mode_pb2.ProcessingMode.BodySendMode

#: (lowercase header name, raw value) pairs to set.
HeaderPairs = Sequence[tuple[str, bytes]]

_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD

# Phase names as the oneof field names of ProcessingResponse.
REQUEST_HEADERS = "request_headers"
RESPONSE_HEADERS = "response_headers"
REQUEST_BODY = "request_body"
RESPONSE_BODY = "response_body"
REQUEST_TRAILERS = "request_trailers"
RESPONSE_TRAILERS = "response_trailers"


def _constant(field: str) -> pb.ProcessingResponse:
    msg = pb.ProcessingResponse()
    getattr(msg, field).SetInParent()
    return msg


_CONTINUE = {
    name: _constant(name) for name in (REQUEST_HEADERS, RESPONSE_HEADERS, REQUEST_BODY, RESPONSE_BODY)
}
_TRAILERS = {name: _constant(name) for name in (REQUEST_TRAILERS, RESPONSE_TRAILERS)}


def continue_headers(response: bool) -> pb.ProcessingResponse:
    """An empty headers reply (no mutation). Shared instance: do not mutate."""
    return _CONTINUE[RESPONSE_HEADERS if response else REQUEST_HEADERS]


def continue_body(response: bool) -> pb.ProcessingResponse:
    """An empty body reply (non-duplex modes: leave the chunk as is). Shared instance: do not mutate."""
    return _CONTINUE[RESPONSE_BODY if response else REQUEST_BODY]


def continue_trailers(response: bool) -> pb.ProcessingResponse:
    """An empty trailers reply. Shared instance: do not mutate."""
    return _TRAILERS[RESPONSE_TRAILERS if response else REQUEST_TRAILERS]


def header_option(key: str, value: bytes) -> base_pb2.HeaderValueOption:
    opt = base_pb2.HeaderValueOption(append_action=_OVERWRITE)
    opt.header.key = key
    opt.header.raw_value = value
    return opt


def _fill_mutation(
    common: pb.CommonResponse, set_headers: HeaderPairs, remove_headers: Iterable[str]
) -> None:
    mutation = common.header_mutation
    for key, value in set_headers:
        opt = mutation.set_headers.add()
        opt.append_action = _OVERWRITE
        opt.header.key = key
        opt.header.raw_value = value
    mutation.remove_headers.extend(remove_headers)


def destination_metadata(
    destination: str, extra: Mapping[str, Mapping[str, Any]] | None = None
) -> struct_pb2.Struct:
    """`{"envoy.lb": {"x-gateway-destination-endpoint": destination}}` plus any extra namespaces."""
    md = struct_pb2.Struct()
    md.fields[ENVOY_LB_NAMESPACE].struct_value.fields[DESTINATION_ENDPOINT].string_value = destination
    if extra:
        for namespace, values in extra.items():
            md.fields[namespace].struct_value.update(values)
    return md


def headers_response(
    response: bool,
    set_headers: HeaderPairs = (),
    remove_headers: Iterable[str] = (),
    *,
    clear_route_cache: bool = False,
    metadata: struct_pb2.Struct | None = None,
) -> pb.ProcessingResponse:
    """A headers reply with a header mutation (and, for the routing reply, the destination metadata)."""
    msg = pb.ProcessingResponse()
    common = (msg.response_headers if response else msg.request_headers).response
    common.SetInParent()
    if clear_route_cache:
        common.clear_route_cache = True
    if set_headers or remove_headers:
        _fill_mutation(common, set_headers, remove_headers)
    if metadata is not None:
        msg.dynamic_metadata.CopyFrom(metadata)
    return msg


def streamed_body(
    body: bytes, response: bool, end_of_stream: bool = True, limit: int = BODY_CHUNK_LIMIT
) -> list[pb.ProcessingResponse]:
    """The body as FULL_DUPLEX_STREAMED chunks of at most `limit` bytes; `end_of_stream` on the last.

    An empty body gives one empty chunk (it still carries end_of_stream).
    """
    out: list[pb.ProcessingResponse] = []
    n = len(body)
    start = 0
    while True:
        end = min(start + limit, n)
        msg = pb.ProcessingResponse()
        part = (msg.response_body if response else msg.request_body).response.body_mutation.streamed_response
        part.body = body if (start == 0 and end == n) else body[start:end]
        part.end_of_stream = end_of_stream and end == n
        out.append(msg)
        if end >= n:
            return out
        start = end


def buffered_body_response(
    response: bool,
    body: bytes | None,
    set_headers: HeaderPairs = (),
    remove_headers: Iterable[str] = (),
    *,
    clear_route_cache: bool = False,
    metadata: struct_pb2.Struct | None = None,
) -> pb.ProcessingResponse:
    """A body reply for BUFFERED mode: optional replacement body plus a header mutation.

    Header mutations on a body reply are honoured by Envoy only in BUFFERED mode; whoever replaces the body
    must also set Content-Length, or Envoy answers with a local 500.
    """
    msg = pb.ProcessingResponse()
    common = (msg.response_body if response else msg.request_body).response
    common.SetInParent()
    if clear_route_cache:
        common.clear_route_cache = True
    if body is not None:
        common.body_mutation.body = body
    if set_headers or remove_headers:
        _fill_mutation(common, set_headers, remove_headers)
    if metadata is not None:
        msg.dynamic_metadata.CopyFrom(metadata)
    return msg


_TEXT_PLAIN = b"text/plain; charset=utf-8"


def immediate_response(status: int, body: str, details: str = "") -> pb.ProcessingResponse:
    """Answer the client directly with `status` and a plain-text body saying why."""
    msg = pb.ProcessingResponse()
    imm = msg.immediate_response
    imm.status.code = status  # envoy.type.v3.StatusCode values are the HTTP numbers
    imm.body = body.encode("utf-8", "replace")
    opt = imm.headers.set_headers.add()
    opt.append_action = _OVERWRITE
    opt.header.key = CONTENT_TYPE
    opt.header.raw_value = _TEXT_PLAIN
    if details:
        imm.details = details
    return msg


def mode_override_buffered() -> pb.ProcessingResponse:
    """A request-headers reply asking for the request body in BUFFERED mode (needs `allow_mode_override`)."""
    msg = pb.ProcessingResponse()
    msg.request_headers.SetInParent()
    msg.mode_override.request_body_mode = processing_mode_pb2.ProcessingMode.BUFFERED
    return msg
