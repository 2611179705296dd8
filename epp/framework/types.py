"""Value types shared by the engine, the plugins and the datalayer.

Everything here is immutable: the datalayer publishes new `Endpoint` objects when metrics change and the
scheduler works on point-in-time snapshots, so plugins can never observe a half-updated endpoint.
Score maps and results are keyed by `Endpoint.key` (a string), never by the endpoint object itself.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import partial
from typing import Any, NamedTuple, overload

__all__ = [
    "ApiKind",
    "Endpoint",
    "EndpointMetrics",
    "InferenceRequest",
    "ProfileRunResult",
    "ResponseInfo",
    "SchedulingResult",
    "ScoredEndpoint",
    "ScoredEndpoints",
    "TypedName",
    "format_address",
]


@dataclass(frozen=True, slots=True)
class TypedName:
    """The identity of a plugin instance: its registered type and its configured name."""

    type: str
    name: str

    def __str__(self) -> str:
        return f"{self.type}/{self.name}"


@dataclass(frozen=True, slots=True)
class EndpointMetrics:
    """What the last successful scrape of a model server said about it.

    `update_time` is a `time.monotonic()` stamp of that scrape; 0.0 means "never scraped".
    """

    waiting_queue_size: int = 0
    running_requests_size: int = 0
    kv_cache_usage: float = 0.0
    active_models: frozenset[str] = frozenset()
    waiting_models: frozenset[str] = frozenset()
    max_active_models: int = 0
    cache_block_size: int = 0
    cache_num_blocks: int = 0
    update_time: float = 0.0

    def age(self, now: float) -> float:
        """Seconds since the last successful scrape (infinite when never scraped)."""
        return math.inf if self.update_time <= 0.0 else now - self.update_time


EMPTY_METRICS = EndpointMetrics()


def format_address(ip: str, port: int) -> str:
    """Join an IP and a port the way Go's net.JoinHostPort does (IPv6 in brackets)."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One schedulable target: a model-server pod at one port (a data-parallel rank).

    `key` is unique within the datastore: `<pod>-rank-<i>` in Kubernetes mode, `ip:port` for static
    endpoints. `address` is what goes on the wire (`ip:port`, IPv6 bracketed).
    `healthy` is false while the last scrape attempts failed (dead or hung server).
    """

    key: str
    ip: str
    port: int
    labels: Mapping[str, str] = field(default_factory=dict)
    metrics: EndpointMetrics = EMPTY_METRICS
    namespace: str = ""
    pod_name: str = ""
    rank: int = 0
    healthy: bool = True

    @property
    def address(self) -> str:
        return format_address(self.ip, self.port)


class ApiKind(StrEnum):
    """Which OpenAI-style API a request body belongs to (chosen by path suffix)."""

    COMPLETIONS = "completions"
    CHAT_COMPLETIONS = "chat/completions"
    RESPONSES = "responses"
    EMBEDDINGS = "embeddings"
    CONVERSATIONS = "conversations"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class InferenceRequest:
    """A parsed request as the scheduler sees it.

    `prefix_material` is the canonical byte string that prefix-cache plugins hash: the prompt text for
    completions, the JSON of the whole conversation for chat, and so on (chosen by the parser).
    `body` is the parsed JSON body; plugins must treat it as read-only.
    """

    request_id: str
    model: str
    target_model: str
    api: ApiKind = ApiKind.COMPLETIONS
    prefix_material: bytes = b""
    prompt: str | None = None
    messages: Sequence[Mapping[str, Any]] | None = None
    token_ids: Sequence[int] | None = None
    body: Mapping[str, Any] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    priority: int = 0
    objective: str = ""
    fairness_id: str = "default-flow"
    cache_salt: str = ""
    stream: bool = False
    size_bytes: int = 0
    received_at: float = 0.0

    @property
    def estimated_input_tokens(self) -> int:
        """A cheap input-size estimate (4 characters per token, at least 1)."""
        if self.token_ids is not None:
            return max(1, len(self.token_ids))
        return max(1, len(self.prefix_material) // 4)


class ScoredEndpoint(NamedTuple):
    """An endpoint with its weighted total score from one profile run.

    A NamedTuple (immutable, `.endpoint` / `.score`): cheap to build, and built in bulk from C.
    """

    endpoint: Endpoint
    score: float


_make_scored = partial(tuple.__new__, ScoredEndpoint)


class ScoredEndpoints(Sequence[ScoredEndpoint]):
    """What the engine hands a picker: a read-only sequence of `ScoredEndpoint`, stored as two parallel
    sequences (`endpoints`, `scores`) and built item by item only when read.

    Pickers may use it as any sequence; a picker that only needs the numbers can read `scores` (and
    `endpoints`) directly and skip building one object per endpoint per request.
    """

    __slots__ = ("endpoints", "scores")

    def __init__(self, endpoints: Sequence[Endpoint], scores: Sequence[float]) -> None:
        if len(endpoints) != len(scores):
            raise ValueError("endpoints and scores differ in length")
        self.endpoints = endpoints
        self.scores = scores

    def __len__(self) -> int:
        return len(self.endpoints)

    @overload
    def __getitem__(self, index: int) -> ScoredEndpoint: ...

    @overload
    def __getitem__(self, index: slice) -> list[ScoredEndpoint]: ...

    def __getitem__(self, index: int | slice) -> ScoredEndpoint | list[ScoredEndpoint]:
        if isinstance(index, slice):
            return list(map(_make_scored, zip(self.endpoints[index], self.scores[index], strict=True)))
        return ScoredEndpoint(self.endpoints[index], self.scores[index])

    def __iter__(self) -> Iterator[ScoredEndpoint]:
        return map(_make_scored, zip(self.endpoints, self.scores, strict=True))

    def __repr__(self) -> str:
        return f"ScoredEndpoints({list(self)!r})"


@dataclass(frozen=True, slots=True)
class ProfileRunResult:
    """The ordered targets a profile picked: primary first, then fallbacks."""

    targets: tuple[Endpoint, ...]


@dataclass(frozen=True, slots=True)
class SchedulingResult:
    """The outcome of one scheduling cycle.

    `request_headers`: headers to set on the request forwarded to the primary target (a value of None
    removes a header the client sent). The profile handler may fill it in `process_results` and pre-request
    hooks in `pre_request` (e.g. P/D's `x-prefiller-host-port`), as upstream plugins write
    `request.Headers`; the wire layer applies it with the routing decision.
    """

    primary_profile: str
    profile_results: Mapping[str, ProfileRunResult | None]
    request_headers: dict[str, str | None] = field(default_factory=dict)

    @property
    def targets(self) -> tuple[Endpoint, ...]:
        """The primary profile's targets (what goes into the destination header)."""
        primary = self.profile_results.get(self.primary_profile)
        return primary.targets if primary is not None else ()


@dataclass(slots=True)
class ResponseInfo:
    """What the response path learned so far; filled in as headers and body chunks arrive.

    `served_endpoint` is the address the proxy reported in `x-gateway-destination-endpoint-served`
    (empty when the proxy does not report it). Response hooks may add to `set_headers` (response headers
    the EPP adds) and `dynamic_metadata` (sent with the last response message).
    """

    status: int = 0
    headers: Mapping[str, str] = field(default_factory=dict)
    streaming: bool = False
    served_endpoint: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    body_bytes: int = 0
    first_byte_at: float = 0.0
    complete: bool = False
    dynamic_metadata: dict[str, dict[str, Any]] = field(default_factory=dict)
    set_headers: dict[str, str] = field(default_factory=dict)
