"""Per-request scratch space shared by the plugins of one scheduling cycle.

Keys are typed (`StateKey[T]`) so a producer and its consumers agree on the value type without a
grab-bag of untyped strings. A `CycleState` lives for one request only and is never shared.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar, cast

__all__ = ["CycleState", "StateKey"]

T = TypeVar("T")


class StateKey(Generic[T]):
    """A typed key into `CycleState`; compare by identity, name only for debugging."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"StateKey({self.name!r})"


class CycleState:
    """A small typed dictionary for one request's scheduling cycle."""

    __slots__ = ("_data",)

    def __init__(self) -> None:
        self._data: dict[StateKey[Any], Any] = {}

    def write(self, key: StateKey[T], value: T) -> None:
        self._data[key] = value

    def read(self, key: StateKey[T]) -> T | None:
        return cast("T | None", self._data.get(key))

    def read_or(self, key: StateKey[T], default: T) -> T:
        value = self._data.get(key, default)
        return cast("T", value)

    def delete(self, key: StateKey[Any]) -> None:
        self._data.pop(key, None)

    def __contains__(self, key: StateKey[Any]) -> bool:
        return key in self._data
