"""The data layer's KV-event source on its own: a real ZMQ publisher and a real `/kv_event_sources` server on
127.0.0.1 (dynamic ports), endpoints from a datastore. Discovery, subscription, applying events,
membership, an endpoint that moves, and the per-process registry that shares a source between plugins."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import msgpack
import pytest
import zmq
from aiohttp import web

from epp.datalayer.datastore import Datastore
from epp.datalayer.kvevents.index import PreciseIndex
from epp.datalayer.kvevents.keys import BASE_SEED, block_keys
from epp.datalayer.kvevents.source import KVEventSource, KVEventSources
from epp.datalayer.kvevents.subscription import KVEventSubscription
from epp.framework.types import Endpoint
from tests.helpers import until

BS = 4
TOKENS = [5, 6, 7, 8, 9, 10, 11, 12]  # two blocks


def stored_batch(hashes: list[int], tokens: list[int], parent: int | None = None) -> bytes:
    return msgpack.packb([1.0, [["BlockStored", hashes, parent, tokens, BS, None, "GPU", None]], 0])


class Publisher:
    """A KV-event PUB socket bound to a free 127.0.0.1 port; `send` numbers the messages."""

    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.seq = 0

    def send(self, payload: bytes) -> None:
        self.sock.send_multipart([b"kv@e", self.seq.to_bytes(8, "big"), payload])
        self.seq += 1

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


class DiscoveryServer:
    """An HTTP server answering `GET /kv_event_sources` with whatever `document` holds."""

    def __init__(self, document: object) -> None:
        self.document = document
        self.requests = 0
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        return web.json_response(self.document)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/kv_event_sources", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
def publisher():
    pub = Publisher()
    yield pub
    pub.close()


@contextlib.asynccontextmanager
async def running(source: KVEventSource) -> AsyncIterator[KVEventSource]:
    task = asyncio.create_task(source.run())
    try:
        yield source
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def publish_until_applied(pub: Publisher, index: PreciseIndex, key: str, payload: bytes) -> None:
    """A PUB drops messages until the subscription has propagated: publish until a batch is applied."""
    before = index.batches(key)

    def applied() -> bool:
        if index.batches(key) > before:
            return True
        pub.send(payload)
        return False

    await until(applied, interval=0.02, what=f"a batch from {key} applied")


async def test_discovers_the_publisher_subscribes_and_applies_its_events(publisher) -> None:
    server = DiscoveryServer(
        {"0": {"publisher": "zmq", "enable_kv_cache_events": True, "endpoint": f"tcp://*:{publisher.port}"}}
    )
    await server.start()
    try:
        ep = Endpoint(f"127.0.0.1:{server.port}", "127.0.0.1", server.port)
        datastore = Datastore()
        datastore.set_endpoints([ep])
        source = KVEventSource(KVEventSubscription(discover=True, resync_seconds=0.05), datastore)
        async with running(source):
            address = f"tcp://127.0.0.1:{publisher.port}"  # the wildcard host is the endpoint's IP
            await until(lambda: source.subscriber.connected.get(ep.key) == address, what="subscription")
            assert source.describe()["discovered"] == {ep.key: address}
            await publish_until_applied(publisher, source.index, ep.key, stored_batch([1, 2], TOKENS))
            keys = block_keys(TOKENS, BS, BASE_SEED)
            assert source.index.match(keys, [ep.key], 0.0).blocks == {ep.key: 2}
            assert source.index.block_size(ep.key) == BS
            assert source.describe()["malformed"] == {}
            # the endpoint leaves the pool: its blocks and its subscription go at once
            datastore.set_endpoints([])
            assert source.index.batches(ep.key) == 0 and source.index.size() == 0
            await until(lambda: ep.key not in source.subscriber.connected, what="unsubscribed")
            assert source.desired_sources() == {}
        assert server.requests == 1  # discovered once, not at every round
    finally:
        await server.stop()


async def test_an_endpoint_without_an_answer_is_retried_later_not_fatal() -> None:
    server = DiscoveryServer({})  # a server without KV events
    await server.start()
    try:
        ep = Endpoint("e", "127.0.0.1", server.port)
        datastore = Datastore()
        datastore.set_endpoints([ep])
        source = KVEventSource(KVEventSubscription(discover=True, resync_seconds=0.02), datastore)
        async with running(source):
            await until(lambda: server.requests >= 1, what="a discovery request")
            await asyncio.sleep(0.1)  # several rounds: the retry waits 10 s, not one round
            assert server.requests == 1 and source.desired_sources() == {}
    finally:
        await server.stop()


def test_explicit_addresses_win_over_the_template_and_ipv6_is_bracketed() -> None:
    datastore = Datastore()
    datastore.set_endpoints(
        [
            Endpoint("a", "10.0.0.1", 8000),
            Endpoint("b", "10.0.0.2", 8000),
            Endpoint("c", "10.0.0.3", 8000),
            Endpoint("[fd00::1]:9000", "fd00::1", 9000),
        ]
    )
    subscription = KVEventSubscription(
        addresses=(("10.0.0.3:8000", "ipc:///x"), ("b", "tcp://1.2.3.4:1")),
        template="tcp://{ip}:{eventPort}",
        port_offset=100,
    )
    assert KVEventSource(subscription, datastore).desired_sources() == {
        "a": "tcp://10.0.0.1:8100",
        "b": "tcp://1.2.3.4:1",
        "c": "ipc:///x",
        "[fd00::1]:9000": "tcp://[fd00::1]:9100",
    }


async def test_a_key_at_another_address_is_another_engine_whose_blocks_are_forgotten(publisher) -> None:
    datastore = Datastore()
    datastore.set_endpoints([Endpoint("pod-0", "127.0.0.1", 8000)])
    template = f"tcp://{{ip}}:{publisher.port}"
    source = KVEventSource(KVEventSubscription(template=template, resync_seconds=0.05), datastore)
    async with running(source):
        await publish_until_applied(publisher, source.index, "pod-0", stored_batch([1, 2], TOKENS))
        assert source.index.size() == 2
        datastore.set_endpoints([Endpoint("pod-0", "127.0.0.1", 8001)])  # same key, recreated elsewhere
        assert source.desired_sources() == {"pod-0": f"tcp://127.0.0.1:{publisher.port}"}
        assert source.index.batches("pod-0") == 0 and source.index.size() == 0


async def test_plugins_declaring_the_same_subscription_share_one_source_until_the_last_leaves() -> None:
    datastore = Datastore()
    sources = KVEventSources(datastore)
    one = KVEventSubscription(template="tcp://{ip}:5557")
    other = KVEventSubscription(template="tcp://{ip}:5558")
    first, second, third = object(), object(), object()
    try:
        index = sources.acquire(one, first)
        assert sources.acquire(KVEventSubscription(template="tcp://{ip}:5557"), second) is index
        assert sources.acquire(other, third) is not index
        assert len(sources.sources()) == 2
        shared = sources.source(one)
        assert shared is not None
        sources.release(one, first)
        assert sources.source(one) is shared  # still read by `second`
        sources.release(one, second)
        assert sources.source(one) is None and len(sources.sources()) == 1
        sources.release(one, second)  # releasing twice is harmless
        # the stopped source no longer follows the datastore
        await until(lambda: len(datastore._membership_listeners) == 1, what="the stopped source unsubscribed")
    finally:
        await sources.stop()
    assert sources.sources() == [] and datastore._membership_listeners == []
