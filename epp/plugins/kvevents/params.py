"""Parameters of `precise-prefix-cache-producer`, and their all-optional twin on the scorer."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from epp.plugins.kvevents.llmd import (
    LLMD_KEYS,
    LlmdParams,
)

__all__ = ["PreciseParamOverrides", "PrecisePrefixParams"]

_D = {
    "kvEventsAddress": "ZMQ address template of each endpoint's KV-event publisher, e.g. tcp://{ip}:5557 "
    "({ip}, {port} = serving port, {eventPort} = serving port + kvEventsPortOffset); empty: none.",
    "kvEventsPortOffset": "Added to the endpoint's serving port to give {eventPort} in kvEventsAddress.",
    "kvEventsAddresses": "Explicit publisher address per endpoint (key or ip:port); wins over the template.",
    "discoverKvEventSources": "Ask endpoints without a configured address for GET /kv_event_sources "
    "(vllm-router's discovery format) in the background.",
    "topicFilter": "ZMQ subscription prefix (llm-d uses 'kv@'); empty subscribes to every topic.",
    "tokenizer": "How request token ids are obtained: 'request' = only token-id prompts; 'char4' = also "
    "text, cut as `epp sim`'s default tokenizer does (4 characters per token; Llama-3 chat template).",
    "blockSizeTokens": "Block size used until an endpoint's events or metrics report one.",
    "maxPrefixBlocksToMatch": "At most this many leading blocks are keyed and matched; 0 = unlimited.",
    "speculativeTtlSeconds": "How long at most a routed request's blocks count as cached before its engine "
    "confirms them with BlockStored (unconfirmed ones expire 2 s after the response ends); 0 = off.",
    "lruCapacityPerServer": "Blocks the approximate (routing-history) index remembers per endpoint when "
    "the endpoint reports no GPU block count.",
    "maxBlocksPerEndpoint": "Cap on the precise index's blocks per endpoint (bounds memory if removals "
    "are lost).",
    "otherTierWeight": "Weight of a block held on a non-GPU tier (CPU, disk) in the prefix score.",
    "resyncSeconds": "How often subscriptions are reconciled with the endpoints (and discovery retried).",
}


class PrecisePrefixParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kvEventsAddress: str = Field(default="", description=_D["kvEventsAddress"])
    kvEventsPortOffset: int = Field(default=0, ge=-65535, le=65535, description=_D["kvEventsPortOffset"])
    kvEventsAddresses: dict[str, str] = Field(default_factory=dict, description=_D["kvEventsAddresses"])
    discoverKvEventSources: bool = Field(default=False, description=_D["discoverKvEventSources"])
    topicFilter: str = Field(default="", description=_D["topicFilter"])
    tokenizer: Literal["char4", "request"] = Field(default="char4", description=_D["tokenizer"])
    blockSizeTokens: int = Field(default=16, gt=0, description=_D["blockSizeTokens"])
    maxPrefixBlocksToMatch: int = Field(default=256, ge=0, description=_D["maxPrefixBlocksToMatch"])
    speculativeTtlSeconds: float = Field(default=30.0, ge=0.0, description=_D["speculativeTtlSeconds"])
    lruCapacityPerServer: int = Field(default=31_250, gt=0, description=_D["lruCapacityPerServer"])
    maxBlocksPerEndpoint: int = Field(default=1 << 20, gt=0, description=_D["maxBlocksPerEndpoint"])
    otherTierWeight: float = Field(default=0.8, ge=0.0, le=1.0, description=_D["otherTierWeight"])
    resyncSeconds: float = Field(default=1.0, gt=0.0, description=_D["resyncSeconds"])

    @model_validator(mode="after")
    def _template_is_formattable(self) -> PrecisePrefixParams:
        if self.kvEventsAddress:
            try:
                self.kvEventsAddress.format(ip="10.0.0.1", port=8000, eventPort=8001)
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(
                    f"kvEventsAddress {self.kvEventsAddress!r}: only {{ip}}, {{port}} and {{eventPort}} "
                    f"can be used ({exc!r})"
                ) from None
        return self


class PreciseParamOverrides(LlmdParams):
    """The producer's keys, all optional: what a user wrote on `precise-prefix-cache-scorer`.

    llm-d's nested keys (`tokenProcessorConfig`, `indexerConfig`, `kvEventsConfig`, `speculativeIndexing`,
    `speculativeTTL`; declared by `LlmdParams` in `epp.plugins.kvevents.llmd`) are accepted beside them and
    mapped onto them;
    a flat key and an llm-d key that set the same thing is an error.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kvEventsAddress: str | None = Field(default=None, description=_D["kvEventsAddress"])
    kvEventsPortOffset: int | None = Field(default=None, description=_D["kvEventsPortOffset"])
    kvEventsAddresses: dict[str, str] | None = Field(default=None, description=_D["kvEventsAddresses"])
    discoverKvEventSources: bool | None = Field(default=None, description=_D["discoverKvEventSources"])
    topicFilter: str | None = Field(default=None, description=_D["topicFilter"])
    tokenizer: Literal["char4", "request"] | None = Field(default=None, description=_D["tokenizer"])
    blockSizeTokens: int | None = Field(default=None, description=_D["blockSizeTokens"])
    maxPrefixBlocksToMatch: int | None = Field(default=None, description=_D["maxPrefixBlocksToMatch"])
    speculativeTtlSeconds: float | None = Field(default=None, description=_D["speculativeTtlSeconds"])
    lruCapacityPerServer: int | None = Field(default=None, description=_D["lruCapacityPerServer"])
    maxBlocksPerEndpoint: int | None = Field(default=None, description=_D["maxBlocksPerEndpoint"])
    otherTierWeight: float | None = Field(default=None, description=_D["otherTierWeight"])
    resyncSeconds: float | None = Field(default=None, description=_D["resyncSeconds"])

    @model_validator(mode="after")
    def _valid_as_producer_params(self) -> PreciseParamOverrides:
        flat = self.flat_given()
        for key, (path, _) in self.explicit().items():
            if key in flat:
                raise ValueError(f"'{key}' and llm-d's '{path}' both set the same thing; keep one of them")
        given = self.given()
        if given:
            try:
                PrecisePrefixParams.model_validate(given)
            except ValidationError as exc:
                raise ValueError("; ".join(str(err["msg"]) for err in exc.errors())) from None
        return self

    def flat_given(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump(exclude_none=True).items() if k not in LLMD_KEYS}

    def given(self) -> dict[str, Any]:
        """The producer's parameters these stand for: llm-d's keys mapped (over llm-d's defaults when any
        is given), then the flat keys."""
        return {**self.flat(), **self.flat_given()}

    def producer_parameters(self) -> dict[str, Any] | None:
        """The loader forwards these to the producer it creates for the scorer (None: nothing given)."""
        return self.given() or None
