"""Fixtures for the simulator tests: the root `start_sim` with this folder's default time scale, and an
HTTP client."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from epp.tools.sim.server import SimServer


@pytest.fixture
def start_sim(start_sim: Any) -> Any:
    """The one simulator fixture (`tests/conftest.py`), at `time_scale=0.05` unless told otherwise."""

    async def _start(**kw: Any) -> SimServer:
        kw.setdefault("time_scale", 0.05)
        server: SimServer = await start_sim(**kw)
        return server

    return _start


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session
