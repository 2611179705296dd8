"""The flow controller: fast path, strict priority, fairness, capacity, TTL, cancellation, the loop."""

from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client import CollectorRegistry

from epp.flowcontrol.band import BandSettings
from epp.flowcontrol.controller import FlowController
from epp.flowcontrol.observe import PrometheusFlowObserver
from epp.flowcontrol.settings import FlowControlSettings
from epp.framework.flowcontrol import Outcome
from epp.framework.types import TypedName
from epp.observability.metrics import EppMetrics
from epp.plugins.flowcontrol.fairness import GlobalStrictFairness, RoundRobinFairness
from epp.plugins.flowcontrol.ordering import EdfOrdering, FcfsOrdering, SloDeadlineOrdering
from epp.plugins.flowcontrol.usage_limit import StaticUsageLimit
from tests.helpers import until

from .fc_helpers import POOL, RecordingObserver, SettableDetector, make_controller, req


def spawn(c: FlowController, *requests) -> list[asyncio.Task]:
    return [asyncio.create_task(c.enqueue_and_wait(r)) for r in requests]


async def test_fast_path_dispatches_without_a_queue_hop():
    det, obs = SettableDetector(0.5), RecordingObserver()
    c = make_controller(det, observer=obs)
    item = await c.enqueue_and_wait(req("r1"))
    assert item.outcome is Outcome.DISPATCHED
    assert obs.enqueued_ids == [] and obs.dispatched() == ["r1"]
    assert c.queued_requests == 0 and c._task is None  # no dispatcher needed


async def test_no_detector_means_never_saturated():
    c = FlowController(
        FlowControlSettings.simple(GlobalStrictFairness(), FcfsOrdering(), StaticUsageLimit()),
        candidates=lambda: POOL,
        detector=lambda: None,
    )
    assert (await c.enqueue_and_wait(req("r"))).outcome is Outcome.DISPATCHED


async def test_queued_while_saturated_then_dispatched_on_wake():
    det = SettableDetector(1.0)
    c = make_controller(det, dispatch_tick=30.0)  # only an explicit wake can dispatch
    (task,) = spawn(c, req("r1"))
    await until(lambda: c.queued_requests == 1)
    assert not task.done()
    det.value = 0.99
    c.wake()
    item = await asyncio.wait_for(task, 1.0)
    assert item.outcome is Outcome.DISPATCHED
    assert item.waited > 0
    assert c.queued_requests == 0
    await c.close()


async def test_strict_priority_across_bands_and_negative_priorities_are_queued():
    det, obs = SettableDetector(1.0), RecordingObserver()
    c = make_controller(det, observer=obs)
    tasks = spawn(c, req("low1", -1), req("mid", 0), req("high", 10), req("low2", -1), req("top", 100))
    await until(lambda: c.queued_requests == 5)
    assert [b.priority for b in c.band_stats()] == [100, 10, 0, -1]
    det.value = 0.0
    c.wake()
    items = await asyncio.wait_for(asyncio.gather(*tasks), 1.0)
    assert all(i.outcome is Outcome.DISPATCHED for i in items)
    assert obs.dispatched() == ["top", "high", "mid", "low1", "low2"]
    assert c.band_stats() == []  # template bands are dropped once empty
    await c.close()


class BandCeilings:
    typed_name = TypedName("test-ceilings", "test-ceilings")

    def __init__(self, ceilings: dict[int, float]) -> None:
        self.ceilings = ceilings

    def compute_limits(self, saturation, priorities):
        return {p: self.ceilings.get(p, 1.0) for p in priorities}


