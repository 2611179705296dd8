"""Fixtures shared by every test folder (a folder's own conftest keeps only what is specific to it).

Helpers that are not fixtures (`until`, `until_sync`, `free_port`, `free_ports`) are in `tests/helpers.py`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from epp.tools.sim.config import SimConfig
    from epp.tools.sim.server import SimServer

StartSim = Callable[..., Awaitable["SimServer"]]


@pytest.fixture
async def start_sim() -> AsyncIterator[StartSim]:
    """Start an in-process simulated model server (`epp.tools.sim`) on a free 127.0.0.1 port.

    `await start_sim(SimConfig(...))` or `await start_sim(model="m", time_scale=0.01, ...)` (the
    keywords of `SimConfig`); it returns the started `SimServer` (`.address`, `.url`, `.port`). Every
    server started is stopped when the test ends, after the fixtures that use them.
    """
    from epp.tools.sim.config import SimConfig
    from epp.tools.sim.server import SimServer

    servers: list[SimServer] = []

    async def _start(config: SimConfig | None = None, /, **kw: Any) -> SimServer:
        if config is not None and kw:
            raise TypeError("start_sim takes a SimConfig or SimConfig's keywords, not both")
        server = SimServer(config if config is not None else SimConfig(**kw))
        await server.start()
        servers.append(server)
        return server

    try:
        yield _start
    finally:
        for server in servers:
            await server.stop()
