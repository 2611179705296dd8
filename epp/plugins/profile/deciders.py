"""P/D deciders: whether a request that has its decode endpoint should also get a remote prefill.

llm-d's `deciderPlugin`s (`profilehandler/disagg`): plugins of their own that a disaggregation profile
handler names in its parameters (`deciders.prefill`, or `deciderPluginName` in the older shapes). They
fill no extension point of the scheduler, so their types declare no kind; the handler calls
`disaggregate(cycle, request, decode_endpoint)` once the decode profile has picked.

- `prefix-based-pd-decider`: disaggregate when the part of the prompt the decode endpoint does not hold
  is at least `nonCachedTokens` tokens (0 disables: never);
- `always-disagg-pd-decider`: always.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from epp.framework.cycle import CycleState
from epp.framework.handle import Handle
from epp.framework.types import Endpoint, InferenceRequest, TypedName
from epp.plugins.datakeys import PREFIX_CACHE_MATCH_INFO, PREFIX_CACHE_MATCH_INFO_KEY
from epp.registry import EmptyParams, PluginType

__all__ = [
    "ALWAYS_DISAGG_PD_DECIDER",
    "AVERAGE_CHARACTERS_PER_TOKEN",
    "PREFIX_BASED_PD_DECIDER",
    "AlwaysDisaggPDDecider",
    "PDDecider",
    "PrefixBasedPDDecider",
    "PrefixBasedPDDeciderParams",
    "input_tokens",
]

log = logging.getLogger(__name__)

#: llm-d's estimate: the request is not tokenized, so 4 characters count as one token.
AVERAGE_CHARACTERS_PER_TOKEN = 4


@runtime_checkable
class PDDecider(Protocol):
    """Decides per request whether the disaggregated stage runs (llm-d's `deciderPlugin`)."""

    @property
    def typed_name(self) -> TypedName: ...

    def disaggregate(self, cycle: CycleState, request: InferenceRequest, endpoint: Endpoint) -> bool: ...


def input_tokens(request: InferenceRequest) -> int:
    """llm-d's `getUserInputLenInTokens`: bytes of the completions prompt, or of the chat messages as
    compact JSON, over 4. Other request kinds (token ids, responses API) fall back to the bytes the
    prefix plugins hash (llm-d declines to disaggregate them)."""
    if request.prompt is not None:
        size = len(request.prompt.encode())
    elif request.messages is not None:
        size = len(json.dumps(list(request.messages), separators=(",", ":"), ensure_ascii=False).encode())
    else:
        size = len(request.prefix_material)
    return size // AVERAGE_CHARACTERS_PER_TOKEN


class PrefixBasedPDDeciderParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    nonCachedTokens: int = Field(
        default=0,
        ge=0,
        description="Disaggregate when at least this many prompt tokens are not cached on the decode "
        "endpoint; 0 disables the decider (never disaggregate).",
    )


@dataclass(frozen=True, slots=True)
class PrefixBasedPDDecider:
    typed_name: TypedName
    non_cached_tokens: int = 0

    def disaggregate(self, cycle: CycleState, request: InferenceRequest, endpoint: Endpoint) -> bool:
        threshold = self.non_cached_tokens
        if threshold == 0:
            return False
        tokens = input_tokens(request)
        if tokens < threshold:
            return False
        info = cycle.read(PREFIX_CACHE_MATCH_INFO_KEY)
        if info is None:
            log.error("prefix-based-pd-decider: no prefix-cache match for request %s", request.request_id)
            return False
        cached = info.match_blocks(endpoint.key) * info.block_size(endpoint.key)
        return tokens - cached >= threshold


@dataclass(frozen=True, slots=True)
class AlwaysDisaggPDDecider:
    typed_name: TypedName

    def disaggregate(self, cycle: CycleState, request: InferenceRequest, endpoint: Endpoint) -> bool:
        return True


def _prefix_factory(name: str, params: PrefixBasedPDDeciderParams, handle: Handle) -> PrefixBasedPDDecider:
    if params.nonCachedTokens == 0:
        log.info("prefix-based-pd-decider %s: nonCachedTokens is 0, P/D disaggregation is disabled", name)
    return PrefixBasedPDDecider(TypedName("prefix-based-pd-decider", name), params.nonCachedTokens)


def _always_factory(name: str, params: EmptyParams, handle: Handle) -> AlwaysDisaggPDDecider:
    return AlwaysDisaggPDDecider(TypedName("always-disagg-pd-decider", name))


PREFIX_BASED_PD_DECIDER = PluginType(
    type_name="prefix-based-pd-decider",
    params_model=PrefixBasedPDDeciderParams,
    factory=_prefix_factory,
    kinds=frozenset(),
    description="P/D decider: remote prefill when the prompt's part not cached on the decode endpoint is "
    "at least nonCachedTokens.",
    consumes=frozenset({PREFIX_CACHE_MATCH_INFO}),
)

ALWAYS_DISAGG_PD_DECIDER = PluginType(
    type_name="always-disagg-pd-decider",
    params_model=EmptyParams,
    factory=_always_factory,
    kinds=frozenset(),
    description="P/D decider: remote prefill for every request.",
)
