"""Flow-control contracts: the value types a queued request carries and the three policy kinds.

Value types: `Outcome` (how a request left flow control), `FlowKey` (fairness id, priority), `QueueItem`.
Policies (implemented as plugins in `epp.plugins.flowcontrol`, run by the engine in `epp.flowcontrol`):
- `OrderingPolicy` orders the items of a flow: it gives each item a sort key when it is enqueued (smaller
  first). Global-strict fairness compares flow heads with the same keys, so keys must be comparable across
  the flows of a band (every flow of a band uses the band's ordering policy).
- `FairnessPolicy` picks the flow a band serves next. Per-band state (a round-robin cursor) lives in an
  object the policy creates and the band keeps, so one policy instance can serve many bands.
- `UsageLimitPolicy` turns the pool saturation into a ceiling per priority band; a band dispatches only
  while saturation < its ceiling.
`DefaultPolicies` is what the engine falls back on when a reference names no usable plugin; the daemon's
composition root (`epp.builtins`) supplies it, so the engine never imports a concrete policy.

All policy methods are synchronous, cheap and I/O-free: they run inside the dispatch cycle.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from epp.framework.plugins import Plugin
from epp.framework.types import InferenceRequest

__all__ = [
    "DEFAULT_FAIRNESS_ID",
    "DefaultPolicies",
    "FairnessPolicy",
    "FlowKey",
    "FlowView",
    "OrderingPolicy",
    "Outcome",
    "QueueItem",
    "UsageLimitPolicy",
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


class FlowView(Protocol):
    """What a fairness policy may read about one flow queue."""

    @property
    def fairness_id(self) -> str: ...

    def __len__(self) -> int: ...

    def peek(self) -> QueueItem | None: ...


class OrderingPolicy(Plugin, Protocol):
    def sort_key(self, item: QueueItem) -> tuple[float, ...]:
        """The item's position key (smaller = dispatched first). Called once, at enqueue."""
        ...


class FairnessPolicy(Plugin, Protocol):
    def new_state(self) -> Any:
        """Fresh per-band state (None for a stateless policy)."""
        ...

    def pick(self, flows: Mapping[str, FlowView], order: Sequence[str], state: Any) -> FlowView | None:
        """The non-empty flow to serve next; `order` is the flow ids sorted ascending."""
        ...


class UsageLimitPolicy(Plugin, Protocol):
    def compute_limits(self, saturation: float, priorities: Sequence[int]) -> Mapping[int, float]:
        """The saturation ceiling of each band (dispatch while saturation < ceiling)."""
        ...


@dataclass(frozen=True, slots=True)
class DefaultPolicies:
    """The policy of each kind that applies when a reference names no usable plugin."""

    fairness: FairnessPolicy
    ordering: OrderingPolicy
    usage_limit: UsageLimitPolicy
