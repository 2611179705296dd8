"""Fairness policies: which flow (fairness id) of a priority band is served next.

- `global-strict-fairness-policy`: the flow whose head comes first by the band's ordering policy (the
  oldest request for FCFS, the earliest deadline for EDF). No fairness between tenants; stateless.
- `round-robin-fairness-policy`: a per-band cursor over flow ids in sorted order; each dispatch turn goes
  to the next non-empty flow after the last one served. The unit of fairness is dispatch turns.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from epp.framework.flowcontrol import FlowView
from epp.framework.handle import Handle
from epp.framework.plugins import PluginKind
from epp.framework.types import TypedName
from epp.registry import EmptyParams, PluginType

__all__ = [
    "GLOBAL_STRICT_FAIRNESS_POLICY",
    "ROUND_ROBIN_FAIRNESS_POLICY",
    "GlobalStrictFairness",
    "RoundRobinFairness",
    "RoundRobinState",
]

GLOBAL_STRICT = "global-strict-fairness-policy"
ROUND_ROBIN = "round-robin-fairness-policy"

_GLOBAL_STRICT_NAME = TypedName(GLOBAL_STRICT, GLOBAL_STRICT)
_ROUND_ROBIN_NAME = TypedName(ROUND_ROBIN, ROUND_ROBIN)


@dataclass(frozen=True, slots=True)
class GlobalStrictFairness:
    typed_name: TypedName = _GLOBAL_STRICT_NAME

    def new_state(self) -> Any:
        return None

    def pick(self, flows: Mapping[str, FlowView], order: Sequence[str], state: Any) -> FlowView | None:
        best: FlowView | None = None
        best_key: tuple[tuple[float, ...], int] | None = None
        for flow in flows.values():
            head = flow.peek()
            if head is None:
                continue
            key = (head.sort_key, head.seq)
            if best_key is None or key < best_key:
                best, best_key = flow, key
        return best


@dataclass(slots=True)
class RoundRobinState:
    """The id of the flow served last in this band (None before the first turn)."""

    last: str | None = None


@dataclass(frozen=True, slots=True)
class RoundRobinFairness:
    typed_name: TypedName = _ROUND_ROBIN_NAME

    def new_state(self) -> Any:
        return RoundRobinState()

    def pick(self, flows: Mapping[str, FlowView], order: Sequence[str], state: Any) -> FlowView | None:
        assert isinstance(state, RoundRobinState)
        n = len(order)
        if n == 0:
            return None
        start = 0 if state.last is None else bisect.bisect_right(order, state.last)
        for i in range(n):
            flow_id = order[(start + i) % n]
            flow = flows.get(flow_id)
            if flow is not None and len(flow) > 0:
                state.last = flow_id
                return flow
        return None


def _global_strict(name: str, params: EmptyParams, handle: Handle) -> GlobalStrictFairness:
    return GlobalStrictFairness(TypedName(GLOBAL_STRICT, name))


def _round_robin(name: str, params: EmptyParams, handle: Handle) -> RoundRobinFairness:
    return RoundRobinFairness(TypedName(ROUND_ROBIN, name))


GLOBAL_STRICT_FAIRNESS_POLICY = PluginType(
    type_name=GLOBAL_STRICT,
    params_model=EmptyParams,
    factory=_global_strict,
    kinds=frozenset({PluginKind.FAIRNESS_POLICY}),
    description="Flow control: serve the flow whose head request comes first by the band's ordering "
    "policy (no fairness between tenants).",
)

ROUND_ROBIN_FAIRNESS_POLICY = PluginType(
    type_name=ROUND_ROBIN,
    params_model=EmptyParams,
    factory=_round_robin,
    kinds=frozenset({PluginKind.FAIRNESS_POLICY}),
    description="Flow control: take turns between the flows (fairness ids) of a band, one dispatch each.",
)
