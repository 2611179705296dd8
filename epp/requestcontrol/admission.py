"""Admission: may a parsed request go on to scheduling now?

`Admission.admit` returns when the request may proceed and raises `RequestError` to reject it. It is a
coroutine so a queueing implementation (flow control) can hold the request; a client disconnect reaches
it as `asyncio.CancelledError`. The director re-reads the candidates after `admit` if the fleet changed
meanwhile (late binding), so a queued request is scheduled on fresh metrics.

The default is upstream's legacy controller: a sheddable request (priority < 0) is rejected with 429 while
the pipeline's saturation detector says the candidates are saturated; everything else is admitted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol

from epp.errors import ErrorCode, RequestError
from epp.framework.types import Endpoint, InferenceRequest
from epp.scheduling.pipeline import Pipeline
from epp.scheduling.spans import Span

__all__ = ["SHED_MESSAGE", "Admission", "LegacyAdmission"]

SHED_MESSAGE = "system saturated, sheddable request dropped"


class Admission(Protocol):
    async def admit(
        self,
        request: InferenceRequest,
        candidates: Sequence[Endpoint],
        pipeline: Pipeline,
        *,
        span: Span | None = None,
    ) -> None:
        """`span` (a traced request only; not passed otherwise): the `epp.admission` span, for details."""
        ...


class LegacyAdmission:
    """Shed sheddable requests at saturation (>= 1.0); never queue."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock

    async def admit(
        self,
        request: InferenceRequest,
        candidates: Sequence[Endpoint],
        pipeline: Pipeline,
        *,
        span: Span | None = None,
    ) -> None:
        if request.priority >= 0:
            return
        detector = pipeline.saturation_detector
        if detector is None:
            return
        saturation = detector.saturation(candidates, self.clock())
        if span is not None:
            span.set("epp.saturation", saturation)
        if saturation >= 1.0:
            raise RequestError(ErrorCode.RESOURCE_EXHAUSTED, SHED_MESSAGE)
