"""Seeded workloads: what a load run sends, fixed before it starts.

A workload is a tuple of sessions; a session is one or more turns sent one after another (the next
turn after the previous response, plus its think time). Single-turn workloads (`shared_prefix`) have
one turn per session; multi-turn chat (`multiturn`) fits the same shape, and the client then replays
the session's history (system prompt, earlier turns and the responses actually received) before each new turn.
Open-loop arrival rates apply to session starts.

Built in: `shared_prefix` (inference-perf's shape), `zipf` (many prompt groups with Zipf-skewed
popularity), `mixed` (shared-prefix traffic plus long unique prompts) and `multiturn` (chat sessions
whose history grows turn by turn, with think time); `epp bench quality` runs all four.

New workloads register a builder with `register_workload(name, builder)`: a function taking keyword
parameters (always `seed`) and returning a `Workload`. `build_workload(name, **params)` builds one by
name. The same name, parameters and seed always give the same workload.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from epp.tools.loadgen.text import synthetic_text

__all__ = [
    "WORKLOADS",
    "Api",
    "Session",
    "Turn",
    "Workload",
    "WorkloadBuilder",
    "build_workload",
    "mixed",
    "multiturn",
    "register_workload",
    "shared_prefix",
    "zipf",
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
        headers: extra HTTP headers sent with each of its requests (e.g. an objective or an SLO).
    """

    id: str
    group: str
    turns: tuple[Turn, ...]
    system: str = ""
    model: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


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


def _zipf_weights(groups: int, exponent: float) -> list[float]:
    return [1.0 / (rank**exponent) for rank in range(1, groups + 1)]


def zipf(
    *,
    groups: int = 160,
    requests: int = 512,
    system_prompt_len: int = 1500,
    question_len: int = 100,
    output_len: int = 16,
    exponent: float = 1.1,
    seed: int = 0,
    api: Api = "completions",
    model: str | None = None,
) -> Workload:
    """`requests` single-turn requests over `groups` system prompts with Zipf-skewed popularity.

    Group `g{k}` (k from 0) is drawn with probability proportional to 1 / (k + 1) ** `exponent`, so
    `g0` is the hottest: with the defaults it carries ~23 % of the traffic (almost twice an eighth),
    while the 160 prompts of 1,500 tokens are too many for every replica to cache all of them. Each
    request appends its own question of `question_len` tokens to its group's prompt.
    """
    _positive(groups=groups, requests=requests, output_len=output_len)
    if system_prompt_len < 0 or question_len < 0:
        raise ValueError("system_prompt_len and question_len must be >= 0")
    if exponent < 0:
        raise ValueError(f"exponent must be >= 0, got {exponent}")
    rng = random.Random(seed)
    systems = [synthetic_text(rng, system_prompt_len) for _ in range(groups)]
    weights = _zipf_weights(groups, exponent)
    picks = rng.choices(range(groups), weights=weights, k=requests)
    sessions = tuple(
        Session(
            id=f"z{i}",
            group=f"g{g}",
            turns=(Turn(text=synthetic_text(rng, question_len), max_tokens=output_len),),
            system=systems[g],
            model=model,
        )
        for i, g in enumerate(picks)
    )
    params = (
        ("groups", groups),
        ("requests", requests),
        ("system_prompt_len", system_prompt_len),
        ("question_len", question_len),
        ("output_len", output_len),
        ("exponent", exponent),
        ("seed", seed),
    )
    return Workload(name="zipf", sessions=sessions, api=api, params=params)


UNIQUE_GROUP = "unique"


