"""The metric families the EPP exports, declared in groups: name, type, labels, buckets and help text.

Declaration only: each group is a frozen dataclass whose `declare(registry)` registers its families;
the modules that record (the request meter, the pool refresher, flow control, the worker pool, ...)
write to them. Groups are declared in this order by `EppMetrics`, which is the order of the exposition.

Upstream metrics keep upstream's names, labels, buckets and help text, prefixed with the stability level
as upstream does (`[ALPHA] ...`); ours are named `epp_*`. The catalogue with meanings is
docs/observability.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

__all__ = [
    "ConfigFamilies",
    "FamilyGroup",
    "FlowControlFamilies",
    "HaFamilies",
    "LatencyPredictorFamilies",
    "PoolFamilies",
    "RequestFamilies",
    "SchedulerFamilies",
    "ScrapeFamilies",
    "WorkerFamilies",
    "declare_build_info",
    "declare_response_body",
]

_MODEL = ("model_name", "target_model_name")


def _alpha(text: str) -> str:
    """Upstream's help text convention (`metricsutil.HelpMsgWithStability(..., ALPHA)`)."""
    return f"[ALPHA] {text}"


def _powers(start: int, stop: int, factor: int = 2) -> list[float]:
    out: list[float] = []
    v = start
    while v <= stop:
        out.append(float(v))
        v *= factor
    return out


REQUEST_DURATION_BUCKETS = [
    0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1, 1.25, 1.5, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 45, 60,
    120, 180, 240, 300, 360, 480, 600, 900, 1200, 1800, 2700, 3600,
]  # fmt: skip
REQUEST_SIZE_BUCKETS = _powers(64, 65536) + _powers(131072, 8388608) + _powers(16777216, 1073741824)
RESPONSE_SIZE_BUCKETS = [1.0, *_powers(8, 16384), 32778.0, 65536.0]
# upstream's 32778 (sic) is kept in every token/size histogram that has it: dashboards match on `le`
INPUT_TOKEN_BUCKETS = [1.0, *_powers(8, 16384), 32778.0, 65536.0, *_powers(131072, 1048576)]
OUTPUT_TOKEN_BUCKETS = [1.0, *_powers(8, 8192)]
NTPOT_BUCKETS = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10]
SCHEDULER_BUCKETS = [0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1]
HIT_RATIO_BUCKETS = [round(0.1 * i, 1) for i in range(11)]
HIT_BYTES_BUCKETS = [0.0, *_powers(16, 65536)]
SYNC_LAG_BUCKETS = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0]
# upstream's tpotBuckets and predictionLatencyBuckets (the latency-predictor family)
TPOT_BUCKETS = [
    0.0005, 0.00205, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.125, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1,
    1.5, 2, 3, 4.5, 6, 12, 18, 24, 30, 36, 48, 60, 90, 120, 180, 270, 360,
]  # fmt: skip
PREDICTION_DURATION_BUCKETS = [
    0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
]  # fmt: skip
PREDICTION_ERROR_BUCKETS = [0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0]
QUEUE_DURATION_BUCKETS = [
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
]  # fmt: skip


class FamilyGroup:
    """A group of families; its dataclass fields are the collectors."""

    __slots__ = ()

    def collectors(self) -> Iterator[MetricWrapperBase]:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]  # every subclass is a dataclass
            yield getattr(self, f.name)


