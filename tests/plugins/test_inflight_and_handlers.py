"""inflight-load-producer, single-profile-handler and destination-endpoint-served-verifier."""

from __future__ import annotations

import pytest

from epp.errors import ErrorCode, SchedulingError
from epp.framework.types import ProfileRunResult, SchedulingResult
from epp.plugins.datakeys import INFLIGHT_LOAD_KEY, InFlightLoad
from epp.plugins.producers.inflight_load import estimate_tokens

from ._kit import build, cycle, ep, fleet, req, response, result

# ---- inflight-load-producer -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size_bytes", "prompt", "expected"),
    [
        (400, "", 100 + 150),
        (0, "x" * 40, 10 + 15),
        (0, "", 1 + 1),
        (3, "", 1 + 1),
    ],
)
def test_token_estimate(size_bytes: int, prompt: str, expected: int) -> None:
    assert estimate_tokens(req(prompt, size_bytes=size_bytes)) == expected


def test_inflight_counts_follow_pick_and_completion() -> None:
    p = build("inflight-load-producer")
    eps = fleet(2)
    r1, r2 = req(size_bytes=400), req(size_bytes=40)
    c1, c2 = cycle(), cycle()
    p.pre_request(c1, r1, result(eps[0], eps[1]))  # only the first target carries the request
    p.pre_request(c2, r2, result(eps[0]))
    assert p.load("e0") == InFlightLoad(requests=2, tokens=250 + 25)
    assert p.load("e1") == InFlightLoad()

    c3 = cycle()
    p.prepare_data(c3, req(), eps)
    assert c3.read(INFLIGHT_LOAD_KEY) == {"e0": InFlightLoad(2, 275)}

    p.response_complete(c1, r1, response(), result(eps[0]))
    assert p.load("e0") == InFlightLoad(1, 25)
    p.response_complete(c1, r1, response(), result(eps[0]))  # a duplicate completion releases nothing
    assert p.load("e0") == InFlightLoad(1, 25)
    p.response_complete(c2, r2, response(), result(eps[0]))
    assert p.snapshot() == {}


def test_every_profile_target_is_counted_once() -> None:
    p = build("inflight-load-producer")
    eps = fleet(2)
    c = cycle()
    p.pre_request(c, req(size_bytes=4), result(eps[0], prefill=(eps[1],), decode=(eps[0],)))
    assert p.snapshot() == {"e0": InFlightLoad(1, 2), "e1": InFlightLoad(1, 2)}
    p.pre_request(c, req(size_bytes=4), result(eps[0]))  # PreRequest twice for one request counts once
    assert p.load("e0").requests == 1
    p.response_complete(c, req(), response(), result(eps[0]))
    assert p.snapshot() == {}


def test_removed_endpoints_are_forgotten_and_late_completions_ignored() -> None:
    p = build("inflight-load-producer")
    eps = fleet(2)
    old = cycle()
    p.pre_request(old, req(size_bytes=40), result(eps[0]))
    p.endpoints_changed(frozenset({"e1"}))
    assert p.snapshot() == {}
    new = cycle()
    p.pre_request(new, req(size_bytes=40), result(eps[0]))  # the endpoint came back
    p.response_complete(old, req(), response(), result(eps[0]))  # must not release the new request
    assert p.load("e0") == InFlightLoad(1, 25)


def test_token_load_scorer_reads_the_producer_snapshot() -> None:
    p = build("inflight-load-producer")
    scorer = build("token-load-scorer", {"queueThresholdTokens": 100})
    eps = fleet(2)
    p.pre_request(cycle(), req(size_bytes=160), result(eps[1]))  # 40 + 60 tokens
    c = cycle()
    p.prepare_data(c, req(), eps)
    assert scorer.score(c, req(), eps) == {"e0": 1.0, "e1": 0.0}


# ---- single-profile-handler -------------------------------------------------------------------------------


def test_single_profile_handler_runs_each_profile_once() -> None:
    h = build("single-profile-handler")
    assert list(h.pick_profiles(cycle(), req(), ["default"], {})) == ["default"]
    done = {"default": ProfileRunResult((ep("a"),))}
    assert list(h.pick_profiles(cycle(), req(), ["default"], done)) == []


def test_single_profile_handler_result() -> None:
    a = ep("a")
    res = build("single-profile-handler").process_results(cycle(), req(), {"default": ProfileRunResult((a,))})
    assert isinstance(res, SchedulingResult)
    assert res.primary_profile == "default" and res.targets == (a,)


def test_single_profile_handler_fails_when_its_profile_failed() -> None:
    with pytest.raises(SchedulingError) as err:
        build("single-profile-handler").process_results(cycle(), req(), {"default": None})
    assert err.value.code is ErrorCode.SERVICE_UNAVAILABLE
    assert err.value.message == "failed to run scheduler profile 'default'"


def test_single_profile_handler_rejects_several_results() -> None:
    results = {"a": ProfileRunResult((ep("a"),)), "b": ProfileRunResult((ep("b"),))}
    with pytest.raises(SchedulingError, match="exactly one"):
        build("single-profile-handler").process_results(cycle(), req(), results)


# ---- destination-endpoint-served-verifier -----------------------------------------------------------------


def test_served_verifier_echoes_the_served_endpoint() -> None:
    info = response("10.0.0.7:8000")
    build("destination-endpoint-served-verifier").response_received(cycle(), req(), info, result(ep("a")))
    assert info.set_headers == {"x-conformance-test-served-endpoint": "10.0.0.7:8000"}
