"""Shared helpers of the flow-control tests (import as `fc_helpers`): detector, observer, requests."""

from __future__ import annotations

from collections.abc import Sequence

from epp.flowcontrol.controller import FlowController
from epp.flowcontrol.settings import FlowControlSettings
from epp.framework.flowcontrol import QueueItem
from epp.framework.types import Endpoint, InferenceRequest, TypedName
from epp.plugins.flowcontrol.fairness import GlobalStrictFairness
from epp.plugins.flowcontrol.ordering import FcfsOrdering
from epp.plugins.flowcontrol.usage_limit import StaticUsageLimit


class SettableDetector:
    """A saturation detector whose value the test sets; counts how often it is asked."""

    typed_name = TypedName("settable-detector", "settable")

    def __init__(self, value: float = 0.0) -> None:
        self.value = value
        self.calls = 0

    def saturation(self, endpoints: Sequence[Endpoint], now: float) -> float:
        self.calls += 1
        return self.value


class RecordingObserver:
    def __init__(self) -> None:
        self.dequeued_ids: list[str] = []
        self.finished_items: list[QueueItem] = []
        self.enqueued_ids: list[str] = []
        self.saturations: list[float] = []
        self.cycles = 0

    def enqueued(self, item: QueueItem) -> None:
        self.enqueued_ids.append(item.request.request_id)

    def dequeued(self, item: QueueItem) -> None:
        self.dequeued_ids.append(item.request.request_id)

    def finished(self, item: QueueItem, enqueue_seconds: float) -> None:
        self.finished_items.append(item)

    def pool_saturation(self, value: float) -> None:
        self.saturations.append(value)

    def dispatch_cycle(self, seconds: float) -> None:
        self.cycles += 1

    def dispatched(self) -> list[str]:
        return [i.request.request_id for i in self.finished_items if i.outcome == "Dispatched"]


def req(rid: str, priority: int = 0, flow: str = "default-flow", size: int = 100, **kw) -> InferenceRequest:
    return InferenceRequest(
        request_id=rid,
        model="m",
        target_model="m",
        priority=priority,
        fairness_id=flow,
        size_bytes=size,
        **kw,
    )


POOL = (Endpoint(key="a", ip="10.0.0.1", port=8000),)


def make_controller(
    detector: SettableDetector,
    *,
    fairness=None,
    ordering=None,
    threshold: float = 1.0,
    observer=None,
    **settings_kw,
) -> FlowController:
    settings = FlowControlSettings.simple(
        fairness or GlobalStrictFairness(),
        ordering or FcfsOrdering(),
        StaticUsageLimit(threshold=threshold),
        **settings_kw,
    )
    return FlowController(settings, candidates=lambda: POOL, detector=lambda: detector, observer=observer)
