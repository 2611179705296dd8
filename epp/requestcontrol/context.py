"""Per-request state shared by the wire layer and the director, and the options they run with."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from epp.framework.cycle import CycleState
from epp.framework.types import InferenceRequest, ResponseInfo, SchedulingResult
from epp.scheduling.pipeline import Pipeline
from epp.scheduling.spans import Span
from epp.scheduling.trace import DecisionTrace

__all__ = ["DEFAULT_MAX_REQUEST_BODY_BYTES", "RequestContext", "RequestOptions"]

DEFAULT_MAX_REQUEST_BODY_BYTES = 64 << 20


@dataclass(frozen=True, slots=True)
class RequestOptions:
    """Request-handling settings (from flags).

    Attributes:
        metrics_staleness: endpoints scraped longer ago than this are not candidates (unless none is fresh).
        disable_endpoint_subset_filter: ignore the proxy's `envoy.lb.subset_hint`.
        decision_header: honour the `x-epp-decision` request header (return the decision trace).
        max_request_body_bytes: larger request bodies get a 413 (bounded memory per stream).
        track_token_usage: read token usage from responses that carry it (for the token metrics).
    """

    metrics_staleness: float = 2.0
    disable_endpoint_subset_filter: bool = False
    decision_header: bool = False
    max_request_body_bytes: int = DEFAULT_MAX_REQUEST_BODY_BYTES
    track_token_usage: bool = True


@dataclass(slots=True, eq=False)
class RequestContext:
    """One request's journey from request headers to the end of the response.

    `pipeline` is taken once when the stream starts and used to the end (a reload never changes the rules
    under an in-flight request). `result` is set once the request is scheduled; only scheduled requests
    run response hooks, exactly once each.

    Response observation (see `epp.extproc.observer`): `wants_usage` says the response will carry token
    usage worth reading; `observed` that an observer stream (Envoy's observability mode) watches the body;
    `observer_active` that it may still deliver something (the first byte, the usage, the body's end);
    `usage_pending` that it is still reading the usage, so the usage metrics wait for it; `body_seen` that
    some stream saw the whole body (so `ResponseInfo.body_bytes` is its size); `routing_reads_body` that
    the routing stream took the body itself (no observer may attach any more).
    """

    pipeline: Pipeline
    request_id: str
    headers: dict[str, str]
    received_at: float
    path: str = ""
    request_id_generated: bool = False
    #: the subset hint list, or None when the proxy sent none
    subset_hint: list[object] | None = None
    request: InferenceRequest | None = None
    model: str = ""
    target_model: str = ""
    cycle: CycleState = field(default_factory=CycleState)
    result: SchedulingResult | None = None
    destination: str = ""
    trace: DecisionTrace | None = None
    #: the request's `gateway.request` span when it is traced (sampled), ended by `Director.finish`
    span: Span | None = None
    response: ResponseInfo = field(default_factory=ResponseInfo)
    completed_at: float = 0.0
    received_hooks_done: bool = False
    complete_hooks_done: bool = False
    running: bool = False
    error_code: str = ""
    finished: bool = False
    wants_usage: bool = False
    observed: bool = False
    observer_active: bool = False
    usage_pending: bool = False
    body_seen: bool = False
    usage_recorded: bool = False
    routing_reads_body: bool = False
    #: set by a routing stream that waits for its observer to finish reading (see `epp.extproc.observer`)
    observer_waiter: asyncio.Future[None] | None = None
