"""Flow-control policy plugins: fairness (between flows), ordering (within a flow), usage limits (bands)."""

from __future__ import annotations

from typing import Any

from epp.plugins.flowcontrol.fairness import GLOBAL_STRICT_FAIRNESS_POLICY, ROUND_ROBIN_FAIRNESS_POLICY
from epp.plugins.flowcontrol.ordering import (
    EDF_ORDERING_POLICY,
    FCFS_ORDERING_POLICY,
    SLO_DEADLINE_ORDERING_POLICY,
)
from epp.plugins.flowcontrol.usage_limit import STATIC_USAGE_LIMIT_POLICY
from epp.registry import PluginType

__all__ = ["PLUGIN_TYPES"]

PLUGIN_TYPES: tuple[PluginType[Any], ...] = (
    GLOBAL_STRICT_FAIRNESS_POLICY,
    ROUND_ROBIN_FAIRNESS_POLICY,
    FCFS_ORDERING_POLICY,
    EDF_ORDERING_POLICY,
    SLO_DEADLINE_ORDERING_POLICY,
    STATIC_USAGE_LIMIT_POLICY,
)
