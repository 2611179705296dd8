"""Leader failover under load: two replicas with `--ha-enable-leader-election` on a kmock Lease.

kmock stands in for the Kubernetes API server (no real one runs here; see `epp.tools.kmock`). Envoy
knows both replicas and checks their gRPC readiness every 0.5 s (the standby reports NOT_SERVING), as a
Service in front of two pods does through its readiness probe. Twice under load: the leader is stopped
gracefully (SIGTERM: it releases the Lease, as in a rolling update), then the new leader is SIGKILLed
(no release: the standby waits for the Lease to expire). Each time: how long until the standby is
ready, and what the client saw meanwhile.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from epp.tools.bench.reliability.rig import Row, Traffic, counts, now, until
from epp.tools.kmock import KmockThread
from epp.tools.loadgen.gateway import EppProcess
from epp.tools.proxy import EnvoyConfig, EnvoyProcess

__all__ = ["run_failover"]

LEASE_S = 15.0  # upstream's default --ha-lease-duration, kept


async def run_failover(
    endpoints: Sequence[str], config: Path, workdir: Path, say: Callable[[str], None]
) -> list[Row]:
    kmock = KmockThread().start()
    try:
        kubeconfig = kmock.kubeconfig(workdir / "kubeconfig")
        args = ["--ha-enable-leader-election", "--kubeconfig", str(kubeconfig)]
        a = EppProcess(endpoints, config_file=config, extra_args=args, log_path=workdir / "epp-a.log")
        # a standby never reports ready: started means live
        b = EppProcess(
            endpoints,
            config_file=config,
            extra_args=args,
            log_path=workdir / "epp-b.log",
            ready_service="liveness",
        )
        await a.start()
        await b.start()
        envoy = EnvoyProcess(
            EnvoyConfig(
                ext_proc_port=a.grpc_port,
                ext_proc_health_port=a.health_port,
                ext_proc_replicas=[("127.0.0.1", b.grpc_port, b.health_port)],
                route_timeout=30,
            ),
            workdir,
        )
        await envoy.start()
        rows: list[Row] = []
        try:
            async with Traffic(envoy.url, rate=20, seed=51) as traffic:
                await asyncio.sleep(3)
                for how, leader, standby in (("graceful (SIGTERM)", a, b), ("crash (SIGKILL)", b, a)):
                    gone = now()
                    stopping = asyncio.create_task(
                        leader.crash() if how.startswith("crash") else leader.stop()
                    )
                    took = await until(standby.is_ready, timeout=LEASE_S * 2, interval=0.05)
                    ready = now() if took is None else gone + took
                    await stopping
                    await asyncio.sleep(2)
                    rows += _rows(how, traffic, gone, ready, took)
                    if how.startswith("graceful"):
                        leader.ready_service = "liveness"  # back as the standby
                        await leader.restart(timeout=30)
                        await asyncio.sleep(3)
        finally:
            await envoy.stop()
            await asyncio.gather(a.stop(), b.stop())
    finally:
        kmock.stop()
    return rows


def _rows(how: str, traffic: Traffic, gone: float, ready: float, took: float | None) -> list[Row]:
    during = traffic.between(gone, ready)
    settled = [t for t in traffic.results if t.start >= ready + 1.0 and t.start < ready + 2.0]
    refused = [t for t in during if not t.result.ok]
    statuses = Counter(str(t.result.status or "reset") for t in refused)
    name = f"failover {how}"
    return [
        Row(
            name,
            "leader gone → standby ready",
            "never" if took is None else f"{took:.2f} s",
            f"≤ lease duration ({LEASE_S:g} s)",
            took is not None and took <= LEASE_S,
        ),
        Row(
            name,
            "requests meanwhile: ok / refused (statuses)",
            f"{len(during) - len(refused)} / {len(refused)} ({counts(statuses)})",
        ),
        Row(
            name,
            "failed requests 1-2 s after the new leader is ready",
            str(sum(1 for t in settled if not t.result.ok)),
            "0",
            all(t.result.ok for t in settled),
        ),
    ]
