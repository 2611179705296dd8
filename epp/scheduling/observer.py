"""How the engine reports plugin and scheduler latency without depending on a metrics library."""

from __future__ import annotations

from typing import Protocol

from epp.framework.types import TypedName

__all__ = ["NullObserver", "SchedulerObserver"]


class SchedulerObserver(Protocol):
    def plugin_duration(self, extension_point: str, plugin: TypedName, seconds: float) -> None: ...

    def scheduler_duration(self, seconds: float) -> None: ...


class NullObserver:
    """Records nothing (tests and benchmarks of the bare engine)."""

    def plugin_duration(self, extension_point: str, plugin: TypedName, seconds: float) -> None:
        return None

    def scheduler_duration(self, seconds: float) -> None:
        return None
