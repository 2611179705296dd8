"""Observer streams: the response body read off the critical path, through Envoy's observability mode.

The Envoy config we ship runs a second ext_proc filter, before the routing one, in `observability_mode`:
Envoy copies the request headers and each response body chunk to the EPP and forwards them to the client
without waiting for a reply. Its stream is told apart by `observability_mode` on its first message and
matched to the routing stream of the same HTTP request by `x-request-id` (`ObserverRegistry`: whichever
stream comes first waits there for the other). The routing stream then asks Envoy for no response body
at all (`mode_override`, see `epp.extproc.response_side`) and streamed tokens never wait on the EPP.

What an observer reads, and when it stops (closing the stream makes Envoy stop sending):
- the response headers, when the routing stream skipped the response path altogether (decided at request
  headers, `RequestSide`): status, served endpoint, the ResponseReceived hooks;
- the first body chunk stamps `ResponseInfo.first_byte_at` (TTFT, the prefill ledger);
- when the response carries token usage worth reading (`RequestContext.wants_usage`) it reads on to the
  end of the body (SSE events scanned without parsing those that cannot hold usage, a JSON body held up to
  16 MiB) and hands the usage to the director (`settle_usage`);
- otherwise it closes after the first chunk: one message per request, none per token.
An observer that finds no request (another process routed it, a duplicated request id, the routing
stream already gone) closes at once; the routing stream then reads the body itself if it must.

When the routing stream ends first (Envoy ends both streams together, the observer's last messages trail),
it waits for its observer (at most `OBSERVER_GRACE` seconds) before it completes the response: for the
first byte (TTFT) and, when usage is read, for the end of the body, which also tells a client disconnect
from a complete response (Envoy ends the routing stream the same way in both cases, but only a complete
body reaches its end here).
"""

from __future__ import annotations

import logging
import time

from epp.extproc import messages as m
from epp.extproc.headers import read_response_headers
from epp.metadata import REQUEST_ID_HEADER
from epp.requestcontrol.context import RequestContext
from epp.requestcontrol.director import Director
from epp.requestcontrol.usage import SseUsageScanner, usage_from_json_body

__all__ = ["MAX_HELD_JSON", "OBSERVER_GRACE", "ObserverRegistry", "ObserverStream"]

log = logging.getLogger(__name__)

#: A JSON response body is kept for its usage up to this size (its usage is at its end).
MAX_HELD_JSON = 16 << 20
#: How long a routing stream that ended waits for its observer to see the end of the body. Both streams
#: end within a millisecond of each other for a complete response; an observer still waiting after this
#: means the client went away (Envoy then holds the observer stream open for its deferred close).
OBSERVER_GRACE = 1.0


class ObserverRegistry:
    """Where routing streams and observer streams of the same HTTP request meet, by request id.

    Either may come first: the Envoy config we ship puts the observer filter before the routing filter, so
    its request headers usually arrive first and it waits here until the routing stream registers the
    request. Two requests in flight with the same id (a client reusing one) cannot be told apart: neither
    is handed to an observer. Entries leave with their stream.
    """

    __slots__ = ("_requests", "_waiting")

    def __init__(self) -> None:
        self._requests: dict[str, list[RequestContext]] = {}
        self._waiting: dict[str, ObserverStream | None] = {}  # None: several observers claimed the id

    def register(self, ctx: RequestContext, *, observable: bool = True) -> None:
        """A routing stream starts `ctx`; an observer already waiting for it is linked now. Not
        `observable`: the routing stream reads the response body anyway (FULL_DUPLEX_STREAMED)."""
        if not observable:
            ctx.routing_reads_body = True
        rid = ctx.request_id
        found = self._requests.get(rid)
        if found is None:
            self._requests[rid] = [ctx]
        else:
            found.append(ctx)
            return
        if rid in self._waiting:
            observer = self._waiting.pop(rid)
            if observer is not None:
                observer.link(ctx)

    def unregister(self, ctx: RequestContext) -> None:
        found = self._requests.get(ctx.request_id)
        if found is None or ctx not in found:
            return
        if len(found) == 1:
            del self._requests[ctx.request_id]
        else:
            found.remove(ctx)

    def find(self, request_id: str) -> RequestContext | None:
        found = self._requests.get(request_id)
        return found[0] if found is not None and len(found) == 1 else None

    def attach(self, observer: ObserverStream, request_id: str) -> bool:
        """An observer starts: linked at once when its request is known, else it waits for it. False:
        it cannot be matched (no id, an ambiguous id)."""
        if not request_id:
            return False
        found = self._requests.get(request_id)
        if found is not None:
            return len(found) == 1 and observer.link(found[0])
        if request_id in self._waiting:
            self._waiting[request_id] = None
            return False
        self._waiting[request_id] = observer
        return True

    def forget(self, observer: ObserverStream, request_id: str) -> None:
        if self._waiting.get(request_id) is observer:
            del self._waiting[request_id]

    def __len__(self) -> int:
        return len(self._requests) + len(self._waiting)


