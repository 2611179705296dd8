"""Tracing spans as the engine and the request path see them, without depending on a tracing library.

`Span` is the small contract the scheduler, the director and flow control write to; the OpenTelemetry
implementation lives in `epp.observability.tracing` (the scheduling layer never imports opentelemetry).
A request is traced or not, decided once when its span would start (`RequestTracer.start_request`
returns None when tracing is off or the request is not sampled): every later step only checks
`span is not None`, so an untraced request creates no span objects at all.

The traced plugin wrappers below open one child span per plugin call. The profile swaps them in for its
own plugins only when it runs with a span, so the untraced hot loop is the same code as without tracing.

Span names (documented in docs/observability.md): upstream's `gateway.request` (the ext_proc request) and
`gateway.request_orchestration` (the director), then ours, `epp.*`; a plugin's span is named after its
extension point and type, e.g. `epp.scorer.queue-scorer`, with the configured name as an attribute.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from epp.framework.cycle import CycleState
from epp.framework.plugins import Filter, Picker, ProfileHandler, Scorer, ScorerCategory
from epp.framework.types import (
    Endpoint,
    InferenceRequest,
    ProfileRunResult,
    SchedulingResult,
    ScoredEndpoint,
    TypedName,
)

__all__ = [
    "ADMISSION",
    "ATTR_CANDIDATES",
    "ATTR_ENDPOINT",
    "ATTR_ERROR_CODE",
    "ATTR_PICKED",
    "ATTR_PLUGIN_NAME",
    "ATTR_PLUGIN_TYPE",
    "ATTR_PROFILE",
    "FLOW_CONTROL",
    "ORCHESTRATION",
    "PARSE",
    "PICK_PROFILES",
    "PROCESS_RESULTS",
    "PROFILE",
    "REQUEST",
    "SCHEDULING",
    "AttributeValue",
    "RequestTracer",
    "Span",
    "TracedFilter",
    "TracedPicker",
    "TracedProfileHandler",
    "TracedScorer",
    "plugin_span",
]

AttributeValue = str | bool | int | float | Sequence[str] | Sequence[int] | Sequence[float]

# ---- span names ------------------------------------------------------------------------------------
#: the ext_proc request, from its headers to the end of its stream (upstream's name; a SERVER span)
REQUEST = "gateway.request"
#: the director: parse to pre-request hooks (upstream's name)
ORCHESTRATION = "gateway.request_orchestration"
PARSE = "epp.parse"
ADMISSION = "epp.admission"
FLOW_CONTROL = "epp.flow_control"
SCHEDULING = "epp.scheduling"
PICK_PROFILES = "epp.pick_profiles"
PROFILE = "epp.profile"
PROCESS_RESULTS = "epp.process_results"

# ---- attribute keys shared by several spans --------------------------------------------------------
ATTR_PLUGIN_TYPE = "epp.plugin.type"
ATTR_PLUGIN_NAME = "epp.plugin.name"
ATTR_PROFILE = "epp.profile.name"
ATTR_CANDIDATES = "epp.endpoints.candidates"
ATTR_PICKED = "epp.endpoints.picked"
ATTR_ENDPOINT = "epp.endpoint"
ATTR_ERROR_CODE = "epp.error_code"


class Span(Protocol):
    """One started span. `end` must be called exactly once; nothing may be recorded after it."""

    def child(self, name: str) -> Span:
        """A span started now, as a child of this one."""
        ...

    def set(self, key: str, value: AttributeValue) -> None: ...

    def fail(self, message: str) -> None:
        """Mark the span as failed (status ERROR), with a short description."""
        ...

    def end(self) -> None: ...

    def propagation_headers(self) -> Mapping[str, str]:
        """The W3C trace-context headers (`traceparent`, ...) that make this span the parent of the
        model server's work, for the forwarded request."""
        ...


class RequestTracer(Protocol):
    def start_request(self, headers: Mapping[str, str], received_at: float) -> Span | None:
        """The request's span (`REQUEST`), a child of the trace context in `headers` if any, started at
        `received_at` (time.monotonic()); None when the request is not sampled."""
        ...


def plugin_span(parent: Span, point: str, typed_name: TypedName) -> Span:
    """A child span for one plugin call: `epp.<point>.<type>`, with the plugin's type and name."""
    span = parent.child(f"epp.{point}.{typed_name.type}")
    span.set(ATTR_PLUGIN_TYPE, typed_name.type)
    span.set(ATTR_PLUGIN_NAME, typed_name.name)
    return span


