"""Instant-answer model servers and a lean streaming client, for measuring what a router adds.

`python -m epp.tools.bench.instant --count 4 --port-file F [--token-interval-ms MS]` serves `count` ports on
127.0.0.1 from one asyncio process (raw protocol, HTTP/1.1 keep-alive, no framework) and writes them,
comma-separated, to F. Each answers at once: `POST /v1/completions` and `/v1/chat/completions`, the
OpenAI/vLLM/SGLang probes the routers make (`/health`, `/v1/models`, `/get_model_info`,
`/get_server_info`, ...), and a vLLM `/metrics` page with an idle server's gauges.

A streamed completion (`"stream": true`) has N tokens, N = the request's `max_tokens` (or
`max_completion_tokens`; default 1, at most `MAX_TOKENS`): each token is one SSE event in its own HTTP
chunk. With `--token-interval-ms 0` (the default) the whole response goes out in one write; otherwise
the first token goes out with the headers and each next one in its own write, `interval` after the
previous one (a `loop.call_later` chain per response, no coroutine). The usage event comes after the
last token only when the request asks for it (`stream_options.include_usage`, as vLLM does), then
`[DONE]`. A non-streamed completion is one JSON body with one token and its usage. Request bodies are
searched for those few keys, never parsed.

`LeanClient` sends pre-built HTTP/1.1 requests over a pool of keep-alive connections (a bare
`asyncio.Protocol` each) and measures the time to the first chunk carrying a token (TTFT), the time to
the end of the response, and counts the token events it received, with a fraction of a full HTTP
client's CPU cost, so that the client does not dominate the measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["MAX_TOKENS", "LeanClient", "Timing", "completion_request", "main", "serve"]

MODEL = "bench-model"
_NAME = "instant"
#: The most tokens one streamed response has, whatever `max_tokens` asks.
MAX_TOKENS = 4096
_PROMPT_TOKENS = 16


def _json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _response(
    status: str, body: bytes, content_type: bytes = b"application/json", extra: bytes = b""
) -> bytes:
    return (
        b"HTTP/1.1 " + status.encode() + b"\r\ncontent-type: " + content_type + b"\r\ncontent-length: "
        + str(len(body)).encode() + b"\r\n" + extra + b"\r\n" + body
    )  # fmt: skip


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def _event(obj: Any) -> bytes:
    """One SSE event in its own HTTP chunk."""
    return _chunk(b"data: " + _json(obj) + b"\n\n")


@dataclass(frozen=True, slots=True)
class _Sse:
    """The pre-built pieces of one kind of streamed response (completions or chat)."""

    head: bytes  # status line and headers
    token: bytes  # a token event that is not the last
    last: bytes  # the last token event (finish_reason "length")
    done: bytes  # `[DONE]` and the terminating chunk
    usage_obj: dict[str, Any]
    usage_cache: dict[int, bytes]

    def usage(self, tokens: int) -> bytes:
        event = self.usage_cache.get(tokens)
        if event is None:
            usage = {
                "prompt_tokens": _PROMPT_TOKENS,
                "completion_tokens": tokens,
                "total_tokens": _PROMPT_TOKENS + tokens,
            }
            event = _event({**self.usage_obj, "usage": usage})
            if len(self.usage_cache) < 64:
                self.usage_cache[tokens] = event
        return event


def _sse(tag: bytes, chat: bool) -> _Sse:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n"
    head += tag + b"\r\n"
    if chat:
        base: dict[str, Any] = {"id": "chatcmpl-i", "object": "chat.completion.chunk", "created": 0,
                                "model": MODEL}  # fmt: skip

        def choice(finish: str | None) -> dict[str, Any]:
            return {"index": 0, "delta": {"role": "assistant", "content": " x"}, "finish_reason": finish}
    else:
        base = {"id": "cmpl-i", "object": "text_completion", "created": 0, "model": MODEL}

        def choice(finish: str | None) -> dict[str, Any]:
            return {"index": 0, "text": " x", "logprobs": None, "finish_reason": finish}

    return _Sse(
        head=head,
        token=_event({**base, "choices": [choice(None)]}),
        last=_event({**base, "choices": [choice("length")]}),
        done=_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n",
        usage_obj={**base, "choices": []},
        usage_cache={},
    )


@dataclass(frozen=True, slots=True)
class _Replies:
    """Everything one port answers."""

    stream: _Sse
    stream_chat: _Sse
    fixed: dict[str, bytes]


def _replies(port: int) -> _Replies:
    name = f"{_NAME}-{port}".encode()
    tag = b"x-sim-server: " + name + b"\r\n"
    whole = _json(
        {"id": "cmpl-i", "object": "text_completion", "created": 0, "model": MODEL,
         "choices": [{"index": 0, "text": " x", "finish_reason": "length"}],
         "usage": {"prompt_tokens": _PROMPT_TOKENS, "completion_tokens": 1,
                   "total_tokens": _PROMPT_TOKENS + 1}}
    )  # fmt: skip
    metrics = "".join(
        f'{m}{{model_name="{MODEL}",engine="0"}} {v}\n'
        for m, v in (
            ("vllm:num_requests_waiting", 0),
            ("vllm:num_requests_running", 0),
            ("vllm:kv_cache_usage_perc", 0.0),
            ("vllm:gpu_cache_usage_perc", 0.0),
        )
    ).encode()
    info = _json(
        {"model_path": MODEL, "tokenizer_path": MODEL, "is_generation": True, "model_id": MODEL,
         "served_model_name": MODEL, "instance_id": name.decode(), "kv_block_size": 16, "page_size": 16,
         "max_total_num_tokens": 32768, "max_running_requests": 256, "context_length": 8192, "dp_size": 1,
         "tp_size": 1, "internal_states": [{"last_gen_throughput": 0.0}], "version": "0.0.0+instant"}
    )  # fmt: skip
    models = _json({"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "epp"}]})
    return _Replies(
        stream=_sse(tag, chat=False),
        stream_chat=_sse(tag, chat=True),
        fixed={
            "whole": _response("200 OK", whole, extra=tag),
            "ok": _response("200 OK", b"", b"text/plain", tag),
            "metrics": _response("200 OK", metrics, b"text/plain; version=0.0.4", tag),
            "info": _response("200 OK", info, extra=tag),
            "models": _response("200 OK", models, extra=tag),
            "load": _response(
                "200 OK", _json([{"dp_rank": 0, "num_reqs": 0, "num_waiting_reqs": 0}]), extra=tag
            ),
            "404": _response("404 Not Found", b'{"detail":"Not Found"}', extra=tag),
        },
    )


_GET = {
    b"/health": "ok",
    b"/health_generate": "ok",
    b"/ping": "ok",
    b"/metrics": "metrics",
    b"/v1/models": "models",
    b"/get_model_info": "info",
    b"/model_info": "info",
    b"/get_server_info": "info",
    b"/server_info": "info",
    b"/get_load": "load",
}
_DIGITS = frozenset(b"0123456789")


def max_tokens_of(body: bytes) -> int:
    """The request's `max_tokens` (or `max_completion_tokens`) found in the raw JSON body: 1 when absent,
    not a positive integer, or below 1; at most `MAX_TOKENS`."""
    for key in (b'"max_tokens"', b'"max_completion_tokens"'):
        at = body.find(key)
        if at >= 0:
            break
    else:
        return 1
    i, n = at + len(key), len(body)
    while i < n and body[i] in b" \t\r\n:":
        i += 1
    j = i
    while j < n and body[j] in _DIGITS:
        j += 1
    return max(1, min(int(body[i:j]), MAX_TOKENS)) if j > i else 1


class _Instant(asyncio.Protocol):
    """One connection; the replies are those of the port it was accepted on. A request that arrives
    while a response is still streaming waits for its end (HTTP/1.1 answers in order)."""

    def __init__(self, by_port: dict[int, _Replies], interval: float) -> None:
        self.by_port = by_port
        self.interval = interval
        self.replies: _Replies | None = None
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        # the response being streamed: its token event, how many are left to write, what follows them
        self.timer: asyncio.TimerHandle | None = None
        self.token = b""
        self.last = b""
        self.left = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.replies = self.by_port[int(transport.get_extra_info("sockname")[1])]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while self.timer is None and self._one():
            pass

    def _one(self) -> bool:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = self.buf[:end]
        rest = self.buf[end + 4 :]
        lower = head.lower()
        if b"transfer-encoding: chunked" in lower:
            term = rest.find(b"\r\n0\r\n\r\n")
            if rest.startswith(b"0\r\n\r\n"):
                body, self.buf = b"", rest[5:]
            elif term < 0:
                return False
            else:
                body, self.buf = rest[: term + 2], rest[term + 7 :]
        else:
            length = 0
            for line in lower.split(b"\r\n"):
                if line.startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if len(rest) < length:
                return False
            body, self.buf = rest[:length], rest[length:]
        method, _, tail = head.partition(b" ")
        path = tail.split(b" ", 1)[0].split(b"?", 1)[0]
        self._answer(method, path, body)
        return self.transport is not None

    def _answer(self, method: bytes, path: bytes, body: bytes) -> None:
        transport, replies = self.transport, self.replies
        assert transport is not None and replies is not None
        if method == b"POST" and path in (b"/v1/completions", b"/v1/chat/completions"):
            compact = body.replace(b" ", b"")
            if b'"stream":true' not in compact:
                transport.write(replies.fixed["whole"])
                return
            sse = replies.stream_chat if b"chat" in path else replies.stream
            tokens = max_tokens_of(body)
            tail = (sse.usage(tokens) if b'"include_usage":true' in compact else b"") + sse.done
            if tokens == 1 or self.interval <= 0:
                transport.write(sse.head + sse.token * (tokens - 1) + sse.last + tail)
                return
            transport.write(sse.head + sse.token)
            self.token, self.last, self.left = sse.token, sse.last + tail, tokens - 1
            self.timer = self.loop.call_later(self.interval, self._next_token)
            return
        key = _GET.get(path, "404") if method == b"GET" else "404"
        transport.write(replies.fixed[key])

    def _next_token(self) -> None:
        self.timer = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self.left -= 1
        if self.left:
            transport.write(self.token)
            self.timer = self.loop.call_later(self.interval, self._next_token)
            return
        transport.write(self.last)
        while self.timer is None and self._one():  # a request that came during the stream
            pass


async def serve(
    count: int, port_file: Path | None = None, *, token_interval_s: float = 0.0
) -> list[asyncio.Server]:
    """Start `count` instant servers on free loopback ports (writes them to `port_file`).

    `token_interval_s`: the time between two tokens of a streamed response (0: all at once)."""
    loop = asyncio.get_running_loop()
    by_port: dict[int, _Replies] = {}
    servers: list[asyncio.Server] = []
    for _ in range(count):
        server = await loop.create_server(lambda: _Instant(by_port, token_interval_s), "127.0.0.1", 0)
        port = int(server.sockets[0].getsockname()[1])
        by_port[port] = _replies(port)
        servers.append(server)
    if port_file is not None:
        ports = [str(s.sockets[0].getsockname()[1]) for s in servers]
        tmp = port_file.with_suffix(".tmp")
        tmp.write_text(",".join(ports))
        tmp.replace(port_file)
    return servers


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m epp.tools.bench.instant", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--count", type=int, default=4)
    p.add_argument("--port-file", required=True)
    p.add_argument(
        "--token-interval-ms",
        type=float,
        default=0.0,
        help="milliseconds between two streamed tokens (default 0: the whole response at once)",
    )
    args = p.parse_args(argv)
    if args.token_interval_ms < 0:
        p.error("--token-interval-ms must be >= 0")

    async def run() -> None:
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        servers = await serve(
            args.count, Path(args.port_file), token_interval_s=args.token_interval_ms / 1000
        )
        await stop.wait()
        for s in servers:
            s.close()

    asyncio.run(run())
    return 0


# ---- the client ------------------------------------------------------------------------------------


def completion_request(
    host_port: str,
    prompt: str = "hello",
    *,
    stream: bool = True,
    max_tokens: int = 1,
    include_usage: bool = False,
) -> bytes:
    """A pre-built HTTP/1.1 `POST /v1/completions` asking for `max_tokens` tokens (with the streamed
    usage event when `include_usage`)."""
    doc: dict[str, Any] = {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "stream": stream}
    if stream and include_usage:
        doc["stream_options"] = {"include_usage": True}
    body = _json(doc)
    return (
        b"POST /v1/completions HTTP/1.1\r\nhost: " + host_port.encode()
        + b"\r\ncontent-type: application/json\r\ncontent-length: " + str(len(body)).encode()
        + b"\r\n\r\n" + body
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Timing:
    """One response: its status, the time to its first token (None: no token came), to its end, and the
    number of token events it carried."""

    status: int
    ttft_s: float | None
    total_s: float
    tokens: int = 0


_TOKEN_MARKS = (b'"text":"', b'"content":"')
_KEEP = max(len(m) for m in _TOKEN_MARKS) - 1  # bytes kept across pieces so a split mark is still seen


class _Conn(asyncio.Protocol):
    """One keep-alive connection of `LeanClient`: parses the response as it arrives, no coroutine."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[Timing] | None = None
        self.keep = True
        self._reset(0.0)

    def _reset(self, start: float) -> None:
        self.start = start
        self.head = b""
        self.in_body = False
        self.status = 0
        self.chunked = False
        self.keep = True
        self.pending = b""  # undecoded chunked framing
        self.left = 0  # body bytes still to come (content-length) / of the current chunk
        self.crlf = False  # the current chunk's payload is read; its CRLF is next
        self.ttft: float | None = None
        self.tokens = 0
        self.tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.keep = False
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc or ConnectionResetError("the connection closed mid-response"))

    def send(self, raw: bytes) -> asyncio.Future[Timing]:
        if self.transport is None:
            raise ConnectionResetError("the connection is closed")
        self.waiter = asyncio.get_running_loop().create_future()
        self._reset(time.perf_counter())
        self.transport.write(raw)
        return self.waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.waiter is None or self.waiter.done():
            return  # nothing asked: not HTTP/1.1 we understand; the pool drops the connection
        if not self.in_body:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            data = self.head[end + 4 :]
            self._headers(self.head[:end].lower())
        if self.chunked:
            self._chunked(data)
        else:
            self._feed(data[: self.left])
            self.left -= len(data)
            if self.left <= 0:
                self._done(self.status == 200)

    def _headers(self, lower: bytes) -> None:
        self.in_body = True
        self.status = int(lower[9:12])
        self.keep = b"connection: close" not in lower
        self.chunked = b"transfer-encoding: chunked" in lower
        if not self.chunked:
            self.left = 0
            for line in lower.split(b"\r\n"):
                if line.startswith(b"content-length:"):
                    self.left = int(line.split(b":", 1)[1])

    def _chunked(self, data: bytes) -> None:
        buf = self.pending + data if self.pending else data
        pos, n = 0, len(buf)
        while pos < n:
            if self.left:
                take = min(self.left, n - pos)
                self._feed(buf[pos : pos + take])
                pos += take
                self.left -= take
                if self.left:
                    break
                self.crlf = True
            if self.crlf:
                if n - pos < 2:
                    break
                pos += 2
                self.crlf = False
                continue
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                break
            size = int(buf[pos:eol].split(b";", 1)[0], 16)
            if size == 0:
                if buf.find(b"\r\n\r\n", eol) < 0:  # no trailers are expected: the end is one CRLF
                    break
                self.pending = b""
                self._done(False)
                return
            pos = eol + 2
            self.left = size
        self.pending = buf[pos:]

    def _feed(self, piece: bytes) -> None:
        tail = self.tail
        seen = tail + piece
        count = seen.count(_TOKEN_MARKS[0]) + seen.count(_TOKEN_MARKS[1])
        if count and tail:  # a mark wholly inside the kept tail was counted with the previous piece
            count -= tail.count(_TOKEN_MARKS[0]) + tail.count(_TOKEN_MARKS[1])
        if count:
            if self.ttft is None:
                self.ttft = time.perf_counter() - self.start
            self.tokens += count
        self.tail = seen[-_KEEP:]

    def _done(self, first_at_end: bool) -> None:
        total = time.perf_counter() - self.start
        ttft = total if first_at_end and self.ttft is None else self.ttft
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(Timing(self.status, ttft, total, self.tokens))


class LeanClient:
    """Keep-alive HTTP/1.1 connections to one `host:port`; `request(raw)` returns its Timing."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._idle: list[_Conn] = []
        self._all: list[_Conn] = []

    async def request(self, raw: bytes) -> Timing:
        conn = None
        while self._idle and conn is None:
            conn = self._idle.pop()
            if conn.transport is None:  # the server closed it while it was idle
                conn = None
        if conn is None:
            _, conn = await asyncio.get_running_loop().create_connection(_Conn, self.host, self.port)
            self._all.append(conn)
        try:
            timing = await conn.send(raw)
        except BaseException:  # a timeout or a broken response: the connection is not reused
            conn.close()
            raise
        if conn.keep and conn.transport is not None:
            self._idle.append(conn)
        else:
            conn.close()
        return timing

    async def close(self) -> None:
        for conn in self._all:
            conn.close()
        self._all.clear()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports close


if __name__ == "__main__":
    sys.exit(main())
