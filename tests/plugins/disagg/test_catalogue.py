"""The llm-d P/D and data-parallel types are registered with their kinds, build, and are documented."""

from __future__ import annotations

from pathlib import Path

import pytest

from epp.framework.plugins import PluginKind

from .._kit import handle, registry
from ..prefill.test_catalogue_entries import NEW_TYPES as OTHER_NEW_TYPES
from ..test_builtins_registry import EXPECTED
from ..test_plugin_docs import SECTIONS

DOCS = Path(__file__).resolve().parents[3] / "docs" / "plugins"

NEW_TYPES = {
    "disagg-profile-handler": {PluginKind.PROFILE_HANDLER, PluginKind.PRE_REQUEST},
    "pd-profile-handler": {PluginKind.PROFILE_HANDLER},
    "data-parallel-profile-handler": {PluginKind.PROFILE_HANDLER},
    "prefix-based-pd-decider": set(),
    "always-disagg-pd-decider": set(),
    "prefill-header-handler": {PluginKind.PRE_REQUEST},
    "disagg-headers-handler": {PluginKind.PRE_REQUEST},
    "prefill-filter": {PluginKind.FILTER},
    "decode-filter": {PluginKind.FILTER},
}

#: Types whose factory needs another plugin (a decider) declared first.
NEEDS_DECIDER = {"pd-profile-handler"}


def test_not_listed_twice() -> None:
    assert not set(NEW_TYPES) & (set(EXPECTED) | set(OTHER_NEW_TYPES))


@pytest.mark.parametrize("type_name", sorted(NEW_TYPES))
def test_registered_with_kinds_and_builds_with_defaults(type_name: str) -> None:
    entry = registry().get(type_name)
    assert entry.kinds == NEW_TYPES[type_name]
    h = handle()
    if type_name in NEEDS_DECIDER:
        h.plugins["prefix-based-pd-decider"] = (
            registry().get("prefix-based-pd-decider").build("prefix-based-pd-decider", None, h)
        )
    plugin = entry.build("n", None, h)
    assert plugin.typed_name.type == type_name and plugin.typed_name.name == "n"
    schema = entry.params_model.model_json_schema()
    assert schema.get("additionalProperties") is False
    assert all(prop.get("description") for prop in schema.get("properties", {}).values())


@pytest.mark.parametrize("type_name", sorted(NEW_TYPES))
def test_documented(type_name: str) -> None:
    text = (DOCS / f"{type_name}.md").read_text()
    assert text.startswith(f"# `{type_name}`")
    positions = [text.find(s) for s in SECTIONS]
    assert all(p > 0 for p in positions) and positions == sorted(positions), positions
    for name in registry().get(type_name).params_model.model_json_schema().get("properties", {}):
        assert f"`{name}`" in text, f"{type_name}: parameter {name} undocumented"


def test_prefix_decider_consumes_the_prefix_match() -> None:
    assert registry().get("prefix-based-pd-decider").consumes == {"PrefixCacheMatchInfo"}
