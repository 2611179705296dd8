"""Every Prometheus metric the EPP exports, with upstream's names, types, labels, buckets and help text.

One `EppMetrics` object per process, built on a registry passed in (tests use a fresh
`CollectorRegistry`, never the global default). It also implements the engine's `SchedulerObserver` and
the plugins' `PluginMetrics`, so the engine and plugins stay free of prometheus_client.

Upstream metrics keep upstream's help text, prefixed with the stability level as upstream does
(`[ALPHA] ...`); ours are named `epp_*`. The catalogue with meanings is docs/observability.md.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from epp.framework.types import Endpoint, TypedName

__all__ = ["EppMetrics", "build_commit"]

_MODEL = ("model_name", "target_model_name")

#: Environment variable naming the source commit for `inference_extension_info{commit}` (set at image build).
COMMIT_ENV = "EPP_COMMIT"


def _alpha(text: str) -> str:
    """Upstream's help text convention (`metricsutil.HelpMsgWithStability(..., ALPHA)`)."""
    return f"[ALPHA] {text}"


def build_commit() -> str:
    """The commit this build came from: $EPP_COMMIT, else "unknown"."""
    return os.environ.get(COMMIT_ENV, "").strip() or "unknown"


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
#: The metrics a worker process records (the request path); with `--workers` the pod process adds them up
#: over its workers (gauges summed, or the largest value for those in `WORKER_MAX_GAUGES`).
WORKER_METRICS = (
    "request_total",
    "request_error_total",
    "request_duration",
    "request_ttft",
    "request_sizes",
    "response_sizes",
    "input_tokens",
    "output_tokens",
    "prompt_cached_tokens",
    "running_requests",
    "ntpot",
    "model_rewrite_decisions",
    "scheduler_e2e",
    "scheduler_attempts",
    "plugin_duration_hist",
    "prefix_indexer_size",
    "prefix_hit_ratio",
    "prefix_hit_bytes",
    "response_body_total",
    "sync_messages",
    "sync_lag",
    "fc_queue_duration",
    "fc_enqueue_duration",
    "fc_queue_size",
    "fc_queue_bytes",
    "fc_pool_saturation",
    "fc_dispatch_cycle",
)
WORKER_MAX_GAUGES = ("prefix_indexer_size", "fc_pool_saturation")
QUEUE_DURATION_BUCKETS = [
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
]  # fmt: skip


