"""`low-queue-filter` (v0.5): keep endpoints whose waiting queue is at most `threshold`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from epp.framework.cycle import CycleState
from epp.framework.handle import Handle
from epp.framework.plugins import PluginKind
from epp.framework.types import Endpoint, InferenceRequest, TypedName
from epp.registry import PluginType

__all__ = ["LOW_QUEUE_FILTER", "LowQueueFilter", "LowQueueParams"]

TYPE_NAME = "low-queue-filter"


class LowQueueParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    threshold: int = Field(default=128, ge=0, description="Largest waiting-queue length that is kept.")


@dataclass(frozen=True, slots=True)
class LowQueueFilter:
    typed_name: TypedName
    threshold: int = 128

    def filter(
        self, cycle: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Sequence[Endpoint]:
        limit = self.threshold
        return [e for e in endpoints if e.metrics.waiting_queue_size <= limit]


def _factory(name: str, params: LowQueueParams, handle: Handle) -> LowQueueFilter:
    return LowQueueFilter(TypedName(TYPE_NAME, name), params.threshold)


LOW_QUEUE_FILTER = PluginType(
    type_name=TYPE_NAME,
    params_model=LowQueueParams,
    factory=_factory,
    kinds=frozenset({PluginKind.FILTER}),
    description="Legacy v0.5: keeps endpoints whose waiting queue is at most threshold.",
)
