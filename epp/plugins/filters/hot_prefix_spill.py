"""`hot-prefix-spill-filter`: prefix affinity that spills a hot prefix to more endpoints, and shrinks back.

Consistent hashing with bounded loads, applied to prefix groups. For a request whose prompt prefix is
already cached somewhere:

1. *Holders* are the candidates whose prefix score (matched / total blocks) is at least
   `affinityThreshold`. They are put in a stable preference order: longest match first, then a rendezvous
   hash of (the deepest block the best holder matched, the endpoint key), so every request of one prefix
   group sees the same order.
2. An endpoint is *hot* when its load is above `loadFactor x mean load + loadHeadroom` (mean over all
   candidates), or when `maxWaitingQueue` > 0 and its waiting requests reach it. Load (`loadSignal`):
   `inflight` = the larger of the EPP's in-flight requests to it (`InFlightLoad`) and its scraped running +
   waiting requests; `waiting` = the larger of the EPP's requests to it without a first token yet
   (`PrefillLoad`) and its scraped waiting queue. Waiting requests = the larger of those two numbers.
3. The request keeps the holders that are not hot, in that order: with `preferFewest`, only the first ones
   up to and including the first holder whose load is at most the mean (the fewest holders that include
   spare capacity); otherwise all of them. The scorers then choose among the kept holders.
4. If every holder is hot, it spills: the first `spillWidth` non-holders that are not hot, in the same
   stable order (longest partial match first), are kept instead; whichever is picked caches the prefix and
   becomes a holder for the next requests. If every candidate is hot, the holders are kept.

So demand above what one endpoint can take overflows to the next endpoint of the group's order, and with
`preferFewest` the group returns to its first holder as soon as that one has spare capacity again (the
other copies then age out of their caches). Requests without a holder pass unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import xxhash
from pydantic import BaseModel, ConfigDict, Field

from epp.framework.cycle import CycleState
from epp.framework.handle import Handle
from epp.framework.plugins import PluginKind
from epp.framework.types import Endpoint, InferenceRequest, TypedName
from epp.plugins.datakeys import (
    INFLIGHT_LOAD,
    INFLIGHT_LOAD_KEY,
    PREFIX_CACHE_MATCH_INFO,
    PREFIX_CACHE_MATCH_INFO_KEY,
    InFlightLoad,
    PrefixCacheMatchInfo,
)
from epp.plugins.producers.prefill_load import PREFILL_LOAD, PREFILL_LOAD_KEY, PrefillLoadSnapshot
from epp.registry import PluginType

__all__ = [
    "HOT_PREFIX_SPILL_FILTER",
    "HotPrefixSpillFilter",
    "HotPrefixSpillParams",
    "inflight_load",
    "rendezvous",
    "waiting_load",
]

TYPE_NAME = "hot-prefix-spill-filter"

_MASK = (1 << 64) - 1


class HotPrefixSpillParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    affinityThreshold: float = Field(
        default=0.5,
        gt=0.0,
        le=1.0,
        description="Minimum prefix score (matched / total blocks) for an endpoint to count as a holder.",
    )
    loadSignal: Literal["inflight", "waiting"] = Field(
        default="inflight",
        description="inflight: in-flight requests (EPP) or scraped running + waiting, the larger; waiting: "
        "requests without a first token (EPP) or the scraped waiting queue, the larger.",
    )
    loadFactor: float = Field(
        default=1.5, ge=1.0, description="An endpoint is hot above loadFactor x the mean load + loadHeadroom."
    )
    loadHeadroom: float = Field(
        default=2.0, ge=0.0, description="Absolute slack, in requests, added to the hot threshold."
    )
    maxWaitingQueue: int = Field(
        default=0, ge=0, description="If > 0, an endpoint with this many waiting requests is hot too."
    )
    spillWidth: int = Field(
        default=1, ge=1, description="How many non-holders are admitted when every holder is hot."
    )
    preferFewest: bool = Field(
        default=True,
        description="Keep only the first non-hot holders up to one with spare capacity (the group shrinks "
        "back to as few endpoints as its load allows); false keeps every non-hot holder.",
    )


def _mix(x: int) -> int:
    """splitmix64's finaliser: a cheap, well-spread 64-bit mix."""
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & _MASK
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB & _MASK
    return x ^ (x >> 31)