async def test_a_blocked_band_stops_the_cycle_so_lower_bands_cannot_steal_capacity():
    det, obs = SettableDetector(0.7), RecordingObserver()
    settings = FlowControlSettings(
        usage_limit=BandCeilings({10: 1.0, 0: 0.5, -1: 1.0}),
        default_band=BandSettings(0, GlobalStrictFairness(), FcfsOrdering()),
    )
    c = FlowController(settings, candidates=lambda: POOL, detector=lambda: det, observer=obs)
    mid, low = spawn(c, req("mid", 0), req("low", -1))
    await until(lambda: c.queued_requests == 2)
    before = c.cycles
    await until(lambda: c.cycles >= before + 3)  # the loop keeps re-checking on its tick ...
    assert obs.dispatched() == []  # ... but band 0 is over its ceiling and blocks band -1
    (high,) = spawn(c, req("high", 10))
    assert (await asyncio.wait_for(high, 1.0)).outcome is Outcome.DISPATCHED
    det.value = 0.4
    c.wake()
    await asyncio.wait_for(asyncio.gather(mid, low), 1.0)
    assert obs.dispatched() == ["high", "mid", "low"]
    await c.close()


@pytest.mark.parametrize(
    "fairness, expected",
    [
        (RoundRobinFairness(), ["a0", "b0", "a1", "b1", "a2", "b2", "a3", "b3"]),
        (GlobalStrictFairness(), ["a0", "a1", "a2", "a3", "b0", "b1", "b2", "b3"]),
    ],
)
async def test_fairness_between_tenants(fairness, expected):
    det, obs = SettableDetector(1.0), RecordingObserver()
    c = make_controller(det, fairness=fairness, observer=obs)
    reqs = [req(f"a{i}", flow="tenant-a") for i in range(4)] + [
        req(f"b{i}", flow="tenant-b") for i in range(4)
    ]
    tasks = spawn(c, *reqs)
    await until(lambda: c.queued_requests == 8)
    assert c.band_stats()[0].flows == 2
    det.value = 0.0
    c.wake()
    await asyncio.wait_for(asyncio.gather(*tasks), 1.0)
    assert obs.dispatched() == expected
    await c.close()


async def test_slo_deadline_ordering_through_the_controller():
    det, obs = SettableDetector(1.0), RecordingObserver()
    c = make_controller(det, ordering=SloDeadlineOrdering(), observer=obs)
    reqs = [
        req("lax", headers={"x-slo-ttft-ms": "5000"}),
        req("none"),
        req("tight", headers={"x-slo-ttft-ms": "100"}),
    ]
    tasks = spawn(c, *reqs)
    await until(lambda: c.queued_requests == 3)
    det.value = 0.0
    c.wake()
    await asyncio.wait_for(asyncio.gather(*tasks), 1.0)
    assert obs.dispatched() == ["tight", "lax", "none"]
    await c.close()


async def test_global_capacity_rejects_with_429():
    det = SettableDetector(1.0)
    c = make_controller(det, max_requests=2)
    tasks = spawn(c, req("a", size=100), req("b", size=100))
    await until(lambda: c.queued_requests == 2)
    full = await c.enqueue_and_wait(req("c", size=1))
    assert full.outcome is Outcome.REJECTED_CAPACITY
    err = c.error_for(full)
    assert err.status == 429 and "2/2 requests" in err.message
    assert c.queued_requests == 2
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await c.close()
    # bytes: 100 + 100 fit, a third 100 would exceed 250
    c = make_controller(det, max_bytes=250)
    tasks = spawn(c, req("d", size=100), req("e", size=100))
    await until(lambda: c.queued_requests == 2)
    over = await c.enqueue_and_wait(req("f", size=100))
    assert over.outcome is Outcome.REJECTED_CAPACITY and "250 bytes" in over.detail
    with pytest.raises(Exception) as info:
        await c.admit(req("g", size=100))
    assert getattr(info.value, "status", None) == 429
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await c.close()


