"""Slow clients: connections held open on the metrics and health ports without finishing a request.

128 connections per port (half silent, half stopped in the middle of a request) stay open while another
client scrapes `/metrics` and checks gRPC readiness 20 times each; the latencies are compared with the
same checks before the connections were opened.
"""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from epp.tools.bench.reliability.rig import Row, now
from epp.tools.loadgen.gateway import EppProcess

__all__ = ["run_slow_clients"]

HELD = 128


async def _latencies(epp: EppProcess, rounds: int = 20) -> tuple[list[float], list[float], int]:
    scrape, health, failed = [], [], 0
    async with (
        aiohttp.ClientSession(trust_env=False, timeout=aiohttp.ClientTimeout(total=5)) as http,
        grpc.aio.insecure_channel(f"127.0.0.1:{epp.health_port}") as channel,
    ):
        stub = health_pb2_grpc.HealthStub(channel)
        for _ in range(rounds):
            t = now()
            try:
                async with http.get(epp.metrics_url) as resp:
                    await resp.read()
                    failed += resp.status != 200
            except (aiohttp.ClientError, TimeoutError):
                failed += 1
            scrape.append(now() - t)
            t = now()
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(service="readiness"), timeout=5)
                failed += reply.status != health_pb2.HealthCheckResponse.SERVING
            except grpc.aio.AioRpcError:
                failed += 1
            health.append(now() - t)
    return scrape, health, failed


async def run_slow_clients(epp: EppProcess) -> list[Row]:
    base_scrape, base_health, _ = await _latencies(epp)
    held: list[asyncio.StreamWriter] = []
    try:
        for i in range(HELD):
            for port, partial in ((epp.metrics_port, b"GET /metr"), (epp.health_port, b"PRI * HTTP/2.0\r\n")):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                if i % 2:
                    writer.write(partial)
                    await writer.drain()
                held.append(writer)
        scrape, health, failed = await _latencies(epp)
    finally:
        for writer in held:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
    worst = max(max(scrape), max(health))
    return [
        Row("slow clients", "connections held open (metrics + health)", f"{HELD} + {HELD}"),
        Row(
            "slow clients",
            "/metrics scrape max: before / while held",
            f"{max(base_scrape) * 1000:.1f} / {max(scrape) * 1000:.1f} ms",
        ),
        Row(
            "slow clients",
            "readiness check max: before / while held",
            f"{max(base_health) * 1000:.1f} / {max(health) * 1000:.1f} ms",
        ),
        Row(
            "slow clients",
            "failed checks while held, worst latency",
            f"{failed}, {worst * 1000:.0f} ms",
            "0, < 1 s",
            failed == 0 and worst < 1.0,
        ),
    ]
