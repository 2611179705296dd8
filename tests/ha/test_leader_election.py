"""Leader election against kmock (a fake kube-apiserver over real HTTP; no real one is available here).

Two electors share one Lease: exactly one leads; when the leader stops gracefully it releases the lease and
the other takes over within a retry period; readiness (the sink) follows leadership.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest
from kubernetes import client

from epp.extproc.health import ReadinessState
from epp.k8s.leader import LeaderElector, LeaseSettings, lease_name

from .kmock_server import KmockThread

FAST = {"lease_duration": 2.0, "renew_deadline": 1.0, "retry_period": 0.1}  # leases are whole seconds


@pytest.fixture
def kmock_api() -> Iterator[KmockThread]:
    server = KmockThread().start()
    yield server
    server.stop()


def _lease(identity: str) -> LeaseSettings:
    return LeaseSettings(name=lease_name("ns1", "pool-a"), namespace="ns1", identity=identity, **FAST)


async def _until(predicate, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


def _holder(server: KmockThread) -> str:
    api = client.CoordinationV1Api(server.api_client())
    resp = api.read_namespaced_lease(lease_name("ns1", "pool-a"), "ns1", _preload_content=False)
    return json.loads(resp.data)["spec"].get("holderIdentity") or ""


def test_lease_name_matches_upstream() -> None:
    assert lease_name("prod", "llama") == "epp-prod-llama.gateway-api-inference-extension.sigs.k8s.io"


async def test_one_leader_and_graceful_handover(kmock_api: KmockThread) -> None:
    ready_a, ready_b = ReadinessState(leader_election=True), ReadinessState(leader_election=True)
    for r in (ready_a, ready_b):
        r.set_synced(True)
        r.set_scraped(True)
    a = LeaderElector(kmock_api.api_client(), _lease("pod-a"), ready_a)
    await a.start()
    await _until(lambda: a.is_leader)
    b = LeaderElector(kmock_api.api_client(), _lease("pod-b"), ready_b)
    await b.start()
    # b keeps retrying but never leads while a renews
    await asyncio.sleep(FAST["lease_duration"] * 1.2)
    assert a.is_leader and not b.is_leader
    assert ready_a.ready and not ready_b.ready
    assert _holder(kmock_api) == "pod-a"

    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await a.stop()  # graceful: releases the lease
    assert not ready_a.ready
    await _until(lambda: b.is_leader, timeout=5)
    # a released lease is taken at the next retry, well before the lease would have expired
    assert loop.time() - t0 < FAST["lease_duration"]
    assert ready_b.ready
    assert _holder(kmock_api) == "pod-b"
    await b.stop()
    assert _holder(kmock_api) == ""


async def test_crashed_leader_is_replaced_after_lease_duration(kmock_api: KmockThread) -> None:
    ready_a, ready_b = ReadinessState(leader_election=True), ReadinessState(leader_election=True)
    a = LeaderElector(kmock_api.api_client(), _lease("pod-a"), ready_a)
    await a.start()
    await _until(lambda: a.is_leader)
    # simulate a crash: stop renewing without releasing
    assert a._task is not None
    a._task.cancel()
    b = LeaderElector(kmock_api.api_client(), _lease("pod-b"), ready_b)
    await b.start()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await _until(lambda: b.is_leader, timeout=10)
    waited = loop.time() - t0
    # b must observe the lease unchanged for a whole lease duration before taking it
    assert waited >= FAST["lease_duration"] - 0.2
    assert _holder(kmock_api) == "pod-b"
    await b.stop()
