"""The scrape loops against real HTTP servers on 127.0.0.1 serving each engine's metrics format."""

from __future__ import annotations

import asyncio
import logging
import math
import time

import pytest

from epp.datalayer.data_source import MetricsDataSource
from epp.datalayer.datastore import Datastore
from epp.datalayer.extractor import CoreMetricsExtractor
from epp.datalayer.metric_spec import ENGINE_LABEL_KEY
from epp.datalayer.scraper import Scraper
from epp.framework.types import Endpoint
from epp.logs import TRACE
from epp.tools.engine_pages import ServerState, page_for_engine, vllm_page
from tests.helpers import free_port, until

from .servers import MetricsServer

INTERVAL = 0.05


def endpoint_for(
    server_or_port: MetricsServer | int, key: str | None = None, engine: str | None = None
) -> Endpoint:
    port = server_or_port if isinstance(server_or_port, int) else server_or_port.port
    labels = {ENGINE_LABEL_KEY: engine} if engine else {}
    return Endpoint(key=key or f"127.0.0.1:{port}", ip="127.0.0.1", port=port, labels=labels)


def make_scraper(
    ds: Datastore, *, timeout: float = 1.0, extractor: CoreMetricsExtractor | None = None
) -> Scraper:
    source = MetricsDataSource()
    ext = extractor or CoreMetricsExtractor()
    return Scraper(ds, data_source=lambda: source, extractor=lambda: ext, interval=INTERVAL, timeout=timeout)


@pytest.fixture
async def servers():
    started: list[MetricsServer] = []

    async def start(page: str = "", port: int = 0) -> MetricsServer:
        server = await MetricsServer(page).start(port)
        started.append(server)
        return server

    yield start
    for server in started:
        await server.stop()


@pytest.fixture
async def scraper_factory():
    made: list[Scraper] = []

    def make(ds: Datastore, **kwargs) -> Scraper:
        scraper = make_scraper(ds, **kwargs)
        made.append(scraper)
        return scraper

    yield make
    for scraper in made:
        await scraper.stop()


async def test_scrapes_vllm_page_into_the_datastore(servers, scraper_factory):
    state = ServerState(
        waiting=3, running=5, kv_usage=0.4, running_loras=("a", " b"), waiting_loras=("c",), max_loras=4,
        block_size=32, num_blocks=1234,
    )  # fmt: skip
    server = await servers(vllm_page(state))
    ds = Datastore()
    ds.set_endpoints([endpoint_for(server)])
    ds.mark_synced()
    scraper = scraper_factory(ds)
    await scraper.start()
    await asyncio.wait_for(scraper.first_round_done.wait(), 2)
    m = ds.get(f"127.0.0.1:{server.port}").metrics
    assert (m.waiting_queue_size, m.running_requests_size, m.kv_cache_usage) == (3, 5, 0.4)
    assert m.active_models == {"a", "b"} and m.waiting_models == {"c"} and m.max_active_models == 4
    assert (m.cache_block_size, m.cache_num_blocks) == (32, 1234)
    assert m.update_time > 0
    assert ds.get(f"127.0.0.1:{server.port}").healthy
    stats = scraper.stats()[f"127.0.0.1:{server.port}"]
    assert stats.last_error == "" and stats.attempts >= 1 and stats.last_duration > 0


@pytest.mark.parametrize("engine", ["vllm", "sglang", "trtllm-serve", "triton-tensorrt-llm"])
async def test_each_engine_is_read_by_its_label(servers, scraper_factory, engine):
    state = ServerState(waiting=7, running=2, kv_usage=0.25, block_size=64, num_blocks=4096)
    server = await servers(page_for_engine(engine, state))
    ds = Datastore()
    ds.set_endpoints([endpoint_for(server, engine=engine)])
    ds.mark_synced()
    scraper = scraper_factory(ds)
    await scraper.start()
    await asyncio.wait_for(scraper.first_round_done.wait(), 2)
    m = ds.snapshot()[0].metrics
    assert (m.waiting_queue_size, m.running_requests_size, m.kv_cache_usage) == (7, 2, 0.25)
    assert (m.cache_block_size, m.cache_num_blocks) == (64, 4096)
    assert scraper.stats()[ds.snapshot()[0].key].last_error == ""


async def test_sglang_server_without_label_is_misread_but_fine_with_engine_label(servers, scraper_factory):
    """The engine label is what makes SGLang names readable; without it the default (vLLM) finds nothing."""
    server = await servers(page_for_engine("sglang", ServerState(waiting=4, running=1, kv_usage=0.5)))
    ds = Datastore()
    ds.set_endpoints(
        [endpoint_for(server, key="plain"), endpoint_for(server, key="labelled", engine="sglang")]
    )
    ds.mark_synced()
    scraper = scraper_factory(ds)
    await scraper.start()
    await asyncio.wait_for(scraper.first_round_done.wait(), 2)
    assert ds.get("labelled").metrics.waiting_queue_size == 4
    assert ds.get("plain").metrics.update_time == 0.0  # nothing read: stays stale
    assert "queued" in scraper.stats()["plain"].last_error


