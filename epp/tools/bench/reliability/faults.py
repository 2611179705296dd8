"""Faults under load: a model server SIGKILLed mid-stream, and the EPP SIGKILLed behind FailOpen/FailClose.

**Model server killed**: three simulators with long streams, one killed while it serves several. What
fails must be its open streams only; requests the EPP sent it before it noticed are counted with the
time it took to notice (the last request routed to the dead server); after the server comes back on
its port, the time until it serves again.

**EPP killed**: Envoy in front of the EPP process, once with `failure_mode_allow: false` (FailClose: the
client gets an error while the EPP is away) and once with true (FailOpen: Envoy forwards to the pool's
endpoints round robin). The client's statuses are counted per phase, and after the restart the time
from the new process being ready to the first request it routes (its request counter moving). The EPP
is killed with its worker processes, as a container crash does.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

from epp.tools.bench.reliability.rig import Row, Traffic, counts, metric_value, metric_values, now, until
from epp.tools.loadgen.fleet import SimFleet
from epp.tools.loadgen.gateway import EppProcess, Gateway

__all__ = ["run_epp_kill", "run_server_kill"]

REQUESTS_METRIC = "inference_objective_request_total"


async def run_server_kill(
    fleet: SimFleet, gateway: Gateway, scrape_interval_s: float, say: Callable[[str], None]
) -> list[Row]:
    victim_name = fleet.members[0].name
    async with Traffic(gateway.url, rate=20, max_tokens=200, seed=31) as traffic:
        await asyncio.sleep(4)
        killed = now()
        await fleet.crash(0)
        await asyncio.sleep(3)
        restarted_at = now()
        await fleet.restart(0)
        back = now()
        # a result lands when its stream ends: wait for one, then take the first to start
        await until(
            lambda: any(t.result.backend == victim_name and t.start >= back for t in traffic.results),
            timeout=10,
        )
        await asyncio.sleep(1)
    results = traffic.results
    open_on_victim = [t for t in results if t.result.backend == victim_name and t.start < killed < t.end]
    open_failed = sum(1 for t in open_on_victim if not t.result.ok)
    others_failed = [t for t in results if not t.result.ok and t not in open_on_victim]
    after_kill = [t for t in others_failed if killed <= t.start < restarted_at]
    stray = [t for t in others_failed if not killed <= t.start < restarted_at]
    noticed_ms = max(((t.start - killed) * 1000 for t in after_kill), default=0.0)
    starts = [t.start - back for t in results if t.result.backend == victim_name and t.start >= back]
    served_again = min(starts) if starts else None
    kinds = Counter((t.result.error or "")[:40] for t in others_failed)
    for kind, n in kinds.items():
        say(f"  server-kill: {n} x {kind}")
    return [
        Row(
            "server-kill",
            "streams open on the killed server / failed",
            f"{len(open_on_victim)} / {open_failed}",
        ),
        Row(
            "server-kill",
            "other requests failed before the kill or after it was noticed",
            str(len(stray)),
            "0",
            not stray,
        ),
        Row(
            "server-kill",
            "requests sent to the dead server before the EPP noticed",
            f"{len(after_kill)} (last {noticed_ms:.0f} ms after the kill)",
            f"within one scrape interval ({scrape_interval_s * 1000:.0f} ms) + one request",
            noticed_ms <= scrape_interval_s * 1000 + 100,
        ),
        Row(
            "server-kill",
            "back on its port → first request sent to it",
            "never"
            if served_again is None
            else f"{served_again * 1000:.0f} ms (the restart took {(back - restarted_at) * 1000:.0f} ms)",
            "≤ 2 s",
            served_again is not None and served_again <= 2.0,
        ),
    ]


async def _routed_by(epp: EppProcess) -> bool:
    try:
        samples = await metric_values(epp.metrics_url)
    except OSError:
        return False
    return metric_value(samples, REQUESTS_METRIC) > 0


async def run_epp_kill(gateway: Gateway, say: Callable[[str], None]) -> list[Row]:
    """`gateway` not started yet; its `failure_mode_allow` says which mode runs."""
    fail_open = gateway.failure_mode_allow
    mode = "FailOpen" if fail_open else "FailClose"
    async with gateway:
        epp = gateway.epp
        assert isinstance(epp, EppProcess)
        async with Traffic(gateway.url, rate=30, seed=41 + fail_open) as traffic:
            await asyncio.sleep(3)
            crashed = now()
            await epp.crash()
            await asyncio.sleep(2)
            spawn = now()
            await epp.restart()
            ready = now()
            routed = await until(lambda: _routed_by(epp), timeout=10, interval=0.01)
            await asyncio.sleep(2)
    results = traffic.results
    before = [t for t in results if t.start < crashed]
    away = [t for t in results if crashed <= t.start < ready]
    after = [t for t in results if t.start >= ready + (routed or 0)]
    statuses = Counter(str(t.result.status) if t.result.ok else f"{t.result.status or 'reset'}" for t in away)
    say(f"  epp-kill {mode}: while away {dict(statuses)}")
    away_ok = sum(1 for t in away if t.result.ok)
    bad_before = sum(1 for t in before if not t.result.ok and t.end < crashed)
    bad_after = sum(1 for t in after if not t.result.ok)
    restart_ms = (ready - spawn) * 1000
    rows = [
        Row(
            f"epp-kill {mode}",
            "while the EPP was away: requests ok / failed (statuses)",
            f"{away_ok} / {len(away) - away_ok} ({counts(statuses)})",
        ),
        Row(f"epp-kill {mode}", "restart: process start → ready", f"{restart_ms:.0f} ms"),
        Row(
            f"epp-kill {mode}",
            "ready → first request routed by the new EPP",
            "never" if routed is None else f"{routed * 1000:.0f} ms",
            "≤ 2 s",
            routed is not None and routed <= 2,
        ),
        Row(
            f"epp-kill {mode}",
            "failures before the kill / after routing resumed",
            f"{bad_before} / {bad_after}",
            "0 / 0",
            bad_before == 0 and bad_after == 0,
        ),
    ]
    if fail_open:
        rows.insert(
            1,
            Row(
                f"epp-kill {mode}",
                "FailOpen served the requests while away",
                f"{away_ok}/{len(away)}",
                "all",
                away_ok == len(away),
            ),
        )
    return rows
