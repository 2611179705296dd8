"""The workloads of `epp bench quality`, replayed on the probe's virtual clock.

The same builders, shapes and seeds as the benchmark (`epp.tools.bench.quality.make_workload` over
`epp.tools.loadgen.workloads`), the same request bodies (`epp.tools.loadgen.client.build_body`) and Poisson
session starts (`epp.tools.loadgen.runner.poisson_arrivals`). The benchmark runs its simulators at
`--time-scale s` (every engine duration x s) and states rates and think times in wall-clock seconds; the
probe runs the engines unscaled, so it divides arrival times and think times by s and multiplies latencies
back by s when it reports them: its numbers read like the benchmark's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from epp.tools.bench.quality import FULL, SMOKE, Sizing, make_workload
from epp.tools.loadgen.client import build_body
from epp.tools.loadgen.runner import poisson_arrivals
from epp.tools.loadgen.workloads import UNIQUE_GROUP, Session, Workload
from epp.tools.sim.config import SimConfig

__all__ = ["SIZINGS", "WORKLOADS", "ProbeRequest", "ProbeWorkload", "probe_workload"]

WORKLOADS = ("shared_prefix", "zipf", "mixed", "multiturn")
SIZINGS: dict[str, Sizing] = {"full": FULL, "smoke": SMOKE}
MODEL = SimConfig().model
COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"


@dataclass(frozen=True, slots=True)
class ProbeRequest:
    rid: str
    arrival: float  # virtual (unscaled engine) seconds
    path: str
    body: dict[str, Any]
    group: str
    kind: str  # shared | unique | turn
    session: int
    turn: int = 0


@dataclass
class ProbeWorkload:
    """First turns in arrival order; `next_turn` builds a session's next turn once one finished."""

    name: str
    requests: list[ProbeRequest]
    workload: Workload
    time_scale: float
    histories: dict[int, list[tuple[str, str]]] = field(default_factory=dict)

    @property
    def path(self) -> str:
        return CHAT if self.workload.api == "chat" else COMPLETIONS

    def _request(self, index: int, turn: int, arrival: float) -> ProbeRequest:
        session = self.workload.sessions[index]
        history = self.histories.setdefault(index, [])
        body = build_body(self.workload.api, session, session.turns[turn], history, MODEL)
        kind = "turn" if len(session.turns) > 1 else "unique" if session.group == UNIQUE_GROUP else "shared"
        return ProbeRequest(
            f"{session.id}-t{turn}", arrival, self.path, body, session.group, kind, index, turn
        )

    def next_turn(self, done: ProbeRequest, finished: float, response_text: str) -> ProbeRequest | None:
        session: Session = self.workload.sessions[done.session]
        self.histories.setdefault(done.session, []).append((session.turns[done.turn].text, response_text))
        k = done.turn + 1
        if k >= len(session.turns):
            return None
        return self._request(done.session, k, finished + session.turns[k].think_time_s / self.time_scale)


def probe_workload(
    name: str,
    rate: float,
    *,
    seed: int = 0,
    sizing: Sizing = FULL,
    duration_s: float | None = None,
    shape: Mapping[str, Any] | None = None,
) -> ProbeWorkload:
    """The benchmark's workload `name` at `rate` requests per wall-clock second (its units)."""
    if name not in WORKLOADS:
        raise ValueError(f"unknown workload {name!r}; known: {', '.join(WORKLOADS)}")
    duration = sizing.duration_s if duration_s is None else duration_s
    workload, session_rate = make_workload(name, rate, duration, shape or sizing.shapes[name], seed)
    scale = sizing.time_scale
    arrivals = poisson_arrivals(len(workload.sessions), session_rate, seed)
    probe = ProbeWorkload(name, [], workload, scale)
    probe.requests = [probe._request(i, 0, at / scale) for i, at in enumerate(arrivals)]
    return probe
