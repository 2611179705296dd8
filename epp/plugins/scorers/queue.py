"""`queue-scorer`: prefer endpoints with shorter waiting queues (min-max over the candidates)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from epp.framework.cycle import CycleState
from epp.framework.handle import Handle
from epp.framework.plugins import PluginKind, ScorerCategory
from epp.framework.types import Endpoint, InferenceRequest, TypedName
from epp.registry import EmptyParams, PluginType

__all__ = ["QUEUE_SCORER", "QueueScorer", "min_max_scores"]

TYPE_NAME = "queue-scorer"


def min_max_scores(endpoints: Sequence[Endpoint], values: Sequence[int]) -> dict[str, float]:
    """`(max - v) / (max - min)` per endpoint; every endpoint scores 1.0 when all values are equal."""
    if not values:
        return {}
    lo = min(values)
    hi = max(values)
    if hi == lo:
        return dict.fromkeys((e.key for e in endpoints), 1.0)
    span = float(hi - lo)
    return {e.key: (hi - v) / span for e, v in zip(endpoints, values, strict=True)}


@dataclass(frozen=True, slots=True)
class QueueScorer:
    category: ClassVar[ScorerCategory] = ScorerCategory.DISTRIBUTION
    typed_name: TypedName

    def score(
        self, cycle: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Mapping[str, float]:
        return min_max_scores(endpoints, [e.metrics.waiting_queue_size for e in endpoints])


def _factory(name: str, params: EmptyParams, handle: Handle) -> QueueScorer:
    return QueueScorer(TypedName(TYPE_NAME, name))


QUEUE_SCORER = PluginType(
    type_name=TYPE_NAME,
    params_model=EmptyParams,
    factory=_factory,
    kinds=frozenset({PluginKind.SCORER}),
    description="Scores endpoints by waiting-queue length, min-max normalised over the candidates.",
)
