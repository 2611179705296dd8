"""`lora-affinity-scorer`: prefer endpoints that already run the requested adapter, then ones with room."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from epp.framework.cycle import CycleState
from epp.framework.handle import Handle
from epp.framework.plugins import PluginKind, ScorerCategory
from epp.framework.types import Endpoint, InferenceRequest, TypedName
from epp.registry import EmptyParams, PluginType

__all__ = ["LORA_AFFINITY_SCORER", "LoraAffinityScorer"]

TYPE_NAME = "lora-affinity-scorer"

ACTIVE = 1.0
HAS_ROOM = 0.8
WAITING = 0.6
NONE = 0.0


@dataclass(frozen=True, slots=True)
class LoraAffinityScorer:
    category: ClassVar[ScorerCategory] = ScorerCategory.AFFINITY
    typed_name: TypedName

    def score(
        self, cycle: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Mapping[str, float]:
        target = request.target_model
        out: dict[str, float] = {}
        for e in endpoints:
            m = e.metrics
            if target in m.active_models:
                out[e.key] = ACTIVE
            elif len(m.active_models) + len(m.waiting_models) < m.max_active_models:
                out[e.key] = HAS_ROOM
            elif target in m.waiting_models:
                out[e.key] = WAITING
            else:
                out[e.key] = NONE
        return out


def _factory(name: str, params: EmptyParams, handle: Handle) -> LoraAffinityScorer:
    return LoraAffinityScorer(TypedName(TYPE_NAME, name))


LORA_AFFINITY_SCORER = PluginType(
    type_name=TYPE_NAME,
    params_model=EmptyParams,
    factory=_factory,
    kinds=frozenset({PluginKind.SCORER}),
    description="Scores 1.0 where the target adapter is active, 0.8 where one fits, 0.6 where it waits.",
)
