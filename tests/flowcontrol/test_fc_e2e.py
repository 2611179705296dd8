"""Admission and flow control end to end: HTTP client → real Envoy → the EPP daemon → simulated vLLMs.

The simulators are driven into saturation through their admin hook (`POST /admin/metrics-override` pins
the scraped queue depth), or, for fairness, by real load against a concurrency limit. Assertions are on
what a client sees (status, body) plus the EPP's own /metrics and queue counters.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import aiohttp
import pytest

from epp.tools.loadgen.gateway import Gateway
from epp.tools.sim.server import SimServer
from tests.helpers import until

pytestmark = pytest.mark.envoy

MODEL = "sim-model"
OBJECTIVES = ["--static-objectives", "critical=10,standard=0,batch=-1"]
HEAD = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"


def flow_config(detector: str = "utilization-detector", params: str = "{}", flow: str = "{}") -> str:
    return (
        HEAD
        + f"""
featureGates: [flowControl]
plugins:
- type: queue-scorer
- type: {detector}
  parameters: {params}
- type: metrics-data-source
- type: core-metrics-extractor
schedulingProfiles:
- name: default
  plugins: [{{pluginRef: queue-scorer}}]
saturationDetector: {{pluginRef: {detector}}}
dataLayer:
  sources:
  - pluginRef: metrics-data-source
    extractors: [{{pluginRef: core-metrics-extractor}}]
flowControl: {flow}
"""
    )


@pytest.fixture
async def fleet(start_sim) -> list[SimServer]:
    return [await start_sim(model=MODEL, seed=i, time_scale=0.2) for i in range(2)]


def addresses(fleet: list[SimServer]) -> list[str]:
    return [sim.address for sim in fleet]


async def pin_queue(http: aiohttp.ClientSession, fleet: list[SimServer], waiting: int | None) -> None:
    for sim in fleet:
        if waiting is None:
            async with http.delete(f"{sim.url}/admin/metrics-override") as resp:
                assert resp.status == 200
        else:
            async with http.post(f"{sim.url}/admin/metrics-override", json={"waiting": waiting}) as resp:
                assert resp.status == 200


async def post(
    http: aiohttp.ClientSession,
    url: str,
    objective: str | None = None,
    fairness: str | None = None,
    max_tokens: int = 2,
    timeout: float = 20.0,
) -> tuple[int, str]:
    headers = {}
    if objective:
        headers["x-gateway-inference-objective"] = objective
    if fairness:
        headers["x-gateway-inference-fairness-id"] = fairness
    body = {"model": MODEL, "prompt": "hello from the flow-control tests", "max_tokens": max_tokens}
    async with http.post(
        f"{url}/v1/completions", json=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
    ) as resp:
        return resp.status, await resp.text()


def scraped_queue(gw: Gateway, value: int) -> Callable[[], bool]:
    def check() -> bool:
        app = gw.epp.app
        assert app is not None
        snap = app.datastore.snapshot()
        return bool(snap) and all(e.metrics.waiting_queue_size == value for e in snap)

    return check


async def metrics_text(http: aiohttp.ClientSession, gw: Gateway) -> str:
    async with http.get(gw.epp.metrics_url) as resp:
        return await resp.text()


def samples(text: str, name: str) -> list[tuple[str, float]]:
    out = []
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")):
            labels, _, value = line.rpartition(" ")
            out.append((labels, float(value)))
    return out


async def test_saturated_pool_sheds_sheddable_with_429_and_serves_critical(fleet, tmp_path):
    """Flow control off (the default config): upstream's legacy admission."""
    async with (
        Gateway(addresses(fleet), workdir=tmp_path, extra_args=OBJECTIVES) as gw,
        aiohttp.ClientSession() as http,
    ):

        async def batch_ok() -> bool:
            return (await post(http, gw.url, "batch"))[0] == 200

        await until(batch_ok, interval=0.02)  # not saturated: sheddable traffic is served
        await pin_queue(http, fleet, 10)  # roofline 10 / 5 = 2.0 on every endpoint

        async def batch_shed() -> bool:
            return (await post(http, gw.url, "batch"))[0] == 429

        await until(batch_shed, interval=0.02)
        status, body = await post(http, gw.url, "batch")
        assert status == 429
        assert body == "inference error: ResourceExhausted - system saturated, sheddable request dropped"
        for objective in ("critical", "standard", None, "unknown-objective"):
            status, body = await post(http, gw.url, objective)
            assert status == 200, (objective, body)
        await pin_queue(http, fleet, None)
        await until(batch_ok, interval=0.02)  # recovers once the queues drain (below 1 - hysteresis)


async def test_flow_control_queues_sheddable_instead_of_dropping(fleet, tmp_path):
    config = flow_config(params="{metricsStalenessThreshold: 2s}", flow="{defaultRequestTTL: 20s}")
    async with (
        Gateway(addresses(fleet), config_text=config, workdir=tmp_path, extra_args=OBJECTIVES) as gw,
        aiohttp.ClientSession() as http,
    ):
        assert (await post(http, gw.url, "batch"))[0] == 200
        await pin_queue(http, fleet, 10)
        await until(scraped_queue(gw, 10), timeout=5.0)
        tasks = [asyncio.create_task(post(http, gw.url, obj)) for obj in ("batch", "critical", "batch")]
        controller = gw.epp.app.admission.controller
        await until(lambda: controller.queued_requests == 3, timeout=5.0)
        assert {b.priority for b in controller.band_stats()} == {10, -1}
        assert not any(t.done() for t in tasks)
        await pin_queue(http, fleet, None)
        results = await asyncio.wait_for(asyncio.gather(*tasks), 20.0)
        assert [status for status, _ in results] == [200, 200, 200]
        assert controller.queued_requests == 0
        text = await metrics_text(http, gw)
        dispatched = [
            v
            for labels, v in samples(
                text, "inference_extension_flow_control_request_queue_duration_seconds_count"
            )
            if 'outcome="Dispatched"' in labels and 'priority="-1"' in labels
        ]
        assert sum(dispatched) >= 2


