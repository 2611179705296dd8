"""The scheduling-quality types are registered with their kinds and data keys, documented, and listed."""

from __future__ import annotations

from pathlib import Path

import pytest

from epp.framework.plugins import PluginKind

from .._kit import handle, registry
from ..test_plugin_docs import SECTIONS

DOCS = Path(__file__).resolve().parents[3] / "docs" / "plugins"

NEW_TYPES = {
    "prefill-cost-scorer": {PluginKind.SCORER},
    "prefill-load-producer": {
        PluginKind.DATA_PRODUCER,
        PluginKind.PRE_REQUEST,
        PluginKind.RESPONSE_RECEIVED,
        PluginKind.RESPONSE_COMPLETE,
    },
    "hot-prefix-spill-filter": {PluginKind.FILTER},
    "precise-prefix-cache-producer": {
        PluginKind.DATA_PRODUCER,
        PluginKind.PRE_REQUEST,
        PluginKind.RESPONSE_COMPLETE,
    },
    "precise-prefix-cache-scorer": {PluginKind.SCORER, PluginKind.ENDPOINT_EXTRACTOR},
}


@pytest.mark.parametrize("type_name", sorted(NEW_TYPES))
def test_registered_with_kinds_and_builds_with_defaults(type_name: str) -> None:
    entry = registry().get(type_name)
    assert entry.kinds == NEW_TYPES[type_name]
    plugin = entry.build("n", None, handle())
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


def test_default_producers_of_the_new_data_keys() -> None:
    reg = registry()
    assert reg.default_producer("PrefillLoad") == "prefill-load-producer"
    assert reg.default_producer("PrecisePrefixCacheMatchInfo") == "precise-prefix-cache-producer"
    assert reg.default_producer("PrefixCacheMatchInfo") == "approx-prefix-cache-producer"
    assert reg.get("precise-prefix-cache-producer").produces == {
        "PrefixCacheMatchInfo",
        "PrecisePrefixCacheMatchInfo",
    }
    for stateful in ("prefill-load-producer", "precise-prefix-cache-producer"):
        assert reg.get(stateful).stateful
