"""`weighted-random-picker`: random targets with probability proportional to the weighted total.

A-Res (Efraimidis-Spirakis): each endpoint draws `key = U^(1/score)` with U uniform in (0, 1); the largest
keys win, so for one target P(endpoint) = score / sum(scores). Endpoints scoring <= 0 get key 0 (picked
only to fill up the count); when nothing scores above 0 the pick is uniform.
"""

from __future__ import annotations

from collections.abc import Sequence

from epp.framework.cycle import CycleState
from epp.framework.types import InferenceRequest, ProfileRunResult, ScoredEndpoint
from epp.plugins.pickers.base import CountedPicker, picker_type
from epp.plugins.pickers.random_picker import random_targets

__all__ = ["WEIGHTED_RANDOM_PICKER", "WeightedRandomPicker"]

TYPE_NAME = "weighted-random-picker"

_MIN_U = 1e-10


class WeightedRandomPicker(CountedPicker):
    __slots__ = ()

    def pick(
        self, cycle: CycleState, request: InferenceRequest, scored: Sequence[ScoredEndpoint]
    ) -> ProfileRunResult:
        rand = self._rng.random
        keyed: list[tuple[float, int]] = []
        for i, s in enumerate(scored):
            score = s.score
            if score > 0.0:
                u = rand() or _MIN_U
                keyed.append((u ** (1.0 / score), i))
        if not keyed:
            return ProfileRunResult(random_targets(self._rng, scored, self.count))
        count = self.count
        if count == 1:
            return ProfileRunResult((scored[max(keyed)[1]].endpoint,))
        keyed.sort(reverse=True)
        picked = [scored[i].endpoint for _, i in keyed[:count]]
        if len(picked) < count:  # fill up with the zero-score endpoints, in random order
            chosen = {i for _, i in keyed}
            rest = [s for i, s in enumerate(scored) if i not in chosen]
            picked.extend(random_targets(self._rng, rest, count - len(picked)))
        return ProfileRunResult(tuple(picked))


WEIGHTED_RANDOM_PICKER = picker_type(
    TYPE_NAME,
    WeightedRandomPicker,
    "Picks endpoints at random with probability proportional to their weighted totals (A-Res).",
)
