"""The legacy (v0.5) band filters: keep the endpoints in the lowest 1/N band of one metric.

- `least-queue-filter`: `q <= min + (max - min) // N` over waiting-queue lengths (integer division, as
  upstream);
- `least-kv-cache-filter`: `kv <= min + (max - min) / N` over KV-cache usage;

for N candidates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from epp.framework.cycle import CycleState
from epp.framework.handle import Handle
from epp.framework.plugins import PluginKind
from epp.framework.types import Endpoint, InferenceRequest, TypedName
from epp.registry import EmptyParams, PluginType

__all__ = ["LEAST_KV_CACHE_FILTER", "LEAST_QUEUE_FILTER", "LeastKvCacheFilter", "LeastQueueFilter"]


def _lowest_band(endpoints: Sequence[Endpoint], values: Sequence[float], limit: float) -> list[Endpoint]:
    return [e for e, v in zip(endpoints, values, strict=True) if v <= limit]


@dataclass(frozen=True, slots=True)
class LeastQueueFilter:
    typed_name: TypedName

    def filter(
        self, cycle: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Sequence[Endpoint]:
        if not endpoints:
            return []
        queues = [e.metrics.waiting_queue_size for e in endpoints]
        lo = min(queues)
        return _lowest_band(endpoints, queues, lo + (max(queues) - lo) // len(queues))


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
        return _lowest_band(endpoints, usage, lo + (max(usage) - lo) / len(usage))


def _band_filter_type(
    type_name: str, cls: type[LeastQueueFilter] | type[LeastKvCacheFilter], metric: str
) -> PluginType[EmptyParams]:
    def factory(name: str, params: EmptyParams, handle: Handle) -> LeastQueueFilter | LeastKvCacheFilter:
        return cls(TypedName(type_name, name))

    return PluginType(
        type_name=type_name,
        params_model=EmptyParams,
        factory=factory,
        kinds=frozenset({PluginKind.FILTER}),
        description=f"Legacy v0.5: keeps endpoints in the lowest 1/N band of {metric}.",
    )


LEAST_QUEUE_FILTER = _band_filter_type("least-queue-filter", LeastQueueFilter, "waiting-queue lengths")
LEAST_KV_CACHE_FILTER = _band_filter_type("least-kv-cache-filter", LeastKvCacheFilter, "KV-cache usage")
