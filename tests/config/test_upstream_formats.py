"""Configs in each upstream format generation load and build with the real plugin catalogue.

The fixtures in `valid/` follow upstream's shapes: v0.5 (decision tree, explicit handler, integer
weights, `kv-cache-scorer`), v1.0 (relying on defaults), v1.2 (inline saturation thresholds), v1.3/1.4
(`data`), v1.5 (`dataLayer`, `saturationDetector.pluginRef`, `parser`), the GIE integration-test config,
the Helm chart's rendered config and the flow-control guide.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import epp.plugins
from epp.builtins import default_registry
from epp.config import EffectiveConfig, build_pipeline, load_config_file
from epp.scheduling.pipeline import Pipeline

pytestmark = pytest.mark.skipif(
    not hasattr(epp.plugins, "register_builtins"), reason="the built-in plugin catalogue is not there yet"
)

VALID = Path(__file__).parent / "valid"


def load(name: str) -> tuple[EffectiveConfig, Pipeline]:
    registry = default_registry()
    config = load_config_file(VALID / name, registry=registry, environ={})
    return config, build_pipeline(config, registry)


def scorers(pipeline: Pipeline, profile: str = "default") -> list[tuple[str, float]]:
    return [(w.scorer.typed_name.name, w.weight) for w in pipeline.scheduler.profiles[profile].scorers]


UPSTREAM_TYPES = [
    "queue-scorer",
    "kv-cache-utilization-scorer",
    "prefix-cache-scorer",
    "lora-affinity-scorer",
    "running-requests-size-scorer",
    "token-load-scorer",
    "approx-prefix-cache-producer",
    "inflight-load-producer",
    "max-score-picker",
    "random-picker",
    "weighted-random-picker",
    "single-profile-handler",
    "header-based-testing-filter",
    "prefix-cache-affinity-filter",
    "low-queue-filter",
    "least-queue-filter",
    "least-kv-cache-filter",
    "lora-affinity-filter",
    "decision-tree-filter",
    "openai-parser",
    "passthrough-parser",
    "metrics-data-source",
    "core-metrics-extractor",
]


def test_default_registry_has_the_upstream_types() -> None:
    names = set(default_registry().names())
    assert set(UPSTREAM_TYPES) <= names, sorted(set(UPSTREAM_TYPES) - names)


def test_every_valid_fixture_loads_and_builds() -> None:
    files = sorted(VALID.glob("*.yaml"))
    assert len(files) >= 10
    for path in files:
        load(path.name)


def test_v05_decision_tree() -> None:
    config, pipeline = load("v05-decision-tree.yaml")
    profile = pipeline.scheduler.profiles["default"]
    assert [f.typed_name.name for f in profile.filters] == ["low-latency-filter"]
    assert profile.scorers == ()
    assert profile.picker.typed_name.type == "random-picker"
    assert (
        config.profile_handler == "single-profile-handler"
        and config.plugin("single-profile-handler").declared
    )
    assert config.warnings == ()


def test_v05_plugins_v2_with_renamed_type_and_classic_prefix_parameters() -> None:
    config, pipeline = load("v05-plugins-v2.yaml")
    assert scorers(pipeline) == [
        ("queue-scorer", 1.0),
        ("kv-cache-scorer", 1.0),
        ("prefix-cache-scorer", 1.0),
    ]
    assert pipeline.plugins["kv-cache-scorer"].typed_name.type == "kv-cache-utilization-scorer"  # type: ignore[attr-defined]
    # the classic parameters on the scorer configure the producer created for it
    producer = config.plugin("approx-prefix-cache-producer")
    assert not producer.declared
    assert producer.params.model_dump(by_alias=True, exclude_unset=True)["lruCapacityPerServer"] == 31250
    assert [w.path for w in config.warnings] == ["plugins[1].type"]


def test_v10_relies_on_defaults() -> None:
    config, pipeline = load("v10-helm-default.yaml")
    assert scorers(pipeline) == [
        ("queue-scorer", 1.0),
        ("kv-cache-utilization-scorer", 1.0),
        ("prefix-cache-scorer", 1.0),
    ]
    assert pipeline.scheduler.profiles["default"].picker.typed_name.type == "max-score-picker"
    assert pipeline.scheduler.profile_handler.typed_name.type == "single-profile-handler"
    assert pipeline.parser.typed_name.type == "openai-parser"
    assert config.data_layer is not None and config.saturation_detector == "utilization-detector"


def test_v10_without_profiles_keeps_file_order() -> None:
    _, pipeline = load("v10-no-profiles.yaml")
    assert scorers(pipeline) == [("prefix-cache-scorer", 1.0), ("queue-scorer", 1.0)]


def test_v15_data_layer_detector_and_parser() -> None:
    config, pipeline = load("v15-datalayer.yaml")
    assert scorers(pipeline) == [("queue-scorer", 2.0), ("kv", 2.0), ("prefix-cache-scorer", 3.0)]
    assert pipeline.saturation_detector is pipeline.plugins["utilization-detector"]
    assert pipeline.parser is pipeline.plugins["openai-parser"]
    assert pipeline.extras["dataLayer"] is config.data_layer
    assert [p.typed_name.name for p in pipeline.producers] == ["approx-prefix-cache-producer"]
    assert all(
        p.declared
        for p in config.plugins
        if p.type != "single-profile-handler" and p.type != "max-score-picker"
    )
    assert config.warnings == ()


def test_gie_integration_config_with_legacy_metrics() -> None:
    config, pipeline = load("gie-integration-default.yaml")
    assert [name for name, _ in scorers(pipeline)] == [
        "queue-scorer",
        "kv-cache-utilization-scorer",
        "prefix-cache-scorer",
        "lora-affinity-scorer",
    ]
    assert config.feature_gates == frozenset({"enableLegacyMetrics"})
    assert config.data_layer is None and pipeline.extras["dataLayer"] is None


def test_chart_config_reuses_declared_data_layer_plugins() -> None:
    config, pipeline = load("epplib-chart.yaml")
    assert scorers(pipeline) == [
        ("queue-scorer", 2.0),
        ("kv-cache-utilization-scorer", 2.0),
        ("prefix-cache-scorer", 3.0),
    ]
    assert config.data_layer is not None
    assert config.plugin("metrics-data-source").declared


def test_flow_control_guide() -> None:
    config, pipeline = load("flow-control-guide.yaml")
    fc = pipeline.extras["flowControl"]
    assert fc is config.flow_control and fc is not None
    assert fc.max_bytes == 10 * 2**30 and fc.default_request_ttl == 60.0
    assert fc.band_for(100).max_requests == 500
    assert fc.band_for(1).max_requests == 5000
    assert "flowControl" in pipeline.feature_gates


def test_v12_inline_saturation_thresholds() -> None:
    config, pipeline = load("v12-inline-saturation.yaml")
    assert pipeline.saturation_detector is not None
    detector = config.plugin(config.saturation_detector or "")
    dumped = detector.params.model_dump(by_alias=True, exclude_unset=True)
    assert dumped["queueDepthThreshold"] == 8 and dumped["kvCacheUtilThreshold"] == 0.9
    assert [w.path for w in config.warnings] == ["saturationDetector"]


def test_v13_data_key() -> None:
    config, pipeline = load("v13-data-key.yaml")
    assert config.data_layer is not None
    assert scorers(pipeline) == [("queue-scorer", 1.5), ("running-requests-size-scorer", 0.5)]
    assert [w.path for w in config.warnings] == ["data"]


def test_reference_illustrative_config() -> None:
    config, pipeline = load("reference-illustrative.yaml")
    assert config.flow_control is not None
    assert pipeline.saturation_detector is pipeline.plugins["utilization-detector"]
    assert scorers(pipeline) == [("queue-scorer", 2.0), ("kv", 2.0), ("prefix-cache-scorer", 3.0)]
