"""What flow control reports, and the Prometheus implementation with upstream's metric names.

Queue gauges are labelled per flow and model (`fairness_id, priority, inference_pool, model_name,
target_model_name`). A series that drops to 0 stays at 0 (so dashboards and autoscalers see the queue
drain) and is removed after `series_idle_gc` seconds without traffic, so label churn cannot grow the
registry without bound.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from epp.framework.flowcontrol import Outcome, QueueItem
from epp.observability.metrics import EppMetrics

__all__ = ["FlowObserver", "NullFlowObserver", "PrometheusFlowObserver"]

#: Upstream garbage-collects idle flows after 5 minutes; idle gauge series follow the same clock.
SERIES_IDLE_GC = 300.0

_Labels = tuple[str, str, str, str, str]


class FlowObserver(Protocol):
    def enqueued(self, item: QueueItem) -> None:
        """`item` entered a queue."""
        ...

    def dequeued(self, item: QueueItem) -> None:
        """`item` left its queue (dispatched, expired, cancelled or evicted)."""
        ...

    def finished(self, item: QueueItem, enqueue_seconds: float) -> None:
        """`item` has its final outcome (also for requests never queued: fast path, rejections)."""
        ...

    def pool_saturation(self, value: float) -> None: ...

    def dispatch_cycle(self, seconds: float) -> None: ...


class NullFlowObserver:
    def enqueued(self, item: QueueItem) -> None:
        return None

    def dequeued(self, item: QueueItem) -> None:
        return None

    def finished(self, item: QueueItem, enqueue_seconds: float) -> None:
        return None

    def pool_saturation(self, value: float) -> None:
        return None

    def dispatch_cycle(self, seconds: float) -> None:
        return None


class PrometheusFlowObserver:
    """Records flow control into an `EppMetrics` (its `flow_control` families)."""

    def __init__(
        self,
        metrics: EppMetrics,
        *,
        series_idle_gc: float = SERIES_IDLE_GC,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.metrics = metrics
        self.series_idle_gc = series_idle_gc
        self.clock = clock
        # labels → [requests, bytes, last change]
        self._series: dict[_Labels, list[float]] = {}
        self._next_gc = clock() + series_idle_gc

    def _labels(self, item: QueueItem) -> _Labels:
        r = item.request
        return (item.key.fairness_id, str(item.key.priority), self.metrics.pool_name, r.model, r.target_model)

    def _move(self, item: QueueItem, sign: int) -> None:
        labels = self._labels(item)
        now = self.clock()
        state = self._series.get(labels)
        if state is None:
            state = self._series[labels] = [0.0, 0.0, now]
        state[0] += sign
        state[1] += sign * item.size_bytes
        state[2] = now
        self.metrics.flow_control.queue_size.labels(*labels).set(state[0])
        self.metrics.flow_control.queue_bytes.labels(*labels).set(state[1])
        if now >= self._next_gc:
            self._gc(now)

    def _gc(self, now: float) -> None:
        self._next_gc = now + self.series_idle_gc
        for labels, (count, _size, last) in list(self._series.items()):
            if count == 0 and now - last >= self.series_idle_gc:
                del self._series[labels]
                self.metrics.flow_control.queue_size.remove(*labels)
                self.metrics.flow_control.queue_bytes.remove(*labels)

    def enqueued(self, item: QueueItem) -> None:
        self._move(item, +1)

    def dequeued(self, item: QueueItem) -> None:
        self._move(item, -1)

    def finished(self, item: QueueItem, enqueue_seconds: float) -> None:
        r = item.request
        outcome = (item.outcome or Outcome.REJECTED_OTHER).value
        self.metrics.flow_control.queue_duration.labels(
            item.key.fairness_id,
            str(item.key.priority),
            outcome,
            self.metrics.pool_name,
            r.model,
            r.target_model,
        ).observe(item.waited)
        self.metrics.flow_control.enqueue_duration.labels(
            item.key.fairness_id, str(item.key.priority), outcome
        ).observe(enqueue_seconds)

    def pool_saturation(self, value: float) -> None:
        self.metrics.flow_control.pool_saturation.labels(self.metrics.pool_name).set(value)

    def dispatch_cycle(self, seconds: float) -> None:
        self.metrics.flow_control.dispatch_cycle.observe(seconds)
