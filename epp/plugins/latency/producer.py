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

Shared (SharedState) with the other processes routing for the pool (the workers of a pod, replicas in
active-active mode): each sends the training samples of the requests it saw complete and its per-endpoint
in-flight totals, so every process trains on the whole pod's traffic and its features count the whole
pod's load on each endpoint (with `--workers 2`, one worker alone sees half of both). A worker or a
replica that starts takes the recent samples of a running one (SharedSnapshot) and has a model within a
retrain interval instead of after `minSamples` completions of its own.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from epp.framework.cycle import CycleState, StateKey
from epp.framework.handle import Handle, NullPluginMetrics, PluginMetrics
from epp.framework.plugins import PluginKind
from epp.framework.types import Endpoint, InferenceRequest, ResponseInfo, SchedulingResult, TypedName
from epp.plugins.datakeys import PREFIX_CACHE_MATCH_INFO, PREFIX_CACHE_MATCH_INFO_KEY, PrefixCacheMatchInfo
from epp.plugins.latency.info import (
    LATENCY_PREDICTION_INFO,
    LATENCY_PREDICTION_INFO_KEY,
    NO_SLO,
    LatencyPredictionInfo,
    RequestSlo,
    request_slo,
)
from epp.plugins.latency.model import (
    EMPTY_SNAPSHOT,
    N_FEATURES,
    GroupModel,
    ModelSnapshot,
    SampleBuffers,
    TargetWeights,
    concat,
    feature_row,
    fit_group,
    fold,
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

#: How often (seconds) the background loop looks for requests whose first token came.
SWEEP_INTERVAL = 0.005
#: Without the background loop (tests, tools), PrepareData does it at most this often.
FALLBACK_SWEEP_INTERVAL = 0.05
#: The pooled model is fitted on at most this many recent samples in all.
POOLED_CAP = 8192
#: Training samples kept for the other processes between two exports (older ones are dropped).
OUTBOX_CAP = 2048
#: Training samples handed to a worker or replica that starts (the most recent of every group).
SNAPSHOT_CAP = 4096
#: The recent TTFT error (`LatencyPredictionInfo.ttft_error`) is the median over this many predictions.
ERROR_WINDOW = 256


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


_ZERO_WEIGHTS: TargetWeights = (0.0,) * N_FEATURES
_ZERO_MODEL = GroupModel(_ZERO_WEIGHTS, None, 0)
_NOTHING_REMOTE = (0, 0)
_ZEROS = np.zeros(4096)
_ZEROS.flags.writeable = False
_TRUE = np.ones(4096, dtype=bool)
_TRUE.flags.writeable = False


class _Columns:
    """Per candidate (column i = `endpoints[i]`): the 8 coefficients of `_coefficients`, and the request
    feature rows filled per request (`x`: 1, uncached tokens, input tokens, output tokens)."""

    __slots__ = ("coef", "coef3", "endpoints", "index", "models", "prefill", "prefill_mask", "snapshot", "x")

    def __init__(
        self,
        endpoints: tuple[Endpoint, ...],
        snapshot: ModelSnapshot,
        coef: np.ndarray,
        models: list[GroupModel],
        prefill: list[int],
    ) -> None:
        n = len(endpoints)
        self.endpoints = endpoints
        self.models = models
        self.snapshot = snapshot
        self.index = {e.key: i for i, e in enumerate(endpoints)}
        self.coef = coef
        self.coef3 = coef.reshape(2, 4, n)
        self.x = np.ones((4, n))
        self.prefill = prefill
        self.prefill_mask = np.zeros(n, dtype=bool)
        self.prefill_mask[prefill] = True

    @classmethod
    def build(
        cls, endpoints: tuple[Endpoint, ...], snapshot: ModelSnapshot, producer: PredictedLatencyProducer
    ) -> _Columns:
        models = [snapshot.model_for(producer.group_of(e)) or _ZERO_MODEL for e in endpoints]
        coef = np.array(
            [producer._coefficients(e, m) for e, m in zip(endpoints, models, strict=True)], dtype=np.float64
        ).T.copy()
        role = producer.params.endpointRoleLabel
        prefill = [i for i, e in enumerate(endpoints) if role and e.labels.get(role) == "prefill"]
        return cls(endpoints, snapshot, coef, models, prefill)


class PredictedLatencyProducer:
    """DataProducer + PreRequest + ResponseReceived + ResponseComplete + BackgroundTask + EndpointObserver
    + SharedState + SharedSnapshot."""

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
        # the coefficients of the last candidates (`_columns`), and the endpoints whose in-flight numbers
        # changed since (their columns are recomputed at the next prediction)
        self._cols: _Columns | None = None
        self._dirty: set[str] = set()
        self.tracker = InFlightTracker(self._mark_dirty)
        self._last_sweep = 0.0
        self._sweeping = False  # the background loop sweeps the tracker and records the durations
        self._durations: list[tuple[str, str, float]] = []  # predictions not yet in the metrics
        self._fit_lock = threading.Lock()
        self._generation = 0
        self._tpot_slos: dict[str, Counter[float]] = {}  # endpoint -> TPOT SLOs (ms) running there
        self._tpot_min: dict[str, float] = {}
        self._tpot_floor = math.inf  # min(self._tpot_min.values())
        self._dispatch_key: StateKey[_Dispatch] = StateKey(f"{TYPE_NAME}/{typed_name.name}")
        # samples for the other processes (None: not sharing)
        self._outbox: deque[list[Any]] | None = None
        self._pool: frozenset[str] | None = None  # the pool's endpoint keys (None: not told yet)
        self._errors: deque[float] = deque(maxlen=ERROR_WINDOW)  # |predicted - observed| / observed, TTFT
        self.ttft_error = 0.0  # their median, refreshed with the model

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

    def _mark_dirty(self, key: str) -> None:
        self._dirty.add(key)

    def _state(self, endpoint: Endpoint) -> tuple[float, float, float, float, float]:
        """The endpoint-state features (pending prefill tokens, waiting, running, KV use, in flight)."""
        key = endpoint.key
        m = endpoint.metrics
        t = self.tracker
        inflight, pending = t.remote.total.get(key, _NOTHING_REMOTE)
        return (
            float(t.pending_tokens.get(key, 0) + pending),
            float(m.waiting_queue_size),
            float(m.running_requests_size),
            m.kv_cache_usage,
            float(t.inflight.get(key, 0) + inflight),
        )

    def _coefficients(self, endpoint: Endpoint, model: GroupModel) -> tuple[float, ...]:
        """One endpoint's column: (TTFT state term, TTFT uncached/input/output weights, the same for
        TPOT); the state term is everything that does not depend on the request."""
        state = self._state(endpoint)
        return (*fold(model.ttft, *state), *fold(model.tpot or _ZERO_WEIGHTS, *state))

    def _columns(self, endpoints: Sequence[Endpoint], snapshot: ModelSnapshot) -> _Columns:
        """The cached coefficients of these endpoints, brought up to date: rebuilt after a model swap or
        a membership change, per column for an endpoint with new metrics or in-flight numbers."""
        cols = self._cols
        current = tuple(endpoints)
        dirty, self._dirty = self._dirty, set()
        if cols is None or cols.snapshot is not snapshot or len(cols.endpoints) != len(current):
            cols = self._cols = _Columns.build(current, snapshot, self)
            return cols
        if cols.endpoints != current:
            old = cols.endpoints
            for new_e, old_e in zip(current, old, strict=True):
                if new_e is not old_e:
                    if new_e.key != old_e.key:
                        cols = self._cols = _Columns.build(current, snapshot, self)
                        return cols
                    dirty.add(new_e.key)
            cols.endpoints = current
        if dirty:  # the input / output weights (rows 2, 3, 6, 7) do not depend on the endpoint's numbers
            index = cols.index
            coef = cols.coef
            a_ttft, u_ttft, a_tpot, u_tpot = coef[0], coef[1], coef[4], coef[5]
            models = cols.models
            for key in dirty:
                i = index.get(key)
                if i is None:
                    continue
                state = self._state(current[i])
                model = models[i]
                a_ttft[i], u_ttft[i], _, _ = fold(model.ttft, *state)
                a_tpot[i], u_tpot[i], _, _ = fold(model.tpot or _ZERO_WEIGHTS, *state)
        return cols

    def prepare_data(
        self, cycle: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> None:
        if not self.params.predictInPrepareData:
            return
        if not self._sweeping:
            now = self._clock()
            if now - self._last_sweep >= FALLBACK_SWEEP_INTERVAL:
                self._last_sweep = now
                self.tracker.sweep()
        snapshot = self.snapshot
        if not snapshot.ready or not endpoints:
            return
        t0 = time.perf_counter()
        cycle.write(
            LATENCY_PREDICTION_INFO_KEY,
            self.predict(request, endpoints, cycle.read(PREFIX_CACHE_MATCH_INFO_KEY), snapshot),
        )
        self._durations.append((request.model, request.target_model, time.perf_counter() - t0))
        if not self._sweeping:
            self.flush_metrics()

    def flush_metrics(self) -> None:
        """Record the prediction durations collected since the last call (the background loop does it
        every few milliseconds, off the request path)."""
        durations, self._durations = self._durations, []
        record = self._metrics.record_latency_prediction
        for model, target_model, seconds in durations:
            record(model, target_model, seconds)

    def predict(
        self,
        request: InferenceRequest,
        endpoints: Sequence[Endpoint],
        prefix: PrefixCacheMatchInfo | None,
        snapshot: ModelSnapshot | None = None,
    ) -> LatencyPredictionInfo:
        """Predictions for every candidate (the snapshot must be ready)."""
        snapshot = snapshot or self.snapshot
        cols = self._columns(endpoints, snapshot)
        index = cols.index
        inp = float(request.estimated_input_tokens)
        x = cols.x.copy()  # row 0 is the constant 1
        x[1] = inp
        if prefix is not None:
            for key, tokens in matched_tokens(prefix).items():
                i = index.get(key)
                if i is not None:
                    x[1, i] = inp - tokens if tokens < inp else 0.0
        x[2] = inp
        x[3] = requested_output_tokens(request)
        pred = np.einsum("tkn,kn->tn", cols.coef3, x)
        np.maximum(pred, 0.0, out=pred)
        slo = request_slo(request.headers) if request.headers else NO_SLO
        p = self.params
        ttft, tpot = pred[0], pred[1]
        tpot_modelled = p.streamingMode and snapshot.has_tpot
        ttft_neutral = slo.present and slo.ttft_ms <= 0.0
        all_tpot_neutral = not tpot_modelled or (slo.present and slo.tpot_ms <= 0.0)
        h_ttft = _ZEROS[: len(index)] if ttft_neutral else slo.ttft_ms - ttft
        if all_tpot_neutral:
            h_tpot = _ZEROS[: len(index)]
        else:
            h_tpot = slo.tpot_ms * p.sloBufferFactor - tpot
            if slo.tpot_ms > self._tpot_floor:  # some endpoint runs a request with a tighter TPOT SLO
                for key, tightest in self._tpot_min.items():
                    i = index.get(key)
                    budget = tightest * p.sloBufferFactor
                    if i is not None and budget < slo.tpot_ms * p.sloBufferFactor:
                        h_tpot[i] = budget - tpot[i]
            if cols.prefill:
                h_tpot[cols.prefill] = 0.0
        prefill_mask = cols.prefill_mask

        def valid() -> np.ndarray:  # read by the admitter only: computed when it asks
            n = len(index)
            valid_ttft = _TRUE[:n] if ttft_neutral else h_ttft > 0.0
            valid_tpot = _TRUE[:n] if all_tpot_neutral else (h_tpot > 0.0) | prefill_mask
            flags: np.ndarray = valid_ttft & valid_tpot
            return flags

        return LatencyPredictionInfo(
            index, ttft, tpot, h_ttft, h_tpot, valid, slo, self._dispatched(), self.ttft_error
        )

    def _dispatched(self) -> dict[str, int]:
        """Requests in flight per endpoint, this process's and the others'."""
        t = self.tracker
        dispatched = dict(t.inflight)
        for key, (n, _) in t.remote.total.items():
            dispatched[key] = dispatched.get(key, 0) + n
        return dispatched

    # ---- training data (response hooks) --------------------------------------------------------------

    def pre_request(self, cycle: CycleState, request: InferenceRequest, result: SchedulingResult) -> None:
        targets = result.targets
        if not targets or cycle.read(self._dispatch_key) is not None:
            return
        target = targets[0]
        key = target.key
        inp = request.estimated_input_tokens
        uncached = uncached_tokens(inp, cycle.read(PREFIX_CACHE_MATCH_INFO_KEY), key)
        row = feature_row(
            float(uncached), float(inp), float(requested_output_tokens(request)), *self._state(target)
        )
        predictions = cycle.read(LATENCY_PREDICTION_INFO_KEY)
        slo = predictions.slo if predictions is not None else request_slo(request.headers)
        predicted = predictions.predicted(key) if predictions is not None else None
        predicted_ttft, predicted_tpot = predicted if predicted is not None else (0.0, 0.0)
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
                predicted_ttft,
                predicted_tpot,
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
        outbox = self._outbox
        if outbox is not None:
            outbox.append([dispatch.group, dispatch.row, ttft * 1000.0, tpot * 1000.0])
        if dispatch.predicted_ttft_ms > 0.0:
            self._errors.append(abs(dispatch.predicted_ttft_ms - ttft * 1000.0) / (ttft * 1000.0))
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
                self._tpot_floor = min(self._tpot_floor, slo_ms)

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
            if slo_ms <= self._tpot_floor:
                self._tpot_floor = min(self._tpot_min.values(), default=math.inf)

    def endpoints_changed(self, keys: frozenset[str]) -> None:
        self._pool = keys
        self.tracker.retain(keys)
        self._cols = None
        with self._fit_lock:
            for table in (self._tpot_slos, self._tpot_min):
                for key in [k for k in table if k not in keys]:
                    del table[key]
            self._tpot_floor = min(self._tpot_min.values(), default=math.inf)
        if not self.params.hardwareClassLabel:
            self.buffers.retain(keys)

    # ---- SharedState: training samples and in-flight totals ----------------------------------------------

    def start_sharing(self) -> None:
        self._outbox = deque(maxlen=OUTBOX_CAP)

    def export_changes(self) -> dict[str, Any] | None:
        """`{"load": [[endpoint, in flight, pending tokens], ...] (changed totals), "samples": [[group,
        feature row, TTFT ms, TPOT ms], ...] (completed since the last export)}`; None: nothing new."""
        load = self.tracker.export_changes()
        outbox = self._outbox
        samples: list[list[Any]] = []
        while outbox:
            samples.append(outbox.popleft())
        if load is None and not samples:
            return None
        return {"load": load or [], "samples": samples}

    def import_changes(self, origin: str, changes: Any) -> None:
        load = changes.get("load")
        if load:
            self.tracker.import_changes(origin, load)
        add = self.buffers.add
        per_endpoint = not self.params.hardwareClassLabel
        pool = self._pool
        for group, row, ttft_ms, tpot_ms in changes.get("samples") or ():
            if per_endpoint and pool is not None and group not in pool:
                continue  # an endpoint that left the pool
            if len(row) == N_FEATURES and ttft_ms > 0.0:
                add(str(group), tuple(float(v) for v in row), float(ttft_ms), float(tpot_ms))

    def forget_origin(self, origin: str) -> None:
        self.tracker.forget_origin(origin)

    # ---- SharedSnapshot: a starting worker or replica trains at once ---------------------------------

    def export_snapshot(self) -> dict[str, Any]:
        """The most recent samples of every group (at most `SNAPSHOT_CAP` in all), oldest first."""
        samples: list[list[Any]] = []
        for name, rows, ttft, tpot in self.buffers.latest_of_each(SNAPSHOT_CAP):
            samples += [
                [name, row, t, p]
                for row, t, p in zip(rows.tolist(), ttft.tolist(), tpot.tolist(), strict=True)
            ]
        return {"load": [], "samples": samples}

    def import_snapshot(self, origin: str, snapshot: Any) -> None:
        """Samples only: in-flight totals come with the changes that follow."""
        self.import_changes(origin, {"samples": snapshot.get("samples") or ()})

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
        """The background work: the tracker's first-byte sweep every few milliseconds, and the refit."""
        self._sweeping = True
        try:
            await asyncio.gather(self._sweep_loop(), self._retrain_loop())
        finally:
            self._sweeping = False

    async def _sweep_loop(self) -> None:
        sweep = self.tracker.sweep
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            sweep()
            if self._durations:
                self.flush_metrics()

    async def _retrain_loop(self) -> None:
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
        errors = list(self._errors)
        if errors:
            self.ttft_error = float(np.median(errors))
        live = set(self.buffers.groups())
        groups = {g: m for g, m in groups.items() if g in live}
        pooled = self._fit_pooled()
        self._generation += 1
        self.snapshot = ModelSnapshot(self._generation, groups, pooled)

    def _fit_pooled(self) -> GroupModel | None:
        latest = self.buffers.latest_of_each(POOLED_CAP, self.params.minSamples)
        if not latest:
            return None
        parts = [(rows, ttft, tpot) for _, rows, ttft, tpot in latest]
        return fit_group(concat(parts), self.params.minSamples)


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
