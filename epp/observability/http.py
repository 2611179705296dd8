"""The HTTP server on --metrics-port: Prometheus `/metrics`, optionally behind a bearer token.

Upstream protects /metrics with a Kubernetes TokenReview; clusters without that setup can instead set
`--metrics-bearer-token-file`: requests must then carry `Authorization: Bearer <token>` (compared in
constant time). The token file is re-read when it changes, so a rotated Secret takes effect.
"""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = ["MetricsHttpServer"]

log = logging.getLogger(__name__)


class _TokenFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._mtime = -1.0
        self._token = b""

    def token(self) -> bytes:
        try:
            mtime = os.stat(self.path).st_mtime
        except OSError:
            log.error("metrics bearer token file %s is unreadable: /metrics answers 401", self.path)
            return b""
        if mtime != self._mtime:
            self._token = self.path.read_bytes().strip()
            self._mtime = mtime
        return self._token


class MetricsHttpServer:
    """Serves `/metrics` from a registry; `gather` (awaited, e.g. the workers' metrics) and
    `before_scrape` (e.g. to refresh gauges) run first."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        host: str = "0.0.0.0",
        port: int = 9090,
        token_file: str | None = None,
        before_scrape: Callable[[], None] | None = None,
        gather: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.registry = registry
        self.host = host
        self.port = port
        self._token = _TokenFile(Path(token_file)) if token_file else None
        self._before_scrape = before_scrape
        self._gather = gather
        self._runner: web.AppRunner | None = None

    async def start(self) -> int:
        """Start serving; returns the bound port (useful with port 0)."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        addresses = self._runner.addresses
        if addresses:
            self.port = int(addresses[0][1])
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _metrics(self, request: web.Request) -> web.Response:
        if self._token is not None:
            expected = self._token.token()
            header = request.headers.get("Authorization", "")
            given = header[7:].strip().encode() if header.lower().startswith("bearer ") else b""
            if not expected or not hmac.compare_digest(given, expected):
                return web.Response(
                    status=401,
                    text="unauthorized: /metrics requires 'Authorization: Bearer <token>'\n",
                    headers={"WWW-Authenticate": "Bearer"},
                )
        if self._gather is not None:
            await self._gather()
        if self._before_scrape is not None:
            self._before_scrape()
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
