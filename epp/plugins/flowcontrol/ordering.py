"""Ordering policies: the order of requests within a flow (and of flow heads for global-strict fairness).

- `fcfs-ordering-policy` (default): first come, first served by enqueue time.
- `edf-ordering-policy`: earliest deadline first, deadline = enqueue time + the request's TTL; without a
  TTL the deadline is infinitely far; ties are FCFS.
- `slo-deadline-ordering-policy`: deadline = enqueue time + the `x-slo-ttft-ms` request header (ms);
  missing or invalid header → infinitely far; ties FCFS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from epp.framework.flowcontrol import QueueItem
from epp.framework.handle import Handle
from epp.framework.plugins import PluginKind
from epp.framework.types import TypedName
from epp.registry import EmptyParams, PluginType

__all__ = [
    "EDF_ORDERING_POLICY",
    "FCFS_ORDERING_POLICY",
    "SLO_DEADLINE_ORDERING_POLICY",
    "SLO_TTFT_HEADER",
    "EdfOrdering",
    "FcfsOrdering",
    "SloDeadlineOrdering",
]

FCFS = "fcfs-ordering-policy"
EDF = "edf-ordering-policy"
SLO_DEADLINE = "slo-deadline-ordering-policy"

SLO_TTFT_HEADER = "x-slo-ttft-ms"

_FCFS_NAME = TypedName(FCFS, FCFS)
_EDF_NAME = TypedName(EDF, EDF)
_SLO_NAME = TypedName(SLO_DEADLINE, SLO_DEADLINE)


@dataclass(frozen=True, slots=True)
class FcfsOrdering:
    typed_name: TypedName = _FCFS_NAME

    def sort_key(self, item: QueueItem) -> tuple[float, ...]:
        return (item.enqueue_time,)


@dataclass(frozen=True, slots=True)
class EdfOrdering:
    typed_name: TypedName = _EDF_NAME

    def sort_key(self, item: QueueItem) -> tuple[float, ...]:
        deadline = math.inf if item.ttl is None else item.enqueue_time + item.ttl
        return (deadline, item.enqueue_time)


@dataclass(frozen=True, slots=True)
class SloDeadlineOrdering:
    typed_name: TypedName = _SLO_NAME

    def sort_key(self, item: QueueItem) -> tuple[float, ...]:
        raw = item.request.headers.get(SLO_TTFT_HEADER, "")
        try:
            ms = float(raw)
        except ValueError:
            ms = math.nan
        deadline = item.enqueue_time + ms / 1000.0 if math.isfinite(ms) and ms >= 0 else math.inf
        return (deadline, item.enqueue_time)


def _fcfs(name: str, params: EmptyParams, handle: Handle) -> FcfsOrdering:
    return FcfsOrdering(TypedName(FCFS, name))


def _edf(name: str, params: EmptyParams, handle: Handle) -> EdfOrdering:
    return EdfOrdering(TypedName(EDF, name))


def _slo(name: str, params: EmptyParams, handle: Handle) -> SloDeadlineOrdering:
    return SloDeadlineOrdering(TypedName(SLO_DEADLINE, name))


FCFS_ORDERING_POLICY = PluginType(
    type_name=FCFS,
    params_model=EmptyParams,
    factory=_fcfs,
    kinds=frozenset({PluginKind.ORDERING_POLICY}),
    description="Flow control: first come, first served within a flow (the default).",
)

EDF_ORDERING_POLICY = PluginType(
    type_name=EDF,
    params_model=EmptyParams,
    factory=_edf,
    kinds=frozenset({PluginKind.ORDERING_POLICY}),
    description="Flow control: earliest deadline first (enqueue time + TTL); no TTL sorts last; ties FCFS.",
)

SLO_DEADLINE_ORDERING_POLICY = PluginType(
    type_name=SLO_DEADLINE,
    params_model=EmptyParams,
    factory=_slo,
    kinds=frozenset({PluginKind.ORDERING_POLICY}),
    description="Flow control: earliest deadline first, deadline = enqueue time + x-slo-ttft-ms header.",
)