@dataclasses.dataclass(frozen=True, slots=True)
class RequestFamilies(FamilyGroup):
    """Per request, upstream's `inference_objective_*` (and the model rewrite counter)."""

    total: Counter
    errors: Counter
    duration: Histogram
    ttft: Histogram
    request_sizes: Histogram
    response_sizes: Histogram
    input_tokens: Histogram
    output_tokens: Histogram
    prompt_cached_tokens: Histogram
    running: Gauge
    ntpot: Histogram
    model_rewrites: Counter

    @classmethod
    def declare(cls, r: CollectorRegistry) -> RequestFamilies:
        def per_model(name: str, help_text: str, buckets: list[float]) -> Histogram:
            """An upstream histogram by model and target model."""
            return Histogram(name, _alpha(help_text), _MODEL, buckets=buckets, registry=r)

        return cls(
            total=Counter(
                "inference_objective_request_total",
                _alpha("Counter of inference objective requests broken out for each model and target model."),
                [*_MODEL, "priority"],
                registry=r,
            ),
            errors=Counter(
                "inference_objective_request_error_total",
                _alpha(
                    "Counter of inference objective requests errors broken out for each model and target "
                    "model."
                ),
                [*_MODEL, "error_code"],
                registry=r,
            ),
            duration=per_model(
                "inference_objective_request_duration_seconds",
                "Inference objective response latency distribution in seconds for each model and target "
                "model.",
                REQUEST_DURATION_BUCKETS,
            ),
            ttft=per_model(
                "inference_objective_request_ttft_seconds",
                "Inference model TTFT distribution in seconds for each model and target model.",
                REQUEST_DURATION_BUCKETS,
            ),
            request_sizes=per_model(
                "inference_objective_request_sizes",
                "Inference objective requests size distribution in bytes for each model and target model.",
                REQUEST_SIZE_BUCKETS,
            ),
            response_sizes=per_model(
                "inference_objective_response_sizes",
                "Inference objective responses size distribution in bytes for each model and target model.",
                RESPONSE_SIZE_BUCKETS,
            ),
            input_tokens=per_model(
                "inference_objective_input_tokens",
                "Inference objective input token count distribution for requests in each model.",
                INPUT_TOKEN_BUCKETS,
            ),
            output_tokens=per_model(
                "inference_objective_output_tokens",
                "Inference objective output token count distribution for requests in each model.",
                OUTPUT_TOKEN_BUCKETS,
            ),
            prompt_cached_tokens=per_model(
                "inference_objective_prompt_cached_tokens",
                "Inference objective prompt cached token count distribution for requests in each model.",
                INPUT_TOKEN_BUCKETS,
            ),
            running=Gauge(
                "inference_objective_running_requests",
                _alpha("Inference objective number of running requests in each model."),
                ["model_name"],
                registry=r,
            ),
            ntpot=per_model(
                "inference_objective_normalized_time_per_output_token_seconds",
                "Inference objective latency divided by number of output tokens in seconds for each "
                "model and target model.",
                NTPOT_BUCKETS,
            ),
            model_rewrites=Counter(
                "inference_extension_model_rewrite_decisions_total",
                _alpha("Total number of inference model rewrite decisions."),
                ["model_rewrite_name", "model_name", "target_model"],
                registry=r,
            ),
        )


@dataclasses.dataclass(frozen=True, slots=True)
class LatencyPredictorFamilies(FamilyGroup):
    """Upstream's latency-predictor family (`predicted-latency-producer`), and our prediction error."""

    predicted_ttft: Histogram
    ttft_prediction_duration: Histogram
    tpot: Histogram
    predicted_tpot: Histogram
    tpot_prediction_duration: Histogram
    slo_violations: Counter
    request_metric: Gauge
    prediction_error: Histogram

    @classmethod
    def declare(cls, r: CollectorRegistry) -> LatencyPredictorFamilies:
        def per_model(name: str, help_text: str, buckets: list[float]) -> Histogram:
            return Histogram(name, _alpha(help_text), _MODEL, buckets=buckets, registry=r)

        return cls(
            predicted_ttft=per_model(
                "inference_objective_request_predicted_ttft_seconds",
                "Inference model Predicted TTFT distribution in seconds for each model and target model.",
                REQUEST_DURATION_BUCKETS,
            ),
            ttft_prediction_duration=per_model(
                "inference_objective_request_ttft_prediction_duration_seconds",
                "Duration taken to generate TTFT predictions in seconds for each model and target model.",
                PREDICTION_DURATION_BUCKETS,
            ),
            tpot=per_model(
                "inference_objective_request_tpot_seconds",
                "Inference model TPOT distribution in seconds for each model and target model.",
                TPOT_BUCKETS,
            ),
            predicted_tpot=per_model(
                "inference_objective_request_predicted_tpot_seconds",
                "Inference model Predicted TPOT distribution in seconds for each model and target model.",
                TPOT_BUCKETS,
            ),
            tpot_prediction_duration=per_model(
                "inference_objective_request_tpot_prediction_duration_seconds",
                "Duration taken to generate TPOT predictions in seconds for each model and target model.",
                PREDICTION_DURATION_BUCKETS,
            ),
            slo_violations=Counter(
                "inference_objective_request_slo_violation_total",
                _alpha("Counter of SLO violations for each model, target model, and violation type."),
                [*_MODEL, "type"],
                registry=r,
            ),
            request_metric=Gauge(
                "inference_objective_inference_request_metric",
                _alpha(
                    "Consolidated gauge for various inference request metrics including TTFT, TPOT, SLOs, "
                    "and prediction durations."
                ),
                [*_MODEL, "type"],
                registry=r,
            ),
            prediction_error=Histogram(
                "epp_latency_prediction_error_ratio",
                "Drift of the latency predictor: |predicted - observed| / observed for each completed "
                "request it predicted, by type (ttft, tpot).",
                ["type"],
                buckets=PREDICTION_ERROR_BUCKETS,
                registry=r,
            ),
        )