class EppMetrics:
    """The EPP's metrics. Method names say what happened; label handling stays in here."""

    def __init__(self, registry: CollectorRegistry | None = None, pool_name: str = "") -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.pool_name = pool_name
        r = self.registry
        # ---- per request (inference_objective_*) ----
        self.request_total = Counter(
            "inference_objective_request_total",
            _alpha("Counter of inference objective requests broken out for each model and target model."),
            [*_MODEL, "priority"],
            registry=r,
        )
        self.request_error_total = Counter(
            "inference_objective_request_error_total",
            _alpha(
                "Counter of inference objective requests errors broken out for each model and target model."
            ),
            [*_MODEL, "error_code"],
            registry=r,
        )
        self.request_duration = Histogram(
            "inference_objective_request_duration_seconds",
            _alpha(
                "Inference objective response latency distribution in seconds for each model and target "
                "model."
            ),
            _MODEL,
            buckets=REQUEST_DURATION_BUCKETS,
            registry=r,
        )
        self.request_ttft = Histogram(
            "inference_objective_request_ttft_seconds",
            _alpha("Inference model TTFT distribution in seconds for each model and target model."),
            _MODEL,
            buckets=REQUEST_DURATION_BUCKETS,
            registry=r,
        )
        self.request_sizes = Histogram(
            "inference_objective_request_sizes",
            _alpha(
                "Inference objective requests size distribution in bytes for each model and target model."
            ),
            _MODEL,
            buckets=REQUEST_SIZE_BUCKETS,
            registry=r,
        )
        self.response_sizes = Histogram(
            "inference_objective_response_sizes",
            _alpha(
                "Inference objective responses size distribution in bytes for each model and target model."
            ),
            _MODEL,
            buckets=RESPONSE_SIZE_BUCKETS,
            registry=r,
        )
        self.input_tokens = Histogram(
            "inference_objective_input_tokens",
            _alpha("Inference objective input token count distribution for requests in each model."),
            _MODEL,
            buckets=INPUT_TOKEN_BUCKETS,
            registry=r,
        )
        self.output_tokens = Histogram(
            "inference_objective_output_tokens",
            _alpha("Inference objective output token count distribution for requests in each model."),
            _MODEL,
            buckets=OUTPUT_TOKEN_BUCKETS,
            registry=r,
        )
        self.prompt_cached_tokens = Histogram(
            "inference_objective_prompt_cached_tokens",
            _alpha("Inference objective prompt cached token count distribution for requests in each model."),
            _MODEL,
            buckets=INPUT_TOKEN_BUCKETS,
            registry=r,
        )
        self.running_requests = Gauge(
            "inference_objective_running_requests",
            _alpha("Inference objective number of running requests in each model."),
            ["model_name"],
            registry=r,
        )
        self.ntpot = Histogram(
            "inference_objective_normalized_time_per_output_token_seconds",
            _alpha(
                "Inference objective latency divided by number of output tokens in seconds for each model "
                "and target model."
            ),
            _MODEL,
            buckets=NTPOT_BUCKETS,
            registry=r,
        )
        self.model_rewrite_decisions = Counter(
            "inference_extension_model_rewrite_decisions_total",
            _alpha("Total number of inference model rewrite decisions."),
            ["model_rewrite_name", "model_name", "target_model"],
            registry=r,
        )
        # ---- pool gauges (inference_pool_*) ----
        self.pool_avg_kv = Gauge(
            "inference_pool_average_kv_cache_utilization",
            _alpha("The average kv cache utilization for an inference server pool."),
            ["name"],
            registry=r,
        )
        self.pool_avg_queue = Gauge(
            "inference_pool_average_queue_size",
            _alpha("The average number of requests pending in the model server queue."),
            ["name"],
            registry=r,
        )
        self.pool_avg_running = Gauge(
            "inference_pool_average_running_requests",
            _alpha("The average number of running requests across model servers in the pool."),
            ["name"],
            registry=r,
        )
        self.pool_ready_pods = Gauge(
            "inference_pool_ready_pods",
            _alpha("The number of ready pods in the inference server pool."),
            ["name"],
            registry=r,
        )
        self.pool_per_pod_queue = Gauge(
            "inference_pool_per_pod_queue_size",
            _alpha("The total number of requests pending in the model server queue for each underlying pod."),
            ["name", "model_server_pod"],
            registry=r,
        )
        # ---- scheduler (inference_extension_*) ----
        self.scheduler_e2e = Histogram(
            "inference_extension_scheduler_e2e_duration_seconds",
            _alpha("End-to-end scheduling latency distribution in seconds."),
            buckets=SCHEDULER_BUCKETS,
            registry=r,
        )
        self.scheduler_attempts = Counter(
            "inference_extension_scheduler_attempts_total",
            _alpha("Total number of scheduling attempts."),
            ["status", "target_model_name", "pod_name", "namespace", "port"],
            registry=r,
        )
        self.plugin_duration_hist = Histogram(
            "inference_extension_plugin_duration_seconds",
            _alpha(
                "Plugin processing latency distribution in seconds for each extension point, plugin type and "
                "plugin name."
            ),
            ["extension_point", "plugin_type", "plugin_name"],
            buckets=SCHEDULER_BUCKETS,
            registry=r,
        )
        self.prefix_indexer_size = Gauge(
            "inference_extension_prefix_indexer_size",
            _alpha("Size of the prefix indexer."),
            registry=r,
        )
        self.prefix_hit_ratio = Histogram(
            "inference_extension_prefix_indexer_hit_ratio",
            _alpha("Ratio of prefix length matched to total prefix length in the cache lookup."),
            buckets=HIT_RATIO_BUCKETS,
            registry=r,
        )
        self.prefix_hit_bytes = Histogram(
            "inference_extension_prefix_indexer_hit_bytes",
            _alpha("Length of the prefix match in number of bytes in the cache lookup."),
            buckets=HIT_BYTES_BUCKETS,
            registry=r,
        )
        self.info = Gauge(
            "inference_extension_info",
            _alpha("General information of the current build of Inference Extension."),
            ["commit", "build_ref"],
            registry=r,
        )
        # ---- response path (ours) ----
        self.response_body_total = Counter(
            "epp_response_body_total",
            "Responses by who read their body: none (tokens never crossed the EPP), observer (an "
            "observability-mode stream, off the critical path), routing-stream (the EPP took it in the "
            "request's path), full-duplex (the proxy sends it regardless).",
            ["path"],
            registry=r,
        )
        self._response_body_children: dict[str, Counter] = {}
        # ---- config reload (ours) ----
        self.config_reload_total = Counter(
            "epp_config_reload_total",
            "Config reload attempts by result (success, error, unchanged).",
            ["result"],
            registry=r,
        )
        self.config_last_success = Gauge(
            "epp_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful config load or reload.",
            registry=r,
        )
        self.config_generation = Gauge(
            "epp_config_generation",
            "Generation of the live config (1 at start, +1 per successful reload).",
            registry=r,
        )
        self.config_hash_info = Gauge(
            "epp_config_hash_info",
            "The sha256 of the live config document (value 1).",
            ["hash", "source"],
            registry=r,
        )
        # ---- scraping (ours) ----
        self.scrape_errors = Counter(
            "epp_model_server_scrape_errors_total",
            "Failed model-server metrics scrapes.",
            ["endpoint"],
            registry=r,
        )
        self.endpoint_metrics_age = Gauge(
            "epp_endpoint_metrics_age_seconds",
            "Seconds since the last successful metrics scrape of each endpoint (-1: never scraped).",
            ["endpoint"],
            registry=r,
        )
        # ---- flow control (upstream names) ----
        self.fc_queue_duration = Histogram(
            "inference_extension_flow_control_request_queue_duration_seconds",
            _alpha(
                "Distribution of total time requests spend in the Flow Control layer (from enqueue to final "
                "outcome)."
            ),
            ["fairness_id", "priority", "outcome", "inference_pool", "model_name", "target_model_name"],
            buckets=QUEUE_DURATION_BUCKETS,
            registry=r,
        )
        self.fc_enqueue_duration = Histogram(
            "inference_extension_flow_control_request_enqueue_duration_seconds",
            _alpha("Distribution of time taken to enqueue requests into the Flow Control layer."),
            ["fairness_id", "priority", "outcome"],
            buckets=SCHEDULER_BUCKETS,
            registry=r,
        )
        self.fc_queue_size = Gauge(
            "inference_extension_flow_control_queue_size",
            _alpha("Current number of requests actively held in the Flow Control queue."),
            ["fairness_id", "priority", "inference_pool", "model_name", "target_model_name"],
            registry=r,
        )
        self.fc_queue_bytes = Gauge(
            "inference_extension_flow_control_queue_bytes",
            _alpha("Current total size in bytes of requests actively held in the Flow Control queue."),
            ["fairness_id", "priority", "inference_pool", "model_name", "target_model_name"],
            registry=r,
        )
        self.fc_pool_saturation = Gauge(
            "inference_extension_flow_control_pool_saturation",
            _alpha("Current saturation level of the inference pool (0.0 = empty, 1.0 = fully saturated)."),
            ["inference_pool"],
            registry=r,
        )
        self.fc_dispatch_cycle = Histogram(
            "inference_extension_flow_control_dispatch_cycle_duration_seconds",
            _alpha("Distribution of time taken for each internal dispatch cycle in the Flow Control layer."),
            buckets=SCHEDULER_BUCKETS,
            registry=r,
        )
        # ---- workers (ours) ----
        self.workers_ready = Gauge(
            "epp_workers",
            "Worker processes serving ext_proc (--workers), by state: ready, starting, spare (the warm "
            "spare waiting to replace a worker that dies).",
            ["state"],
            registry=r,
        )
        self.worker_restarts = Counter(
            "epp_worker_restarts_total",
            "Worker processes that ended unexpectedly and were restarted.",
            registry=r,
        )
        self.sync_messages = Counter(
            "epp_worker_sync_messages_total",
            "Shared-state messages between workers: sent, received (applied), ignored (no matching plugin).",
            ["direction"],
            registry=r,
        )
        self.sync_lag = Histogram(
            "epp_worker_sync_lag_seconds",
            "Time from a worker sending its routing decisions to another applying them.",
            buckets=SYNC_LAG_BUCKETS,
            registry=r,
        )
        self._pool_averages_set = False
        self._plugin_children: dict[tuple[str, str, str], Histogram] = {}
        self._sync_children: dict[str, Counter] = {}

    # ---- SchedulerObserver ----------------------------------------------------------------------

    def plugin_duration(self, extension_point: str, plugin: TypedName, seconds: float) -> None:
        key = (extension_point, plugin.type, plugin.name)
        child = self._plugin_children.get(key)
        if child is None:
            child = self._plugin_children[key] = self.plugin_duration_hist.labels(*key)
        child.observe(seconds)

    def scheduler_duration(self, seconds: float) -> None:
        self.scheduler_e2e.observe(seconds)

    # ---- PluginMetrics --------------------------------------------------------------------------

    def record_prefix_match(self, hit_ratio: float, hit_bytes: int) -> None:
        self.prefix_hit_ratio.observe(hit_ratio)
        self.prefix_hit_bytes.observe(hit_bytes)

    # ---- request path ---------------------------------------------------------------------------

    def record_request(self, model: str, target_model: str, priority: int, size_bytes: int) -> None:
        """A request was scheduled (upstream counts only successfully scheduled requests)."""
        self.request_total.labels(model, target_model, str(priority)).inc()
        self.request_sizes.labels(model, target_model).observe(size_bytes)

    def record_error(self, model: str, target_model: str, error_code: str) -> None:
        if error_code:  # upstream records nothing for an empty code
            self.request_error_total.labels(model, target_model, error_code).inc()

    def record_response(
        self,
        model: str,
        target_model: str,
        *,
        duration: float,
        response_bytes: int,
        prompt_tokens: int,
        completion_tokens: int,
        cached_tokens: int,
        ttft: float = 0.0,
    ) -> None:
        """A response completed; token histograms only when the body reported usage, TTFT when known."""
        self.request_duration.labels(model, target_model).observe(duration)
        if ttft > 0.0:
            self.request_ttft.labels(model, target_model).observe(ttft)
        self.response_sizes.labels(model, target_model).observe(response_bytes)
        if prompt_tokens > 0:
            self.input_tokens.labels(model, target_model).observe(prompt_tokens)
            self.prompt_cached_tokens.labels(model, target_model).observe(cached_tokens)
        if completion_tokens > 0:
            self.output_tokens.labels(model, target_model).observe(completion_tokens)
            self.ntpot.labels(model, target_model).observe(duration / completion_tokens)

    def response_body_path(self, path: str) -> None:
        child = self._response_body_children.get(path)
        if child is None:
            child = self._response_body_children[path] = self.response_body_total.labels(path)
        child.inc()

    def sync_message(self, direction: str, lag: float, parts: int) -> None:
        """A shared-state message between workers (`epp.workers.statebus`)."""
        child = self._sync_children.get(direction)
        if child is None:
            child = self._sync_children[direction] = self.sync_messages.labels(direction)
        child.inc()
        if direction == "received":
            self.sync_lag.observe(lag)

    def family_names(self, attributes: Iterable[str]) -> frozenset[str]:
        """The exposition family names of the metrics held in these attributes."""
        out = set()
        for attr in attributes:
            for family in getattr(self, attr).describe():
                out.add(family.name)
        return frozenset(out)

    def running_inc(self, model: str) -> None:
        self.running_requests.labels(model).inc()

    def running_dec(self, model: str) -> None:
        self.running_requests.labels(model).dec()

    def record_scheduler_attempt(self, success: bool, target_model: str, endpoint: Endpoint | None) -> None:
        if endpoint is None:
            self.scheduler_attempts.labels("failure", target_model, "", "", "").inc()
        else:
            pod = endpoint.pod_name or endpoint.key
            self.scheduler_attempts.labels(
                "success" if success else "failure", target_model, pod, endpoint.namespace, str(endpoint.port)
            ).inc()

    def record_model_rewrite(self, rule_name: str, model: str, target_model: str) -> None:
        self.model_rewrite_decisions.labels(rule_name, model, target_model).inc()

    # ---- pool gauges ----------------------------------------------------------------------------

    def update_pool_gauges(self, endpoints: Sequence[Endpoint], now: float, staleness: float) -> None:
        """Both halves below at once (tests, and callers without a scrape hook)."""
        self.update_pool_averages(endpoints, now, staleness)
        self.update_endpoint_series(endpoints, now)

    def update_pool_averages(self, endpoints: Sequence[Endpoint], now: float, staleness: float) -> None:
        """Recompute the pool averages from endpoints with fresh metrics (upstream's refresh loop).

        `ready_pods` counts fresh endpoints. With none fresh the averages keep their last values, as
        upstream: a dead scrape must not read as an idle pool to an autoscaler (they start at 0).
        """
        fresh = [e for e in endpoints if e.metrics.age(now) <= staleness]
        name = self.pool_name
        n = len(fresh)
        self.pool_ready_pods.labels(name).set(n)
        if n == 0 and self._pool_averages_set:
            return
        self._pool_averages_set = n > 0
        self.pool_avg_kv.labels(name).set(sum(e.metrics.kv_cache_usage for e in fresh) / n if n else 0.0)
        self.pool_avg_queue.labels(name).set(
            sum(e.metrics.waiting_queue_size for e in fresh) / n if n else 0.0
        )
        self.pool_avg_running.labels(name).set(
            sum(e.metrics.running_requests_size for e in fresh) / n if n else 0.0
        )

    def update_endpoint_series(self, endpoints: Sequence[Endpoint], now: float) -> None:
        """One `per_pod_queue_size` (and metrics-age) series per endpoint, exactly the current ones.

        Upstream computes the per-pod series at scrape time (a custom collector); the app calls this
        before every scrape, so departed endpoints vanish and new ones appear at once.
        """
        name = self.pool_name
        self.pool_per_pod_queue.clear()
        self.endpoint_metrics_age.clear()
        for e in endpoints:
            self.pool_per_pod_queue.labels(name, e.key).set(e.metrics.waiting_queue_size)
            age = e.metrics.age(now)
            self.endpoint_metrics_age.labels(e.key).set(age if age != float("inf") else -1.0)

    def set_prefix_indexer_size(self, size: int) -> None:
        self.prefix_indexer_size.set(size)

    # ---- config ---------------------------------------------------------------------------------

    def record_config_loaded(self, generation: int, config_hash: str, source: str) -> None:
        self.config_generation.set(generation)
        self.config_hash_info.clear()
        self.config_hash_info.labels(config_hash, source).set(1)
        self.config_last_success.set(time.time())

    def record_reload(self, result: str) -> None:
        self.config_reload_total.labels(result).inc()

    def set_info(self, commit: str, build_ref: str) -> None:
        self.info.labels(commit, build_ref).set(1)

    def metric_names(self) -> Iterable[str]:
        """Every metric name as PromQL sees it (counters with `_total`; histograms by their base name)."""
        for family in self.registry.collect():
            yield f"{family.name}_total" if family.type == "counter" else family.name
