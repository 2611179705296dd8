"""`slo-headroom-tier-filter`: keep the endpoints predicted to meet the request's SLOs, as upstream.

Splits the candidates into a positive tier (TTFT and TPOT headroom >= 0, from `LatencyPredictionInfo`)
and a negative tier (a headroom below 0, or no prediction). When both tiers have endpoints it keeps the
positive one, except with probability `epsilonExploreNeg` the negative one (so an endpoint recovering
from overload gets some traffic and its predictions are corrected); otherwise it keeps the tier there is.
Without predictions, or with one candidate, it keeps all. Without SLO headers every headroom is negative,
so it keeps all (a no-op).
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
from epp.plugins.latency.info import LATENCY_PREDICTION_INFO, LATENCY_PREDICTION_INFO_KEY
from epp.registry import PluginType

__all__ = ["SLO_HEADROOM_TIER_FILTER", "SloHeadroomTierFilter", "SloHeadroomTierParams"]

TYPE_NAME = "slo-headroom-tier-filter"


class SloHeadroomTierParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    epsilonExploreNeg: float = Field(
        default=0.01,
        ge=0.0,
        le=1.0,
        description="Probability of keeping the negative tier when both tiers have endpoints.",
    )


class SloHeadroomTierFilter:
    __slots__ = ("_rng", "params", "typed_name")

    def __init__(
        self,
        typed_name: TypedName,
        params: SloHeadroomTierParams | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.typed_name = typed_name
        self.params = params or SloHeadroomTierParams()
        self._rng = rng or random.Random()

    def filter(
        self, cycle: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Sequence[Endpoint]:
        info = cycle.read(LATENCY_PREDICTION_INFO_KEY)
        if info is None or len(endpoints) <= 1:
            return endpoints
        positive: list[Endpoint] = []
        negative: list[Endpoint] = []
        index = info.index
        h_ttft, h_tpot = info.ttft_headroom_ms, info.tpot_headroom_ms
        for e in endpoints:
            i = index.get(e.key)
            if i is not None and h_ttft[i] >= 0.0 and h_tpot[i] >= 0.0:
                positive.append(e)
            else:
                negative.append(e)
        if not positive or not negative:
            return endpoints
        eps = self.params.epsilonExploreNeg
        return negative if eps > 0.0 and self._rng.random() < eps else positive


def _factory(name: str, params: SloHeadroomTierParams, handle: Handle) -> SloHeadroomTierFilter:
    return SloHeadroomTierFilter(TypedName(TYPE_NAME, name), params, derive_rng(handle))


SLO_HEADROOM_TIER_FILTER = PluginType(
    type_name=TYPE_NAME,
    params_model=SloHeadroomTierParams,
    factory=_factory,
    kinds=frozenset({PluginKind.FILTER}),
    description="Keeps the endpoints predicted to meet the request's TTFT/TPOT SLOs (rarely, to explore, "
    "those predicted to miss them).",
    consumes=frozenset({LATENCY_PREDICTION_INFO}),
)
