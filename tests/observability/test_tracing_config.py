"""`start_tracing`: what `--tracing` and the `OTEL_*` variables select (exporter, sampler with upstream's
defaults, resource), and the request tracer's sampling decision and W3C propagation."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from epp.observability.tracing import OtelTracing, start_tracing
from epp.settings import parse_settings

OTEL_VARS = (
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_SDK_DISABLED",
)
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in OTEL_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def started() -> Iterator[list[OtelTracing]]:
    tracers: list[OtelTracing] = []
    yield tracers
    for t in tracers:
        t.shutdown()


def _start(started: list[OtelTracing], **kw: str) -> OtelTracing:
    tracing = start_tracing(True, version="1.2.3", **kw)
    assert tracing is not None
    started.append(tracing)
    return tracing


def test_the_flag_defaults_to_on_as_upstream_and_false_turns_it_off() -> None:
    assert parse_settings(["--static-endpoints=127.0.0.1:1"], environ={}).tracing is True
    assert parse_settings(["--static-endpoints=127.0.0.1:1", "--tracing=false"], environ={}).tracing is False
    assert start_tracing(False, version="x") is None


def test_no_exporter_configured_means_no_tracer(monkeypatch: pytest.MonkeyPatch) -> None:
    assert start_tracing(True, version="x") is None
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert start_tracing(True, version="x") is None
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert start_tracing(True, version="x") is None


def test_an_otlp_endpoint_alone_selects_otlp_with_upstreams_defaults(
    monkeypatch: pytest.MonkeyPatch, started: list[OtelTracing]
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
    tracing = _start(started)
    sampler = tracing.provider.sampler
    assert isinstance(sampler, ParentBased)
    assert sampler.get_description() == ParentBased(TraceIdRatioBased(0.1)).get_description()
    attrs = tracing.provider.resource.attributes
    assert attrs["service.name"] == "gateway-api-inference-extension/epp"
    assert attrs["service.version"] == "1.2.3"


def test_an_otlp_exporter_that_cannot_load_is_logged_and_skipped(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """What xds-protos' old copy of opentelemetry.proto does to the exporter's import: the daemon says how
    to fix it and exports nothing, instead of failing to start."""
    import sys

    from epp.observability.tracing import _exporters

    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.grpc.trace_exporter", None)
    with caplog.at_level("ERROR"):
        assert _exporters(["otlp", "console"], {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"})[0][
            0
        ] == ("console")
    assert "pip install --force-reinstall --no-deps opentelemetry-proto" in caplog.text


@pytest.mark.parametrize(
    ("sampler", "arg", "description"),
    [
        ("always_on", "", "AlwaysOnSampler"),
        ("parentbased_always_off", "", "ParentBased{root:AlwaysOffSampler"),
        ("traceidratio", "0.5", "TraceIdRatioBased{0.5}"),
        ("parentbased_traceidratio", "", "ParentBased{root:TraceIdRatioBased{0.1}"),
        ("parentbased_traceidratio", "2", "ParentBased{root:TraceIdRatioBased{0.1}"),  # out of range
        ("jaeger_remote", "", "ParentBased{root:TraceIdRatioBased{0.1}"),  # unsupported: upstream's
    ],
)
def test_sampler_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, started: list[OtelTracing], sampler: str, arg: str, description: str
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", sampler)
    if arg:
        monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", arg)
    assert _start(started).provider.sampler.get_description().startswith(description)


def test_service_name_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, started: list[OtelTracing]
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "my-epp")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "k8s.pod.name=epp-0")
    attrs = _start(started, worker="1").provider.resource.attributes
    assert (attrs["service.name"], attrs["k8s.pod.name"], attrs["epp.worker"]) == ("my-epp", "epp-0", "1")


def _memory_tracer(sampler: str) -> tuple[OtelTracing, InMemorySpanExporter]:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    exporter = InMemorySpanExporter()
    processor = SimpleSpanProcessor(exporter)
    provider = TracerProvider(sampler=ParentBased(ALWAYS_OFF) if sampler == "parent" else None)
    provider.add_span_processor(processor)
    return OtelTracing(provider, [processor], "1.2.3"), exporter


def test_request_spans_follow_the_callers_decision_and_propagate_w3c() -> None:
    tracing, exporter = _memory_tracer("parent")
    now = time.monotonic()
    assert tracing.start_request({}, now) is None  # no sampled parent: not traced at all
    assert tracing.start_request({"traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-00"}, now) is None
    span = tracing.start_request({"traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01"}, now - 0.5)
    assert span is not None
    child = span.child("epp.scheduling")
    grandchild = child.child("epp.profile")
    grandchild.set("epp.profile.name", "default")
    grandchild.fail("no endpoints")
    grandchild.end()
    grandchild.end()  # a second end is ignored
    child.end()
    headers = span.propagation_headers()
    span.end()
    spans: dict[str, ReadableSpan] = {s.name: s for s in exporter.get_finished_spans()}
    assert len(exporter.get_finished_spans()) == 3
    root, sched, prof = spans["gateway.request"], spans["epp.scheduling"], spans["epp.profile"]
    assert {f"{s.context.trace_id:032x}" for s in spans.values()} == {TRACE_ID}
    assert root.parent is not None and f"{root.parent.span_id:016x}" == "00f067aa0ba902b7"
    assert sched.parent is not None and sched.parent.span_id == root.context.span_id
    assert prof.parent is not None and prof.parent.span_id == sched.context.span_id
    assert prof.attributes == {"epp.profile.name": "default"} and not prof.status.is_ok
    assert root.start_time is not None and sched.start_time is not None
    assert sched.start_time - root.start_time >= 400_000_000  # started when the headers arrived
    assert headers["traceparent"].startswith(f"00-{TRACE_ID}-{root.context.span_id:016x}-")
    assert prof.instrumentation_scope is not None
    assert prof.instrumentation_scope.name == "gateway-api-inference-extension/epp/extproc"


async def test_the_forwarded_request_carries_the_request_spans_traceparent() -> None:
    """Through the real ext_proc server (the harness's gRPC client plays Envoy): a sampled request is
    forwarded with a `traceparent` naming its `gateway.request` span; an unsampled one gets none."""
    from tests.extproc.harness import (
        BUFFERED,
        DEFAULT_CONFIG,
        Harness,
        endpoint,
        json_body,
        pipeline_from,
        request_body,
        request_headers,
        set_headers,
    )

    tracing, exporter = _memory_tracer("parent")
    body = json_body(model="m", prompt="hi")
    async with Harness(pipeline_from(DEFAULT_CONFIG), [endpoint("10.0.0.1", 8000)]) as h:
        h.server.director.tracer = tracing
        forwarded = []
        for flags in ("01", "00"):
            s = h.stream()
            parent = {"traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-{flags}"}
            await s.send(request_headers(mode=BUFFERED, headers=parent))
            await s.recv()
            await s.send(request_body(body, eos=True))
            (reply,) = await s.recv()
            forwarded.append(set_headers(reply).get("traceparent"))
            await s.close()
            await s.drain()
    (root,) = [sp for sp in exporter.get_finished_spans() if sp.name == "gateway.request"]
    assert forwarded == [f"00-{TRACE_ID}-{root.context.span_id:016x}-01", None]
    assert root.attributes is not None and root.attributes["epp.endpoint"] == "10.0.0.1:8000"
