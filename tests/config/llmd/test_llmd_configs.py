"""Every config in this folder (llm-d-router's dialect: `apiVersion: llm-d.ai/v1alpha1`, llm-d's plugin
parameters) validates and builds with the built-in plugins, without warnings."""

from __future__ import annotations

from pathlib import Path

import pytest

from epp.builtins import default_registry
from epp.config import build_pipeline, load_config_file

HERE = Path(__file__).resolve().parent
FILES = sorted(HERE.glob("*.yaml"))


def test_the_folder_has_configs() -> None:
    assert "precise-prefix-cache.yaml" in {f.name for f in FILES}


@pytest.mark.parametrize("path", FILES, ids=[f.name for f in FILES])
def test_config_validates_and_builds(path: Path) -> None:
    assert path.read_text().startswith("#"), "say in a header comment what the config shows"
    registry = default_registry()
    config = load_config_file(path, registry=registry, environ={})
    assert config.warnings == ()
    pipeline = build_pipeline(config, registry)
    assert pipeline.scheduler.profiles


def test_precise_prefix_nested_parameters_reach_the_producer() -> None:
    registry = default_registry()
    config = load_config_file(HERE / "precise-prefix-cache.yaml", registry=registry, environ={})
    producer = next(p for p in config.plugins if p.type == "precise-prefix-cache-producer")
    assert producer.params.model_dump(
        include={
            "blockSizeTokens",
            "maxBlocksPerEndpoint",
            "otherTierWeight",
            "topicFilter",
            "kvEventsAddress",
            "speculativeTtlSeconds",
        }
    ) == {
        "blockSizeTokens": 64,
        "maxBlocksPerEndpoint": 100_000_000,
        "otherTierWeight": 0.8,
        "topicFilter": "kv@",
        "kvEventsAddress": "tcp://{ip}:5556",
        "speculativeTtlSeconds": 2.0,
    }
