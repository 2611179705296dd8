"""What this EPP has in flight on each endpoint, as the latency model's features want it.

Per endpoint: requests dispatched and not complete (`inflight`), and the uncached prompt tokens of those
without a first token yet (`pending_tokens`). A request is entered at dispatch; its pending tokens go when
its first response byte passes the EPP (`ResponseInfo.first_byte_at`, read by `sweep`, which the producer
runs at most every few milliseconds) or when it completes; it leaves at completion (exactly once per
request). Reads are plain dict lookups with no lock (the request path); changes hold one lock and report
the endpoint whose numbers changed (the producer drops its cached features for it).

The sweep only looks at the oldest pending request of each endpoint: engines start requests roughly in
arrival order, so a request that got its first token behind an older one still waiting is counted a
little longer, never lost.

The other processes routing for the pool (the workers of a pod, replicas) send their per-endpoint totals
(`export_changes` / `import_changes`, absolute values per origin); `remote.total` holds their sums per
endpoint as (requests in flight, pending tokens), and the producer adds them to this process's own.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

from epp.framework.types import ResponseInfo
from epp.plugins.origin_totals import OriginTotals, changed_rows

__all__ = ["InFlightTracker", "TrackedRequest"]


@dataclass(slots=True, eq=False)
class TrackedRequest:
    endpoint: str
    tokens: int
    epoch: int
    response: ResponseInfo | None = None
    prefilled: bool = False
    released: bool = False


class InFlightTracker:
    def __init__(self, on_change: Callable[[str], None] = lambda key: None) -> None:
        self._lock = threading.Lock()
        self._on_change = on_change
        #: endpoint -> requests in flight (absent: none)
        self.inflight: dict[str, int] = {}
        #: endpoint -> uncached prompt tokens of its requests without a first token (absent: none)
        self.pending_tokens: dict[str, int] = {}
        self._fifo: dict[str, deque[TrackedRequest]] = {}
        # bumped when an endpoint leaves the pool, so a late completion cannot touch newer counts
        self._epochs: dict[str, int] = {}
        #: the other processes' (requests in flight, pending tokens) per endpoint, summed over them
        self.remote: OriginTotals[tuple[int, int]] = OriginTotals(_plus, any)
        self._exported: dict[str, tuple[int, int]] = {}

    def add(self, endpoint: str, tokens: int) -> TrackedRequest:
        with self._lock:
            entry = TrackedRequest(endpoint, max(0, tokens), self._epochs.get(endpoint, 0))
            self.inflight[endpoint] = self.inflight.get(endpoint, 0) + 1
            if entry.tokens:
                self.pending_tokens[endpoint] = self.pending_tokens.get(endpoint, 0) + entry.tokens
            fifo = self._fifo.get(endpoint)
            if fifo is None:
                fifo = self._fifo[endpoint] = deque()
            fifo.append(entry)
        self._on_change(endpoint)
        return entry

    def release(self, entry: TrackedRequest) -> None:
        """The request completed (or failed); a second call does nothing."""
        key = entry.endpoint
        with self._lock:
            if entry.released:
                return
            entry.released = True
            if self._epochs.get(key, 0) != entry.epoch:
                return
            left = self.inflight.get(key, 0) - 1
            if left > 0:
                self.inflight[key] = left
            else:
                self.inflight.pop(key, None)
            if not entry.prefilled:
                self._drop_pending(entry)
        self._on_change(key)

    def sweep(self) -> None:
        """Count the prompt of every request at the head of its endpoint's queue whose first byte came
        (or that completed) as prefilled."""
        changed: list[str] = []
        with self._lock:
            for key, fifo in list(self._fifo.items()):
                moved = False
                while fifo:
                    head = fifo[0]
                    response = head.response
                    if head.released or head.prefilled:
                        fifo.popleft()
                    elif response is not None and response.first_byte_at > 0.0:
                        self._drop_pending(head)
                        fifo.popleft()
                        moved = True
                    else:
                        break
                if not fifo:
                    del self._fifo[key]
                if moved:
                    changed.append(key)
        for key in changed:
            self._on_change(key)

    def retain(self, keys: Collection[str]) -> None:
        """Forget endpoints that left the pool (their requests' completions then change nothing here)."""
        with self._lock:
            gone = {k for k in (*self.inflight, *self.pending_tokens, *self._fifo) if k not in keys}
            for key in gone:
                self.inflight.pop(key, None)
                self.pending_tokens.pop(key, None)
                self._fifo.pop(key, None)
                self._epochs[key] = self._epochs.get(key, 0) + 1
            self.remote.retain(keys)

    # ---- the other processes' totals ----------------------------------------------------------------

    def export_changes(self) -> list[list[Any]] | None:
        """This process's per-endpoint totals that changed since the last export: `[endpoint, requests in
        flight, pending tokens]` (0, 0: none left there)."""
        with self._lock:
            current = {k: (n, self.pending_tokens.get(k, 0)) for k, n in self.inflight.items()}
            for k, tokens in self.pending_tokens.items():
                current.setdefault(k, (0, tokens))
            changed = changed_rows(self._exported, current, lambda v: v, (0, 0))
            self._exported = current
        return changed or None

    def import_changes(self, origin: str, changes: Sequence[Sequence[Any]]) -> None:
        with self._lock:
            for key, inflight, tokens in changes:
                self.remote.set(origin, key, (int(inflight), int(tokens)))
        for key, _, _ in changes:
            self._on_change(key)

    def forget_origin(self, origin: str) -> None:
        with self._lock:
            keys = self.remote.forget(origin)
        for key in keys:
            self._on_change(key)

    def _drop_pending(self, entry: TrackedRequest) -> None:
        entry.prefilled = True
        if not entry.tokens:
            return
        key = entry.endpoint
        left = self.pending_tokens.get(key, 0) - entry.tokens
        if left > 0:
            self.pending_tokens[key] = left
        else:
            self.pending_tokens.pop(key, None)


def _plus(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    return a[0] + b[0], a[1] + b[1]
