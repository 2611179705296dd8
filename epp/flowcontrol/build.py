"""Turn a validated `flowControl` config section into controller settings with policy instances.

Policy references name plugin instances (the loader declares the default policies and checks every
reference). A reference the pipeline cannot satisfy (an upstream policy type this build lacks, which the
loader reports as a warning) falls back to the default policy of its kind: the plugin declared under the
default type name, else the instance of `DefaultPolicies` the caller supplies (`epp.builtins`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, TypeVar

from epp.config.api import FlowControlConfig
from epp.config.defaults import DEFAULT_FAIRNESS_POLICY, DEFAULT_ORDERING_POLICY, DEFAULT_USAGE_LIMIT_POLICY
from epp.flowcontrol.band import DEFAULT_BAND_MAX_BYTES, BandSettings
from epp.flowcontrol.settings import DEFAULT_DISPATCH_TICK, FlowControlSettings
from epp.framework.flowcontrol import DefaultPolicies

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
    defaults: DefaultPolicies,
    *,
    dispatch_tick: float = DEFAULT_DISPATCH_TICK,
) -> FlowControlSettings:
    """Controller settings for `cfg` (None = every default), resolving policy refs in `plugins`."""
    cfg = cfg if cfg is not None else FlowControlConfig()

    def band(spec: Any, priority: int) -> BandSettings:
        fairness_ref = getattr(spec, "fairness_policy_ref", None) if spec is not None else None
        ordering_ref = getattr(spec, "ordering_policy_ref", None) if spec is not None else None
        max_bytes = getattr(spec, "max_bytes", None) if spec is not None else None
        max_requests = getattr(spec, "max_requests", None) if spec is not None else None
        return BandSettings(
            priority=priority,
            fairness=_resolve(
                plugins, fairness_ref, DEFAULT_FAIRNESS_POLICY, defaults.fairness, "pick", "fairness policy"
            ),
            ordering=_resolve(
                plugins,
                ordering_ref,
                DEFAULT_ORDERING_POLICY,
                defaults.ordering,
                "sort_key",
                "ordering policy",
            ),
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
        DEFAULT_USAGE_LIMIT_POLICY,
        defaults.usage_limit,
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
