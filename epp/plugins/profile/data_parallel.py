"""`data-parallel-profile-handler`: route to a data-parallel rank through the pod's primary port.

llm-d's `dataparallel/dp_profile_handler.go` (deprecated there in favour of `single-profile-handler` with
Istio >= 1.28.1, kept for older gateways). A data-parallel vLLM pod serves one rank per port; the EPP sees
every rank as an endpoint (`ip:rank-port`) and schedules among them with the one configured profile. The
gateway, however, may only reach the pod's primary port, where llm-d's sidecar listens: so the handler
sends the request to `ip:primaryPort` and names the chosen rank in `x-data-parallel-host-port:
ip:rank-port`, which the sidecar forwards to.

- `pick_profiles`: the single profile, once. With more than one profile configured nothing runs and the
  request fails (llm-d logs the same error and returns no profile).
- `process_results`: the profile's targets with their port replaced by `primaryPort` (keys unchanged, so
  the prefix index still records the rank), the header set to the first target's original address.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from epp.errors import ErrorCode, SchedulingError
from epp.framework.cycle import CycleState
from epp.framework.handle import Handle
from epp.framework.plugins import PluginKind
from epp.framework.types import InferenceRequest, ProfileRunResult, SchedulingResult, TypedName
from epp.metadata import DATA_PARALLEL_ENDPOINT_HEADER
from epp.registry import PluginType

__all__ = [
    "DATA_PARALLEL_PROFILE_HANDLER",
    "DataParallelParams",
    "DataParallelProfileHandler",
    "to_primary_port",
]

log = logging.getLogger(__name__)

TYPE_NAME = "data-parallel-profile-handler"


def to_primary_port(result: ProfileRunResult, port: int) -> tuple[ProfileRunResult, str]:
    """The targets moved to `port` (same keys) and the original address of the first target."""
    rank = result.targets[0].address
    moved = tuple(dataclasses.replace(e, port=port) for e in result.targets)
    return ProfileRunResult(moved), rank


class DataParallelParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    primaryPort: int = Field(
        default=8000,
        ge=1,
        le=65535,
        description="The pod port the gateway sends to (the sidecar's); the chosen rank's ip:port goes "
        "into x-data-parallel-host-port.",
    )


@dataclass(frozen=True, slots=True)
class DataParallelProfileHandler:
    typed_name: TypedName
    primary_port: int = 8000

    def pick_profiles(
        self,
        cycle: CycleState,
        request: InferenceRequest,
        profiles: Sequence[str],
        results: Mapping[str, ProfileRunResult | None],
    ) -> Sequence[str]:
        if len(results) >= len(profiles):
            return ()
        if len(profiles) != 1:
            log.error("%s requires exactly one scheduling profile, got %d", self.typed_name, len(profiles))
            return ()
        return tuple(profiles)

    def process_results(
        self,
        cycle: CycleState,
        request: InferenceRequest,
        results: Mapping[str, ProfileRunResult | None],
    ) -> SchedulingResult:
        if len(results) != 1:
            raise SchedulingError(
                ErrorCode.INTERNAL,
                "data parallel profile handler is intended to be used with a single profile, "
                f"got {len(results)} profile results",
            )
        ((name, result),) = results.items()
        if result is None or not result.targets:
            raise SchedulingError(ErrorCode.SERVICE_UNAVAILABLE, f"failed to run scheduler profile '{name}'")
        moved, rank = to_primary_port(result, self.primary_port)
        return SchedulingResult(
            primary_profile=name,
            profile_results={name: moved},
            request_headers={DATA_PARALLEL_ENDPOINT_HEADER: rank},
        )


def _factory(name: str, params: DataParallelParams, handle: Handle) -> DataParallelProfileHandler:
    return DataParallelProfileHandler(TypedName(TYPE_NAME, name), params.primaryPort)


DATA_PARALLEL_PROFILE_HANDLER = PluginType(
    type_name=TYPE_NAME,
    params_model=DataParallelParams,
    factory=_factory,
    kinds=frozenset({PluginKind.PROFILE_HANDLER}),
    description="Data parallel: runs the single profile, sends to the pod's primaryPort and names the chosen "
    "rank in x-data-parallel-host-port.",
)