@dataclasses.dataclass(frozen=True, slots=True)
class PoolFamilies(FamilyGroup):
    """The pool gauges, upstream's `inference_pool_*` (label `name` is the pool's)."""

    avg_kv_cache: Gauge
    avg_queue: Gauge
    avg_running: Gauge
    ready_pods: Gauge
    per_pod_queue: Gauge

    @classmethod
    def declare(cls, r: CollectorRegistry) -> PoolFamilies:
        return cls(
            avg_kv_cache=Gauge(
                "inference_pool_average_kv_cache_utilization",
                _alpha("The average kv cache utilization for an inference server pool."),
                ["name"],
                registry=r,
            ),
            avg_queue=Gauge(
                "inference_pool_average_queue_size",
                _alpha("The average number of requests pending in the model server queue."),
                ["name"],
                registry=r,
            ),
            avg_running=Gauge(
                "inference_pool_average_running_requests",
                _alpha("The average number of running requests across model servers in the pool."),
                ["name"],
                registry=r,
            ),
            ready_pods=Gauge(
                "inference_pool_ready_pods",
                _alpha("The number of ready pods in the inference server pool."),
                ["name"],
                registry=r,
            ),
            per_pod_queue=Gauge(
                "inference_pool_per_pod_queue_size",
                _alpha(
                    "The total number of requests pending in the model server queue for each underlying pod."
                ),
                ["name", "model_server_pod"],
                registry=r,
            ),
        )


@dataclasses.dataclass(frozen=True, slots=True)
class SchedulerFamilies(FamilyGroup):
    """The scheduler and its plugins, upstream's `inference_extension_*` (prefix cache included)."""

    e2e: Histogram
    attempts: Counter
    plugin_duration: Histogram
    prefix_indexer_size: Gauge
    prefill_seconds_per_token: Gauge
    prefix_hit_ratio: Histogram
    prefix_hit_bytes: Histogram

    @classmethod
    def declare(cls, r: CollectorRegistry) -> SchedulerFamilies:
        return cls(
            e2e=Histogram(
                "inference_extension_scheduler_e2e_duration_seconds",
                _alpha("End-to-end scheduling latency distribution in seconds."),
                buckets=SCHEDULER_BUCKETS,
                registry=r,
            ),
            attempts=Counter(
                "inference_extension_scheduler_attempts_total",
                _alpha("Total number of scheduling attempts."),
                ["status", "target_model_name", "pod_name", "namespace", "port"],
                registry=r,
            ),
            plugin_duration=Histogram(
                "inference_extension_plugin_duration_seconds",
                _alpha(
                    "Plugin processing latency distribution in seconds for each extension point, plugin type "
                    "and plugin name."
                ),
                ["extension_point", "plugin_type", "plugin_name"],
                buckets=SCHEDULER_BUCKETS,
                registry=r,
            ),
            prefix_indexer_size=Gauge(
                "inference_extension_prefix_indexer_size",
                _alpha("Size of the prefix indexer."),
                registry=r,
            ),
            prefill_seconds_per_token=Gauge(
                "epp_hardware_prefill_seconds_per_token",
                "Measured seconds per prefill token of each hardware class (prefill-load-producer: "
                "dispatch to first token against the prefill work ahead).",
                ["hardware_class"],
                registry=r,
            ),
            prefix_hit_ratio=Histogram(
                "inference_extension_prefix_indexer_hit_ratio",
                _alpha("Ratio of prefix length matched to total prefix length in the cache lookup."),
                buckets=HIT_RATIO_BUCKETS,
                registry=r,
            ),
            prefix_hit_bytes=Histogram(
                "inference_extension_prefix_indexer_hit_bytes",
                _alpha("Length of the prefix match in number of bytes in the cache lookup."),
                buckets=HIT_BYTES_BUCKETS,
                registry=r,
            ),
        )