async def test_a_metric_change_is_visible_within_three_scrapes(servers, scraper_factory):
    server = await servers(vllm_page(ServerState(waiting=1)))
    ds = Datastore()
    ds.set_endpoints([endpoint_for(server)])
    ds.mark_synced()
    scraper = scraper_factory(ds)
    await scraper.start()
    await asyncio.wait_for(scraper.first_round_done.wait(), 2)
    key = ds.snapshot()[0].key
    for new_value in (9, 2, 17):
        server.page = vllm_page(ServerState(waiting=new_value))
        before = server.requests
        changed_at = time.monotonic()
        await until(lambda v=new_value: ds.get(key).metrics.waiting_queue_size == v, timeout=2)
        # At most one scrape was in flight with the old page; the next one must carry the change.
        assert server.requests - before <= 3
        assert time.monotonic() - changed_at < 1.0


async def test_dead_server_is_unhealthy_at_once_and_others_stay_healthy(servers, scraper_factory):
    live = await servers(vllm_page(ServerState(waiting=2)))
    dead_port = free_port()
    ds = Datastore()
    ds.set_endpoints([endpoint_for(live, key="live"), endpoint_for(dead_port, key="dead")])
    ds.mark_synced()
    scraper = scraper_factory(ds)
    await scraper.start()
    await asyncio.wait_for(scraper.first_round_done.wait(), 2)
    assert not ds.get("dead").healthy
    assert ds.get("live").healthy
    assert [e.key for e in ds.candidates(staleness=2.0)] == ["live"]
    stats = scraper.stats()["dead"]
    assert stats.reachable is False and stats.failures >= 1 and "Connect" in stats.last_error


async def test_server_that_dies_keeps_last_metrics_and_comes_back(servers, scraper_factory):
    server = await servers(vllm_page(ServerState(waiting=5, kv_usage=0.3)))
    port = server.port
    ds = Datastore()
    ds.set_endpoints([endpoint_for(server, key="ep")])
    ds.mark_synced()
    scraper = scraper_factory(ds)
    await scraper.start()
    await until(lambda: ds.get("ep").metrics.waiting_queue_size == 5)
    await server.stop()
    await until(lambda: not ds.get("ep").healthy)
    stale = ds.get("ep").metrics
    assert stale.waiting_queue_size == 5 and stale.kv_cache_usage == 0.3
    await asyncio.sleep(3 * INTERVAL)
    assert ds.get("ep").metrics.update_time == stale.update_time  # no success, no new stamp
    revived = await servers(vllm_page(ServerState(waiting=8)), port=port)
    assert revived.port == port
    await until(lambda: ds.get("ep").healthy and ds.get("ep").metrics.waiting_queue_size == 8)
    assert ds.get("ep").metrics.update_time > stale.update_time


async def test_hung_server_times_out_and_does_not_delay_the_others(servers, scraper_factory):
    fast = await servers(vllm_page(ServerState(waiting=1)))
    hung = await servers(vllm_page(ServerState(waiting=1)))
    hung.hang = True
    ds = Datastore()
    ds.set_endpoints([endpoint_for(fast, key="fast"), endpoint_for(hung, key="hung")])
    ds.mark_synced()
    scraper = scraper_factory(ds, timeout=0.7)
    started = time.monotonic()
    await scraper.start()
    await asyncio.sleep(0.3)
    # While the hung scrape is outstanding, the fast endpoint kept its 50 ms cadence.
    assert fast.requests >= 4
    assert not scraper.first_round_done.is_set()  # the hung endpoint has not been tried to the end yet
    await asyncio.wait_for(scraper.first_round_done.wait(), 2)
    assert time.monotonic() - started >= 0.65
    assert not ds.get("hung").healthy and scraper.stats()["hung"].last_error == "timed out"
    assert ds.get("fast").healthy
    hung.release()
    await until(lambda: ds.get("hung").healthy)


