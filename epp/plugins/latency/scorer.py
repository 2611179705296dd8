"""`latency-scorer`: score endpoints by predicted latency headroom (SLO - predicted), as upstream.

With predictions (`LatencyPredictionInfo` from `predicted-latency-producer`):

- endpoints meeting both SLOs (headroom >= 0 in TTFT and TPOT) are the only ones scored when there are any;
- when none does: idle endpoints (nothing in flight from this EPP) are the only ones scored if any;
  else the least severe deficit bucket (only TPOT short, then only TTFT short, then both);
- within the scored set each |headroom| is min-max normalised and blended
  `ttftWeight x nTTFT + tpotWeight x nTPOT` (weights normalised; a dimension whose range is 0 gives its
  weight to the other); `least` scores `(1 - blend)`, bin-packing near the SLO, `most` scores `blend`
  (positive headroom only: a deficit always uses `least`); scores are quantised to 1/100 as upstream's.

Without an SLO header every headroom is negative (-predicted), so this ranks by predicted latency.
With `accuracyScaling` (ours; off by default, as upstream) every score is multiplied by
`max(0, 1 - ttft_error)`, the producer's recent median TTFT error: a model that is often wrong (deep,
bursty queues) gives way to the other scorers of the profile, one that is right keeps its weight.
Without predictions (no model yet) it falls back to a composite of free KV cache, relative queue and the
prefix score (`composite*Weight`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from epp.framework.cycle import CycleState
from epp.framework.handle import Handle
from epp.framework.plugins import PluginKind, ScorerCategory
from epp.framework.types import Endpoint, InferenceRequest, TypedName
from epp.plugins.datakeys import PREFIX_CACHE_MATCH_INFO, PREFIX_CACHE_MATCH_INFO_KEY
from epp.plugins.latency.info import LATENCY_PREDICTION_INFO, LATENCY_PREDICTION_INFO_KEY
from epp.registry import PluginType

__all__ = ["LATENCY_SCORER", "LatencyScorer", "LatencyScorerParams"]

TYPE_NAME = "latency-scorer"
_W_MAX = 100
_EPS = 1e-9


class LatencyScorerParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    ttftWeight: float = Field(default=0.8, ge=0.0, description="Weight of TTFT headroom in the blend.")
    tpotWeight: float = Field(default=0.2, ge=0.0, description="Weight of TPOT headroom in the blend.")
    headroomSelectionStrategy: Literal["least", "most"] = Field(
        default="least",
        description="least: prefer endpoints closest to the SLO (bin-packing); most: the most headroom.",
    )
    compositeKVWeight: float = Field(
        default=1.0, ge=0.0, description="Without predictions: weight of free KV cache."
    )
    compositeQueueWeight: float = Field(
        default=1.0, ge=0.0, description="Without predictions: weight of the relative queue length."
    )
    compositePrefixWeight: float = Field(
        default=1.0, ge=0.0, description="Without predictions: weight of the prefix-cache score."
    )
    accuracyScaling: bool = Field(
        default=False,
        description="Multiply the scores by 1 - the producer's recent median TTFT error (floored at 0), so "
        "an inaccurate model weighs less against the profile's other scorers.",
    )


class LatencyScorer:
    __slots__ = ("params", "typed_name")

    def __init__(self, typed_name: TypedName, params: LatencyScorerParams | None = None) -> None:
        self.typed_name = typed_name
        self.params = params or LatencyScorerParams()

    @property
    def category(self) -> ScorerCategory:
        return ScorerCategory.BALANCE

    def score(
        self, cycle: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Mapping[str, float]:
        info = cycle.read(LATENCY_PREDICTION_INFO_KEY)
        index = info.index if info is not None else None
        if info is None or not index or not any(e.key in index for e in endpoints):
            return self._composite(cycle, endpoints)
        scores = dict.fromkeys((e.key for e in endpoints), 0.0)
        h_ttft, h_tpot = info.ttft_headroom_ms, info.tpot_headroom_ms
        rows = [(e.key, h_ttft[i], h_tpot[i]) for e in endpoints if (i := index.get(e.key)) is not None]
        self._score(rows, info.dispatched, scores)
        if self.params.accuracyScaling:
            confidence = max(0.0, 1.0 - info.ttft_error)
            return {key: score * confidence for key, score in scores.items()}
        return scores

    def _score(
        self, rows: list[tuple[str, float, float]], dispatched: Mapping[str, int], scores: dict[str, float]
    ) -> None:
        positive = [r for r in rows if r[1] >= 0.0 and r[2] >= 0.0]
        if positive:
            self._score_bucket(positive, scores, force_least=False)
            return
        idle = [r for r in rows if not dispatched.get(r[0])]
        if idle:
            self._score_bucket(idle, scores, force_least=True)
            return
        tpot_only = [r for r in rows if r[1] >= 0.0 > r[2]]
        ttft_only = [r for r in rows if r[2] >= 0.0 > r[1]]
        both = [r for r in rows if r[1] < 0.0 and r[2] < 0.0]
        for bucket in (tpot_only, ttft_only, both):
            if bucket:
                self._score_bucket(bucket, scores, force_least=True)
                break

    def _score_bucket(
        self, rows: list[tuple[str, float, float]], scores: dict[str, float], *, force_least: bool
    ) -> None:
        p = self.params
        total = p.ttftWeight + p.tpotWeight
        alpha, beta = (p.ttftWeight / total, p.tpotWeight / total) if total > 0.0 else (1.0, 0.0)
        ttft = [abs(r[1]) for r in rows]
        tpot = [abs(r[2]) for r in rows]
        min_ttft, min_tpot = min(ttft), min(tpot)
        ttft_range, tpot_range = max(ttft) - min_ttft, max(tpot) - min_tpot
        if ttft_range <= _EPS < tpot_range:
            alpha, beta = 0.0, 1.0
        elif tpot_range <= _EPS < ttft_range:
            alpha, beta = 1.0, 0.0
        most = p.headroomSelectionStrategy == "most" and not force_least
        for (key, _, _), a, b in zip(rows, ttft, tpot, strict=True):
            n_ttft = (a - min_ttft) / ttft_range if ttft_range > _EPS else 0.5
            n_tpot = (b - min_tpot) / tpot_range if tpot_range > _EPS else 0.5
            blend = alpha * n_ttft + beta * n_tpot
            weight = int((blend if most else 1.0 - blend) * _W_MAX) + 1
            scores[key] = weight / _W_MAX

    def _composite(self, cycle: CycleState, endpoints: Sequence[Endpoint]) -> dict[str, float]:
        p = self.params
        wkv, wq, wprefix = p.compositeKVWeight, p.compositeQueueWeight, p.compositePrefixWeight
        total = wkv + wq + wprefix
        if total <= 0.0:  # no fallback: every endpoint the same, the other scorers decide
            return {e.key: 0.0 for e in endpoints}
        wkv, wq, wprefix = wkv / total, wq / total, wprefix / total
        max_q = max((e.metrics.waiting_queue_size for e in endpoints), default=0)
        prefix = cycle.read(PREFIX_CACHE_MATCH_INFO_KEY)
        prefix_scores = prefix.scores if prefix is not None else {}
        out: dict[str, float] = {}
        for e in endpoints:
            rel_queue = (max_q - e.metrics.waiting_queue_size) / max_q if max_q > 0 else 1.0
            kv_free = 1.0 - e.metrics.kv_cache_usage
            composite = wkv * kv_free + wq * rel_queue + wprefix * prefix_scores.get(e.key, 0.0)
            out[e.key] = round(_W_MAX * composite) / _W_MAX
        return out


def _factory(name: str, params: LatencyScorerParams, handle: Handle) -> LatencyScorer:
    return LatencyScorer(TypedName(TYPE_NAME, name), params)


LATENCY_SCORER = PluginType(
    type_name=TYPE_NAME,
    params_model=LatencyScorerParams,
    factory=_factory,
    kinds=frozenset({PluginKind.SCORER}),
    description="Scores endpoints by predicted TTFT/TPOT headroom against the request's SLO (by predicted "
    "latency without one); a load composite until there are predictions.",
    consumes=frozenset({LATENCY_PREDICTION_INFO, PREFIX_CACHE_MATCH_INFO}),
)
