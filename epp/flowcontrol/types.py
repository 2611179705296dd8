"""Value types of flow control: outcomes, flow keys and queued items, and the outcome → error mapping."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from enum import StrEnum

from epp.errors import ErrorCode, RequestError
from epp.framework.types import InferenceRequest

__all__ = [
    "DEFAULT_FAIRNESS_ID",
    "FlowKey",
    "Outcome",
    "QueueItem",
    "outcome_error",
]

#: The fairness id of requests without an `x-gateway-inference-fairness-id` header.
DEFAULT_FAIRNESS_ID = "default-flow"


class Outcome(StrEnum):
    """How a request left flow control (upstream's names; they label the queue-duration metric)."""

    DISPATCHED = "Dispatched"
    REJECTED_CAPACITY = "RejectedCapacity"
    REJECTED_OTHER = "RejectedOther"
    EVICTED_TTL = "EvictedTTL"
    EVICTED_CONTEXT_CANCELLED = "EvictedContextCancelled"
    EVICTED_OTHER = "EvictedOther"


_OUTCOME_CODE: dict[Outcome, ErrorCode] = {
    Outcome.REJECTED_CAPACITY: ErrorCode.RESOURCE_EXHAUSTED,
    Outcome.EVICTED_TTL: ErrorCode.SERVICE_UNAVAILABLE,
    Outcome.EVICTED_CONTEXT_CANCELLED: ErrorCode.SERVICE_UNAVAILABLE,
    Outcome.REJECTED_OTHER: ErrorCode.INTERNAL,
    Outcome.EVICTED_OTHER: ErrorCode.INTERNAL,
}

_OUTCOME_PREFIX: dict[Outcome, str] = {
    Outcome.REJECTED_CAPACITY: "request rejected by flow control: ",
    Outcome.EVICTED_TTL: "request timed out in queue: ",
    Outcome.EVICTED_CONTEXT_CANCELLED: "client disconnected: ",
    Outcome.REJECTED_OTHER: "request rejected by flow control: ",
    Outcome.EVICTED_OTHER: "request evicted by flow control: ",
}


def outcome_error(outcome: Outcome, detail: str) -> RequestError:
    """The immediate response for a request that was not dispatched (429 / 503 / 500 as upstream)."""
    if outcome is Outcome.DISPATCHED:
        raise ValueError("a dispatched request has no error")
    return RequestError(_OUTCOME_CODE[outcome], _OUTCOME_PREFIX[outcome] + detail)


@dataclass(frozen=True, slots=True)
class FlowKey:
    """A flow: the requests of one fairness id at one priority."""

    fairness_id: str
    priority: int

    def __str__(self) -> str:
        return f"{self.fairness_id}@{self.priority}"


@dataclass(slots=True, eq=False)
class QueueItem:
    """One request waiting in (or that has left) flow control.

    `sort_key` is set by the band's ordering policy (smaller = served first within a flow, and across
    flows for global-strict fairness). `outcome` is set exactly once; until then the item is live.
    `deadline` is in the controller's monotonic clock, None without a TTL.
    """

    request: InferenceRequest
    key: FlowKey
    size_bytes: int
    enqueue_time: float
    seq: int
    ttl: float | None = None
    deadline: float | None = None
    sort_key: tuple[float, ...] = ()
    outcome: Outcome | None = None
    detail: str = ""
    finished_at: float = 0.0
    queued: bool = False
    future: asyncio.Future[Outcome] | None = field(default=None, repr=False)

    @property
    def waited(self) -> float:
        return max(0.0, self.finished_at - self.enqueue_time)
