"""`static-usage-limit-policy`: the same saturation ceiling for every priority band.

A band dispatches only while pool saturation < its ceiling. The default threshold 1.0 means "dispatch
while the detector says the pool is not saturated"; a lower threshold keeps headroom in the pool.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from epp.framework.handle import Handle
from epp.framework.plugins import PluginKind
from epp.framework.types import TypedName
from epp.registry import PluginType

__all__ = ["STATIC_USAGE_LIMIT_POLICY", "StaticUsageLimit", "StaticUsageLimitParams"]

TYPE_NAME = "static-usage-limit-policy"

_DEFAULT_NAME = TypedName(TYPE_NAME, TYPE_NAME)


class StaticUsageLimitParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    threshold: float = Field(
        default=1.0,
        gt=0.0,
        description="Saturation ceiling for every band: dispatch while saturation < threshold.",
    )


@dataclass(frozen=True, slots=True)
class StaticUsageLimit:
    typed_name: TypedName = _DEFAULT_NAME
    threshold: float = 1.0

    def compute_limits(self, saturation: float, priorities: Sequence[int]) -> Mapping[int, float]:
        return dict.fromkeys(priorities, self.threshold)


def _factory(name: str, params: StaticUsageLimitParams, handle: Handle) -> StaticUsageLimit:
    return StaticUsageLimit(TypedName(TYPE_NAME, name), params.threshold)


STATIC_USAGE_LIMIT_POLICY = PluginType(
    type_name=TYPE_NAME,
    params_model=StaticUsageLimitParams,
    factory=_factory,
    kinds=frozenset({PluginKind.USAGE_LIMIT_POLICY}),
    description="Flow control: one saturation ceiling (threshold, default 1.0) for every priority band.",
)
