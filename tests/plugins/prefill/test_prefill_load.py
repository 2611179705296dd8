"""prefill-load-producer and its ledger: pending until the first byte, decoding until completion, once."""

from __future__ import annotations

import threading

import pytest

from epp.framework.cycle import CycleState
from epp.framework.types import Endpoint, InferenceRequest, ResponseInfo
from epp.plugins.datakeys import PREFIX_CACHE_MATCH_INFO_KEY, PrefixCacheMatchInfo, PrefixGroup
from epp.plugins.producers.prefill_ledger import EndpointLoad, PrefillLedger
from epp.plugins.producers.prefill_load import (
    PREFILL_LOAD_KEY,
    PREFILL_LOAD_PRODUCER,
    PrefillLoadProducer,
    uncached_tokens,
)
from epp.plugins.producers.prefill_speed import MIN_OBSERVATIONS

from .._kit import handle, result

A = Endpoint("a", "10.0.0.1", 8000)
B = Endpoint("b", "10.0.0.2", 8000)


def test_pending_until_first_byte_then_decoding_until_release() -> None:
    ledger = PrefillLedger()
    e1, e2 = ledger.add("a", 1000), ledger.add("a", 50)
    assert ledger.load("a") == EndpointLoad(1050, 2, 0)
    info = ResponseInfo()
    ledger.attach(e1, info)
    assert ledger.load("a") == EndpointLoad(1050, 2, 0)  # headers are not the first token
    info.first_byte_at = 12.5
    assert ledger.load("a") == EndpointLoad(50, 1, 1)
    ledger.release(e1)
    ledger.release(e1)  # twice: released once
    assert ledger.load("a") == EndpointLoad(50, 1, 0)
    ledger.release(e2)
    assert ledger.load("a") == EndpointLoad() and ledger.endpoints() == frozenset()


def test_a_request_that_never_produced_a_byte_is_released_from_pending() -> None:
    ledger = PrefillLedger()
    entry = ledger.add("a", 300)
    ledger.release(entry)
    assert ledger.load("a") == EndpointLoad()


def test_an_endpoint_that_left_and_came_back_is_not_touched_by_late_releases() -> None:
    ledger = PrefillLedger()
    old = ledger.add("a", 100)
    assert ledger.retain({"b"}) == ["a"]
    new = ledger.add("a", 7)
    ledger.release(old)  # belongs to the previous membership epoch
    assert ledger.load("a") == EndpointLoad(7, 1, 0)
    ledger.release(new)
    assert ledger.load("a") == EndpointLoad()


def test_negative_prefill_is_clamped() -> None:
    ledger = PrefillLedger()
    ledger.add("a", -5)
    assert ledger.load("a") == EndpointLoad(0, 1, 0)


def test_concurrent_adds_and_releases_balance_out() -> None:
    ledger = PrefillLedger()

    def work() -> None:
        for _ in range(500):
            entry = ledger.add("a", 10)
            info = ResponseInfo(first_byte_at=1.0)
            ledger.attach(entry, info)
            ledger.load("a")
            ledger.release(entry)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert ledger.load("a") == EndpointLoad()


def info_with(matches: dict[str, int], total: int = 10, block_size: int = 16) -> PrefixCacheMatchInfo:
    group = PrefixGroup(block_size, tuple(range(total)), matches)
    return PrefixCacheMatchInfo(
        {block_size: group}, block_size, {}, {k: v / total for k, v in matches.items()}
    )


@pytest.mark.parametrize(
    ("tokens", "matches", "key", "expected"),
    [
        (1000, {"a": 10}, "a", 840),
        (1000, {"a": 10}, "b", 1000),
        (100, {"a": 10}, "a", 0),  # the match covers it all (trailing partial block counted)
        (1000, {}, "a", 1000),
    ],
)
def test_uncached_tokens(tokens, matches, key, expected) -> None:
    assert uncached_tokens(tokens, info_with(matches), key) == expected
    assert uncached_tokens(tokens, None, key) == tokens


def producer() -> PrefillLoadProducer:
    built = PREFILL_LOAD_PRODUCER.build("p", None, handle())
    assert isinstance(built, PrefillLoadProducer)
    return built


def request(chars: int = 4000) -> InferenceRequest:
    return InferenceRequest("r", "m", "m", prefix_material=b"x" * chars)


def test_producer_hooks_account_each_request_on_its_primary_target() -> None:
    p = producer()
    req = request()  # 1000 tokens
    cycle = CycleState()
    cycle.write(PREFIX_CACHE_MATCH_INFO_KEY, info_with({"a": 10}))
    p.prepare_data(cycle, req, [A, B])
    assert cycle.read(PREFILL_LOAD_KEY).load("a") == EndpointLoad()
    p.pre_request(cycle, req, result(A))
    p.pre_request(cycle, req, result(A))  # a second call does not count twice
    snap = p.snapshot([A, B])
    assert snap.load("a") == EndpointLoad(840, 1, 0) and snap.load("b") == EndpointLoad()
    assert snap.mean_uncached_tokens == pytest.approx(0.05 * 840)
    info = ResponseInfo()
    p.response_received(cycle, req, info, result(A))
    info.first_byte_at = 3.0
    assert p.snapshot([A]).load("a") == EndpointLoad(0, 0, 1)
    p.response_complete(cycle, req, info, result(A))
    p.response_complete(cycle, req, info, result(A))
    assert p.snapshot([A]).load("a") == EndpointLoad()


