"""The request half of a main ext_proc stream: request headers, body and trailers, up to the routing reply.

Body modes (Envoy reports them in `protocol_config` on the first message):

- FULL_DUPLEX_STREAMED (upstream's mode): request body chunks are collected and the request-headers reply is
  held until the body ends; then the headers reply (destination header + `envoy.lb` metadata +
  Content-Length) and the body as streamed chunks of at most 62,000 bytes.
- BUFFERED (the mode of the Envoy config we ship): the headers reply goes at once (system-owned headers
  removed); the routing mutation rides on the body reply, with Content-Length set whenever the body is
  replaced. BUFFERED_PARTIAL routes on its one message.
- NONE / STREAMED request bodies cannot be routed on: the EPP asks for BUFFERED via `mode_override`.

A request without a body (request headers with end_of_stream) is routed at once to any candidate. Every
failure raises `RequestError`; the servicer turns it into an ImmediateResponse.

With the Envoy config we ship (request body BUFFERED, response body NONE) and an observer stream already
paired, the request-headers reply may also tell the proxy to show this stream nothing of the response
(`mode_override`, see `_can_skip_response`): the observer then reads the response headers too, and the
first byte reaches the client one round trip sooner. Once routed, the request is planned for its
response (`plan_response`): whether the response will carry token usage worth reading. The request is
also registered under its `x-request-id` so that an observer stream of the same HTTP request can find it
(`epp.extproc.observer`).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from typing import Any

from epp.errors import ErrorCode, RequestError
from epp.extproc import messages as m
from epp.extproc import wire as w
from epp.extproc.headers import header_map
from epp.extproc.observer import ObserverRegistry
from epp.logs import bind_request
from epp.metadata import (
    CONTENT_LENGTH,
    DECISION_HEADER,
    DESTINATION_ENDPOINT,
    DESTINATION_ENDPOINT_SUBSET,
    MODEL_REWRITE_HEADER,
    REQUEST_ID_HEADER,
    SUBSET_HINT_NAMESPACE,
    SYSTEM_OWNED_REQUEST_HEADERS,
)
from epp.requestcontrol.context import RequestContext
from epp.requestcontrol.director import Director
from epp.scheduling.pipeline import PipelineHolder

__all__ = ["Reply", "RequestSide"]

log = logging.getLogger(__name__)

FULL_DUPLEX = m.BodyMode.FULL_DUPLEX_STREAMED
BUFFERED = m.BodyMode.BUFFERED
BUFFERED_PARTIAL = m.BodyMode.BUFFERED_PARTIAL
NONE_MODE = m.BodyMode.NONE

#: A reply: a message, or its serialised bytes (hot-path replies are hand-encoded, see `wire`).
Reply = bytes | Any  # Any: the protobuf classes are untyped

_SYSTEM_OWNED_SORTED = tuple(sorted(SYSTEM_OWNED_REQUEST_HEADERS))


def response_carries_usage(body: Mapping[str, Any], stream: bool) -> bool:
    """Whether an OpenAI-style response will report token usage: a JSON response always does, a stream
    only when the request asked (`stream_options.include_usage` or `continuous_usage_stats`)."""
    if not stream:
        return True
    options = body.get("stream_options")
    if not isinstance(options, dict):
        return False
    return bool(options.get("include_usage") or options.get("continuous_usage_stats"))


class RequestSide:
    """State and handlers of the request half of one main stream."""

    __slots__ = (
        "body_len",
        "chunks",
        "ctx",
        "director",
        "done",
        "holder",
        "max_body",
        "mode",
        "orphan_error",
        "registry",
        "rejection",
        "response_mode",
        "response_skipped",
    )

    def __init__(self, director: Director, holder: PipelineHolder, registry: ObserverRegistry) -> None:
        self.director = director
        self.holder = holder
        self.registry = registry
        self.max_body = director.options.max_request_body_bytes
        self.ctx: RequestContext | None = None
        self.mode = FULL_DUPLEX
        self.response_mode = FULL_DUPLEX
        self.chunks: list[bytes] = []
        self.body_len = 0
        self.done = False  # the routing reply (or an immediate response) has been sent
        self.orphan_error = ""  # an error code for a stream rejected before it had a request context
        self.rejection: RequestError | None = None  # why the request is answered with an immediate response
        self.response_skipped = False  # the proxy was told to show this stream nothing of the response

    def context(self, headers: dict[str, str]) -> RequestContext:
        rid = headers.get(REQUEST_ID_HEADER, "")
        generated = not rid
        if generated:
            rid = str(uuid.uuid4())
        bind_request(rid)
        ctx = RequestContext(
            pipeline=self.holder.current,
            request_id=rid,
            headers=headers,
            received_at=time.monotonic(),
            request_id_generated=generated,
        )
        self.ctx = ctx
        self.registry.register(ctx, observable=self.response_mode != FULL_DUPLEX)
        return ctx

    def _read_metadata(self, msg: m.ProcessingRequest) -> None:
        if not msg.HasField("metadata_context"):
            return
        fm = msg.metadata_context.filter_metadata
        if SUBSET_HINT_NAMESPACE in fm and self.ctx is not None:
            field = fm[SUBSET_HINT_NAMESPACE].fields.get(DESTINATION_ENDPOINT_SUBSET)
            if field is not None:
                kind = field.WhichOneof("kind")
                if kind == "list_value":
                    self.ctx.subset_hint = [
                        v.string_value if v.WhichOneof("kind") == "string_value" else None
                        for v in field.list_value.values
                    ]
                elif kind == "string_value":  # lenient: a comma-joined string
                    self.ctx.subset_hint = [s for s in field.string_value.split(",") if s.strip()]
                else:
                    self.ctx.subset_hint = []

    def _forward_mutation(self) -> tuple[list[tuple[str, bytes]], list[str]]:
        """Headers to set and remove on the forwarded request (besides the destination)."""
        ctx = self.ctx
        assert ctx is not None
        sets: list[tuple[str, bytes]] = []
        if ctx.request_id_generated:
            sets.append((REQUEST_ID_HEADER, ctx.request_id.encode()))
        headers = ctx.headers
        removes = [h for h in _SYSTEM_OWNED_SORTED if h in headers and h != DESTINATION_ENDPOINT]
        return sets, removes

    def on_headers(self, msg: m.ProcessingRequest) -> list[Reply]:
        if self.ctx is not None:  # a second headers message: nothing to do
            return [w.continue_headers(False)]
        if msg.HasField("protocol_config"):
            pc = msg.protocol_config
            self.mode = pc.request_body_mode
            self.response_mode = pc.response_body_mode
        hdrs = msg.request_headers
        ctx = self.context(header_map(hdrs.headers))
        self._read_metadata(msg)
        if hdrs.end_of_stream:
            return self._route_bodyless()
        mode = self.mode
        if mode == FULL_DUPLEX:
            return []  # hold the reply until the body has arrived
        sets, removes = self._forward_mutation()
        if mode in (BUFFERED, BUFFERED_PARTIAL):
            reply = w.headers_reply(w.REQUEST, sets, removes)
            if mode == BUFFERED and self._can_skip_response(ctx):
                self.response_skipped = True
                return [w.without_response_path(reply)]
            return [reply]
        # NONE / STREAMED: the body would never reach us before the route is chosen
        log.debug("request body mode %s cannot be routed on: asking for BUFFERED", mode)
        reply = m.mode_override_buffered()
        if sets or removes:
            reply.request_headers.response.header_mutation.remove_headers.extend(removes)
            for k, v in sets:
                reply.request_headers.response.header_mutation.set_headers.append(m.header_option(k, v))
        self.mode = BUFFERED
        return [reply]

    def _can_skip_response(self, ctx: RequestContext) -> bool:
        """Whether this stream can do without the response altogether (one round trip less before the
        first byte reaches the client): the proxy shows it nothing unless asked (response body NONE), an
        observer stream of the request is already here to read the response headers, the first byte and
        the usage, no response hook writes headers or metadata, and no model name can need restoring."""
        if self.response_mode != NONE_MODE or not ctx.observed:
            return False
        if ctx.pipeline.response_writers:
            return False
        headers = ctx.headers
        if MODEL_REWRITE_HEADER in headers or self.director.datastore.rewrite_rules:
            return False
        return not (self.director.options.decision_header and DECISION_HEADER in headers)

    def _route_bodyless(self) -> list[Reply]:
        ctx = self.ctx
        assert ctx is not None
        dest = self.director.pick_any(ctx)
        self.done = True
        sets, removes = self._forward_mutation()
        return [w.routing_headers_reply(dest, sets, removes)]

    async def on_body(self, msg: m.ProcessingRequest) -> list[Reply]:
        if self.ctx is None:  # request headers were skipped by the proxy config
            self.context({})
        if self.done:
            return [] if self.mode == FULL_DUPLEX else [w.continue_body(False)]
        self._read_metadata(msg)
        body = msg.request_body
        chunk = body.body
        if chunk:
            self.body_len += len(chunk)
            if self.body_len > self.max_body:
                raise RequestError(
                    ErrorCode.BODY_TOO_LARGE,
                    f"request body exceeds {self.max_body} bytes",
                )
            self.chunks.append(chunk)
        if body.end_of_stream:
            return await self._route(end_of_stream=True)
        if self.mode == FULL_DUPLEX:
            return []  # more chunks, or trailers, follow
        # BUFFERED sends the whole body in one message, with end_of_stream false when trailers follow;
        # BUFFERED_PARTIAL sends one message only (the rest, if any, bypasses the EPP): route on it now.
        if self.mode == BUFFERED_PARTIAL:
            try:
                return await self._route(end_of_stream=False)
            except RequestError as exc:
                if exc.code != ErrorCode.BAD_REQUEST:
                    raise
                raise RequestError(
                    ErrorCode.BODY_TOO_LARGE,
                    f"{exc.message} (in BUFFERED_PARTIAL mode the proxy sent only the first {self.body_len} "
                    "bytes of the body, what fits its buffer: raise its buffer limit or use "
                    "FULL_DUPLEX_STREAMED)",
                ) from exc
        return await self._route(end_of_stream=False)

    async def _route(self, end_of_stream: bool) -> list[Reply]:
        ctx = self.ctx
        assert ctx is not None
        chunks = self.chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self.chunks = []
        out = await self.director.handle_request(ctx, body)
        self.done = True
        self.plan_response(ctx)
        changed = out is not body
        dest = ctx.destination
        sets, removes = self._forward_mutation()
        result = ctx.result
        if result is not None and result.request_headers:  # set by plugins (e.g. P/D's prefill endpoint)
            for name, value in result.request_headers.items():
                if value is None:
                    removes.append(name)
                else:
                    sets.append((name, value.encode()))
        if self.mode == FULL_DUPLEX:
            if out:
                sets.append((CONTENT_LENGTH, str(len(out)).encode()))
            replies: list[Reply] = [w.routing_headers_reply(dest, sets, removes)]
            replies.extend(w.streamed_body(out, w.REQUEST, end_of_stream))
            return replies
        sets.insert(0, (DESTINATION_ENDPOINT, dest.encode()))
        if changed:
            sets.append((CONTENT_LENGTH, str(len(out)).encode()))
        return [
            m.buffered_body_response(
                False,
                out if changed else None,
                sets,
                removes,
                clear_route_cache=True,
                metadata=m.destination_metadata(dest),
            )
        ]

    def plan_response(self, ctx: RequestContext) -> None:
        """Decide, from the scheduled request, whether its response body is worth reading for usage (an
        observer already attached then reads on to the end of the body)."""
        req = ctx.request
        if req is None or not self.director.options.track_token_usage:
            return
        ctx.wants_usage = response_carries_usage(req.body, req.stream) if req.body else not req.stream
        if ctx.observed:
            ctx.usage_pending = ctx.wants_usage

    async def on_trailers(self, msg: m.ProcessingRequest) -> list[Reply]:
        if self.ctx is not None and not self.done and self.mode == FULL_DUPLEX:
            # the body ended with trailers instead of end_of_stream: route now, trailers follow the body
            replies = await self._route(end_of_stream=False)
            replies.append(w.continue_trailers(False))
            return replies
        return [w.continue_trailers(False)]