async def test_band_capacity_listed_and_template():
    det = SettableDetector(1.0)
    settings = FlowControlSettings(
        usage_limit=StaticUsageLimit(),
        default_band=BandSettings(0, GlobalStrictFairness(), FcfsOrdering(), max_requests=1),
        bands={5: BandSettings(5, GlobalStrictFairness(), FcfsOrdering(), max_bytes=150)},
    )
    c = FlowController(settings, candidates=lambda: POOL, detector=lambda: det)
    tasks = spawn(c, req("t1", 0), req("l1", 5, size=100))
    await until(lambda: c.queued_requests == 2)
    assert (
        await c.enqueue_and_wait(req("t2", 0))
    ).outcome is Outcome.REJECTED_CAPACITY  # template: 1 request
    assert (await c.enqueue_and_wait(req("l2", 5, size=60))).outcome is Outcome.REJECTED_CAPACITY  # 150 bytes
    tasks += spawn(c, req("other", 1), req("l3", 5, size=50))  # another template band; fits in band 5
    await until(lambda: c.queued_requests == 4)
    await c.close()
    items = await asyncio.gather(*tasks)
    assert {i.outcome for i in items} == {Outcome.EVICTED_OTHER}
    assert c.error_for(items[0]).status == 500


async def test_ttl_expiry_gives_503_and_frees_the_queue():
    det = SettableDetector(1.0)
    registry = CollectorRegistry()
    metrics = EppMetrics(registry, pool_name="pool")
    c = make_controller(det, default_ttl=0.05, observer=PrometheusFlowObserver(metrics))
    t0 = time.monotonic()
    item = await asyncio.wait_for(c.enqueue_and_wait(req("slow", flow="t1")), 2.0)
    elapsed = time.monotonic() - t0
    assert item.outcome is Outcome.EVICTED_TTL
    assert 0.05 <= elapsed < 1.0
    err = c.error_for(item)
    assert err.status == 503 and err.message.startswith("request timed out in queue")
    assert c.queued_requests == 0 and c.queued_bytes == 0
    labels = {
        "fairness_id": "t1",
        "priority": "0",
        "inference_pool": "pool",
        "model_name": "m",
        "target_model_name": "m",
    }
    assert registry.get_sample_value("inference_extension_flow_control_queue_size", labels) == 0.0
    assert registry.get_sample_value("inference_extension_flow_control_queue_bytes", labels) == 0.0
    assert (
        registry.get_sample_value(
            "inference_extension_flow_control_request_queue_duration_seconds_count",
            {**labels, "outcome": "EvictedTTL"},
        )
        == 1.0
    )
    await c.close()


async def test_edf_with_ttl_dispatches_before_expiry_in_deadline_order():
    det, obs = SettableDetector(1.0), RecordingObserver()
    c = make_controller(det, ordering=EdfOrdering(), default_ttl=5.0, observer=obs)
    tasks = spawn(c, req("first"), req("second"))
    await until(lambda: c.queued_requests == 2)
    det.value = 0.0
    c.wake()
    await asyncio.wait_for(asyncio.gather(*tasks), 1.0)
    assert obs.dispatched() == ["first", "second"]  # same TTL: deadlines follow enqueue order
    await c.close()


async def test_client_disconnect_removes_queued_requests_and_nothing_leaks():
    det, obs = SettableDetector(1.0), RecordingObserver()
    registry = CollectorRegistry()
    metrics = EppMetrics(registry, pool_name="pool")

    class Both(PrometheusFlowObserver):
        def enqueued(self, item):
            super().enqueued(item)
            obs.enqueued(item)

        def finished(self, item, enqueue_seconds):
            super().finished(item, enqueue_seconds)
            obs.finished(item, enqueue_seconds)

    c = make_controller(det, fairness=RoundRobinFairness(), observer=Both(metrics))
    reqs = [req(f"r{i}", priority=i % 2 - 1, flow=f"t{i % 3}", size=10 + i) for i in range(120)]
    tasks = spawn(c, *reqs)
    await until(lambda: c.queued_requests == 120)
    assert c.queued_bytes == sum(10 + i for i in range(120))
    for t in tasks:
        t.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results)
    assert c.queued_requests == 0 and c.queued_bytes == 0
    assert c.band_stats() == [] and c.queued_items() == []
    assert {i.outcome for i in obs.finished_items} == {Outcome.EVICTED_CONTEXT_CANCELLED}
    assert len(obs.finished_items) == 120
    sizes = [
        s.value
        for fam in registry.collect()
        if fam.name
        in ("inference_extension_flow_control_queue_size", "inference_extension_flow_control_queue_bytes")
        for s in fam.samples
    ]
    assert sizes and all(v == 0.0 for v in sizes)
    # the dispatcher is idle (waiting without a timeout), not spinning
    cycles = c.cycles
    await asyncio.sleep(0.05)
    assert c.cycles == cycles
    await c.close()
    assert c._task is None


