"""Fixtures for the load-generator tests: the root `start_sim` serving model `m` unless told otherwise."""

from __future__ import annotations

from typing import Any

import pytest

from epp.tools.sim import SimServer


@pytest.fixture
def start_sim(start_sim: Any) -> Any:
    """The one simulator fixture (`tests/conftest.py`), serving model `m` unless told otherwise."""

    async def _start(**kw: Any) -> SimServer:
        kw.setdefault("model", "m")
        server: SimServer = await start_sim(**kw)
        return server

    return _start
