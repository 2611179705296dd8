"""The gateway under test: the EPP daemon in-process on free ports, and Envoy in front of it.

`EppServer` builds the real daemon (`epp.app.App`) from the same flags a user would pass, with
`--static-endpoints`, loopback binding and free ports, and waits until its readiness turns SERVING
(endpoints synced and scraped once). `Gateway` adds a real Envoy (`epp.proxy`) whose ext_proc filter
talks to that EPP, TLS without verification by default (the daemon's default, upstream's setup).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path

from epp.app import App
from epp.proxy import EnvoyConfig, EnvoyProcess
from epp.settings import parse_settings

__all__ = ["EppServer", "Gateway"]

log = logging.getLogger(__name__)


class EppServer:
    """One in-process EPP. `url`-less: Envoy reaches it on `127.0.0.1:grpc_port`."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        config_file: str | Path | None = None,
        config_text: str | None = None,
        secure_serving: bool = True,
        extra_args: Sequence[str] = (),
    ) -> None:
        args = [
            "--static-endpoints",
            ",".join(endpoints),
            "--bind-address",
            "127.0.0.1",
            f"--secure-serving={'true' if secure_serving else 'false'}",
            "--watch-config-file=false",
        ]
        if config_file is not None:
            args += ["--config-file", str(config_file)]
        if config_text is not None:
            args += ["--config-text", config_text]
        settings = parse_settings([*args, *extra_args], environ={})
        # The flags reject port 0; free ports are what a fleet of test gateways needs.
        self.settings = settings.model_copy(update={"grpc_port": 0, "grpc_health_port": 0, "metrics_port": 0})
        self.secure_serving = secure_serving
        self.app: App | None = None

    @property
    def grpc_port(self) -> int:
        return self.app.grpc_port if self.app is not None else 0

    @property
    def metrics_url(self) -> str:
        port = self.app.metrics_port if self.app is not None else 0
        return f"http://127.0.0.1:{port}/metrics"

    async def start(self, timeout: float = 20.0) -> EppServer:
        """Start the daemon and wait until it is ready; raises TimeoutError (after stopping it) if not."""
        app = self.app = App(self.settings)
        try:
            await app.start()
            async with asyncio.timeout(timeout):
                while not app.readiness.ready:
                    if app.stopping.is_set():
                        raise RuntimeError("the EPP stopped during start-up (see its log)")
                    waiter = asyncio.create_task(app.readiness.wait_changed())
                    stopping = asyncio.create_task(app.stopping.wait())
                    try:
                        await asyncio.wait({waiter, stopping}, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        waiter.cancel()
                        stopping.cancel()
        except BaseException:
            await self.stop()
            raise
        return self

    async def stop(self) -> None:
        app, self.app = self.app, None
        if app is not None:
            await app.stop()

    async def __aenter__(self) -> EppServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class Gateway:
    """EPP + Envoy: requests to `url` are scheduled by the EPP and served by the picked endpoint."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        config_file: str | Path | None = None,
        config_text: str | None = None,
        secure_serving: bool = True,
        workdir: str | Path | None = None,
        extra_args: Sequence[str] = (),
        route_timeout: float = 60.0,
    ) -> None:
        self.epp = EppServer(
            endpoints,
            config_file=config_file,
            config_text=config_text,
            secure_serving=secure_serving,
            extra_args=extra_args,
        )
        self.workdir = workdir
        self.route_timeout = route_timeout
        self.envoy: EnvoyProcess | None = None

    @property
    def url(self) -> str:
        if self.envoy is None:
            raise RuntimeError("the gateway is not started")
        return self.envoy.url

    @property
    def pids(self) -> list[int]:
        """Child processes this gateway started (Envoy)."""
        proc = self.envoy.proc if self.envoy is not None else None
        return [proc.pid] if proc is not None else []

    async def start(self) -> Gateway:
        try:
            await self.epp.start()
            config = EnvoyConfig(
                ext_proc_port=self.epp.grpc_port,
                ext_proc_tls=self.epp.secure_serving,
                route_timeout=self.route_timeout,
            )
            self.envoy = EnvoyProcess(config, self.workdir)
            await self.envoy.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def stop(self) -> None:
        envoy, self.envoy = self.envoy, None
        try:
            if envoy is not None:
                await envoy.stop()
        finally:
            await self.epp.stop()

    async def __aenter__(self) -> Gateway:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