def test_producer_forgets_endpoints_that_left() -> None:
    p = producer()
    cycle = CycleState()
    p.pre_request(cycle, request(), result(A))
    p.endpoints_changed(frozenset({"b"}))
    assert p.snapshot([A]).load("a") == EndpointLoad()
    p.response_complete(cycle, request(), ResponseInfo(), result(A))
    assert p.snapshot([A]).load("a") == EndpointLoad()


def test_no_target_records_nothing() -> None:
    p = producer()
    p.pre_request(CycleState(), request(), result())
    assert p.ledger.endpoints() == frozenset()


# ---- hardware speed: measured per class at first bytes, published as each candidate's slowdown ------

LABEL = "nvidia.com/gpu.product"
FAST = Endpoint("fast", "10.0.0.3", 8000, labels={LABEL: "H100"})
SLOW = Endpoint("slow", "10.0.0.4", 8000, labels={LABEL: "A100"})
SLOW_TOO = Endpoint("slow-2", "10.0.0.5", 8000, labels={LABEL: "A100"})
UNLABELLED = Endpoint("plain", "10.0.0.6", 8000)


def serve(p: PrefillLoadProducer, now: list[float], target: Endpoint, seconds_per_token: float) -> None:
    """One request of 1000 uncached tokens sent to an idle `target`, its first byte after that many seconds
    per token of work."""
    cycle = CycleState()
    req = request()
    p.pre_request(cycle, req, result(target))
    info = ResponseInfo()
    p.response_received(cycle, req, info, result(target))
    now[0] += 1000 * seconds_per_token
    info.first_byte_at = now[0]
    p.snapshot([target])  # the ledger sees the first byte when a load is asked for
    p.response_complete(cycle, req, info, result(target))


def timed_producer(**params: str) -> tuple[PrefillLoadProducer, list[float]]:
    now = [100.0]
    p = PREFILL_LOAD_PRODUCER.factory("p", PREFILL_LOAD_PRODUCER.params_model(**params), handle())
    p.ledger = PrefillLedger(clock=lambda: now[0])
    return p, now


def test_a_class_twice_as_slow_per_token_gets_a_slowdown_of_two() -> None:
    p, now = timed_producer()
    for _ in range(40):
        serve(p, now, FAST, 0.001)
        serve(p, now, SLOW, 0.002)
    slowdown = p.snapshot([FAST, SLOW, SLOW_TOO]).slowdown
    # the same class shares the estimate: slow-2 never served a request
    assert slowdown == {"slow": pytest.approx(2.0), "slow-2": pytest.approx(2.0)}
    # the fastest *candidate* class is the reference: among A100s only, none is slower
    assert p.snapshot([SLOW, SLOW_TOO]).slowdown == {}


def test_the_work_ahead_counts_so_a_queue_does_not_look_like_slow_hardware() -> None:
    p, now = timed_producer()
    for _ in range(40):
        serve(p, now, FAST, 0.001)
    # the slow class is as fast, but always gets two requests at once: the second waits out the first
    for _ in range(20):
        cycles, infos = [], []
        for _ in range(2):
            cycle, info = CycleState(), ResponseInfo()
            p.pre_request(cycle, request(), result(SLOW))
            p.response_received(cycle, request(), info, result(SLOW))
            cycles.append(cycle)
            infos.append(info)
        for cycle, info in zip(cycles, infos, strict=True):
            now[0] += 1.0  # 1000 tokens at 0.001 s each
            info.first_byte_at = now[0]
            p.snapshot([SLOW])
            p.response_complete(cycle, request(), info, result(SLOW))
    assert p.ledger.speed.rates.keys() == {"H100", "A100"}
    # busy, not slow: close to 1 (the 256-token offset weighs the unqueued first request a little more);
    # without the work ahead it would be 1.5
    assert p.snapshot([FAST, SLOW]).slowdown.get("slow", 1.0) < 1.1


def test_one_class_or_no_label_means_no_slowdown() -> None:
    p, now = timed_producer()
    for _ in range(40):
        serve(p, now, FAST, 0.001)
        serve(p, now, UNLABELLED, 0.003)  # without the label: a class of its own ("")
    assert p.snapshot([FAST]).slowdown == {}
    assert p.snapshot([FAST, UNLABELLED]).slowdown == {"plain": pytest.approx(3.0)}
    off, now = timed_producer(hardwareClassLabel="")
    for _ in range(40):
        serve(off, now, FAST, 0.001)
        serve(off, now, SLOW, 0.002)
    assert off.snapshot([FAST, SLOW]).slowdown == {} and off.ledger.speed.rates == {}


def test_no_estimate_before_enough_first_tokens() -> None:
    p, now = timed_producer()
    for _ in range(MIN_OBSERVATIONS - 1):
        serve(p, now, FAST, 0.001)
        serve(p, now, SLOW, 0.002)
    assert p.snapshot([FAST, SLOW]).slowdown == {}
    serve(p, now, FAST, 0.001)
    serve(p, now, SLOW, 0.002)
    assert p.snapshot([FAST, SLOW]).slowdown == {"slow": pytest.approx(2.0)}


def test_a_request_released_before_its_load_was_read_still_counts() -> None:
    ledger = PrefillLedger(clock=lambda: 10.0)
    for _ in range(32):
        entry = ledger.add("a", 744, "H100")
        info = ResponseInfo()
        ledger.attach(entry, info)
        info.first_byte_at = 11.0
        ledger.release(entry)  # completes before anyone asked for the endpoint's load
    assert ledger.speed.rates == {"H100": pytest.approx(1.0 / 1000)}
