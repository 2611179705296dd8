"""The precise producer against real simulators publishing over real ZMQ, fed by the data layer's KV-event
source as the plugin runtime wires it: subscription by address, template and discovery, eviction visible
through events, two EPP replicas agreeing, bad messages."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import msgpack
import pytest
import zmq

from epp.datalayer.datastore import Datastore
from epp.datalayer.kvevents.source import KVEventSource, KVEventSources
from epp.framework.cycle import CycleState
from epp.framework.types import ApiKind, Endpoint, EndpointMetrics, InferenceRequest
from epp.plugins.datakeys import PREFIX_CACHE_MATCH_INFO_KEY
from epp.plugins.kvevents.params import PrecisePrefixParams
from epp.plugins.kvevents.producer import PrecisePrefixCacheProducer
from epp.plugins.kvevents.tokens import char4_tokens
from epp.tools.sim.config import SimConfig
from epp.tools.sim.server import SimServer
from tests.helpers import until

from .._kit import tn

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
TEXT = "a shared system prompt that is long enough to fill several blocks of sixteen tokens. " * 3


@pytest.fixture
async def sims():
    started: list[SimServer] = []

    async def start(**kw) -> SimServer:
        kw.setdefault("time_scale", 0.02)
        kw.setdefault("kv_events_endpoint", "tcp://127.0.0.1:0")
        server = SimServer(SimConfig(**kw))
        await server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.stop()


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


@contextlib.asynccontextmanager
async def running(producer: PrecisePrefixCacheProducer, *endpoints: Endpoint):
    """One EPP replica as `epp.plugin_runtime` runs the producer: a datastore holding `endpoints`, the data
    layer's KV-event source for the subscription the producer declares, its index attached."""
    datastore = Datastore()
    datastore.set_endpoints(endpoints)
    sources = KVEventSources(datastore)
    subscription = producer.kv_event_subscription()
    assert subscription is not None
    producer.attach_kv_events(sources.acquire(subscription, producer))
    source = sources.source(subscription)
    assert source is not None and producer.index is source.index
    try:
        yield Replica(datastore, source)
    finally:
        await sources.stop()


class Replica:
    def __init__(self, datastore: Datastore, source: KVEventSource) -> None:
        self.datastore = datastore
        self.source = source


def endpoint_of(sim: SimServer) -> Endpoint:
    metrics = EndpointMetrics(cache_block_size=16, cache_num_blocks=sim.config.kv_blocks, update_time=1.0)
    return Endpoint(sim.address, "127.0.0.1", sim.port, metrics=metrics)


def matched(producer: PrecisePrefixCacheProducer, endpoint: Endpoint, text: str = TEXT) -> int:
    req = InferenceRequest("q", MODEL, MODEL, ApiKind.COMPLETIONS, text.encode(), prompt=text)
    cycle = CycleState()
    producer.prepare_data(cycle, req, [endpoint])
    return cycle.read(PREFIX_CACHE_MATCH_INFO_KEY).match_blocks(endpoint.key)


async def complete(http, sim: SimServer, prompt: str) -> None:
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 2}
    async with http.post(sim.url + "/v1/completions", json=body) as resp:
        assert resp.status == 200, await resp.text()
        await resp.read()


async def warm_up(http, sim: SimServer, producer: PrecisePrefixCacheProducer, key: str) -> None:
    """PUB drops messages until the subscription has propagated: send traffic until a batch arrives."""
    for i in range(100):
        await complete(http, sim, f"warm-up {i} " * 10)
        if producer.index.batches(key) > 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("no KV event batch ever arrived")


async def test_events_make_matches_precise_and_follow_evictions(sims, http) -> None:
    sim = await sims()
    ep = endpoint_of(sim)
    params = PrecisePrefixParams(kvEventsAddresses={sim.address: sim.publisher.endpoint}, resyncSeconds=0.05)
    producer = PrecisePrefixCacheProducer(tn("precise-prefix-cache-producer"), params)
    async with running(producer, ep) as replica:  # a static endpoint: known before any request
        await warm_up(http, sim, producer, ep.key)
        assert producer.live(ep.key)
        assert matched(producer, ep) == 0
        await complete(http, sim, TEXT)
        total = len(char4_tokens(TEXT)) // 16
        await until(lambda: matched(producer, ep) == total, what="the BlockStored of the prompt")
        assert replica.source.subscriber.connected == {ep.key: sim.publisher.endpoint}
        async with http.post(sim.url + "/admin/reset-cache") as resp:
            assert resp.status == 200
        await until(lambda: matched(producer, ep) == 0, what="AllBlocksCleared")
        assert replica.source.subscriber.malformed[ep.key] == 0