async def test_cancellation_after_dispatch_does_not_touch_queues():
    det = SettableDetector(1.0)
    c = make_controller(det)
    (task,) = spawn(c, req("r"))
    await until(lambda: c.queued_requests == 1)
    det.value = 0.0
    c.wake()
    item = await asyncio.wait_for(task, 1.0)
    assert item.outcome is Outcome.DISPATCHED
    assert c.queued_requests == 0
    await c.close()


async def test_dispatch_loop_is_event_driven():
    det = SettableDetector(1.0)
    c = make_controller(det, dispatch_tick=0.05)
    await asyncio.sleep(0.05)
    assert det.calls == 0 and c.cycles == 0  # nothing queued: no work at all
    (task,) = spawn(c, req("r"))
    await until(lambda: c.queued_requests == 1)
    start = c.cycles
    await asyncio.sleep(0.3)
    ticks = c.cycles - start
    assert 2 <= ticks <= 12  # ~6 ticks of 50 ms, not a busy poll
    det.value = 0.0
    await asyncio.wait_for(task, 1.0)  # picked up by a tick, without an explicit wake
    await c.close()


async def test_detector_failure_fails_open(caplog):
    class Broken:
        typed_name = TypedName("broken", "broken")

        def saturation(self, endpoints, now):
            raise RuntimeError("boom")

    c = FlowController(
        FlowControlSettings.simple(GlobalStrictFairness(), FcfsOrdering(), StaticUsageLimit()),
        candidates=lambda: POOL,
        detector=lambda: Broken(),
    )
    assert (await c.enqueue_and_wait(req("r"))).outcome is Outcome.DISPATCHED
    assert "saturation detector failed" in caplog.text


async def test_reconfigure_keeps_queued_requests_and_applies_new_limits_to_new_ones():
    det, obs = SettableDetector(1.0), RecordingObserver()
    c = make_controller(det, observer=obs)
    tasks = spawn(c, req("a", 0, flow="x"), req("b", 0, flow="y"), req("c", 0, flow="x"))
    await until(lambda: c.queued_requests == 3)
    c.reconfigure(
        FlowControlSettings(
            usage_limit=StaticUsageLimit(),
            default_band=BandSettings(0, GlobalStrictFairness(), FcfsOrdering()),
            bands={0: BandSettings(0, RoundRobinFairness(), FcfsOrdering(), max_requests=3)},
        )
    )
    assert c.band_stats()[0].listed
    assert (await c.enqueue_and_wait(req("d", 0))).outcome is Outcome.REJECTED_CAPACITY
    det.value = 0.0
    c.wake()
    await asyncio.wait_for(asyncio.gather(*tasks), 1.0)
    assert obs.dispatched() == ["a", "b", "c"]  # round-robin x, y, x
    assert [b.priority for b in c.band_stats()] == [0]  # listed bands stay
    await c.close()


async def test_closed_controller_rejects():
    c = make_controller(SettableDetector(0.0))
    await c.close()
    item = await c.enqueue_and_wait(req("late"))
    assert item.outcome is Outcome.REJECTED_OTHER and c.error_for(item).status == 500


async def test_a_failing_policy_does_not_kill_the_dispatcher(caplog):
    class Flaky(GlobalStrictFairness):
        failures = 2

        def pick(self, flows, order, state):
            if Flaky.failures:
                Flaky.failures -= 1
                raise RuntimeError("policy bug")
            return super().pick(flows, order, state)

    det = SettableDetector(1.0)
    c = make_controller(det, fairness=Flaky(), dispatch_tick=0.005)
    (task,) = spawn(c, req("r"))
    await until(lambda: c.queued_requests == 1)
    det.value = 0.0
    item = await asyncio.wait_for(task, 2.0)
    assert item.outcome is Outcome.DISPATCHED
    assert "dispatch cycle failed" in caplog.text
    await c.close()
