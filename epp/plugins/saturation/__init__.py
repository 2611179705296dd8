"""Saturation detectors: `utilization-detector` and `concurrency-detector` (detector + filter kinds)."""

from __future__ import annotations

from typing import Any

from epp.plugins.saturation.concurrency import CONCURRENCY_DETECTOR
from epp.plugins.saturation.utilization import UTILIZATION_DETECTOR
from epp.registry import PluginType

__all__ = ["CONCURRENCY_DETECTOR", "PLUGIN_TYPES", "UTILIZATION_DETECTOR"]

PLUGIN_TYPES: tuple[PluginType[Any], ...] = (UTILIZATION_DETECTOR, CONCURRENCY_DETECTOR)
