"""`prefix-cache-affinity-filter`: keep the endpoints that likely hold most of the prompt already.

Keeps endpoints whose prefix score (matched / total blocks, from `PrefixCacheMatchInfo`) is at least
`affinityThreshold`; when none qualifies, or with probability `explorationProbability`, keeps all, so
load still spreads and new endpoints get warm. With latency predictions (`predicted-latency-producer`),
stickiness breaks (all are kept) when the best kept endpoint's predicted TTFT is more than `maxTTFTPenaltyMs`
worse than the best of the others, as upstream.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from epp.framework.cycle import CycleState
from epp.framework.handle import Handle
from epp.framework.plugins import PluginKind
from epp.framework.types import Endpoint, InferenceRequest, TypedName
from epp.plugins.common import derive_rng
from epp.plugins.datakeys import PREFIX_CACHE_MATCH_INFO, PREFIX_CACHE_MATCH_INFO_KEY
from epp.plugins.latency.info import LATENCY_PREDICTION_INFO_KEY, LatencyPredictionInfo
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
        description="Keep all when the best kept endpoint's predicted TTFT is this many ms worse than the "
        "best other's (only with latency predictions; 0: never).",
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
        if not sticky:
            return endpoints
        if p.maxTTFTPenaltyMs > 0.0 and len(sticky) < len(endpoints):
            predictions = cycle.read(LATENCY_PREDICTION_INFO_KEY)
            if predictions is not None and _ttft_penalty(predictions, sticky, endpoints) > p.maxTTFTPenaltyMs:
                return endpoints
        return sticky


def _ttft_penalty(
    info: LatencyPredictionInfo, sticky: list[Endpoint], endpoints: Sequence[Endpoint]
) -> float:
    """Best predicted TTFT among the sticky endpoints minus the best among the others (0 if either has
    no prediction)."""
    index, ttft = info.index, info.ttft
    kept = {e.key for e in sticky}
    best_sticky = best_other = math.inf
    for e in endpoints:
        i = index.get(e.key)
        if i is None:
            continue
        if e.key in kept:
            best_sticky = min(best_sticky, ttft[i])
        else:
            best_other = min(best_other, ttft[i])
    return 0.0 if math.isinf(best_sticky) or math.isinf(best_other) else best_sticky - best_other


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