async def test_ttl_expiry_in_queue_gives_503(fleet, tmp_path):
    config = flow_config(params="{metricsStalenessThreshold: 2s}", flow="{defaultRequestTTL: 300ms}")
    async with (
        Gateway(addresses(fleet), config_text=config, workdir=tmp_path, extra_args=OBJECTIVES) as gw,
        aiohttp.ClientSession() as http,
    ):
        await pin_queue(http, fleet, 10)
        await until(scraped_queue(gw, 10), timeout=5.0)
        t0 = time.monotonic()
        status, body = await post(http, gw.url, "critical")
        elapsed = time.monotonic() - t0
        assert status == 503
        assert body.startswith("inference error: ServiceUnavailable - request timed out in queue")
        assert 0.3 <= elapsed < 5.0
        assert gw.epp.app.admission.controller.queued_requests == 0


async def test_client_disconnect_while_queued_leaks_nothing(fleet, tmp_path):
    config = flow_config(params="{metricsStalenessThreshold: 2s}")
    async with (
        Gateway(addresses(fleet), config_text=config, workdir=tmp_path, extra_args=OBJECTIVES) as gw,
        aiohttp.ClientSession() as http,
    ):
        await pin_queue(http, fleet, 10)
        await until(scraped_queue(gw, 10), timeout=5.0)
        controller = gw.epp.app.admission.controller if gw.epp.app.admission else None

        async def impatient(i: int) -> None:
            with pytest.raises(TimeoutError):
                await post(http, gw.url, "standard" if i % 2 else "batch", fairness=f"t{i % 3}", timeout=0.5)

        await asyncio.gather(*(impatient(i) for i in range(12)))
        controller = gw.epp.app.admission.controller
        assert controller is not None
        await until(lambda: controller.queued_requests == 0, timeout=5.0)
        assert controller.queued_bytes == 0 and controller.band_stats() == []
        text = await metrics_text(http, gw)
        sizes = samples(text, "inference_extension_flow_control_queue_size") + samples(
            text, "inference_extension_flow_control_queue_bytes"
        )
        assert sizes and all(v == 0.0 for _, v in sizes)
        cancelled = sum(
            v
            for labels, v in samples(
                text, "inference_extension_flow_control_request_queue_duration_seconds_count"
            )
            if 'outcome="EvictedContextCancelled"' in labels
        )
        assert cancelled == 12
        # the EPP still serves once the pool recovers
        await pin_queue(http, fleet, None)
        assert (await post(http, gw.url, "batch"))[0] == 200


@pytest.fixture
async def slow_fleet(start_sim) -> list[SimServer]:
    """Real-time simulators: a 16-token request takes ~0.1-0.2 s, so a backlog builds up."""
    return [await start_sim(model=MODEL, seed=i) for i in range(2)]


@pytest.mark.parametrize("fairness", ["round-robin-fairness-policy", "global-strict-fairness-policy"])
async def test_two_tenants_share_a_saturated_pool(slow_fleet, tmp_path, fairness):
    """Two endpoints x maxConcurrency 1: two requests in flight; tenant A floods first, then B."""
    config = flow_config(
        "concurrency-detector",
        "{maxConcurrency: 1, hysteresis: 0}",
        f"{{defaultPriorityBand: {{fairnessPolicyRef: {fairness}}}}}",
    ).replace("plugins:\n- type: queue-scorer", f"plugins:\n- type: queue-scorer\n- type: {fairness}", 1)
    gateway = Gateway(addresses(slow_fleet), config_text=config, workdir=tmp_path, extra_args=OBJECTIVES)
    async with gateway as gw, aiohttp.ClientSession() as http:
        order: list[str] = []

        async def one(tenant: str) -> None:
            status, body = await post(http, gw.url, "standard", fairness=tenant, max_tokens=16, timeout=60.0)
            assert status == 200, body
            order.append(tenant)

        tasks = [asyncio.create_task(one("tenant-a")) for _ in range(12)]
        await until(lambda: gw.epp.app.admission.controller is not None, timeout=10.0)
        controller = gw.epp.app.admission.controller
        # at least 10 of A's 12 requests have reached the EPP (at most 2 are in flight, unseen here)
        await until(lambda: controller.queued_requests + len(order) >= 10, timeout=10.0)
        assert len(order) <= 4, "the simulators drained the backlog before tenant B arrived"
        tasks += [asyncio.create_task(one("tenant-b")) for _ in range(12)]
        await asyncio.wait_for(asyncio.gather(*tasks), 60.0)
        b_share = order[:12].count("tenant-b")
        if fairness == "round-robin-fairness-policy":
            assert 4 <= b_share <= 7, order  # turns alternate once both tenants wait
        else:
            assert b_share <= 2, order  # global-strict FCFS: tenant A's backlog goes first
        assert controller.queued_requests == 0
