"""OpenTelemetry tracing (`--tracing`): the tracer provider, its exporter and sampler, from `OTEL_*`.

`start_tracing(enabled, version=...)` returns an `OtelTracing` (the request path's `RequestTracer`) or None
when tracing is off: `--tracing=false`, `OTEL_SDK_DISABLED=true`, or no exporter configured. The standard
variables are read, with upstream's defaults where upstream has one:

- `OTEL_TRACES_EXPORTER`: `otlp` (OTLP over gRPC), `console` (stdout, for debugging), `none`; a
  comma-separated list is allowed. Unset: `otlp` when `OTEL_EXPORTER_OTLP_ENDPOINT` or
  `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set, else none (tracing stays off; upstream's default is the
  console).
- `OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT` (default `http://localhost:4317`; `http://` means plaintext),
  `..._HEADERS`, `..._TIMEOUT`, `..._COMPRESSION`, `..._INSECURE`, `..._CERTIFICATE`: read by the exporter.
- `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES`: the resource (default service name
  `gateway-api-inference-extension/epp`, as upstream; `service.version` is the epp version).
- `OTEL_TRACES_SAMPLER` (default `parentbased_traceidratio`, as upstream; also `always_on`, `always_off`,
  `traceidratio`, `parentbased_always_on`, `parentbased_always_off`) and `OTEL_TRACES_SAMPLER_ARG` (the ratio,
  default `0.1` as upstream).
- `OTEL_BSP_*`: the batch span processor (queue size, delay, batch size, export timeout).

The provider is this process's own (never the global one), so the opentelemetry packages are imported only
when tracing is on, and tests can run several daemons in one process. `shutdown()` flushes what is queued.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from epp.scheduling.spans import REQUEST, AttributeValue, Span

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.sampling import Sampler
    from opentelemetry.trace import Tracer

__all__ = [
    "DEFAULT_SAMPLER",
    "DEFAULT_SAMPLER_ARG",
    "DEFAULT_SERVICE_NAME",
    "INSTRUMENTATION_NAME",
    "ChildSpan",
    "OtelTracing",
    "RequestSpan",
    "start_tracing",
]

log = logging.getLogger(__name__)

DEFAULT_SERVICE_NAME = "gateway-api-inference-extension/epp"
#: the tracer (instrumentation scope) name, upstream's for its request span
INSTRUMENTATION_NAME = "gateway-api-inference-extension/epp/extproc"
DEFAULT_SAMPLER = "parentbased_traceidratio"
DEFAULT_SAMPLER_ARG = 0.1
TRACEPARENT = "traceparent"

_RATIO_SAMPLERS = ("traceidratio", "parentbased_traceidratio")
_FIXED_SAMPLERS = ("always_on", "always_off", "parentbased_always_on", "parentbased_always_off")


def _sampler(environ: Mapping[str, str]) -> tuple[Sampler, str]:
    """The sampler `OTEL_TRACES_SAMPLER` / `_ARG` ask for (upstream's defaults), and a description."""
    from opentelemetry.sdk.trace import sampling

    name = environ.get("OTEL_TRACES_SAMPLER", "").strip().lower() or DEFAULT_SAMPLER
    if name not in _RATIO_SAMPLERS and name not in _FIXED_SAMPLERS:
        log.warning(
            "OTEL_TRACES_SAMPLER=%s is not supported; using %s with ratio %g",
            name,
            DEFAULT_SAMPLER,
            DEFAULT_SAMPLER_ARG,
        )
        name = DEFAULT_SAMPLER
    if name in _FIXED_SAMPLERS:
        fixed: dict[str, Sampler] = {
            "always_on": sampling.ALWAYS_ON,
            "always_off": sampling.ALWAYS_OFF,
            "parentbased_always_on": sampling.DEFAULT_ON,
            "parentbased_always_off": sampling.DEFAULT_OFF,
        }
        return fixed[name], name
    ratio = DEFAULT_SAMPLER_ARG
    arg = environ.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
    if arg:
        try:
            ratio = float(arg)
            if not 0.0 <= ratio <= 1.0:
                raise ValueError(arg)
        except ValueError:
            log.warning(
                "OTEL_TRACES_SAMPLER_ARG=%s is not a ratio in [0, 1]; using %g", arg, DEFAULT_SAMPLER_ARG
            )
            ratio = DEFAULT_SAMPLER_ARG
    root = sampling.TraceIdRatioBased(ratio)
    if name == "traceidratio":
        return root, f"traceidratio {ratio:g}"
    return sampling.ParentBased(root), f"parentbased_traceidratio {ratio:g}"


def _exporter_names(environ: Mapping[str, str]) -> list[str]:
    raw = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not raw:
        configured = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        return ["otlp"] if configured else []
    return [n for n in (part.strip() for part in raw.split(",")) if n and n != "none"]


def _exporters(names: list[str], environ: Mapping[str, str]) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for name in names:
        if name == "otlp":
            protocol = (
                environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "grpc"
            )
            if protocol.strip().lower() != "grpc":
                log.warning("OTLP protocol %s is not supported; exporting traces over gRPC", protocol)
            try:
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
            except ImportError as exc:
                # xds-protos ships an old copy of opentelemetry.proto; installed after opentelemetry-proto it
                # replaces the modules the exporter needs
                log.error(
                    "tracing: the OTLP exporter cannot be loaded (%s); no spans are exported. If "
                    "xds-protos was installed after opentelemetry-proto, run: pip install "
                    "--force-reinstall --no-deps opentelemetry-proto==<its version>",
                    exc,
                )
                continue
            endpoint = (
                environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
                or "http://localhost:4317"
            )
            out.append((f"otlp {endpoint}", OTLPSpanExporter(endpoint=endpoint)))
        elif name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            out.append(("console", ConsoleSpanExporter()))
        else:
            log.warning("OTEL_TRACES_EXPORTER: unknown exporter %r ignored (otlp, console, none)", name)
    return out


def start_tracing(enabled: bool, *, version: str, worker: str = "") -> OtelTracing | None:
    """The tracer for `--tracing`, or None when tracing is off (see the module docstring); reads
    `os.environ` (as the SDK's resource, exporter and batch processor do). `worker`: the decision
    process's slot (`--workers`), added to the resource as `epp.worker`; only worker 0 logs the
    outcome (they all read the same environment)."""
    if not enabled:
        return None
    env = os.environ
    say = log.info if worker in ("", "0") else log.debug
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        say("tracing off: OTEL_SDK_DISABLED=true")
        return None
    names = _exporter_names(env)
    if not names:
        say(
            "tracing off: no trace exporter configured (set OTEL_EXPORTER_OTLP_ENDPOINT, or "
            "OTEL_TRACES_EXPORTER=otlp|console; --tracing=false silences this)"
        )
        return None
    from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    exporters = _exporters(names, env)
    if not exporters:
        return None
    sampler, described = _sampler(env)
    resource = Resource.create({SERVICE_VERSION: version})  # OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    if worker:
        resource = resource.merge(Resource({"epp.worker": worker}))
    provider = TracerProvider(sampler=sampler, resource=resource)
    processors = [BatchSpanProcessor(exporter) for _, exporter in exporters]
    for processor in processors:
        provider.add_span_processor(processor)
    say(
        "tracing on: service %s, exporter %s, sampler %s",
        resource.attributes.get(SERVICE_NAME),
        ", ".join(d for d, _ in exporters),
        described,
    )
    return OtelTracing(provider, processors, version)


class OtelTracing:
    """The request path's `RequestTracer` over one OpenTelemetry tracer provider.

    The request span is the SDK's own (its sampler decides, from the incoming trace context). Its
    descendants are recorded by `ChildSpan`, a few slots per span, and handed to the span processors as
    finished `ReadableSpan`s when they end: creating a span through the SDK costs ~15 us of Python, ~4x
    more, and a traced request has a dozen children. They share the request span's sampling decision.
    """

    def __init__(
        self, provider: TracerProvider, processors: Sequence[SpanProcessor], version: str = ""
    ) -> None:
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope
        from opentelemetry.trace import SpanKind
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.provider = provider
        self.tracer: Tracer = provider.get_tracer(INSTRUMENTATION_NAME, version)
        self._propagator = TraceContextTextMapPropagator()
        self._server = SpanKind.SERVER
        self._recorder = _Recorder(
            provider.resource, InstrumentationScope(INSTRUMENTATION_NAME, version or None), tuple(processors)
        )
        self._closed = False

    def start_request(self, headers: Mapping[str, str], received_at: float) -> Span | None:
        """The `gateway.request` span (the incoming W3C trace context as its parent), or None when the
        sampler drops the request: nothing else of the request is traced then."""
        parent = self._propagator.extract(headers) if TRACEPARENT in headers else None
        start_ns = time.time_ns() - int((time.monotonic() - received_at) * 1e9)
        span = self.tracer.start_span(REQUEST, context=parent, kind=self._server, start_time=start_ns)
        if not span.is_recording():
            return None
        return RequestSpan(span, self._recorder, self._propagator)

    def shutdown(self) -> None:
        """Flush the queued spans and stop the exporters (blocking: call it off the event loop)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.provider.shutdown()
        except Exception:
            log.exception("tracing: shutting the tracer provider down failed")


class _Recorder:
    """What every finished child span needs: the resource, the scope, the processors to hand it to."""

    __slots__ = ("processors", "resource", "scope")

    def __init__(self, resource: Any, scope: Any, processors: tuple[SpanProcessor, ...]) -> None:
        self.resource = resource
        self.scope = scope
        self.processors = processors

    def export(self, span: ChildSpan, end_ns: int) -> None:
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.trace import SpanContext

        context = SpanContext(span.parent.trace_id, span.span_id, False, span.parent.trace_flags)
        readable = ReadableSpan(
            name=span.name,
            context=context,
            parent=span.parent,
            resource=self.resource,
            attributes=span.attributes,
            status=span.status,
            start_time=span.start_ns,
            end_time=end_ns,
            instrumentation_scope=self.scope,
        )
        for processor in self.processors:
            try:
                processor.on_end(readable)
            except Exception:
                log.exception("tracing: a span processor failed")


class RequestSpan:
    """`epp.scheduling.spans.Span` over the SDK's span of a sampled request."""

    __slots__ = ("_propagator", "_recorder", "_span")

    def __init__(self, span: Any, recorder: _Recorder, propagator: Any) -> None:
        self._span = span
        self._recorder = recorder
        self._propagator = propagator

    def child(self, name: str) -> Span:
        return ChildSpan(name, self._span.get_span_context(), self._recorder)

    def set(self, key: str, value: AttributeValue) -> None:
        self._span.set_attribute(key, value)

    def fail(self, message: str) -> None:
        from opentelemetry.trace import Status, StatusCode

        self._span.set_status(Status(StatusCode.ERROR, message))

    def end(self) -> None:
        self._span.end()

    def propagation_headers(self) -> Mapping[str, str]:
        from opentelemetry.trace import set_span_in_context

        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, context=set_span_in_context(self._span))
        return carrier


