"""Fixtures of the config tests: a registry of small fake plugin types with the upstream type names."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from cfg_fakes import fake_registry

from epp.registry import PluginRegistry


@pytest.fixture
def registry() -> PluginRegistry:
    return fake_registry()
