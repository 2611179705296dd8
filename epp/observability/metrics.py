"""`EppMetrics`: every metric family of the EPP on one registry, and the recording done through it.

One `EppMetrics` object per process, built on a registry passed in (tests use a fresh
`CollectorRegistry`, never the global default). The families are declared in groups by
`epp.observability.families` and reached as `metrics.<group>.<family>`; the modules that record write
to them: the request path through `epp.requestcontrol.meter.RequestMeter`, the pool gauges through
`epp.observability.pool.PoolGauges`, flow control and the worker pool directly.

`EppMetrics` itself implements the engine's `SchedulerObserver` and the plugins' `PluginMetrics`, so the
engine and plugins stay free of prometheus_client, and keeps the few records other modules make through
it (config loads, response body paths, worker sync messages, build info). The catalogue with meanings is
docs/observability.md.
"""

from __future__ import annotations

import asyncio
import operator
import os
import time
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.metrics import MetricWrapperBase

from epp.framework.types import TypedName
from epp.observability.families import (
    ConfigFamilies,
    FamilyGroup,
    FlowControlFamilies,
    HaFamilies,
    LatencyPredictorFamilies,
    PoolFamilies,
    RequestFamilies,
    RuntimeFamilies,
    SchedulerFamilies,
    ScrapeFamilies,
    WorkerFamilies,
    declare_build_info,
    declare_response_body,
)

__all__ = ["WORKER_MAX_GAUGES", "WORKER_METRICS", "EppMetrics", "build_commit"]

#: Environment variable naming the source commit for `inference_extension_info{commit}` (set at image build).
COMMIT_ENV = "EPP_COMMIT"

#: The metrics a worker process records (the request path), as attribute paths of `EppMetrics` (a group
#: stands for all its families); with `--workers` the pod process adds them up over its workers (gauges
#: summed, or the largest value for those in `WORKER_MAX_GAUGES`).
WORKER_METRICS = (
    "requests",
    "latency",
    "scheduler",
    "response_body",
    "flow_control",
    "workers.sync_messages",
    "workers.sync_lag",
    "runtime.worker_tasks",
)
WORKER_MAX_GAUGES = (
    "scheduler.prefix_indexer_size",
    "scheduler.prefill_seconds_per_token",
    "flow_control.pool_saturation",
    "latency.request_metric",
)


def build_commit() -> str:
    """The commit this build came from: $EPP_COMMIT, else "unknown"."""
    return os.environ.get(COMMIT_ENV, "").strip() or "unknown"


