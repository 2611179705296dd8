"""`token-load-scorer`: prefer endpoints with fewer estimated in-flight tokens (inflight-load-producer)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from epp.framework.cycle import CycleState
from epp.framework.handle import Handle
from epp.framework.plugins import PluginKind, ScorerCategory
from epp.framework.types import Endpoint, InferenceRequest, TypedName
from epp.plugins.datakeys import INFLIGHT_LOAD, INFLIGHT_LOAD_KEY
from epp.registry import PluginType

__all__ = ["DEFAULT_QUEUE_THRESHOLD_TOKENS", "TOKEN_LOAD_SCORER", "TokenLoadParams", "TokenLoadScorer"]

TYPE_NAME = "token-load-scorer"

#: 128 requests x 32K tokens, as upstream.
DEFAULT_QUEUE_THRESHOLD_TOKENS = 4_194_304


class TokenLoadParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    queueThresholdTokens: int = Field(
        default=DEFAULT_QUEUE_THRESHOLD_TOKENS,
        description="In-flight tokens at which an endpoint scores 0 (linear in between); <= 0 means the "
        "default.",
    )


@dataclass(frozen=True, slots=True)
class TokenLoadScorer:
    category: ClassVar[ScorerCategory] = ScorerCategory.DISTRIBUTION
    typed_name: TypedName
    threshold: int = DEFAULT_QUEUE_THRESHOLD_TOKENS

    def score(
        self, cycle: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Mapping[str, float]:
        loads = cycle.read(INFLIGHT_LOAD_KEY) or {}
        thr = float(self.threshold)
        out: dict[str, float] = {}
        for e in endpoints:
            load = loads.get(e.key)
            tokens = 0 if load is None else load.tokens
            out[e.key] = 1.0 if tokens <= 0 else 1.0 - min(tokens, thr) / thr
        return out


def _factory(name: str, params: TokenLoadParams, handle: Handle) -> TokenLoadScorer:
    threshold = params.queueThresholdTokens
    if threshold <= 0:
        threshold = DEFAULT_QUEUE_THRESHOLD_TOKENS
    return TokenLoadScorer(TypedName(TYPE_NAME, name), threshold)


TOKEN_LOAD_SCORER = PluginType(
    type_name=TYPE_NAME,
    params_model=TokenLoadParams,
    factory=_factory,
    kinds=frozenset({PluginKind.SCORER}),
    description="Scores endpoints by estimated in-flight tokens: 1 - min(tokens, threshold) / threshold.",
    consumes=frozenset({INFLIGHT_LOAD}),
)
