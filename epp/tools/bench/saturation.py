"""Find the rate at which the best of some routers saturates (`epp bench quality`'s sweep anchor).

A router is *saturated* at a rate when more than 1 % of its requests fail or do not finish, or when
its p90 TTFT exceeds `factor` x its p90 TTFT at light load (`light` x the starting rate): queues then
grow faster than they drain. For the first router the search steps the rate up (x `step`) from `start`
until it saturates, then bisects (geometric mean) until the bracket is within `precision`; the result
is the highest rate seen unsaturated. Each further router is first probed where the best one so far
saturated: if it saturates there too it cannot be better, and its search stops at once; otherwise its
search goes on upwards. At most `max_probes` probes per router (plus its light-load probe).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["Probe", "ProbeOutcome", "ProbePoint", "SaturationSearch", "is_saturated", "search_saturation"]


class ProbeOutcome(Protocol):
    @property
    def ttft_p90_ms(self) -> float | None: ...

    @property
    def failed(self) -> int: ...

    @property
    def requests(self) -> int: ...


Probe = Callable[[float], Awaitable[Any]]  # returns a ProbeOutcome (a RunRecord)


@dataclass(frozen=True, slots=True)
class ProbePoint:
    router: str
    rate: float
    ttft_p90_ms: float | None
    failed: int
    requests: int
    saturated: bool
    light: bool = False


@dataclass(slots=True)
class SaturationSearch:
    """The outcome: `rate` (requests/s), set by router `best`; `per_router` = each one's lower bound."""

    workload: str
    rate: float
    best: str
    factor: float = 0.0
    per_router: dict[str, float] = field(default_factory=dict)
    points: list[ProbePoint] = field(default_factory=list)
    records: list[Any] = field(default_factory=list)
    fleet: str = ""  # the fleet it was measured on (`epp bench quality --fleet/--gpus`; "" = not said)

    @classmethod
    def given(cls, workload: str, rate: float) -> SaturationSearch:
        return cls(workload=workload, rate=rate, best="given")

    def describe(self) -> str:
        if self.best == "given":
            return "given"
        others = ", ".join(f"{k} >= {v:g}/s" for k, v in self.per_router.items() if k != self.best)
        return f"set by {self.best} after {len(self.points)} probes" + (f"; {others}" if others else "")

    @classmethod
    def from_json(cls, workload: str, doc: dict[str, Any]) -> SaturationSearch:
        """The inverse of `to_json` (without the probes' run records)."""
        points = [ProbePoint(**p) for p in doc.get("points", [])]
        return cls(
            workload=workload,
            rate=float(doc["rate"]),
            best=str(doc.get("best", "given")),
            factor=float(doc.get("factor", 0.0)),
            per_router={k: float(v) for k, v in doc.get("per_router", {}).items()},
            points=points,
            fleet=str(doc.get("fleet", "")),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "rate": self.rate,
            "best": self.best,
            "factor": self.factor,
            "per_router": self.per_router,
            "fleet": self.fleet,
            "points": [
                {
                    "router": p.router,
                    "rate": p.rate,
                    "ttft_p90_ms": p.ttft_p90_ms,
                    "failed": p.failed,
                    "requests": p.requests,
                    "saturated": p.saturated,
                    "light": p.light,
                }
                for p in self.points
            ],
        }


def is_saturated(outcome: ProbeOutcome, reference_ms: float | None, factor: float) -> bool:
    """More than 1 % failed/unfinished, no TTFT at all, or p90 TTFT above `factor` x the reference."""
    if outcome.failed > 0.01 * max(outcome.requests, 1):
        return True
    p90 = outcome.ttft_p90_ms
    if p90 is None:
        return True
    return reference_ms is not None and p90 > factor * reference_ms


async def search_saturation(
    workload: str,
    routers: Sequence[tuple[str, Probe]],
    *,
    start: float,
    factor: float = 3.0,
    light: float = 0.3,
    step: float = 1.6,
    precision: float = 1.2,
    max_probes: int = 6,
    say: Callable[[str], None] | None = None,
) -> SaturationSearch:
    """Search each router in turn (see the module docstring); returns the best router's rate."""
    if not routers:
        raise ValueError("no router to search with")
    if start <= 0 or factor <= 1 or step <= 1 or precision <= 1:
        raise ValueError("start must be > 0; factor, step and precision must be > 1")
    out = SaturationSearch(workload=workload, rate=0.0, best="", factor=factor)
    best_hi: float | None = None  # the lowest rate known to saturate the best router so far

    async def measure(name: str, probe: Probe, rate: float, reference: float | None, is_light: bool) -> bool:
        record = await probe(round(rate, 2))
        out.records.append(record)
        sat = is_saturated(record, reference, factor)
        out.points.append(
            ProbePoint(
                name, round(rate, 2), record.ttft_p90_ms, record.failed, record.requests, sat, is_light
            )
        )
        if say is not None:
            p90 = "-" if record.ttft_p90_ms is None else f"{record.ttft_p90_ms:.0f} ms"
            state = "light load" if is_light else ("saturated" if sat else "ok")
            say(f"  search {workload} {name} {rate:.2f}/s: p90 TTFT {p90}, failed {record.failed} ({state})")
        return sat

    for name, probe in routers:
        light_rate = start * light
        hi: float | None = None
        lo: float | None = None
        for _ in range(3):  # a light load that already saturates: lighter, until one does not
            ref_index = len(out.records)
            if not await measure(name, probe, light_rate, None, True):
                lo = light_rate
                break
            hi = light_rate
            light_rate /= step * step
        reference = out.records[ref_index].ttft_p90_ms
        rate = best_hi if best_hi is not None else start
        if hi is not None:
            rate = min(rate, hi / step)
        for _ in range(max_probes):
            if hi is not None and lo is not None and hi / lo <= precision:
                break
            if await measure(name, probe, rate, reference, False):
                hi = rate if hi is None else min(hi, rate)
            else:
                lo = rate if lo is None else max(lo, rate)
            if best_hi is not None and hi is not None and hi <= best_hi:
                break  # saturates where the best did: it cannot be the best
            if hi is None:
                rate *= step
            elif lo is None:
                rate = hi / step
            else:
                rate = math.sqrt(lo * hi)
        found = lo if lo is not None else (hi or light_rate) / step
        out.per_router[name] = round(found, 2)
        if found > out.rate:
            out.rate, out.best = round(found, 2), name
            best_hi = hi if hi is not None else found * step
    return out
