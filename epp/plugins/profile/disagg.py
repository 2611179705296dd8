"""P/D disaggregation profile handlers: `disagg-profile-handler` and the older `pd-profile-handler`.

llm-d's `profilehandler/disagg`. The scheduler calls the handler in a loop:

1. the decode profile runs first (default name `decode`);
2. if it found an endpoint, a prefill profile exists (default name `prefill`) and the configured decider
   says so for that decode endpoint, the prefill profile runs;
3. the result's primary profile is decode (the request goes to the decode endpoint); the prefill result is
   included when it ran and found an endpoint. No decode endpoint: the request fails with 503 `failed to
   find available decode workers`.

`disagg-profile-handler` is also a pre-request hook (as in llm-d): it puts the prefill endpoint's
`ip:port` into `x-prefiller-host-port` for the decode side, and removes a client's copy of the header
(and of `x-encoder-hosts-ports`) when there is none. `pd-profile-handler` is not: its configs list
`prefill-header-handler` for that, as llm-d's did. `pd-profile-handler` with `primaryPort` also routes to
that port of the decode pod and names the decode rank in `x-data-parallel-host-port` (data parallel).

Parameters, in llm-d's shapes: `disagg-profile-handler` takes `profiles: {decode, prefill, encode}` and
`deciders: {prefill, encode}`, or the deprecated flat `decodeProfile`, `prefillProfile`, `encodeProfile`,
`prefillDeciderPluginName`, `encodeDeciderPluginName`, `deciderPluginName` (not both shapes at once).
Without a prefill decider it never disaggregates. `pd-profile-handler` takes `decodeProfile`,
`prefillProfile`, `prefixPluginType`, `prefixPluginName` (accepted, unused: the decider reads the prefix
match from the cycle state), `primaryPort` and `deciderPluginName` (default `prefix-based-pd-decider`,
required to name a decider). E/PD (encode deciders) is not supported here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, model_validator

from epp.errors import ErrorCode, SchedulingError
from epp.framework.cycle import CycleState
from epp.framework.handle import Handle
from epp.framework.plugins import PluginKind
from epp.framework.types import InferenceRequest, ProfileRunResult, SchedulingResult, TypedName
from epp.metadata import (
    DATA_PARALLEL_ENDPOINT_HEADER,
    ENCODER_ENDPOINTS_HEADER,
    PREFILL_ENDPOINT_HEADER,
)
from epp.plugins.profile.data_parallel import to_primary_port
from epp.plugins.profile.deciders import PDDecider
from epp.registry import PluginType

__all__ = [
    "DISAGG_PROFILE_HANDLER",
    "PD_PROFILE_HANDLER",
    "DisaggProfileHandler",
    "DisaggProfileHandlerParams",
    "PdProfileHandlerParams",
    "set_prefill_header",
]

log = logging.getLogger(__name__)

DEFAULT_DECODE_PROFILE = "decode"
DEFAULT_PREFILL_PROFILE = "prefill"
DEFAULT_ENCODE_PROFILE = "encode"
DEFAULT_DECIDER = "prefix-based-pd-decider"

_FLAT = (
    "decodeProfile",
    "prefillProfile",
    "encodeProfile",
    "prefillDeciderPluginName",
    "encodeDeciderPluginName",
    "deciderPluginName",
)


class DisaggProfiles(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    decode: str = Field(default="", description="Name of the decode profile (default decode).")
    prefill: str = Field(default="", description="Name of the prefill profile (default prefill).")
    encode: str = Field(default="", description="Name of the encode profile (default encode; unused here).")


class DisaggDeciders(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    prefill: str = Field(
        default="", description="Name of the decider plugin that enables P/D (none: never disaggregate)."
    )
    encode: str = Field(default="", description="Name of the encode decider (E/PD; not supported here).")


class DisaggProfileHandlerParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    profiles: DisaggProfiles | None = Field(
        default=None, description="Profile names: decode, prefill, encode."
    )
    deciders: DisaggDeciders | None = Field(
        default=None, description="Decider plugin names: prefill (enables P/D), encode."
    )
    decodeProfile: str = Field(default="", description="Deprecated flat form of profiles.decode.")
    prefillProfile: str = Field(default="", description="Deprecated flat form of profiles.prefill.")
    encodeProfile: str = Field(default="", description="Deprecated flat form of profiles.encode.")
    prefillDeciderPluginName: str = Field(default="", description="Deprecated flat form of deciders.prefill.")
    encodeDeciderPluginName: str = Field(default="", description="Deprecated flat form of deciders.encode.")
    deciderPluginName: str = Field(
        default="", description="Deprecated (pd-profile-handler's name) form of deciders.prefill."
    )

    @model_validator(mode="after")
    def _one_shape(self) -> DisaggProfileHandlerParams:
        nested = (self.profiles is not None and self.profiles != DisaggProfiles()) or (
            self.deciders is not None and self.deciders != DisaggDeciders()
        )
        if nested and any(getattr(self, f) for f in _FLAT):
            raise ValueError(
                "cannot mix deprecated flat parameters (decodeProfile, prefillProfile, encodeProfile, "
                "deciderPluginName, prefillDeciderPluginName, encodeDeciderPluginName) with nested "
                "parameters (profiles, deciders): use one format or the other"
            )
        return self

    def resolved(self) -> tuple[str, str, str, str]:
        """(decode profile, prefill profile, prefill decider, encode decider), defaults applied."""
        profiles = self.profiles or DisaggProfiles()
        deciders = self.deciders or DisaggDeciders()
        decode = profiles.decode or self.decodeProfile or DEFAULT_DECODE_PROFILE
        prefill = profiles.prefill or self.prefillProfile or DEFAULT_PREFILL_PROFILE
        decider = deciders.prefill or self.prefillDeciderPluginName or self.deciderPluginName
        encode = deciders.encode or self.encodeDeciderPluginName
        return decode, prefill, decider, encode


class PdProfileHandlerParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    decodeProfile: str = Field(default=DEFAULT_DECODE_PROFILE, description="Name of the decode profile.")
    prefillProfile: str = Field(default=DEFAULT_PREFILL_PROFILE, description="Name of the prefill profile.")
    prefixPluginType: str = Field(
        default="prefix-cache-scorer", description="Accepted for compatibility; unused (see docs)."
    )
    prefixPluginName: str = Field(default="", description="Accepted for compatibility; unused (see docs).")
    primaryPort: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="Data parallel: send to this port of the decode pod and name the decode rank in "
        "x-data-parallel-host-port (0: off).",
    )
    deciderPluginName: str = Field(
        default=DEFAULT_DECIDER, min_length=1, description="Name of the decider plugin (required)."
    )


@dataclass(frozen=True, slots=True)
class DisaggProfileHandler:
    """ProfileHandler (+ PreRequest for `disagg-profile-handler`)."""

    typed_name: TypedName
    decode_profile: str = DEFAULT_DECODE_PROFILE
    prefill_profile: str = DEFAULT_PREFILL_PROFILE
    decider: PDDecider | None = None
    primary_port: int = 0

    def pick_profiles(
        self,
        cycle: CycleState,
        request: InferenceRequest,
        profiles: Sequence[str],
        results: Mapping[str, ProfileRunResult | None],
    ) -> Sequence[str]:
        decode = self.decode_profile
        if decode not in results:
            if decode not in profiles:
                log.error("%s: there is no decode profile named '%s'", self.typed_name, decode)
                return ()
            return (decode,)
        decoded = results[decode]
        if decoded is None or not decoded.targets:
            return ()
        prefill = self.prefill_profile
        if prefill in results or prefill not in profiles or self.decider is None:
            return ()
        if self.decider.disaggregate(cycle, request, decoded.targets[0]):
            return (prefill,)
        return ()

    def process_results(
        self,
        cycle: CycleState,
        request: InferenceRequest,
        results: Mapping[str, ProfileRunResult | None],
    ) -> SchedulingResult:
        decoded = results.get(self.decode_profile)
        if decoded is None or not decoded.targets:
            raise SchedulingError(ErrorCode.SERVICE_UNAVAILABLE, "failed to find available decode workers")
        headers: dict[str, str | None] = {}
        if self.primary_port:
            decoded, rank = to_primary_port(decoded, self.primary_port)
            headers[DATA_PARALLEL_ENDPOINT_HEADER] = rank
        out: dict[str, ProfileRunResult | None] = {self.decode_profile: decoded}
        prefilled = results.get(self.prefill_profile)
        if prefilled is not None:
            out[self.prefill_profile] = prefilled
        return SchedulingResult(
            primary_profile=self.decode_profile, profile_results=out, request_headers=headers
        )

    def pre_request(self, cycle: CycleState, request: InferenceRequest, result: SchedulingResult) -> None:
        set_prefill_header(result, self.prefill_profile)
        result.request_headers[ENCODER_ENDPOINTS_HEADER] = None


def set_prefill_header(result: SchedulingResult, prefill_profile: str) -> None:
    """`x-prefiller-host-port: ip:port` of the prefill profile's first target; removed when there is none."""
    prefilled = result.profile_results.get(prefill_profile)
    if prefilled is not None and prefilled.targets:
        result.request_headers[PREFILL_ENDPOINT_HEADER] = prefilled.targets[0].address
    else:
        result.request_headers[PREFILL_ENDPOINT_HEADER] = None


