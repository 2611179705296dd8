"""Which pods serve, and the endpoints each serving pod contributes (pure functions over pod JSON).

A pod serves when it is Ready=True, not terminating (no deletionTimestamp) and has a pod IP. It contributes
one endpoint per target port, named `<pod>-rank-<i>` where `i` is the port's index in the target port list,
restricted by the `inference.networking.k8s.io/active-ports` annotation when present and, if the pod
declares container ports, to ports it declares (a pod that declares none is taken at its word).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from epp.framework.types import Endpoint

__all__ = [
    "ACTIVE_PORTS_ANNOTATION",
    "label_selector",
    "labels_match",
    "parse_selector",
    "parse_target_ports",
    "pod_endpoints",
    "pod_is_serving",
    "pods_to_endpoints",
]

ACTIVE_PORTS_ANNOTATION = "inference.networking.k8s.io/active-ports"

log = logging.getLogger(__name__)

Obj = Mapping[str, Any]


def label_selector(selector: Mapping[str, str]) -> str:
    """matchLabels as an API `labelSelector` (`k=v,k=v`, sorted)."""
    return ",".join(f"{k}={v}" for k, v in sorted(selector.items()))


def labels_match(selector: Mapping[str, str], labels: Mapping[str, str] | None) -> bool:
    """matchLabels semantics: every selector pair present in the labels (an empty selector matches all)."""
    labels = labels or {}
    return all(labels.get(k) == v for k, v in selector.items())


def pod_is_serving(pod: Obj) -> bool:
    meta = pod.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return False
    status = pod.get("status") or {}
    if not status.get("podIP"):
        return False
    for cond in status.get("conditions") or ():
        if cond.get("type") == "Ready":
            return str(cond.get("status")) == "True"
    return False


def _active_ports(pod: Obj, target_ports: Sequence[int]) -> set[int]:
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    raw = annotations.get(ACTIVE_PORTS_ANNOTATION)
    allowed = set(target_ports)
    if raw is None:
        return allowed
    active: set[int] = set()
    for part in str(raw).split(","):
        part = part.strip()
        if part.isdigit() and int(part) in allowed:
            active.add(int(part))
    return active


def _declared_ports(pod: Obj) -> set[int]:
    spec = pod.get("spec") or {}
    ports: set[int] = set()
    for container in spec.get("containers") or ():
        for port in container.get("ports") or ():
            number = port.get("containerPort")
            if isinstance(number, int):
                ports.add(number)
    return ports


def pod_endpoints(pod: Obj, target_ports: Sequence[int], namespace: str = "") -> list[Endpoint]:
    """The endpoints of one serving pod (empty when none of the target ports is live on it)."""
    meta = pod.get("metadata") or {}
    name = str(meta.get("name") or "")
    namespace = str(meta.get("namespace") or namespace)
    ip = str((pod.get("status") or {}).get("podIP") or "")
    labels = dict(meta.get("labels") or {})
    active = _active_ports(pod, target_ports)
    # Declared container ports narrow the target ports only when the pod declares some of them: a pod
    # whose model server declares none (ports are informational) but whose sidecar does (Istio's
    # 15090) still serves every target port.
    declared = _declared_ports(pod) & set(target_ports)
    out: list[Endpoint] = []
    for rank, port in enumerate(target_ports):
        if port not in active or (declared and port not in declared):
            continue
        out.append(
            Endpoint(
                key=f"{name}-rank-{rank}",
                ip=ip,
                port=port,
                labels=labels,
                namespace=namespace,
                pod_name=name,
                rank=rank,
            )
        )
    if not out and target_ports:
        log.debug("pod %s serves none of the target ports %s", name, list(target_ports))
    return out


def pods_to_endpoints(
    pods: Iterable[Obj], selector: Mapping[str, str], target_ports: Sequence[int], namespace: str = ""
) -> list[Endpoint]:
    """Endpoints of every serving pod matching the selector, sorted by key."""
    out: list[Endpoint] = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        if labels_match(selector, meta.get("labels")) and pod_is_serving(pod):
            out.extend(pod_endpoints(pod, target_ports, namespace))
    out.sort(key=lambda e: e.key)
    return out


def parse_selector(value: str | Mapping[str, str]) -> dict[str, str]:
    """`k=v,k2=v2` (or a mapping) as matchLabels; raises ValueError on a bad pair."""
    if isinstance(value, Mapping):
        return {str(k): str(v) for k, v in value.items()}
    selector: dict[str, str] = {}
    for part in value.split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, val = part.partition("=")
        key, val = key.strip(), val.strip()
        if val.startswith("="):  # tolerate k==v
            val = val[1:].strip()
        if not sep or not key:
            raise ValueError(f"endpoint selector entry {part!r} is not key=value")
        selector[key] = val
    if not selector:
        raise ValueError("endpoint selector is empty")
    return selector


def parse_target_ports(value: str | int | Sequence[int | str]) -> list[int]:
    """1..8 distinct ports from `3000,3001` (or a list); raises ValueError otherwise."""
    if isinstance(value, int):
        items: list[int | str] = [value]
    elif isinstance(value, str):
        items = [p for p in value.split(",") if p.strip()]
    else:
        items = [
            p for v in value for p in (str(v).split(",") if isinstance(v, str) else [v]) if str(p).strip()
        ]
    ports: list[int] = []
    for item in items:
        text = str(item).strip()
        if not text.isdigit() or not 1 <= int(text) <= 65535:
            raise ValueError(f"target port {text!r} is not a number in 1..65535")
        if int(text) in ports:
            raise ValueError(f"target port {text} is listed twice")
        ports.append(int(text))
    if not 1 <= len(ports) <= 8:
        raise ValueError(f"between 1 and 8 target ports are required, got {len(ports)}")
    return ports
