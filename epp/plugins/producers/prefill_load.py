"""`prefill-load-producer`: per endpoint, the prefill work the EPP sent there that has not started decoding.

Publishes `PrefillLoad` per endpoint (data key `PrefillLoad`) for `prefill-cost-scorer` and
`hot-prefix-spill-filter`. Its ledger (`epp.plugins.producers.prefill_ledger`) enters each scheduled
request on its primary target with the prompt tokens that endpoint had to prefill (input tokens minus the
blocks the prefix producer matched there) and moves it from *pending* to *decoding* when the first response
byte passes the EPP (a streamed response's first token), then forgets it when the response completes. It
also keeps a running mean of the uncached tokens per request, which consumers use to convert a scraped
waiting-queue length into tokens. Shared (SharedState): the other processes routing for the pool add
this one's per-endpoint totals to theirs.

Mixed hardware: the ledger measures how many seconds a prefill token takes on each hardware class (the
`hardwareClassLabel` pod label; `epp.plugins.producers.prefill_speed`), and the snapshot carries each
candidate's `slowdown` (its class's seconds per token over the fastest candidate class's), by which
`prefill-cost-scorer` multiplies its cost. One class (a homogeneous pool, or no such label): no slowdown.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from epp.framework.cycle import CycleState, StateKey
from epp.framework.handle import Handle
from epp.framework.plugins import PluginKind
from epp.framework.types import Endpoint, InferenceRequest, ResponseInfo, SchedulingResult, TypedName
from epp.plugins.datakeys import PREFIX_CACHE_MATCH_INFO_KEY, PrefixCacheMatchInfo
from epp.plugins.producers.prefill_ledger import EndpointLoad, LedgerEntry, PrefillLedger
from epp.registry import PluginType

__all__ = [
    "PREFILL_LOAD",
    "PREFILL_LOAD_KEY",
    "PREFILL_LOAD_PRODUCER",
    "PrefillLoadProducer",
    "PrefillLoadSnapshot",
    "matched_tokens",
    "uncached_tokens",
]

TYPE_NAME = "prefill-load-producer"
#: Data-key name of the per-endpoint prefill load.
PREFILL_LOAD = "PrefillLoad"

#: Weight of a new sample in the running mean of uncached tokens per request.
_MEAN_ALPHA = 0.05


class PrefillLoadParams(BaseModel):
    """Parameters of `prefill-load-producer`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hardwareClassLabel: str = Field(
        default="nvidia.com/gpu.product",
        description="Pod label naming each endpoint's hardware class: the prefill speed of every class is "
        "measured (dispatch to first token against the prefill work ahead) and the cost of the slower "
        "classes scaled up by it. Endpoints without the label form one class. Empty: not measured.",
    )


_NO_SLOWDOWN: Mapping[str, float] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class PrefillLoadSnapshot:
    """The ledger's view of the candidates for one request, the mean uncached tokens per request, and the
    candidates whose hardware class is slower than the fastest candidate class's (`slowdown`: endpoint key
    -> seconds per prefill token over the fastest's; absent = 1.0)."""

    loads: Mapping[str, EndpointLoad]
    mean_uncached_tokens: float
    slowdown: Mapping[str, float]

    def load(self, key: str) -> EndpointLoad:
        return self.loads.get(key) or _NO_LOAD


_NO_LOAD = EndpointLoad()

#: Written by the producer in `prepare_data`.
PREFILL_LOAD_KEY: StateKey[PrefillLoadSnapshot] = StateKey(PREFILL_LOAD)


def matched_tokens(info: PrefixCacheMatchInfo | None) -> dict[str, int]:
    """Prompt tokens each endpoint with a match holds (matched blocks x its block size); absent = 0."""
    if info is None:
        return {}
    out: dict[str, int] = {}
    overrides = info.block_size_overrides
    default = info.default_block_size
    for size, group in info.groups.items():
        for key, blocks in group.matches.items():
            if overrides.get(key, default) == size:
                out[key] = blocks * size
    return out


def uncached_tokens(input_tokens: int, info: PrefixCacheMatchInfo | None, endpoint_key: str) -> int:
    """Prompt tokens the endpoint would have to prefill: the input minus its matched blocks."""
    if info is None:
        return input_tokens
    matched = info.match_blocks(endpoint_key) * info.block_size(endpoint_key)
    return input_tokens - matched if matched < input_tokens else 0