class ChildSpan:
    """A span below the request span: started now, exported when it ends (see `OtelTracing`)."""

    __slots__ = ("_ended", "_recorder", "attributes", "name", "parent", "span_id", "start_ns", "status")

    def __init__(self, name: str, parent: Any, recorder: _Recorder) -> None:
        self.name = name
        self.parent = parent  # the parent's SpanContext
        self._recorder = recorder
        self.span_id = _span_id()
        self.attributes: dict[str, AttributeValue] = {}
        self.status: Any = None
        self._ended = False
        self.start_ns = time.time_ns()

    def child(self, name: str) -> Span:
        from opentelemetry.trace import SpanContext

        context = SpanContext(self.parent.trace_id, self.span_id, False, self.parent.trace_flags)
        return ChildSpan(name, context, self._recorder)

    def set(self, key: str, value: AttributeValue) -> None:
        if not self._ended:
            self.attributes[key] = value

    def fail(self, message: str) -> None:
        from opentelemetry.trace import Status, StatusCode

        self.status = Status(StatusCode.ERROR, message)

    def end(self) -> None:
        if self._ended:
            return
        self._ended = True
        self._recorder.export(self, time.time_ns())

    def propagation_headers(self) -> Mapping[str, str]:
        flags = int(self.parent.trace_flags) & 0x01
        return {TRACEPARENT: f"00-{self.parent.trace_id:032x}-{self.span_id:016x}-{flags:02x}"}


def _span_id() -> int:
    span_id = 0
    while span_id == 0:
        span_id = random.getrandbits(64)
    return span_id
