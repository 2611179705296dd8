"""`utilization-detector`: pool saturation from scraped queue depth and KV-cache use (upstream's default).

Saturation is the average over endpoints of a per-endpoint roofline `max(queue / queueDepthThreshold,
kv / kvCacheUtilThreshold)`; an endpoint whose metrics are stale (older than `metricsStalenessThreshold`),
never scraped, or failing counts 1.0, and no endpoints at all is 1.0. Hysteresis (ours) keeps a saturated
pool reported saturated until it falls below `1 - hysteresis`.

As a filter it keeps fresh endpoints under both thresholds x (1 + headroom); when none qualify it returns
its input unchanged (fail-open), as upstream.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

from epp.framework.cycle import CycleState
from epp.framework.handle import Handle
from epp.framework.plugins import PluginKind
from epp.framework.types import Endpoint, InferenceRequest, TypedName
from epp.plugins.saturation.hysteresis import SaturationLatch
from epp.plugins.saturation.params import GoDuration
from epp.registry import PluginType

__all__ = ["UTILIZATION_DETECTOR", "UtilizationDetector", "UtilizationDetectorParams"]

log = logging.getLogger(__name__)

TYPE_NAME = "utilization-detector"

#: Default hysteresis band (ours; 0 restores upstream's flapping-prone behaviour).
DEFAULT_HYSTERESIS = 0.05


class UtilizationDetectorParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    queueDepthThreshold: int = Field(
        default=5, gt=0, description="Waiting requests at which an endpoint counts as saturated."
    )
    kvCacheUtilThreshold: float = Field(
        default=0.8,
        gt=0.0,
        le=1.0,
        description="KV-cache use (0..1] at which an endpoint counts as saturated.",
    )
    metricsStalenessThreshold: GoDuration = Field(
        default=0.2,
        gt=0.0,
        description="Metrics older than this (a Go duration, default 200ms) make an endpoint count as "
        "saturated.",
    )
    headroom: float = Field(
        default=0.0,
        ge=0.0,
        description="Filter only: endpoints pass while under threshold x (1 + headroom).",
    )
    hysteresis: float = Field(
        default=DEFAULT_HYSTERESIS,
        ge=0.0,
        lt=1.0,
        description="Once saturated (>= 1.0), stay saturated until saturation drops below 1 - hysteresis. "
        "0 = no hysteresis (upstream).",
    )


@dataclass(slots=True)
class UtilizationDetector:
    typed_name: TypedName
    queue_threshold: float = 5.0
    kv_threshold: float = 0.8
    staleness: float = 0.2
    headroom: float = 0.0
    clock: Callable[[], float] = field(default=lambda: 0.0)
    latch: SaturationLatch = field(default_factory=lambda: SaturationLatch(DEFAULT_HYSTERESIS))

    def raw_saturation(self, endpoints: Sequence[Endpoint], now: float) -> float:
        """Upstream's value, without hysteresis."""
        if not endpoints:
            return 1.0
        total = 0.0
        for e in endpoints:
            m = e.metrics
            if not e.healthy or m.age(now) > self.staleness:
                total += 1.0
            else:
                total += max(
                    m.waiting_queue_size / self.queue_threshold, m.kv_cache_usage / self.kv_threshold
                )
        return total / len(endpoints)

    def saturation(self, endpoints: Sequence[Endpoint], now: float) -> float:
        return self.latch.apply(endpoints, self.raw_saturation(endpoints, now))

    def filter(
        self, cycle: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Sequence[Endpoint]:
        now = self.clock()
        q_limit = self.queue_threshold * (1.0 + self.headroom)
        kv_limit = self.kv_threshold * (1.0 + self.headroom)
        kept = [
            e
            for e in endpoints
            if e.healthy
            and e.metrics.age(now) <= self.staleness
            and e.metrics.waiting_queue_size < q_limit
            and e.metrics.kv_cache_usage < kv_limit
        ]
        return kept if kept else endpoints


def _factory(name: str, params: UtilizationDetectorParams, handle: Handle) -> UtilizationDetector:
    if params.headroom > 1.0:
        log.warning(
            "utilization-detector %r: headroom %.2f is above 1.0, so the filter keeps endpoints up to more "
            "than twice the thresholds",
            name,
            params.headroom,
        )
    return UtilizationDetector(
        TypedName(TYPE_NAME, name),
        queue_threshold=float(params.queueDepthThreshold),
        kv_threshold=params.kvCacheUtilThreshold,
        staleness=params.metricsStalenessThreshold,
        headroom=params.headroom,
        clock=handle.clock,
        latch=SaturationLatch(params.hysteresis),
    )


UTILIZATION_DETECTOR = PluginType(
    type_name=TYPE_NAME,
    params_model=UtilizationDetectorParams,
    factory=_factory,
    kinds=frozenset({PluginKind.SATURATION_DETECTOR, PluginKind.FILTER}),
    description="Pool saturation from queue depth and KV-cache use (roofline, averaged; stale = saturated), "
    "with hysteresis; as a filter keeps endpoints under the thresholds (fail-open).",
    stateful=True,
)
