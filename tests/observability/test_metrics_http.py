"""The /metrics HTTP server: real aiohttp server on loopback, real Prometheus text, bearer-token auth."""

from __future__ import annotations

import aiohttp
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from epp.framework.types import Endpoint, EndpointMetrics, TypedName
from epp.observability.http import MetricsHttpServer
from epp.observability.metrics import EppMetrics
from epp.observability.pool import PoolGauges
from epp.requestcontrol.meter import RequestMeter


async def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(url, headers=headers or {}) as r:
        return r.status, await r.text()


async def test_metrics_served_in_prometheus_text_with_upstream_names() -> None:
    metrics = EppMetrics(CollectorRegistry(), pool_name="pool-a")
    RequestMeter(metrics).request("m", "m-target", 0, 1234)
    metrics.plugin_duration("Scorer", TypedName("queue-scorer", "queue"), 0.0002)
    eps = [
        Endpoint(
            "a",
            "127.0.0.1",
            1,
            metrics=EndpointMetrics(waiting_queue_size=4, kv_cache_usage=0.5, update_time=10.0),
        ),
        Endpoint(
            "b",
            "127.0.0.1",
            2,
            metrics=EndpointMetrics(waiting_queue_size=2, kv_cache_usage=0.1, update_time=10.0),
        ),
    ]
    refreshed = []
    gauges = PoolGauges(metrics)

    def before_scrape() -> None:
        refreshed.append(1)
        gauges.update_averages(eps, 10.5, 2.0)
        gauges.update_endpoint_series(eps, 10.5)

    server = MetricsHttpServer(metrics.registry, host="127.0.0.1", port=0, before_scrape=before_scrape)
    port = await server.start()
    try:
        status, text = await _get(f"http://127.0.0.1:{port}/metrics")
    finally:
        await server.stop()
    assert status == 200
    assert refreshed
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }
    key = (
        "inference_objective_request_total",
        (("model_name", "m"), ("priority", "0"), ("target_model_name", "m-target")),
    )
    assert samples[key] == 1.0
    assert samples[("inference_pool_average_queue_size", (("name", "pool-a"),))] == 3.0
    assert samples[("inference_pool_ready_pods", (("name", "pool-a"),))] == 2.0
    assert (
        samples[("inference_pool_per_pod_queue_size", (("model_server_pod", "a"), ("name", "pool-a")))] == 4.0
    )
    plugin_count = (
        "inference_extension_plugin_duration_seconds_count",
        (("extension_point", "Scorer"), ("plugin_name", "queue"), ("plugin_type", "queue-scorer")),
    )
    assert samples[plugin_count] == 1.0


async def test_stale_endpoints_are_not_ready_pods() -> None:
    metrics = EppMetrics(CollectorRegistry(), pool_name="p")
    eps = [
        Endpoint("fresh", "127.0.0.1", 1, metrics=EndpointMetrics(kv_cache_usage=0.4, update_time=100.0)),
        Endpoint("stale", "127.0.0.1", 2, metrics=EndpointMetrics(kv_cache_usage=1.0, update_time=90.0)),
        Endpoint("never", "127.0.0.1", 3),
    ]
    PoolGauges(metrics).update_averages(eps, now=101.0, staleness=2.0)
    reg = metrics.registry
    assert reg.get_sample_value("inference_pool_ready_pods", {"name": "p"}) == 1.0
    assert reg.get_sample_value("inference_pool_average_kv_cache_utilization", {"name": "p"}) == 0.4


async def test_bearer_token_required_when_configured(tmp_path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    server = MetricsHttpServer(
        EppMetrics(CollectorRegistry()).registry, host="127.0.0.1", port=0, token_file=str(token_file)
    )
    port = await server.start()
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        assert (await _get(url))[0] == 401
        assert (await _get(url, {"Authorization": "Bearer wrong"}))[0] == 401
        status, text = await _get(url, {"Authorization": "Bearer s3cret"})
        assert status == 200 and "inference_extension_scheduler_e2e_duration_seconds" in text
        token_file.write_text("rotated")
        import os

        os.utime(token_file, (1, 1))  # force an mtime change even within the same second
        assert (await _get(url, {"Authorization": "Bearer s3cret"}))[0] == 401
        assert (await _get(url, {"Authorization": "Bearer rotated"}))[0] == 200
    finally:
        await server.stop()
