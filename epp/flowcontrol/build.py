"""Turn a validated `flowControl` config section into controller settings with policy instances.

Policy references name plugin instances (the loader declares the default policies and checks every
reference). A reference the pipeline cannot satisfy (an upstream policy type this build lacks, which the
loader reports as a warning) falls back to the default policy of its kind.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, TypeVar

from epp.config.api import FlowControlConfig
from epp.flowcontrol.band import DEFAULT_BAND_MAX_BYTES, BandSettings
from epp.flowcontrol.policies import FairnessPolicy, OrderingPolicy, UsageLimitPolicy
from epp.flowcontrol.settings import DEFAULT_DISPATCH_TICK, FlowControlSettings
from epp.plugins.flowcontrol.fairness import GLOBAL_STRICT, GlobalStrictFairness
from epp.plugins.flowcontrol.ordering import FCFS, FcfsOrdering
from epp.plugins.flowcontrol.usage_limit import TYPE_NAME as STATIC_USAGE_LIMIT
from epp.plugins.flowcontrol.usage_limit import StaticUsageLimit

__all__ = ["settings_from_config"]

log = logging.getLogger(__name__)

P = TypeVar("P")


def _resolve(
    plugins: Mapping[str, object], ref: str | None, default_ref: str, default: P, method: str, what: str
) -> P:
    for name in (ref, default_ref):
        if name is None:
            continue
        found = plugins.get(name)
        if found is not None and callable(getattr(found, method, None)):
            return found  # type: ignore[return-value]
        if found is not None:
            log.warning("flow control: plugin %r is not a %s; using the default", name, what)
    return default


def settings_from_config(
    cfg: FlowControlConfig | None,
    plugins: Mapping[str, object],
    *,
    dispatch_tick: float = DEFAULT_DISPATCH_TICK,
) -> FlowControlSettings:
    """Controller settings for `cfg` (None = every default), resolving policy refs in `plugins`."""
    cfg = cfg if cfg is not None else FlowControlConfig()
    fairness_default: FairnessPolicy = GlobalStrictFairness()
    ordering_default: OrderingPolicy = FcfsOrdering()
    usage_default: UsageLimitPolicy = StaticUsageLimit()

    def band(spec: Any, priority: int) -> BandSettings:
        fairness_ref = getattr(spec, "fairness_policy_ref", None) if spec is not None else None
        ordering_ref = getattr(spec, "ordering_policy_ref", None) if spec is not None else None
        max_bytes = getattr(spec, "max_bytes", None) if spec is not None else None
        max_requests = getattr(spec, "max_requests", None) if spec is not None else None
        return BandSettings(
            priority=priority,
            fairness=_resolve(
                plugins, fairness_ref, GLOBAL_STRICT, fairness_default, "pick", "fairness policy"
            ),
            ordering=_resolve(plugins, ordering_ref, FCFS, ordering_default, "sort_key", "ordering policy"),
            max_bytes=DEFAULT_BAND_MAX_BYTES if max_bytes is None else int(max_bytes),
            max_requests=0 if max_requests is None else int(max_requests),
        )

    template = band(cfg.default_priority_band, 0)
    bands: dict[int, BandSettings] = {}
    for spec in cfg.priority_bands:
        # a listed band inherits unset fields from the template, as upstream's band_for does
        merged = cfg.band_for(spec.priority)
        bands[spec.priority] = band(merged, spec.priority)
    usage = _resolve(
        plugins,
        cfg.usage_limit_policy_plugin_ref,
        STATIC_USAGE_LIMIT,
        usage_default,
        "compute_limits",
        "usage-limit policy",
    )
    return FlowControlSettings(
        usage_limit=usage,
        default_band=template,
        bands=bands,
        max_bytes=int(cfg.max_bytes or 0),
        max_requests=int(cfg.max_requests or 0),
        default_ttl=float(cfg.default_request_ttl or 0.0),
        dispatch_tick=dispatch_tick,
    )
