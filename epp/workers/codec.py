"""The bytes of every message between the processes of a pod: msgpack, with explicit shapes.

Endpoints and their metrics travel as lists in dataclass field order (sets as lists), so a field added to
`Endpoint` or `EndpointMetrics` travels without a change here. Both ends always run the same build (the
pod's processes start from one installation), so there is no version negotiation: a message that does not
decode is a bug, reported by the receiver and dropped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import msgpack

from epp.datalayer.datastore import ModelRewriteRule, RewriteTarget
from epp.framework.types import Endpoint, EndpointMetrics

__all__ = [
    "decode_endpoint",
    "decode_metrics",
    "decode_rules",
    "encode_endpoint",
    "encode_metrics",
    "encode_rules",
    "pack",
    "unpack",
]

_METRIC_FIELDS = tuple(f.name for f in dataclasses.fields(EndpointMetrics))
_SET_POSITIONS = tuple(
    i for i, f in enumerate(dataclasses.fields(EndpointMetrics)) if isinstance(f.default, frozenset)
)
_new_metrics = EndpointMetrics


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def encode_metrics(m: EndpointMetrics) -> list[Any]:
    return [sorted(v) if isinstance(v, frozenset) else v for v in (getattr(m, n) for n in _METRIC_FIELDS)]


def decode_metrics(values: Sequence[Any]) -> EndpointMetrics:
    if len(values) != len(_METRIC_FIELDS):
        raise ValueError(f"expected {len(_METRIC_FIELDS)} metric fields, got {len(values)}")
    fields = list(values)
    for i in _SET_POSITIONS:
        fields[i] = frozenset(fields[i])
    return _new_metrics(*fields)


def encode_endpoint(e: Endpoint) -> list[Any]:
    return [
        e.key,
        e.ip,
        e.port,
        dict(e.labels),
        encode_metrics(e.metrics),
        e.namespace,
        e.pod_name,
        e.rank,
        e.healthy,
    ]


def decode_endpoint(v: Sequence[Any]) -> Endpoint:
    key, ip, port, labels, metrics, namespace, pod_name, rank, healthy = v
    return Endpoint(
        key=key,
        ip=ip,
        port=port,
        labels=labels,
        metrics=decode_metrics(metrics),
        namespace=namespace,
        pod_name=pod_name,
        rank=rank,
        healthy=healthy,
    )


def encode_rules(rules: Sequence[ModelRewriteRule]) -> list[Any]:
    return [
        [r.name, list(r.matches), [[t.model, t.weight] for t in r.targets], r.created, r.order] for r in rules
    ]


def decode_rules(values: Sequence[Any]) -> tuple[ModelRewriteRule, ...]:
    return tuple(
        ModelRewriteRule(
            name=name,
            matches=tuple(matches),
            targets=tuple(RewriteTarget(model, weight) for model, weight in targets),
            created=created,
            order=order,
        )
        for name, matches, targets, created, order in values
    )


def encode_objectives(objectives: Mapping[str, int]) -> dict[str, int]:
    return dict(objectives)
