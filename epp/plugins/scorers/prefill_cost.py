"""`prefill-cost-scorer`: prefer the endpoint where this request costs least to serve, Dynamo-style.

Every candidate gets an estimated cost in prompt-token equivalents (one unit = the engine time to prefill
one token):

    uncached = max(0, input_tokens - matched_blocks x block_size)        this request's prefill there
    queued   = max(ledger requests without a first token, scraped waiting)
    pending  = max(ledger pending prefill tokens, scraped waiting x mean uncached tokens per request)
    decoding = max(ledger requests past their first token, scraped running)
    kv       = kvPressureTokens x clamp((kv_usage - kvPressureStart) / (1 - kvPressureStart), 0, 1)

    cost = (prefillWeight + missPenaltyPerQueued x queued) x uncached
         + queueWeight x pending + decodeTokensPerRequest x decoding + kv

multiplied by the endpoint's hardware slowdown (`PrefillLoad.slowdown`: its class's measured seconds per
prefill token over the fastest candidate class's; 1.0 on a homogeneous pool), and scores
`(min_cost + costFloorTokens) / (cost + costFloorTokens)`: 1.0 for the cheapest candidate,
falling towards 0 as an endpoint costs many times more; the floor keeps a few tokens of difference between
nearly idle endpoints from looking like a large one.

Why the miss term weighs more than the queue term: the queue term is this request's wait; its own prefill
delays it *and* everyone queued behind it on that engine (default `prefillWeight` 2, plus one more unit
per request already queued there, which will also wait out this prefill). With weight 1 the greedy choice
recomputes prefixes whenever queues fluctuate, and under overload that extra work feeds the queues it
fled (measured: `docs/benchmarks.md`, "Scheduling quality plugins").

The ledger data (`PrefillLoad`) comes from `prefill-load-producer`: exact and instantaneous for this EPP's
own traffic. The scraped gauges (`useMetrics`) cover traffic from elsewhere (other EPP replicas) at the
price of scrape lag; the larger value wins. The prefix match comes from whichever producer writes
`PrefixCacheMatchInfo` (approximate or precise).

So a cheap cache hit is not sent to wait behind long uncached prefills (their tokens are pending on that
endpoint), and a prefix group spills to another endpoint only when the queue on its holders costs more
than prefilling the prefix elsewhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from epp.framework.cycle import CycleState
from epp.framework.handle import Handle
from epp.framework.plugins import PluginKind, ScorerCategory
from epp.framework.types import Endpoint, InferenceRequest, TypedName
from epp.plugins.datakeys import PREFIX_CACHE_MATCH_INFO, PREFIX_CACHE_MATCH_INFO_KEY
from epp.plugins.producers.prefill_ledger import NO_LOAD
from epp.plugins.producers.prefill_load import PREFILL_LOAD, PREFILL_LOAD_KEY, matched_tokens
from epp.registry import PluginType

__all__ = ["PREFILL_COST_SCORER", "PrefillCostParams", "PrefillCostScorer"]

TYPE_NAME = "prefill-cost-scorer"


class PrefillCostParams(BaseModel):
    """Parameters of `prefill-cost-scorer` (costs are in prompt-token equivalents)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prefillWeight: float = Field(
        default=2.0, ge=0.0, description="Weight of this request's own uncached prompt tokens on an endpoint."
    )
    queueWeight: float = Field(
        default=1.0, ge=0.0, description="Weight of the prefill tokens already queued ahead on the endpoint."
    )
    missPenaltyPerQueued: float = Field(
        default=1.0,
        ge=0.0,
        description="Extra weight of this request's uncached tokens per request queued on the endpoint "
        "(the requests its prefill will delay).",
    )
    decodeTokensPerRequest: float = Field(
        default=16.0,
        ge=0.0,
        description="Cost of each request decoding on the endpoint, in prompt tokens (step time it adds).",
    )
    kvPressureStart: float = Field(
        default=0.9, ge=0.0, lt=1.0, description="KV-cache usage above which the KV pressure cost starts."
    )
    kvPressureTokens: float = Field(
        default=4096.0, ge=0.0, description="KV pressure cost at 100% KV-cache usage (linear from the start)."
    )
    costFloorTokens: float = Field(
        default=256.0,
        gt=0.0,
        description="Added to every cost before normalising, so small absolute differences score close.",
    )
    useMetrics: bool = Field(
        default=True,
        description="Also read the scraped waiting/running gauges (traffic from other EPP replicas); the "
        "larger of ledger and metrics wins.",
    )


