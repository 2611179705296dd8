"""SLO-aware routing end to end: the daemon (in-process) with the predicted-latency plugins, real Envoy,
two simulated model servers. The model trains on the first streamed requests, predictions are made (the
drift metric counts them), and the SLO headers are honoured: a sheddable request predicted to miss its
TTFT SLO gets a 429 at once, a critical one with the same SLO is served and its violation counted."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from epp.app import App
from epp.settings import parse_settings
from epp.tools.loadgen.gateway import ANY_PORTS, epp_flags
from epp.tools.proxy import EnvoyConfig, EnvoyProcess
from epp.tools.sim.metrics import MetricsOverride
from tests.helpers import until

pytestmark = pytest.mark.envoy

CONFIG = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: predicted-latency-producer
  parameters:
    streamingMode: true
    minSamples: 8
    retrainInterval: 50ms
- type: slo-headroom-tier-filter
- type: latency-scorer
- type: weighted-random-picker
- type: latency-slo-admitter
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: slo-headroom-tier-filter
  - pluginRef: latency-scorer
  - pluginRef: weighted-random-picker
"""


async def _complete(
    http: aiohttp.ClientSession, url: str, i: int, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    body = {
        "model": "sim",
        "prompt": f"request {i}: " + "tell me about latency " * (5 + i % 20),
        "max_tokens": 4,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with http.post(f"{url}/v1/completions", json=body, headers=headers or {}) as resp:
        return resp.status, await resp.read()


async def test_predictions_are_made_and_slo_headers_honoured(tmp_path: Path, start_sim) -> None:
    sims = [await start_sim(model="sim", name=f"s{i}", time_scale=0.05, seed=i) for i in range(2)]
    for sim in sims:  # busy and warm, so the admitter cannot wave a request through as idle or cold
        sim.set_metrics_override(MetricsOverride(running=3, kv=0.5))
    (tmp_path / "config.yaml").write_text(CONFIG)
    settings = parse_settings(
        [
            *epp_flags([s.address for s in sims], config_file=tmp_path / "config.yaml", secure_serving=False),
            *ANY_PORTS,
            "--static-objectives=batch=-1",
        ],
        environ={},
    )
    app = App(settings)
    await app.start()
    envoy = EnvoyProcess(EnvoyConfig(ext_proc_port=app.grpc_port, ext_proc_tls=False), tmp_path)
    await envoy.start()
    registry = app.metrics.registry

    def sample(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, labels) or 0.0

    try:
        async with aiohttp.ClientSession() as http:
            i = 0

            async def predicted() -> bool:
                nonlocal i
                i += 1
                status, _ = await _complete(http, envoy.url, i)
                assert status == 200
                return sample("epp_latency_prediction_error_ratio_count", type="ttft") >= 3

            await until(predicted, 10, interval=0.0, what="predictions for completed requests")
            m = {"model_name": "sim", "target_model_name": "sim"}
            assert sample("inference_objective_request_predicted_ttft_seconds_count", **m) > 0
            assert sample("inference_objective_request_tpot_seconds_count", **m) > 0
            assert sample("inference_objective_request_ttft_prediction_duration_seconds_count", **m) > 0

            impossible = {"x-slo-ttft-ms": "0.001", "x-slo-tpot-ms": "0.001"}
            shed = {**impossible, "x-gateway-inference-objective": "batch"}
            status, body = await _complete(http, envoy.url, 1000, shed)
            assert status == 429 and b"latency SLO" in body, body
            await until(
                lambda: sample(
                    "inference_objective_request_error_total", error_code="ResourceExhausted", **m
                ),
                5,
                what="the refusal counted",
            )

            status, _ = await _complete(http, envoy.url, 1001, impossible)  # priority 0: critical
            assert status == 200
            await until(
                lambda: sample("inference_objective_request_slo_violation_total", type="ttft", **m) >= 1,
                5,
                what="the TTFT SLO violation counted",
            )
            generous = {
                "x-slo-ttft-ms": "60000",
                "x-slo-tpot-ms": "60000",
                "x-gateway-inference-objective": "batch",
            }
            status, _ = await _complete(http, envoy.url, 1002, generous)
            assert status == 200
    finally:
        await envoy.stop()
        await app.stop()
