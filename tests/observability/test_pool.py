"""Pool gauges: averages over fresh endpoints every interval, per-endpoint series at scrape time."""

from __future__ import annotations

import asyncio
import itertools
import logging

from prometheus_client import CollectorRegistry

from epp.datalayer.datastore import Datastore
from epp.framework.types import Endpoint, EndpointMetrics
from epp.observability.metrics import EppMetrics
from epp.observability.pool import PoolGauges, PoolMetricsRefresher, describe_endpoints
from tests.helpers import until


def _ep(key: str, queue: int = 0, kv: float = 0.0, running: int = 0, at: float = 0.0) -> Endpoint:
    return Endpoint(
        key,
        "127.0.0.1",
        8000,
        metrics=EndpointMetrics(
            waiting_queue_size=queue, kv_cache_usage=kv, running_requests_size=running, update_time=at
        ),
    )


def _value(m: EppMetrics, metric: str, /, **labels: str) -> float | None:
    return m.registry.get_sample_value(metric, labels)


def test_averages_over_fresh_endpoints_and_kept_when_none_is_fresh() -> None:
    m = EppMetrics(CollectorRegistry(), pool_name="p")
    gauges = PoolGauges(m)
    eps = [_ep("a", 4, 0.2, 2, at=100.0), _ep("b", 2, 0.6, 4, at=100.0), _ep("stale", 90, 1.0, 9, at=50.0)]
    gauges.update_averages(eps, now=101.0, staleness=2.0)
    assert _value(m, "inference_pool_ready_pods", name="p") == 2
    assert _value(m, "inference_pool_average_queue_size", name="p") == 3
    assert _value(m, "inference_pool_average_running_requests", name="p") == 3
    assert abs(_value(m, "inference_pool_average_kv_cache_utilization", name="p") - 0.4) < 1e-9
    # every endpoint goes stale: ready pods 0, averages keep their last values (upstream)
    gauges.update_averages(eps, now=200.0, staleness=2.0)
    assert _value(m, "inference_pool_ready_pods", name="p") == 0
    assert _value(m, "inference_pool_average_queue_size", name="p") == 3


def test_averages_start_at_zero_before_any_fresh_endpoint() -> None:
    m = EppMetrics(CollectorRegistry(), pool_name="p")
    PoolGauges(m).update_averages([_ep("never")], now=5.0, staleness=2.0)
    assert _value(m, "inference_pool_average_kv_cache_utilization", name="p") == 0
    assert _value(m, "inference_pool_ready_pods", name="p") == 0


def test_endpoint_series_follow_membership() -> None:
    m = EppMetrics(CollectorRegistry(), pool_name="p")
    gauges = PoolGauges(m)
    gauges.update_endpoint_series([_ep("a-rank-0", 3, at=9.0), _ep("b-rank-0", 1)], now=10.0)
    assert _value(m, "inference_pool_per_pod_queue_size", name="p", model_server_pod="a-rank-0") == 3
    assert _value(m, "epp_endpoint_metrics_age_seconds", endpoint="a-rank-0") == 1.0
    assert _value(m, "epp_endpoint_metrics_age_seconds", endpoint="b-rank-0") == -1.0  # never scraped
    gauges.update_endpoint_series([_ep("b-rank-0", 5)], now=11.0)
    assert _value(m, "inference_pool_per_pod_queue_size", name="p", model_server_pod="a-rank-0") is None
    assert _value(m, "inference_pool_per_pod_queue_size", name="p", model_server_pod="b-rank-0") == 5


class _Indexed:
    def __init__(self, n: int) -> None:
        self.n = n

    def index_size(self) -> int:
        return self.n


class _Measured:
    def prefill_speeds(self) -> dict[str, float]:
        return {"H100": 0.0003, "A100": 0.0007}


