"""The shared test helpers themselves: poll-until (async and sync), free ports, the simulator fixture."""

from __future__ import annotations

import socket

import aiohttp
import pytest

from tests.helpers import free_port, free_ports, until, until_sync


async def test_until_returns_once_a_sync_or_async_predicate_holds() -> None:
    calls = []

    def sync() -> bool:
        calls.append(1)
        return len(calls) >= 3

    assert await until(sync, interval=0.001) >= 0.0
    assert len(calls) == 3

    async def async_pred() -> int:
        calls.append(1)
        return len(calls) >= 5

    await until(async_pred, interval=0.001)
    assert len(calls) == 5


async def test_until_times_out_naming_the_condition_and_the_last_value() -> None:
    with pytest.raises(AssertionError, match=r"^timed out after 0.05s waiting for lambda: 0 \(last: 0\)$"):
        await until(lambda: 0, timeout=0.05)
    with pytest.raises(AssertionError, match=r"waiting for the answer \(last: None\)"):
        await until(lambda: None, timeout=0.01, what="the answer")


def test_until_sync() -> None:
    calls = []
    until_sync(lambda: calls.append(1) or len(calls) == 2, interval=0.001)
    assert len(calls) == 2
    with pytest.raises(AssertionError, match="waiting for nothing"):
        until_sync(lambda: False, timeout=0.01, what="nothing")


def test_free_ports_are_distinct_and_refuse_connections() -> None:
    ports = free_ports(3)
    assert len(set(ports)) == 3
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", free_port()), 1):
        pass


async def test_start_sim_serves_until_the_test_ends(start_sim) -> None:
    sim = await start_sim(model="m", time_scale=0.01)
    async with aiohttp.ClientSession() as http, http.get(f"{sim.url}/v1/models") as resp:
        assert resp.status == 200
        assert (await resp.json())["data"][0]["id"] == "m"