def declare_build_info(r: CollectorRegistry) -> Gauge:
    """Upstream's `inference_extension_info` (value 1, labelled with the build)."""
    return Gauge(
        "inference_extension_info",
        _alpha("General information of the current build of Inference Extension."),
        ["commit", "build_ref"],
        registry=r,
    )


def declare_response_body(r: CollectorRegistry) -> Counter:
    """Ours: who read each response's body (protocol.md §5)."""
    return Counter(
        "epp_response_body_total",
        "Responses by who read their body: none (tokens never crossed the EPP), observer (an "
        "observability-mode stream, off the critical path), routing-stream (the EPP took it in the "
        "request's path), full-duplex (the proxy sends it regardless).",
        ["path"],
        registry=r,
    )


@dataclasses.dataclass(frozen=True, slots=True)
class RuntimeFamilies(FamilyGroup):
    """Ours: the processes' own health (a leak shows as a number that grows under steady load)."""

    tasks: Gauge
    worker_tasks: Gauge

    @classmethod
    def declare(cls, r: CollectorRegistry) -> RuntimeFamilies:
        return cls(
            tasks=Gauge(
                "epp_asyncio_tasks",
                "Asyncio tasks alive in the pod process's event loop (sampled when scraped).",
                registry=r,
            ),
            worker_tasks=Gauge(
                "epp_worker_asyncio_tasks",
                "Asyncio tasks alive in the worker processes' event loops, added up (--workers; sampled when "
                "scraped).",
                registry=r,
            ),
        )


@dataclasses.dataclass(frozen=True, slots=True)
class ConfigFamilies(FamilyGroup):
    """Ours: config loads and reloads (`epp_config_*`)."""

    reloads: Counter
    last_success: Gauge
    generation: Gauge
    hash_info: Gauge

    @classmethod
    def declare(cls, r: CollectorRegistry) -> ConfigFamilies:
        return cls(
            reloads=Counter(
                "epp_config_reload_total",
                "Config reload attempts by result (success, error, unchanged).",
                ["result"],
                registry=r,
            ),
            last_success=Gauge(
                "epp_config_last_reload_success_timestamp_seconds",
                "Unix time of the last successful config load or reload.",
                registry=r,
            ),
            generation=Gauge(
                "epp_config_generation",
                "Generation of the live config (1 at start, +1 per successful reload).",
                registry=r,
            ),
            hash_info=Gauge(
                "epp_config_hash_info",
                "The sha256 of the live config document (value 1).",
                ["hash", "source"],
                registry=r,
            ),
        )


@dataclasses.dataclass(frozen=True, slots=True)
class ScrapeFamilies(FamilyGroup):
    """Ours: the model-server metrics scrapes, per endpoint."""

    errors: Counter
    metrics_age: Gauge

    @classmethod
    def declare(cls, r: CollectorRegistry) -> ScrapeFamilies:
        return cls(
            errors=Counter(
                "epp_model_server_scrape_errors_total",
                "Failed model-server metrics scrapes.",
                ["endpoint"],
                registry=r,
            ),
            metrics_age=Gauge(
                "epp_endpoint_metrics_age_seconds",
                "Seconds since the last successful metrics scrape of each endpoint (-1: never scraped).",
                ["endpoint"],
                registry=r,
            ),
        )


