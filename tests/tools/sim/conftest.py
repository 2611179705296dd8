"""Fixtures for the simulator tests: in-process simulators on 127.0.0.1 and an HTTP client."""

from __future__ import annotations

import aiohttp
import pytest

from epp.tools.sim.config import SimConfig
from epp.tools.sim.server import SimServer


@pytest.fixture
async def start_sim():
    servers: list[SimServer] = []

    async def _start(**kw) -> SimServer:
        kw.setdefault("time_scale", 0.05)
        server = SimServer(SimConfig(**kw))
        await server.start()
        servers.append(server)
        return server

    yield _start
    for server in servers:
        await server.stop()


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session
