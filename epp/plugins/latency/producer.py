"""`predicted-latency-producer`: per candidate endpoint, predicted TTFT and TPOT, learned online in-process.

Upstream's producer calls XGBoost sidecars (a training server and prediction servers over HTTP). Here the
model lives in the EPP: the hooks collect training samples from the requests this EPP routes, a background
loop refits a ridge regression per group (per endpoint, or per hardware class when `hardwareClassLabel`
names a pod label) and swaps in an immutable `ModelSnapshot`; PrepareData predicts for every candidate in
pure Python from per-endpoint cached terms (a few microseconds per endpoint).

Features (`epp.plugins.latency.model.FEATURES`): this request's uncached prompt tokens on the endpoint
(input minus the blocks the prefix producer matched there), its input and requested output tokens, the
uncached prompt tokens this EPP sent there that have no first token yet and the requests it has in
flight there (`InFlightTracker`), and the scraped waiting / running requests and KV-cache use.

Targets, measured from dispatch (PreRequest), as upstream: with `streamingMode` TTFT is the first response
byte of a streamed response and TPOT (end - first byte) / (completion tokens - 1); without it TTFT is the
whole response time (upstream's e2e training) and TPOT is not modelled (neutral for the consumers).

Each process has its own model (with `--workers N`: trained on the requests that worker routed).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from epp.framework.cycle import CycleState, StateKey
from epp.framework.handle import Handle, NullPluginMetrics, PluginMetrics
from epp.framework.plugins import PluginKind
from epp.framework.types import Endpoint, InferenceRequest, ResponseInfo, SchedulingResult, TypedName
from epp.plugins.datakeys import PREFIX_CACHE_MATCH_INFO, PREFIX_CACHE_MATCH_INFO_KEY
from epp.plugins.latency.info import (
    LATENCY_PREDICTION_INFO,
    LATENCY_PREDICTION_INFO_KEY,
    LatencyPredictionInfo,
    RequestSlo,
    request_slo,
)
from epp.plugins.latency.model import (
    EMPTY_SNAPSHOT,
    GroupModel,
    ModelSnapshot,
    SampleBuffers,
    TargetWeights,
    concat,
    fit_group,
)
from epp.plugins.latency.tracker import InFlightTracker, TrackedRequest
from epp.plugins.producers.prefill_load import matched_tokens, uncached_tokens
from epp.plugins.saturation.params import GoDuration
from epp.registry import PluginType

__all__ = [
    "PREDICTED_LATENCY_PRODUCER",
    "PredictedLatencyParams",
    "PredictedLatencyProducer",
    "requested_output_tokens",
]

TYPE_NAME = "predicted-latency-producer"

#: At most this often (seconds) PrepareData looks for requests whose first token came.
SWEEP_INTERVAL = 0.002
#: The pooled model is fitted on at most this many samples per group x groups... capped at this total.
POOLED_CAP = 8192


class PredictedLatencyParams(BaseModel):
    """Upstream's parameters, and ours for the in-process model (`hardwareClassLabel` onwards)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    samplingMean: float = Field(
        default=1000.0,
        gt=0.0,
        description="Accepted for compatibility: upstream samples decode tokens for TPOT predictions; here "
        "TPOT is measured over the whole response.",
    )
    maxDecodeTokenSamplesForPrediction: int = Field(
        default=0, ge=0, description="Accepted for compatibility (see samplingMean)."
    )
    sloBufferFactor: float = Field(
        default=1.0, gt=0.0, description="The TPOT SLO is multiplied by this before comparing predictions."
    )
    contextTTL: str | int | None = Field(
        default=None,
        description="Accepted for compatibility: upstream expires per-request state after it; here the "
        "completion hook runs exactly once per request.",
    )
    streamingMode: bool = Field(
        default=False,
        description="true: TTFT is the first token of streamed responses and TPOT is modelled; false: TTFT "
        "is the whole response time and TPOT is neutral.",
    )
    endpointRoleLabel: str = Field(
        default="",
        description="Pod label with the P/D role; endpoints whose value is 'prefill' get a neutral TPOT.",
    )
    predictInPrepareData: bool = Field(
        default=True, description="false: collect training data only, publish no predictions."
    )
    hardwareClassLabel: str = Field(
        default="",
        description="Pod label naming the hardware class: one model per value. Empty: one model per "
        "endpoint. Either way a pooled model covers groups with too few samples.",
    )
    retrainInterval: GoDuration = Field(
        default=1.0, gt=0.0, description="How often the model is refitted on new samples (a Go duration)."
    )
    minSamples: int = Field(
        default=32, ge=4, description="Samples a group needs before it gets a model of its own."
    )
    maxSamples: int = Field(
        default=2048, ge=16, description="Most recent samples kept per group (older ones are forgotten)."
    )


