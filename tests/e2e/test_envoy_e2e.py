"""End to end through a real Envoy: client → Envoy → ext_proc (this EPP) → echo model servers.

Three Envoys share the module, each with the observer filter of the shipped config: ON_DEMAND (the shipped
config: the response body reaches the EPP only through the observer) and FULL_DUPLEX_STREAMED (upstream's)
with TLS to the EPP, BUFFERED with plaintext to a third EPP server; most cases run through all three.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry

from epp.builtins import builtin_registry
from epp.config import build_pipeline, load_config
from epp.datalayer.datastore import Datastore
from epp.extproc.server import ExtProcServer
from epp.extproc.tls import TlsOptions
from epp.framework.types import Endpoint, TypedName
from epp.observability.metrics import EppMetrics
from epp.requestcontrol.context import RequestOptions
from epp.scheduling.pipeline import PipelineHolder
from epp.tools.proxy import EnvoyConfig, EnvoyProcess
from tests.helpers import until

from .backends import EchoBackend

pytestmark = [pytest.mark.envoy, pytest.mark.asyncio(loop_scope="module")]

CONFIG = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: prefix-cache-scorer
- type: max-score-picker
- type: destination-endpoint-served-verifier
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: queue-scorer
    weight: 2
  - pluginRef: kv-cache-utilization-scorer
    weight: 2
  - pluginRef: prefix-cache-scorer
    weight: 3
"""

MAX_BODY = 3 << 20


class Completions:
    """A response-complete hook that counts completions (to see hooks run once, also on disconnect)."""

    typed_name = TypedName("e2e-completions", "e2e-completions")

    def __init__(self) -> None:
        self.infos: list = []
        self.changed = asyncio.Event()

    def response_complete(self, cycle, request, response, result) -> None:
        self.infos.append(response)
        self.changed.set()


@dataclass
class Epp:
    server: ExtProcServer
    holder: PipelineHolder
    datastore: Datastore
    metrics: EppMetrics
    port: int
    tls: TlsOptions | None
    hook: Completions

    def sample(self, name: str, labels: dict[str, str] | None = None) -> float:
        return self.metrics.registry.get_sample_value(name, labels or {}) or 0.0


@dataclass
class Gateway:
    name: str
    epp: Epp
    envoy: EnvoyProcess
    mode: str

    @property
    def url(self) -> str:
        return self.envoy.url


async def start_epp(backends: list[EchoBackend], tls: TlsOptions | None, port: int = 0) -> Epp:
    registry = builtin_registry()
    hook = Completions()
    pipeline = build_pipeline(load_config(CONFIG, registry=registry), registry)
    pipeline = dataclasses.replace(pipeline, response_complete=(*pipeline.response_complete, hook))
    datastore = Datastore()
    datastore.set_endpoints(Endpoint(key=b.address, ip="127.0.0.1", port=b.port) for b in backends)
    datastore.mark_synced()
    datastore.set_objectives({"batch": -1, "critical": 10})
    metrics = EppMetrics(CollectorRegistry())
    holder = PipelineHolder(pipeline)
    server = ExtProcServer(holder, datastore, metrics, RequestOptions(max_request_body_bytes=MAX_BODY))
    bound = await server.start(port, tls=tls, host="127.0.0.1")
    return Epp(server, holder, datastore, metrics, bound, tls, hook)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def backends() -> AsyncIterator[list[EchoBackend]]:
    started = [await EchoBackend().start() for _ in range(3)]
    yield started
    for b in started:
        b.release.set()
        await b.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gateways(backends, tmp_path_factory) -> AsyncIterator[dict[str, Gateway]]:
    out: dict[str, Gateway] = {}
    try:
        for name, mode, tls in (
            ("on-demand-tls", "ON_DEMAND", TlsOptions()),
            ("duplex-tls", "FULL_DUPLEX_STREAMED", TlsOptions()),
            ("buffered-plain", "BUFFERED", None),
        ):
            epp = await start_epp(backends, tls)
            cfg = EnvoyConfig(ext_proc_port=epp.port, ext_proc_tls=tls is not None, body_mode=mode)  # type: ignore[arg-type]
            envoy = EnvoyProcess(cfg, tmp_path_factory.mktemp(name))
            out[name] = Gateway(name, epp, envoy, mode)
            await envoy.start()
        yield out
    finally:
        for gw in out.values():
            await gw.envoy.stop()
            await gw.epp.server.stop(0)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


GATEWAYS = ["on-demand-tls", "duplex-tls", "buffered-plain"]


def by_port(backends: list[EchoBackend], port: int) -> EchoBackend:
    return next(b for b in backends if b.port == port)


