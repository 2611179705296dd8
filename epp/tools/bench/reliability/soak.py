"""Soak: minutes of streamed load at half the rig's capacity; RSS, fds, tasks and TTFT per interval.

The capacity is measured first on the same gateway: a closed loop with 64 requests in flight for
`calibrate_s` seconds, the same request shape. On two shared cores that number is the whole rig's
(client, Envoy, simulators and the EPP together), which is lower than the daemon's own, so half of it
loads the daemon less than half: the report says both.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass

from epp.tools.bench.reliability.rig import (
    MODEL,
    Row,
    Traffic,
    metric_value,
    metric_values,
    now,
    open_fds,
    rss_bytes,
    tree_pids,
    ttft_ms,
)
from epp.tools.loadgen.client import LoadClient
from epp.tools.loadgen.gateway import Gateway
from epp.tools.loadgen.text import synthetic_text
from epp.tools.loadgen.workloads import Session, Turn

__all__ = ["Sample", "calibrate", "run_soak"]


@dataclass
class Sample:
    minute: int
    rss_mb: float
    fds: int
    tasks: int
    requests: int
    failed: int
    ttft_p50_ms: float | None
    ttft_p99_ms: float | None


async def calibrate(url: str, seconds: float, in_flight: int = 64) -> float:
    """Requests per second with `in_flight` streamed requests always outstanding."""
    rng = random.Random(7)
    text = synthetic_text(rng, 96)
    done = 0
    deadline = now() + seconds

    async def worker(client: LoadClient, w: int) -> None:
        nonlocal done
        i = 0
        while now() < deadline:
            session = Session(id=f"cal-{w}-{i}", group="cal", turns=(Turn(text=text, max_tokens=16),))
            result, _ = await client.send(session, 0)
            done += result.ok
            i += 1

    async with LoadClient(url, model=MODEL, timeout_s=30) as client:
        start = now()
        await asyncio.gather(*(worker(client, w) for w in range(in_flight)))
        return done / (now() - start)


async def _sample(
    gateway: Gateway, pid: int, traffic: Traffic, minute: int, start: float, end: float
) -> Sample:
    pids = tree_pids(pid)
    samples = await metric_values(gateway.epp.metrics_url)
    tasks = metric_value(samples, "epp_asyncio_tasks") + metric_value(samples, "epp_worker_asyncio_tasks")
    timed = traffic.between(start, end)
    return Sample(
        minute=minute,
        rss_mb=rss_bytes(pids) / 2**20,
        fds=open_fds(pids),
        tasks=int(tasks),
        requests=len(timed),
        failed=sum(1 for t in timed if not t.result.ok),
        ttft_p50_ms=ttft_ms(timed, 50),
        ttft_p99_ms=ttft_ms(timed, 99),
    )


async def run_soak(
    gateway: Gateway, minutes: float, interval_s: float, calibrate_s: float, say: Callable[[str], None]
) -> tuple[list[Row], list[Sample], dict[str, float]]:
    pid = gateway.epp_pid
    if pid is None:
        raise RuntimeError("the soak needs the EPP as its own process")
    capacity = await calibrate(gateway.url, calibrate_s)
    rate = capacity / 2
    say(f"soak: rig capacity {capacity:.0f} req/s, soaking at {rate:.0f} req/s for {minutes:g} min")
    samples: list[Sample] = []
    async with Traffic(gateway.url, rate, seed=11) as traffic:
        begin = now()
        intervals = max(1, round(minutes * 60 / interval_s))
        for i in range(intervals):
            start = begin + i * interval_s
            await asyncio.sleep(max(0.0, start + interval_s - now()))
            samples.append(await _sample(gateway, pid, traffic, i + 1, start, start + interval_s))
            s = samples[-1]
            say(
                f"  minute {s.minute}: rss {s.rss_mb:.1f} MB, fds {s.fds}, tasks {s.tasks}, "
                f"{s.requests} requests, {s.failed} failed, TTFT p50 {s.ttft_p50_ms or 0:.1f} ms"
            )
    failed = sum(1 for t in traffic.results if not t.result.ok)
    first, rest = samples[0], samples[1:] or samples
    growth = (max(s.rss_mb for s in rest) - first.rss_mb) / first.rss_mb
    fds_drift = max(s.fds for s in rest) - min(s.fds for s in rest)
    tasks_drift = max(s.tasks for s in rest) - min(s.tasks for s in rest)
    rows = [
        Row(
            "soak",
            "rig capacity (closed loop, 64 in flight) / soak rate",
            f"{capacity:.0f} / {rate:.0f} req/s",
        ),
        Row("soak", "duration, requests", f"{minutes:g} min, {len(traffic.results)}"),
        Row(
            "soak",
            "RSS growth after the first minute (max vs minute 1)",
            f"{growth * 100:+.1f} %",
            "≤ 10 %",
            growth <= 0.10,
        ),
        Row(
            "soak",
            "open fds after minute 1 (min..max)",
            f"{min(s.fds for s in rest)}..{max(s.fds for s in rest)}",
            "flat (±4)",
            fds_drift <= 4,
        ),
        Row(
            "soak",
            "asyncio tasks after minute 1 (min..max)",
            f"{min(s.tasks for s in rest)}..{max(s.tasks for s in rest)}",
            "no climb",
            tasks_drift <= rate,
        ),
        Row("soak", "failed requests", str(failed), "0", failed == 0),
    ]
    figures = {"capacity_rps": capacity, "rate_rps": rate, "rss_growth": growth, "failed": failed}
    return rows, samples, figures
