"""One priority band: its flows (one queue per fairness id), its limits, and its policies.

A band keeps byte and request totals over its flows for the capacity checks. Empty flows are dropped at
once (the round-robin cursor is a flow id, not a position, so dropping flows never skips or repeats one).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any

from epp.flowcontrol.queue import FlowQueue
from epp.framework.flowcontrol import FairnessPolicy, OrderingPolicy, QueueItem

__all__ = ["BandSettings", "PriorityBand"]

#: Upstream's `defaultPriorityBandMaxBytes`.
DEFAULT_BAND_MAX_BYTES = 1_000_000_000


@dataclass(frozen=True, slots=True)
class BandSettings:
    """The limits and policies of a band (`maxBytes` / `maxRequests` 0 = unlimited)."""

    priority: int
    fairness: FairnessPolicy
    ordering: OrderingPolicy
    max_bytes: int = DEFAULT_BAND_MAX_BYTES
    max_requests: int = 0


class PriorityBand:
    __slots__ = ("_flow_order", "byte_size", "count", "fairness_state", "flows", "listed", "settings")

    def __init__(self, settings: BandSettings, *, listed: bool) -> None:
        self.settings = settings
        #: True when the band is declared in `priorityBands`; template bands are dropped when empty.
        self.listed = listed
        self.flows: dict[str, FlowQueue] = {}
        self._flow_order: list[str] = []
        self.count = 0
        self.byte_size = 0
        self.fairness_state: Any = settings.fairness.new_state()

    @property
    def priority(self) -> int:
        return self.settings.priority

    def capacity_problem(self, size_bytes: int) -> str | None:
        """Why one more item of `size_bytes` does not fit, or None when it does."""
        s = self.settings
        if s.max_requests > 0 and self.count + 1 > s.max_requests:
            return f"priority band {s.priority} is full ({self.count}/{s.max_requests} requests)"
        if s.max_bytes > 0 and self.byte_size + size_bytes > s.max_bytes:
            return (
                f"priority band {s.priority} is full ({self.byte_size} + {size_bytes} bytes > "
                f"{s.max_bytes} bytes)"
            )
        return None

    def push(self, item: QueueItem, now: float) -> None:
        item.sort_key = self.settings.ordering.sort_key(item)
        flow = self.flows.get(item.key.fairness_id)
        if flow is None:
            flow = self.flows[item.key.fairness_id] = FlowQueue(item.key.fairness_id)
            bisect.insort(self._flow_order, item.key.fairness_id)
        flow.push(item)
        flow.last_active = now
        self.count += 1
        self.byte_size += item.size_bytes

    def remove(self, item: QueueItem) -> bool:
        """Take a queued item out (expiry, disconnect); False if it was not queued here."""
        flow = self.flows.get(item.key.fairness_id)
        if flow is None or not flow.remove(item):
            return False
        self._account_removed(flow, item)
        return True

    def pop_next(self) -> QueueItem | None:
        """The item the fairness and ordering policies choose, taken out of its queue."""
        if self.count == 0:
            return None
        flow = self.settings.fairness.pick(self.flows, self._flow_order, self.fairness_state)
        if flow is None:
            return None
        queue = self.flows[flow.fairness_id]
        item = queue.pop()
        if item is not None:
            self._account_removed(queue, item)
        return item

    def reconfigure(self, settings: BandSettings, *, listed: bool) -> None:
        """Adopt new limits/policies; queued items are kept (and re-ordered if the ordering changed)."""
        old = self.settings
        self.settings = settings
        self.listed = listed
        if settings.ordering is not old.ordering:
            for flow in self.flows.values():
                flow.rekey(settings.ordering.sort_key)
        if settings.fairness is not old.fairness:
            self.fairness_state = settings.fairness.new_state()

    def items(self) -> list[QueueItem]:
        return [item for flow in self.flows.values() for item in flow]

    def _account_removed(self, flow: FlowQueue, item: QueueItem) -> None:
        self.count -= 1
        self.byte_size -= item.size_bytes
        if len(flow) == 0:
            del self.flows[flow.fairness_id]
            idx = bisect.bisect_left(self._flow_order, flow.fairness_id)
            del self._flow_order[idx]
