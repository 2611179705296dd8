"""The precise producer inside the real daemon, behind real Envoy, fed by real simulators' KV events.

Two simulators publish KV events; the EPP (`epp.app.App`, static endpoints) runs a profile with
`precise-prefix-cache-producer` discovering the publishers through `GET /kv_event_sources`. The data
layer's KV-event source (started by the plugin runtime for the subscription the producer declares) must
start with the pipeline, follow each engine's cache (a prompt's blocks appear on the server that served
it, and disappear when that server clears its cache), and route repeats of a prompt to its holder.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from epp.app import App
from epp.framework.cycle import CycleState
from epp.framework.types import ApiKind, InferenceRequest
from epp.plugins.datakeys import PREFIX_CACHE_MATCH_INFO_KEY
from epp.plugins.kvevents.producer import PrecisePrefixCacheProducer
from epp.tools.loadgen.gateway import EppServer, Gateway
from epp.tools.sim.config import SimConfig
from epp.tools.sim.server import SimServer
from tests.helpers import until

pytestmark = pytest.mark.envoy

CONFIG = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: precise-prefix-cache-producer
  parameters:
    discoverKvEventSources: true
    resyncSeconds: 0.1
- type: prefix-cache-scorer
- type: queue-scorer
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: prefix-cache-scorer
    weight: 3
  - pluginRef: queue-scorer
"""
PROMPT = "You are a careful assistant. Answer in one short sentence, citing the manual. " * 4


@pytest.fixture
async def stack(tmp_path: Path):
    sims = [
        SimServer(
            SimConfig(
                model="sim", name=f"s{i}", time_scale=0.01, seed=i, kv_events_endpoint="tcp://127.0.0.1:0"
            )
        )
        for i in range(2)
    ]
    for sim in sims:
        await sim.start()
    # the daemon in-process (plaintext, loopback) behind a real Envoy
    gateway = Gateway([s.address for s in sims], config_text=CONFIG, secure_serving=False, workdir=tmp_path)
    try:
        await gateway.start()
        assert isinstance(gateway.epp, EppServer) and gateway.epp.app is not None
        yield gateway.epp.app, gateway, {s.name: s for s in sims}
    finally:
        await gateway.stop()
        for sim in sims:
            await sim.stop()


async def send(http: aiohttp.ClientSession, url: str, prompt: str) -> str:
    body = {"model": "sim", "prompt": prompt, "max_tokens": 2, "stream": True}
    async with http.post(f"{url}/v1/completions", json=body) as resp:
        assert resp.status == 200, await resp.text()
        await resp.read()
        return resp.headers["x-sim-server"]


def matched(producer: PrecisePrefixCacheProducer, app: App, sim: SimServer) -> int:
    endpoint = app.datastore.get(sim.address)
    assert endpoint is not None
    req = InferenceRequest("probe", "sim", "sim", ApiKind.COMPLETIONS, PROMPT.encode(), prompt=PROMPT)
    cycle = CycleState()
    producer.prepare_data(cycle, req, [endpoint])
    return cycle.read(PREFIX_CACHE_MATCH_INFO_KEY).match_blocks(endpoint.key)


async def test_routing_follows_the_engines_kv_events(stack) -> None:
    app, gateway, sims = stack
    producer = next(
        p for p in app.holder.current.plugins.values() if isinstance(p, PrecisePrefixCacheProducer)
    )
    sources = app.plugins.kv_events.sources
    # the plugin runtime started the data layer's source for the subscription the producer declares
    assert [s.index for s in sources()] == [producer.index]
    async with aiohttp.ClientSession() as http:
        # warm up until both publishers are discovered and have delivered a batch
        i = 0
        while not all(producer.live(s.address) for s in sims.values()):
            i += 1
            assert i < 400, f"event feeds never went live: {[s.describe() for s in sources()]}"
            await send(http, gateway.url, f"warm-up request {i} " * 8)
            await asyncio.sleep(0.02)
        holder = sims[await send(http, gateway.url, PROMPT)]
        await until(
            lambda: matched(producer, app, holder) > 0, timeout=15.0, what="BlockStored of the prompt"
        )
        for n in range(6):
            assert await send(http, gateway.url, PROMPT + f" Question {n}?") == holder.config.name
        other = next(s for s in sims.values() if s is not holder)
        assert matched(producer, app, other) == 0
        holder.reset_cache()
        await until(lambda: matched(producer, app, holder) == 0, timeout=15.0, what="AllBlocksCleared")
