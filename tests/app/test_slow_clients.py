"""Slow clients do not stall the daemon's side ports: connections held open on the metrics and health
ports without sending a request (or with half a request) leave them answering everybody else."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import aiohttp
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from epp.tools.loadgen.gateway import EppProcess

HELD = 64  # connections per port that never finish a request


async def _hold(port: int, first_bytes: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if first_bytes:
        writer.write(first_bytes)
        await writer.drain()
    return reader, writer


async def test_held_connections_do_not_stall_metrics_or_health(start_sim, tmp_path: Path) -> None:
    sim = await start_sim(model="m", time_scale=0.05)
    epp = EppProcess([sim.address], secure_serving=False, log_path=tmp_path / "epp.log")
    await epp.start()
    held: list[asyncio.StreamWriter] = []
    try:
        for i in range(HELD):  # silent ones, and ones that stop in the middle of their request
            for port, partial in ((epp.metrics_port, b"GET /metr"), (epp.health_port, b"PRI * HTTP/2.0\r\n")):
                _, writer = await _hold(port, partial if i % 2 else b"")
                held.append(writer)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            for _ in range(3):
                async with http.get(epp.metrics_url) as resp:
                    assert resp.status == 200
                    assert "inference_pool_ready_pods" in await resp.text()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{epp.health_port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = await stub.Check(health_pb2.HealthCheckRequest(service="readiness"), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        for writer in held:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
        await epp.stop()
    assert "Traceback" not in epp.log_text()
