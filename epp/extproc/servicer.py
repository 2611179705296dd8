"""The ext_proc `Process` stream: one state machine per HTTP request, speaking Envoy's protocol.

Body modes (Envoy reports them in `protocol_config` on the first message):

- FULL_DUPLEX_STREAMED (upstream's mode): request body chunks are collected and the request-headers reply is
  held until the body ends; then the headers reply (destination header + `envoy.lb` metadata + Content-Length)
  and the body as streamed chunks of at most 62,000 bytes. SSE response chunks pass through as they arrive
  (line-aligned when the model name is rewritten back); any other response body is held to its end and
  sent back whole (one reply, the rewrite-back and the usage lookup see all of it), as upstream does.
- BUFFERED: the headers reply goes at once (system-owned headers removed); the routing mutation rides on the
  body reply, with Content-Length set whenever the body is replaced.
- NONE / STREAMED request bodies cannot be routed on: the EPP asks for BUFFERED via `mode_override`.

A request without a body (request headers with end_of_stream) is routed at once to any candidate.
Every failure before routing becomes an ImmediateResponse (400/413/429/503, 500 for anything unexpected);
a failure on the response path degrades to passing the response through untouched. Whatever happens,
`Director.finish` runs when the stream ends, so response hooks run exactly once and metrics are counted once.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pbg
from google.protobuf import struct_pb2

from epp.errors import ErrorCode, RequestError
from epp.extproc import messages as m
from epp.extproc import wire as w
from epp.extproc.keys import (
    CONTENT_LENGTH,
    CONTENT_TYPE,
    DESTINATION_ENDPOINT,
    DESTINATION_ENDPOINT_SERVED,
    DESTINATION_ENDPOINT_SUBSET,
    ENVOY_LB_NAMESPACE,
    EXT_PROC_ATTRIBUTES_NAMESPACE,
    REQUEST_ID_HEADER,
    STATUS_HEADER,
    SUBSET_HINT_NAMESPACE,
    SYSTEM_OWNED_REQUEST_HEADERS,
    UPSTREAM_ADDRESS_ATTRIBUTE,
)
from epp.observability.logging import VERBOSE, bind_request
from epp.requestcontrol.context import RequestContext
from epp.requestcontrol.director import Director
from epp.requestcontrol.rewrite import ModelNameRestorer
from epp.requestcontrol.usage import SseUsageScanner, Usage, usage_from_json_body
from epp.scheduling.pipeline import PipelineHolder

__all__ = ["ExtProcServicer"]

log = logging.getLogger(__name__)

FULL_DUPLEX = m.BodyMode.FULL_DUPLEX_STREAMED
BUFFERED = m.BodyMode.BUFFERED
BUFFERED_PARTIAL = m.BodyMode.BUFFERED_PARTIAL
NONE_MODE = m.BodyMode.NONE

#: A reply: a message, or its serialised bytes (hot-path replies are hand-encoded, see `wire`).
Reply: TypeAlias = bytes | Any  # Any: the protobuf classes are untyped

_SYSTEM_OWNED_SORTED = tuple(sorted(SYSTEM_OWNED_REQUEST_HEADERS))
#: Non-SSE response bytes kept for the usage lookup when they are passed through (non-duplex modes).
MAX_USAGE_COPY = 16 << 20
#: A held (non-SSE) response body is released early past this size, to bound memory per stream.
MAX_HELD_RESPONSE = 8 << 20


def _header_map(headers: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for h in headers.headers:
        raw = h.raw_value
        out[h.key] = raw.decode("utf-8", "replace") if raw else h.value
    return out


class _Stream:
    """State of one ext_proc stream (one HTTP request and its response)."""

    __slots__ = (
        "body_len",
        "broken",
        "chunks",
        "copy",
        "copy_len",
        "ctx",
        "director",
        "held",
        "held_len",
        "holder",
        "max_body",
        "orphan_error",
        "remove_served_header",
        "request_done",
        "request_mode",
        "response_mode",
        "restorer",
        "sse",
    )

    def __init__(self, director: Director, holder: PipelineHolder) -> None:
        self.director = director
        self.holder = holder
        self.max_body = director.options.max_request_body_bytes
        self.ctx: RequestContext | None = None
        self.request_mode = FULL_DUPLEX
        self.response_mode = FULL_DUPLEX
        self.chunks: list[bytes] = []
        self.body_len = 0
        self.request_done = False  # the routing reply (or an immediate response) has been sent
        self.broken = False  # the response path failed once: pass everything through from now on
        self.restorer: ModelNameRestorer | None = None
        self.sse: SseUsageScanner | None = None
        self.held: list[bytes] = []  # a non-SSE response body, held until its end
        self.held_len = 0
        self.copy: list[bytes] = []  # response bytes passed through but kept for the usage lookup
        self.copy_len = 0
        self.remove_served_header = False
        self.orphan_error = ""  # an error code for a stream rejected before it had a request context

    # ---- request side -------------------------------------------------------------------------------

    def _context(self, headers: dict[str, str]) -> RequestContext:
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

    def on_request_headers(self, msg: m.ProcessingRequest) -> list[Reply]:
        if self.ctx is not None:  # a second headers message: nothing to do
            return [w.continue_headers(False)]
        if msg.HasField("protocol_config"):
            pc = msg.protocol_config
            self.request_mode = pc.request_body_mode
            self.response_mode = pc.response_body_mode
        hdrs = msg.request_headers
        self._context(_header_map(hdrs.headers))
        self._read_metadata(msg)
        if hdrs.end_of_stream:
            return self._route_bodyless()
        mode = self.request_mode
        if mode == FULL_DUPLEX:
            return []  # hold the reply until the body has arrived
        sets, removes = self._forward_mutation()
        if mode in (BUFFERED, BUFFERED_PARTIAL):
            return [w.headers_reply(w.REQUEST, sets, removes)]
        # NONE / STREAMED: the body would never reach us before the route is chosen
        log.debug("request body mode %s cannot be routed on: asking for BUFFERED", mode)
        reply = m.mode_override_buffered()
        if sets or removes:
            reply.request_headers.response.header_mutation.remove_headers.extend(removes)
            for k, v in sets:
                reply.request_headers.response.header_mutation.set_headers.append(m.header_option(k, v))
        self.request_mode = BUFFERED
        return [reply]

    def _route_bodyless(self) -> list[Reply]:
        ctx = self.ctx
        assert ctx is not None
        dest = self.director.pick_any(ctx)
        self.request_done = True
        sets, removes = self._forward_mutation()
        return [w.routing_headers_reply(dest, sets, removes)]

    async def on_request_body(self, msg: m.ProcessingRequest) -> list[Reply]:
        if self.ctx is None:  # request headers were skipped by the proxy config
            self._context({})
        if self.request_done:
            return [] if self.request_mode == FULL_DUPLEX else [w.continue_body(False)]
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
        if self.request_mode == FULL_DUPLEX:
            return []  # more chunks, or trailers, follow
        # BUFFERED sends the whole body in one message, with end_of_stream false when trailers follow;
        # BUFFERED_PARTIAL sends one message only (the rest, if any, bypasses the EPP): route on it now.
        if self.request_mode == BUFFERED_PARTIAL:
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
        self.request_done = True
        changed = out is not body
        dest = ctx.destination
        sets, removes = self._forward_mutation()
        replies: list[Reply]
        if self.request_mode == FULL_DUPLEX:
            if out:
                sets.append((CONTENT_LENGTH, str(len(out)).encode()))
            replies = [w.routing_headers_reply(dest, sets, removes)]
            replies.extend(w.streamed_body(out, w.REQUEST, end_of_stream))
        else:
            sets.insert(0, (DESTINATION_ENDPOINT, dest.encode()))
            if changed:
                sets.append((CONTENT_LENGTH, str(len(out)).encode()))
            replies = [
                m.buffered_body_response(
                    False,
                    out if changed else None,
                    sets,
                    removes,
                    clear_route_cache=True,
                    metadata=m.destination_metadata(dest),
                )
            ]
        if ctx.target_model and ctx.target_model != ctx.model:
            self.restorer = ModelNameRestorer(ctx.target_model, ctx.model)
        return replies

    async def on_request_trailers(self, msg: m.ProcessingRequest) -> list[Reply]:
        if self.ctx is not None and not self.request_done and self.request_mode == FULL_DUPLEX:
            # the body ended with trailers instead of end_of_stream: route now, trailers follow the body
            replies = await self._route(end_of_stream=False)
            replies.append(w.continue_trailers(False))
            return replies
        return [w.continue_trailers(False)]

    # ---- response side ------------------------------------------------------------------------------

    def _served_endpoint(self, msg: m.ProcessingRequest, headers: dict[str, str]) -> str:
        if msg.HasField("metadata_context"):
            fm = msg.metadata_context.filter_metadata
            if ENVOY_LB_NAMESPACE in fm:
                v = fm[ENVOY_LB_NAMESPACE].fields.get(DESTINATION_ENDPOINT_SERVED)
                if v is not None and v.string_value:
                    return str(v.string_value)
        attrs = msg.attributes
        if EXT_PROC_ATTRIBUTES_NAMESPACE in attrs:
            v = attrs[EXT_PROC_ATTRIBUTES_NAMESPACE].fields.get(UPSTREAM_ADDRESS_ATTRIBUTE)
            if v is not None and v.string_value:
                return str(v.string_value)
        served = headers.get(DESTINATION_ENDPOINT_SERVED, "")
        if served:
            self.remove_served_header = True
        return served

    def on_response_headers(self, msg: m.ProcessingRequest) -> list[Reply]:
        ctx = self.ctx
        if ctx is None or self.broken:
            return [w.continue_headers(True)]
        hdrs = msg.response_headers
        headers = _header_map(hdrs.headers)
        info = ctx.response
        info.headers = headers
        status = headers.get(STATUS_HEADER, "")
        info.status = int(status) if status.isdigit() else 0
        info.streaming = "text/event-stream" in headers.get(CONTENT_TYPE, "")
        info.served_endpoint = self._served_endpoint(msg, headers)
        if info.status != 200 and not ctx.error_code:
            ctx.error_code = ErrorCode.MODEL_SERVER_ERROR.value
        if info.streaming:
            self.sse = SseUsageScanner()
        self.director.response_received(ctx)
        if self.response_mode == NONE_MODE:
            self._complete()  # no body will be shown to us
        sets = [(k, v.encode()) for k, v in info.set_headers.items()]
        removes = [DESTINATION_ENDPOINT_SERVED] if self.remove_served_header else []
        if hdrs.end_of_stream or info.complete:
            self._complete()
            return [self._with_hook_metadata(w.headers_reply(w.RESPONSE, sets, removes))]
        if not sets and not removes:
            return [w.continue_headers(True)]
        return [w.headers_reply(w.RESPONSE, sets, removes)]

    def on_response_body(self, msg: m.ProcessingRequest) -> list[Reply]:
        ctx = self.ctx
        body = msg.response_body
        chunk = body.body
        eos = body.end_of_stream
        mode = self.response_mode
        if ctx is None or self.broken or ctx.response.complete:
            return self._pass_body(chunk, eos)
        info = ctx.response
        if chunk:
            if not info.first_byte_at:
                info.first_byte_at = time.monotonic()
            info.body_bytes += len(chunk)
        restorer = self.restorer
        if mode == FULL_DUPLEX:
            out: bytes
            if self.sse is not None:
                self.sse.feed(chunk)
                out = restorer.feed(chunk) if restorer is not None else chunk
                if eos and restorer is not None:
                    out += restorer.flush()
            else:
                # a JSON body is held to its end, as upstream does: the model-name rewrite and the usage
                # lookup see it whole, and Envoy's trailing empty end-of-stream chunk costs no extra reply
                held = self.held
                held.append(chunk)
                self.held_len += len(chunk)
                if not eos and self.held_len <= MAX_HELD_RESPONSE:
                    return []
                out = held[0] if len(held) == 1 else b"".join(held)
                self.held = []
                self.held_len = 0
                if restorer is not None:
                    out = restorer.replace(out)
                if eos:
                    self._usage_from(out)  # (of the last segment only if a huge body was released early)
            if eos:
                self._finish_usage()
                self._complete()
            if not out and not eos:
                return []
            replies = w.streamed_body(out, w.RESPONSE, eos)
            if eos:
                replies[-1] = self._with_hook_metadata(replies[-1])
            return replies
        # non-duplex modes: one reply per message
        if self.sse is not None:
            self.sse.feed(chunk)
        else:
            self._keep_copy(chunk)
        new = restorer.replace(chunk) if restorer is not None and chunk else chunk
        if eos or mode == BUFFERED:
            self._finish_usage()
            self._complete()
        if new == chunk:
            reply = w.continue_body(True)
        else:
            # BUFFERED lets the body reply fix Content-Length; in STREAMED mode Envoy drops it itself
            sets = [(CONTENT_LENGTH, str(len(new)).encode())] if mode == BUFFERED else []
            reply = m.buffered_body_response(True, new, sets)
        return [self._with_hook_metadata(reply) if info.complete else reply]

    def on_response_trailers(self, msg: m.ProcessingRequest) -> list[Reply]:
        ctx = self.ctx
        replies: list[Reply] = []
        if ctx is not None and not self.broken and not ctx.response.complete:
            if self.held:  # the body ended with trailers: release what was held, without end_of_stream
                restorer = self.restorer
                data = b"".join(self.held)
                out = restorer.replace(data) if restorer is not None else data
                self._usage_from(out)
                self.held = []
                self.held_len = 0
                replies.extend(w.streamed_body(out, w.RESPONSE, False))
            elif self.restorer is not None and self.sse is not None:
                rest = self.restorer.flush()
                if rest:
                    replies.extend(w.streamed_body(rest, w.RESPONSE, False))
            self._finish_usage()
            self._complete()
            replies.append(self._with_hook_metadata(w.continue_trailers(True)))
            return replies
        return [w.continue_trailers(True)]

    def _pass_body(self, chunk: bytes, eos: bool) -> list[Reply]:
        if self.response_mode == FULL_DUPLEX:
            return w.streamed_body(chunk, w.RESPONSE, eos) if (chunk or eos) else []
        return [w.continue_body(True)]

    def _keep_copy(self, chunk: bytes) -> None:
        if chunk and self.copy_len + len(chunk) <= MAX_USAGE_COPY:
            self.copy.append(chunk)
            self.copy_len += len(chunk)

    def _usage_from(self, body: bytes) -> None:
        # Usage is accounting: a body it cannot read is logged, never a reason to lose the response (a
        # held body is already out of `self.held` when this runs, so an exception here would drop it).
        try:
            self._set_usage(usage_from_json_body(body))
        except Exception:
            log.exception("reading usage from the response body failed")

    def _finish_usage(self) -> None:
        if self.sse is not None:
            self.sse.finish()
            self._set_usage(self.sse.usage)
        elif self.copy:
            copy = self.copy
            self.copy = []
            self._usage_from(copy[0] if len(copy) == 1 else b"".join(copy))

    def _set_usage(self, usage: Usage | None) -> None:
        if usage is None or self.ctx is None:
            return
        info = self.ctx.response
        info.prompt_tokens = usage.prompt_tokens
        info.completion_tokens = usage.completion_tokens
        info.cached_tokens = usage.cached_tokens

    def _complete(self) -> None:
        ctx = self.ctx
        if ctx is None or ctx.response.complete:
            return
        ctx.response.complete = True
        ctx.completed_at = time.monotonic()
        self.director.response_complete(ctx)

    def _with_hook_metadata(self, reply: Reply) -> Reply:
        """Attach the dynamic metadata response hooks set to the last reply (copying shared constants).

        A namespace whose values a protobuf Struct cannot hold is left out (and logged): the response
        itself must reach the client whatever a hook wrote.
        """
        ctx = self.ctx
        if ctx is None or not ctx.response.dynamic_metadata:
            return reply
        md = struct_pb2.Struct()
        for namespace, values in ctx.response.dynamic_metadata.items():
            try:
                md.fields[namespace].struct_value.update(values)
            except (ValueError, TypeError, AttributeError) as exc:
                del md.fields[namespace]
                log.error("response metadata %r from a hook left out: %s", namespace, exc)
        if not md.fields:
            return reply
        if isinstance(reply, bytes):
            return w.with_metadata(reply, md.SerializeToString())
        out = m.ProcessingResponse()
        out.CopyFrom(reply)
        out.dynamic_metadata.MergeFrom(md)
        return out

    # ---- failure handling -----------------------------------------------------------------------------

    def fail_response_path(self, msg: m.ProcessingRequest) -> list[Reply]:
        """An unexpected error on the response path: pass this and every later message through."""
        self.broken = True
        kind = msg.WhichOneof("request")
        if kind == "response_headers":
            return [w.continue_headers(True)]
        if kind == "response_trailers":
            return [w.continue_trailers(True)]
        if kind == "response_body":
            held = b"".join(self.held)
            self.held = []
            self.held_len = 0
            body = msg.response_body
            data = held + body.body
            if self.sse is not None and self.restorer is not None:
                data = self.restorer.flush() + data  # the partial line it was holding back
            return self._pass_body(data, body.end_of_stream)
        return []

    def finish(self) -> None:
        if self.ctx is not None:
            self.director.finish(self.ctx)
        elif self.orphan_error:
            self.director.metrics.record_error("", "", self.orphan_error)


class ExtProcServicer(pbg.ExternalProcessorServicer):  # type: ignore[misc]
    """`envoy.service.ext_proc.v3.ExternalProcessor/Process`."""

    def __init__(self, holder: PipelineHolder, director: Director) -> None:
        self.holder = holder
        self.director = director

    async def Process(
        self,
        request_iterator: AsyncIterator[m.ProcessingRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        # read/write on the context rather than iterating and yielding: one async-generator layer less
        # per message each way (the stream is all the handler does, so the two are equivalent)
        stream = _Stream(self.director, self.holder)
        read = context.read
        write = context.write
        eof = grpc.aio.EOF  # type: ignore[attr-defined]  # not in the stubs
        try:
            while True:
                msg = await read()
                if msg is eof:
                    return
                kind = msg.WhichOneof("request")
                try:
                    if kind == "request_body":
                        replies = await stream.on_request_body(msg)
                    elif kind == "response_body":
                        replies = stream.on_response_body(msg)
                    elif kind == "request_headers":
                        replies = stream.on_request_headers(msg)
                    elif kind == "response_headers":
                        replies = stream.on_response_headers(msg)
                    elif kind == "request_trailers":
                        replies = await stream.on_request_trailers(msg)
                    elif kind == "response_trailers":
                        replies = stream.on_response_trailers(msg)
                    else:
                        continue
                except RequestError as err:
                    if stream.request_done:
                        log.exception("request error on the response path")
                        replies = stream.fail_response_path(msg)
                    else:
                        await write(self._reject(stream, err))
                        return
                except Exception:
                    if stream.request_done:
                        log.exception("response processing failed; passing the response through")
                        replies = stream.fail_response_path(msg)
                    else:
                        log.exception("request processing failed")
                        await write(self._reject(stream, RequestError(ErrorCode.INTERNAL, "internal error")))
                        return
                for reply in replies:
                    await write(reply)
        finally:
            try:
                stream.finish()
            except Exception:  # never let cleanup turn into a stream error
                log.exception("stream cleanup failed")

    @staticmethod
    def _reject(stream: _Stream, err: RequestError) -> m.ProcessingResponse:
        stream.request_done = True
        ctx = stream.ctx
        if ctx is None:
            stream.orphan_error = err.code.value
        elif not ctx.error_code:
            ctx.error_code = err.code.value
        level = logging.ERROR if err.code == ErrorCode.INTERNAL else VERBOSE
        log.log(level, "request rejected: %s %s", err.status, err.message)
        return m.immediate_response(err.status, err.body(), details=f"epp_{err.code.value}")
