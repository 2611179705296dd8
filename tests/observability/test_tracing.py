"""`--tracing` end to end: the daemon (`epp.app.App`) in-process behind a real Envoy, a simulator, and a
real OTLP/gRPC receiver (the `opentelemetry.proto` TraceService) on 127.0.0.1.

The sampler is upstream's `parentbased_traceidratio`, with ratio 0: a request is traced only when its
incoming `traceparent` says the caller sampled it. One request carries one, another does not: exactly
one trace arrives, under the caller's trace id and parent span, with the request span and its children
(parse, admission, flow control, scheduling, the profile and each of its plugins). With
`--tracing=false` and the same environment nothing is exported.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as ts
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as tsg

from epp.app import App
from epp.settings import parse_settings
from epp.tools.proxy import EnvoyConfig, EnvoyProcess
from tests.helpers import until

pytestmark = pytest.mark.envoy

MODEL = "sim-model"
CONFIG = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
featureGates: [flowControl]
plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: prefix-cache-scorer
- type: least-queue-filter
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: least-queue-filter
  - pluginRef: queue-scorer
    weight: 2
  - pluginRef: kv-cache-utilization-scorer
    weight: 1
  - pluginRef: prefix-cache-scorer
    weight: 3
  - pluginRef: max-score-picker
"""
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


class Receiver(tsg.TraceServiceServicer):  # type: ignore[misc]
    """An OTLP trace receiver: keeps every span it is sent, with its resource attributes."""

    def __init__(self) -> None:
        self.spans: list[tuple[dict[str, Any], Any]] = []

    async def Export(self, request: ts.ExportTraceServiceRequest, context: Any) -> Any:
        for rs in request.resource_spans:
            resource = {a.key: _value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for span in ss.spans:
                    self.spans.append((resource, span))
        return ts.ExportTraceServiceResponse()


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


def _attrs(span: Any) -> dict[str, Any]:
    return {a.key: _value(a.value) for a in span.attributes}


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, int]]:
    server = grpc.aio.server()
    servicer = Receiver()
    tsg.add_TraceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield servicer, port
    finally:
        await server.stop(0)


