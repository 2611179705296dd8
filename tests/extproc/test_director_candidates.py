"""The director's candidate endpoints: reused between datastore changes, yet always what the datastore says.

`Director.candidates` keeps the fit endpoints until the datastore changes or time makes one of them stale;
these tests drive a fake clock and datastore writes and compare every answer with the datastore's own.
"""

from __future__ import annotations

import random

import pytest
from prometheus_client import CollectorRegistry

from epp.datalayer.datastore import Datastore
from epp.errors import RequestError
from epp.framework.types import Endpoint, EndpointMetrics
from epp.observability.metrics import EppMetrics
from epp.requestcontrol.context import RequestContext, RequestOptions
from epp.requestcontrol.director import Director

from .harness import DEFAULT_CONFIG, pipeline_from

STALENESS = 2.0


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def ep(key: str, scraped: float, healthy: bool = True) -> Endpoint:
    return Endpoint(
        key=key,
        ip=f"10.0.0.{ord(key[0]) % 250 + 1}",
        port=8000,
        metrics=EndpointMetrics(update_time=scraped),
        healthy=healthy,
    )


def setup(endpoints: list[Endpoint], now: float) -> tuple[Clock, Datastore, Director, RequestContext]:
    clock = Clock(now)
    datastore = Datastore(clock=clock)
    datastore.set_endpoints(endpoints)
    director = Director(
        datastore, EppMetrics(CollectorRegistry()), RequestOptions(metrics_staleness=STALENESS)
    )
    ctx = RequestContext(pipeline=pipeline_from(DEFAULT_CONFIG), request_id="r", headers={}, received_at=0.0)
    return clock, datastore, director, ctx


def keys(endpoints: tuple[Endpoint, ...]) -> list[str]:
    return [e.key for e in endpoints]


def test_an_endpoint_going_stale_leaves_without_any_datastore_change() -> None:
    clock, datastore, director, ctx = setup([ep("a", 99.0), ep("b", 100.0)], now=100.0)
    assert keys(director.candidates(ctx)) == ["a", "b"]
    clock.now = 101.0  # a is exactly `staleness` old: still fit
    assert keys(director.candidates(ctx)) == ["a", "b"]
    clock.now = 101.5
    assert keys(director.candidates(ctx)) == ["b"]
    clock.now = 102.5  # nothing fit: every endpoint (fail-open)
    assert keys(director.candidates(ctx)) == ["a", "b"]
    datastore.update_metrics("a", EndpointMetrics(update_time=102.5))
    assert keys(director.candidates(ctx)) == ["a"]
    datastore.set_healthy("a", False)  # a unhealthy, b stale: fail-open again
    assert keys(director.candidates(ctx)) == ["a", "b"]


def test_a_clock_going_backwards_is_not_served_from_the_cache() -> None:
    clock, _, director, ctx = setup([ep("a", 100.0), ep("b", 105.0)], now=106.0)
    assert keys(director.candidates(ctx)) == ["b"]
    clock.now = 101.0  # a is fresh again (and b, scraped "in the future", counts as fit as well)
    assert keys(director.candidates(ctx)) == ["a", "b"]


def test_an_empty_pool_is_503_until_endpoints_arrive() -> None:
    _, datastore, director, ctx = setup([], now=10.0)
    with pytest.raises(RequestError) as err:
        director.candidates(ctx)
    assert err.value.status == 503
    datastore.set_endpoints([ep("a", 10.0)])
    assert keys(director.candidates(ctx)) == ["a"]


def test_subset_hint_applies_to_the_reused_candidates() -> None:
    _, _, director, ctx = setup([ep("a", 10.0), ep("b", 10.0)], now=10.0)
    assert keys(director.candidates(ctx)) == ["a", "b"]
    ctx.subset_hint = [ep("b", 0.0).ip]
    assert keys(director.candidates(ctx)) == ["b"]


def test_every_answer_equals_the_datastores_own_under_random_time_and_writes() -> None:
    rng = random.Random(7)
    names = [chr(ord("a") + i) for i in range(6)]
    clock, datastore, director, ctx = setup([ep(k, 100.0 - rng.random() * 3) for k in names], now=100.0)
    hits = 0
    for _ in range(2000):
        action = rng.random()
        if action < 0.5:
            clock.now += rng.random() * 0.3
        elif action < 0.55:
            clock.now -= rng.random()  # a misbehaving clock must not break correctness
        elif action < 0.8:
            key = rng.choice(names)
            datastore.update_metrics(key, EndpointMetrics(update_time=clock.now - rng.random() * 3))
        elif action < 0.9:
            datastore.set_healthy(rng.choice(names), rng.random() < 0.7)
        else:
            kept = [k for k in names if rng.random() < 0.8]
            datastore.set_endpoints([ep(k, clock.now - rng.random() * 3) for k in kept])
        expected = datastore.candidates(STALENESS, clock.now)
        if not expected:
            with pytest.raises(RequestError):
                director.candidates(ctx)
            continue
        before = director._fit_cache
        assert director.candidates(ctx) == expected
        hits += director._fit_cache is before
    assert hits > 200  # the cache was actually used, not just recomputed every time
