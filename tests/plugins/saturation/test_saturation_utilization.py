"""utilization-detector: parameters, the roofline saturation, staleness, the filter, and hysteresis."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from epp.framework.cycle import CycleState
from epp.framework.handle import SimpleHandle
from epp.framework.types import Endpoint, EndpointMetrics, InferenceRequest
from epp.plugins.saturation.utilization import UTILIZATION_DETECTOR, UtilizationDetector

NOW = 1000.0


def ep(key: str, queue: int = 0, kv: float = 0.0, age: float | None = 0.01, healthy: bool = True) -> Endpoint:
    update = 0.0 if age is None else NOW - age
    return Endpoint(
        key=key,
        ip="10.0.0.1",
        port=8000 + len(key),
        metrics=EndpointMetrics(waiting_queue_size=queue, kv_cache_usage=kv, update_time=update),
        healthy=healthy,
    )


def build(params: dict | None = None) -> UtilizationDetector:
    handle = SimpleHandle(clock=lambda: NOW)
    det = UTILIZATION_DETECTOR.build("u", params, handle)
    assert isinstance(det, UtilizationDetector)
    return det


REQ = InferenceRequest(request_id="r", model="m", target_model="m")


def test_defaults_are_upstreams():
    det = build()
    assert (det.queue_threshold, det.kv_threshold, det.staleness, det.headroom) == (5.0, 0.8, 0.2, 0.0)
    assert det.latch.band == 0.05


@pytest.mark.parametrize(
    "params, field",
    [
        ({"queueDepthThreshold": 0}, "queueDepthThreshold"),
        ({"queueDepthThreshold": -1}, "queueDepthThreshold"),
        ({"kvCacheUtilThreshold": 0}, "kvCacheUtilThreshold"),
        ({"kvCacheUtilThreshold": 1.5}, "kvCacheUtilThreshold"),
        ({"metricsStalenessThreshold": "0s"}, "metricsStalenessThreshold"),
        ({"metricsStalenessThreshold": "soon"}, "metricsStalenessThreshold"),
        ({"metricsStalenessThreshold": 200}, "metricsStalenessThreshold"),
        ({"headroom": -0.1}, "headroom"),
        ({"hysteresis": 1.0}, "hysteresis"),
        ({"hysteresis": -0.01}, "hysteresis"),
        ({"queueDepth": 5}, "queueDepth"),  # unknown keys are errors (upstream silently ignores them)
    ],
)
def test_invalid_params_are_rejected(params, field):
    with pytest.raises(ValidationError) as info:
        build(params)
    assert field in str(info.value)


def test_params_parse_go_durations():
    det = build({"metricsStalenessThreshold": "1m30s", "kvCacheUtilThreshold": 1.0, "headroom": 2.0})
    assert det.staleness == 90.0
    assert det.kv_threshold == 1.0


@pytest.mark.parametrize(
    "endpoints, expected",
    [
        ([], 1.0),  # no endpoints: saturated
        ([ep("a")], 0.0),
        ([ep("a", queue=5)], 1.0),  # queue at threshold
        ([ep("a", queue=2, kv=0.4)], 0.5),  # roofline: max(0.4, 0.5)
        ([ep("a", queue=4, kv=0.2)], 0.8),
        ([ep("a", queue=10)], 2.0),  # not clamped per endpoint (upstream average of raw scores)
        ([ep("a", queue=5), ep("b")], 0.5),  # averaged over endpoints
        ([ep("a", age=0.5), ep("b")], 0.5),  # stale counts 1.0
        ([ep("a", age=None), ep("b")], 0.5),  # never scraped counts 1.0
        ([ep("a", healthy=False), ep("b")], 0.5),  # failing scrapes count 1.0
        ([ep("a", age=0.19)], 0.0),  # just inside the staleness threshold
    ],
)
def test_saturation_roofline(endpoints, expected):
    det = build({"hysteresis": 0})
    assert det.saturation(endpoints, NOW) == pytest.approx(expected)


def test_filter_keeps_fresh_endpoints_under_thresholds():
    det = build()
    a, b, c, d = ep("a", queue=4), ep("b", queue=5), ep("c", kv=0.85), ep("d", age=1.0)
    assert [e.key for e in det.filter(CycleState(), REQ, [a, b, c, d])] == ["a"]


def test_filter_headroom_widens_thresholds():
    det = build({"headroom": 0.5})  # queue < 7.5 and kv < 1.2
    a, b, c = ep("a", queue=7), ep("b", queue=8), ep("c", kv=0.95)
    assert [e.key for e in det.filter(CycleState(), REQ, [a, b, c])] == ["a", "c"]


def test_filter_fails_open_when_nothing_passes():
    det = build()
    endpoints = [ep("a", queue=9), ep("b", age=None)]
    assert list(det.filter(CycleState(), REQ, endpoints)) == endpoints


def test_hysteresis_holds_saturation_until_below_band():
    det = build({"hysteresis": 0.1, "queueDepthThreshold": 10})
    pool = [ep("a")]

    def at(queue: int) -> float:
        return det.saturation([ep("a", queue=queue)], NOW)

    assert at(9) == pytest.approx(0.9)  # rising, not yet saturated
    assert at(10) == pytest.approx(1.0)  # latched
    assert at(9) == 1.0  # inside the band: still saturated
    assert at(10) == 1.0
    assert at(9) == 1.0
    assert at(8) == pytest.approx(0.8)  # below 1 - 0.1: released
    assert at(9) == pytest.approx(0.9)  # rising again from below: not saturated
    assert det.saturation(pool, NOW) == 0.0


def test_hysteresis_zero_is_upstream_flapping():
    det = build({"hysteresis": 0, "queueDepthThreshold": 10})
    values = [det.saturation([ep("a", queue=q)], NOW) for q in (10, 9, 10, 9)]
    assert values == pytest.approx([1.0, 0.9, 1.0, 0.9])


def test_hysteresis_state_is_per_endpoint_set():
    det = build({"hysteresis": 0.2})
    busy = [ep("a", queue=5), ep("b", queue=5)]
    assert det.saturation(busy, NOW) == 1.0
    # a different candidate set (e.g. a subset hint) is not affected by the other set's latch
    assert det.saturation([ep("a", queue=4)], NOW) == pytest.approx(0.8)
    # the original set is still latched while in the band
    assert det.saturation([ep("a", queue=4), ep("b", queue=5)], NOW) == 1.0