def requested_output_tokens(request: InferenceRequest) -> int:
    """`max_tokens` / `max_completion_tokens` / `max_output_tokens` of the body (0: not given)."""
    body = request.body
    for key in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return 0


@dataclass(slots=True)
class _Dispatch:
    """What PreRequest remembers of a request until it completes."""

    entry: TrackedRequest
    group: str
    row: tuple[float, ...]
    at: float
    predicted_ttft_ms: float
    predicted_tpot_ms: float
    slo: RequestSlo
    model: str
    target_model: str


_NO_MODEL = (None,)  # cache entry of an endpoint without a model


class PredictedLatencyProducer:
    """DataProducer + PreRequest + ResponseReceived + ResponseComplete + BackgroundTask + EndpointObserver."""

    def __init__(
        self,
        typed_name: TypedName,
        params: PredictedLatencyParams | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        metrics: PluginMetrics | None = None,
    ) -> None:
        self.typed_name = typed_name
        self.params = p = params or PredictedLatencyParams()
        self._clock = clock
        self._metrics = metrics or NullPluginMetrics()
        self.snapshot: ModelSnapshot = EMPTY_SNAPSHOT
        self.buffers = SampleBuffers(p.maxSamples)
        # endpoint key -> (metrics it was computed from, TTFT state term, TTFT uncached/input/output weights,
        # TPOT state term, TPOT uncached/input/output weights, prefill role); swapped with the snapshot
        self._cache: dict[str, tuple[Any, ...]] = {}
        self.tracker = InFlightTracker(self._forget_features)
        self._last_sweep = 0.0
        self._fit_lock = threading.Lock()
        self._generation = 0
        self._tpot_slos: dict[str, Counter[float]] = {}  # endpoint -> TPOT SLOs (ms) running there
        self._tpot_min: dict[str, float] = {}
        self._dispatch_key: StateKey[_Dispatch] = StateKey(f"{TYPE_NAME}/{typed_name.name}")

    # ---- properties the pipeline reads ---------------------------------------------------------------

    @property
    def reads_first_byte(self) -> bool:
        """The first response byte ends a request's prefill (and is its TTFT in streaming mode)."""
        return True

    @property
    def reads_response_only(self) -> bool:
        return True

    # ---- prediction (request path) -------------------------------------------------------------------

    def group_of(self, endpoint: Endpoint) -> str:
        label = self.params.hardwareClassLabel
        return endpoint.labels.get(label, "") if label else endpoint.key

    def _forget_features(self, key: str) -> None:
        self._cache.pop(key, None)

    def _features(self, endpoint: Endpoint, snapshot: ModelSnapshot) -> tuple[Any, ...]:
        """The cached per-endpoint terms: the state part of each prediction and the request weights."""
        model = snapshot.model_for(self.group_of(endpoint))
        key = endpoint.key
        if model is None:
            entry: tuple[Any, ...] = (endpoint.metrics, *_NO_MODEL)
        else:
            state = self._state(endpoint)
            ttft = model.ttft
            tpot = model.tpot
            role = self.params.endpointRoleLabel
            prefill = bool(role) and endpoint.labels.get(role) == "prefill"
            entry = (
                endpoint.metrics,
                ttft[0] + _dot_state(ttft, state),
                ttft[1],
                ttft[2],
                ttft[3],
                0.0 if tpot is None else tpot[0] + _dot_state(tpot, state),
                0.0 if tpot is None else tpot[1],
                0.0 if tpot is None else tpot[2],
                0.0 if tpot is None else tpot[3],
                prefill,
            )
        self._cache[key] = entry
        return entry

    def _state(self, endpoint: Endpoint) -> tuple[float, float, float, float, float]:
        """The endpoint-state features (pending prefill tokens, waiting, running, KV use, in flight)."""
        key = endpoint.key
        m = endpoint.metrics
        return (
            float(self.tracker.pending_tokens.get(key, 0)),
            float(m.waiting_queue_size),
            float(m.running_requests_size),
            m.kv_cache_usage,
            float(self.tracker.inflight.get(key, 0)),
        )

    def prepare_data(
        self, cycle: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> None:
        if not self.params.predictInPrepareData:
            return
        now = self._clock()
        if now - self._last_sweep >= SWEEP_INTERVAL:
            self._last_sweep = now
            self.tracker.sweep()
        snapshot = self.snapshot
        if not snapshot.ready or not endpoints:
            return
        t0 = time.perf_counter()
        info = self.predict(request, endpoints, cycle.read(PREFIX_CACHE_MATCH_INFO_KEY), snapshot)
        if info is not None:
            cycle.write(LATENCY_PREDICTION_INFO_KEY, info)
            self._metrics.record_latency_prediction(
                request.model, request.target_model, time.perf_counter() - t0
            )

    def predict(
        self,
        request: InferenceRequest,
        endpoints: Sequence[Endpoint],
        prefix: Any,
        snapshot: ModelSnapshot | None = None,
    ) -> LatencyPredictionInfo | None:
        """Predictions for every candidate with a model (None: none has one)."""
        snapshot = snapshot or self.snapshot
        matched = matched_tokens(prefix) if prefix is not None else {}
        mget = matched.get
        cache = self._cache
        cget = cache.get
        inp = request.estimated_input_tokens
        out = requested_output_tokens(request)
        keys: list[str] = []
        ttfts: list[float] = []
        tpots: list[float] = []
        prefill: list[str] = []
        for e in endpoints:
            k = e.key
            c = cget(k)
            if c is None or c[0] is not e.metrics:
                c = self._features(e, snapshot)
            if c[1] is None:
                continue
            u = inp - mget(k, 0)
            if u < 0:
                u = 0
            t = c[1] + c[2] * u + c[3] * inp + c[4] * out
            d = c[5] + c[6] * u + c[7] * inp + c[8] * out
            keys.append(k)
            ttfts.append(t if t > 0.0 else 0.0)
            tpots.append(d if d > 0.0 else 0.0)
            if c[9]:
                prefill.append(k)
        if not keys:
            return None
        return self._info(request, keys, ttfts, tpots, prefill, snapshot)

    def _info(
        self,
        request: InferenceRequest,
        keys: list[str],
        ttfts: list[float],
        tpots: list[float],
        prefill: list[str],
        snapshot: ModelSnapshot,
    ) -> LatencyPredictionInfo:
        slo = request_slo(request.headers) if request.headers else request_slo({})
        p = self.params
        tpot_modelled = p.streamingMode and _has_tpot(snapshot)
        budget = slo.tpot_ms * p.sloBufferFactor
        budgets: dict[str, float] = {}
        if tpot_modelled and budget > 0.0 and self._tpot_min:
            factor = p.sloBufferFactor
            budgets = {k: m * factor for k, m in self._tpot_min.items() if m * factor < budget}
        return LatencyPredictionInfo(
            ttft_ms=dict(zip(keys, ttfts, strict=True)),
            tpot_ms=dict(zip(keys, tpots, strict=True)),
            slo=slo,
            tpot_budget_ms=budget,
            tpot_budgets=budgets,
            ttft_neutral=slo.present and slo.ttft_ms <= 0.0,
            all_tpot_neutral=not tpot_modelled or (slo.present and slo.tpot_ms <= 0.0),
            tpot_neutral=frozenset(prefill),
            dispatched=dict(self.tracker.inflight),
        )

    # ---- training data (response hooks) --------------------------------------------------------------

    def pre_request(self, cycle: CycleState, request: InferenceRequest, result: SchedulingResult) -> None:
        targets = result.targets
        if not targets or cycle.read(self._dispatch_key) is not None:
            return
        target = targets[0]
        key = target.key
        inp = request.estimated_input_tokens
        uncached = uncached_tokens(inp, cycle.read(PREFIX_CACHE_MATCH_INFO_KEY), key)
        row = (
            1.0,
            float(uncached),
            float(inp),
            float(requested_output_tokens(request)),
            *self._state(target),
        )
        predictions = cycle.read(LATENCY_PREDICTION_INFO_KEY)
        slo = predictions.slo if predictions is not None else request_slo(request.headers)
        entry = self.tracker.add(key, uncached)
        if slo.tpot_ms > 0.0:
            self._add_tpot_slo(key, slo.tpot_ms)
        cycle.write(
            self._dispatch_key,
            _Dispatch(
                entry,
                self.group_of(target),
                row,
                self._clock(),
                predictions.ttft_ms.get(key, 0.0) if predictions is not None else 0.0,
                predictions.tpot_ms.get(key, 0.0) if predictions is not None else 0.0,
                slo,
                request.model,
                request.target_model,
            ),
        )

    def response_received(
        self, cycle: CycleState, request: InferenceRequest, response: ResponseInfo, result: SchedulingResult
    ) -> None:
        dispatch = cycle.read(self._dispatch_key)
        if dispatch is not None:
            dispatch.entry.response = response

    def response_complete(
        self, cycle: CycleState, request: InferenceRequest, response: ResponseInfo, result: SchedulingResult
    ) -> None:
        dispatch = cycle.read(self._dispatch_key)
        if dispatch is None:
            return
        cycle.delete(self._dispatch_key)
        entry = dispatch.entry
        self.tracker.release(entry)
        if dispatch.slo.tpot_ms > 0.0:
            self._remove_tpot_slo(entry.endpoint, dispatch.slo.tpot_ms)
        if not response.complete or not 200 <= response.status < 300:
            return
        now = self._clock()
        if self.params.streamingMode:
            first = response.first_byte_at
            if not request.stream or first <= 0.0:
                return
            ttft = first - dispatch.at
            tokens = response.completion_tokens
            tpot = (now - first) / (tokens - 1) if tokens > 1 and now > first else 0.0
        else:
            ttft, tpot = now - dispatch.at, 0.0
        if ttft <= 0.0:
            return
        self.buffers.add(dispatch.group, dispatch.row, ttft * 1000.0, tpot * 1000.0)
        s = dispatch.slo
        self._metrics.record_latency_outcome(
            dispatch.model,
            dispatch.target_model,
            ttft=ttft,
            predicted_ttft=dispatch.predicted_ttft_ms / 1000.0,
            ttft_slo=s.ttft_ms / 1000.0,
            tpot=tpot,
            predicted_tpot=dispatch.predicted_tpot_ms / 1000.0 if tpot > 0.0 else 0.0,
            tpot_slo=s.tpot_ms / 1000.0,
        )

    def _add_tpot_slo(self, key: str, slo_ms: float) -> None:
        with self._fit_lock:
            slos = self._tpot_slos.setdefault(key, Counter())
            slos[slo_ms] += 1
            current = self._tpot_min.get(key)
            if current is None or slo_ms < current:
                self._tpot_min[key] = slo_ms

    def _remove_tpot_slo(self, key: str, slo_ms: float) -> None:
        with self._fit_lock:
            slos = self._tpot_slos.get(key)
            if slos is None:
                return
            slos[slo_ms] -= 1
            if slos[slo_ms] <= 0:
                del slos[slo_ms]
            if slos:
                self._tpot_min[key] = min(slos)
            else:
                del self._tpot_slos[key]
                self._tpot_min.pop(key, None)

    def endpoints_changed(self, keys: frozenset[str]) -> None:
        self.tracker.retain(keys)
        for key in [k for k in self._cache if k not in keys]:
            self._cache.pop(key, None)
        with self._fit_lock:
            for table in (self._tpot_slos, self._tpot_min):
                for key in [k for k in table if k not in keys]:
                    del table[key]
        if not self.params.hardwareClassLabel:
            self.buffers.retain(keys)

    # ---- training (background) -----------------------------------------------------------------------

    def retrain(self) -> bool:
        """Refit the groups with new samples and swap the snapshot; False when nothing was new."""
        stale = self.buffers.stale()
        if not stale:
            return False
        groups = dict(self.snapshot.groups)
        for group in stale:
            self._refit(group, groups)
        self._swap(groups)
        return True

    async def run(self) -> None:
        """Refit every `retrainInterval`, one group at a time (the event loop runs between groups)."""
        interval = self.params.retrainInterval
        while True:
            await asyncio.sleep(interval)
            stale = self.buffers.stale()
            if not stale:
                continue
            groups = dict(self.snapshot.groups)
            for group in stale:
                self._refit(group, groups)
                await asyncio.sleep(0)
            self._swap(groups)

    def _refit(self, group: str, groups: dict[str, GroupModel]) -> None:
        model = fit_group(self.buffers.take(group), self.params.minSamples)
        if model is not None:
            groups[group] = model

    def _swap(self, groups: dict[str, GroupModel]) -> None:
        live = set(self.buffers.groups())
        groups = {g: m for g, m in groups.items() if g in live}
        pooled = self._fit_pooled()
        self._generation += 1
        self._cache = {}
        self.snapshot = ModelSnapshot(self._generation, groups, pooled)

    def _fit_pooled(self) -> GroupModel | None:
        names = self.buffers.groups()
        if not names:
            return None
        share = max(self.params.minSamples, POOLED_CAP // len(names))
        parts = []
        for name in names:
            data = self.buffers.latest(name, share)
            if data is not None and data[0].shape[0]:
                parts.append(data)
        if not parts:
            return None
        return fit_group(concat(parts), self.params.minSamples)


def _dot_state(weights: TargetWeights, state: tuple[float, float, float, float, float]) -> float:
    return (
        weights[4] * state[0]
        + weights[5] * state[1]
        + weights[6] * state[2]
        + weights[7] * state[3]
        + weights[8] * state[4]
    )


def _has_tpot(snapshot: ModelSnapshot) -> bool:
    pooled = snapshot.pooled
    return (pooled is not None and pooled.tpot is not None) or any(
        m.tpot is not None for m in snapshot.groups.values()
    )


def _factory(name: str, params: PredictedLatencyParams, handle: Handle) -> PredictedLatencyProducer:
    return PredictedLatencyProducer(
        TypedName(TYPE_NAME, name), params, clock=handle.clock, metrics=handle.metrics
    )


PREDICTED_LATENCY_PRODUCER = PluginType(
    type_name=TYPE_NAME,
    params_model=PredictedLatencyParams,
    factory=_factory,
    kinds=frozenset(
        {
            PluginKind.DATA_PRODUCER,
            PluginKind.PRE_REQUEST,
            PluginKind.RESPONSE_RECEIVED,
            PluginKind.RESPONSE_COMPLETE,
        }
    ),
    description="Per candidate endpoint, predicted TTFT and TPOT (and the request's SLO headroom) from a "
    "model trained online in the EPP on the requests it routes (LatencyPredictionInfo).",
    consumes=frozenset({PREFIX_CACHE_MATCH_INFO}),
    produces=frozenset({LATENCY_PREDICTION_INFO}),
    stateful=True,
)
