"""`precise-prefix-cache-scorer`: matched / total prompt blocks per endpoint, from the engines' KV events.

Thin, like `prefix-cache-scorer`: it reads the `PrecisePrefixCacheMatchInfo` that
`precise-prefix-cache-producer` wrote (longest run of leading blocks each endpoint holds, tier-weighted:
GPU 1.0, other media `otherTierWeight`). The producer's parameters may be written on the scorer (llm-d
puts them there); they configure the producer the config builder creates for it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from epp.framework.cycle import CycleState
from epp.framework.handle import Handle
from epp.framework.plugins import EndpointEvent, PluginKind, ScorerCategory
from epp.framework.types import Endpoint, InferenceRequest, TypedName
from epp.plugins.common import endpoint_scores
from epp.plugins.kvevents.params import PreciseParamOverrides
from epp.plugins.kvevents.producer import PRECISE_PREFIX_CACHE_MATCH_INFO, PRECISE_PREFIX_CACHE_MATCH_INFO_KEY
from epp.registry import PluginType

__all__ = ["PRECISE_PREFIX_CACHE_SCORER", "PrecisePrefixCacheScorer"]

TYPE_NAME = "precise-prefix-cache-scorer"


@dataclass(frozen=True, slots=True)
class PrecisePrefixCacheScorer:
    category: ClassVar[ScorerCategory] = ScorerCategory.AFFINITY
    typed_name: TypedName
    params: PreciseParamOverrides = field(default_factory=PreciseParamOverrides)

    def producer_parameters(self) -> dict[str, Any] | None:
        return self.params.producer_parameters()

    def extract_endpoint(self, event: EndpointEvent) -> None:
        """llm-d wires this scorer under `endpoint-notification-source` so it subscribes to new pods and
        drops gone ones; here the producer's KV-event source already follows the pool (it subscribes
        when an endpoint joins, closes when it leaves), so the event needs nothing more."""

    def score(
        self, cycle: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Mapping[str, float]:
        info = cycle.read(PRECISE_PREFIX_CACHE_MATCH_INFO_KEY)
        return endpoint_scores(endpoints, info.scores if info is not None else None)


def _factory(name: str, params: PreciseParamOverrides, handle: Handle) -> PrecisePrefixCacheScorer:
    return PrecisePrefixCacheScorer(TypedName(TYPE_NAME, name), params)


PRECISE_PREFIX_CACHE_SCORER = PluginType(
    type_name=TYPE_NAME,
    params_model=PreciseParamOverrides,
    factory=_factory,
    kinds=frozenset({PluginKind.SCORER, PluginKind.ENDPOINT_EXTRACTOR}),
    description="Scores matched / total prompt blocks per endpoint from the engines' KV-cache events "
    "(precise-prefix-cache-producer).",
    consumes=frozenset({PRECISE_PREFIX_CACHE_MATCH_INFO}),
)
