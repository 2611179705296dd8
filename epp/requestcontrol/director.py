"""The director: everything between the wire and the scheduler, and the response hooks.

Request path (`handle_request`, upstream `director.go` order with two fixes):
parse (pipeline parser; 400 on a bad body) → model rewrite (header, then InferenceModelRewrite rules, the
body re-serialised only when the model changed) → objective priority → candidates (datastore fit
endpoints narrowed by the subset hint; 503 when none) → admission (may wait; candidates re-read if the
fleet changed meanwhile) → data producers → admitter plugins → `Scheduler.schedule` → pre-request hooks.

Response path: `response_received` and `response_complete` run each hook list exactly once per scheduled
request; `finish` (always called when the stream ends, also on disconnect) forces `response_complete` if the
response never completed and records the per-request metrics once.

Plugin hooks run synchronously, are timed into the plugin-duration metric and never break the request: an
exception is logged and the next hook runs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from epp.datalayer.datastore import Datastore
from epp.errors import ErrorCode, RequestError, SchedulingError, http_status
from epp.framework.plugins import RequestParser
from epp.framework.types import Endpoint, InferenceRequest
from epp.logs import TRACE, VERBOSE, bind_request
from epp.metadata import (
    CONTENT_LENGTH,
    DECISION_HEADER,
    FAIRNESS_ID_HEADER,
    FORWARDED_PATH_HEADER,
    MODEL_REWRITE_HEADER,
    OBJECTIVE_HEADER,
    ORIGINAL_PATH_HEADER,
    PATH_HEADER,
)
from epp.observability.decision import ScoreTable
from epp.observability.metrics import EppMetrics
from epp.requestcontrol.admission import Admission, LegacyAdmission
from epp.requestcontrol.candidates import subset_filter
from epp.requestcontrol.context import RequestContext, RequestOptions
from epp.requestcontrol.meter import RequestMeter
from epp.requestcontrol.rewrite import RewriteIndex
from epp.scheduling.pipeline import Pipeline
from epp.scheduling.spans import (
    ADMISSION,
    ATTR_CANDIDATES,
    ATTR_ENDPOINT,
    ATTR_ERROR_CODE,
    ORCHESTRATION,
    PARSE,
    SCHEDULING,
    RequestTracer,
    Span,
    plugin_span,
)
from epp.scheduling.trace import DecisionTrace

__all__ = ["DEFAULT_PATH", "Director", "reserialize"]

log = logging.getLogger(__name__)

_perf = time.perf_counter

DEFAULT_PATH = "/v1/completions"
DEFAULT_FAIRNESS_ID = "default-flow"
NO_CANDIDATES = "failed to find endpoint candidates for serving the request"


def reserialize(body: Mapping[str, Any], model: str) -> bytes:
    """The JSON body with `model` replaced (compact separators; non-ASCII kept as UTF-8 when possible)."""
    out = dict(body)
    out["model"] = model
    try:
        return json.dumps(out, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates from \\ud800-style escapes: keep them escaped
        return json.dumps(out, separators=(",", ":")).encode("ascii")


_set = object.__setattr__


def _complete_request(req: InferenceRequest, **fields: Any) -> None:
    """Fill in what the director decides on the parser's fresh, not yet shared InferenceRequest.

    `dataclasses.replace` on the 17-field frozen dataclass costs several microseconds per request; writing
    the few differing fields of an object no one else holds yet is equivalent and ~10x cheaper.
    """
    for name, value in fields.items():
        if getattr(req, name) != value:
            _set(req, name, value)


def request_path(headers: Mapping[str, str]) -> str:
    """The API path: `:path`, else `x-original-path`, else `x-forwarded-path`, without a query string."""
    path = headers.get(PATH_HEADER) or headers.get(ORIGINAL_PATH_HEADER) or headers.get(FORWARDED_PATH_HEADER)
    if not path:
        return DEFAULT_PATH
    q = path.find("?")
    return path[:q] if q >= 0 else path


class Director:
    def __init__(
        self,
        datastore: Datastore,
        metrics: EppMetrics,
        options: RequestOptions | None = None,
        admission: Admission | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        tracer: RequestTracer | None = None,
    ) -> None:
        self.datastore = datastore
        self.metrics = metrics
        self.meter = RequestMeter(metrics)
        self.options = options or RequestOptions()
        self.admission: Admission = admission or LegacyAdmission(clock)
        self.rng = rng or random.Random()
        self.clock = clock
        #: `--tracing`: starts each request's span (None: tracing off)
        self.tracer = tracer
        self._rewrites = RewriteIndex()
        # (datastore version, computed at, oldest fit scrape, fit endpoints): see `_fit_endpoints`
        self._fit_cache: tuple[int, float, float, tuple[Endpoint, ...]] | None = None
        # an admission that tracks in-flight work (flow control) is told when a scheduled request ends
        finished = getattr(self.admission, "request_finished", None)
        self._admission_finished: Callable[[], None] | None = finished if callable(finished) else None
        #: called after anything that may have changed plugin state other processes share (a request
        #: scheduled, a first byte, a completion); set by a worker's state bus
        self.on_state_change: Callable[[], None] | None = None

    # ---- candidates ---------------------------------------------------------------------------------

    def _fit_endpoints(self) -> tuple[Endpoint, ...]:
        """`datastore.candidates(staleness)`, reused while it cannot have changed.

        Filtering every endpoint by health and metrics age costs ~10 µs per request at 64 endpoints. The
        answer only changes when the datastore changes (its version) or when time makes a fit endpoint
        stale, so it is kept until one of those: `now - oldest scrape among the fit ones <= staleness` is
        the datastore's own test for the oldest, hence for all of them.
        """
        datastore = self.datastore
        now = datastore.clock()
        cached = self._fit_cache
        if (
            cached is not None
            and cached[0] == datastore.version
            and cached[1] <= now
            and now - cached[2] <= self.options.metrics_staleness
        ):
            return cached[3]
        staleness = self.options.metrics_staleness
        found = datastore.candidates(staleness, now)
        if not found or found is datastore.snapshot():
            # fail-open (every endpoint, none fit) or empty: only a datastore change alters the answer
            oldest = math.inf
        else:  # the fit endpoints (expiring early would only cost a recomputation)
            oldest = min([e.metrics.update_time for e in found])
        self._fit_cache = (datastore.version, now, oldest, found)
        return found

    def candidates(self, ctx: RequestContext) -> tuple[Endpoint, ...]:
        """Fit endpoints narrowed by the subset hint; raises 503 when none is left."""
        found = self._fit_endpoints()
        hint = ctx.subset_hint
        if hint is not None and not self.options.disable_endpoint_subset_filter:
            found = subset_filter(found, hint)
        if not found:
            raise RequestError(ErrorCode.SERVICE_UNAVAILABLE, NO_CANDIDATES)
        return found

    def pick_any(self, ctx: RequestContext) -> str:
        """A bodyless request (e.g. GET /v1/models): any candidate endpoint, chosen at random."""
        found = self.candidates(ctx)
        ctx.destination = (
            found[self.rng.randrange(len(found))].address if len(found) > 1 else found[0].address
        )
        return ctx.destination

    # ---- request ------------------------------------------------------------------------------------

    async def handle_request(self, ctx: RequestContext, body: bytes) -> bytes:
        """Schedule the request; returns the body to forward (the same object when unchanged).

        With `--tracing`, whether the request is traced is decided here, once: a sampled request gets its
        `gateway.request` span (`ctx.span`, ended by `finish`) and the orchestration span with a child per
        step; an unsampled one costs the sampler's decision and nothing after it.
        """
        span = None
        if self.tracer is not None:
            span = ctx.span = self.tracer.start_request(ctx.headers, ctx.received_at)
        if span is None:
            return await self._handle_request(ctx, body, None)
        ospan = span.child(ORCHESTRATION)
        try:
            out = await self._handle_request(ctx, body, ospan)
        except RequestError as exc:
            ospan.fail(exc.message)
            raise
        except asyncio.CancelledError:
            ospan.fail("cancelled (the client went away)")
            raise
        except Exception as exc:
            ospan.fail(repr(exc))
            raise
        finally:
            if ctx.request is not None:  # upstream's two attributes
                ospan.set("target_model", ctx.target_model)
                ospan.set("request_prio", ctx.request.priority)
            ospan.end()
        result = ctx.result
        if result is not None:
            # the forwarded request carries this request's trace context: the model server's own spans
            # (e.g. vLLM's) become children of `gateway.request`
            for name, value in span.propagation_headers().items():
                result.request_headers.setdefault(name, value)
        return out

    # Long on purpose: the per-request hot path measured in docs/benchmarks.md; helpers would add calls.
    async def _handle_request(self, ctx: RequestContext, body: bytes, ospan: Span | None) -> bytes:
        pipeline = ctx.pipeline
        headers = ctx.headers
        ctx.path = path = request_path(headers)
        req = (
            pipeline.parser.parse(ctx.request_id, path, headers, body)
            if ospan is None
            else _parse_traced(ospan, pipeline.parser, ctx.request_id, path, headers, body)
        )
        model = req.model
        parsed = req.body
        if not model and parsed:
            # JSON payloads must name a model (a non-JSON parser may legitimately have none)
            raise RequestError(ErrorCode.BAD_REQUEST, "model not found in request body")
        if not model.isascii():
            _check_utf8_model(model)
        ctx.model = model
        bind_request(ctx.request_id, model)

        datastore = self.datastore
        target = self._target_model(model, headers.get(MODEL_REWRITE_HEADER))
        out = reserialize(parsed, target) if target != model and parsed else body
        ctx.target_model = target

        objective = headers.get(OBJECTIVE_HEADER, "")
        priority = datastore.objectives.get(objective, 0) if objective else 0
        _complete_request(
            req,
            request_id=ctx.request_id,
            target_model=target,
            objective=objective,
            priority=priority,
            fairness_id=headers.get(FAIRNESS_ID_HEADER) or DEFAULT_FAIRNESS_ID,
            size_bytes=len(body),
            received_at=ctx.received_at,
        )
        ctx.request = req

        candidates = self.candidates(ctx)
        version = datastore.version
        await (
            self.admission.admit(req, candidates, pipeline)
            if ospan is None
            else self._admit_traced(ospan, req, candidates, pipeline)
        )
        if datastore.version != version:
            candidates = self.candidates(ctx)

        cycle = ctx.cycle
        metrics = self.metrics
        self._prepare(ctx, req, candidates, ospan)

        want_header = self.options.decision_header and DECISION_HEADER in headers
        trace = DecisionTrace() if want_header or log.isEnabledFor(logging.DEBUG) else None
        sspan = None if ospan is None else ospan.child(SCHEDULING)
        try:
            result = pipeline.scheduler.schedule(req, candidates, cycle, trace, sspan)
        except SchedulingError as exc:
            self.meter.schedule_failed(target)
            if trace is not None:
                log.debug("scheduling failed: %s", trace.compact())
            if sspan is not None:
                sspan.fail(exc.message)
            raise
        finally:
            if sspan is not None:
                sspan.end()
        targets = result.targets
        self.meter.scheduled(target, targets[0])
        ctx.result = result
        ctx.destination = targets[0].address if len(targets) == 1 else ",".join(e.address for e in targets)
        if trace is not None:
            ctx.trace = trace
            compact = trace.compact()
            if want_header:
                ctx.response.set_headers[DECISION_HEADER] = compact
            log.debug("scheduled to %s: %s", ctx.destination, compact)
            if log.isEnabledFor(TRACE):
                log.log(
                    TRACE,
                    "decision table:\n%s",
                    ScoreTable(trace),
                    extra={"fields": {"decision": trace.as_dict()}},
                )

        for hook in pipeline.pre_request:
            hspan = None if ospan is None else plugin_span(ospan, "pre_request", hook.typed_name)
            t0 = _perf()
            try:
                hook.pre_request(cycle, req, result)
            except Exception as exc:
                log.exception("pre-request hook %s failed", hook.typed_name)
                if hspan is not None:
                    hspan.fail(repr(exc))
            finally:
                metrics.plugin_duration("PreRequest", hook.typed_name, _perf() - t0)
                if hspan is not None:
                    hspan.end()

        self.meter.request(model, target, priority, len(out))  # bytes forwarded, as upstream
        self.meter.running_inc(model)
        ctx.running = True
        if self.on_state_change is not None:
            self.on_state_change()
        return out

    def _target_model(self, model: str, header_target: str | None) -> str:
        """The header override, then an InferenceModelRewrite rule (counted when it applies)."""
        target = header_target or model
        rules = self.datastore.rewrite_rules
        if rules:
            decision = self._rewrites.decide(model, target, rules, self.rng)
            target = decision.target
            if decision.rule:
                self.meter.model_rewrite(decision.rule, model, target)
        return target

    def _prepare(
        self, ctx: RequestContext, req: InferenceRequest, candidates: Sequence[Endpoint], span: Span | None
    ) -> None:
        """Data producers, then admitter plugins (a denial is a 429); a child span each when traced."""
        cycle = ctx.cycle
        metrics = self.metrics
        for producer in ctx.pipeline.producers:
            pspan = None if span is None else plugin_span(span, "prepare_data", producer.typed_name)
            t0 = _perf()
            try:
                producer.prepare_data(cycle, req, candidates)
            except Exception as exc:
                log.exception("data producer %s failed", producer.typed_name)
                if pspan is not None:
                    pspan.fail(repr(exc))
            finally:
                metrics.plugin_duration("PrepareData", producer.typed_name, _perf() - t0)
                if pspan is not None:
                    pspan.end()
        for admitter in ctx.pipeline.admitters:
            aspan = None if span is None else plugin_span(span, "admit_request", admitter.typed_name)
            t0 = _perf()
            try:
                reason = admitter.admit(cycle, req, candidates)
            except Exception as exc:
                log.exception("admitter %s failed", admitter.typed_name)
                reason = f"admitter '{admitter.typed_name.name}' failed: {exc!r}"
            finally:
                metrics.plugin_duration("AdmitRequest", admitter.typed_name, _perf() - t0)
            if aspan is not None:
                if reason is not None:
                    aspan.fail(reason)
                aspan.end()
            if reason is not None:
                raise RequestError(ErrorCode.RESOURCE_EXHAUSTED, f"request cannot be admitted: {reason}")

    async def _admit_traced(
        self, span: Span, req: InferenceRequest, candidates: Sequence[Endpoint], pipeline: Pipeline
    ) -> None:
        """`admission.admit` in an `epp.admission` span (flow control adds its own child)."""
        aspan = span.child(ADMISSION)
        aspan.set(ATTR_CANDIDATES, len(candidates))
        aspan.set("epp.priority", req.priority)
        try:
            await self.admission.admit(req, candidates, pipeline, span=aspan)
        except RequestError as exc:
            aspan.set(ATTR_ERROR_CODE, exc.code.value)
            aspan.fail(exc.message)
            raise
        except asyncio.CancelledError:
            aspan.fail("cancelled (the client went away)")
            raise
        finally:
            aspan.end()

    # ---- response -----------------------------------------------------------------------------------

    def response_received(self, ctx: RequestContext) -> None:
        """Run the ResponseReceived hooks once (scheduled requests only)."""
        result = ctx.result
        if result is None or ctx.received_hooks_done or ctx.request is None:
            return
        ctx.received_hooks_done = True
        self._run_response_hooks(ctx, "ResponseReceived", ctx.pipeline.response_received, True)

    def response_complete(self, ctx: RequestContext) -> None:
        """Run the ResponseComplete hooks once (scheduled requests only); a response that really completed
        (not a disconnect) is also metered here, before its last reply reaches the proxy. Its usage
        metrics wait while an observer stream is still reading the body (`settle_usage`)."""
        if ctx.result is None or ctx.complete_hooks_done or ctx.request is None:
            return
        ctx.complete_hooks_done = True
        self._run_response_hooks(ctx, "ResponseComplete", ctx.pipeline.response_complete, False)
        if self.on_state_change is not None:
            self.on_state_change()
        info = ctx.response
        if info.complete:
            self.meter.completed(
                ctx.model,
                ctx.target_model,
                duration=max(0.0, ctx.completed_at - ctx.received_at),
                ttft=info.first_byte_at - ctx.received_at if info.streaming and info.first_byte_at else 0.0,
            )
            if not ctx.usage_pending:
                self._record_usage(ctx)

    def first_byte(self, ctx: RequestContext) -> None:
        """The response's first body byte was just stamped (`ResponseInfo.first_byte_at`)."""
        if self.on_state_change is not None and ctx.pipeline.reads_first_byte:
            self.on_state_change()

    def settle_usage(self, ctx: RequestContext) -> None:
        """An observer stream finished reading the body: record its usage now if the response already
        completed (else `response_complete` will)."""
        ctx.usage_pending = False
        if ctx.complete_hooks_done and ctx.response.complete:
            self._record_usage(ctx)

    def _record_usage(self, ctx: RequestContext) -> None:
        if ctx.usage_recorded:
            return
        ctx.usage_recorded = True
        info = ctx.response
        size: int | None = info.body_bytes if ctx.body_seen else _content_length(info.headers)
        self.meter.usage(
            ctx.model,
            ctx.target_model,
            duration=max(0.0, ctx.completed_at - ctx.received_at),
            response_bytes=size,
            prompt_tokens=info.prompt_tokens,
            completion_tokens=info.completion_tokens,
            cached_tokens=info.cached_tokens,
        )

    def _run_response_hooks(
        self, ctx: RequestContext, point: str, hooks: Sequence[Any], received: bool
    ) -> None:
        req = ctx.request
        result = ctx.result
        assert req is not None and result is not None
        cycle = ctx.cycle
        info = ctx.response
        metrics = self.metrics
        for hook in hooks:
            t0 = _perf()
            try:
                if received:
                    hook.response_received(cycle, req, info, result)
                else:
                    hook.response_complete(cycle, req, info, result)
            except Exception:
                log.exception("%s hook %s failed", point, hook.typed_name)
            finally:
                metrics.plugin_duration(point, hook.typed_name, _perf() - t0)

    def finish(self, ctx: RequestContext) -> None:
        """The stream ended (normally, by error or by disconnect): hooks and metrics, exactly once."""
        if ctx.finished:
            return
        ctx.finished = True
        try:
            self.response_complete(ctx)
        finally:
            if ctx.span is not None:
                _end_request_span(ctx, ctx.span)
                ctx.span = None
            meter = self.meter
            if ctx.running:
                meter.running_dec(ctx.model)
                if self._admission_finished is not None:
                    self._admission_finished()
            if ctx.error_code:
                meter.error(ctx.model, ctx.target_model, ctx.error_code)
            if log.isEnabledFor(VERBOSE):
                self._log_finished(ctx)

    def _log_finished(self, ctx: RequestContext) -> None:
        """The one VERBOSE line per request: outcome, endpoint, duration, token usage."""
        info = ctx.response
        code = ctx.error_code
        status: object = info.status
        if not status and code in ErrorCode.__members__.values():
            status = http_status(ErrorCode(code))  # answered by the EPP itself
        end = ctx.completed_at or self.clock()
        log.log(
            VERBOSE,
            "request finished: status=%s%s endpoint=%s target_model=%s duration=%.3fs tokens=%d/%d",
            status or "-",
            f" error={code}" if code else "",
            ctx.destination or "-",
            ctx.target_model or "-",
            max(0.0, end - ctx.received_at),
            info.prompt_tokens,
            info.completion_tokens,
        )


