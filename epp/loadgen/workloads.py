"""Seeded workloads: what a load run sends, fixed before it starts.

A workload is a tuple of sessions; a session is one or more turns sent one after another (the next
turn after the previous response, plus its think time). Single-turn workloads (`shared_prefix`) have
one turn per session; multi-turn chat fits the same shape, and the client then replays the session's
history (system prompt, earlier turns and the responses actually received) before each new turn.
Open-loop arrival rates apply to session starts.

New workloads register a builder with `register_workload(name, builder)`: a function taking keyword
parameters (always `seed`) and returning a `Workload`. `build_workload(name, **params)` builds one by
name. The same name, parameters and seed always give the same workload.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from epp.loadgen.text import synthetic_text

__all__ = [
    "WORKLOADS",
    "Api",
    "Session",
    "Turn",
    "Workload",
    "WorkloadBuilder",
    "build_workload",
    "register_workload",
    "shared_prefix",
]

Api = Literal["completions", "chat"]


@dataclass(frozen=True, slots=True)
class Turn:
    """One request of a session: the user text, its output length, and the pause before sending it."""

    text: str
    max_tokens: int
    think_time_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Session:
    """Turns sent in order on one conversation.

    Attributes:
        id: unique in the workload (becomes part of each request's `x-request-id`).
        group: a label for reports, e.g. the shared-prefix group the session belongs to.
        system: system prompt (chat) or prompt prefix (completions), sent before the turns.
        model: the `model` field; None = the run's default model.
    """

    id: str
    group: str
    turns: tuple[Turn, ...]
    system: str = ""
    model: str | None = None


@dataclass(frozen=True, slots=True)
class Workload:
    """A named, fully generated workload."""

    name: str
    sessions: tuple[Session, ...]
    api: Api = "completions"
    params: tuple[tuple[str, Any], ...] = ()

    @property
    def num_requests(self) -> int:
        return sum(len(s.turns) for s in self.sessions)

    def describe(self) -> str:
        shown = ", ".join(f"{k}={v}" for k, v in self.params if k != "seed")
        return f"{self.name}({shown})" if shown else self.name


WorkloadBuilder = Callable[..., Workload]
WORKLOADS: dict[str, WorkloadBuilder] = {}


def register_workload(name: str, builder: WorkloadBuilder) -> None:
    """Make `builder` available to `build_workload(name, ...)`; a name can be registered once."""
    if name in WORKLOADS:
        raise ValueError(f"workload {name!r} is already registered")
    WORKLOADS[name] = builder


def build_workload(name: str, **params: Any) -> Workload:
    """Build the workload registered as `name` with keyword parameters."""
    try:
        builder = WORKLOADS[name]
    except KeyError:
        raise ValueError(f"unknown workload {name!r}; known: {', '.join(sorted(WORKLOADS))}") from None
    return builder(**params)


def _positive(**values: int) -> None:
    for key, value in values.items():
        if value < 1:
            raise ValueError(f"{key} must be >= 1, got {value}")


def shared_prefix(
    *,
    groups: int = 8,
    prompts_per_group: int = 16,
    system_prompt_len: int = 1000,
    question_len: int = 32,
    output_len: int = 16,
    seed: int = 0,
    api: Api = "completions",
    model: str | None = None,
    shuffle: bool = True,
) -> Workload:
    """inference-perf's `shared_prefix` shape: `groups` x `prompts_per_group` single-turn requests.

    Each group has its own system prompt of `system_prompt_len` tokens; each prompt appends its own
    question of `question_len` tokens and asks for `output_len` tokens. With `shuffle` the requests of
    all groups are interleaved in a seeded random order (as traffic from many tenants arrives);
    otherwise they come group by group.
    """
    _positive(groups=groups, prompts_per_group=prompts_per_group, output_len=output_len)
    if system_prompt_len < 0 or question_len < 0:
        raise ValueError("system_prompt_len and question_len must be >= 0")
    rng = random.Random(seed)
    sessions: list[Session] = []
    for g in range(groups):
        system = synthetic_text(rng, system_prompt_len)
        for p in range(prompts_per_group):
            question = synthetic_text(rng, question_len)
            sessions.append(
                Session(
                    id=f"g{g}-p{p}",
                    group=f"g{g}",
                    turns=(Turn(text=question, max_tokens=output_len),),
                    system=system,
                    model=model,
                )
            )
    if shuffle:
        rng.shuffle(sessions)
    params = (
        ("groups", groups),
        ("prompts_per_group", prompts_per_group),
        ("system_prompt_len", system_prompt_len),
        ("question_len", question_len),
        ("output_len", output_len),
        ("seed", seed),
    )
    return Workload(name="shared_prefix", sessions=tuple(sessions), api=api, params=params)


register_workload("shared_prefix", shared_prefix)
