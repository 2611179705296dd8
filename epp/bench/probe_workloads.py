"""Seeded workloads for the scheduling-quality probe (`epp.bench.quality_probe`).

Every workload is a list of open-loop Poisson arrivals (streaming requests) built from one seed; prompt
sizes are in tokens of the simulator's default tokenizer (4 characters per token), so a 1,500-token system
prompt is 6,000 characters. `multiturn` sessions are closed-loop inside a session: turn k+1 is sent a think
time after turn k finished, with the history (including a synthetic assistant reply) resent.

| name | shape |
|---|---|
| `shared_prefix` | `groups` equally popular system prompts of `system` tokens; `question`, `output` |
| `zipf` | `groups` prompt groups with Zipf(`zipf_s`) popularity: the hottest alone needs > 1 replica |
| `mixed` | `shared_prefix` traffic plus a `unique_share` of long unique prompts (`unique` tokens) |
| `multiturn` | chat sessions of `turns` turns over `groups` shared system prompts; history grows each turn |
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = ["WORKLOADS", "ProbeRequest", "Workload", "WorkloadShape", "make_workload"]

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"
_ALPHABET = string.ascii_lowercase + "      "


@dataclass(frozen=True, slots=True)
class ProbeRequest:
    rid: str
    arrival: float
    path: str
    body: dict[str, Any]
    group: str
    kind: str = "shared"  # shared | unique | turn
    session: int = -1
    turn: int = 0


@dataclass(frozen=True)
class WorkloadShape:
    """Sizes (tokens) and mix of a workload; unset fields take the workload's defaults."""

    groups: int = 16
    system: int = 1500
    question: int = 150
    output: int = 100
    zipf_s: float = 1.1
    unique_share: float = 0.3
    unique: int = 4000
    unique_output: int = 50
    turns: int = 6
    think_s: float = 1.0
    reply: int = 120


DEFAULT_SHAPES: dict[str, WorkloadShape] = {
    "shared_prefix": WorkloadShape(groups=16, system=1500, question=150, output=100),
    "zipf": WorkloadShape(groups=160, system=1500, question=100, output=100, zipf_s=1.1),
    "mixed": WorkloadShape(groups=16, system=1500, question=150, output=100, unique_share=0.3, unique=4000),
    "multiturn": WorkloadShape(
        groups=8, system=600, question=100, output=120, turns=6, think_s=1.0, reply=120
    ),
}


@dataclass
class Workload:
    """Arrivals in time order; `next_turn(done_request, finish_time)` gives a session's next turn."""

    name: str
    requests: list[ProbeRequest]
    next_turn: Callable[[ProbeRequest, float], ProbeRequest | None] | None = None
    shape: WorkloadShape = field(default_factory=WorkloadShape)


def _text(rng: random.Random, tokens: int) -> str:
    return "".join(rng.choices(_ALPHABET, k=tokens * 4))


def _completion(rid: str, t: float, prompt: str, output: int, group: str, kind: str) -> ProbeRequest:
    body = {"model": MODEL, "prompt": prompt, "max_tokens": output, "stream": True}
    return ProbeRequest(rid, t, COMPLETIONS, body, group, kind)


def _arrivals(rng: random.Random, rate: float, duration: float) -> list[float]:
    out: list[float] = []
    t = rng.expovariate(rate)
    while t < duration:
        out.append(t)
        t += rng.expovariate(rate)
    return out


def _shared(
    rng: random.Random, shape: WorkloadShape, weights: list[float] | None
) -> Callable[[int, float], ProbeRequest]:
    systems = [_text(rng, shape.system) for _ in range(shape.groups)]
    groups = list(range(shape.groups))

    def make(i: int, t: float) -> ProbeRequest:
        g = rng.choices(groups, weights)[0] if weights else rng.randrange(shape.groups)
        prompt = systems[g] + " " + _text(rng, shape.question)
        return _completion(f"r{i}", t, prompt, shape.output, f"g{g}", "shared")

    return make


def make_workload(
    name: str, rate: float, duration: float, seed: int, shape: WorkloadShape | None = None
) -> Workload:
    """Build a workload: `rate` requests (or, for multiturn, sessions x turns) per second for `duration` s."""
    if name not in DEFAULT_SHAPES:
        raise ValueError(f"unknown workload {name!r}; known: {', '.join(DEFAULT_SHAPES)}")
    shape = shape or DEFAULT_SHAPES[name]
    rng = random.Random(f"{name}:{seed}")
    if name == "multiturn":
        return _multiturn(rng, rate, duration, shape)
    weights = None
    if name == "zipf":
        weights = [1.0 / (k + 1) ** shape.zipf_s for k in range(shape.groups)]
    make = _shared(rng, shape, weights)
    requests: list[ProbeRequest] = []
    for i, t in enumerate(_arrivals(rng, rate, duration)):
        if name == "mixed" and rng.random() < shape.unique_share:
            requests.append(
                _completion(f"r{i}", t, _text(rng, shape.unique), shape.unique_output, "unique", "unique")
            )
        else:
            requests.append(make(i, t))
    return Workload(name, requests, None, shape)


def _multiturn(rng: random.Random, rate: float, duration: float, shape: WorkloadShape) -> Workload:
    """`rate` is requests per second: sessions start at rate / turns per second."""
    systems = [_text(rng, shape.system) for _ in range(shape.groups)]
    sessions: list[list[tuple[str, str, float]]] = []  # per session: (question, reply, think) per turn
    firsts: list[ProbeRequest] = []
    for s, t in enumerate(_arrivals(rng, rate / shape.turns, duration)):
        turns = [
            (_text(rng, shape.question), _text(rng, shape.reply), rng.expovariate(1.0 / shape.think_s))
            for _ in range(shape.turns)
        ]
        sessions.append(turns)
        system = rng.randrange(shape.groups)
        body = {
            "model": MODEL,
            "max_tokens": shape.output,
            "stream": True,
            "messages": [
                {"role": "system", "content": systems[system]},
                {"role": "user", "content": turns[0][0]},
            ],
        }
        firsts.append(ProbeRequest(f"s{s}t0", t, CHAT, body, f"g{system}", "turn", s, 0))

    def next_turn(done: ProbeRequest, finished: float) -> ProbeRequest | None:
        turns = sessions[done.session]
        k = done.turn + 1
        if k >= len(turns):
            return None
        _question, reply, think = turns[k - 1]
        messages = [
            *done.body["messages"],
            {"role": "assistant", "content": reply},
            {"role": "user", "content": turns[k][0]},
        ]
        body = {**done.body, "messages": messages}
        return replace(done, rid=f"s{done.session}t{k}", arrival=finished + think, body=body, turn=k)

    return Workload("multiturn", firsts, next_turn, shape)


WORKLOADS = tuple(DEFAULT_SHAPES)
