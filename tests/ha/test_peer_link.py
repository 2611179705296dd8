"""Replicas in active-active mode share their deciders' state over the peer link: real ZeroMQ over TCP on
127.0.0.1 (CURVE with keys from a shared secret) between links, ipc:// between a link and its deciders.

Each "replica" here is what one pod runs with `--workers 1`: a state bus for its one decider and a peer
link, in their own private directory.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
import zmq

from epp.errors import SettingsError
from epp.ha.keys import derive_keys
from epp.ha.link import PeerLink, message_header
from epp.plugins.producers.approx_prefix import ApproxPrefixCacheProducer
from epp.scheduling.pipeline import PipelineHolder
from epp.workers.codec import pack
from epp.workers.statebus import StateBus, peers_address, state_address
from tests.helpers import until
from tests.workers.test_buses import EPS, _producer, _route

from .deciders import decider

SECRET = b"a shared secret of the replicas\n"


@dataclass
class Replica:
    name: str
    holder: PipelineHolder
    bus: StateBus
    link: PeerLink

    @property
    def producer(self) -> ApproxPrefixCacheProducer:
        return _producer(self.holder)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.link.port}"

    def route(self, rid: str, target: int) -> None:
        _route(self.producer, rid, EPS[target])
        self.bus.notify()


@asynccontextmanager
async def replica(name: str, secret: bytes | None = SECRET) -> AsyncIterator[Replica]:
    directory, holder, bus = decider(name, silence=0.6)

    async def snapshot() -> bytes | None:
        return bus.export_snapshot()

    link = PeerLink(
        replica=name,
        local_sources=[state_address(directory, 0)],
        local_sink=peers_address(directory),
        host="127.0.0.1",
        keys=derive_keys(secret) if secret is not None else None,
        snapshot_source=snapshot,
        heartbeat=0.1,
        silence=0.6,
    )
    await link.start()
    bus.start()
    _producer(holder).endpoints_changed(frozenset(e.key for e in EPS))
    try:
        yield Replica(name, holder, bus, link)
    finally:
        bus.close()
        await link.close()
        shutil.rmtree(directory, ignore_errors=True)


def mesh(*replicas: Replica) -> None:
    for r in replicas:
        r.link.set_peers(o.address for o in replicas if o is not r)


async def test_a_decision_on_one_replica_reaches_the_others() -> None:
    async with replica("a") as a, replica("b") as b, replica("c") as c:
        mesh(a, b, c)
        await until(lambda: a.link.peers() == ["b", "c"] and c.link.peers() == ["a", "b"], what="heartbeats")

        def shared() -> bool:  # connections come up asynchronously: decide until it got through
            if b.producer.index.size() and c.producer.index.size():
                return True
            a.route("r1", 1)
            return False

        await until(shared, what="a's decision at b and c")
        assert b.producer.index.blocks(EPS[1].key) == a.producer.index.blocks(EPS[1].key)
        assert c.producer.index.endpoints() == {EPS[1].key}
        assert a.link.stats.sent >= 1 and b.link.stats.received >= 1
        await until(lambda: b.bus.origins() == ["a/w0.1", "c/w0.1"], what="b hears a's and c's deciders")


async def test_a_replica_without_the_secret_is_refused() -> None:
    async with replica("a") as a, replica("x", secret=b"not the secret of the others") as x:
        mesh(a, x)
        dealer, _ = x.link._dealers[a.address]
        monitor = dealer.get_monitor_socket()
        events: list[int] = []
        try:
            await until(lambda: _handshakes(monitor, events), what="a handshake's outcome")
        finally:
            dealer.disable_monitor()
            monitor.close(0)
        assert zmq.EVENT_HANDSHAKE_SUCCEEDED not in events  # x cannot even reach a's server key
        x.route("r1", 0)
        await until(lambda: x.link.stats.sent >= 1)
        assert "x" not in a.link.peers() and a.link.stats.received == 0
        assert a.producer.index.size() == 0


async def test_a_client_that_knows_the_server_key_but_not_the_secret_is_refused() -> None:
    async with replica("a") as a:
        keys = derive_keys(SECRET)
        public, secret = zmq.curve_keypair()
        context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        dealer = context.socket(zmq.DEALER)
        try:
            dealer.setsockopt(zmq.LINGER, 0)
            dealer.setsockopt(zmq.CURVE_SERVERKEY, keys.server_public)
            dealer.setsockopt(zmq.CURVE_PUBLICKEY, public)
            dealer.setsockopt(zmq.CURVE_SECRETKEY, secret)
            monitor = dealer.get_monitor_socket()
            dealer.connect(f"tcp://{a.address}")
            events: list[int] = []
            await until(lambda: _handshakes(monitor, events), what="a handshake's outcome")
            assert events == [zmq.EVENT_HANDSHAKE_FAILED_AUTH]  # the ZAP handler said no
            monitor.close(0)
        finally:
            dealer.close(0)
            context.destroy(0)
        assert a.link.peers() == [] and a.link.stats.received == 0


_HANDSHAKE_EVENTS = {
    zmq.EVENT_HANDSHAKE_SUCCEEDED,
    zmq.EVENT_HANDSHAKE_FAILED_AUTH,
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
}


def _handshakes(monitor: zmq.Socket[bytes], seen: list[int]) -> bool:
    """Add the handshake events the monitor reported since to `seen`; True once there is one."""
    from zmq.utils.monitor import recv_monitor_message

    while True:
        try:
            message = recv_monitor_message(monitor, zmq.NOBLOCK)
        except zmq.Again:
            return bool(seen)
        if int(message["event"]) in _HANDSHAKE_EVENTS:
            seen.append(int(message["event"]))


async def test_a_replica_that_starts_takes_a_snapshot_from_a_peer() -> None:
    async with replica("a") as a:
        a.route("r1", 0)
        a.route("r2", 1)
        assert a.producer.index.size() > 0
        async with replica("new") as new:
            mesh(a, new)
            data = await new.link.bootstrap(timeout=5.0)
            assert data is not None and new.bus.import_snapshot(data) == 1
            for ep in EPS:
                assert new.producer.index.blocks(ep.key) == a.producer.index.blocks(ep.key)
            assert a.link.stats.served == 1


async def test_the_first_replica_bootstraps_from_nobody() -> None:
    async with replica("alone") as alone:
        assert await alone.link.bootstrap(timeout=0.2) is None
        alone.link.set_peers(["127.0.0.1:1"])  # nobody listens there
        assert await alone.link.bootstrap(timeout=0.2) is None


async def test_a_replica_gone_silent_is_forgotten() -> None:
    async with replica("a") as a:
        async with replica("b") as b:
            mesh(a, b)
            await until(lambda: "b/w0.1" in a.bus.origins() and a.link.peers() == ["b"])
        await until(lambda: a.bus.origins() == [] and a.link.peers() == [], what="b forgotten")


def test_keys_come_from_the_secret_and_a_short_one_is_refused() -> None:
    one, again = derive_keys(SECRET), derive_keys(SECRET.strip())
    assert one == again and len(one.server_public) == 40
    assert derive_keys(b"another secret, long enough") != one
    assert one.server_public != one.client_public
    with pytest.raises(SettingsError, match="at least 16"):
        derive_keys(b"short")


def test_a_message_header_is_read_without_its_parts() -> None:
    data = pack([1, "a/w0.1", 7, 3, 1234.5, [["p", "d", list(range(1000))]]])
    assert message_header(data) == ("a/w0.1", 1234.5)
    assert message_header(b"\x93junk") is None
    assert message_header(b"") is None
