"""`random-picker`: uniform random targets, ignoring scores."""

from __future__ import annotations

import random
from collections.abc import Sequence

from epp.framework.cycle import CycleState
from epp.framework.handle import Handle
from epp.framework.plugins import PluginKind
from epp.framework.types import Endpoint, InferenceRequest, ProfileRunResult, ScoredEndpoint, TypedName
from epp.plugins.common import derive_rng
from epp.plugins.pickers.params import PickerParams
from epp.registry import PluginType

__all__ = ["RANDOM_PICKER", "RandomPicker", "random_targets"]

TYPE_NAME = "random-picker"


class RandomPicker:
    __slots__ = ("_rng", "count", "typed_name")

    def __init__(self, typed_name: TypedName, count: int = 1, rng: random.Random | None = None) -> None:
        self.typed_name = typed_name
        self.count = max(1, count)
        self._rng = rng or random.Random()

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


def _factory(name: str, params: PickerParams, handle: Handle) -> RandomPicker:
    return RandomPicker(TypedName(TYPE_NAME, name), params.count, derive_rng(handle))


RANDOM_PICKER = PluginType(
    type_name=TYPE_NAME,
    params_model=PickerParams,
    factory=_factory,
    kinds=frozenset({PluginKind.PICKER}),
    description="Picks endpoints uniformly at random, ignoring scores.",
)
