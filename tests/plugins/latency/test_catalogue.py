"""The predicted-latency types are registered with upstream's names, kinds and data keys, documented,
listed in docs/index.md, and `profiles/slo-aware.yaml` builds with them."""

from __future__ import annotations

from pathlib import Path

import pytest

from epp.builtins import default_registry
from epp.config import build_pipeline, load_config_file
from epp.framework.plugins import PluginKind

from .._kit import assert_builds_with_defaults, assert_documented, handle, registry

ROOT = Path(__file__).resolve().parents[3]

NEW_TYPES = {
    "predicted-latency-producer": {
        PluginKind.DATA_PRODUCER,
        PluginKind.PRE_REQUEST,
        PluginKind.RESPONSE_RECEIVED,
        PluginKind.RESPONSE_COMPLETE,
    },
    "latency-scorer": {PluginKind.SCORER},
    "slo-headroom-tier-filter": {PluginKind.FILTER},
    "latency-slo-admitter": {PluginKind.ADMITTER},
}


@pytest.mark.parametrize("type_name", sorted(NEW_TYPES))
def test_registered_with_kinds_and_builds_with_defaults(type_name: str) -> None:
    assert_builds_with_defaults(type_name, NEW_TYPES[type_name])


@pytest.mark.parametrize("type_name", sorted(NEW_TYPES))
def test_documented_and_listed(type_name: str) -> None:
    assert_documented(type_name)
    assert f"(plugins/{type_name}.md)" in (ROOT / "docs" / "index.md").read_text()


def test_upstream_parameters_are_accepted() -> None:
    reg = registry()
    reg.get("predicted-latency-producer").build(
        "p",
        {
            "samplingMean": 500,
            "maxDecodeTokenSamplesForPrediction": 4,
            "sloBufferFactor": 0.9,
            "contextTTL": "5m",
            "streamingMode": True,
            "endpointRoleLabel": "llm-d.ai/role",
            "predictInPrepareData": True,
        },
        handle(),
    )
    reg.get("latency-scorer").build(
        "s",
        {
            "ttftWeight": 1,
            "tpotWeight": 0,
            "headroomSelectionStrategy": "most",
            "compositeKVWeight": 1,
            "compositeQueueWeight": 2,
            "compositePrefixWeight": 0,
        },
        handle(),
    )
    reg.get("slo-headroom-tier-filter").build("f", {"epsilonExploreNeg": 0.05}, handle())
    with pytest.raises(ValueError):
        reg.get("slo-headroom-tier-filter").build("f", {"epsilonExploreNeg": 2}, handle())


def test_the_producer_is_the_default_producer_of_its_data() -> None:
    reg = registry()
    assert reg.default_producer("LatencyPredictionInfo") == "predicted-latency-producer"
    assert reg.get("predicted-latency-producer").stateful


def test_slo_aware_profile_is_the_cost_model_plus_the_learned_latency() -> None:
    reg = default_registry()
    config = load_config_file(ROOT / "profiles" / "slo-aware.yaml", registry=reg, environ={})
    assert config.warnings == ()
    pipeline = build_pipeline(config, reg)
    producers = [p.typed_name.type for p in pipeline.producers]
    assert "predicted-latency-producer" in producers and "approx-prefix-cache-producer" in producers
    assert [a.typed_name.type for a in pipeline.admitters] == ["latency-slo-admitter"]
    profile = pipeline.scheduler.profiles["default"]
    assert profile.filters == () or list(profile.filters) == []
    weights = {w.scorer.typed_name.type: w.weight for w in profile.scorers}
    assert weights == {"prefill-cost-scorer": 2, "prefix-cache-scorer": 1, "latency-scorer": 1}
    latency = next(w.scorer for w in profile.scorers if w.scorer.typed_name.type == "latency-scorer")
    assert latency.params.headroomSelectionStrategy == "most"  # type: ignore[attr-defined]
    assert profile.picker.typed_name.type == "max-score-picker"
