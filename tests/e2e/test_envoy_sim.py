"""Through real Envoy to the vLLM-like simulator, with the built-in default scheduling config."""

from __future__ import annotations

import json

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from epp.builtins import builtin_registry
from epp.config import build_pipeline, load_config
from epp.datalayer.datastore import Datastore
from epp.extproc.server import ExtProcServer
from epp.framework.types import Endpoint
from epp.observability.metrics import EppMetrics
from epp.scheduling.pipeline import PipelineHolder
from epp.tools.proxy import EnvoyConfig, EnvoyProcess
from tests.helpers import until

pytestmark = pytest.mark.envoy


async def test_streaming_chat_through_envoy_to_simulators(tmp_path, start_sim) -> None:
    sims = [await start_sim(model="sim-model", time_scale=0.01, seed=i) for i in range(2)]
    registry = builtin_registry()
    datastore = Datastore()
    datastore.set_endpoints(Endpoint(key=s.address, ip="127.0.0.1", port=s.port) for s in sims)
    datastore.mark_synced()
    metrics = EppMetrics(CollectorRegistry())
    server = ExtProcServer(
        PipelineHolder(build_pipeline(load_config(None, registry=registry), registry)), datastore, metrics
    )
    port = await server.start(0, host="127.0.0.1")
    envoy = EnvoyProcess(EnvoyConfig(ext_proc_port=port, ext_proc_tls=False), tmp_path)
    try:
        await envoy.start()
        body = {
            "model": "sim-model",
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": 5,
            "messages": [{"role": "user", "content": "tell me a story about a gateway"}],
        }
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{envoy.url}/v1/chat/completions", json=body, headers={"x-request-id": "req-e2e-1"}
            ) as resp,
        ):
            assert resp.status == 200, await resp.text()
            text = (await resp.read()).decode()
        events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
        usage = next(e["usage"] for e in events if e.get("usage"))
        labels = {"model_name": "sim-model", "target_model_name": "sim-model"}

        def sample(name: str) -> float | None:
            return metrics.registry.get_sample_value(name, labels)

        # the observer reads the usage off the critical path: it may land just after the client is done
        await until(lambda: sample("inference_objective_output_tokens_count"), 10, what="the usage recorded")
        assert sample("inference_objective_output_tokens_sum") == usage["completion_tokens"]
        assert sample("inference_objective_input_tokens_sum") == usage["prompt_tokens"]
        # nothing but the observer read the response (the routing stream was shown none of it): neither the
        # first byte nor the tokens waited on the EPP
        assert metrics.registry.get_sample_value("epp_response_body_total", {"path": "observer-only"}) == 1
    finally:
        await envoy.stop()
        await server.stop(0)
