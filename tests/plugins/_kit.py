"""Builders shared by the plugin tests: endpoints, requests, handles and cycles."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from epp.framework.cycle import CycleState
from epp.framework.handle import SimpleHandle
from epp.framework.plugins import PluginKind
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

#: The plugin pages, docs/plugins/<type>.md, and the sections each has, in this order.
DOCS = Path(__file__).resolve().parents[2] / "docs" / "plugins"
SECTIONS = [
    "## What it does",
    "## Scheduling intent",
    "## Inputs consumed",
    "## Parameters",
    "## Differences from upstream",
]


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


def assert_builds_with_defaults(
    type_name: str, kinds: set[PluginKind], h: SimpleHandle | None = None
) -> None:
    """`type_name` is registered with `kinds`, builds without parameters, and its parameter model is closed
    with every property described."""
    entry = registry().get(type_name)
    assert entry.kinds == kinds
    plugin = entry.build("n", None, h or handle())
    assert plugin.typed_name.type == type_name and plugin.typed_name.name == "n"
    schema = entry.params_model.model_json_schema()
    assert schema.get("additionalProperties") is False
    assert all(prop.get("description") for prop in schema.get("properties", {}).values())


def assert_documented(type_name: str, reg: PluginRegistry | None = None) -> None:
    """`type_name` (of `reg`, default the plugins' `registry()`) has its page in docs/plugins with the
    standard sections, listing each of its parameters."""
    page = DOCS / f"{type_name}.md"
    assert page.is_file(), f"missing {page}"
    text = page.read_text()
    assert text.startswith(f"# `{type_name}`")
    positions = [text.find(s) for s in SECTIONS]
    assert all(p > 0 for p in positions) and positions == sorted(positions), positions
    params = (reg or registry()).get(type_name).params_model.model_json_schema()
    if "$ref" in params:
        params = params["$defs"][params["$ref"].rsplit("/", 1)[-1]]
    for name in params.get("properties", {}):
        assert f"`{name}`" in text, f"{type_name}: parameter {name} undocumented"