async def test_refresher_honours_the_interval_and_refresh_now() -> None:
    clock = [100.0]
    ds = Datastore(clock=lambda: clock[0])
    ds.set_endpoints([_ep("a", 2, 0.5, at=100.0)])
    m = EppMetrics(CollectorRegistry(), pool_name="p")
    plugins = [_Indexed(7), object(), _Indexed(5), _Measured()]
    r = PoolMetricsRefresher(m, ds, lambda: plugins, interval=0.25, staleness=2.0, size_interval=0.05)
    loop = asyncio.get_running_loop()
    times: list[float] = []
    real = r.refresh_pool

    def timed() -> None:
        times.append(loop.time())
        real()

    r.refresh_pool = timed  # type: ignore[method-assign]
    task = asyncio.create_task(r.run())
    try:
        await until(lambda: len(times) >= 4)
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert all(g >= 0.24 for g in gaps), gaps
        assert _value(m, "inference_pool_average_queue_size", name="p") == 2
        assert _value(m, "inference_extension_prefix_indexer_size") == 12
        assert _value(m, "epp_hardware_prefill_seconds_per_token", hardware_class="A100") == 0.0007

        # a long interval: refresh_now still recomputes at once
        r.interval = 30.0
        n = len(times)
        await until(lambda: len(times) > n)  # the refresh after which the 30 s interval applies
        ds.update_metrics("a", EndpointMetrics(waiting_queue_size=9, update_time=100.0))
        r.refresh_now()
        # within 2 s, not the 30 s interval
        await until(lambda: _value(m, "inference_pool_average_queue_size", name="p") == 9, 2.0)
        # the prefix indexer size keeps its own 50 ms period
        plugins[0].n = 1
        await until(lambda: _value(m, "inference_extension_prefix_indexer_size") == 6, 2.0)
    finally:
        task.cancel()


async def test_before_scrape_uses_the_datastore_now() -> None:
    ds = Datastore(clock=lambda: 10.0)
    ds.set_endpoints([_ep("x-rank-0", 4, at=9.5)])
    m = EppMetrics(CollectorRegistry(), pool_name="p")
    r = PoolMetricsRefresher(m, ds, list, interval=5.0, staleness=2.0)
    r.before_scrape()
    assert _value(m, "inference_pool_per_pod_queue_size", name="p", model_server_pod="x-rank-0") == 4
    assert _value(m, "epp_endpoint_metrics_age_seconds", endpoint="x-rank-0") == 0.5


def test_debug_snapshot_of_the_endpoints(caplog) -> None:
    ds = Datastore(clock=lambda: 10.0)
    ds.set_endpoints([_ep("a", 1, 0.25, 2, at=9.0), _ep("b", at=1.0), _ep("c")])
    r = PoolMetricsRefresher(
        EppMetrics(CollectorRegistry(), pool_name="p"), ds, list, interval=1, staleness=2
    )
    with caplog.at_level(logging.DEBUG, logger="epp.observability.pool"):
        r.refresh_pool()
        r.refresh_pool()  # within debug_interval: not logged again
    (record,) = caplog.records
    assert record.getMessage() == (
        "pool p: 3 endpoint(s): a[queue=1 running=2 kv=0.250 age=1.00s], "
        "b[queue=0 running=0 kv=0.000 age=9.00s STALE], c[queue=0 running=0 kv=0.000 never scraped]"
    )
    assert describe_endpoints([], 0.0, 1.0) == "(none)"


class _Broken:
    def __init__(self) -> None:
        self.fail = True

    def index_size(self) -> int:
        if self.fail:
            raise RuntimeError("index corrupted")
        return 3


async def test_a_failing_refresh_is_logged_once_and_the_loop_goes_on(caplog) -> None:
    ds = Datastore(clock=lambda: 100.0)
    ds.set_endpoints([_ep("a", 2, 0.5, at=100.0)])
    m = EppMetrics(CollectorRegistry(), pool_name="p")
    broken = _Broken()
    r = PoolMetricsRefresher(m, ds, lambda: [broken], interval=0.02, staleness=2.0, size_interval=0.02)
    task = asyncio.create_task(r.run())
    try:
        with caplog.at_level(logging.INFO, logger="epp.observability.pool"):

            def refreshed() -> bool:  # the pool averages keep refreshing although the size fails each time
                assert not task.done(), task
                return r.refreshes >= 5

            await until(refreshed, 5.0)
            failures = [rec for rec in caplog.records if "refresh_prefix_size failed" in rec.getMessage()]
            assert len(failures) == 1 and failures[0].exc_info is not None
            broken.fail = False
            await until(lambda: _value(m, "inference_extension_prefix_indexer_size") == 3, 5.0)
            assert any("refresh_prefix_size works again" in rec.getMessage() for rec in caplog.records)
    finally:
        task.cancel()
