"""`prefill-header-handler` (and `disagg-headers-handler`): name the prefill endpoint for the decode side.

llm-d's `disagg_headers_handler.go` (both type names build the same plugin; deprecated there since
`disagg-profile-handler` sets the header itself, kept for configs that list it, e.g. those written for
`pd-profile-handler`). A pre-request hook: once the request is scheduled, the first target of the prefill
profile's result goes into `x-prefiller-host-port: ip:port` on the request forwarded to the decode endpoint;
without a prefill result the header is removed (a client's copy never reaches the model server).
`x-encoder-hosts-ports` is removed too (E/PD is not supported here).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from epp.framework.cycle import CycleState
from epp.framework.handle import Handle
from epp.framework.plugins import PluginKind
from epp.framework.types import InferenceRequest, SchedulingResult, TypedName
from epp.metadata import ENCODER_ENDPOINTS_HEADER
from epp.plugins.profile.disagg import DEFAULT_ENCODE_PROFILE, DEFAULT_PREFILL_PROFILE, set_prefill_header
from epp.registry import PluginType

__all__ = ["DISAGG_HEADERS_HANDLER", "PREFILL_HEADER_HANDLER", "PrefillHeaderHandler", "PrefillHeaderParams"]


class PrefillHeaderParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    prefillProfile: str = Field(
        default=DEFAULT_PREFILL_PROFILE,
        description="Name of the profile whose target is the prefill endpoint.",
    )
    encodeProfile: str = Field(
        default=DEFAULT_ENCODE_PROFILE, description="Name of the encode profile (E/PD; unused here)."
    )


@dataclass(frozen=True, slots=True)
class PrefillHeaderHandler:
    typed_name: TypedName
    prefill_profile: str = DEFAULT_PREFILL_PROFILE

    def pre_request(self, cycle: CycleState, request: InferenceRequest, result: SchedulingResult) -> None:
        set_prefill_header(result, self.prefill_profile)
        result.request_headers[ENCODER_ENDPOINTS_HEADER] = None


def _factory(type_name: str) -> Callable[[str, PrefillHeaderParams, Handle], PrefillHeaderHandler]:
    def build(name: str, params: PrefillHeaderParams, handle: Handle) -> PrefillHeaderHandler:
        return PrefillHeaderHandler(TypedName(type_name, name), params.prefillProfile)

    return build


PREFILL_HEADER_HANDLER = PluginType(
    type_name="prefill-header-handler",
    params_model=PrefillHeaderParams,
    factory=_factory("prefill-header-handler"),
    kinds=frozenset({PluginKind.PRE_REQUEST}),
    description="P/D: puts the prefill profile's endpoint into x-prefiller-host-port on the forwarded "
    "request.",
)

DISAGG_HEADERS_HANDLER = PluginType(
    type_name="disagg-headers-handler",
    params_model=PrefillHeaderParams,
    factory=_factory("disagg-headers-handler"),
    kinds=frozenset({PluginKind.PRE_REQUEST}),
    description="Same plugin as prefill-header-handler (llm-d's later name for it).",
)
