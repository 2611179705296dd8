"""The plugin registry: plugin type name → how to validate its parameters and build it.

A registry is an instance passed around, never a module global, so tests build their own. Built-in types
are added by one explicit list (`epp.plugins.register_builtins`); third-party types come from the
`epp.plugins` entry-point group, where each entry point names a `PluginType` or a zero-argument callable
returning an iterable of them.
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

from epp.errors import EppError
from epp.framework.handle import Handle
from epp.framework.plugins import PluginKind

__all__ = [
    "DuplicatePluginType",
    "EmptyParams",
    "PluginRegistry",
    "PluginType",
    "UnknownPluginType",
]

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)


class EmptyParams(BaseModel):
    """Parameters of a plugin type that takes none (any key is an error)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class PluginType(Generic[M]):
    """A registered plugin type.

    Attributes:
        type_name: the kebab-case name used in configs (upstream's names where they exist).
        params_model: a pydantic model with `extra="forbid"`; it validates `parameters` and is the source of
            the type's JSON schema.
        factory: builds an instance from (name, validated parameters, handle).
        kinds: the extension points instances fill.
        description: one line for `epp schema` and the docs.
        consumes / produces: data keys, used to create missing producers with defaults.
        stateful: instances keep state worth carrying over a config reload when unchanged.
    """

    type_name: str
    params_model: type[M]
    factory: Callable[[str, M, Handle], Any]
    kinds: frozenset[PluginKind]
    description: str = ""
    consumes: frozenset[str] = field(default_factory=frozenset)
    produces: frozenset[str] = field(default_factory=frozenset)
    stateful: bool = False

    def build(self, name: str, raw_params: Any, handle: Handle) -> Any:
        """Validate raw parameters and build an instance (raises pydantic.ValidationError)."""
        params = self.params_model.model_validate({} if raw_params is None else raw_params)
        return self.factory(name, params, handle)


class DuplicatePluginType(EppError):
    def __init__(self, type_name: str) -> None:
        super().__init__(f"a plugin type named '{type_name}' is already registered")


class UnknownPluginType(EppError):
    def __init__(self, type_name: str, known: Iterable[str]) -> None:
        self.type_name = type_name
        self.known = sorted(known)
        super().__init__(f"plugin type '{type_name}' is not registered; known types: {', '.join(self.known)}")


class PluginRegistry:
    """Plugin types by name, plus which type produces each data key by default."""

    def __init__(self) -> None:
        self._types: dict[str, PluginType[Any]] = {}
        self._default_producers: dict[str, str] = {}
        self._unavailable: dict[str, str] = {}

    def register(self, entry: PluginType[Any], *, default_producer_for: Iterable[str] = ()) -> None:
        """Add a type; a second type with the same name is an error, never a silent overwrite."""
        if entry.type_name in self._types:
            raise DuplicatePluginType(entry.type_name)
        self._types[entry.type_name] = entry
        for key in default_producer_for:
            self._default_producers[key] = entry.type_name

    def get(self, type_name: str) -> PluginType[Any]:
        try:
            return self._types[type_name]
        except KeyError:
            raise UnknownPluginType(type_name, self._types) from None

    def __contains__(self, type_name: object) -> bool:
        return type_name in self._types

    def __iter__(self) -> Iterator[PluginType[Any]]:
        return iter(sorted(self._types.values(), key=lambda t: t.type_name))

    def __len__(self) -> int:
        return len(self._types)

    def names(self) -> list[str]:
        return sorted(self._types)

    def default_producer(self, data_key: str) -> str | None:
        """The type registered as the default producer of `data_key`, if any."""
        return self._default_producers.get(data_key)

    def unavailable_reason(self, type_name: str) -> str | None:
        """Why a type this registry was built `without` cannot be used here (None: not withheld)."""
        return self._unavailable.get(type_name)

    def without(self, reasons: dict[str, str]) -> PluginRegistry:
        """A copy without the given types; a config naming one is refused with its reason (e.g. a
        Kubernetes-only type in a daemon that runs without Kubernetes)."""
        out = PluginRegistry()
        out._types = {k: t for k, t in self._types.items() if k not in reasons}
        out._default_producers = {k: t for k, t in self._default_producers.items() if t not in reasons}
        out._unavailable = {**self._unavailable, **reasons}
        return out

    def merge(self, other: PluginRegistry) -> None:
        for entry in other:
            keys = [k for k, t in other._default_producers.items() if t == entry.type_name]
            self.register(entry, default_producer_for=keys)

    def load_entry_points(self, group: str = "epp.plugins") -> int:
        """Register third-party plugin types from an entry-point group; returns how many were added."""
        added = 0
        for ep in importlib.metadata.entry_points(group=group):
            loaded = ep.load()
            entries = loaded() if callable(loaded) and not isinstance(loaded, PluginType) else loaded
            if isinstance(entries, PluginType):
                entries = [entries]
            for entry in entries:
                if not isinstance(entry, PluginType):
                    raise EppError(
                        f"entry point {ep.name!r} in {group!r} yielded {entry!r}, not a PluginType"
                    )
                self.register(entry)
                added += 1
            log.info("loaded plugin entry point %s from %s", ep.name, ep.value)
        return added
