"""Header maps, and what the response headers tell about a request, from whichever stream sees them first.

The routing stream sees them when the proxy shows it the response; the observer stream (observability
mode) sees them too, and is the only one to when the routing stream skipped the response path
(docs/protocol.md section 5). `read_response_headers` fills `ResponseInfo` once: status, headers, SSE or
not, the served endpoint (from `envoy.lb` metadata, Envoy's `upstream.address` attribute, or the
`x-gateway-destination-endpoint-served` header), and marks a non-200 as a model-server error.
"""

from __future__ import annotations

from typing import Any

from epp.errors import ErrorCode
from epp.extproc import messages as m
from epp.metadata import (
    CONTENT_TYPE,
    DESTINATION_ENDPOINT_SERVED,
    ENVOY_LB_NAMESPACE,
    EXT_PROC_ATTRIBUTES_NAMESPACE,
    STATUS_HEADER,
    UPSTREAM_ADDRESS_ATTRIBUTE,
)
from epp.requestcontrol.context import RequestContext

__all__ = ["header_map", "read_response_headers", "served_endpoint"]


def header_map(headers: Any) -> dict[str, str]:
    """An ext_proc HeaderMap as a dict (values from `raw_value`, as Envoy sends them)."""
    out: dict[str, str] = {}
    for h in headers.headers:
        raw = h.raw_value
        out[h.key] = raw.decode("utf-8", "replace") if raw else h.value
    return out


def served_endpoint(msg: m.ProcessingRequest, headers: dict[str, str]) -> tuple[str, bool]:
    """The endpoint that served, and whether it came as the response header (to be removed)."""
    if msg.HasField("metadata_context"):
        fm = msg.metadata_context.filter_metadata
        if ENVOY_LB_NAMESPACE in fm:
            v = fm[ENVOY_LB_NAMESPACE].fields.get(DESTINATION_ENDPOINT_SERVED)
            if v is not None and v.string_value:
                return str(v.string_value), False
    for namespace, fields in msg.attributes.items():
        # the routing filter's attributes come under its name; an observer filter's under its own
        if namespace == EXT_PROC_ATTRIBUTES_NAMESPACE or UPSTREAM_ADDRESS_ATTRIBUTE in fields.fields:
            v = fields.fields.get(UPSTREAM_ADDRESS_ATTRIBUTE)
            if v is not None and v.string_value:
                return str(v.string_value), False
    served = headers.get(DESTINATION_ENDPOINT_SERVED, "")
    return served, bool(served)


def read_response_headers(ctx: RequestContext, msg: m.ProcessingRequest) -> bool:
    """Fill the request's `ResponseInfo` from a response-headers message; returns whether the served
    endpoint came as a response header (which the routing stream removes)."""
    headers = header_map(msg.response_headers.headers)
    info = ctx.response
    info.headers = headers
    status = headers.get(STATUS_HEADER, "")
    info.status = int(status) if status.isdigit() else 0
    info.streaming = "text/event-stream" in headers.get(CONTENT_TYPE, "")
    info.served_endpoint, as_header = served_endpoint(msg, headers)
    if info.status != 200 and not ctx.error_code:
        ctx.error_code = ErrorCode.MODEL_SERVER_ERROR.value
    return as_header
