"""Echo model servers for end-to-end tests: they say which backend served and what they received.

Non-streaming responses carry an `echo` object (backend port, received model, body length and sha256,
received Content-Length and Transfer-Encoding, received headers) besides OpenAI-shaped fields and usage.
Streaming responses are SSE chunks carrying the model name, then a usage event and `[DONE]`; a request
with `"slow": true` streams one chunk and then waits until the test releases it (or the client goes).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class EchoBackend:
    port: int = 0
    runner: web.AppRunner | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> EchoBackend:
        app = web.Application(client_max_size=64 << 20)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/{tail:.*}", self._inference)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "m"}], "backend": self.port})

    async def _inference(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        echo = {
            "backend": self.port,
            "path": request.path,
            "received_len": len(raw),
            "received_sha256": hashlib.sha256(raw).hexdigest(),
            "content_length": request.headers.get("content-length"),
            "transfer_encoding": request.headers.get("transfer-encoding"),
            "headers": {k.lower(): v for k, v in request.headers.items()},
        }
        try:
            body = json.loads(raw)
        except ValueError:
            return web.json_response({"error": "backend got invalid JSON", "echo": echo}, status=400)
        echo["model"] = body.get("model")
        self.requests.append(echo)
        model = body.get("model")
        headers = {"x-backend": str(self.port)}
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": "cmpl-1",
                    "object": "text_completion",
                    "model": model,
                    "choices": [{"index": 0, "text": "ok"}],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7,
                              "prompt_tokens_details": {"cached_tokens": 3}},
                    "echo": echo,
                },
                headers=headers,
            )  # fmt: skip
        resp = web.StreamResponse(headers={**headers, "content-type": "text/event-stream"})
        await resp.prepare(request)
        try:
            for i in range(3):
                chunk = {
                    "object": "chat.completion.chunk",
                    "model": model,
                    "choices": [{"delta": {"content": f"t{i}"}}],
                }
                await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                if body.get("slow") and i == 0:
                    await self.release.wait()
            usage = {"object": "chat.completion.chunk", "model": model, "choices": [],
                     "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}}  # fmt: skip
            data = b"data: " + json.dumps(usage).encode() + b"\n\n"
            half = len(data) // 2  # the usage event split across two writes
            await resp.write(data[:half])
            await resp.write(data[half:])
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            self.disconnected.set()
            raise
        return resp