async def test_discovery_and_two_replicas_agree_without_talking(sims, http) -> None:
    sim = await sims()
    ep = endpoint_of(sim)
    port = int(sim.publisher.endpoint.rsplit(":", 1)[1])
    by_template = PrecisePrefixCacheProducer(
        tn("precise-prefix-cache-producer", "one"),
        PrecisePrefixParams(
            kvEventsAddress="tcp://{ip}:{eventPort}", kvEventsPortOffset=port - sim.port, resyncSeconds=0.05
        ),
    )
    by_discovery = PrecisePrefixCacheProducer(
        tn("precise-prefix-cache-producer", "two"),
        PrecisePrefixParams(discoverKvEventSources=True, resyncSeconds=0.05),
    )
    async with running(by_template, ep), running(by_discovery, ep) as discovering:
        await until(lambda: ep.key in discovering.source.desired_sources(), what="discovery")
        assert discovering.source.desired_sources()[ep.key] == sim.publisher.endpoint
        await warm_up(http, sim, by_template, ep.key)
        await warm_up(http, sim, by_discovery, ep.key)
        await complete(http, sim, TEXT)
        total = len(char4_tokens(TEXT)) // 16
        await until(lambda: matched(by_template, ep) == total == matched(by_discovery, ep), what="agreement")


async def test_a_key_that_moves_to_another_address_is_rediscovered(sims) -> None:
    """A StatefulSet pod recreated at a new IP under the same key: its old event source is forgotten."""
    old, new = await sims(), await sims()
    producer = PrecisePrefixCacheProducer(
        tn("precise-prefix-cache-producer"),
        PrecisePrefixParams(discoverKvEventSources=True, resyncSeconds=0.05),
    )
    at_old = Endpoint("pod-rank-0", "127.0.0.1", old.port)
    async with running(producer, at_old) as replica:
        source = replica.source
        await until(lambda: source.desired_sources().get("pod-rank-0") == old.publisher.endpoint, what="old")
        at_new = Endpoint("pod-rank-0", "127.0.0.1", new.port)
        replica.datastore.set_endpoints([at_new])
        assert "pod-rank-0" not in source.desired_sources()  # not the old pod's publisher meanwhile
        await until(lambda: source.desired_sources().get("pod-rank-0") == new.publisher.endpoint, what="new")


async def test_malformed_messages_are_counted_and_skipped(sims) -> None:
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    ep = Endpoint("e", "127.0.0.1", 1, metrics=EndpointMetrics(cache_block_size=4, update_time=1.0))
    producer = PrecisePrefixCacheProducer(
        tn("precise-prefix-cache-producer"),
        PrecisePrefixParams(
            kvEventsAddresses={"e": f"tcp://127.0.0.1:{port}"}, resyncSeconds=0.05, tokenizer="request"
        ),
    )
    good = msgpack.packb([1.0, [["BlockStored", [1], None, [5, 6, 7, 8], 4, None, "GPU", None]], 0])
    try:
        async with running(producer, ep) as replica:
            subscriber = replica.source.subscriber
            await until(lambda: "e" in subscriber.connected, what="connect")
            for seq in range(200):  # until the subscription has propagated
                pub.send_multipart([b"t", seq.to_bytes(8, "big"), b"\xc1junk"])
                if subscriber.malformed["e"]:
                    break
                await asyncio.sleep(0.02)
            assert subscriber.malformed["e"] >= 1
            pub.send_multipart([b"t", (1000).to_bytes(8, "big"), good])
            pub.send_multipart([b"t", (1005).to_bytes(8, "big"), good])
            await until(lambda: producer.index.batches("e") == 2, what="the good batches")
            assert subscriber.gaps["e"] == 4  # 1001..1004 were lost
            req = InferenceRequest("q", "m", "m", token_ids=(5, 6, 7, 8, 9), prefix_material=b"x")
            cycle = CycleState()
            producer.prepare_data(cycle, req, [ep])
            assert cycle.read(PREFIX_CACHE_MATCH_INFO_KEY).match_blocks("e") == 1
    finally:
        pub.close()
        ctx.term()


async def test_an_unreachable_address_is_retried_not_fatal() -> None:
    ep = Endpoint("e", "127.0.0.1", 1)
    producer = PrecisePrefixCacheProducer(
        tn("precise-prefix-cache-producer"),
        PrecisePrefixParams(kvEventsAddresses={"e": "not-a-zmq-address"}, resyncSeconds=0.02),
    )
    async with running(producer, ep) as replica:
        await asyncio.sleep(0.1)
        assert "e" not in replica.source.subscriber.connected
        assert not producer.live("e")


async def test_a_new_endpoint_is_subscribed_at_once_not_at_the_next_resync(sims) -> None:
    # events published before the subscription connects are lost to the index, so waiting for the next
    # resync tick (here 60 s) would blind the producer for the first requests after a (re)start
    sim = await sims()
    params = PrecisePrefixParams(discoverKvEventSources=True, resyncSeconds=60.0)
    producer = PrecisePrefixCacheProducer(tn("precise-prefix-cache-producer"), params)
    async with running(producer) as replica:
        await asyncio.sleep(0.1)  # both loops are now asleep for a minute
        replica.datastore.set_endpoints([endpoint_of(sim)])
        connected = replica.source.subscriber.connected
        await until(lambda: sim.address in connected, timeout=5.0, what="subscription")
