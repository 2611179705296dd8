"""`prefix-cache-affinity-filter`: keep the endpoints that likely hold most of the prompt already.

Keeps endpoints whose prefix score (matched / total blocks, from `PrefixCacheMatchInfo`) is at least
`affinityThreshold`; when none qualifies, or with probability `explorationProbability`, keeps all, so
load still spreads and new endpoints get warm. `maxTTFTPenaltyMs` is accepted for config compatibility; it
needs latency predictions, which this EPP does not produce, so it has no effect.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from epp.framework.cycle import CycleState
from epp.framework.handle import Handle
from epp.framework.plugins import PluginKind
from epp.framework.types import Endpoint, InferenceRequest, TypedName
from epp.plugins.common import derive_rng
from epp.plugins.datakeys import PREFIX_CACHE_MATCH_INFO, PREFIX_CACHE_MATCH_INFO_KEY
from epp.registry import PluginType

__all__ = ["PREFIX_CACHE_AFFINITY_FILTER", "PrefixCacheAffinityFilter", "PrefixCacheAffinityParams"]

TYPE_NAME = "prefix-cache-affinity-filter"


class PrefixCacheAffinityParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    affinityThreshold: float = Field(
        default=0.80, ge=0.0, le=1.0, description="Minimum prefix score (matched / total blocks) to be kept."
    )
    explorationProbability: float = Field(
        default=0.01, ge=0.0, le=1.0, description="Probability of skipping the filter for a request."
    )
    maxTTFTPenaltyMs: float = Field(
        default=5000.0,
        ge=0.0,
        description="Accepted for compatibility; only applies with latency predictions (not produced here).",
    )


class PrefixCacheAffinityFilter:
    __slots__ = ("_rng", "params", "typed_name")

    def __init__(
        self,
        typed_name: TypedName,
        params: PrefixCacheAffinityParams | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.typed_name = typed_name
        self.params = params or PrefixCacheAffinityParams()
        self._rng = rng or random.Random()

    def filter(
        self, cycle: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Sequence[Endpoint]:
        info = cycle.read(PREFIX_CACHE_MATCH_INFO_KEY)
        if info is None or not info.scores:
            return endpoints
        p = self.params
        if p.explorationProbability > 0.0 and self._rng.random() < p.explorationProbability:
            return endpoints
        scores = info.scores
        threshold = p.affinityThreshold
        sticky = [e for e in endpoints if scores.get(e.key, 0.0) >= threshold]
        return sticky if sticky else endpoints


def _factory(name: str, params: PrefixCacheAffinityParams, handle: Handle) -> PrefixCacheAffinityFilter:
    return PrefixCacheAffinityFilter(TypedName(TYPE_NAME, name), params, derive_rng(handle))


PREFIX_CACHE_AFFINITY_FILTER = PluginType(
    type_name=TYPE_NAME,
    params_model=PrefixCacheAffinityParams,
    factory=_factory,
    kinds=frozenset({PluginKind.FILTER}),
    description="Keeps endpoints whose prefix-cache match is at least affinityThreshold (else all).",
    consumes=frozenset({PREFIX_CACHE_MATCH_INFO}),
)
