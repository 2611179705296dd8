"""`running-requests-size-scorer`: prefer endpoints running fewer requests (min-max over the candidates)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from epp.framework.cycle import CycleState
from epp.framework.handle import Handle
from epp.framework.plugins import PluginKind, ScorerCategory
from epp.framework.types import Endpoint, InferenceRequest, TypedName
from epp.plugins.scorers.queue import min_max_scores
from epp.registry import EmptyParams, PluginType

__all__ = ["RUNNING_REQUESTS_SIZE_SCORER", "RunningRequestsSizeScorer"]

TYPE_NAME = "running-requests-size-scorer"


@dataclass(frozen=True, slots=True)
class RunningRequestsSizeScorer:
    category: ClassVar[ScorerCategory] = ScorerCategory.DISTRIBUTION
    typed_name: TypedName

    def score(
        self, cycle: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Mapping[str, float]:
        return min_max_scores(endpoints, [e.metrics.running_requests_size for e in endpoints])


def _factory(name: str, params: EmptyParams, handle: Handle) -> RunningRequestsSizeScorer:
    return RunningRequestsSizeScorer(TypedName(TYPE_NAME, name))


RUNNING_REQUESTS_SIZE_SCORER = PluginType(
    type_name=TYPE_NAME,
    params_model=EmptyParams,
    factory=_factory,
    kinds=frozenset({PluginKind.SCORER}),
    description="Scores endpoints by running-request count, min-max normalised over the candidates.",
)
