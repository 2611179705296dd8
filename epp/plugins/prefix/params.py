"""Parameters of the approximate prefix-cache index, shared by the producer and `prefix-cache-scorer`.

Names are upstream's YAML keys across versions: `blockSizeTokens` (current), `blockSize` (deprecated,
characters) and `hashBlockSize` (v0.5, characters). Character sizes are converted at 4 characters per token.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from epp.plugins.prefix.hashing import AVERAGE_CHARS_PER_TOKEN

__all__ = [
    "DEFAULT_BLOCK_SIZE_TOKENS",
    "DEFAULT_LRU_CAPACITY_PER_SERVER",
    "DEFAULT_MAX_PREFIX_BLOCKS",
    "PrefixCacheParams",
    "PrefixIndexParamOverrides",
]

DEFAULT_BLOCK_SIZE_TOKENS = 16
DEFAULT_MAX_PREFIX_BLOCKS = 256
#: (80 GB - 16 GB) / 128 KB per token ~ 500K tokens / 16 tokens per block, as upstream.
DEFAULT_LRU_CAPACITY_PER_SERVER = 31_250

_DESCRIPTIONS = {
    "autoTune": "Take each endpoint's block size from its `vllm:cache_config_info` block_size and its LRU "
    "capacity from num_gpu_blocks when the model server reports them.",
    "blockSizeTokens": "Block size in tokens (4 characters per token) when not auto-tuned; default 16.",
    "blockSize": "Deprecated: block size in characters; use blockSizeTokens.",
    "hashBlockSize": "v0.5 name of the block size in characters; use blockSizeTokens.",
    "maxPrefixBlocksToMatch": "At most this many leading blocks are hashed and matched; 0 = unlimited.",
    "maxPrefixTokensToMatch": "If > 0, overrides maxPrefixBlocksToMatch as a token budget "
    "(tokens / block size).",
    "lruCapacityPerServer": "Blocks remembered per endpoint when its GPU block count is unknown (or "
    "autoTune is off).",
}


def _chars_to_tokens(chars: int) -> int:
    return max(1, chars // AVERAGE_CHARS_PER_TOKEN)


class PrefixCacheParams(BaseModel):
    """Parameters of `approx-prefix-cache-producer`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    autoTune: bool = Field(default=True, description=_DESCRIPTIONS["autoTune"])
    blockSizeTokens: int | None = Field(default=None, gt=0, description=_DESCRIPTIONS["blockSizeTokens"])
    blockSize: int | None = Field(
        default=None, gt=0, description=_DESCRIPTIONS["blockSize"], json_schema_extra={"deprecated": True}
    )
    hashBlockSize: int | None = Field(
        default=None,
        gt=0,
        description=_DESCRIPTIONS["hashBlockSize"],
        json_schema_extra={"deprecated": True},
    )
    maxPrefixBlocksToMatch: int = Field(
        default=DEFAULT_MAX_PREFIX_BLOCKS, ge=0, description=_DESCRIPTIONS["maxPrefixBlocksToMatch"]
    )
    maxPrefixTokensToMatch: int = Field(default=0, ge=0, description=_DESCRIPTIONS["maxPrefixTokensToMatch"])
    lruCapacityPerServer: int = Field(
        default=DEFAULT_LRU_CAPACITY_PER_SERVER, gt=0, description=_DESCRIPTIONS["lruCapacityPerServer"]
    )

    @model_validator(mode="after")
    def _consistent_char_sizes(self) -> PrefixCacheParams:
        if (
            self.blockSize is not None
            and self.hashBlockSize is not None
            and self.blockSize != self.hashBlockSize
        ):
            raise ValueError(
                f"blockSize ({self.blockSize}) and hashBlockSize ({self.hashBlockSize}) disagree; "
                "set blockSizeTokens instead"
            )
        return self

    @property
    def block_size_tokens(self) -> int:
        """The configured block size in tokens (used when not auto-tuned or not reported)."""
        if self.blockSizeTokens is not None:
            return self.blockSizeTokens
        chars = self.blockSize if self.blockSize is not None else self.hashBlockSize
        if chars is not None:
            return _chars_to_tokens(chars)
        return DEFAULT_BLOCK_SIZE_TOKENS

    def max_blocks(self, block_size_tokens: int) -> int:
        """How many leading blocks to hash at this block size (0 = unlimited)."""
        if self.maxPrefixTokensToMatch > 0:
            return max(1, self.maxPrefixTokensToMatch // block_size_tokens)
        return self.maxPrefixBlocksToMatch


class PrefixIndexParamOverrides(BaseModel):
    """The same keys as `PrefixCacheParams`, all optional: what a user wrote on `prefix-cache-scorer`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    autoTune: bool | None = Field(default=None, description=_DESCRIPTIONS["autoTune"])
    blockSizeTokens: int | None = Field(default=None, gt=0, description=_DESCRIPTIONS["blockSizeTokens"])
    blockSize: int | None = Field(
        default=None, gt=0, description=_DESCRIPTIONS["blockSize"], json_schema_extra={"deprecated": True}
    )
    hashBlockSize: int | None = Field(
        default=None,
        gt=0,
        description=_DESCRIPTIONS["hashBlockSize"],
        json_schema_extra={"deprecated": True},
    )
    maxPrefixBlocksToMatch: int | None = Field(
        default=None, ge=0, description=_DESCRIPTIONS["maxPrefixBlocksToMatch"]
    )
    maxPrefixTokensToMatch: int | None = Field(
        default=None, ge=0, description=_DESCRIPTIONS["maxPrefixTokensToMatch"]
    )
    lruCapacityPerServer: int | None = Field(
        default=None, gt=0, description=_DESCRIPTIONS["lruCapacityPerServer"]
    )

    @model_validator(mode="after")
    def _valid_as_producer_params(self) -> PrefixIndexParamOverrides:
        given = self.given()
        if given:
            try:
                PrefixCacheParams.model_validate(given)
            except ValidationError as exc:
                raise ValueError("; ".join(str(err["msg"]) for err in exc.errors())) from None
        return self

    def given(self) -> dict[str, Any]:
        """The keys that were set, as YAML names."""
        return self.model_dump(exclude_none=True)
