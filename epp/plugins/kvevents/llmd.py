"""llm-d's nested parameters of `precise-prefix-cache-scorer`, mapped onto our flat ones.

llm-d's scorer (llm-d-router, configured through llm-d-kv-cache v0.8's structs) takes
`tokenProcessorConfig`, `indexerConfig`, `kvEventsConfig`, `speculativeIndexing` and `speculativeTTL`.
What has an equivalent here is mapped (`LlmdParams.flat()`); what has none is refused at its own path
with the reason, never silently ignored. The defaults are llm-d's when any of these keys is given: KV
events from `tcp://{ip}:5557` with topic filter `kv@` (`discoverPods: true`), no speculative entries.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from epp.units import parse_duration

__all__ = ["LLMD_KEYS", "LlmdParams"]

_STRICT = ConfigDict(extra="forbid", frozen=True)

#: llm-d's `kvevents.DefaultPodReconcilerConfig().SocketPort` and `DefaultConfig().TopicFilter`.
LLMD_SOCKET_PORT = 5557
LLMD_TOPIC_FILTER = "kv@"
#: llm-d's `defaultSpeculativeTTL`.
LLMD_SPECULATIVE_TTL = 2.0


_NOT_SUPPORTED = "Not supported here: "


def _unsupported(reason: str) -> Any:
    """A key llm-d accepts that has no equivalent here: in the schema (so editors know it), refused with
    `reason` at its own path (`_Strict`)."""
    return Field(default=None, description=_NOT_SUPPORTED + reason, json_schema_extra={"not": {}})


class _Strict(BaseModel):
    model_config = _STRICT

    @field_validator("*", mode="before")
    @classmethod
    def _refuse_unsupported(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        reason = field.description if field is not None and field.description else ""
        # llm-d's own default of a string key is ""
        if reason.startswith(_NOT_SUPPORTED) and value is not None and value != "":
            raise ValueError(f"not supported: {reason.removeprefix(_NOT_SUPPORTED)}")
        return value


class TokenProcessorConfig(_Strict):
    """llm-d-kv-cache `kvblock.TokenProcessorConfig`."""

    blockSize: int | None = Field(
        default=None, gt=0, description="Tokens per block (→ blockSizeTokens; llm-d's default 16)."
    )
    hashSeed: str | None = Field(
        default=None,
        description="Seed of llm-d's own request-key chain; accepted with no effect: keys here are "
        "derived from token ids on both sides and never compared with the engine's hashes.",
    )


class InMemoryConfig(_Strict):
    """llm-d-kv-cache `kvblock.InMemoryIndexConfig`."""

    size: int | None = Field(
        default=None,
        gt=0,
        description="Blocks the index holds (→ maxBlocksPerEndpoint: the cap here is per endpoint).",
    )
    podCacheSize: Any = _unsupported(
        "the index here keeps every endpoint that holds a block (no cap of endpoints per block); remove it"
    )


class KvBlockIndexConfig(_Strict):
    """llm-d-kv-cache `kvblock.IndexConfig`."""

    inMemoryConfig: InMemoryConfig | None = Field(default=None, description="The in-memory index.")
    enableMetrics: bool | None = Field(
        default=None, description="Accepted; the KV-event source's metrics are always exported."
    )
    costAwareMemoryConfig: Any = _unsupported("the index is in memory, sized by inMemoryConfig.size")
    redisConfig: Any = _unsupported("the index is in memory, one per EPP process (no Redis backend)")
    valkeyConfig: Any = _unsupported("the index is in memory, one per EPP process (no Valkey backend)")
    metricsLoggingInterval: Any = _unsupported(
        "index statistics are Prometheus metrics on /metrics, not periodic log lines"
    )


class KvCacheBackend(_Strict):
    """llm-d-kv-cache `kvcache.KVCacheBackendConfig`: the weight of a block held on one medium."""

    name: str = Field(min_length=1, description="Medium: gpu, cpu, disk, ...")
    weight: float = Field(ge=0.0, le=1.0, description="Weight of a block on this medium.")


class IndexerConfig(_Strict):
    """llm-d-kv-cache `kvcache.Config`."""

    kvBlockIndexConfig: KvBlockIndexConfig | None = Field(default=None, description="The block index.")
    kvCacheBackendConfigs: tuple[KvCacheBackend, ...] | None = Field(
        default=None,
        description="Weights per medium: gpu must weigh 1.0 and every other medium the same weight "
        "(→ otherTierWeight).",
    )
    tokenizersPoolConfig: Any = _unsupported(
        "no in-process tokenizer here: request tokens come from token-id prompts, or from text with "
        "the flat parameter `tokenizer: char4`"
    )

    @field_validator("kvCacheBackendConfigs")
    @classmethod
    def _one_other_weight(cls, value: tuple[KvCacheBackend, ...] | None) -> tuple[KvCacheBackend, ...] | None:
        if value is None:
            return value
        for backend in value:
            if backend.name.lower() == "gpu" and backend.weight != 1.0:
                raise ValueError(
                    f"not supported: a gpu weight of {backend.weight} (GPU blocks weigh 1.0 here)"
                )
        others = {b.weight for b in value if b.name.lower() != "gpu"}
        if len(others) > 1:
            raise ValueError(
                "not supported: different weights for non-GPU media "
                f"({', '.join(f'{b.name}={b.weight}' for b in value if b.name.lower() != 'gpu')}); "
                "every non-GPU block has one weight here (otherTierWeight)"
            )
        return value


class PodDiscoveryConfig(_Strict):
    """llm-d-kv-cache `kvevents.PodDiscoveryConfig`."""

    socketPort: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Port of each endpoint's KV-event publisher (→ kvEventsAddress tcp://{ip}:PORT; "
        "llm-d's default 5557).",
    )
    podLabelSelector: Any = _unsupported(
        "subscriptions follow the pool's endpoints (InferencePool, --endpoint-selector or "
        "--static-endpoints), no separate pod watch; remove it"
    )
    podNamespace: Any = _unsupported(
        "subscriptions follow the pool's endpoints, in the pool's namespace, no separate pod watch; remove it"
    )


class KvEventsConfig(_Strict):
    """llm-d-kv-cache `kvevents.Config`."""

    topicFilter: str | None = Field(
        default=None, description="ZMQ subscription prefix (→ topicFilter; llm-d's default 'kv@')."
    )
    concurrency: int | None = Field(
        default=None,
        gt=0,
        description="Accepted with no effect: events are decoded by the data layer's KV-event source.",
    )
    engineType: Literal["vllm"] | None = Field(
        default=None, description="Only vllm's event format (which `epp sim` also publishes)."
    )
    discoverPods: bool | None = Field(
        default=None,
        description="Subscribe to every endpoint's publisher (true, llm-d's default) or to none (false).",
    )
    podDiscoveryConfig: PodDiscoveryConfig | None = Field(
        default=None, description="Where each endpoint publishes."
    )
    zmqEndpoint: Any = _unsupported(
        "no central socket is bound for engines to connect to; each endpoint's publisher is subscribed "
        "(podDiscoveryConfig.socketPort, or the flat kvEventsAddress / kvEventsAddresses)"
    )


#: the llm-d keys of the scorer's parameters
LLMD_KEYS = (
    "tokenProcessorConfig",
    "indexerConfig",
    "kvEventsConfig",
    "speculativeIndexing",
    "speculativeTTL",
)


class LlmdParams(BaseModel):
    """The llm-d keys as given (None = absent), and what they mean in our flat parameters. The scorer's
    parameters (`PreciseParamOverrides`) extend it with the flat keys."""

    model_config = _STRICT

    tokenProcessorConfig: TokenProcessorConfig | None = Field(
        default=None, description="llm-d: how tokens become blocks (blockSize → blockSizeTokens; hashSeed)."
    )
    indexerConfig: IndexerConfig | None = Field(
        default=None,
        description="llm-d: the block index (kvBlockIndexConfig.inMemoryConfig.size → maxBlocksPerEndpoint; "
        "kvCacheBackendConfigs → otherTierWeight).",
    )
    kvEventsConfig: KvEventsConfig | None = Field(
        default=None,
        description="llm-d: KV-event subscriptions (topicFilter; discoverPods and "
        "podDiscoveryConfig.socketPort → kvEventsAddress tcp://{ip}:PORT).",
    )
    speculativeIndexing: bool | None = Field(
        default=None, description="llm-d: speculative entries for routed requests (default false)."
    )
    speculativeTTL: str | None = Field(
        default=None,
        description="llm-d: their lifetime, a Go duration, default 2s (→ speculativeTtlSeconds).",
    )

    @field_validator("speculativeTTL")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None:
            seconds = parse_duration(value)  # ValueError with the reason
            if seconds < 0:
                raise ValueError(f"must not be negative, got {value!r}")
        return value

    def used(self) -> bool:
        return any(getattr(self, key) is not None for key in LLMD_KEYS)

    def explicit(self) -> dict[str, tuple[str, Any]]:
        """Flat parameters the llm-d keys set explicitly: flat key → (llm-d path, value)."""
        out: dict[str, tuple[str, Any]] = {}
        tp = self.tokenProcessorConfig
        if tp is not None and tp.blockSize is not None:
            out["blockSizeTokens"] = ("tokenProcessorConfig.blockSize", tp.blockSize)
        ix = self.indexerConfig
        if ix is not None:
            kb = ix.kvBlockIndexConfig
            if kb is not None and kb.inMemoryConfig is not None and kb.inMemoryConfig.size is not None:
                out["maxBlocksPerEndpoint"] = (
                    "indexerConfig.kvBlockIndexConfig.inMemoryConfig.size",
                    kb.inMemoryConfig.size,
                )
            others = [b.weight for b in ix.kvCacheBackendConfigs or () if b.name.lower() != "gpu"]
            if others:
                out["otherTierWeight"] = ("indexerConfig.kvCacheBackendConfigs", others[0])
        ev = self.kvEventsConfig
        if ev is not None:
            if ev.topicFilter is not None:
                out["topicFilter"] = ("kvEventsConfig.topicFilter", ev.topicFilter)
            port = ev.podDiscoveryConfig.socketPort if ev.podDiscoveryConfig is not None else None
            if ev.discoverPods is False:
                out["kvEventsAddress"] = ("kvEventsConfig.discoverPods", "")
            elif ev.discoverPods is not None or port is not None:
                where = (
                    "kvEventsConfig.podDiscoveryConfig.socketPort" if port else "kvEventsConfig.discoverPods"
                )
                out["kvEventsAddress"] = (where, f"tcp://{{ip}}:{port or LLMD_SOCKET_PORT}")
        if self.speculativeIndexing is not None or self.speculativeTTL is not None:
            ttl = parse_duration(self.speculativeTTL) if self.speculativeTTL else LLMD_SPECULATIVE_TTL
            where = "speculativeTTL" if self.speculativeTTL is not None else "speculativeIndexing"
            out["speculativeTtlSeconds"] = (where, ttl if self.speculativeIndexing else 0.0)
        return out

    def flat(self) -> dict[str, Any]:
        """Our flat parameters for these llm-d keys: the explicit ones, over llm-d's defaults."""
        if not self.used():
            return {}
        out: dict[str, Any] = {
            "kvEventsAddress": f"tcp://{{ip}}:{LLMD_SOCKET_PORT}",
            "topicFilter": LLMD_TOPIC_FILTER,
            "speculativeTtlSeconds": 0.0,
        }
        out.update({key: value for key, (_, value) in self.explicit().items()})
        return out