def _request_id(msg: m.ProcessingRequest) -> str:
    for h in msg.request_headers.headers.headers:
        if h.key == REQUEST_ID_HEADER:
            raw = h.raw_value
            return raw.decode("utf-8", "replace") if raw else str(h.value)
    return ""


class ObserverStream:
    """The state of one observability-mode stream. `on_message` returns False once it has seen enough."""

    __slots__ = ("ctx", "director", "held", "held_len", "registry", "request_id", "scanner", "size")

    def __init__(self, registry: ObserverRegistry, director: Director) -> None:
        self.registry = registry
        self.director = director
        self.request_id = ""
        self.ctx: RequestContext | None = None
        self.scanner: SseUsageScanner | None = None
        self.held: list[bytes] = []
        self.held_len = 0
        self.size = 0

    def on_message(self, msg: m.ProcessingRequest) -> bool:
        kind = msg.WhichOneof("request")
        ctx = self.ctx
        if ctx is None:
            if kind != "request_headers" or self.request_id:
                return False  # the body comes and no routing stream of this process claimed the request
            self.request_id = _request_id(msg)
            return self.registry.attach(self, self.request_id)
        if not ctx.observed:  # the routing stream took the response body itself
            return False
        if kind == "response_body":
            body = msg.response_body
            return self._on_body(ctx, body.body, body.end_of_stream)
        if kind == "response_headers":
            if not ctx.response.status:  # the routing stream skipped the response path: this is it
                read_response_headers(ctx, msg)
                self.director.response_received(ctx)
            return True
        if kind == "response_trailers":
            self._end(ctx)
            return False
        return True

    def link(self, ctx: RequestContext) -> bool:
        """Observe `ctx` (False: it cannot be: already observed, finished, or its body is read by the
        routing stream). With a BUFFERED request body Envoy passes the request headers on while it still
        buffers the body for routing, so the request may not be routed yet: what to read is decided by
        the time the response body comes (`RequestSide.plan_response`)."""
        if ctx.observed or ctx.finished or ctx.routing_reads_body:
            return False
        ctx.observed = True
        ctx.observer_active = True
        if ctx.request is not None:
            ctx.usage_pending = ctx.wants_usage
        self.ctx = ctx
        return True

    def _on_body(self, ctx: RequestContext, chunk: bytes, eos: bool) -> bool:
        info = ctx.response
        if chunk and not info.first_byte_at:
            info.first_byte_at = time.monotonic()
            self.director.first_byte(ctx)
        if not ctx.wants_usage:
            return not chunk and not eos  # the first byte was all this request needed
        self.size += len(chunk)
        scanner = self.scanner
        if scanner is None and not self.held and ctx.request is not None and ctx.request.stream:
            scanner = self.scanner = SseUsageScanner()
        if scanner is not None:
            scanner.feed(chunk)
        elif chunk and self.held_len + len(chunk) <= MAX_HELD_JSON:
            self.held.append(chunk)
            self.held_len += len(chunk)
        if eos:
            self._end(ctx)
            return False
        return True

    def _end(self, ctx: RequestContext) -> None:
        """The body ended: its usage and size go to the request (the director records them)."""
        usage = None
        try:
            if self.scanner is not None:
                self.scanner.finish()
                usage = self.scanner.usage
            elif self.held:
                held = self.held
                self.held = []
                usage = usage_from_json_body(held[0] if len(held) == 1 else b"".join(held))
        except Exception:  # accounting must never break anything
            log.exception("reading usage from an observed response body failed")
        info = ctx.response
        if usage is not None:
            info.prompt_tokens = usage.prompt_tokens
            info.completion_tokens = usage.completion_tokens
            info.cached_tokens = usage.cached_tokens
        info.body_bytes = self.size
        ctx.body_seen = True

    def close(self) -> None:
        """The stream ended (or was closed by us): settle the request's pending usage, once, and wake a
        routing stream waiting for what this observer had to deliver."""
        ctx = self.ctx
        if ctx is None:
            self.registry.forget(self, self.request_id)
            return
        if not ctx.observed:
            return  # the routing stream took the body itself
        ctx.observer_active = False
        if ctx.usage_pending:
            self.director.settle_usage(ctx)
        waiter = ctx.observer_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
