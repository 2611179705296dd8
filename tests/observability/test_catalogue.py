"""Every metric's name, type, labels, buckets and help text, as upstream exports them.

The expected values are upstream's (`pkg/epp/metrics/metrics.go` and `collectors/inference_pool.go` at
the reference commit), written out here rather than imported, so a drift in `EppMetrics` fails. Buckets
are read back from the real Prometheus text exposition.
"""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from epp.observability.metrics import EppMetrics

M = ("model_name", "target_model_name")
LATENCY = [
    0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 45, 60,
    120, 180, 240, 300, 360, 480, 600, 900, 1200, 1800, 2700, 3600,
]  # fmt: skip
SMALL = [0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1]
REQUEST_SIZES = [
    64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536,
    131072, 262144, 524288, 1048576, 2097152, 4194304, 8388608,
    16777216, 33554432, 67108864, 134217728, 268435456, 536870912, 1073741824,
]  # fmt: skip
RESPONSE_SIZES = [1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32778, 65536]
INPUT_TOKENS = [
    1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32778, 65536,
    131072, 262144, 524288, 1048576,
]  # fmt: skip
OUTPUT_TOKENS = [1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192]
NTPOT = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0]
TPOT = [
    0.0005, 0.00205, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.125, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0,
    1.5, 2, 3, 4.5, 6, 12, 18, 24, 30, 36, 48, 60, 90, 120, 180, 270, 360,
]  # fmt: skip
PREDICTION = [0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0]
QUEUE = [0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]
FC_QUEUE_LABELS = ("fairness_id", "priority", "inference_pool", *M)

