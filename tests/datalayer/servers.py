"""Real HTTP model-server stand-ins on 127.0.0.1 that serve a metrics page the test controls."""

from __future__ import annotations

import asyncio
import ssl
import time

from aiohttp import web


class MetricsServer:
    """An aiohttp server whose `/metrics` page, status code and behaviour can change at any time.

    `hang=True` makes requests wait (far beyond any scrape timeout) until released; `delay` slows every
    response down.
    """

    def __init__(self, page: str = "", *, path: str = "/metrics") -> None:
        self.page = page
        self.status = 200
        self.delay = 0.0
        self.hang = False
        self.path = path
        self.requests = 0
        self.request_times: list[float] = []
        self.peers: set[tuple[str, int]] = set()
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        self.request_times.append(time.monotonic())
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if peer:
            self.peers.add((str(peer[0]), int(peer[1])))
        if self.hang:
            await self._release.wait()
        if self.delay:
            await asyncio.sleep(self.delay)
        return web.Response(text=self.page, status=self.status, content_type="text/plain")

    def release(self) -> None:
        self.hang = False
        self._release.set()
        self._release = asyncio.Event()

    async def start(self, port: int = 0, *, ssl_context: ssl.SSLContext | None = None) -> MetricsServer:
        app = web.Application()
        app.router.add_get(self.path, self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port, ssl_context=ssl_context)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
