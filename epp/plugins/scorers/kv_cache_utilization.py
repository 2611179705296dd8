"""`kv-cache-utilization-scorer`: prefer endpoints with more free KV cache (`1 - usage`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from epp.framework.cycle import CycleState
from epp.framework.handle import Handle
from epp.framework.plugins import PluginKind, ScorerCategory
from epp.framework.types import Endpoint, InferenceRequest, TypedName
from epp.registry import EmptyParams, PluginType

__all__ = ["KV_CACHE_UTILIZATION_SCORER", "KvCacheUtilizationScorer"]

TYPE_NAME = "kv-cache-utilization-scorer"


@dataclass(frozen=True, slots=True)
class KvCacheUtilizationScorer:
    category: ClassVar[ScorerCategory] = ScorerCategory.DISTRIBUTION
    typed_name: TypedName

    def score(
        self, cycle: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Mapping[str, float]:
        out: dict[str, float] = {}
        for e in endpoints:
            free = 1.0 - e.metrics.kv_cache_usage
            # a usage reported outside [0, 1] (or NaN) is clamped rather than trusted
            out[e.key] = 1.0 if free > 1.0 else free if free > 0.0 else 0.0
        return out


def _factory(name: str, params: EmptyParams, handle: Handle) -> KvCacheUtilizationScorer:
    return KvCacheUtilizationScorer(TypedName(TYPE_NAME, name))


KV_CACHE_UTILIZATION_SCORER = PluginType(
    type_name=TYPE_NAME,
    params_model=EmptyParams,
    factory=_factory,
    kinds=frozenset({PluginKind.SCORER}),
    description="Scores endpoints by free KV-cache fraction (1 - kv_cache_usage).",
)