# name: (type, labels, buckets or None, upstream help text or None for ours)
UPSTREAM: dict[str, tuple[str, tuple[str, ...], list[float] | None, str]] = {
    "inference_objective_request_total": (
        "counter",
        (*M, "priority"),
        None,
        "Counter of inference objective requests broken out for each model and target model.",
    ),
    "inference_objective_request_error_total": (
        "counter",
        (*M, "error_code"),
        None,
        "Counter of inference objective requests errors broken out for each model and target model.",
    ),
    "inference_objective_request_duration_seconds": (
        "histogram",
        M,
        LATENCY,
        "Inference objective response latency distribution in seconds for each model and target model.",
    ),
    "inference_objective_request_ttft_seconds": (
        "histogram",
        M,
        LATENCY,
        "Inference model TTFT distribution in seconds for each model and target model.",
    ),
    "inference_objective_request_sizes": (
        "histogram",
        M,
        REQUEST_SIZES,
        "Inference objective requests size distribution in bytes for each model and target model.",
    ),
    "inference_objective_response_sizes": (
        "histogram",
        M,
        RESPONSE_SIZES,
        "Inference objective responses size distribution in bytes for each model and target model.",
    ),
    "inference_objective_input_tokens": (
        "histogram",
        M,
        INPUT_TOKENS,
        "Inference objective input token count distribution for requests in each model.",
    ),
    "inference_objective_output_tokens": (
        "histogram",
        M,
        OUTPUT_TOKENS,
        "Inference objective output token count distribution for requests in each model.",
    ),
    "inference_objective_prompt_cached_tokens": (
        "histogram",
        M,
        INPUT_TOKENS,
        "Inference objective prompt cached token count distribution for requests in each model.",
    ),
    "inference_objective_running_requests": (
        "gauge",
        ("model_name",),
        None,
        "Inference objective number of running requests in each model.",
    ),
    "inference_objective_normalized_time_per_output_token_seconds": (
        "histogram",
        M,
        NTPOT,
        "Inference objective latency divided by number of output tokens in seconds for each model and target "
        "model.",
    ),
    # the latency-predictor family (predicted-latency-producer)
    "inference_objective_request_predicted_ttft_seconds": (
        "histogram",
        M,
        LATENCY,
        "Inference model Predicted TTFT distribution in seconds for each model and target model.",
    ),
    "inference_objective_request_ttft_prediction_duration_seconds": (
        "histogram",
        M,
        PREDICTION,
        "Duration taken to generate TTFT predictions in seconds for each model and target model.",
    ),
    "inference_objective_request_tpot_seconds": (
        "histogram",
        M,
        TPOT,
        "Inference model TPOT distribution in seconds for each model and target model.",
    ),
    "inference_objective_request_predicted_tpot_seconds": (
        "histogram",
        M,
        TPOT,
        "Inference model Predicted TPOT distribution in seconds for each model and target model.",
    ),
    "inference_objective_request_tpot_prediction_duration_seconds": (
        "histogram",
        M,
        PREDICTION,
        "Duration taken to generate TPOT predictions in seconds for each model and target model.",
    ),
    "inference_objective_request_slo_violation_total": (
        "counter",
        (*M, "type"),
        None,
        "Counter of SLO violations for each model, target model, and violation type.",
    ),
    "inference_objective_inference_request_metric": (
        "gauge",
        (*M, "type"),
        None,
        "Consolidated gauge for various inference request metrics including TTFT, TPOT, SLOs, and prediction "
        "durations.",
    ),
    "inference_pool_average_kv_cache_utilization": (
        "gauge",
        ("name",),
        None,
        "The average kv cache utilization for an inference server pool.",
    ),
    "inference_pool_average_queue_size": (
        "gauge",
        ("name",),
        None,
        "The average number of requests pending in the model server queue.",
    ),
    "inference_pool_average_running_requests": (
        "gauge",
        ("name",),
        None,
        "The average number of running requests across model servers in the pool.",
    ),
    "inference_pool_ready_pods": (
        "gauge",
        ("name",),
        None,
        "The number of ready pods in the inference server pool.",
    ),
    "inference_pool_per_pod_queue_size": (
        "gauge",
        ("name", "model_server_pod"),
        None,
        "The total number of requests pending in the model server queue for each underlying pod.",
    ),
    "inference_extension_scheduler_e2e_duration_seconds": (
        "histogram",
        (),
        SMALL,
        "End-to-end scheduling latency distribution in seconds.",
    ),
    "inference_extension_scheduler_attempts_total": (
        "counter",
        ("status", "target_model_name", "pod_name", "namespace", "port"),
        None,
        "Total number of scheduling attempts.",
    ),
    "inference_extension_plugin_duration_seconds": (
        "histogram",
        ("extension_point", "plugin_type", "plugin_name"),
        SMALL,
        "Plugin processing latency distribution in seconds for each extension point, plugin type and "
        "plugin name.",
    ),
    "inference_extension_prefix_indexer_size": ("gauge", (), None, "Size of the prefix indexer."),
    "inference_extension_prefix_indexer_hit_ratio": (
        "histogram",
        (),
        [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
        "Ratio of prefix length matched to total prefix length in the cache lookup.",
    ),
    "inference_extension_prefix_indexer_hit_bytes": (
        "histogram",
        (),
        [0, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536],
        "Length of the prefix match in number of bytes in the cache lookup.",
    ),
    "inference_extension_info": (
        "gauge",
        ("commit", "build_ref"),
        None,
        "General information of the current build of Inference Extension.",
    ),
    "inference_extension_model_rewrite_decisions_total": (
        "counter",
        ("model_rewrite_name", "model_name", "target_model"),
        None,
        "Total number of inference model rewrite decisions.",
    ),
    "inference_extension_flow_control_request_queue_duration_seconds": (
        "histogram",
        ("fairness_id", "priority", "outcome", "inference_pool", *M),
        QUEUE,
        "Distribution of total time requests spend in the Flow Control layer (from enqueue to final "
        "outcome).",
    ),
    "inference_extension_flow_control_dispatch_cycle_duration_seconds": (
        "histogram",
        (),
        SMALL,
        "Distribution of time taken for each internal dispatch cycle in the Flow Control layer.",
    ),
    "inference_extension_flow_control_request_enqueue_duration_seconds": (
        "histogram",
        ("fairness_id", "priority", "outcome"),
        SMALL,
        "Distribution of time taken to enqueue requests into the Flow Control layer.",
    ),
    "inference_extension_flow_control_queue_size": (
        "gauge",
        FC_QUEUE_LABELS,
        None,
        "Current number of requests actively held in the Flow Control queue.",
    ),
    "inference_extension_flow_control_queue_bytes": (
        "gauge",
        FC_QUEUE_LABELS,
        None,
        "Current total size in bytes of requests actively held in the Flow Control queue.",
    ),
    "inference_extension_flow_control_pool_saturation": (
        "gauge",
        ("inference_pool",),
        None,
        "Current saturation level of the inference pool (0.0 = empty, 1.0 = fully saturated).",
    ),
}
OURS = {
    "epp_config_reload_total": ("counter", ("result",)),
    "epp_config_last_reload_success_timestamp_seconds": ("gauge", ()),
    "epp_config_generation": ("gauge", ()),
    "epp_config_hash_info": ("gauge", ("hash", "source")),
    "epp_model_server_scrape_errors_total": ("counter", ("endpoint",)),
    "epp_endpoint_metrics_age_seconds": ("gauge", ("endpoint",)),
    "epp_response_body_total": ("counter", ("path",)),
    "epp_workers": ("gauge", ("state",)),
    "epp_worker_restarts_total": ("counter", ()),
    "epp_worker_sync_messages_total": ("counter", ("direction",)),
    "epp_worker_sync_lag_seconds": ("histogram", ()),
    "epp_asyncio_tasks": ("gauge", ()),
    "epp_worker_asyncio_tasks": ("gauge", ()),
    "epp_ha_peers": ("gauge", ()),
    "epp_ha_messages_total": ("counter", ("direction",)),
    "epp_ha_sync_lag_seconds": ("histogram", ()),
    "epp_ha_snapshots_total": ("counter", ("event",)),
    "epp_latency_prediction_error_ratio": ("histogram", ("type",)),
    "epp_hardware_prefill_seconds_per_token": ("gauge", ("hardware_class",)),
}


def _families(metrics: EppMetrics) -> dict[str, object]:
    """The text exposition after one sample per metric (labels filled with 'x'), parsed back."""
    for collector in metrics.collectors():
        labelnames = collector._labelnames
        child = collector.labels(*["x"] * len(labelnames)) if labelnames else collector
        if hasattr(child, "observe"):
            child.observe(0.0)
        elif hasattr(child, "set"):
            child.set(1.0)
        else:
            child.inc()
    text = generate_latest(metrics.registry).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


@pytest.fixture(scope="module")
def families() -> dict[str, object]:
    return _families(EppMetrics(CollectorRegistry()))


def _family(families, name: str):
    return families.get(name) or families[name.removesuffix("_total")]


@pytest.mark.parametrize("name", sorted(UPSTREAM))
def test_upstream_metric(families, name: str) -> None:
    kind, labels, buckets, help_text = UPSTREAM[name]
    fam = _family(families, name)
    assert fam.type == kind
    assert fam.documentation == f"[ALPHA] {help_text}"
    samples = [s for s in fam.samples if not s.name.endswith(("_created",))]
    label_sets = {tuple(sorted(k for k in s.labels if k != "le")) for s in samples}
    assert label_sets == {tuple(sorted(labels))}
    if buckets is not None:
        les = [float(s.labels["le"]) for s in samples if s.name.endswith("_bucket")]
        assert les == [*map(float, buckets), float("inf")]


@pytest.mark.parametrize("name", sorted(OURS))
def test_our_metric(families, name: str) -> None:
    kind, labels = OURS[name]
    fam = _family(families, name)
    assert fam.type == kind
    assert not fam.documentation.startswith("[ALPHA]")
    samples = [s for s in fam.samples if not s.name.endswith("_created")]
    assert {tuple(sorted(k for k in s.labels if k != "le")) for s in samples} == {tuple(sorted(labels))}


def test_nothing_unlisted_is_exported(families) -> None:
    exported = set(EppMetrics(CollectorRegistry()).metric_names())
    assert exported == set(UPSTREAM) | set(OURS)


def test_e2e_required_metrics_are_registered() -> None:
    """Upstream's e2e `verifyMetrics` list (protocol reference §4)."""
    required = {
        "inference_objective_request_total",
        "inference_objective_request_error_total",
        "inference_objective_request_duration_seconds",
        "inference_objective_normalized_time_per_output_token_seconds",
        "inference_objective_request_sizes",
        "inference_objective_response_sizes",
        "inference_objective_input_tokens",
        "inference_objective_output_tokens",
        "inference_pool_average_kv_cache_utilization",
        "inference_pool_average_queue_size",
        "inference_pool_per_pod_queue_size",
        "inference_objective_running_requests",
        "inference_pool_ready_pods",
        "inference_extension_info",
    }
    assert required <= set(EppMetrics(CollectorRegistry()).metric_names())
