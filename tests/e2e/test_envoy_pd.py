"""P/D through real Envoy: the EPP (profiles/pd.yaml) picks a decode simulator and, for a long prompt, a
prefill simulator; the decode server gets `x-prefiller-host-port`, has the prefill server prefill, pulls the
KV and reports the prompt cached. A short prompt stays on the decode server, and a client's own copy of the
header never reaches it."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from epp.builtins import builtin_registry
from epp.config import build_pipeline, load_config_file
from epp.datalayer.datastore import Datastore
from epp.extproc.server import ExtProcServer
from epp.framework.types import Endpoint
from epp.observability.metrics import EppMetrics
from epp.scheduling.pipeline import PipelineHolder
from epp.tools.proxy import EnvoyConfig, EnvoyProcess

pytestmark = pytest.mark.envoy

PD_PROFILE = Path(__file__).resolve().parents[2] / "profiles" / "pd.yaml"
LONG = "Summarise the following report in one line. " + "The gateway routed the request. " * 120


async def test_pd_request_goes_prefill_then_decode_through_envoy(tmp_path, start_sim) -> None:
    prefill = await start_sim(model="m", time_scale=0.01, role="prefill", name="prefill")
    decode = await start_sim(model="m", time_scale=0.01, role="decode", name="decode")
    registry = builtin_registry()
    datastore = Datastore()
    datastore.set_endpoints(
        Endpoint(key=s.address, ip="127.0.0.1", port=s.port, labels={"llm-d.ai/role": role})
        for s, role in ((prefill, "prefill"), (decode, "decode"))
    )
    datastore.mark_synced()
    config = load_config_file(PD_PROFILE, registry=registry, environ={})
    server = ExtProcServer(
        PipelineHolder(build_pipeline(config, registry)), datastore, EppMetrics(CollectorRegistry())
    )
    port = await server.start(0, host="127.0.0.1")
    envoy = EnvoyProcess(EnvoyConfig(ext_proc_port=port, ext_proc_tls=False), tmp_path)

    async def complete(http: aiohttp.ClientSession, prompt: str, **headers: str) -> dict:
        body = {"model": "m", "prompt": prompt, "max_tokens": 4}
        async with http.post(f"{envoy.url}/v1/completions", json=body, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            assert resp.headers["x-sim-server"] == "decode"
            return await resp.json()

    try:
        await envoy.start()
        async with aiohttp.ClientSession() as http:
            reply = await complete(http, LONG)
            usage = reply["usage"]
            assert usage["prompt_tokens"] > 900
            cached = usage["prompt_tokens_details"]["cached_tokens"]
            assert cached == (usage["prompt_tokens"] - 1) // 16 * 16  # the whole prompt but its last token
            d, p = decode.stats(), prefill.stats()
            assert d["kv_transfers"] == 1 and d["kv_transfer_blocks"] == cached // 16
            assert d["prefix_cache_hits"] == cached
            assert p["remote_prefill_requests"] == 1 and p["requests_received"] == 1

            # short prompt: decode only; the client's header is removed before the decode server
            short = await complete(http, "hello there", **{"x-prefiller-host-port": "127.0.0.1:9"})
            assert short["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
            d = decode.stats()
            assert d["kv_transfers"] == 1 and d["kv_transfer_failures"] == 0
            assert prefill.stats()["requests_received"] == 1
    finally:
        await envoy.stop()
        await server.stop(0)
