"""concurrency-detector over the real inflight-load-producer: modes, the filter, hysteresis, lookup."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from epp.framework.cycle import CycleState
from epp.framework.handle import SimpleHandle
from epp.framework.types import Endpoint, InferenceRequest, ProfileRunResult, ResponseInfo, SchedulingResult
from epp.plugins.datakeys import INFLIGHT_LOAD_KEY, InFlightLoad
from epp.plugins.producers.inflight_load import INFLIGHT_LOAD_PRODUCER, InFlightLoadProducer, estimate_tokens
from epp.plugins.saturation.concurrency import CONCURRENCY_DETECTOR, ConcurrencyDetector

A = Endpoint(key="a", ip="10.0.0.1", port=8000)
REQ = InferenceRequest(request_id="r", model="m", target_model="m")
B = Endpoint(key="b", ip="10.0.0.2", port=8000)


def setup(params: dict | None = None, producer_name: str = "inflight-load-producer"):
    handle = SimpleHandle()
    producer = INFLIGHT_LOAD_PRODUCER.build(producer_name, None, handle)
    handle.plugins[producer_name] = producer
    det = CONCURRENCY_DETECTOR.build("c", params, handle)
    assert isinstance(det, ConcurrencyDetector)
    return det, producer


Sent = tuple[CycleState, InferenceRequest, SchedulingResult]


def send(producer: InFlightLoadProducer, target: Endpoint, size: int = 400) -> Sent:
    """What the director does once a request is scheduled to `target` (PreRequest)."""
    cycle = CycleState()
    req = InferenceRequest(request_id="r", model="m", target_model="m", size_bytes=size)
    result = SchedulingResult("default", {"default": ProfileRunResult((target,))})
    producer.pre_request(cycle, req, result)
    return cycle, req, result


def complete(producer: InFlightLoadProducer, sent: Sent) -> None:
    cycle, req, result = sent
    producer.response_complete(cycle, req, ResponseInfo(), result)


@pytest.mark.parametrize(
    "params, field",
    [
        ({"maxConcurrency": 0}, "maxConcurrency"),
        ({"maxTokenConcurrency": -5}, "maxTokenConcurrency"),
        ({"concurrencyMode": "bytes"}, "concurrencyMode"),
        ({"headroom": -1}, "headroom"),
        ({"hysteresis": 1.5}, "hysteresis"),
        ({"max": 3}, "max"),
    ],
)
def test_invalid_params(params, field):
    with pytest.raises(ValidationError) as info:
        CONCURRENCY_DETECTOR.build("c", params, SimpleHandle())
    assert field in str(info.value)


def test_requests_mode_is_total_load_over_total_capacity():
    det, producer = setup({"maxConcurrency": 2, "hysteresis": 0})
    assert det.saturation([A, B], 0.0) == 0.0
    send(producer, A)
    assert det.saturation([A, B], 0.0) == pytest.approx(0.25)
    sent = [send(producer, A), send(producer, B)]
    assert det.saturation([A, B], 0.0) == pytest.approx(0.75)
    send(producer, B)
    assert det.saturation([A, B], 0.0) == pytest.approx(1.0)
    for one in sent:
        complete(producer, one)
    assert det.saturation([A, B], 0.0) == pytest.approx(0.5)
    assert det.saturation([], 0.0) == 1.0  # no capacity at all


def test_tokens_mode_counts_estimated_tokens():
    det, producer = setup({"concurrencyMode": "tokens", "maxTokenConcurrency": 1000, "hysteresis": 0})
    send(producer, A, size=400)  # 100 input + 150 output tokens
    tokens = estimate_tokens(InferenceRequest(request_id="x", model="m", target_model="m", size_bytes=400))
    assert tokens == 250
    assert det.saturation([A], 0.0) == pytest.approx(0.25)
    assert det.saturation([A, B], 0.0) == pytest.approx(0.125)


def test_filter_keeps_endpoints_under_limit_and_may_return_empty():
    det, producer = setup({"maxConcurrency": 1})
    send(producer, A)
    assert [e.key for e in det.filter(CycleState(), None, [A, B])] == ["b"]  # type: ignore[arg-type]
    send(producer, B)
    assert list(det.filter(CycleState(), None, [A, B])) == []  # type: ignore[arg-type]


def test_filter_headroom_and_cycle_snapshot():
    det, _producer = setup({"maxConcurrency": 2, "headroom": 0.5})  # keep load < 3
    cycle = CycleState()
    cycle.write(INFLIGHT_LOAD_KEY, {"a": InFlightLoad(3, 0), "b": InFlightLoad(2, 0)})
    assert [e.key for e in det.filter(cycle, None, [A, B])] == ["b"]  # type: ignore[arg-type]


def test_hysteresis():
    det, producer = setup({"maxConcurrency": 10, "hysteresis": 0.2})
    sent = [send(producer, A) for _ in range(10)]
    assert det.saturation([A], 0.0) == 1.0
    complete(producer, sent.pop())  # 0.9: in the band
    assert det.saturation([A], 0.0) == 1.0
    complete(producer, sent.pop())  # 0.8: still in the band (not below 0.8)
    assert det.saturation([A], 0.0) == 1.0
    complete(producer, sent.pop())  # 0.7: released
    assert det.saturation([A], 0.0) == pytest.approx(0.7)


def test_finds_a_producer_declared_under_another_name():
    det, producer = setup({"maxConcurrency": 1, "hysteresis": 0}, producer_name="my-load")
    send(producer, A)
    assert det.saturation([A], 0.0) == 1.0


def test_producer_declared_after_the_detector_is_found_lazily():
    handle = SimpleHandle()
    det = CONCURRENCY_DETECTOR.build("c", {"maxConcurrency": 1, "hysteresis": 0}, handle)
    producer = INFLIGHT_LOAD_PRODUCER.build("inflight-load-producer", None, handle)
    handle.plugins["inflight-load-producer"] = producer
    send(producer, A)
    assert det.saturation([A], 0.0) == 1.0


def test_without_a_producer_load_reads_zero(caplog):
    det = CONCURRENCY_DETECTOR.build("c", None, SimpleHandle())
    assert det.saturation([A], 0.0) == 0.0
    assert "inflight-load-producer" in caplog.text
