"""The prefill ledger: per endpoint, the work the EPP has sent that has not completed.

Each scheduled request is entered with the prompt tokens it was expected to prefill on its endpoint (the
part not already cached there). It counts as *pending* until the first response byte passes the EPP (for
a streamed response: the first token), then as *decoding* until the response completes. The first byte is
not a hook of its own: the ledger keeps the request's `ResponseInfo` (handed over when the response
headers arrive) and reads its `first_byte_at` stamp lazily, whenever an endpoint's load is asked for.

Thread-safe (one lock); every operation is O(pending entries of one endpoint).

A request entered with its hardware class (`add(..., group=)`) is also an observation for
`PrefillSpeed` when its first byte is seen: the time since dispatch against the prefill work that was
ahead of it on that endpoint (local and remote pending tokens) plus its own.

Shared across processes (the workers of a pod): each process exports its own per-endpoint totals when
they change (`export_changes`, absolute values, so a lost message is corrected by the next) and adds
the other processes' totals (`import_changes`) to every load it reports.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from epp.framework.types import ResponseInfo
from epp.plugins.origin_totals import OriginTotals, changed_rows
from epp.plugins.producers.prefill_speed import PrefillSpeed

__all__ = ["NO_LOAD", "EndpointLoad", "LedgerEntry", "PrefillLedger"]


@dataclass(slots=True, eq=False)
class LedgerEntry:
    """One in-flight request on one endpoint."""

    endpoint: str
    prefill_tokens: int
    epoch: int
    response: ResponseInfo | None = None
    decoding: bool = False
    released: bool = False
    group: str | None = None  # hardware class, for the speed estimate (None: not measured)
    sent_at: float = 0.0
    ahead: int = 0  # pending prefill tokens on the endpoint when it was sent


@dataclass(frozen=True, slots=True)
class EndpointLoad:
    """What the ledger knows about one endpoint right now.

    `pending_prefill_tokens` / `pending_requests`: requests without a first token yet (queued or
    prefilling); `decoding_requests`: requests past their first token.
    """

    pending_prefill_tokens: int = 0
    pending_requests: int = 0
    decoding_requests: int = 0

    def __add__(self, other: EndpointLoad) -> EndpointLoad:
        return EndpointLoad(
            self.pending_prefill_tokens + other.pending_prefill_tokens,
            self.pending_requests + other.pending_requests,
            self.decoding_requests + other.decoding_requests,
        )


NO_LOAD = EndpointLoad()


@dataclass(slots=True)
class _Endpoint:
    pending: list[LedgerEntry] = field(default_factory=list)
    pending_tokens: int = 0
    decoding: int = 0


class PrefillLedger:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._clock = clock  # the clock `ResponseInfo.first_byte_at` is stamped with
        #: per hardware class, seconds per prefill token (observed at first bytes)
        self.speed = PrefillSpeed()
        self._endpoints: dict[str, _Endpoint] = {}
        # bumped when an endpoint leaves the pool, so a late release cannot touch a newer count
        self._epochs: dict[str, int] = {}
        # other processes' totals: per origin, and summed per endpoint (what loads add)
        self._remote: OriginTotals[EndpointLoad] = OriginTotals(EndpointLoad.__add__, _some)
        self._exported: dict[str, EndpointLoad] = {}  # the local totals last exported

    def add(self, endpoint: str, prefill_tokens: int, group: str | None = None) -> LedgerEntry:
        """Enter a request that was just sent to `endpoint` (of hardware class `group`: measured)."""
        with self._lock:
            entry = LedgerEntry(endpoint, max(0, prefill_tokens), self._epochs.get(endpoint, 0))
            state = self._endpoints.get(endpoint)
            if state is None:
                state = self._endpoints[endpoint] = _Endpoint()
            if group is not None:
                self._promote(state)
                remote = self._remote.total.get(endpoint)
                entry.group = group
                entry.sent_at = self._clock()
                entry.ahead = state.pending_tokens + (remote.pending_prefill_tokens if remote else 0)
            state.pending.append(entry)
            state.pending_tokens += entry.prefill_tokens
            return entry

    def attach(self, entry: LedgerEntry, response: ResponseInfo) -> None:
        """Remember the request's response info, whose `first_byte_at` ends its prefill."""
        entry.response = response

    def release(self, entry: LedgerEntry) -> None:
        """The request completed (or failed): forget it. A second call does nothing."""
        with self._lock:
            if entry.released:
                return
            entry.released = True
            state = self._endpoints.get(entry.endpoint)
            if state is None or self._epochs.get(entry.endpoint, 0) != entry.epoch:
                return
            if entry.decoding:
                state.decoding -= 1
            else:
                try:
                    state.pending.remove(entry)
                except ValueError:
                    return
                state.pending_tokens -= entry.prefill_tokens
                self._observe(entry)
            if not state.pending and state.decoding <= 0:
                del self._endpoints[entry.endpoint]

    def load(self, endpoint: str) -> EndpointLoad:
        """The endpoint's current load (requests whose first byte arrived move to decoding first)."""
        with self._lock:
            state = self._endpoints.get(endpoint)
            remote = self._remote.total.get(endpoint)
            if state is None:
                return remote or NO_LOAD
            self._promote(state)
            local = EndpointLoad(state.pending_tokens, len(state.pending), state.decoding)
            return local + remote if remote is not None else local

    def loads(self, keys: Iterable[str]) -> dict[str, EndpointLoad]:
        """`load` for several endpoints under one lock; endpoints without requests are left out."""
        out: dict[str, EndpointLoad] = {}
        with self._lock:
            endpoints = self._endpoints
            remote_total = self._remote.total
            for key in keys:
                state = endpoints.get(key)
                remote = remote_total.get(key) if remote_total else None
                if state is not None:
                    self._promote(state)
                    local = EndpointLoad(state.pending_tokens, len(state.pending), state.decoding)
                    out[key] = local + remote if remote is not None else local
                elif remote is not None:
                    out[key] = remote
        return out

    def retain(self, keys: Collection[str]) -> list[str]:
        """Forget every endpoint not in `keys`; returns the forgotten ones."""
        with self._lock:
            gone = [k for k in self._endpoints if k not in keys]
            for k in gone:
                del self._endpoints[k]
                self._epochs[k] = self._epochs.get(k, 0) + 1
            self._remote.retain(keys)
            return gone

    # ---- sharing with other processes ---------------------------------------------------------------

    def export_changes(self) -> list[list[Any]] | None:
        """The local per-endpoint totals that changed since the last export: `[endpoint, pending tokens,
        pending requests, decoding requests]` (all 0: none left there)."""
        with self._lock:
            current: dict[str, EndpointLoad] = {}
            for key, state in self._endpoints.items():
                self._promote(state)
                current[key] = EndpointLoad(state.pending_tokens, len(state.pending), state.decoding)
            changed = changed_rows(self._exported, current, _fields, (0, 0, 0))
            self._exported = current
        return changed or None

    def import_changes(self, origin: str, changes: Sequence[Sequence[Any]]) -> None:
        with self._lock:
            for key, tokens, pending, decoding in changes:
                self._remote.set(origin, key, EndpointLoad(tokens, pending, decoding))

    def forget_origin(self, origin: str) -> None:
        with self._lock:
            self._remote.forget(origin)

    def endpoints(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._endpoints)

    def _promote(self, state: _Endpoint) -> None:
        pending = state.pending
        if not any(e.response is not None and e.response.first_byte_at > 0.0 for e in pending):
            return
        keep: list[LedgerEntry] = []
        for e in pending:
            if e.response is not None and e.response.first_byte_at > 0.0:
                e.decoding = True
                state.decoding += 1
                state.pending_tokens -= e.prefill_tokens
                self._observe(e)
            else:
                keep.append(e)
        state.pending = keep

    def _observe(self, entry: LedgerEntry) -> None:
        """A request's first byte came: one speed observation of its class (if it has one)."""
        response = entry.response
        if entry.group is None or response is None or response.first_byte_at <= 0.0:
            return
        self.speed.observe(
            entry.group, response.first_byte_at - entry.sent_at, float(entry.ahead + entry.prefill_tokens)
        )


def _some(load: EndpointLoad) -> bool:
    return load != NO_LOAD


def _fields(load: EndpointLoad) -> tuple[int, int, int]:
    return load.pending_prefill_tokens, load.pending_requests, load.decoding_requests
