"""`latency-slo-admitter`: refuse a sheddable request no endpoint is predicted to serve within its SLO.

As upstream: a request with priority >= 0, or without an SLO header, is always admitted; so is any
request when there are no predictions (no model yet: fail open). A sheddable request (priority < 0) is
admitted when at least one candidate has predictions meeting its SLOs, or is idle (no running requests
in its scraped metrics), or is cold (KV-cache use below 2 %: predictions there are unreliable); otherwise
it is refused, which the director answers with 429.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict

from epp.framework.cycle import CycleState
from epp.framework.handle import Handle
from epp.framework.plugins import PluginKind
from epp.framework.types import Endpoint, InferenceRequest, TypedName
from epp.plugins.latency.info import LATENCY_PREDICTION_INFO, LATENCY_PREDICTION_INFO_KEY
from epp.registry import PluginType

__all__ = ["LATENCY_SLO_ADMITTER", "LatencySloAdmitter"]

TYPE_NAME = "latency-slo-admitter"
#: KV-cache use below which an endpoint counts as cold.
COLD_KV = 0.02


class LatencySloAdmitterParams(BaseModel):
    """No parameters (as upstream)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class LatencySloAdmitter:
    __slots__ = ("typed_name",)

    def __init__(self, typed_name: TypedName) -> None:
        self.typed_name = typed_name

    def admit(
        self, cycle: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> str | None:
        if request.priority >= 0:
            return None
        info = cycle.read(LATENCY_PREDICTION_INFO_KEY)
        if info is None or not info.slo.present:
            return None
        has_prediction = False
        index = info.index
        valid = info.valid_flags
        for e in endpoints:
            m = e.metrics
            if m.kv_cache_usage < COLD_KV or m.running_requests_size == 0:
                return None
            i = index.get(e.key)
            if i is not None:
                has_prediction = True
                if valid[i]:
                    return None
        if not has_prediction:
            return None
        return "no endpoint is predicted to meet the request's latency SLO"


def _factory(name: str, params: LatencySloAdmitterParams, handle: Handle) -> LatencySloAdmitter:
    return LatencySloAdmitter(TypedName(TYPE_NAME, name))


LATENCY_SLO_ADMITTER = PluginType(
    type_name=TYPE_NAME,
    params_model=LatencySloAdmitterParams,
    factory=_factory,
    kinds=frozenset({PluginKind.ADMITTER}),
    description="Refuses (429) a sheddable request that no endpoint is predicted to serve within its "
    "x-slo-ttft-ms / x-slo-tpot-ms (unless one is idle or cold).",
    consumes=frozenset({LATENCY_PREDICTION_INFO}),
)