class PrefillLoadProducer:
    """DataProducer + PreRequest + ResponseReceived + ResponseComplete + EndpointObserver."""

    def __init__(self, typed_name: TypedName, params: PrefillLoadParams | None = None) -> None:
        self.typed_name = typed_name
        self.params = params or PrefillLoadParams()
        self.ledger = PrefillLedger()
        self._lock = threading.Lock()
        self._mean_uncached = 0.0
        self._entry_key: StateKey[LedgerEntry] = StateKey(f"{TYPE_NAME}/{typed_name.name}")

    @property
    def reads_first_byte(self) -> bool:
        """The ledger moves a request from pending to decoding at its first response byte."""
        return True

    @property
    def mean_uncached_tokens(self) -> float:
        return self._mean_uncached

    def snapshot(self, endpoints: Sequence[Endpoint]) -> PrefillLoadSnapshot:
        """Loads of the endpoints with requests in flight (absent = none), the mean uncached tokens, and
        the slowdown of the candidates on slower hardware."""
        return PrefillLoadSnapshot(
            self.ledger.loads(e.key for e in endpoints), self._mean_uncached, self.slowdown(endpoints)
        )

    def slowdown(self, endpoints: Sequence[Endpoint]) -> Mapping[str, float]:
        """Per candidate on a class slower than the fastest candidate class with an estimate: its seconds
        per prefill token over that class's (candidates of unmeasured classes: none)."""
        rates = self.ledger.speed.rates
        label = self.params.hardwareClassLabel
        if len(rates) < 2 or not label:
            return _NO_SLOWDOWN
        per_key = {e.key: rates.get(e.labels.get(label, "")) for e in endpoints}
        fastest = min((r for r in per_key.values() if r is not None), default=None)
        if fastest is None:
            return _NO_SLOWDOWN
        return {k: r / fastest for k, r in per_key.items() if r is not None and r > fastest}

    def prefill_speeds(self) -> Mapping[str, float]:
        """Per hardware class with an estimate, its seconds per prefill token (read by the metrics)."""
        return self.ledger.speed.rates

    def group_of(self, endpoint: Endpoint) -> str | None:
        """The endpoint's hardware class (None: speed not measured)."""
        label = self.params.hardwareClassLabel
        return endpoint.labels.get(label, "") if label else None

    def prepare_data(
        self, cycle: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> None:
        cycle.write(PREFILL_LOAD_KEY, self.snapshot(endpoints))

    def pre_request(self, cycle: CycleState, request: InferenceRequest, result: SchedulingResult) -> None:
        targets = result.targets
        if not targets or cycle.read(self._entry_key) is not None:
            return
        target = targets[0]
        info = cycle.read(PREFIX_CACHE_MATCH_INFO_KEY)
        uncached = uncached_tokens(request.estimated_input_tokens, info, target.key)
        with self._lock:
            self._mean_uncached += _MEAN_ALPHA * (uncached - self._mean_uncached)
        cycle.write(self._entry_key, self.ledger.add(target.key, uncached, self.group_of(target)))

    @property
    def reads_response_only(self) -> bool:
        """Its response hooks only read (ResponseReader)."""
        return True

    def response_received(
        self, cycle: CycleState, request: InferenceRequest, response: ResponseInfo, result: SchedulingResult
    ) -> None:
        entry = cycle.read(self._entry_key)
        if entry is not None:
            self.ledger.attach(entry, response)

    def response_complete(
        self, cycle: CycleState, request: InferenceRequest, response: ResponseInfo, result: SchedulingResult
    ) -> None:
        entry = cycle.read(self._entry_key)
        if entry is not None:
            self.ledger.release(entry)

    def endpoints_changed(self, keys: frozenset[str]) -> None:
        self.ledger.retain(keys)

    # ---- SharedState: the ledger's per-endpoint totals -----------------------------------------------

    def start_sharing(self) -> None:
        """The ledger keeps nothing extra for sharing: it exports its totals when asked."""

    def export_changes(self) -> list[list[Any]] | None:
        return self.ledger.export_changes()

    def import_changes(self, origin: str, changes: Any) -> None:
        self.ledger.import_changes(origin, changes)

    def forget_origin(self, origin: str) -> None:
        self.ledger.forget_origin(origin)


def _factory(name: str, params: PrefillLoadParams, handle: Handle) -> PrefillLoadProducer:
    return PrefillLoadProducer(TypedName(TYPE_NAME, name), params)


PREFILL_LOAD_PRODUCER = PluginType(
    type_name=TYPE_NAME,
    params_model=PrefillLoadParams,
    factory=_factory,
    kinds=frozenset(
        {
            PluginKind.DATA_PRODUCER,
            PluginKind.PRE_REQUEST,
            PluginKind.RESPONSE_RECEIVED,
            PluginKind.RESPONSE_COMPLETE,
        }
    ),
    description="Per endpoint, the uncached prompt tokens the EPP sent there still waiting for their first "
    "token, the requests decoding, and how much slower its hardware class prefills than the fastest "
    "(PrefillLoad).",
    produces=frozenset({PREFILL_LOAD}),
    stateful=True,
)
