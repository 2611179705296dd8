"""Fixtures for the load-generator tests: in-process simulators on 127.0.0.1."""

from __future__ import annotations

import pytest

from epp.tools.sim import SimConfig, SimServer


@pytest.fixture
async def start_sim():
    servers: list[SimServer] = []

    async def _start(**kw) -> SimServer:
        kw.setdefault("model", "m")
        server = SimServer(SimConfig(**kw))
        await server.start()
        servers.append(server)
        return server

    yield _start
    for server in servers:
        await server.stop()
