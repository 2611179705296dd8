"""Data shared between producers and the plugins that consume it, within one request's cycle state.

Each shared datum has two names: the data-key string used in `PluginType.consumes` / `produces` (so the
config builder can create a missing producer) and the typed `StateKey` under which the producer writes the
value into the `CycleState` for consumers to read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from epp.framework.cycle import StateKey

__all__ = [
    "INFLIGHT_LOAD",
    "INFLIGHT_LOAD_KEY",
    "NO_LOAD",
    "PREFIX_CACHE_MATCH_INFO",
    "PREFIX_CACHE_MATCH_INFO_KEY",
    "InFlightLoad",
    "PrefixCacheMatchInfo",
    "PrefixGroup",
]

#: Data-key name of the prefix match (upstream `PrefixCacheMatchInfoKey`).
PREFIX_CACHE_MATCH_INFO = "PrefixCacheMatchInfo"
#: Data-key name of the per-endpoint in-flight load (upstream `InFlightLoadKey`).
INFLIGHT_LOAD = "InFlightLoad"


@dataclass(frozen=True, slots=True)
class PrefixGroup:
    """The prompt's block hashes at one block size, and how many leading blocks each endpoint matched.

    `matches` holds only endpoints with at least one matched block.
    """

    block_size_tokens: int
    hashes: tuple[int, ...]
    matches: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class PrefixCacheMatchInfo:
    """How much of this request's prompt each candidate endpoint is believed to hold in its KV cache.

    Endpoints may use different block sizes, so the prompt is hashed once per distinct block size
    (`groups`, keyed by block size in tokens). Candidates use `default_block_size` unless listed in
    `block_size_overrides`. `scores` is matched / total blocks for every endpoint with a match (absent
    means 0).
    """

    groups: Mapping[int, PrefixGroup]
    default_block_size: int
    block_size_overrides: Mapping[str, int] = field(default_factory=dict)
    scores: Mapping[str, float] = field(default_factory=dict)

    def block_size(self, endpoint_key: str) -> int:
        return self.block_size_overrides.get(endpoint_key, self.default_block_size)

    def group_for(self, endpoint_key: str) -> PrefixGroup | None:
        return self.groups.get(self.block_size(endpoint_key))

    def match_blocks(self, endpoint_key: str) -> int:
        group = self.group_for(endpoint_key)
        return 0 if group is None else group.matches.get(endpoint_key, 0)

    def total_blocks(self, endpoint_key: str) -> int:
        group = self.group_for(endpoint_key)
        return 0 if group is None else len(group.hashes)

    def score(self, endpoint_key: str) -> float:
        return self.scores.get(endpoint_key, 0.0)


@dataclass(frozen=True, slots=True)
class InFlightLoad:
    """Requests and estimated tokens the EPP has sent to one endpoint that have not completed yet."""

    requests: int = 0
    tokens: int = 0


NO_LOAD = InFlightLoad()

#: Written by the prefix-cache producer in `prepare_data`.
PREFIX_CACHE_MATCH_INFO_KEY: StateKey[PrefixCacheMatchInfo] = StateKey(PREFIX_CACHE_MATCH_INFO)
#: Written by the in-flight load producer in `prepare_data`: endpoint key → load (absent means none).
INFLIGHT_LOAD_KEY: StateKey[Mapping[str, InFlightLoad]] = StateKey(INFLIGHT_LOAD)
