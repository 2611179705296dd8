"""`least-kv-cache-filter` (v0.5): keep the endpoints in the lowest 1/N band of KV-cache usage.

Band: `kv <= min + (max - min) / N` for N candidates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from epp.framework.cycle import CycleState
from epp.framework.handle import Handle
from epp.framework.plugins import PluginKind
from epp.framework.types import Endpoint, InferenceRequest, TypedName
from epp.registry import EmptyParams, PluginType

__all__ = ["LEAST_KV_CACHE_FILTER", "LeastKvCacheFilter"]

TYPE_NAME = "least-kv-cache-filter"


@dataclass(frozen=True, slots=True)
class LeastKvCacheFilter:
    typed_name: TypedName

    def filter(
        self, cycle: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Sequence[Endpoint]:
        if not endpoints:
            return []
        usage = [e.metrics.kv_cache_usage for e in endpoints]
        lo = min(usage)
        limit = lo + (max(usage) - lo) / len(usage)
        return [e for e, kv in zip(endpoints, usage, strict=True) if kv <= limit]


def _factory(name: str, params: EmptyParams, handle: Handle) -> LeastKvCacheFilter:
    return LeastKvCacheFilter(TypedName(TYPE_NAME, name))


LEAST_KV_CACHE_FILTER = PluginType(
    type_name=TYPE_NAME,
    params_model=EmptyParams,
    factory=_factory,
    kinds=frozenset({PluginKind.FILTER}),
    description="Legacy v0.5: keeps endpoints in the lowest 1/N band of KV-cache usage.",
)
