"""`predicted-latency-producer`: learns a linear relation online, predicts for every candidate, tracks
what it has in flight, swaps its model atomically."""

from __future__ import annotations

import asyncio
import random

import numpy as np
import pytest

from epp.framework.cycle import CycleState
from epp.framework.types import Endpoint, ProfileRunResult, ResponseInfo, SchedulingResult, TypedName
from epp.plugins.datakeys import PREFIX_CACHE_MATCH_INFO_KEY
from epp.plugins.latency.info import LATENCY_PREDICTION_INFO_KEY
from epp.plugins.latency.model import fit_ridge
from epp.plugins.latency.producer import PredictedLatencyParams, PredictedLatencyProducer

from .._kit import ep, req
from ._drive import Clock, prefix_info, random_endpoint, serve, true_tpot_ms, true_ttft_ms


def producer(clock: Clock, **params: object) -> PredictedLatencyProducer:
    p = PredictedLatencyParams(**{"streamingMode": True, "minSamples": 16, **params})  # type: ignore[arg-type]
    return PredictedLatencyProducer(TypedName("predicted-latency-producer", "p"), p, clock=clock)


def train(prod: PredictedLatencyProducer, clock: Clock, rng: random.Random, n: int, keys: list[str]) -> None:
    for _ in range(n):
        fleet = [random_endpoint(rng, k) for k in keys]
        serve(prod, clock, fleet, rng.choice(fleet), rng.randint(10, 2000))
    assert prod.retrain()


def test_fit_ridge_recovers_a_linear_relation() -> None:
    rng = np.random.default_rng(0)
    x = np.column_stack([np.ones(500), rng.uniform(0, 100, (500, 3))])
    y = x @ np.array([7.0, 0.5, -2.0, 3.0])
    assert np.allclose(fit_ridge(x, y, alpha=0.0), [7.0, 0.5, -2.0, 3.0], atol=1e-6)


def test_no_predictions_before_the_model_has_samples() -> None:
    clock = Clock()
    prod = producer(clock)
    info = serve(prod, clock, [ep("a"), ep("b")], ep("a"), 100)
    assert info is None and not prod.snapshot.ready
    assert not prod.retrain() or not prod.snapshot.ready  # one sample is below minSamples


def test_learns_ttft_and_tpot_of_a_synthetic_engine() -> None:
    clock, rng = Clock(), random.Random(1)
    prod = producer(clock)
    train(prod, clock, rng, 400, ["a", "b", "c"])
    errors_ttft, errors_tpot = [], []
    for _ in range(50):
        fleet = [random_endpoint(rng, k) for k in ("a", "b", "c")]
        tokens = rng.randint(10, 2000)
        cycle = CycleState()
        prod.prepare_data(cycle, req("x" * (4 * tokens), stream=True), fleet)
        info = cycle.read(LATENCY_PREDICTION_INFO_KEY)
        assert info is not None
        for e in fleet:
            errors_ttft.append(abs(info.ttft_ms[e.key] - true_ttft_ms(e, tokens)) / true_ttft_ms(e, tokens))
            errors_tpot.append(abs(info.tpot_ms[e.key] - true_tpot_ms(e)) / true_tpot_ms(e))
    assert max(errors_ttft) < 0.05 and max(errors_tpot) < 0.05


