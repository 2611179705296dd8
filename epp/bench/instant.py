"""Instant-answer model servers and a lean streaming client, for measuring what a router adds.

`python -m epp.bench.instant --count 4 --port-file F` serves `count` ports on 127.0.0.1 from one asyncio
process (raw protocol, HTTP/1.1 keep-alive, no framework) and writes them, comma-separated, to F. Each
answers at once: `POST /v1/completions` and `/v1/chat/completions` with one generated token (streamed
as SSE when `stream` is true: the token chunk, the usage chunk, `[DONE]`), the OpenAI/vLLM/SGLang probes
the routers make (`/health`, `/v1/models`, `/get_model_info`, `/get_server_info`, ...), and a vLLM
`/metrics` page with an idle server's gauges. Request bodies are read, never parsed.

`LeanClient` sends pre-built HTTP/1.1 requests over a pool of keep-alive connections and measures the
time to the first SSE chunk carrying a token (TTFT) and to the end of the response, with a fraction of
a full HTTP client's CPU cost, so that the client does not dominate the measurement.
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

__all__ = ["LeanClient", "Timing", "completion_request", "main", "serve"]

MODEL = "bench-model"
_NAME = "instant"


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


def _replies(port: int) -> dict[str, bytes]:
    name = f"{_NAME}-{port}".encode()
    tag = b"x-sim-server: " + name + b"\r\n"
    token = _json(
        {"id": "cmpl-i", "object": "text_completion", "created": 0, "model": MODEL,
         "choices": [{"index": 0, "text": " x", "logprobs": None, "finish_reason": "length"}]}
    )  # fmt: skip
    chat_token = _json(
        {"id": "chatcmpl-i", "object": "chat.completion.chunk", "created": 0, "model": MODEL,
         "choices": [{"index": 0, "delta": {"role": "assistant", "content": " x"},
                      "finish_reason": "length"}]}
    )  # fmt: skip
    usage = _json(
        {"id": "cmpl-i", "object": "text_completion", "created": 0, "model": MODEL, "choices": [],
         "usage": {"prompt_tokens": 16, "completion_tokens": 1, "total_tokens": 17}}
    )  # fmt: skip

    def sse(first: bytes) -> bytes:
        head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n" + tag
        events = b"data: " + first + b"\n\n" + b"data: " + usage + b"\n\ndata: [DONE]\n\n"
        return head + b"\r\n" + _chunk(events) + b"0\r\n\r\n"

    whole = _json(
        {"id": "cmpl-i", "object": "text_completion", "created": 0, "model": MODEL,
         "choices": [{"index": 0, "text": " x", "finish_reason": "length"}],
         "usage": {"prompt_tokens": 16, "completion_tokens": 1, "total_tokens": 17}}
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
    return {
        "stream": sse(token),
        "stream-chat": sse(chat_token),
        "whole": _response("200 OK", whole, extra=tag),
        "ok": _response("200 OK", b"", b"text/plain", tag),
        "metrics": _response("200 OK", metrics, b"text/plain; version=0.0.4", tag),
        "info": _response("200 OK", info, extra=tag),
        "models": _response("200 OK", models, extra=tag),
        "load": _response("200 OK", _json([{"dp_rank": 0, "num_reqs": 0, "num_waiting_reqs": 0}]), extra=tag),
        "404": _response("404 Not Found", b'{"detail":"Not Found"}', extra=tag),
    }


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


class _Instant(asyncio.Protocol):
    """One connection; the replies are those of the port it was accepted on."""

    def __init__(self, by_port: dict[int, dict[str, bytes]]) -> None:
        self.by_port = by_port
        self.replies: dict[str, bytes] = {}
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.replies = self.by_port[int(transport.get_extra_info("sockname")[1])]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while self._one():
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
        assert self.transport is not None
        self.transport.write(self.replies[self._pick(method, path, body)])
        return True

    def _pick(self, method: bytes, path: bytes, body: bytes) -> str:
        if method == b"POST" and path in (b"/v1/completions", b"/v1/chat/completions"):
            if b'"stream":true' in body.replace(b" ", b""):
                return "stream-chat" if b"chat" in path else "stream"
            return "whole"
        if method == b"GET" and path in _GET:
            return _GET[path]
        return "404"


async def serve(count: int, port_file: Path | None = None) -> list[asyncio.Server]:
    """Start `count` instant servers on free loopback ports (writes them to `port_file`)."""
    loop = asyncio.get_running_loop()
    by_port: dict[int, dict[str, bytes]] = {}
    servers: list[asyncio.Server] = []
    for _ in range(count):
        server = await loop.create_server(lambda: _Instant(by_port), "127.0.0.1", 0)
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
    p = argparse.ArgumentParser(prog="python -m epp.bench.instant", description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=4)
    p.add_argument("--port-file", required=True)
    args = p.parse_args(argv)

    async def run() -> None:
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        servers = await serve(args.count, Path(args.port_file))
        await stop.wait()
        for s in servers:
            s.close()

    asyncio.run(run())
    return 0


# ---- the client ------------------------------------------------------------------------------------


def completion_request(host_port: str, prompt: str = "hello", *, stream: bool = True) -> bytes:
    """A pre-built HTTP/1.1 `POST /v1/completions` asking for one token."""
    body = _json({"model": MODEL, "prompt": prompt, "max_tokens": 1, "stream": stream})
    return (
        b"POST /v1/completions HTTP/1.1\r\nhost: " + host_port.encode()
        + b"\r\ncontent-type: application/json\r\ncontent-length: " + str(len(body)).encode()
        + b"\r\n\r\n" + body
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Timing:
    status: int
    ttft_s: float | None
    total_s: float


class LeanClient:
    """Keep-alive HTTP/1.1 connections to one `host:port`; `request(raw)` returns its Timing."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._all: list[asyncio.StreamWriter] = []

    async def request(self, raw: bytes) -> Timing:
        if self._idle:
            reader, writer = self._idle.pop()
        else:
            reader, writer = await asyncio.open_connection(self.host, self.port)
            self._all.append(writer)
        start = time.perf_counter()
        writer.write(raw)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        lower = head.lower()
        ttft: float | None = None
        keep = b"connection: close" not in lower
        if b"transfer-encoding: chunked" in lower:
            while True:
                size = int((await reader.readline()).split(b";", 1)[0], 16)
                if size == 0:
                    await reader.readline()
                    break
                data = await reader.readexactly(size + 2)
                if ttft is None and (b'"text":"' in data or b'"content":"' in data):
                    ttft = time.perf_counter() - start
        else:
            length = 0
            for line in lower.split(b"\r\n"):
                if line.startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            ttft = time.perf_counter() - start if status == 200 else None
        total = time.perf_counter() - start
        if keep:
            self._idle.append((reader, writer))
        else:
            writer.close()
        return Timing(status, ttft, total)

    async def close(self) -> None:
        for writer in self._all:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        self._all.clear()
        self._idle.clear()


if __name__ == "__main__":
    sys.exit(main())