async def _run(
    tmp_path: Path, start_sim: Any, monkeypatch: pytest.MonkeyPatch, otlp_port: int, tracing: bool
) -> tuple[list[int], str]:
    """Start sim + EPP + Envoy, send one request with a sampled traceparent and one without, stop all
    (the EPP flushes its spans on stop). Returns the two HTTP statuses and the simulator's address."""
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{otlp_port}")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    sim = await start_sim(model=MODEL, name="sim0", time_scale=0.01)
    settings = parse_settings(
        [
            f"--static-endpoints={sim.address}",
            f"--config-text={CONFIG}",
            "--secure-serving=false",
            "--bind-address=127.0.0.1",
            "--grpc-port=0",
            "--grpc-health-port=0",
            "--metrics-port=0",
            "--workers=1",
            f"--tracing={'true' if tracing else 'false'}",
        ],
        environ={},
    )
    app = App(settings, workers=1)
    await app.start()
    statuses = []
    try:
        envoy = EnvoyProcess(EnvoyConfig(ext_proc_port=app.grpc_port, ext_proc_tls=False), tmp_path)
        await envoy.start()
        try:
            await until(lambda: app.readiness.ready, what="the EPP is ready")
            body = json.dumps({"model": MODEL, "prompt": "trace me", "max_tokens": 2}).encode()
            async with aiohttp.ClientSession() as http:
                for extra in ({"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}, {}):
                    headers = {"content-type": "application/json", **extra}
                    async with http.post(f"{envoy.url}/v1/completions", data=body, headers=headers) as r:
                        await r.read()
                        statuses.append(r.status)
        finally:
            await envoy.stop()
    finally:
        await app.stop()
    return statuses, sim.address


async def test_one_trace_per_sampled_request_with_plugin_spans(
    tmp_path: Path, start_sim: Any, monkeypatch: pytest.MonkeyPatch, receiver: tuple[Receiver, int]
) -> None:
    collected, port = receiver
    statuses, address = await _run(tmp_path, start_sim, monkeypatch, port, tracing=True)
    assert statuses == [200, 200]
    await until(lambda: any(s.name == "gateway.request" for _, s in collected.spans), what="spans exported")
    await asyncio.sleep(0.1)

    trace_ids = {s.trace_id.hex() for _, s in collected.spans}
    assert trace_ids == {TRACE_ID}, "only the request the caller sampled is traced, in the caller's trace"
    by_name: dict[str, list[Any]] = {}
    for _, span in collected.spans:
        by_name.setdefault(span.name, []).append(span)
    (root,) = by_name["gateway.request"]
    assert root.parent_span_id.hex() == PARENT_ID
    assert root.kind == root.SPAN_KIND_SERVER
    resource = collected.spans[0][0]
    assert resource["service.name"] == "gateway-api-inference-extension/epp"
    assert resource["service.version"]
    attrs = _attrs(root)
    assert attrs["gen_ai.request.model"] == MODEL
    assert attrs["http.response.status_code"] == 200
    assert attrs["epp.endpoint"] == address

    def child_of(name: str, parent: Any) -> Any:
        spans = by_name.get(name, [])
        assert len(spans) == 1, (
            f"{name}: {len(spans)} spans; got {sorted((n, len(v)) for n, v in by_name.items())}"
        )
        (span,) = spans
        assert span.parent_span_id == parent.span_id, f"{name} is not a child of {parent.name}"
        assert parent.start_time_unix_nano <= span.start_time_unix_nano <= span.end_time_unix_nano
        return span

    orchestration = child_of("gateway.request_orchestration", root)
    assert _attrs(orchestration)["target_model"] == MODEL
    assert _attrs(orchestration)["request_prio"] == 0
    assert _attrs(child_of("epp.parse", orchestration))["gen_ai.request.model"] == MODEL
    admission = child_of("epp.admission", orchestration)
    flow = _attrs(child_of("epp.flow_control", admission))
    assert flow["epp.flow_control.outcome"] == "Dispatched"
    scheduling = child_of("epp.scheduling", orchestration)
    picks = by_name["epp.pick_profiles"]  # the handler is asked until it names no more profiles
    assert [_attrs(p)["epp.profiles.picked"] for p in picks] == [["default"], []]
    assert all(p.parent_span_id == scheduling.span_id for p in picks)
    child_of("epp.process_results", scheduling)
    profile = child_of("epp.profile", scheduling)
    assert _attrs(profile)["epp.profile.name"] == "default"
    for name in (
        "epp.filter.least-queue-filter",
        "epp.scorer.queue-scorer",
        "epp.scorer.kv-cache-utilization-scorer",
        "epp.scorer.prefix-cache-scorer",
        "epp.picker.max-score-picker",
    ):
        plugin = _attrs(child_of(name, profile))
        assert plugin["epp.plugin.type"] == name.rsplit(".", 1)[1]
    assert _attrs(by_name["epp.picker.max-score-picker"][0])["epp.endpoints.picked"] == [
        attrs["epp.endpoint"]
    ]
    # the data producer the prefix scorer brings (approx prefix cache) and its pre-request hook
    child_of("epp.prepare_data.approx-prefix-cache-producer", orchestration)
    child_of("epp.pre_request.approx-prefix-cache-producer", orchestration)
    assert all(s.status.code != s.status.STATUS_CODE_ERROR for _, s in collected.spans)


async def test_tracing_false_exports_nothing(
    tmp_path: Path, start_sim: Any, monkeypatch: pytest.MonkeyPatch, receiver: tuple[Receiver, int]
) -> None:
    collected, port = receiver
    statuses, _ = await _run(tmp_path, start_sim, monkeypatch, port, tracing=False)
    assert statuses == [200, 200]
    await asyncio.sleep(0.2)
    assert collected.spans == []
