"""The HTTP server on --metrics-port: Prometheus `/metrics`, optionally behind a bearer token.

Two ways to protect /metrics, both reading `Authorization: Bearer <token>`:

- `--metrics-bearer-token-file`: the token must equal the file's (compared in constant time). The file
  is re-read when it changes, so a rotated Secret takes effect. When given, it is the only check.
- an `authorizer` (upstream's default in Kubernetes mode, wired by `epp.app`): something that asks the
  cluster whether the token may read /metrics (`epp.k8s.metrics_auth`, a TokenReview and a
  SubjectAccessReview). Its answer maps to 200, 401 (not authenticated), 403 (not allowed) or 503 (the
  API server could not be asked).

With neither, /metrics is open.
"""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Literal, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = ["AuthDecision", "MetricsAuthorizer", "MetricsHttpServer"]

log = logging.getLogger(__name__)


AuthDecision = Literal["allowed", "unauthenticated", "forbidden", "unavailable"]
"""An authorizer's answer for a token: served, 401, 403, or 503 (the authority could not be asked)."""


class MetricsAuthorizer(Protocol):
    """Decides whether a bearer token may read /metrics."""

    async def review(self, token: str) -> AuthDecision: ...


_STATUS: dict[str, tuple[int, str]] = {
    "unauthenticated": (401, "unauthorized: the bearer token was not authenticated\n"),
    "forbidden": (403, "forbidden: the token's user may not get /metrics\n"),
    "unavailable": (503, "unavailable: the token could not be reviewed (API server unreachable)\n"),
}


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
        authorizer: MetricsAuthorizer | None = None,
    ) -> None:
        self.registry = registry
        self.host = host
        self.port = port
        self._token = _TokenFile(Path(token_file)) if token_file else None
        self._authorizer = None if self._token is not None else authorizer  # the file wins
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
        denied = await self._check(request)
        if denied is not None:
            return denied
        if self._gather is not None:
            await self._gather()
        if self._before_scrape is not None:
            self._before_scrape()
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _check(self, request: web.Request) -> web.Response | None:
        """None when the request may read /metrics, else the refusal."""
        if self._token is None and self._authorizer is None:
            return None
        header = request.headers.get("Authorization", "")
        scheme, _, rest = header.partition(" ")
        given = rest.strip()
        if scheme.lower() != "bearer" or not given:
            why = "no Authorization header" if not header else "malformed Authorization header"
            return _unauthorized(f"unauthorized: {why}; /metrics requires 'Authorization: Bearer <token>'\n")
        if self._token is not None:
            expected = self._token.token()
            if not expected or not hmac.compare_digest(given.encode(), expected):
                return _unauthorized("unauthorized: wrong bearer token\n")
            return None
        assert self._authorizer is not None
        decision = await self._authorizer.review(given)
        if decision == "allowed":
            return None
        status, text = _STATUS[decision]
        if status == 401:
            return _unauthorized(text)
        return web.Response(status=status, text=text)


def _unauthorized(text: str) -> web.Response:
    return web.Response(status=401, text=text, headers={"WWW-Authenticate": "Bearer"})
