"""What every picker shares: the `maxNumOfEndpoints` parameter, the count and seeded random source, and
the registration of a picker type."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

from epp.framework.cycle import CycleState
from epp.framework.handle import Handle
from epp.framework.plugins import PluginKind
from epp.framework.types import InferenceRequest, ProfileRunResult, ScoredEndpoint, TypedName
from epp.plugins.common import derive_rng
from epp.registry import PluginType

__all__ = ["CountedPicker", "PickerParams", "picker_type"]


class PickerParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    maxNumOfEndpoints: int = Field(
        default=1,
        description="How many endpoints to return: the primary, then fallbacks in order; <= 0 means 1.",
    )

    @property
    def count(self) -> int:
        return self.maxNumOfEndpoints if self.maxNumOfEndpoints > 0 else 1


class CountedPicker:
    """A picker returning up to `count` targets, drawing from its own random source."""

    __slots__ = ("_rng", "count", "typed_name")

    def __init__(self, typed_name: TypedName, count: int = 1, rng: random.Random | None = None) -> None:
        self.typed_name = typed_name
        self.count = max(1, count)
        self._rng = rng or random.Random()


class _PickerClass(Protocol):
    def __call__(self, typed_name: TypedName, count: int = 1, rng: random.Random | None = None) -> _Picks: ...


class _Picks(Protocol):
    def pick(
        self, cycle: CycleState, request: InferenceRequest, scored: Sequence[ScoredEndpoint]
    ) -> ProfileRunResult: ...


def picker_type(type_name: str, cls: _PickerClass, description: str) -> PluginType[PickerParams]:
    """The registration of a `CountedPicker` subclass, built with a random source derived from the handle."""

    def factory(name: str, params: PickerParams, handle: Handle) -> _Picks:
        return cls(TypedName(type_name, name), params.count, derive_rng(handle))

    return PluginType(
        type_name=type_name,
        params_model=PickerParams,
        factory=factory,
        kinds=frozenset({PluginKind.PICKER}),
        description=description,
    )