def _keys(endpoints: Sequence[Endpoint]) -> list[str]:
    return [e.key for e in endpoints]


class TracedFilter:
    """A filter whose every call is a child span of `parent` (endpoints in and out)."""

    __slots__ = ("_parent", "inner")

    def __init__(self, inner: Filter, parent: Span) -> None:
        self.inner = inner
        self._parent = parent

    @property
    def typed_name(self) -> TypedName:
        return self.inner.typed_name

    def filter(
        self, cycle: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Sequence[Endpoint]:
        span = plugin_span(self._parent, "filter", self.inner.typed_name)
        span.set("epp.endpoints.in", len(endpoints))
        try:
            kept = self.inner.filter(cycle, request, endpoints)
            span.set("epp.endpoints.out", len(kept))
            return kept
        except BaseException as exc:
            span.fail(repr(exc))
            raise
        finally:
            span.end()


class TracedScorer:
    """A scorer whose every call is a child span of `parent` (how many scored, best and worst score)."""

    __slots__ = ("_parent", "inner")

    def __init__(self, inner: Scorer, parent: Span) -> None:
        self.inner = inner
        self._parent = parent

    @property
    def typed_name(self) -> TypedName:
        return self.inner.typed_name

    @property
    def category(self) -> ScorerCategory:
        return self.inner.category

    def score(
        self, cycle: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Mapping[str, float]:
        span = plugin_span(self._parent, "scorer", self.inner.typed_name)
        try:
            scores = self.inner.score(cycle, request, endpoints)
            span.set("epp.endpoints.scored", len(scores))
            if scores:
                values = [float(v) for v in scores.values()]
                span.set("epp.score.max", max(values))
                span.set("epp.score.min", min(values))
            return scores
        except BaseException as exc:
            span.fail(repr(exc))
            raise
        finally:
            span.end()


class TracedPicker:
    """A picker whose every call is a child span of `parent` (the endpoints it picked)."""

    __slots__ = ("_parent", "inner")

    def __init__(self, inner: Picker, parent: Span) -> None:
        self.inner = inner
        self._parent = parent

    @property
    def typed_name(self) -> TypedName:
        return self.inner.typed_name

    def pick(
        self, cycle: CycleState, request: InferenceRequest, scored: Sequence[ScoredEndpoint]
    ) -> ProfileRunResult:
        span = plugin_span(self._parent, "picker", self.inner.typed_name)
        span.set("epp.endpoints.scored", len(scored))
        try:
            result = self.inner.pick(cycle, request, scored)
            span.set(ATTR_PICKED, _keys(result.targets))
            return result
        except BaseException as exc:
            span.fail(repr(exc))
            raise
        finally:
            span.end()


class TracedProfileHandler:
    """A profile handler whose calls are child spans of the scheduling span: `epp.pick_profiles` (the
    profiles it chose) and `epp.process_results` (the primary profile)."""

    __slots__ = ("_parent", "inner")

    def __init__(self, inner: ProfileHandler, parent: Span) -> None:
        self.inner = inner
        self._parent = parent

    @property
    def typed_name(self) -> TypedName:
        return self.inner.typed_name

    def _span(self, name: str) -> Span:
        span = self._parent.child(name)
        span.set(ATTR_PLUGIN_TYPE, self.inner.typed_name.type)
        span.set(ATTR_PLUGIN_NAME, self.inner.typed_name.name)
        return span

    def pick_profiles(
        self,
        cycle: CycleState,
        request: InferenceRequest,
        profiles: Sequence[str],
        results: Mapping[str, ProfileRunResult | None],
    ) -> Sequence[str]:
        span = self._span(PICK_PROFILES)
        try:
            names = self.inner.pick_profiles(cycle, request, profiles, results)
            span.set("epp.profiles.picked", list(names))
            return names
        except BaseException as exc:
            span.fail(repr(exc))
            raise
        finally:
            span.end()

    def process_results(
        self,
        cycle: CycleState,
        request: InferenceRequest,
        results: Mapping[str, ProfileRunResult | None],
    ) -> SchedulingResult:
        span = self._span(PROCESS_RESULTS)
        try:
            outcome = self.inner.process_results(cycle, request, results)
            span.set("epp.profile.primary", outcome.primary_profile)
            return outcome
        except BaseException as exc:
            span.fail(getattr(exc, "message", "") or repr(exc))
            raise
        finally:
            span.end()
