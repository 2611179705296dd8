"""`lora-affinity-filter` (v0.5): prefer endpoints that have the adapter loaded, else ones with room.

Splits the candidates into *affinity* (the target adapter is active or waiting there) and *available*
(neither, but `active + waiting < max_lora`). With both non-empty it keeps affinity with probability
`threshold`, else available; otherwise whichever is non-empty (possibly none).
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
from epp.registry import PluginType

__all__ = ["LORA_AFFINITY_FILTER", "LoraAffinityFilter", "LoraAffinityFilterParams"]

TYPE_NAME = "lora-affinity-filter"


class LoraAffinityFilterParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    threshold: float = Field(
        default=0.999,
        ge=0.0,
        le=1.0,
        description="Probability of keeping the endpoints with the adapter when others have room for it.",
    )


class LoraAffinityFilter:
    __slots__ = ("_rng", "threshold", "typed_name")

    def __init__(
        self, typed_name: TypedName, threshold: float = 0.999, rng: random.Random | None = None
    ) -> None:
        self.typed_name = typed_name
        self.threshold = threshold
        self._rng = rng or random.Random()

    def filter(
        self, cycle: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Sequence[Endpoint]:
        target = request.target_model
        affinity: list[Endpoint] = []
        available: list[Endpoint] = []
        for e in endpoints:
            m = e.metrics
            if target in m.active_models or target in m.waiting_models:
                affinity.append(e)
            elif len(m.active_models) + len(m.waiting_models) < m.max_active_models:
                available.append(e)
        if affinity and available:
            return affinity if self._rng.random() < self.threshold else available
        return affinity or available


def _factory(name: str, params: LoraAffinityFilterParams, handle: Handle) -> LoraAffinityFilter:
    return LoraAffinityFilter(TypedName(TYPE_NAME, name), params.threshold, derive_rng(handle))


LORA_AFFINITY_FILTER = PluginType(
    type_name=TYPE_NAME,
    params_model=LoraAffinityFilterParams,
    factory=_factory,
    kinds=frozenset({PluginKind.FILTER}),
    description="Legacy v0.5: keeps endpoints with the adapter loaded (with probability threshold), "
    "else endpoints with room for it.",
)