def rendezvous(group: int, endpoint_key: str) -> int:
    """The rendezvous (highest-random-weight) rank of an endpoint for a group: stable and well spread."""
    return _mix((group ^ xxhash.xxh64_intdigest(endpoint_key.encode())) & _MASK)


def inflight_load(endpoint: Endpoint, inflight: Mapping[str, InFlightLoad] | None) -> float:
    """The larger of the EPP's in-flight requests and the scraped running + waiting requests."""
    m = endpoint.metrics
    scraped = m.running_requests_size + m.waiting_queue_size
    own = inflight.get(endpoint.key) if inflight is not None else None
    return float(max(scraped, own.requests if own is not None else 0))


def waiting_load(endpoint: Endpoint, snapshot: PrefillLoadSnapshot | None) -> float:
    """The larger of the EPP's requests without a first token yet and the scraped waiting queue."""
    own = snapshot.load(endpoint.key).pending_requests if snapshot is not None else 0
    return float(max(own, endpoint.metrics.waiting_queue_size))


class HotPrefixSpillFilter:
    __slots__ = ("params", "typed_name")

    def __init__(self, typed_name: TypedName, params: HotPrefixSpillParams | None = None) -> None:
        self.typed_name = typed_name
        self.params = params or HotPrefixSpillParams()

    def filter(
        self, cycle: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Sequence[Endpoint]:
        info = cycle.read(PREFIX_CACHE_MATCH_INFO_KEY)
        if info is None or not info.scores or len(endpoints) < 2:
            return endpoints
        p = self.params
        scores = info.scores
        holders = [e for e in endpoints if scores.get(e.key, 0.0) >= p.affinityThreshold]
        if not holders:
            return endpoints
        snapshot = cycle.read(PREFILL_LOAD_KEY)
        if p.loadSignal == "waiting":
            loads = {e.key: waiting_load(e, snapshot) for e in endpoints}
        else:
            inflight = cycle.read(INFLIGHT_LOAD_KEY)
            loads = {e.key: inflight_load(e, inflight) for e in endpoints}
        mean = sum(loads.values()) / len(loads)
        limit = p.loadFactor * mean + p.loadHeadroom
        max_queue = p.maxWaitingQueue
        group = _group_key(info, holders)

        def hot(e: Endpoint) -> bool:
            if loads[e.key] > limit:
                return True
            return max_queue > 0 and waiting_load(e, snapshot) >= max_queue

        def order(e: Endpoint) -> tuple[int, int]:
            return (-info.match_blocks(e.key), -rendezvous(group, e.key))

        cool = sorted((e for e in holders if not hot(e)), key=order)
        if cool:
            if not p.preferFewest:
                return cool
            for i, e in enumerate(cool):
                if loads[e.key] <= mean:
                    return cool[: i + 1]
            return cool
        held = {e.key for e in holders}
        spill = sorted((e for e in endpoints if e.key not in held and not hot(e)), key=order)
        if not spill:
            return holders
        return spill[: p.spillWidth]


def _group_key(info: PrefixCacheMatchInfo, holders: Sequence[Endpoint]) -> int:
    """The hash of the deepest block the best holder matched: it names the prefix group."""
    best = max(holders, key=lambda e: info.match_blocks(e.key))
    group = info.group_for(best.key)
    depth = info.match_blocks(best.key)
    if group is None or depth <= 0 or not group.hashes:
        return 0
    return group.hashes[min(depth, len(group.hashes)) - 1]


def _factory(name: str, params: HotPrefixSpillParams, handle: Handle) -> HotPrefixSpillFilter:
    return HotPrefixSpillFilter(TypedName(TYPE_NAME, name), params)


HOT_PREFIX_SPILL_FILTER = PluginType(
    type_name=TYPE_NAME,
    params_model=HotPrefixSpillParams,
    factory=_factory,
    kinds=frozenset({PluginKind.FILTER}),
    description="Prefix affinity with bounded load: keeps the non-hot holders of the prompt's prefix (as few "
    "as have spare capacity), spills to the next endpoints of the group's stable order when all are hot.",
    consumes=frozenset({PREFIX_CACHE_MATCH_INFO, INFLIGHT_LOAD, PREFILL_LOAD}),
)
