"""Fixtures of the config tests: a registry of small fake plugin types with the upstream type names."""

from __future__ import annotations

import pytest

from epp.registry import PluginRegistry

from .cfg_fakes import fake_registry


@pytest.fixture
def registry() -> PluginRegistry:
    return fake_registry()