def _parse_traced(
    span: Span, parser: RequestParser, request_id: str, path: str, headers: Mapping[str, str], body: bytes
) -> InferenceRequest:
    pspan = span.child(PARSE)
    pspan.set("epp.parser", parser.typed_name.type)
    pspan.set("epp.request.bytes", len(body))
    try:
        req = parser.parse(request_id, path, headers, body)
        pspan.set("gen_ai.request.model", req.model)
        pspan.set("epp.api", str(req.api))
        return req
    except RequestError as exc:
        pspan.fail(exc.message)
        raise
    except Exception as exc:
        pspan.fail(repr(exc))
        raise
    finally:
        pspan.end()


def _end_request_span(ctx: RequestContext, span: Span) -> None:
    """The `gateway.request` span's outcome: model, endpoint, status or error code."""
    try:
        span.set("epp.request_id", ctx.request_id)
        if ctx.model:
            span.set("gen_ai.request.model", ctx.model)
            span.set("epp.target_model", ctx.target_model)
        if ctx.destination:
            span.set(ATTR_ENDPOINT, ctx.destination)
        status = ctx.response.status
        if status:
            span.set("http.response.status_code", int(status))
        if ctx.error_code:
            span.set(ATTR_ERROR_CODE, ctx.error_code)
            span.fail(ctx.error_code)
    finally:
        span.end()


def _content_length(headers: Mapping[str, str]) -> int | None:
    value = headers.get(CONTENT_LENGTH, "")
    return int(value) if value.isdigit() else None


def _check_utf8_model(model: str) -> None:
    """A JSON `\\ud800` escape decodes to a lone surrogate, which no UTF-8 text can carry: as a metric
    label it would make every later /metrics exposition fail."""
    try:
        model.encode()
    except UnicodeEncodeError:
        raise RequestError(
            ErrorCode.BAD_REQUEST, f"model {model!r} is not valid Unicode (a lone surrogate escape)"
        ) from None
