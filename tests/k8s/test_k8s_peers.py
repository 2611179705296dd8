"""Active-active peers found through the Kubernetes API (kmock stands in for the API server): the EPP's own
ready pods by label, itself excluded; a replica whose pod joins finds the others, takes a snapshot and
routes their prefixes alike. The replicas are real peer links on loopback addresses (127.0.0.2, .3: one
port each, as pods share one port), their deciders state buses on ipc://."""

from __future__ import annotations

import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from epp.ha.keys import derive_keys
from epp.ha.replica import HaReplica
from epp.k8s.peers import KubernetesPeers, peer_addresses
from epp.workers.statebus import StateBus
from tests.ha.deciders import decider
from tests.helpers import free_port, until
from tests.workers.test_buses import EPS, _producer, _route

from .conftest import FAST
from .kube import Kube

LABELS = {"app": "epp", "release": "r1"}
KEYS = derive_keys(b"the replicas' shared secret, long enough")


def test_peers_are_the_other_ready_pods() -> None:
    pods = [
        Kube.pod("epp-a", "10.0.0.1", labels=LABELS),
        Kube.pod("epp-b", "10.0.0.2", labels=LABELS),
        Kube.pod("epp-c", "10.0.0.3", labels=LABELS, ready=False),
        Kube.pod("epp-d", "fd00::4", labels=LABELS),
        {"metadata": {"name": "epp-e"}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}},
    ]
    assert peer_addresses(pods, 9004, own_ip="10.0.0.1", own_name="") == ["10.0.0.2:9004", "[fd00::4]:9004"]
    assert peer_addresses(pods, 9004, own_ip="", own_name="epp-b") == ["10.0.0.1:9004", "[fd00::4]:9004"]


@asynccontextmanager
async def replica(api, name: str, ip: str, port: int) -> AsyncIterator[tuple[HaReplica, StateBus]]:
    directory, holder, bus = decider(name, silence=1.0, prefix="epp-k-")

    async def snapshot() -> bytes | None:
        return bus.export_snapshot()

    async def apply(data: bytes) -> int:
        return bus.import_snapshot(data)

    ha = HaReplica(
        replica=name,
        directory=directory,
        local_slots=1,
        host=ip,
        port=port,
        keys=KEYS,
        snapshot_source=snapshot,
        apply_snapshot=apply,
        bootstrap_timeout=3.0,
        heartbeat=0.1,
        silence=1.0,
    )
    peers = KubernetesPeers(
        api,
        namespace="default",
        selector=LABELS,
        port=port,
        own_ip=ip,
        own_name="",
        on_peers=ha.set_peers,
        options=FAST,
    )
    bus.start()
    _producer(holder).endpoints_changed(frozenset(e.key for e in EPS))
    await ha.start(peers)
    try:
        yield ha, bus
    finally:
        bus.close()
        await ha.stop()
        shutil.rmtree(directory, ignore_errors=True)


async def test_a_replica_whose_pod_joins_finds_the_others_and_routes_alike(api, kube) -> None:
    port = free_port()
    await kube.create_pod("epp-a", "127.0.0.2", labels=LABELS)
    await kube.create_pod("vllm-0", "127.0.0.9")  # another app's pod: not a peer
    async with replica(api, "a", "127.0.0.2", port) as (a, a_bus):
        await a.bootstrap()  # nobody to ask: ready on its own
        assert a.snapshot_applied == 0 and a.link.addresses() == []
        for i, target in enumerate((0, 1, 1)):
            _route(_producer(a_bus.holder), f"r{i}", EPS[target])
        assert _producer(a_bus.holder).index.size() > 0

        await kube.create_pod("epp-b", "127.0.0.3", labels=LABELS)
        async with replica(api, "b", "127.0.0.3", port) as (b, b_bus):
            await b.bootstrap()
            ready_at = time.monotonic()
            assert b.snapshot_applied == 1 and b.link.addresses() == [f"127.0.0.2:{port}"]
            a_index, b_index = _producer(a_bus.holder).index, _producer(b_bus.holder).index
            assert [b_index.blocks(e.key) for e in EPS] == [a_index.blocks(e.key) for e in EPS]
            await until(lambda: a.link.addresses() == [f"127.0.0.3:{port}"], what="a finds b's pod")
            # from now on what b decides reaches a
            received = a.link.stats.received

            def shared() -> bool:
                if a.link.stats.received > received:
                    return True
                _route(_producer(b_bus.holder), "fresh", EPS[0])
                b_bus.notify()
                return False

            await until(shared, timeout=2.0, what="b's decisions at a within 2 s of b being ready")
            assert time.monotonic() - ready_at < 2.0

        await kube.delete_pod("epp-b")
        await until(lambda: a.link.addresses() == [], what="b's pod gone: no peer left")
