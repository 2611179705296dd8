"""A Schmitt trigger on the saturation signal, so the saturated state does not flap (upstream has none).

Once the raw saturation of an endpoint set reaches 1.0 the set is *latched*: while latched, the reported
saturation is `max(raw, 1.0)` until the raw value falls below `1.0 - band`, which unlatches it. With
`band == 0` the raw value passes through unchanged (upstream behaviour).

State is kept per endpoint set (the tuple of endpoint keys the detector was asked about), because the
detector is asked about different sets: the whole pool by the flow controller, a subset-hinted candidate
list by admission. Only latched sets are remembered (a small LRU), so the state is bounded and a call
costs one tuple hash. The update runs synchronously on the request path: no timers, no I/O.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from epp.framework.types import Endpoint

__all__ = ["SaturationLatch"]

#: More latched endpoint sets than this are forgotten least-recently-used first.
MAX_LATCHED_SETS = 256


class SaturationLatch:
    def __init__(self, band: float, max_sets: int = MAX_LATCHED_SETS) -> None:
        if not 0.0 <= band < 1.0:
            raise ValueError(f"hysteresis band must be in [0, 1), got {band}")
        self.band = band
        self._max_sets = max_sets
        self._latched: OrderedDict[tuple[str, ...], None] = OrderedDict()

    def apply(self, endpoints: Sequence[Endpoint], raw: float) -> float:
        """The saturation to report for `endpoints` given its raw value now."""
        if self.band <= 0.0:
            return raw
        key = tuple(e.key for e in endpoints)
        latched = self._latched
        if raw >= 1.0:
            latched[key] = None
            latched.move_to_end(key)
            if len(latched) > self._max_sets:
                latched.popitem(last=False)
            return raw
        if key not in latched:
            return raw
        if raw < 1.0 - self.band:
            del latched[key]
            return raw
        latched.move_to_end(key)
        return 1.0

    def is_latched(self, endpoints: Sequence[Endpoint]) -> bool:
        return tuple(e.key for e in endpoints) in self._latched

    def __len__(self) -> int:
        return len(self._latched)
