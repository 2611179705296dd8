"""How a main stream handles the response body, one class per case (chosen at response headers).

- `NoBody`: the EPP asked for no body (or never gets one). Whatever still arrives passes through
  untouched; the response completes at end of stream, or when the ext_proc stream ends.
- `DuplexBody`: FULL_DUPLEX_STREAMED (upstream's gateway config), where every chunk must be answered with
  the bytes to forward. It does no more than the request needs: SSE chunks are echoed in a hand-encoded
  reply (line-aligned when the model name is restored; scanned for usage only where the word can be), a
  JSON body is held to its end only when it is rewritten or its usage is read (as upstream does: one
  reply, and Envoy's trailing empty end-of-stream chunk costs none).
- `MessageBody`: STREAMED / BUFFERED / BUFFERED_PARTIAL, one reply per message (a body mutation only where
  the model name is restored; BUFFERED also fixes Content-Length).

Every handler stamps `first_byte_at` on the first non-empty chunk and, at the end of the body, hands the
usage and size to the request context before the response completes.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Protocol

from epp.extproc import messages as m
from epp.extproc import wire as w
from epp.metadata import CONTENT_LENGTH
from epp.requestcontrol.context import RequestContext
from epp.requestcontrol.director import Director
from epp.requestcontrol.rewrite import ModelNameRestorer
from epp.requestcontrol.usage import SseUsageScanner, Usage, usage_from_json_body

if TYPE_CHECKING:
    from epp.extproc.request_side import Reply

__all__ = ["MAX_HELD_RESPONSE", "MAX_USAGE_COPY", "DuplexBody", "MessageBody", "NoBody", "ResponseBody"]

log = logging.getLogger(__name__)

#: Non-SSE response bytes kept for the usage lookup when they are passed through (non-duplex modes).
MAX_USAGE_COPY = 16 << 20
#: A held (non-SSE) response body is released early past this size, to bound memory per stream.
MAX_HELD_RESPONSE = 8 << 20

BUFFERED = m.BodyMode.BUFFERED


class ResponseSide(Protocol):
    """What a body mode needs of the response side that owns it (`epp.extproc.response_side`)."""

    @property
    def director(self) -> Director: ...

    def complete(self) -> None:
        """The response is complete: the director's completion runs (once)."""
        ...

    def with_hook_metadata(self, reply: Reply) -> Reply:
        """`reply` with the dynamic metadata the response hooks set."""
        ...


class ResponseBody(Protocol):
    """What a main stream does with response body messages."""

    #: the response counts as complete when the ext_proc stream ends after its headers
    completes_at_eof: bool

    def on_body(self, chunk: bytes, eos: bool) -> list[Reply]: ...

    def on_trailers(self) -> list[Reply]: ...

    def on_failure(self, chunk: bytes, eos: bool) -> list[Reply]:
        """The response path failed: what to send so the client still gets every byte."""
        ...


def _pass(duplex: bool, chunk: bytes, eos: bool) -> list[Reply]:
    if duplex:
        return list(w.streamed_body(chunk, w.RESPONSE, eos)) if (chunk or eos) else []
    return [w.continue_body(True)]


def _set_usage(ctx: RequestContext, usage: Usage | None) -> None:
    if usage is None:
        return
    info = ctx.response
    info.prompt_tokens = usage.prompt_tokens
    info.completion_tokens = usage.completion_tokens
    info.cached_tokens = usage.cached_tokens


def _usage_from(ctx: RequestContext, body: bytes) -> None:
    # Usage is accounting: a body it cannot read is logged, never a reason to lose the response (a
    # held body is already out of its buffer when this runs, so an exception here would drop it).
    try:
        _set_usage(ctx, usage_from_json_body(body))
    except Exception:
        log.exception("reading usage from the response body failed")


class NoBody:
    """No body asked for: pass through anything that arrives anyway (the proxy ignored the override)."""

    __slots__ = ("duplex", "side")

    completes_at_eof = True

    def __init__(self, side: ResponseSide, duplex: bool) -> None:
        self.side = side
        self.duplex = duplex

    def on_body(self, chunk: bytes, eos: bool) -> list[Reply]:
        replies = _pass(self.duplex, chunk, eos)
        if eos:
            self.side.complete()
            if replies:
                replies[-1] = self.side.with_hook_metadata(replies[-1])
        return replies

    def on_trailers(self) -> list[Reply]:
        self.side.complete()
        return [self.side.with_hook_metadata(w.continue_trailers(True))]

    def on_failure(self, chunk: bytes, eos: bool) -> list[Reply]:
        return _pass(self.duplex, chunk, eos)


