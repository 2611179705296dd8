"""The legacy (v0.5) band filters: keep the endpoints in the lowest 1/N band of one metric.

- `least-queue-filter`: `q <= min + (max - min) // N` over waiting-queue lengths (integer division, as
  upstream);
- `least-kv-cache-filter`: `kv <= min + (max - min) / N` over KV-cache usage;

for N candidates.
"""

from __future__ import annotations

from collections.abc import Sequence

from epp.framework.cycle import CycleState
from epp.framework.handle import Handle
from epp.framework.plugins import PluginKind
from epp.framework.types import Endpoint, InferenceRequest, TypedName
from epp.registry import EmptyParams, PluginType

__all__ = ["LEAST_KV_CACHE_FILTER", "LEAST_QUEUE_FILTER", "LeastKvCacheFilter", "LeastQueueFilter"]


class _LowestBandFilter:
    """Keeps the endpoints whose metric is at most `min + width(max - min, N)`."""

    __slots__ = ("typed_name",)

    def __init__(self, typed_name: TypedName) -> None:
        self.typed_name = typed_name

    @staticmethod
    def _values(endpoints: Sequence[Endpoint]) -> list[float]:
        raise NotImplementedError

    @staticmethod
    def _width(span: float, n: int) -> float:
        raise NotImplementedError

    def filter(
        self, cycle: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Sequence[Endpoint]:
        if not endpoints:
            return []
        values = self._values(endpoints)
        lo = min(values)
        limit = lo + self._width(max(values) - lo, len(values))
        return [e for e, v in zip(endpoints, values, strict=True) if v <= limit]


class LeastQueueFilter(_LowestBandFilter):
    __slots__ = ()

    @staticmethod
    def _values(endpoints: Sequence[Endpoint]) -> list[float]:
        return [e.metrics.waiting_queue_size for e in endpoints]

    @staticmethod
    def _width(span: float, n: int) -> float:
        return span // n


class LeastKvCacheFilter(_LowestBandFilter):
    __slots__ = ()

    @staticmethod
    def _values(endpoints: Sequence[Endpoint]) -> list[float]:
        return [e.metrics.kv_cache_usage for e in endpoints]

    @staticmethod
    def _width(span: float, n: int) -> float:
        return span / n


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