class PrefillCostScorer:
    """Scorer over `PrefixCacheMatchInfo` and `PrefillLoad`."""

    category: ClassVar[ScorerCategory] = ScorerCategory.BALANCE

    def __init__(self, typed_name: TypedName, params: PrefillCostParams | None = None) -> None:
        self.typed_name = typed_name
        self.params = params or PrefillCostParams()

    def costs(
        self, cycle: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> dict[str, float]:
        """The estimated cost of serving `request` on each endpoint, in prompt-token equivalents."""
        p = self.params
        matched = matched_tokens(cycle.read(PREFIX_CACHE_MATCH_INFO_KEY))
        snapshot = cycle.read(PREFILL_LOAD_KEY)
        loads = snapshot.loads if snapshot is not None else {}
        mean_uncached = snapshot.mean_uncached_tokens if snapshot is not None else 0.0
        slowdown = snapshot.slowdown if snapshot is not None else {}
        tokens = request.estimated_input_tokens
        miss_weight, per_queued = p.prefillWeight, p.missPenaltyPerQueued
        queue_weight, per_decoding = p.queueWeight, p.decodeTokensPerRequest
        use_metrics = p.useMetrics
        kv_start, kv_tokens = p.kvPressureStart, p.kvPressureTokens
        out: dict[str, float] = {}
        for e in endpoints:
            key = e.key
            held = matched.get(key, 0)
            uncached = tokens - held if held < tokens else 0
            load = loads.get(key, NO_LOAD)
            pending = float(load.pending_prefill_tokens)
            queued = float(load.pending_requests)
            decoding = float(load.decoding_requests)
            m = e.metrics
            if use_metrics:
                waiting = m.waiting_queue_size
                if waiting * mean_uncached > pending:
                    pending = waiting * mean_uncached
                if waiting > queued:
                    queued = float(waiting)
                if m.running_requests_size > decoding:
                    decoding = float(m.running_requests_size)
            cost = (
                (miss_weight + per_queued * queued) * uncached
                + queue_weight * pending
                + per_decoding * decoding
            )
            usage = m.kv_cache_usage
            if kv_tokens > 0.0 and usage > kv_start:
                pressure = (usage - kv_start) / (1.0 - kv_start)
                cost += kv_tokens * (pressure if pressure < 1.0 else 1.0)
            if slowdown:
                cost *= slowdown.get(key, 1.0)
            out[key] = cost
        return out

    def score(
        self, cycle: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Mapping[str, float]:
        costs = self.costs(cycle, request, endpoints)
        if not costs:
            return {}
        floor = self.params.costFloorTokens
        best = min(costs.values()) + floor
        return {k: best / (c + floor) for k, c in costs.items()}


def _factory(name: str, params: PrefillCostParams, handle: Handle) -> PrefillCostScorer:
    return PrefillCostScorer(TypedName(TYPE_NAME, name), params)


PREFILL_COST_SCORER = PluginType(
    type_name=TYPE_NAME,
    params_model=PrefillCostParams,
    factory=_factory,
    kinds=frozenset({PluginKind.SCORER}),
    description="Scores endpoints by the estimated time to first token: uncached prompt tokens there plus "
    "the prefill queued ahead and the decode load (Dynamo-style cost), min-cost normalised.",
    consumes=frozenset({PREFIX_CACHE_MATCH_INFO, PREFILL_LOAD}),
)
