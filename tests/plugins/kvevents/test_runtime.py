"""How the plugin runtime runs the precise producer's KV-event source across config reloads: started with
the live pipeline, kept (same sockets, same index, no event lost) by a reload that keeps the subscription
even when it rebuilds the producer, replaced when the subscription changes, stopped when no live plugin
declares one."""

from __future__ import annotations

import msgpack
import zmq

from epp.builtins import default_registry
from epp.config import build_pipeline, load_config
from epp.datalayer.datastore import Datastore
from epp.datalayer.kvevents.keys import BASE_SEED, block_keys
from epp.framework.types import Endpoint
from epp.plugin_runtime import PluginRuntime
from epp.plugins.kvevents.producer import PrecisePrefixCacheProducer
from epp.scheduling.pipeline import Pipeline, PipelineHolder
from tests.helpers import free_port, until

CONFIG = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: precise-prefix-cache-producer
  parameters:
    kvEventsAddresses: {{e: "{address}"}}
    resyncSeconds: 0.05
    speculativeTtlSeconds: {ttl}
- type: prefix-cache-scorer
- type: queue-scorer
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: prefix-cache-scorer
  - pluginRef: queue-scorer
"""
WITHOUT = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: queue-scorer
"""
BS = 4


def block(i: int) -> tuple[list[int], bytes]:
    """The tokens of a one-block BlockStored, and the batch carrying it."""
    tokens = [100 * i + t for t in range(BS)]
    return tokens, msgpack.packb([1.0, [["BlockStored", [i], None, tokens, BS, None, "GPU", None]], 0])


class Builder:
    def __init__(self) -> None:
        self.registry = default_registry(entry_points=False)
        self.generation = 0
        self.current: Pipeline | None = None

    def __call__(self, text: str) -> Pipeline:
        self.generation += 1
        config = load_config(text, registry=self.registry, log_warnings=False)
        self.current = build_pipeline(
            config, self.registry, generation=self.generation, previous=self.current
        )
        return self.current


def producer_of(pipeline: Pipeline) -> PrecisePrefixCacheProducer:
    (producer,) = [p for p in pipeline.plugins.values() if isinstance(p, PrecisePrefixCacheProducer)]
    return producer


async def test_reloads_keep_replace_and_stop_the_source() -> None:
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    address = f"tcp://127.0.0.1:{port}"
    datastore = Datastore()
    datastore.set_endpoints([Endpoint("e", "127.0.0.1", 8000)])
    build = Builder()
    holder = PipelineHolder(build(CONFIG.format(address=address, ttl=30)))
    runtime = PluginRuntime(holder, datastore, log_membership=False)
    sources = runtime.kv_events.sources
    seq = 0

    async def deliver(i: int, producer: PrecisePrefixCacheProducer) -> None:
        """Publish block i until the producer's index has it (a PUB drops until the SUB has joined)."""
        tokens, payload = block(i)
        key = block_keys(tokens, BS, BASE_SEED)[0]

        def held() -> bool:
            nonlocal seq
            if producer.index.holds("e", key):
                return True
            pub.send_multipart([b"kv", seq.to_bytes(8, "big"), payload])
            seq += 1
            return False

        await until(held, interval=0.02, what=f"block {i} in the producer's index")

    runtime.start()
    try:
        first = producer_of(holder.current)
        (source,) = sources()
        assert first.index is source.index  # the producer reads what the data layer's source feeds
        await deliver(1, first)

        # an unchanged config: the stateful producer is carried over, and with it its source
        holder.swap(build(CONFIG.format(address=address, ttl=30)))
        assert producer_of(holder.current) is first and sources() == [source]

        # another TTL: the producer is rebuilt, but its subscription is the same: the same source goes on
        holder.swap(build(CONFIG.format(address=address, ttl=5)))
        second = producer_of(holder.current)
        assert second is not first and sources() == [source]
        assert second.index is source.index and first.index is not source.index  # the retired one let go
        assert source.subscriber.connected == {"e": address}
        received = source.subscriber.received["e"]
        await deliver(2, second)
        assert source.subscriber.received["e"] > received  # the same subscription, still delivering
        assert source.index.size() == 2  # what arrived before the reload is still there

        # another address: a new subscription, a new source; the old one is stopped
        other = f"tcp://127.0.0.1:{free_port()}"
        holder.swap(build(CONFIG.format(address=other, ttl=5)))
        (replacement,) = sources()
        assert replacement is not source and producer_of(holder.current).index is replacement.index
        await until(lambda: "e" not in source.subscriber.connected, what="the old source stopped")

        # no plugin declares a subscription any more: no source
        holder.swap(build(WITHOUT))
        assert sources() == []
    finally:
        await runtime.stop()
        pub.close()
        ctx.term()
    assert sources() == []
