"""Every built-in plugin of the scheduling catalogue has a docs/plugins/<type>.md page with the standard
sections, listing each of its parameters."""

from __future__ import annotations

from pathlib import Path

import pytest

from ._kit import registry
from .test_builtins_registry import EXPECTED

DOCS = Path(__file__).resolve().parents[2] / "docs" / "plugins"
SECTIONS = [
    "## What it does",
    "## Scheduling intent",
    "## Inputs consumed",
    "## Parameters",
    "## Differences from upstream",
]


@pytest.mark.parametrize("type_name", sorted(EXPECTED))
def test_plugin_page(type_name: str) -> None:
    page = DOCS / f"{type_name}.md"
    assert page.is_file(), f"missing {page}"
    text = page.read_text()
    assert text.startswith(f"# `{type_name}`")
    positions = [text.find(s) for s in SECTIONS]
    assert all(p > 0 for p in positions) and positions == sorted(positions), positions
    params = registry().get(type_name).params_model.model_json_schema()
    if "$ref" in params:
        params = params["$defs"][params["$ref"].rsplit("/", 1)[-1]]
    for name in params.get("properties", {}):
        assert f"`{name}`" in text, f"{type_name}: parameter {name} undocumented"