@pytest.mark.parametrize("outcome", ["success", "failure"])
async def test_a_scrape_that_lands_after_its_key_moved_is_dropped(servers, scraper_factory, outcome):
    """A StatefulSet pod recreated under the same key at a new address (or reordered targetPorts): the
    answer of the old address must not become the new one's metrics or health."""
    old = await servers(vllm_page(ServerState(waiting=7)))
    new = await servers(vllm_page(ServerState(waiting=2)))
    old.hang = new.hang = True
    ds = Datastore()
    ds.set_endpoints([endpoint_for(old, key="pod-rank-0")])
    ds.mark_synced()
    scraper = scraper_factory(ds, timeout=0.3 if outcome == "failure" else 5.0)
    await scraper.start()
    await until(lambda: old.requests == 1)  # the scrape of the old address is in flight
    ds.set_endpoints([endpoint_for(new, key="pod-rank-0")])
    if outcome == "success":
        old.release()
    await until(lambda: new.requests >= 1)  # the loop is done with the old address
    now = ds.get("pod-rank-0")
    assert now.port == new.port
    assert now.healthy and now.metrics.waiting_queue_size == 0
    new.release()
    await until(lambda: ds.get("pod-rank-0").metrics.waiting_queue_size == 2)


async def test_http_error_status_is_a_failed_scrape(servers, scraper_factory):
    server = await servers(vllm_page(ServerState(waiting=6)))
    ds = Datastore()
    ds.set_endpoints([endpoint_for(server, key="ep")])
    ds.mark_synced()
    scraper = scraper_factory(ds)
    await scraper.start()
    await until(lambda: ds.get("ep").metrics.waiting_queue_size == 6)
    server.status = 503
    server.page = vllm_page(ServerState(waiting=99))
    await until(lambda: not ds.get("ep").healthy)
    assert ds.get("ep").metrics.waiting_queue_size == 6
    assert scraper.stats()["ep"].last_error == "HTTP 503"
    server.status = 200
    await until(lambda: ds.get("ep").healthy and ds.get("ep").metrics.waiting_queue_size == 99)


MALFORMED = """\
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="m"} 4
this line is not prometheus at all {{{
vllm:num_requests_running{model_name="m" 3
vllm:kv_cache_usage_perc{model_name="m"} zero-point-five
"""


async def test_malformed_lines_are_skipped_and_good_series_kept(servers, scraper_factory):
    server = await servers(vllm_page(ServerState(waiting=1, running=2, kv_usage=0.7)))
    ds = Datastore()
    ds.set_endpoints([endpoint_for(server, key="ep")])
    ds.mark_synced()
    scraper = scraper_factory(ds)
    await scraper.start()
    await until(lambda: ds.get("ep").metrics.running_requests_size == 2)
    first = ds.get("ep").metrics
    server.page = MALFORMED
    await until(lambda: ds.get("ep").metrics.waiting_queue_size == 4)
    m = ds.get("ep").metrics
    assert (m.running_requests_size, m.kv_cache_usage) == (2, 0.7)  # their lines are broken: last good kept
    assert m.update_time > first.update_time  # the queue was read: the metrics are fresh
    assert ds.get("ep").healthy
    err = scraper.stats()["ep"].last_error
    assert "2 malformed line(s)" in err and "running" in err and "kv_usage" in err


async def test_missing_series_and_nan_keep_last_values(servers, scraper_factory):
    server = await servers(vllm_page(ServerState(waiting=3, running=4, kv_usage=0.6)))
    ds = Datastore()
    ds.set_endpoints([endpoint_for(server, key="ep")])
    ds.mark_synced()
    scraper = scraper_factory(ds)
    await scraper.start()
    await until(lambda: ds.get("ep").metrics.kv_cache_usage == 0.6)
    page = vllm_page(ServerState(waiting=8, running=4, kv_usage=math.nan))
    server.page = "\n".join(line for line in page.splitlines() if "num_requests_running" not in line) + "\n"
    await until(lambda: ds.get("ep").metrics.waiting_queue_size == 8)
    m = ds.get("ep").metrics
    assert m.kv_cache_usage == 0.6 and m.running_requests_size == 4
    assert not math.isnan(m.kv_cache_usage)


async def test_page_with_nothing_known_goes_stale_but_stays_healthy(servers, scraper_factory):
    server = await servers(vllm_page(ServerState(waiting=3)))
    ds = Datastore()
    ds.set_endpoints([endpoint_for(server, key="ep")])
    ds.mark_synced()
    scraper = scraper_factory(ds)
    await scraper.start()
    await until(lambda: ds.get("ep").metrics.update_time > 0)
    server.page = "<html>not metrics</html>\n"
    requests = server.requests
    await until(lambda: server.requests >= requests + 2)
    stamp = ds.get("ep").metrics.update_time
    await until(lambda: server.requests >= requests + 4)
    assert ds.get("ep").metrics.update_time == stamp
    assert ds.get("ep").healthy


