"""Per-endpoint totals reported by the other processes routing for the pool, summed over them.

The SharedState plugins that share load (in-flight requests, pending prefill) send each endpoint's absolute
totals per origin (a lost message is corrected by the next one). `OriginTotals` keeps every origin's latest
values and their sum per endpoint (`total`, a plain dict the request path may read without a lock). It does
no locking of its own: the owning plugin calls it under its lock. `changed_rows` is the sending side: the
rows of the local totals that changed since the last export.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Generic, TypeVar

__all__ = ["OriginTotals", "changed_rows"]

V = TypeVar("V")


class OriginTotals(Generic[V]):
    """`add` sums two values; `present` tells a value worth keeping (an empty one removes the endpoint)."""

    __slots__ = ("_add", "_by_origin", "_present", "total")

    def __init__(self, add: Callable[[V, V], V], present: Callable[[V], bool]) -> None:
        self._add = add
        self._present = present
        self._by_origin: dict[str, dict[str, V]] = {}
        #: endpoint -> the sum over every origin (absent: nothing anywhere)
        self.total: dict[str, V] = {}

    def __bool__(self) -> bool:
        return bool(self.total)

    def set(self, origin: str, key: str, value: V) -> None:
        """The origin's latest value for the endpoint."""
        values = self._by_origin.setdefault(origin, {})
        if self._present(value):
            values[key] = value
        else:
            values.pop(key, None)
        self._sum(key)

    def forget(self, origin: str) -> list[str]:
        """Drop what a process that is gone reported; returns the endpoints whose totals changed."""
        keys = list(self._by_origin.pop(origin, None) or ())
        for key in keys:
            self._sum(key)
        return keys

    def retain(self, keys: Collection[str]) -> None:
        """Forget endpoints that left the pool."""
        for values in self._by_origin.values():
            for key in [k for k in values if k not in keys]:
                del values[key]
        for key in [k for k in self.total if k not in keys]:
            del self.total[key]

    def _sum(self, key: str) -> None:
        total: V | None = None
        for values in self._by_origin.values():
            v = values.get(key)
            if v is not None:
                total = v if total is None else self._add(total, v)
        if total is None or not self._present(total):
            self.total.pop(key, None)
        else:
            self.total[key] = total


def changed_rows(
    previous: Mapping[str, V],
    current: Mapping[str, V],
    fields: Callable[[V], Sequence[Any]],
    empty: Sequence[Any],
) -> list[list[Any]]:
    """`[endpoint, *fields(value)]` for every endpoint whose value differs from the previous export, and
    `[endpoint, *empty]` for every one exported before that has nothing now."""
    rows = [[key, *fields(value)] for key, value in current.items() if previous.get(key) != value]
    rows += [[key, *empty] for key in previous if key not in current]
    return rows
