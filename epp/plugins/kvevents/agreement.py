"""The agreement guard: do an endpoint's KV events match the keys this EPP computes for its requests?

A tokenizer mismatch (e.g. `char4` in front of a real BPE engine) makes every event key differ from the
request keys: the endpoint's feed is alive, but matching against it would always find nothing. So for each
routed request that should make the engine store a new block, `precise-prefix-cache-producer` expects the
deepest such key in a `BlockStored` (`expect`, with a deadline; brought forward by `settle` when the
response has ended, dropped when it failed). `confirm` (with the keys of each `BlockStored`) settles the
expectations met; expired ones count as missed. When, over at least `_MIN_EXPECTATIONS` of the last
`_EXPECTATION_WINDOW` outcomes, fewer than `_MIN_CONFIRMED_SHARE` were confirmed, the endpoint is
*mismatched* (logged once) and its matches come from the routing history until expectations are met again.

Thread-safe (one lock); nothing here does I/O.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

__all__ = ["AgreementGuard"]

log = logging.getLogger(__name__)

#: Minimum expectations before judging, and the confirmed share below which an endpoint is mismatched.
_MIN_EXPECTATIONS = 8
_MIN_CONFIRMED_SHARE = 0.25
_EXPECTATION_WINDOW = 32


@dataclass(slots=True)
class _Agreement:
    outcomes: deque[bool] = field(default_factory=lambda: deque(maxlen=_EXPECTATION_WINDOW))
    pending: dict[int, float] = field(default_factory=dict)  # deepest key -> deadline
    mismatched: bool = False

    def settle_expired(self, now: float) -> None:
        for key in [k for k, deadline in self.pending.items() if deadline <= now]:
            del self.pending[key]
            self.outcomes.append(False)


class AgreementGuard:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._endpoints: dict[str, _Agreement] = {}

    def mismatched(self, endpoint: str) -> bool:
        """Whether `endpoint`'s events were judged not to match the request keys."""
        agreement = self._endpoints.get(endpoint)
        return agreement is not None and agreement.mismatched

    def expect(self, endpoint: str, key: int, deadline: float, now: float) -> None:
        """Expect `key` in a BlockStored from `endpoint` by `deadline`."""
        with self._lock:
            agreement = self._endpoints.get(endpoint)
            if agreement is None:
                agreement = self._endpoints[endpoint] = _Agreement()
            agreement.settle_expired(now)
            agreement.pending[key] = deadline
            _judge(endpoint, agreement)

    def confirm(self, endpoint: str, keys: Iterable[int]) -> None:
        """`endpoint` stored `keys`: settle the expectations they meet."""
        with self._lock:
            agreement = self._endpoints.get(endpoint)
            if agreement is None or not agreement.pending:
                return
            pending = agreement.pending
            for key in keys:
                if pending.pop(key, None) is not None:
                    agreement.outcomes.append(True)
            _judge(endpoint, agreement)

    def settle(self, endpoint: str, key: int, deadline: float, *, failed: bool) -> None:
        """The request that created the expectation ended: a failed one proves nothing (dropped), else the
        key must show up by `deadline` (the earlier of it and the current one)."""
        with self._lock:
            agreement = self._endpoints.get(endpoint)
            if agreement is None or key not in agreement.pending:
                return
            if failed:
                del agreement.pending[key]
            else:
                agreement.pending[key] = min(agreement.pending[key], deadline)

    def pending(self, endpoint: str) -> int:
        """Expectations of `endpoint` not settled yet."""
        with self._lock:
            agreement = self._endpoints.get(endpoint)
            return len(agreement.pending) if agreement is not None else 0

    def outcomes(self, endpoint: str) -> tuple[bool, ...]:
        """The recent settled expectations of `endpoint`, oldest first (True: confirmed)."""
        with self._lock:
            agreement = self._endpoints.get(endpoint)
            return tuple(agreement.outcomes) if agreement is not None else ()

    def retain(self, endpoints: Collection[str]) -> None:
        with self._lock:
            for gone in [k for k in self._endpoints if k not in endpoints]:
                del self._endpoints[gone]


def _judge(endpoint: str, agreement: _Agreement) -> None:
    outcomes = agreement.outcomes
    if len(outcomes) < _MIN_EXPECTATIONS:
        return
    share = sum(outcomes) / len(outcomes)
    mismatched = share < _MIN_CONFIRMED_SHARE
    if mismatched != agreement.mismatched:
        agreement.mismatched = mismatched
        if mismatched:
            log.warning(
                "KV events of %s do not match the request keys (%.0f%% of expected blocks confirmed): "
                "using the approximate index for it (is the tokenizer setting right?)",
                endpoint,
                share * 100,
            )
        else:
            log.info("KV events of %s match the request keys again", endpoint)
