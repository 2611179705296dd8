"""Builders shared by the plugin tests: endpoints, requests, handles and cycles."""

from __future__ import annotations

import random
from typing import Any

from epp.framework.cycle import CycleState
from epp.framework.handle import SimpleHandle
from epp.framework.types import (
    ApiKind,
    Endpoint,
    EndpointMetrics,
    InferenceRequest,
    ProfileRunResult,
    ResponseInfo,
    SchedulingResult,
    ScoredEndpoint,
    TypedName,
)
from epp.plugins import register_builtins
from epp.registry import PluginRegistry


def ep(key: str, ip: str | None = None, port: int = 8000, **metrics: Any) -> Endpoint:
    """An endpoint; `ip` defaults to a distinct loopback address derived from the key."""
    if ip is None:
        ip = f"127.0.0.{(sum(key.encode()) % 250) + 2}"
    metrics.setdefault("update_time", 1.0)
    for name in ("active_models", "waiting_models"):
        if name in metrics:
            metrics[name] = frozenset(metrics[name])
    return Endpoint(key=key, ip=ip, port=port, metrics=EndpointMetrics(**metrics))


def fleet(n: int, **metrics: Any) -> list[Endpoint]:
    return [ep(f"e{i}", ip=f"127.0.1.{i + 1}", **metrics) for i in range(n)]


def req(
    prompt: str = "",
    model: str = "m",
    target: str | None = None,
    salt: str = "",
    headers: dict[str, str] | None = None,
    request_id: str = "r",
    **extra: Any,
) -> InferenceRequest:
    return InferenceRequest(
        request_id=request_id,
        model=model,
        target_model=model if target is None else target,
        api=ApiKind.COMPLETIONS,
        prompt=prompt,
        prefix_material=prompt.encode(),
        cache_salt=salt,
        headers=headers or {},
        **extra,
    )


def handle(seed: int = 0, **plugins: object) -> SimpleHandle:
    return SimpleHandle(plugins=dict(plugins), rng=random.Random(seed))


def registry() -> PluginRegistry:
    reg = PluginRegistry()
    register_builtins(reg)
    return reg


def build(
    type_name: str, params: Any = None, *, name: str | None = None, h: SimpleHandle | None = None
) -> Any:
    return registry().get(type_name).build(name or type_name, params, h or handle())


def scored(*pairs: tuple[Endpoint, float]) -> list[ScoredEndpoint]:
    return [ScoredEndpoint(e, s) for e, s in pairs]


def result(*targets: Endpoint, profile: str = "default", **others: tuple[Endpoint, ...]) -> SchedulingResult:
    results: dict[str, ProfileRunResult | None] = {profile: ProfileRunResult(tuple(targets))}
    for name, eps in others.items():
        results[name] = ProfileRunResult(tuple(eps))
    return SchedulingResult(primary_profile=profile, profile_results=results)


def cycle() -> CycleState:
    return CycleState()


def response(served: str = "", **kw: Any) -> ResponseInfo:
    return ResponseInfo(served_endpoint=served, **kw)


def tn(type_name: str, name: str | None = None) -> TypedName:
    return TypedName(type_name, name or type_name)
