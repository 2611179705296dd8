"""`least-queue-filter` (v0.5): keep the endpoints in the lowest 1/N band of waiting-queue lengths.

Band: `q <= min + (max - min) // N` for N candidates (integer division, as upstream).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from epp.framework.cycle import CycleState
from epp.framework.handle import Handle
from epp.framework.plugins import PluginKind
from epp.framework.types import Endpoint, InferenceRequest, TypedName
from epp.registry import EmptyParams, PluginType

__all__ = ["LEAST_QUEUE_FILTER", "LeastQueueFilter"]

TYPE_NAME = "least-queue-filter"


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
        limit = lo + (max(queues) - lo) // len(queues)
        return [e for e, q in zip(endpoints, queues, strict=True) if q <= limit]


def _factory(name: str, params: EmptyParams, handle: Handle) -> LeastQueueFilter:
    return LeastQueueFilter(TypedName(TYPE_NAME, name))


LEAST_QUEUE_FILTER = PluginType(
    type_name=TYPE_NAME,
    params_model=EmptyParams,
    factory=_factory,
    kinds=frozenset({PluginKind.FILTER}),
    description="Legacy v0.5: keeps endpoints in the lowest 1/N band of waiting-queue lengths.",
)
