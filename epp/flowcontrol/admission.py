"""Admission with flow control: the director's `Admission` that queues when the `flowControl` gate is on.

Per request it looks at the request's pipeline. With the gate on, the request goes through the one
long-lived `FlowController` (settings from the validated `flowControl` section in `pipeline.extras`,
defaults when absent): it may wait, and gets 429 / 503 / 500 if it is not dispatched; negative
priorities are queued in their own bands, not shed. With the gate off it defers to the legacy admission
(shed sheddable requests at saturation).

The controller outlives config reloads: when a request arrives on a new pipeline the controller adopts
that pipeline's settings and saturation detector, and queued requests stay queued.

Wiring (app): `Director(..., admission=FlowControlAdmission(datastore, options.metrics_staleness,
default_policies=epp.builtins.default_flow_policies, observer=PrometheusFlowObserver(metrics)))`, and call
`request_finished()` when a scheduled request completes so a saturated dispatcher re-checks at once
instead of at its next tick.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

from epp.datalayer.datastore import Datastore
from epp.flowcontrol.build import settings_from_config
from epp.flowcontrol.controller import FlowController
from epp.flowcontrol.observe import FlowObserver
from epp.flowcontrol.settings import DEFAULT_DISPATCH_TICK
from epp.framework.flowcontrol import DefaultPolicies, Outcome
from epp.framework.plugins import SaturationDetector
from epp.framework.types import Endpoint, InferenceRequest
from epp.requestcontrol.admission import Admission, LegacyAdmission
from epp.scheduling.pipeline import Pipeline
from epp.scheduling.spans import FLOW_CONTROL, Span

__all__ = ["FLOW_CONTROL_GATE", "FLOW_CONTROL_SECTION", "FlowControlAdmission"]

FLOW_CONTROL_GATE = "flowControl"
#: The key of the validated `flowControl` section in `Pipeline.extras`.
FLOW_CONTROL_SECTION = "flowControl"


class FlowControlAdmission:
    def __init__(
        self,
        datastore: Datastore,
        metrics_staleness: float,
        *,
        default_policies: Callable[[], DefaultPolicies],
        observer: FlowObserver | None = None,
        legacy: Admission | None = None,
        clock: Callable[[], float] = time.monotonic,
        dispatch_tick: float = DEFAULT_DISPATCH_TICK,
    ) -> None:
        self.datastore = datastore
        self.metrics_staleness = metrics_staleness
        self.default_policies = default_policies
        self.observer = observer
        self.legacy: Admission = legacy or LegacyAdmission(clock)
        self.clock = clock
        self.dispatch_tick = dispatch_tick
        self.controller: FlowController | None = None
        self._pipeline: Pipeline | None = None

    @staticmethod
    def enabled(pipeline: Pipeline) -> bool:
        return FLOW_CONTROL_GATE in pipeline.feature_gates

    async def admit(
        self,
        request: InferenceRequest,
        candidates: Sequence[Endpoint],
        pipeline: Pipeline,
        *,
        span: Span | None = None,
    ) -> None:
        if not self.enabled(pipeline):
            if span is None:
                await self.legacy.admit(request, candidates, pipeline)
            else:
                await self.legacy.admit(request, candidates, pipeline, span=span)
            return
        if span is None:
            await self._controller_for(pipeline).admit(request)
        else:
            await self._admit_traced(self._controller_for(pipeline), request, span)

    @staticmethod
    async def _admit_traced(controller: FlowController, request: InferenceRequest, span: Span) -> None:
        """Flow control in an `epp.flow_control` span: flow, outcome, whether and how long it waited."""
        fspan = span.child(FLOW_CONTROL)
        fspan.set("epp.flow_control.fairness_id", request.fairness_id)
        fspan.set("epp.flow_control.priority", request.priority)
        try:
            item = await controller.enqueue_and_wait(request)
            outcome = item.outcome.value if item.outcome is not None else ""
            fspan.set("epp.flow_control.outcome", outcome)
            fspan.set("epp.flow_control.queued", item.queued)
            fspan.set("epp.flow_control.wait_seconds", item.waited)
            if item.outcome is not Outcome.DISPATCHED:
                error = controller.error_for(item)
                fspan.fail(f"{outcome}: {item.detail}" if item.detail else outcome)
                raise error
        except asyncio.CancelledError:
            fspan.set("epp.flow_control.outcome", Outcome.EVICTED_CONTEXT_CANCELLED.value)
            fspan.fail("the client went away while queued")
            raise
        finally:
            fspan.end()

    def request_finished(self) -> None:
        """A scheduled request completed: pool capacity may be free, so let a blocked dispatcher re-check."""
        if self.controller is not None:
            self.controller.wake()

    async def close(self) -> None:
        if self.controller is not None:
            await self.controller.close()

    # ---- internals -------------------------------------------------------------------------------

    def _candidates(self) -> Sequence[Endpoint]:
        return self.datastore.candidates(self.metrics_staleness)

    def _detector(self) -> SaturationDetector | None:
        return self._pipeline.saturation_detector if self._pipeline is not None else None

    def _controller_for(self, pipeline: Pipeline) -> FlowController:
        controller = self.controller
        if controller is not None and pipeline is self._pipeline:
            return controller
        if (
            controller is not None
            and self._pipeline is not None
            and pipeline.generation < self._pipeline.generation
        ):
            return controller  # a straggler on an older generation: keep the newest settings
        settings = settings_from_config(
            pipeline.extras.get(FLOW_CONTROL_SECTION),
            pipeline.plugins,
            self.default_policies(),
            dispatch_tick=self.dispatch_tick,
        )
        self._pipeline = pipeline
        if controller is None:
            controller = self.controller = FlowController(
                settings,
                candidates=self._candidates,
                detector=self._detector,
                observer=self.observer,
                clock=self.clock,
            )
        else:
            controller.reconfigure(settings)
        return controller
