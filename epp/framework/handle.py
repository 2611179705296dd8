"""What a plugin factory may use while building a plugin instance.

The handle gives access to plugins declared earlier in the config (by name), an injectable clock and
random source (for deterministic tests), and a sink for the few metrics that plugins report themselves.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["Handle", "NullPluginMetrics", "PluginMetrics", "SimpleHandle"]


class PluginMetrics(Protocol):
    """Metrics recorded by plugins (everything else is metered by the engine). The methods record
    nothing here: `NullPluginMetrics` is this protocol as a class."""

    def record_prefix_match(self, hit_ratio: float, hit_bytes: int) -> None:
        return None

    def record_latency_prediction(self, model: str, target_model: str, seconds: float) -> None:
        """The latency predictor took `seconds` to predict TTFT and TPOT for one request's candidates."""
        return None

    def record_latency_outcome(
        self,
        model: str,
        target_model: str,
        *,
        ttft: float,
        predicted_ttft: float,
        ttft_slo: float = 0.0,
        tpot: float = 0.0,
        predicted_tpot: float = 0.0,
        tpot_slo: float = 0.0,
    ) -> None:
        """A request the latency predictor predicted completed: observed and predicted seconds, and the
        request's SLOs in seconds (0: none; `tpot` 0: not measured)."""
        return None


class NullPluginMetrics(PluginMetrics):
    """A metrics sink that records nothing."""


class Handle(Protocol):
    @property
    def clock(self) -> Callable[[], float]:
        """Monotonic seconds, as `time.monotonic`."""
        ...

    @property
    def rng(self) -> random.Random: ...

    @property
    def metrics(self) -> PluginMetrics: ...

    def plugin(self, name: str) -> object:
        """A plugin declared earlier in the config; KeyError if there is none by that name."""
        ...


@dataclass
class SimpleHandle:
    """A handle backed by a dict of already-built plugins."""

    plugins: dict[str, object] = field(default_factory=dict)
    clock: Callable[[], float] = time.monotonic
    rng: random.Random = field(default_factory=random.Random)
    metrics: PluginMetrics = field(default_factory=NullPluginMetrics)

    def plugin(self, name: str) -> object:
        return self.plugins[name]