@dataclasses.dataclass(frozen=True, slots=True)
class FlowControlFamilies(FamilyGroup):
    """Flow control, upstream's `inference_extension_flow_control_*`."""

    queue_duration: Histogram
    enqueue_duration: Histogram
    queue_size: Gauge
    queue_bytes: Gauge
    pool_saturation: Gauge
    dispatch_cycle: Histogram

    @classmethod
    def declare(cls, r: CollectorRegistry) -> FlowControlFamilies:
        queue_labels = ["fairness_id", "priority", "inference_pool", "model_name", "target_model_name"]
        return cls(
            queue_duration=Histogram(
                "inference_extension_flow_control_request_queue_duration_seconds",
                _alpha(
                    "Distribution of total time requests spend in the Flow Control layer (from enqueue to "
                    "final outcome)."
                ),
                ["fairness_id", "priority", "outcome", "inference_pool", "model_name", "target_model_name"],
                buckets=QUEUE_DURATION_BUCKETS,
                registry=r,
            ),
            enqueue_duration=Histogram(
                "inference_extension_flow_control_request_enqueue_duration_seconds",
                _alpha("Distribution of time taken to enqueue requests into the Flow Control layer."),
                ["fairness_id", "priority", "outcome"],
                buckets=SCHEDULER_BUCKETS,
                registry=r,
            ),
            queue_size=Gauge(
                "inference_extension_flow_control_queue_size",
                _alpha("Current number of requests actively held in the Flow Control queue."),
                queue_labels,
                registry=r,
            ),
            queue_bytes=Gauge(
                "inference_extension_flow_control_queue_bytes",
                _alpha("Current total size in bytes of requests actively held in the Flow Control queue."),
                queue_labels,
                registry=r,
            ),
            pool_saturation=Gauge(
                "inference_extension_flow_control_pool_saturation",
                _alpha(
                    "Current saturation level of the inference pool (0.0 = empty, 1.0 = fully saturated)."
                ),
                ["inference_pool"],
                registry=r,
            ),
            dispatch_cycle=Histogram(
                "inference_extension_flow_control_dispatch_cycle_duration_seconds",
                _alpha(
                    "Distribution of time taken for each internal dispatch cycle in the Flow Control layer."
                ),
                buckets=SCHEDULER_BUCKETS,
                registry=r,
            ),
        )


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerFamilies(FamilyGroup):
    """Ours: `--workers` processes (recorded by the pod process) and their shared state (by the workers)."""

    processes: Gauge
    restarts: Counter
    sync_messages: Counter
    sync_lag: Histogram

    @classmethod
    def declare(cls, r: CollectorRegistry) -> WorkerFamilies:
        return cls(
            processes=Gauge(
                "epp_workers",
                "Worker processes serving ext_proc (--workers), by state: ready, starting, spare (the warm "
                "spare waiting to replace a worker that dies).",
                ["state"],
                registry=r,
            ),
            restarts=Counter(
                "epp_worker_restarts_total",
                "Worker processes that ended unexpectedly and were restarted.",
                registry=r,
            ),
            sync_messages=Counter(
                "epp_worker_sync_messages_total",
                "Shared-state messages between workers: sent, received (applied), ignored (no matching "
                "plugin).",
                ["direction"],
                registry=r,
            ),
            sync_lag=Histogram(
                "epp_worker_sync_lag_seconds",
                "Time from a worker sending its routing decisions to another applying them.",
                buckets=SYNC_LAG_BUCKETS,
                registry=r,
            ),
        )


@dataclasses.dataclass(frozen=True, slots=True)
class HaFamilies(FamilyGroup):
    """Ours: `--ha-mode active-active`, the peer link between replicas (recorded by the pod process)."""

    peers: Gauge
    messages: Counter
    sync_lag: Histogram
    snapshots: Counter

    @classmethod
    def declare(cls, r: CollectorRegistry) -> HaFamilies:
        return cls(
            peers=Gauge(
                "epp_ha_peers",
                "Other replicas heard from lately on the peer link (active-active); 0: this replica routes "
                "on its own view.",
                registry=r,
            ),
            messages=Counter(
                "epp_ha_messages_total",
                "Shared-state messages on the peer link: sent (to every peer), received, dropped (a peer "
                "not connected or too slow).",
                ["direction"],
                registry=r,
            ),
            sync_lag=Histogram(
                "epp_ha_sync_lag_seconds",
                "Time from a decider of another replica sending its routing decisions to this replica "
                "receiving them.",
                buckets=SYNC_LAG_BUCKETS,
                registry=r,
            ),
            snapshots=Counter(
                "epp_ha_snapshots_total",
                "Shared-state snapshots: served (to a replica that started), taken (when this one started).",
                ["event"],
                registry=r,
            ),
        )
