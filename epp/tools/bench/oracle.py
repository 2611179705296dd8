"""The best prefix-cache hit ratio any router could reach: one infinite cache that sees every request.

Each prompt is tokenized exactly as the simulator does (`epp.tools.sim.openai_api.parse_request`: the same
tokenizer and chat template) and cut into the simulator's chained block hashes. In arrival order, a
request hits the blocks of its longest prefix that any earlier request already had, at most all its
tokens but one (as vLLM and the simulator recompute the last token); then its blocks join the cache,
which never evicts. Hits and queries count tokens, like the simulators' `prefix_cache_hits/queries`.

`RecordingClient` is a `LoadClient` that remembers what it sent (session, turn, history), so the oracle
of a multi-turn run is computed from the prompts that were actually sent (they contain the answers).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from epp.tools.loadgen.client import LoadClient, RequestResult, build_body
from epp.tools.loadgen.workloads import Api, Session, Workload
from epp.tools.sim import SimConfig
from epp.tools.sim.kvcache import chain_block_hashes
from epp.tools.sim.openai_api import parse_request
from epp.tools.sim.tokenizer import CharTokenizer

__all__ = ["OracleCache", "RecordingClient", "Sent", "oracle_hit_ratio", "workload_bodies"]


@dataclass(frozen=True, slots=True)
class Sent:
    """One request as the client built it."""

    session: Session
    turn: int
    history: tuple[tuple[str, str], ...]


class OracleCache:
    """An infinite prefix cache in simulator blocks; `add(body)` returns the body's hit tokens."""

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        self.tokenizer = CharTokenizer(self.config.vocab_size)
        self.blocks: set[int] = set()
        self.hits = 0
        self.queries = 0

    def add(self, api: Api, body: Mapping[str, Any]) -> int:
        kind: Literal["chat", "completion"] = "chat" if api == "chat" else "completion"
        parsed = parse_request(kind, body, self.config, self.tokenizer, for_render=True)
        hit_total = 0
        for tokens in parsed.prompts:
            bs = self.config.block_size
            hashes = chain_block_hashes(tokens, bs, parsed.lora)
            usable = (len(tokens) - 1) // bs
            hit = 0
            for h in hashes[:usable]:
                if h not in self.blocks:
                    break
                hit += 1
            self.blocks.update(hashes)
            self.hits += hit * bs
            self.queries += len(tokens)
            hit_total += hit * bs
        return hit_total

    @property
    def hit_ratio(self) -> float:
        return self.hits / self.queries if self.queries else 0.0


def workload_bodies(workload: Workload, model: str | None) -> Iterable[dict[str, Any]]:
    """The bodies of a single-turn workload in arrival order (multi-turn needs what was sent)."""
    for session in workload.sessions:
        if len(session.turns) != 1:
            raise ValueError("workload_bodies() is for single-turn workloads; record a multi-turn run")
        yield build_body(workload.api, session, session.turns[0], (), session.model or model)


def oracle_hit_ratio(api: Api, bodies: Iterable[Mapping[str, Any]], config: SimConfig | None = None) -> float:
    cache = OracleCache(config)
    for body in bodies:
        cache.add(api, body)
    return cache.hit_ratio


class RecordingClient(LoadClient):
    """A LoadClient that keeps the (session, turn, history) of every request, in sending order."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[Sent] = []

    async def __aenter__(self) -> RecordingClient:
        await super().__aenter__()
        return self

    async def send(
        self,
        session: Session,
        turn_index: int,
        history: Sequence[tuple[str, str]] = (),
        *,
        run_start: float | None = None,
    ) -> tuple[RequestResult, str]:
        self.sent.append(Sent(session, turn_index, tuple(history)))
        return await super().send(session, turn_index, history, run_start=run_start)

    def bodies(self) -> Iterable[dict[str, Any]]:
        for s in self.sent:
            turn = s.session.turns[s.turn]
            yield build_body(self.api, s.session, turn, s.history, s.session.model or self.model)