class DuplexBody:
    """FULL_DUPLEX_STREAMED: answer every chunk with the bytes to forward, doing no more than needed."""

    __slots__ = ("ctx", "held", "held_len", "hold_json", "restorer", "scanner", "side", "sse", "usage")

    completes_at_eof = False

    def __init__(
        self, side: ResponseSide, ctx: RequestContext, restorer: ModelNameRestorer | None, usage: bool
    ) -> None:
        self.side = side
        self.ctx = ctx
        self.restorer = restorer
        self.usage = usage
        self.sse = ctx.response.streaming
        self.scanner = SseUsageScanner() if usage and self.sse else None
        self.hold_json = not self.sse and (restorer is not None or usage)
        self.held: list[bytes] = []
        self.held_len = 0

    def on_body(self, chunk: bytes, eos: bool) -> list[Reply]:
        info = self.ctx.response
        if chunk:
            if not info.first_byte_at:
                info.first_byte_at = time.monotonic()
                self.side.director.first_byte(self.ctx)
            info.body_bytes += len(chunk)
        restorer = self.restorer
        out: bytes
        if self.sse:
            if self.scanner is not None:
                self.scanner.feed(chunk)
            out = restorer.feed(chunk) if restorer is not None else chunk
            if eos and restorer is not None:
                out += restorer.flush()
        elif self.hold_json:
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
            if eos and self.usage:
                _usage_from(self.ctx, out)  # (of the last segment only if a huge body was released early)
        else:
            out = chunk
        if eos:
            self._end()
        if not out and not eos:
            return []
        replies: list[Reply] = list(w.streamed_body(out, w.RESPONSE, eos))
        if eos:
            replies[-1] = self.side.with_hook_metadata(replies[-1])
        return replies

    def _end(self) -> None:
        if self.scanner is not None:
            self.scanner.finish()
            _set_usage(self.ctx, self.scanner.usage)
        self.ctx.body_seen = True
        self.side.complete()

    def on_trailers(self) -> list[Reply]:
        """The body ended with trailers: release what was held, without end_of_stream."""
        replies: list[Reply] = []
        restorer = self.restorer
        if self.held:
            data = b"".join(self.held)
            self.held = []
            self.held_len = 0
            out = restorer.replace(data) if restorer is not None else data
            if self.usage:
                _usage_from(self.ctx, out)
            replies.extend(w.streamed_body(out, w.RESPONSE, False))
        elif restorer is not None and self.sse:
            rest = restorer.flush()
            if rest:
                replies.extend(w.streamed_body(rest, w.RESPONSE, False))
        self._end()
        replies.append(self.side.with_hook_metadata(w.continue_trailers(True)))
        return replies

    def on_failure(self, chunk: bytes, eos: bool) -> list[Reply]:
        held = b"".join(self.held)
        self.held = []
        self.held_len = 0
        data = held + chunk
        if self.sse and self.restorer is not None:
            data = self.restorer.flush() + data  # the partial line it was holding back
        return _pass(True, data, eos)


class MessageBody:
    """STREAMED / BUFFERED / BUFFERED_PARTIAL: one reply per message."""

    __slots__ = ("copy", "copy_len", "ctx", "mode", "restorer", "scanner", "side", "sse", "usage")

    completes_at_eof = False

    def __init__(
        self,
        side: ResponseSide,
        ctx: RequestContext,
        mode: int,
        restorer: ModelNameRestorer | None,
        usage: bool,
    ) -> None:
        self.side = side
        self.ctx = ctx
        self.mode = mode
        self.restorer = restorer
        self.usage = usage
        self.sse = ctx.response.streaming
        self.scanner = SseUsageScanner() if usage and self.sse else None
        self.copy: list[bytes] = []  # response bytes passed through but kept for the usage lookup
        self.copy_len = 0

    def on_body(self, chunk: bytes, eos: bool) -> list[Reply]:
        ctx = self.ctx
        info = ctx.response
        if chunk:
            if not info.first_byte_at:
                info.first_byte_at = time.monotonic()
                self.side.director.first_byte(ctx)
            info.body_bytes += len(chunk)
        if self.scanner is not None:
            self.scanner.feed(chunk)
        elif self.usage and chunk and self.copy_len + len(chunk) <= MAX_USAGE_COPY:
            self.copy.append(chunk)
            self.copy_len += len(chunk)
        restorer = self.restorer
        new = chunk
        if restorer is not None:
            if self.sse and self.mode != BUFFERED:  # line-aligned: a name split across chunks is restored
                new = restorer.feed(chunk)
                if eos:
                    new += restorer.flush()
            elif chunk:
                new = restorer.replace(chunk)
        complete = eos or self.mode == BUFFERED
        if complete:
            self._end()
        if new == chunk:
            reply = w.continue_body(True)
        else:
            # BUFFERED lets the body reply fix Content-Length; in STREAMED mode Envoy drops it itself
            sets = [(CONTENT_LENGTH, str(len(new)).encode())] if self.mode == BUFFERED else []
            reply = m.buffered_body_response(True, new, sets)
        return [self.side.with_hook_metadata(reply) if complete else reply]

    def _end(self) -> None:
        ctx = self.ctx
        if self.scanner is not None:
            self.scanner.finish()
            _set_usage(ctx, self.scanner.usage)
        elif self.copy:
            copy = self.copy
            self.copy = []
            _usage_from(ctx, copy[0] if len(copy) == 1 else b"".join(copy))
        ctx.body_seen = True
        self.side.complete()

    def on_trailers(self) -> list[Reply]:
        if not self.ctx.response.complete:
            self._end()
        return [self.side.with_hook_metadata(w.continue_trailers(True))]

    def on_failure(self, chunk: bytes, eos: bool) -> list[Reply]:
        restorer = self.restorer
        if restorer is not None and self.sse and self.mode != BUFFERED:
            held = restorer.flush()  # the partial line it was holding back
            if held:
                return [m.buffered_body_response(True, held + chunk)]
        return [w.continue_body(True)]
