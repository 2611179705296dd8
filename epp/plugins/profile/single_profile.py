"""`single-profile-handler`: run the one configured profile; its result is the primary one."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from epp.errors import ErrorCode, SchedulingError
from epp.framework.cycle import CycleState
from epp.framework.handle import Handle
from epp.framework.plugins import PluginKind
from epp.framework.types import InferenceRequest, ProfileRunResult, SchedulingResult, TypedName
from epp.registry import EmptyParams, PluginType

__all__ = ["SINGLE_PROFILE_HANDLER", "SingleProfileHandler"]

TYPE_NAME = "single-profile-handler"


@dataclass(frozen=True, slots=True)
class SingleProfileHandler:
    typed_name: TypedName

    def pick_profiles(
        self,
        cycle: CycleState,
        request: InferenceRequest,
        profiles: Sequence[str],
        results: Mapping[str, ProfileRunResult | None],
    ) -> Sequence[str]:
        if len(results) >= len(profiles):
            return ()
        return [p for p in profiles if p not in results]

    def process_results(
        self,
        cycle: CycleState,
        request: InferenceRequest,
        results: Mapping[str, ProfileRunResult | None],
    ) -> SchedulingResult:
        if len(results) != 1:
            raise SchedulingError(
                ErrorCode.INTERNAL,
                f"single profile handler expects exactly one profile result, got {len(results)}",
            )
        ((name, result),) = results.items()
        if result is None:
            raise SchedulingError(ErrorCode.SERVICE_UNAVAILABLE, f"failed to run scheduler profile '{name}'")
        return SchedulingResult(primary_profile=name, profile_results={name: result})


def _factory(name: str, params: EmptyParams, handle: Handle) -> SingleProfileHandler:
    return SingleProfileHandler(TypedName(TYPE_NAME, name))


SINGLE_PROFILE_HANDLER = PluginType(
    type_name=TYPE_NAME,
    params_model=EmptyParams,
    factory=_factory,
    kinds=frozenset({PluginKind.PROFILE_HANDLER}),
    description="Runs the single scheduling profile; fails the request when that profile found no target.",
)