class EppMetrics:
    """The EPP's metrics. Method names say what happened; label handling stays in the recorders."""

    def __init__(self, registry: CollectorRegistry | None = None, pool_name: str = "") -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.pool_name = pool_name
        r = self.registry
        # Declaration order is the exposition order.
        self.requests = RequestFamilies.declare(r)
        self.latency = LatencyPredictorFamilies.declare(r)
        self.pool = PoolFamilies.declare(r)
        self.scheduler = SchedulerFamilies.declare(r)
        self.info = declare_build_info(r)
        self.response_body = declare_response_body(r)
        self.config = ConfigFamilies.declare(r)
        self.scrape = ScrapeFamilies.declare(r)
        self.flow_control = FlowControlFamilies.declare(r)
        self.workers = WorkerFamilies.declare(r)
        self.ha = HaFamilies.declare(r)
        self.runtime = RuntimeFamilies.declare(r)
        self._declared: tuple[FamilyGroup | MetricWrapperBase, ...] = (
            *(self.requests, self.latency, self.pool, self.scheduler, self.info, self.response_body),
            *(self.config, self.scrape, self.flow_control, self.workers, self.ha, self.runtime),
        )
        self._plugin_children: dict[tuple[str, str, str], Histogram] = {}
        self._response_body_children: dict[str, Counter] = {}
        self._sync_children: dict[str, Counter] = {}
        self._latency_children: dict[tuple[str, str, str], Any] = {}

    # ---- SchedulerObserver ----------------------------------------------------------------------

    def plugin_duration(self, extension_point: str, plugin: TypedName, seconds: float) -> None:
        key = (extension_point, plugin.type, plugin.name)
        child = self._plugin_children.get(key)
        if child is None:
            child = self._plugin_children[key] = self.scheduler.plugin_duration.labels(*key)
        child.observe(seconds)

    def scheduler_duration(self, seconds: float) -> None:
        self.scheduler.e2e.observe(seconds)

    # ---- PluginMetrics --------------------------------------------------------------------------

    def record_prefix_match(self, hit_ratio: float, hit_bytes: int) -> None:
        self.scheduler.prefix_hit_ratio.observe(hit_ratio)
        self.scheduler.prefix_hit_bytes.observe(hit_bytes)

    def record_latency_prediction(self, model: str, target_model: str, seconds: float) -> None:
        """Upstream records one bulk prediction's duration as both the TTFT and the TPOT duration."""
        lat = self.latency
        self._latency_child(lat.ttft_prediction_duration, model, target_model).observe(seconds)
        self._latency_child(lat.tpot_prediction_duration, model, target_model).observe(seconds)
        self._latency_gauge(model, target_model, "ttft_prediction_duration").set(seconds)
        self._latency_gauge(model, target_model, "tpot_prediction_duration").set(seconds)

    def record_latency_outcome(
        self,
        model: str,
        target_model: str,
        *,
        ttft: float,
        predicted_ttft: float,
        ttft_slo: float = 0.0,
        tpot: float = 0.0,
        predicted_tpot: float = 0.0,
        tpot_slo: float = 0.0,
    ) -> None:
        """As upstream at end of stream: the TTFT histogram is the request meter's (recorded for every
        streamed response), the rest here; a violation is an observed value above the request's SLO."""
        lat = self.latency
        if ttft > 0.0:
            self._latency_gauge(model, target_model, "ttft").set(ttft)
            self._latency_child(lat.predicted_ttft, model, target_model).observe(predicted_ttft)
            self._latency_gauge(model, target_model, "predicted_ttft").set(predicted_ttft)
            if predicted_ttft > 0.0:
                lat.prediction_error.labels("ttft").observe(abs(predicted_ttft - ttft) / ttft)
            if ttft_slo > 0.0:
                self._violation(model, target_model, "ttft", ttft > ttft_slo)
        if tpot > 0.0:
            self._latency_child(lat.tpot, model, target_model).observe(tpot)
            self._latency_gauge(model, target_model, "tpot").set(tpot)
            self._latency_child(lat.predicted_tpot, model, target_model).observe(predicted_tpot)
            self._latency_gauge(model, target_model, "predicted_tpot").set(predicted_tpot)
            if predicted_tpot > 0.0:
                lat.prediction_error.labels("tpot").observe(abs(predicted_tpot - tpot) / tpot)
            if tpot_slo > 0.0:
                self._violation(model, target_model, "tpot", tpot > tpot_slo)

    def _violation(self, model: str, target_model: str, kind: str, violated: bool) -> None:
        self._latency_gauge(model, target_model, f"{kind}_slo_violation").set(1.0 if violated else 0.0)
        if violated:
            self.latency.slo_violations.labels(model, target_model, kind).inc()

    def _latency_child(self, family: Histogram, model: str, target_model: str) -> Any:
        key = (family._name, model, target_model)
        child = self._latency_children.get(key)
        if child is None:
            child = self._latency_children[key] = family.labels(model, target_model)
        return child

    def _latency_gauge(self, model: str, target_model: str, kind: str) -> Any:
        key = (kind, model, target_model)
        child = self._latency_children.get(key)
        if child is None:
            child = self._latency_children[key] = self.latency.request_metric.labels(
                model, target_model, kind
            )
        return child

    # ---- response path and workers --------------------------------------------------------------

    def response_body_path(self, path: str) -> None:
        child = self._response_body_children.get(path)
        if child is None:
            child = self._response_body_children[path] = self.response_body.labels(path)
        child.inc()

    def sync_message(self, direction: str, lag: float, parts: int) -> None:
        """A shared-state message between workers (`epp.workers.statebus`)."""
        child = self._sync_children.get(direction)
        if child is None:
            child = self._sync_children[direction] = self.workers.sync_messages.labels(direction)
        child.inc()
        if direction == "received":
            self.workers.sync_lag.observe(lag)

    def count_tasks_of(self, loop: asyncio.AbstractEventLoop, *, worker: bool = False) -> None:
        """Sample `loop`'s live tasks at every scrape (`epp_asyncio_tasks`, or the workers' family)."""
        gauge = self.runtime.worker_tasks if worker else self.runtime.tasks
        gauge.set_function(lambda: len(asyncio.all_tasks(loop)))

    # ---- config and build -----------------------------------------------------------------------

    def record_config_loaded(self, generation: int, config_hash: str, source: str) -> None:
        self.config.generation.set(generation)
        self.config.hash_info.clear()
        self.config.hash_info.labels(config_hash, source).set(1)
        self.config.last_success.set(time.time())

    def record_reload(self, result: str) -> None:
        self.config.reloads.labels(result).inc()

    def set_info(self, commit: str, build_ref: str) -> None:
        self.info.labels(commit, build_ref).set(1)

    # ---- introspection --------------------------------------------------------------------------

    def collectors(self, paths: Iterable[str] | None = None) -> Iterator[MetricWrapperBase]:
        """The metrics at these attribute paths (`"requests"`, `"workers.sync_lag"`; a group yields all its
        families), or every metric in declaration order."""
        targets = self._declared if paths is None else (operator.attrgetter(p)(self) for p in paths)
        for target in targets:
            if isinstance(target, FamilyGroup):
                yield from target.collectors()
            else:
                yield target

    def family_names(self, paths: Iterable[str]) -> frozenset[str]:
        """The exposition family names of the metrics at these attribute paths (see `collectors`)."""
        return frozenset(family.name for c in self.collectors(paths) for family in c.describe())

    def metric_names(self) -> Iterable[str]:
        """Every metric name as PromQL sees it (counters with `_total`; histograms by their base name)."""
        for family in self.registry.collect():
            yield f"{family.name}_total" if family.type == "counter" else family.name
