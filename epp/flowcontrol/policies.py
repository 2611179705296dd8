"""Contracts of the three flow-control policy kinds (implemented as plugins in `epp.plugins.flowcontrol`).

- `OrderingPolicy` orders the items of a flow: it gives each item a sort key when it is enqueued (smaller
  first). Global-strict fairness compares flow heads with the same keys, so keys must be comparable across
  the flows of a band (every flow of a band uses the band's ordering policy).
- `FairnessPolicy` picks the flow a band serves next. Per-band state (a round-robin cursor) lives in an
  object the policy creates and the band keeps, so one policy instance can serve many bands.
- `UsageLimitPolicy` turns the pool saturation into a ceiling per priority band; a band dispatches only
  while saturation < its ceiling.

All methods are synchronous, cheap and I/O-free: they run inside the dispatch cycle.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from epp.flowcontrol.types import QueueItem
from epp.framework.plugins import Plugin

__all__ = ["FairnessPolicy", "FlowView", "OrderingPolicy", "UsageLimitPolicy"]


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