def mixed(
    *,
    groups: int = 16,
    requests: int = 512,
    system_prompt_len: int = 1500,
    question_len: int = 150,
    output_len: int = 16,
    unique_share: float = 0.3,
    unique_len: int = 4000,
    unique_output_len: int | None = None,
    seed: int = 0,
    api: Api = "completions",
    model: str | None = None,
) -> Workload:
    """Shared-prefix traffic plus a `unique_share` of long unique prompts that only consume capacity.

    Each of the `requests` is, with probability `unique_share` (seeded), a prompt of `unique_len`
    tokens that shares nothing with any other (group `unique`, output `unique_output_len`, default
    `output_len`); otherwise a question of `question_len` tokens after one of `groups` equally popular
    system prompts of `system_prompt_len` tokens (groups `g0`...).
    """
    _positive(groups=groups, requests=requests, output_len=output_len)
    if not 0 <= unique_share <= 1:
        raise ValueError(f"unique_share must be within 0..1, got {unique_share}")
    if system_prompt_len < 0 or question_len < 0 or unique_len < 1:
        raise ValueError("system_prompt_len and question_len must be >= 0, unique_len >= 1")
    unique_out = output_len if unique_output_len is None else unique_output_len
    _positive(unique_output_len=unique_out)
    rng = random.Random(seed)
    systems = [synthetic_text(rng, system_prompt_len) for _ in range(groups)]
    sessions: list[Session] = []
    for i in range(requests):
        if rng.random() < unique_share:
            turn = Turn(text=synthetic_text(rng, unique_len), max_tokens=unique_out)
            sessions.append(Session(id=f"u{i}", group=UNIQUE_GROUP, turns=(turn,), model=model))
            continue
        g = rng.randrange(groups)
        turn = Turn(text=synthetic_text(rng, question_len), max_tokens=output_len)
        sessions.append(Session(id=f"m{i}", group=f"g{g}", turns=(turn,), system=systems[g], model=model))
    params = (
        ("groups", groups),
        ("requests", requests),
        ("system_prompt_len", system_prompt_len),
        ("question_len", question_len),
        ("output_len", output_len),
        ("unique_share", unique_share),
        ("unique_len", unique_len),
        ("seed", seed),
    )
    return Workload(name="mixed", sessions=tuple(sessions), api=api, params=params)


def multiturn(
    *,
    sessions: int = 64,
    groups: int = 8,
    system_prompt_len: int = 600,
    turns: int = 6,
    question_len: int = 100,
    output_len: int = 16,
    think_time_s: float = 1.0,
    seed: int = 0,
    api: Api = "chat",
    model: str | None = None,
) -> Workload:
    """`sessions` chat conversations of `turns` turns each, over `groups` shared system prompts.

    Every turn asks a new question of `question_len` tokens; the client resends the whole history
    (system prompt, earlier questions and the answers it received), so each turn's prompt extends the
    previous one. Before every turn but the first the user thinks for an exponentially distributed
    time of mean `think_time_s` seconds (seeded; 0 = no pause).
    """
    _positive(sessions=sessions, groups=groups, turns=turns, output_len=output_len)
    if system_prompt_len < 0 or question_len < 0 or think_time_s < 0:
        raise ValueError("system_prompt_len, question_len and think_time_s must be >= 0")
    rng = random.Random(seed)
    systems = [synthetic_text(rng, system_prompt_len) for _ in range(groups)]
    out: list[Session] = []
    for s in range(sessions):
        g = rng.randrange(groups)
        chat: list[Turn] = []
        for t in range(turns):
            think = rng.expovariate(1.0 / think_time_s) if t and think_time_s > 0 else 0.0
            chat.append(Turn(synthetic_text(rng, question_len), output_len, think_time_s=think))
        out.append(Session(id=f"c{s}", group=f"g{g}", turns=tuple(chat), system=systems[g], model=model))
    params = (
        ("sessions", sessions),
        ("groups", groups),
        ("system_prompt_len", system_prompt_len),
        ("turns", turns),
        ("question_len", question_len),
        ("output_len", output_len),
        ("think_time_s", think_time_s),
        ("seed", seed),
    )
    return Workload(name="multiturn", sessions=tuple(out), api=api, params=params)


register_workload("zipf", zipf)
register_workload("mixed", mixed)
register_workload("multiturn", multiturn)
