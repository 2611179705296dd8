"""The response half of a main ext_proc stream: response headers, then the body handler they choose.

At response headers the EPP decides whether it needs the response body at all, and from whom:
- the model name must be restored after a rewrite: the routing stream takes the body (it alone can change
  it);
- the first body byte (a plugin reads `first_byte_at`) or the token usage (`RequestContext.wants_usage`)
  is wanted: an observer stream reads them off the critical path when one is attached to the request
  (`epp.extproc.observer`), else the routing stream takes the body;
- otherwise no stream takes it.
Where the proxy lets it (`allow_mode_override`, configured body mode not FULL_DUPLEX_STREAMED) the reply
asks for exactly that: `mode_override` to NONE (tokens never cross the EPP), STREAMED for an SSE body or
BUFFERED for a JSON one. Under FULL_DUPLEX_STREAMED (upstream's gateway config) the body comes anyway and
`DuplexBody` answers each chunk with the least work. The choice is counted in `epp_response_body_total`.

The response completes at the body's end, or, when no body is taken, when the ext_proc stream ends: Envoy
keeps it open exactly as long as the HTTP request. Either way `Director.response_complete` runs once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from google.protobuf import struct_pb2

from epp.extproc import messages as m
from epp.extproc import wire as w
from epp.extproc.headers import read_response_headers
from epp.extproc.observer import OBSERVER_GRACE
from epp.extproc.request_side import Reply, RequestSide
from epp.extproc.response_body import DuplexBody, MessageBody, NoBody, ResponseBody
from epp.logs import VERBOSE
from epp.metadata import DESTINATION_ENDPOINT_SERVED
from epp.requestcontrol.context import RequestContext
from epp.requestcontrol.director import Director
from epp.requestcontrol.rewrite import ModelNameRestorer

if TYPE_CHECKING:
    from epp.observability.metrics import EppMetrics

__all__ = ["ResponseSide"]

log = logging.getLogger(__name__)

FULL_DUPLEX = m.BodyMode.FULL_DUPLEX_STREAMED
NONE_MODE = m.BodyMode.NONE
STREAMED = m.BodyMode.STREAMED
BUFFERED = m.BodyMode.BUFFERED

#: `epp_response_body_total{path}` label values.
PATH_NONE = "none"  # no stream read the body
PATH_OBSERVER = "observer"  # an observer stream read it, off the critical path
PATH_OBSERVER_ONLY = "observer-only"  # the routing stream skipped the response; the observer read it all
PATH_ROUTING = "routing-stream"  # the routing stream took it (overridden or configured)
PATH_DUPLEX = "full-duplex"  # FULL_DUPLEX_STREAMED: the proxy sends it to the routing stream regardless


class ResponseSide:
    """State and handlers of the response half of one main stream."""

    __slots__ = ("body", "broken", "director", "remove_served_header", "request")

    def __init__(self, director: Director, request: RequestSide) -> None:
        self.director = director
        self.request = request
        self.body: ResponseBody | None = None
        self.broken = False  # the response path failed once: pass everything through from now on
        self.remove_served_header = False

    @property
    def ctx(self) -> RequestContext | None:
        return self.request.ctx

    def on_headers(self, msg: m.ProcessingRequest) -> list[Reply]:
        ctx = self.ctx
        if ctx is None or self.broken:
            return [w.continue_headers(True)]
        hdrs = msg.response_headers
        self.remove_served_header = read_response_headers(ctx, msg)
        info = ctx.response
        self.director.response_received(ctx)
        sets = [(k, v.encode()) for k, v in info.set_headers.items()]
        removes = [DESTINATION_ENDPOINT_SERVED] if self.remove_served_header else []
        if hdrs.end_of_stream or info.complete:
            self.body = NoBody(self, self.request.response_mode == FULL_DUPLEX)
            self._count(PATH_NONE)
            self.complete()
            return [self.with_hook_metadata(w.headers_reply(w.RESPONSE, sets, removes))]
        override = self._choose_body(ctx)
        if override is None and not sets and not removes:
            return [w.continue_headers(True)]
        reply = w.headers_reply(w.RESPONSE, sets, removes)
        return [w.with_response_mode(reply, override) if override is not None else reply]

    def _choose_body(self, ctx: RequestContext) -> int | None:
        """Pick the body handler; returns the body mode to ask the proxy for (None: keep its own)."""
        configured = self.request.response_mode
        restorer = (
            ModelNameRestorer(ctx.target_model, ctx.model)
            if ctx.target_model and ctx.target_model != ctx.model
            else None
        )
        wanted = ctx.wants_usage or ctx.pipeline.reads_first_byte
        # a body the routing stream sees anyway is scanned for usage even when the request did not ask
        # for it (some servers stream it regardless): with the fast path that costs one substring search
        scan = self.director.options.track_token_usage
        if configured == FULL_DUPLEX:
            self._detach_observer(ctx)
            self.body = DuplexBody(self, ctx, restorer, scan)
            self._count(PATH_DUPLEX)
            return None
        if restorer is not None or (wanted and not ctx.observed):
            self._detach_observer(ctx)
            mode = configured
            if configured == NONE_MODE:
                mode = STREAMED if ctx.response.streaming else BUFFERED
            self.body = MessageBody(self, ctx, mode, restorer, scan)
            self._count(PATH_ROUTING)
            return mode if mode != configured else None
        self.body = NoBody(self, duplex=False)
        self._count(PATH_OBSERVER if ctx.observed else PATH_NONE)
        return NONE_MODE if configured != NONE_MODE else None

    @staticmethod
    def _detach_observer(ctx: RequestContext) -> None:
        """The routing stream reads the body itself: an attached observer stops and leaves the usage, and
        none may attach later."""
        ctx.routing_reads_body = True
        ctx.observed = False
        ctx.observer_active = False
        ctx.usage_pending = False

    def _count(self, path: str) -> None:
        metrics: EppMetrics = self.director.metrics
        metrics.response_body_path(path)

    def on_body(self, msg: m.ProcessingRequest) -> list[Reply]:
        body = msg.response_body
        handler = self.body
        ctx = self.ctx
        if handler is None or ctx is None or self.broken or ctx.response.complete:
            return self._pass(body.body, body.end_of_stream)
        return handler.on_body(body.body, body.end_of_stream)

    def on_trailers(self, msg: m.ProcessingRequest) -> list[Reply]:
        ctx = self.ctx
        handler = self.body
        if ctx is None or handler is None or self.broken or ctx.response.complete:
            return [w.continue_trailers(True)]
        return handler.on_trailers()

    def _pass(self, chunk: bytes, eos: bool) -> list[Reply]:
        if self.request.response_mode == FULL_DUPLEX:
            return list(w.streamed_body(chunk, w.RESPONSE, eos)) if (chunk or eos) else []
        return [w.continue_body(True)]

    def complete(self) -> None:
        ctx = self.ctx
        if ctx is None or ctx.response.complete:
            return
        ctx.response.complete = True
        ctx.completed_at = time.monotonic()
        self.director.response_complete(ctx)

    def _handler(self) -> ResponseBody | None:
        """The body handler; a stream that skipped the response path gets `NoBody` when it ends."""
        if self.body is None and self.request.response_skipped and self.ctx is not None:
            self.body = NoBody(self, duplex=False)
            self._count(PATH_OBSERVER_ONLY)
        return self.body

    def waits_for_observer(self) -> bool:
        """At the end of the stream: whether completing needs the observer's word on the body's end."""
        ctx = self.ctx
        body = self._handler()
        return (
            ctx is not None
            and body is not None
            and body.completes_at_eof
            and not self.broken
            and not ctx.response.complete
            and ctx.observed
            and ctx.observer_active
        )

    def complete_at_stream_end(self) -> None:
        """The stream ended and no observer is reading the body: a body nobody took ends with it, unless
        an observer that read it for usage already ended without seeing its end (the client went away;
        Envoy may end the observer stream before this one)."""
        body = self._handler()
        if body is None or not body.completes_at_eof or self.broken:
            return
        if self._observer_missed_the_end():
            return
        self.complete()

    def _observer_missed_the_end(self) -> bool:
        ctx = self.ctx
        if ctx is None or not (ctx.observed and ctx.wants_usage and not ctx.body_seen):
            return False
        log.log(VERBOSE, "the body of %s never ended: the client went away", ctx.request_id)
        return True

    async def at_stream_end(self) -> None:
        """The ext_proc stream ended: a response whose body no stream took is complete now (once its
        observer, if any, delivered the first byte), unless an observer reading its body to the end says
        it never ended (the client went away)."""
        ctx = self.ctx
        body = self._handler()
        if ctx is None or body is None or not body.completes_at_eof or self.broken or ctx.response.complete:
            return
        if self.waits_for_observer():
            waiter = ctx.observer_waiter = asyncio.get_running_loop().create_future()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, OBSERVER_GRACE)
            ctx.observer_waiter = None
        # also when the observer ended between this stream's end and now
        if self._observer_missed_the_end():
            return  # a disconnect: `Director.finish` runs the hooks without completing
        self.complete()

    def with_hook_metadata(self, reply: Reply) -> Reply:
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

    def fail(self, msg: m.ProcessingRequest) -> list[Reply]:
        """An unexpected error on the response path: pass this and every later message through."""
        self.broken = True
        kind = msg.WhichOneof("request")
        if kind == "response_headers":
            return [w.continue_headers(True)]
        if kind == "response_trailers":
            return [w.continue_trailers(True)]
        if kind == "response_body":
            body = msg.response_body
            if self.body is not None:
                return self.body.on_failure(body.body, body.end_of_stream)
            return self._pass(body.body, body.end_of_stream)
        return []
