"""The immediate response of a request that flow control did not dispatch (429 / 503 / 500 as upstream)."""

from __future__ import annotations

from epp.errors import ErrorCode, RequestError
from epp.framework.flowcontrol import Outcome

__all__ = ["outcome_error"]

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
