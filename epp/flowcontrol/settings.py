"""The flow controller's runtime settings: limits, TTL, bands with their resolved policy instances."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

from epp.flowcontrol.band import DEFAULT_BAND_MAX_BYTES, BandSettings
from epp.framework.flowcontrol import FairnessPolicy, OrderingPolicy, UsageLimitPolicy

__all__ = ["DEFAULT_DISPATCH_TICK", "FlowControlSettings"]

#: How often a blocked (saturated) dispatcher re-reads saturation when nothing else wakes it.
DEFAULT_DISPATCH_TICK = 0.01


@dataclass(frozen=True)
class FlowControlSettings:
    """Everything the controller needs; 0 means "no limit" for the byte and request limits.

    `default_band` is the template for priorities not listed in `bands` (its `priority` is ignored).
    `default_ttl` of 0 means no TTL: a request waits until dispatched or its client goes away.
    """

    usage_limit: UsageLimitPolicy
    default_band: BandSettings
    bands: Mapping[int, BandSettings] = field(default_factory=dict)
    max_bytes: int = 0
    max_requests: int = 0
    default_ttl: float = 0.0
    dispatch_tick: float = DEFAULT_DISPATCH_TICK

    def band_for(self, priority: int) -> tuple[BandSettings, bool]:
        """The settings of `priority`'s band and whether it is listed (else made from the template)."""
        listed = self.bands.get(priority)
        if listed is not None:
            return listed, True
        return dataclasses.replace(self.default_band, priority=priority), False

    @staticmethod
    def simple(
        fairness: FairnessPolicy,
        ordering: OrderingPolicy,
        usage_limit: UsageLimitPolicy,
        *,
        max_bytes: int = 0,
        max_requests: int = 0,
        default_ttl: float = 0.0,
        band_max_bytes: int = DEFAULT_BAND_MAX_BYTES,
        band_max_requests: int = 0,
        dispatch_tick: float = DEFAULT_DISPATCH_TICK,
    ) -> FlowControlSettings:
        """One policy pair for every band (tests and programmatic use)."""
        template = BandSettings(0, fairness, ordering, band_max_bytes, band_max_requests)
        return FlowControlSettings(
            usage_limit=usage_limit,
            default_band=template,
            max_bytes=max_bytes,
            max_requests=max_requests,
            default_ttl=default_ttl,
            dispatch_tick=dispatch_tick,
        )