def test_the_uncached_part_of_the_prompt_is_what_costs() -> None:
    """Two endpoints in the same state: the one holding the prefix is predicted faster."""
    clock, rng = Clock(), random.Random(2)
    prod = producer(clock, hardwareClassLabel="gpu")

    def ttft(e: Endpoint, uncached: int) -> float:
        return 10.0 + 0.05 * uncached

    for _ in range(200):
        fleet = [random_endpoint(rng, k, gpu="h100") for k in ("a", "b")]
        tokens = rng.randint(10, 2000)
        cached = {"a": rng.randint(0, tokens // 16), "b": rng.randint(0, tokens // 16)}
        serve(prod, clock, fleet, rng.choice(fleet), tokens, ttft_ms=ttft, cached_blocks=cached)
    prod.retrain()
    fleet = [random_endpoint(rng, k, gpu="h100") for k in ("a", "b")]
    cycle = CycleState()
    cycle.write(PREFIX_CACHE_MATCH_INFO_KEY, prefix_info(2000, {"b": 100}))
    prod.prepare_data(cycle, req("x" * 8000, stream=True), fleet)
    info = cycle.read(LATENCY_PREDICTION_INFO_KEY)
    assert info is not None
    assert info.ttft_ms["a"] == pytest.approx(110.0, rel=0.05)  # 2000 uncached tokens
    assert info.ttft_ms["b"] == pytest.approx(30.0, rel=0.1)  # 400 uncached tokens


def test_per_hardware_class_models() -> None:
    """Two classes with different speeds: one model each; a third, unseen class gets the pooled model."""
    clock, rng = Clock(), random.Random(3)
    prod = producer(clock, hardwareClassLabel="gpu")

    def ttft(e: Endpoint, tokens: int) -> float:
        return (1.0 if e.labels["gpu"] == "h100" else 3.0) * (10.0 + 0.05 * tokens)

    for _ in range(300):
        fleet = [random_endpoint(rng, "a", gpu="h100"), random_endpoint(rng, "b", gpu="l4")]
        serve(prod, clock, fleet, rng.choice(fleet), rng.randint(10, 2000), ttft_ms=ttft)
    prod.retrain()
    assert set(prod.snapshot.groups) == {"h100", "l4"}
    fleet = [random_endpoint(rng, "a", gpu="h100"), random_endpoint(rng, "b", gpu="l4")]
    fleet.append(random_endpoint(rng, "c", gpu="a100"))
    cycle = CycleState()
    prod.prepare_data(cycle, req("x" * 4000, stream=True), fleet)
    info = cycle.read(LATENCY_PREDICTION_INFO_KEY)
    assert info is not None
    assert info.ttft_ms["a"] == pytest.approx(60.0, rel=0.05)
    assert info.ttft_ms["b"] == pytest.approx(180.0, rel=0.05)
    assert "c" in info.ttft_ms  # the pooled model


def test_in_flight_tracking_and_first_byte() -> None:
    clock = Clock()
    prod = producer(clock)
    a = ep("a")
    request = req("x" * 400, stream=True)
    cycle = CycleState()
    result = SchedulingResult("default", {"default": ProfileRunResult((a,))})
    prod.pre_request(cycle, request, result)
    assert prod.tracker.inflight == {"a": 1} and prod.tracker.pending_tokens == {"a": 100}
    response = ResponseInfo(status=200)
    prod.response_received(cycle, request, response, result)
    response.first_byte_at = clock.now + 0.01
    prod.tracker.sweep()
    assert prod.tracker.inflight == {"a": 1} and prod.tracker.pending_tokens == {}
    response.complete = True
    prod.response_complete(cycle, request, response, result)
    prod.response_complete(cycle, request, response, result)  # once only
    assert prod.tracker.inflight == {} and prod.tracker.pending_tokens == {}


def test_endpoints_that_leave_are_forgotten() -> None:
    clock = Clock()
    prod = producer(clock)
    cycle = CycleState()
    request = req("x" * 400, stream=True)
    result = SchedulingResult("default", {"default": ProfileRunResult((ep("a"),))})
    prod.pre_request(cycle, request, result)
    prod.endpoints_changed(frozenset({"b"}))
    assert prod.tracker.inflight == {}
    prod.pre_request(CycleState(), request, result)  # "a" is back with a new request
    prod.response_complete(cycle, request, ResponseInfo(status=200, complete=True), result)  # the old one
    assert prod.tracker.inflight == {"a": 1}


def test_slo_headers_give_headroom() -> None:
    clock, rng = Clock(), random.Random(4)
    prod = producer(clock)
    train(prod, clock, rng, 200, ["a", "b"])
    fast = ep("a", waiting_queue_size=0, running_requests_size=0, kv_cache_usage=0.0)
    slow = ep("b", waiting_queue_size=10, running_requests_size=40, kv_cache_usage=0.9)
    cycle = CycleState()
    headers = {"x-slo-ttft-ms": "30", "x-slo-tpot-ms": "10"}
    prod.prepare_data(cycle, req("x" * 400, stream=True, headers=headers), [fast, slow])
    info = cycle.read(LATENCY_PREDICTION_INFO_KEY)
    assert info is not None
    assert info.ttft_headroom("a") == pytest.approx(30.0 - 15.0, abs=1.5)
    assert info.valid("a") and not info.valid("b")
    no_slo = CycleState()
    prod.prepare_data(no_slo, req("x" * 400, stream=True), [fast, slow])
    plain = no_slo.read(LATENCY_PREDICTION_INFO_KEY)
    assert plain is not None and plain.ttft_headroom("a") < 0 and not plain.valid("a")


def test_non_streaming_mode_learns_the_whole_response_time_and_neutralises_tpot() -> None:
    clock, rng = Clock(), random.Random(5)
    prod = producer(clock, streamingMode=False)
    train(prod, clock, rng, 200, ["a"])
    e = random_endpoint(rng, "a")
    cycle = CycleState()
    prod.prepare_data(cycle, req("x" * 400, headers={"x-slo-ttft-ms": "100000"}), [e])
    info = cycle.read(LATENCY_PREDICTION_INFO_KEY)
    assert info is not None
    whole = true_ttft_ms(e, 100) + 10 * true_tpot_ms(e)
    assert info.ttft_ms["a"] == pytest.approx(whole, rel=0.2)
    assert info.tpot_headroom("a") == 0.0 and info.valid("a")  # TPOT neutral


def test_the_background_loop_retrains_and_swaps() -> None:
    async def main() -> None:
        clock, rng = Clock(), random.Random(6)
        prod = producer(clock, retrainInterval="10ms")
        task = asyncio.create_task(prod.run())
        try:
            for _ in range(40):
                fleet = [random_endpoint(rng, "a")]
                serve(prod, clock, fleet, fleet[0], rng.randint(10, 2000))
            for _ in range(100):
                await asyncio.sleep(0.01)
                if prod.snapshot.ready:
                    break
            assert prod.snapshot.ready and prod.snapshot.generation >= 1
        finally:
            task.cancel()

    asyncio.run(main())


def test_training_only_mode_publishes_nothing() -> None:
    clock, rng = Clock(), random.Random(7)
    prod = producer(clock, predictInPrepareData=False)
    train(prod, clock, rng, 50, ["a"])
    cycle = CycleState()
    prod.prepare_data(cycle, req("x" * 400, stream=True), [ep("a")])
    assert cycle.read(LATENCY_PREDICTION_INFO_KEY) is None


def test_processes_share_training_samples_and_in_flight_load() -> None:
    """Two workers of a pod: each trains on the other's completed requests too, counts the other's
    requests in flight in its features, and forgets them when that worker is gone."""
    from epp.framework.plugins import SharedState
    from epp.workers.codec import pack, unpack

    clock, rng = Clock(), random.Random(8)
    a, b = producer(clock), producer(clock)
    assert isinstance(a, SharedState)
    for p in (a, b):
        p.start_sharing()
        p.endpoints_changed(frozenset({"x", "y"}))
    for _ in range(40):
        fleet = [random_endpoint(rng, k) for k in ("x", "y")]
        serve(a, clock, fleet, rng.choice(fleet), rng.randint(10, 2000))
    changes = a.export_changes()
    assert changes is not None and len(changes["samples"]) == 40
    b.import_changes("w0.1", unpack(pack(changes)))
    assert b.retrain() and b.snapshot.ready  # b routed nothing: a's samples trained it
    assert a.export_changes() is None  # nothing new since

    # a request of a's in flight on "x" counts in b's features and in the dispatched requests
    request = req("x" * 400, stream=True)
    a.pre_request(
        CycleState(), request, SchedulingResult("default", {"default": ProfileRunResult((ep("x"),))})
    )
    b.import_changes("w0.1", unpack(pack(a.export_changes())))
    assert b._state(ep("x"))[0] == 100.0 and b._state(ep("x"))[4] == 1.0
    cycle = CycleState()
    b.prepare_data(cycle, req("x" * 400, stream=True), [ep("x"), ep("y")])
    info = cycle.read(LATENCY_PREDICTION_INFO_KEY)
    assert info is not None and info.dispatched_requests("x") == 1 and info.dispatched_requests("y") == 0
    b.forget_origin("w0.1")
    assert b._state(ep("x"))[0] == 0.0 and b._state(ep("x"))[4] == 0.0

    # samples of an endpoint that left the pool are not taken in (per-endpoint groups)
    c = producer(clock)
    c.endpoints_changed(frozenset({"y"}))
    c.import_changes("w0.1", {"load": [], "samples": [["x", [1.0] * 13, 10.0, 1.0]]})
    assert c.buffers.groups() == []


def test_a_worker_sends_totals_not_increments() -> None:
    """A lost message does not skew the counts: each carries the absolute totals that changed."""
    from epp.plugins.latency.tracker import InFlightTracker

    sender, receiver = InFlightTracker(), InFlightTracker()
    first = sender.add("e", 100)
    sender.add("e", 50)
    sender.export_changes()  # lost on the way
    sender.release(first)
    receiver.import_changes("w1.1", sender.export_changes() or [])
    assert receiver.remote.total == {"e": (1, 50)}
    receiver.retain(["f"])  # "e" left the pool
    assert receiver.remote.total == {}


def test_the_fit_minimises_relative_error_so_a_few_outliers_do_not_pull_it() -> None:
    """Heavy-tailed latencies (a few requests caught behind a preemption): the relative fit keeps the
    ordinary requests' predictions close where least squares is pulled towards the outliers."""
    from epp.plugins.latency.model import relative_weights

    rng = np.random.default_rng(9)
    n = 600
    x = np.column_stack([np.ones(n), rng.uniform(0, 2000, n)])
    y = 20.0 + 0.05 * x[:, 1]
    outliers = rng.random(n) < 0.05
    y[outliers] *= 20.0
    ordinary = ~outliers

    def median_error(w: tuple[float, ...]) -> float:
        pred = x[ordinary] @ np.array(w)
        return float(np.median(np.abs(pred - y[ordinary]) / y[ordinary]))

    assert median_error(fit_ridge(x, y, weights=relative_weights(y))) < 0.5 * median_error(fit_ridge(x, y))
    assert median_error(fit_ridge(x, y, weights=relative_weights(y))) < 0.25


def test_a_starting_process_takes_the_recent_samples_and_has_a_model_at_once() -> None:
    from epp.framework.plugins import SharedSnapshot
    from epp.plugins.latency import producer as module
    from epp.workers.codec import pack, unpack

    clock, rng = Clock(), random.Random(10)
    running, starting = producer(clock), producer(clock)
    assert isinstance(running, SharedSnapshot)
    train(running, clock, rng, 60, ["x", "y"])
    snapshot = unpack(pack(running.export_snapshot()))
    assert len(snapshot["samples"]) == 60
    starting.import_snapshot("w0.1", snapshot)
    assert starting.retrain() and starting.snapshot.ready
    assert set(starting.snapshot.groups) == set(running.snapshot.groups)

    module.SNAPSHOT_CAP, cap = 10, module.SNAPSHOT_CAP
    try:  # bounded: the most recent of each group
        assert len(running.export_snapshot()["samples"]) == 10
    finally:
        module.SNAPSHOT_CAP = cap


def test_the_recent_ttft_error_is_measured_and_published() -> None:
    clock, rng = Clock(), random.Random(11)
    prod = producer(clock)
    train(prod, clock, rng, 100, ["a"])
    assert prod.ttft_error == 0.0  # no request had a prediction yet

    def twice_as_slow(e: Endpoint, tokens: int) -> float:  # the engine changed: the model is now 50 % off
        return 2.0 * true_ttft_ms(e, tokens)

    for _ in range(40):
        e = random_endpoint(rng, "a")
        serve(prod, clock, [e], e, rng.randint(10, 2000), ttft_ms=twice_as_slow)
    prod.retrain()
    assert prod.ttft_error == pytest.approx(0.5, abs=0.1)
    cycle = CycleState()
    prod.prepare_data(cycle, req("x" * 400, stream=True), [ep("a")])
    info = cycle.read(LATENCY_PREDICTION_INFO_KEY)
    assert info is not None and info.ttft_error == prod.ttft_error
