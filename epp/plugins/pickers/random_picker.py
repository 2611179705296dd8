"""`random-picker`: uniform random targets, ignoring scores."""

from __future__ import annotations

import random
from collections.abc import Sequence

from epp.framework.cycle import CycleState
from epp.framework.types import Endpoint, InferenceRequest, ProfileRunResult, ScoredEndpoint
from epp.plugins.pickers.base import CountedPicker, picker_type

__all__ = ["RANDOM_PICKER", "RandomPicker", "random_targets"]

TYPE_NAME = "random-picker"


class RandomPicker(CountedPicker):
    __slots__ = ()

    def pick(
        self, cycle: CycleState, request: InferenceRequest, scored: Sequence[ScoredEndpoint]
    ) -> ProfileRunResult:
        return ProfileRunResult(random_targets(self._rng, scored, self.count))


def random_targets(rng: random.Random, scored: Sequence[ScoredEndpoint], count: int) -> tuple[Endpoint, ...]:
    """`count` distinct endpoints in uniformly random order."""
    n = len(scored)
    if n == 0:
        return ()
    if count == 1:
        return (scored[rng.randrange(n)].endpoint,)
    return tuple(s.endpoint for s in rng.sample(list(scored), min(count, n)))


RANDOM_PICKER = picker_type(TYPE_NAME, RandomPicker, "Picks endpoints uniformly at random, ignoring scores.")
