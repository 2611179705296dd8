"""`prefix-cache-scorer`: prefer endpoints that likely hold more of the prompt in their KV cache.

Thin, as upstream since v1.5: it reads the `PrefixCacheMatchInfo` a producer put in the cycle state and
scores matched / total blocks. Unlike upstream it honours index parameters written on the scorer (older
configs put them here): they are validated and handed to the producer the config builder creates.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from epp.framework.cycle import CycleState
from epp.framework.handle import Handle
from epp.framework.plugins import PluginKind, ScorerCategory
from epp.framework.types import Endpoint, InferenceRequest, TypedName
from epp.plugins.common import endpoint_scores
from epp.plugins.datakeys import PREFIX_CACHE_MATCH_INFO, PREFIX_CACHE_MATCH_INFO_KEY
from epp.plugins.prefix.params import PrefixIndexParamOverrides
from epp.registry import PluginType

__all__ = ["PREFIX_CACHE_SCORER", "PrefixCacheScorer", "PrefixCacheScorerParams"]

log = logging.getLogger(__name__)

TYPE_NAME = "prefix-cache-scorer"


class PrefixCacheScorerParams(PrefixIndexParamOverrides):
    """Optional prefix-index parameters; when any is given it configures the auto-created producer."""

    def producer_parameters(self) -> dict[str, Any] | None:
        """The loader forwards these to the producer it creates for this scorer (None: nothing given)."""
        return self.given() or None


@dataclass(frozen=True, slots=True)
class PrefixCacheScorer:
    category: ClassVar[ScorerCategory] = ScorerCategory.AFFINITY
    typed_name: TypedName
    params: PrefixCacheScorerParams = field(default_factory=PrefixCacheScorerParams)

    def producer_parameters(self) -> dict[str, Any] | None:
        """The index parameters given on this scorer (YAML names), or None when there were none."""
        given = self.params.given()
        return given or None

    def score(
        self, cycle: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Mapping[str, float]:
        info = cycle.read(PREFIX_CACHE_MATCH_INFO_KEY)
        if info is None:
            log.debug("no PrefixCacheMatchInfo for request %s; prefix scores are 0", request.request_id)
        return endpoint_scores(endpoints, info.scores if info is not None else None)


def _factory(name: str, params: PrefixCacheScorerParams, handle: Handle) -> PrefixCacheScorer:
    return PrefixCacheScorer(TypedName(TYPE_NAME, name), params)


PREFIX_CACHE_SCORER = PluginType(
    type_name=TYPE_NAME,
    params_model=PrefixCacheScorerParams,
    factory=_factory,
    kinds=frozenset({PluginKind.SCORER}),
    description="Scores matched / total prompt blocks per endpoint from the prefix-cache producer's match.",
    consumes=frozenset({PREFIX_CACHE_MATCH_INFO}),
)
