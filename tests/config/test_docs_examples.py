"""The complete config examples in docs/configuration.md load and build (docs must not rot)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import epp.plugins
from epp.builtins import default_registry
from epp.config import build_pipeline, load_config

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
BLOCKS = [
    b for b in re.findall(r"```yaml\n(.*?)```", DOC.read_text(), re.S) if "kind: EndpointPickerConfig" in b
]

pytestmark = pytest.mark.skipif(
    not hasattr(epp.plugins, "register_builtins"), reason="the built-in plugin catalogue is not there yet"
)


def test_there_are_examples() -> None:
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("block", BLOCKS, ids=[f"example-{i}" for i in range(len(BLOCKS))])
def test_example_loads_and_builds(block: str) -> None:
    if "featureGates: [...]" in block:
        pytest.skip("the outline of the document, not a config")
    registry = default_registry()
    config = load_config(block, registry=registry, source="docs", environ={})
    build_pipeline(config, registry)
    assert config.warnings == ()