async def test_loops_follow_membership(servers, scraper_factory):
    a = await servers(vllm_page(ServerState(waiting=1)))
    b = await servers(vllm_page(ServerState(waiting=2)))
    ds = Datastore()
    ds.set_endpoints([endpoint_for(a, key="a")])
    ds.mark_synced()
    scraper = scraper_factory(ds)
    await scraper.start()
    await until(lambda: a.requests >= 2)
    assert b.requests == 0
    ds.upsert(endpoint_for(b, key="b"))
    await until(lambda: ds.get("b").metrics.waiting_queue_size == 2)
    ds.remove("a")
    await asyncio.sleep(INTERVAL)  # a scrape already in flight may still land
    count, b_count = a.requests, b.requests
    await until(lambda: b.requests >= b_count + 4)
    assert a.requests == count
    assert set(scraper.stats()) == {"b"}


async def test_first_round_waits_for_sync_and_every_endpoint(servers, scraper_factory):
    server = await servers(vllm_page(ServerState(waiting=1)))
    ds = Datastore()
    scraper = scraper_factory(ds)
    await scraper.start()  # before the source delivered anything
    await asyncio.sleep(2 * INTERVAL)
    assert not scraper.first_round_done.is_set()
    ds.set_endpoints([endpoint_for(server, key="a"), endpoint_for(free_port(), key="dead")])
    ds.mark_synced()
    await asyncio.wait_for(scraper.first_round_done.wait(), 2)
    assert ds.get("a").metrics.update_time > 0 and not ds.get("dead").healthy


async def test_first_round_with_an_empty_synced_pool_is_done_at_once(scraper_factory):
    ds = Datastore()
    ds.mark_synced()
    scraper = scraper_factory(ds)
    await scraper.start()
    assert scraper.first_round_done.is_set()


async def test_config_is_read_every_round(servers):
    """Swapping the extractor (a config reload) changes what the running loops read."""
    server = await servers(page_for_engine("sglang", ServerState(waiting=6)))
    ds = Datastore()
    ds.set_endpoints([endpoint_for(server, key="ep")])
    ds.mark_synced()
    current = {"ext": CoreMetricsExtractor()}
    source = MetricsDataSource()
    scraper = Scraper(ds, data_source=lambda: source, extractor=lambda: current["ext"], interval=INTERVAL)
    await scraper.start()
    try:
        await asyncio.wait_for(scraper.first_round_done.wait(), 2)
        assert ds.get("ep").metrics.update_time == 0.0
        current["ext"] = CoreMetricsExtractor(default_engine="sglang")
        await until(lambda: ds.get("ep").metrics.waiting_queue_size == 6)
    finally:
        await scraper.stop()


async def test_no_data_layer_means_no_scraping(servers):
    server = await servers(vllm_page(ServerState(waiting=6)))
    ds = Datastore()
    ds.set_endpoints([endpoint_for(server, key="ep")])
    ds.mark_synced()
    scraper = Scraper(ds, data_source=lambda: None, extractor=lambda: None, interval=INTERVAL)
    await scraper.start()
    try:
        await asyncio.wait_for(scraper.first_round_done.wait(), 2)
        await asyncio.sleep(3 * INTERVAL)
        assert server.requests == 0
    finally:
        await scraper.stop()


async def test_failures_log_trace_every_time_and_info_on_change(servers, scraper_factory, caplog):
    server = await servers(vllm_page(ServerState(waiting=1)))
    ds = Datastore()
    ds.set_endpoints([endpoint_for(server, key="ep")])
    ds.mark_synced()
    caplog.set_level(TRACE, logger="epp.datalayer.scraper")
    scraper = scraper_factory(ds)
    await scraper.start()
    await until(lambda: ds.get("ep").metrics.update_time > 0)
    server.status = 500
    await until(lambda: scraper.stats()["ep"].consecutive_failures >= 4)
    server.status = 200
    await until(lambda: ds.get("ep").healthy)
    records = [r for r in caplog.records if r.name == "epp.datalayer.scraper"]
    trace_failures = [r for r in records if r.levelno == TRACE and "failed" in r.getMessage()]
    info = [r.getMessage() for r in records if r.levelno == logging.INFO]
    assert len(trace_failures) >= 4
    assert len([m for m in info if "unreachable" in m]) == 1
    assert len([m for m in info if "is reachable" in m]) == 1


async def test_connections_are_reused(servers, scraper_factory):
    server = await servers(vllm_page(ServerState(waiting=1)))
    ds = Datastore()
    ds.set_endpoints([endpoint_for(server, key="ep")])
    ds.mark_synced()
    scraper = scraper_factory(ds)
    await scraper.start()
    await until(lambda: server.requests >= 8)
    assert len(server.peers) == 1  # keep-alive: every scrape on the same connection
