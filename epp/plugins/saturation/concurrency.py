"""`concurrency-detector`: pool saturation from the EPP's own in-flight counters (no scrape lag).

In `requests` mode an endpoint's load is the number of requests the EPP has sent it that have not
completed; in `tokens` mode it is their estimated tokens. Saturation = total load / total capacity,
where capacity is `maxConcurrency` (or `maxTokenConcurrency`) per endpoint; no endpoints → 1.0. Hysteresis as
in `utilization-detector`.

The counters live in the `inflight-load-producer` (which the config builder creates when this detector is
used); the detector finds it through the plugin handle on first use. As a filter it keeps endpoints with
load < max x (1 + headroom) and may return an empty list (no fail-open), as upstream.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from epp.framework.cycle import CycleState
from epp.framework.handle import Handle
from epp.framework.plugins import PluginKind
from epp.framework.types import Endpoint, InferenceRequest, TypedName
from epp.plugins.datakeys import INFLIGHT_LOAD, INFLIGHT_LOAD_KEY, InFlightLoad
from epp.plugins.producers.inflight_load import TYPE_NAME as PRODUCER_TYPE
from epp.plugins.producers.inflight_load import InFlightLoadProducer
from epp.plugins.saturation.hysteresis import SaturationLatch
from epp.plugins.saturation.utilization import DEFAULT_HYSTERESIS
from epp.registry import PluginType

__all__ = ["CONCURRENCY_DETECTOR", "ConcurrencyDetector", "ConcurrencyDetectorParams", "ConcurrencyMode"]

log = logging.getLogger(__name__)

TYPE_NAME = "concurrency-detector"

_NO_LOAD = InFlightLoad()


class ConcurrencyMode(StrEnum):
    REQUESTS = "requests"
    TOKENS = "tokens"


class ConcurrencyDetectorParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    concurrencyMode: ConcurrencyMode = Field(
        default=ConcurrencyMode.REQUESTS,
        description="Count in-flight `requests` or estimated in-flight `tokens`.",
    )
    maxConcurrency: int = Field(
        default=100,
        gt=0,
        description="Requests mode: in-flight requests per endpoint at saturation (about 110% of the "
        "engine's max batch size is a good start).",
    )
    maxTokenConcurrency: int = Field(
        default=1_000_000,
        gt=0,
        description="Tokens mode: in-flight estimated tokens per endpoint at saturation.",
    )
    headroom: float = Field(
        default=0.0, ge=0.0, description="Filter only: endpoints pass while load < max x (1 + headroom)."
    )
    hysteresis: float = Field(
        default=DEFAULT_HYSTERESIS,
        ge=0.0,
        lt=1.0,
        description="Once saturated (>= 1.0), stay saturated until saturation drops below 1 - hysteresis. "
        "0 = no hysteresis (upstream).",
    )


class ConcurrencyDetector:
    __slots__ = ("_handle", "_producer", "_warned", "headroom", "latch", "limit", "mode", "typed_name")

    def __init__(
        self,
        typed_name: TypedName,
        *,
        mode: ConcurrencyMode = ConcurrencyMode.REQUESTS,
        limit: int = 100,
        headroom: float = 0.0,
        latch: SaturationLatch | None = None,
        producer: InFlightLoadProducer | None = None,
        handle: Handle | None = None,
    ) -> None:
        self.typed_name = typed_name
        self.mode = mode
        self.limit = limit
        self.headroom = headroom
        self.latch = latch if latch is not None else SaturationLatch(DEFAULT_HYSTERESIS)
        self._producer = producer
        self._handle = handle
        self._warned = False

    def _source(self) -> InFlightLoadProducer | None:
        if self._producer is None and self._handle is not None:
            self._producer = _find_producer(self._handle)
            if self._producer is None and not self._warned:
                self._warned = True
                log.warning(
                    "%s: no %s in the config, so in-flight load reads as zero and the pool never saturates",
                    self.typed_name,
                    PRODUCER_TYPE,
                )
        return self._producer

    def _amount(self, load: InFlightLoad) -> int:
        return load.requests if self.mode is ConcurrencyMode.REQUESTS else load.tokens

    def saturation(self, endpoints: Sequence[Endpoint], now: float) -> float:
        if not endpoints:
            return self.latch.apply(endpoints, 1.0)
        producer = self._source()
        total = 0
        if producer is not None:
            for e in endpoints:
                total += self._amount(producer.load(e.key))
        raw = total / (self.limit * len(endpoints))
        return self.latch.apply(endpoints, raw)

    def filter(
        self, cycle: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Sequence[Endpoint]:
        loads: Mapping[str, InFlightLoad] | None = cycle.read(INFLIGHT_LOAD_KEY)
        if loads is None:
            producer = self._source()
            loads = producer.snapshot() if producer is not None else {}
        cap = self.limit * (1.0 + self.headroom)
        return [e for e in endpoints if self._amount(loads.get(e.key, _NO_LOAD)) < cap]


def _find_producer(handle: Handle) -> InFlightLoadProducer | None:
    """The in-flight producer by its default name, else any instance the handle knows."""
    try:
        found = handle.plugin(PRODUCER_TYPE)
    except KeyError:
        found = None
    if isinstance(found, InFlightLoadProducer):
        return found
    plugins = getattr(handle, "plugins", None)
    if isinstance(plugins, Mapping):
        for plugin in plugins.values():
            if isinstance(plugin, InFlightLoadProducer):
                return plugin
    return None


def _factory(name: str, params: ConcurrencyDetectorParams, handle: Handle) -> ConcurrencyDetector:
    if params.headroom > 1.0:
        log.warning("concurrency-detector %r: headroom %.2f is above 1.0", name, params.headroom)
    limit = (
        params.maxConcurrency
        if params.concurrencyMode is ConcurrencyMode.REQUESTS
        else params.maxTokenConcurrency
    )
    return ConcurrencyDetector(
        TypedName(TYPE_NAME, name),
        mode=params.concurrencyMode,
        limit=limit,
        headroom=params.headroom,
        latch=SaturationLatch(params.hysteresis),
        producer=_find_producer(handle),
        handle=handle,
    )


CONCURRENCY_DETECTOR = PluginType(
    type_name=TYPE_NAME,
    params_model=ConcurrencyDetectorParams,
    factory=_factory,
    kinds=frozenset({PluginKind.SATURATION_DETECTOR, PluginKind.FILTER}),
    description="Pool saturation from in-flight requests or tokens per endpoint (total load / total "
    "capacity), with hysteresis; as a filter keeps endpoints under the limit (may return none).",
    consumes=frozenset({INFLIGHT_LOAD}),
    stateful=True,
)