@pytest.mark.parametrize("gw", GATEWAYS)
async def test_completions_routed_with_served_echo_and_untouched_body(gw, gateways, backends, http) -> None:
    g = gateways[gw]
    body = json.dumps({"model": "m", "prompt": "hello there", "max_tokens": 3}).encode()
    headers = {"content-type": "application/json", "x-gateway-destination-endpoint": "10.255.0.1:1"}
    async with http.post(f"{g.url}/v1/completions", data=body, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        out = await resp.json()
        served = resp.headers["x-conformance-test-served-endpoint"]
    echo = out["echo"]
    assert served == f"127.0.0.1:{echo['backend']}"  # the EPP learned who served
    assert echo["received_sha256"] == hashlib.sha256(body).hexdigest()  # not re-serialised
    assert echo["headers"]["x-gateway-destination-endpoint"] == served  # the client's value was replaced
    assert out["model"] == "m"
    handshakes = (await g.envoy.stats("cluster.ext_proc.ssl.handshake")).get(
        "cluster.ext_proc.ssl.handshake", 0
    )
    assert (handshakes > 0) == (g.epp.tls is not None)  # TLS to the EPP exactly when configured


@pytest.mark.parametrize("gw", GATEWAYS)
async def test_chat_streaming_usage_counted(gw, gateways, http) -> None:
    g = gateways[gw]
    labels = {"model_name": "chat-m", "target_model_name": "chat-m"}
    before = g.epp.sample("inference_objective_input_tokens_sum", labels)
    body = {
        "model": "chat-m",
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "hi"}],
    }
    async with http.post(f"{g.url}/v1/chat/completions", json=body) as resp:
        assert resp.status == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        text = (await resp.read()).decode()
    events = [line[6:] for line in text.split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and len(events) == 5
    await until(lambda: g.epp.sample("inference_objective_input_tokens_sum", labels) == before + 9)
    assert g.epp.sample("inference_objective_output_tokens_sum", labels) >= 3


@pytest.mark.parametrize("gw", GATEWAYS)
async def test_two_megabyte_prompt(gw, gateways, http) -> None:
    g = gateways[gw]
    body = json.dumps({"model": "m", "prompt": "y" * (2 << 20)}).encode()
    async with http.post(f"{g.url}/v1/completions", data=body) as resp:
        assert resp.status == 200, (await resp.text())[:500]
        echo = (await resp.json())["echo"]
    assert echo["received_len"] == len(body)
    assert echo["received_sha256"] == hashlib.sha256(body).hexdigest()


@pytest.mark.parametrize("gw", GATEWAYS)
@pytest.mark.parametrize("stream", [False, True])
async def test_model_rewrite_reaches_backend_and_is_restored(gw, stream, gateways, backends, http) -> None:
    g = gateways[gw]
    body = {"model": "public", "prompt": "rewrite me", "stream": stream}
    headers = {"x-gateway-model-name-rewrite": "internal-lora-v2"}
    async with http.post(f"{g.url}/v1/completions", json=body, headers=headers) as resp:
        assert resp.status == 200
        raw = await resp.read()
        port = int(resp.headers["x-backend"])
    assert b"internal-lora-v2" not in raw and b'"public"' in raw  # restored in every chunk
    echo = by_port(backends, port).requests[-1]
    assert echo["model"] == "internal-lora-v2"
    assert "x-gateway-model-name-rewrite" not in echo["headers"]  # consumed, not forwarded
    if g.mode in ("BUFFERED", "ON_DEMAND"):
        # the body changed length: Content-Length must match it (Envoy would answer 500 otherwise)
        assert echo["content_length"] == str(echo["received_len"])
    else:
        # full duplex: Envoy forwards the streamed body chunked, whatever length the EPP announces
        assert echo["transfer_encoding"] == "chunked" or echo["content_length"] == str(echo["received_len"])
    if not stream:
        assert json.loads(raw)["model"] == "public"


@pytest.mark.parametrize("gw", GATEWAYS)
async def test_bodyless_get_reaches_a_backend(gw, gateways, backends, http) -> None:
    g = gateways[gw]
    seen = set()
    for _ in range(6):
        async with http.get(f"{g.url}/v1/models") as resp:
            assert resp.status == 200
            seen.add((await resp.json())["backend"])
    assert seen <= {b.port for b in backends} and seen


async def _error(http, url: str, data: bytes | None = None, headers=None, path="/v1/completions"):
    async with http.post(f"{url}{path}", data=data, headers=headers or {}) as resp:
        return resp.status, await resp.text()


@pytest.mark.parametrize("gw", GATEWAYS)
async def test_every_immediate_response_code_as_the_client_sees_it(gw, gateways, http) -> None:
    g = gateways[gw]
    code, text = await _error(http, g.url, b"{not json")
    assert code == 400 and "inference error: BadRequest" in text
    code, text = await _error(http, g.url, b'{"prompt": "no model"}')
    assert code == 400 and "model not found in request body" in text
    code, text = await _error(http, g.url, b'{"model": "m", "messages": []}', path="/v1/chat/completions")
    assert code == 400 and "messages" in text
    code, text = await _error(http, g.url, json.dumps({"model": "m", "prompt": "z" * MAX_BODY}).encode())
    assert code == 413 and "exceeds" in text
    # sheddable while every endpoint is saturated (never scraped = stale = saturated)
    shed = {"x-gateway-inference-objective": "batch"}
    code, text = await _error(http, g.url, b'{"model": "m", "prompt": "p"}', shed)
    assert code == 429 and "system saturated, sheddable request dropped" in text
    code, _ = await _error(
        http, g.url, b'{"model": "m", "prompt": "p"}', {"x-gateway-inference-objective": "critical"}
    )
    assert code == 200
    # no endpoints at all
    saved = g.epp.datastore.snapshot()
    g.epp.datastore.set_endpoints([])
    try:
        code, text = await _error(http, g.url, b'{"model": "m", "prompt": "p"}')
        assert code == 503 and "failed to find endpoint candidates" in text
    finally:
        g.epp.datastore.set_endpoints(saved)
    # an internal failure is a 500 with a body, never a hang
    old = g.epp.holder.current
    g.epp.holder.swap(dataclasses.replace(old, parser=_Boom()))
    try:
        code, text = await _error(http, g.url, b'{"model": "m", "prompt": "p"}')
        assert code == 500 and "inference error: Internal" in text
    finally:
        g.epp.holder.swap(old)


class _Boom:
    typed_name = TypedName("boom", "boom")

    def parse(self, *args):
        raise RuntimeError("boom")


@pytest.mark.parametrize("gw", GATEWAYS)
async def test_client_cancel_mid_stream_completes_hooks_once(gw, gateways, backends, http) -> None:
    g = gateways[gw]
    for b in backends:
        b.release.clear()
        b.disconnected.clear()
    done_before = len(g.epp.hook.infos)
    # usage asked for: where the routing stream takes no body, the observer reads to its end, which is
    # what tells a disconnect from a complete response (Envoy ends the routing stream alike for both)
    body = {
        "model": "cancel-m",
        "stream": True,
        "stream_options": {"include_usage": True},
        "slow": True,
        "messages": [{"role": "user", "content": "x"}],
    }
    resp = await http.post(f"{g.url}/v1/chat/completions", json=body)
    assert resp.status == 200
    first = await resp.content.readuntil(b"\n\n")
    assert first.startswith(b"data: ")
    port = int(resp.headers["x-backend"])
    assert g.epp.sample("inference_objective_running_requests", {"model_name": "cancel-m"}) == 1
    resp.close()  # the client goes away mid-stream
    await until(lambda: len(g.epp.hook.infos) == done_before + 1)
    await until(lambda: g.epp.sample("inference_objective_running_requests", {"model_name": "cancel-m"}) == 0)
    info = g.epp.hook.infos[-1]
    assert not info.complete and info.served_endpoint == f"127.0.0.1:{port}"
    by_port(backends, port).release.set()
    await asyncio.wait_for(by_port(backends, port).disconnected.wait(), 10)
    await asyncio.sleep(0)
    assert len(g.epp.hook.infos) == done_before + 1  # exactly once


async def test_epp_restart_while_envoy_runs(gateways, backends, http) -> None:
    g = gateways["buffered-plain"]
    body = b'{"model": "m", "prompt": "restart"}'
    assert (await _error(http, g.url, body))[0] == 200
    await g.epp.server.stop(0)
    code, _ = await _error(http, g.url, body)
    assert code == 500  # failure_mode_allow: false, the EPP is down
    replacement = await start_epp(backends, None, port=g.epp.port)
    g.epp = replacement

    async def served() -> bool:
        return (await _error(http, g.url, body))[0] == 200

    await until(served, 15, interval=0.1, what="a 200 once the EPP came back (Envoy reconnects on its own)")


async def test_served_endpoint_as_a_route_response_header_is_read_and_stripped(
    gateways, backends, http, tmp_path
) -> None:
    """The other verified mechanism: the route adds `x-gateway-destination-endpoint-served: %UPSTREAM_HOST%`;
    the EPP reads it, hands it to the hooks and removes it from what the client sees."""
    g = gateways["duplex-tls"]
    cfg = EnvoyConfig(ext_proc_port=g.epp.port, ext_proc_tls=True, served_endpoint="header")
    envoy = EnvoyProcess(cfg, tmp_path)
    async with envoy, http.post(f"{envoy.url}/v1/completions", json={"model": "m", "prompt": "x"}) as resp:
        assert resp.status == 200
        echo = (await resp.json())["echo"]
        assert resp.headers["x-conformance-test-served-endpoint"] == f"127.0.0.1:{echo['backend']}"
        assert "x-gateway-destination-endpoint-served" not in resp.headers