def _decider(handle: Handle, name: str) -> PDDecider:
    plugin = handle.plugin(name)  # KeyError: reported as "no plugin named ... declared before it"
    if not isinstance(plugin, PDDecider):
        raise ValueError(f"plugin '{name}' is not a P/D decider (e.g. prefix-based-pd-decider)")
    return plugin


def _disagg_factory(name: str, params: DisaggProfileHandlerParams, handle: Handle) -> DisaggProfileHandler:
    decode, prefill, decider_name, encode = params.resolved()
    if encode:
        raise ValueError("encode disaggregation (deciders.encode) is not supported by this EPP")
    decider = _decider(handle, decider_name) if decider_name else None
    if decider is None:
        log.info("%s: no deciders.prefill configured, P/D disaggregation disabled", name)
    return DisaggProfileHandler(TypedName("disagg-profile-handler", name), decode, prefill, decider)


def _pd_factory(name: str, params: PdProfileHandlerParams, handle: Handle) -> DisaggProfileHandler:
    log.info("pd-profile-handler is deprecated in llm-d: use disagg-profile-handler")
    return DisaggProfileHandler(
        TypedName("pd-profile-handler", name),
        params.decodeProfile,
        params.prefillProfile,
        _decider(handle, params.deciderPluginName),
        params.primaryPort,
    )


DISAGG_PROFILE_HANDLER = PluginType(
    type_name="disagg-profile-handler",
    params_model=DisaggProfileHandlerParams,
    factory=_disagg_factory,
    kinds=frozenset({PluginKind.PROFILE_HANDLER, PluginKind.PRE_REQUEST}),
    description="P/D: runs the decode profile, then the prefill profile when the decider says so; sends to "
    "decode and names the prefill endpoint in x-prefiller-host-port.",
)

PD_PROFILE_HANDLER = PluginType(
    type_name="pd-profile-handler",
    params_model=PdProfileHandlerParams,
    factory=_pd_factory,
    kinds=frozenset({PluginKind.PROFILE_HANDLER}),
    description="Older llm-d name of the P/D handler (flat parameters, optional data-parallel primaryPort); "
    "pair it with prefill-header-handler.",
)
