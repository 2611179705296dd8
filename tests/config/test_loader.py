"""The loader's upstream semantics: defaults it injects, what it accepts, what it warns about."""

from __future__ import annotations

import pytest

from epp.config import load_config, load_config_file, load_config_source, load_default_config
from epp.config.loader import DEFAULT_SOURCE, TEXT_SOURCE
from epp.errors import ConfigError
from epp.registry import PluginRegistry

from .cfg_fakes import fake_registry

HEAD = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"


def load(body: str, registry: PluginRegistry, **kw):  # type: ignore[no-untyped-def]
    return load_config(HEAD + body, registry=registry, environ=kw.pop("environ", {}), **kw)


def entries(config, profile: str = "default") -> list[tuple[str, float]]:  # type: ignore[no-untyped-def]
    prof = next(p for p in config.profiles if p.name == profile)
    return [(e.plugin, e.weight) for e in prof.entries]


def warnings(config) -> list[str]:  # type: ignore[no-untyped-def]
    return [f"{w.line}: {w.path}: {w.message}" for w in config.warnings]


# ---- the built-in default ------------------------------------------------------------------------


def test_no_config_is_upstreams_default(registry: PluginRegistry) -> None:
    config = load_default_config(registry, environ={})
    assert config.source == DEFAULT_SOURCE and config.is_default
    assert entries(config) == [
        ("queue-scorer", 2.0),
        ("kv-cache-utilization-scorer", 2.0),
        ("prefix-cache-scorer", 3.0),
        ("max-score-picker", 1.0),
    ]
    assert config.profile_handler == "single-profile-handler"
    assert config.parser == "openai-parser"
    assert config.saturation_detector == "utilization-detector"
    assert config.producers == ("approx-prefix-cache-producer",)
    assert config.data_layer is not None
    assert [(s.plugin_ref, [e.plugin_ref for e in s.extractors]) for s in config.data_layer.sources] == [
        ("metrics-data-source", ["core-metrics-extractor"])
    ]
    assert config.warnings == ()
    assert config.summary() == "5 plugins, profiles: default (built-in default config)"


def test_default_config_without_data_layer_or_detector_types() -> None:
    registry = fake_registry(detector=False, data_layer=False)
    config = load_default_config(registry, environ={})
    assert config.saturation_detector is None
    assert config.data_layer is None
    assert [p.name for p in config.declared_plugins] == [
        "queue-scorer",
        "kv-cache-utilization-scorer",
        "prefix-cache-scorer",
    ]


@pytest.mark.parametrize("text", ["", "   \n", "# just a comment\n"])
def test_empty_text_means_the_default(registry: PluginRegistry, text: str) -> None:
    config = load_config(text, registry=registry, source="cm.yaml", environ={})
    assert config.is_default and config.source == "cm.yaml"
    assert entries(config)[0] == ("queue-scorer", 2.0)


def test_config_hash_is_sha256_of_the_bytes(registry: PluginRegistry) -> None:
    import hashlib

    text = HEAD + "plugins: [{type: queue-scorer}]\n"
    assert (
        load_config(text, registry=registry, environ={}).config_hash
        == hashlib.sha256(text.encode()).hexdigest()
    )


def test_load_config_source_prefers_file_then_text_then_default(registry: PluginRegistry, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "c.yaml"
    path.write_text(HEAD + "plugins: [{type: random-picker}]\n")
    assert load_config_source(str(path), None, registry=registry, environ={}).source == str(path)
    assert load_config_source(None, HEAD, registry=registry, environ={}).source == TEXT_SOURCE
    assert load_config_source(None, None, registry=registry, environ={}).source == DEFAULT_SOURCE


def test_unreadable_file_is_a_located_problem(registry: PluginRegistry, tmp_path) -> None:  # type: ignore[no-untyped-def]
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config_file(missing, registry=registry)
    (problem,) = info.value.problems
    assert problem.file == str(missing) and problem.line == 1
    assert "cannot read the config file" in problem.message


def test_invalid_utf8_names_the_line(registry: PluginRegistry) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(HEAD.encode() + b"plugins: \xff\n", registry=registry, source="b.yaml")
    assert [(p.line, p.message) for p in info.value.problems] == [(3, "the config is not valid UTF-8 text")]


# ---- names, profiles, handler, picker, weights ---------------------------------------------------


def test_name_defaults_to_type_and_weight_to_one(registry: PluginRegistry) -> None:
    config = load(
        "plugins:\n- type: queue-scorer\n- name: kv\n  type: kv-cache-utilization-scorer\n"
        "schedulingProfiles:\n- name: p\n  plugins:\n  - pluginRef: queue-scorer\n"
        "  - pluginRef: kv\n    weight: 2.5\n",
        registry,
    )
    assert entries(config, "p") == [("queue-scorer", 1.0), ("kv", 2.5), ("max-score-picker", 1.0)]
    assert config.plugin("kv").type == "kv-cache-utilization-scorer"


def test_default_profile_takes_filters_scorers_and_picker_in_file_order(registry: PluginRegistry) -> None:
    config = load(
        "plugins:\n"
        "- type: random-picker\n"
        "- type: queue-scorer\n"
        "- type: openai-parser\n"
        "- type: low-queue-filter\n"
        "- type: test-admitter\n"
        "- type: kv-cache-utilization-scorer\n",
        registry,
    )
    assert [p.name for p in config.profiles] == ["default"]
    assert entries(config) == [
        ("random-picker", 1.0),
        ("queue-scorer", 1.0),
        ("low-queue-filter", 1.0),
        ("kv-cache-utilization-scorer", 1.0),
    ]
    assert config.parser == "openai-parser"


def test_single_profile_gets_single_profile_handler(registry: PluginRegistry) -> None:
    config = load("plugins: [{type: queue-scorer}]\n", registry)
    assert config.profile_handler == "single-profile-handler"
    assert config.plugin("single-profile-handler").default_reason == "one profile and no profile handler"


def test_declared_handler_is_kept(registry: PluginRegistry) -> None:
    config = load(
        "plugins:\n- name: h\n  type: fake-multi-profile-handler\n- type: queue-scorer\n"
        "schedulingProfiles:\n- name: a\n  plugins: [{pluginRef: queue-scorer}]\n"
        "- name: b\n  plugins: [{pluginRef: queue-scorer}]\n",
        registry,
    )
    assert config.profile_handler == "h"
    assert [p.name for p in config.profiles] == ["a", "b"]
    # both profiles got the same default picker
    assert entries(config, "a")[-1] == entries(config, "b")[-1] == ("max-score-picker", 1.0)
    assert sum(1 for p in config.plugins if p.type == "max-score-picker") == 1


def test_missing_picker_reuses_a_declared_max_score_picker(registry: PluginRegistry) -> None:
    config = load(
        "plugins:\n- type: queue-scorer\n- name: top2\n  type: max-score-picker\n"
        "  parameters: {maxNumOfEndpoints: 2}\n"
        "- type: random-picker\n"
        "schedulingProfiles:\n- name: p\n  plugins: [{pluginRef: queue-scorer}]\n",
        registry,
    )
    assert entries(config, "p") == [("queue-scorer", 1.0), ("top2", 1.0)]
    assert not any(p.name == "max-score-picker" for p in config.plugins)


@pytest.mark.parametrize("picker", ["random-picker", "weighted-random-picker"])
def test_missing_picker_reuses_the_first_declared_picker_of_any_type(
    registry: PluginRegistry, picker
) -> None:
    config = load(
        f"plugins:\n- type: queue-scorer\n- type: {picker}\n- name: top2\n  type: max-score-picker\n"
        "schedulingProfiles:\n- name: p\n  plugins: [{pluginRef: queue-scorer}]\n",
        registry,
    )
    assert entries(config, "p") == [("queue-scorer", 1.0), (picker, 1.0)]
    assert not any(p.name == "max-score-picker" for p in config.plugins)


def test_declared_picker_is_not_doubled(registry: PluginRegistry) -> None:
    config = load(
        "plugins: [{type: queue-scorer}, {type: weighted-random-picker}]\n"
        "schedulingProfiles:\n- name: p\n"
        "  plugins: [{pluginRef: queue-scorer}, {pluginRef: weighted-random-picker}]\n",
        registry,
    )
    assert entries(config, "p") == [("queue-scorer", 1.0), ("weighted-random-picker", 1.0)]


def test_integer_weights_of_v05_configs_are_floats(registry: PluginRegistry) -> None:
    config = load(
        "plugins: [{type: queue-scorer}]\nschedulingProfiles:\n- name: p\n  plugins:\n"
        "  - {pluginRef: queue-scorer, weight: 50}\n",
        registry,
    )
    assert entries(config, "p")[0] == ("queue-scorer", 50.0)
    assert isinstance(entries(config, "p")[0][1], float)


def test_weight_warnings(registry: PluginRegistry) -> None:
    config = load(
        "plugins: [{type: queue-scorer}, {type: low-queue-filter}, {type: test-admitter}]\n"
        "schedulingProfiles:\n- name: p\n  plugins:\n"
        "  - {pluginRef: queue-scorer, weight: 0}\n"
        "  - {pluginRef: low-queue-filter, weight: 3}\n"
        "  - {pluginRef: test-admitter}\n",
        registry,
    )
    assert warnings(config) == [
        "7: schedulingProfiles[0].plugins[0].weight: weight 0: this scorer does not count",
        "8: schedulingProfiles[0].plugins[1].weight: weight has no effect: plugin 'low-queue-filter' "
        "(type: low-queue-filter) is not a scorer",
        "9: schedulingProfiles[0].plugins[2]: plugin 'test-admitter' (type: test-admitter) is not a filter, "
        "scorer or picker, so it does nothing in a profile (its request hooks run whether or not it is "
        "listed)",
    ]


def test_null_lists_are_empty(registry: PluginRegistry) -> None:
    config = load("featureGates:\nplugins:\n- type: queue-scorer\nschedulingProfiles:\n", registry)
    assert entries(config) == [("queue-scorer", 1.0), ("max-score-picker", 1.0)]


def test_renamed_upstream_type_loads_with_a_warning(registry: PluginRegistry) -> None:
    config = load("plugins:\n- type: kv-cache-scorer\n", registry)
    assert config.plugin("kv-cache-scorer").type == "kv-cache-utilization-scorer"
    assert warnings(config) == [
        "4: plugins[0].type: plugin type 'kv-cache-scorer' was renamed 'kv-cache-utilization-scorer' "
        "upstream; using kv-cache-utilization-scorer"
    ]


# ---- parser, saturation detector, data layer -----------------------------------------------------


def test_parser_ref_to_registered_type_is_created(registry: PluginRegistry) -> None:
    config = load("plugins: [{type: queue-scorer}]\nparser: {pluginRef: passthrough-parser}\n", registry)
    assert config.parser == "passthrough-parser"
    assert config.plugin("passthrough-parser").default_reason == "referenced by parser.pluginRef"


def test_declared_parser_with_custom_name(registry: PluginRegistry) -> None:
    config = load(
        "plugins:\n- {name: p, type: passthrough-parser}\n- {type: queue-scorer}\nparser: {pluginRef: p}\n",
        registry,
    )
    assert config.parser == "p"
    assert not any(d.type == "openai-parser" for d in config.plugins)


def test_inline_saturation_detector_is_translated(registry: PluginRegistry) -> None:
    config = load(
        "saturationDetector:\n  queueDepthThreshold: 7\n  kvCacheUtilThreshold: 0.9\n"
        "  metricsStalenessThreshold: 300ms\n",
        registry,
    )
    detector = config.plugin(config.saturation_detector or "")
    assert detector.type == "utilization-detector"
    assert detector.params.model_dump(by_alias=True) == {
        "queueDepthThreshold": 7,
        "kvCacheUtilThreshold": 0.9,
        "metricsStalenessThreshold": "300ms",
    }
    assert warnings(config) == [
        "3: saturationDetector: deprecated inline thresholds (v1.2 format): translated into a "
        "utilization-detector plugin; declare it under plugins and set saturationDetector.pluginRef instead"
    ]


def test_inline_saturation_detector_without_the_type_is_ignored_with_a_warning() -> None:
    config = load("saturationDetector: {queueDepthThreshold: 7}\n", fake_registry(detector=False))
    assert config.saturation_detector is None
    assert "ignored: this build has no utilization-detector" in warnings(config)[0]


def test_declared_detector_under_another_name_is_pointed_out(registry: PluginRegistry) -> None:
    config = load(
        "plugins:\n- {name: ud, type: utilization-detector, parameters: {queueDepthThreshold: 9}}\n", registry
    )
    assert config.saturation_detector == "utilization-detector"
    assert any("'ud' is declared but not used as the saturation detector" in w for w in warnings(config))


def test_saturation_detector_ref(registry: PluginRegistry) -> None:
    config = load(
        "plugins:\n- {name: ud, type: utilization-detector}\n- {type: queue-scorer}\n"
        "schedulingProfiles:\n- name: p\n  plugins: [{pluginRef: queue-scorer}]\n"
        "saturationDetector: {pluginRef: ud}\n",
        registry,
    )
    assert config.saturation_detector == "ud"
    assert sum(1 for p in config.plugins if p.type == "utilization-detector") == 1


def test_deprecated_data_key(registry: PluginRegistry) -> None:
    config = load(
        "plugins: [{type: metrics-data-source}, {type: core-metrics-extractor}, {type: queue-scorer}]\n"
        "data:\n  sources:\n  - pluginRef: metrics-data-source\n"
        "    extractors: [{pluginRef: core-metrics-extractor}]\n",
        registry,
    )
    assert config.data_layer is not None and config.data_layer.sources[0].plugin_ref == "metrics-data-source"
    assert warnings(config) == ["4: data: 'data' is the deprecated v1.3/v1.4 name of 'dataLayer'; rename it"]


def test_default_data_layer_reuses_declared_plugins(registry: PluginRegistry) -> None:
    config = load(
        "plugins:\n- {type: queue-scorer}\n- type: metrics-data-source\n  parameters: {scheme: https}\n"
        "- {type: core-metrics-extractor}\n",
        registry,
    )
    assert config.plugin("metrics-data-source").declared
    assert config.plugin("metrics-data-source").params.model_dump()["scheme"] == "https"


def test_empty_data_layer_is_kept_with_a_warning(registry: PluginRegistry) -> None:
    config = load("plugins: [{type: queue-scorer}]\ndataLayer: {sources: []}\n", registry)
    assert config.data_layer is not None and config.data_layer.sources == []
    assert warnings(config) == [
        "4: dataLayer.sources: no data sources: no model-server metrics will be collected"
    ]


def test_legacy_metrics_gate_drops_the_data_layer(registry: PluginRegistry) -> None:
    config = load(
        "featureGates: [enableLegacyMetrics]\nplugins: [{type: queue-scorer}]\n"
        "dataLayer: {sources: [{pluginRef: zzz}]}\n",
        registry,
    )
    assert config.data_layer is None
    assert config.feature_gates == frozenset({"enableLegacyMetrics"})
    assert "dataLayer is ignored: the enableLegacyMetrics feature gate is set" in warnings(config)[0]


def test_datalayer_gate_is_a_deprecated_no_op(registry: PluginRegistry) -> None:
    config = load("featureGates: [dataLayer]\n", registry)
    assert warnings(config) == [
        "3: featureGates[0]: feature gate 'dataLayer' is deprecated and has no effect: "
        "the data layer is always on"
    ]


def test_prepare_data_plugins_gate_of_older_configs_is_a_deprecated_no_op(registry: PluginRegistry) -> None:
    config = load("featureGates: [prepareDataPlugins]\n", registry)
    assert warnings(config) == [
        "3: featureGates[0]: feature gate 'prepareDataPlugins' is deprecated and has no effect: "
        "producers always run"
    ]
    assert config.feature_gates == frozenset({"prepareDataPlugins"})


# ---- flow control --------------------------------------------------------------------------------


def test_flow_control_is_ignored_without_its_gate(registry: PluginRegistry) -> None:
    config = load("flowControl: {maxBytes: 10Gi}\n", registry)
    assert config.flow_control is None
    assert warnings(config) == [
        "3: flowControl: flowControl is ignored: the flowControl feature gate is not set"
    ]


def test_flow_control_section_and_default_policies() -> None:
    registry = fake_registry(flow_control=True)
    config = load(
        "featureGates: [flowControl]\nflowControl:\n  maxBytes: 10Gi\n  maxRequests: 1k\n"
        "  defaultRequestTTL: 30s\n"
        "  defaultPriorityBand: {maxBytes: 1Gi, maxRequests: 5000}\n"
        "  priorityBands:\n  - {priority: 100, maxBytes: 5Gi, maxRequests: 500,"
        " orderingPolicyRef: fcfs-ordering-policy, fairnessPolicyRef: round-robin-fairness-policy}\n",
        registry,
    )
    fc = config.flow_control
    assert fc is not None
    assert (fc.max_bytes, fc.max_requests, fc.default_request_ttl) == (10 * 2**30, 1000, 30.0)
    assert fc.band_for(100).max_requests == 500
    assert fc.band_for(7).max_bytes == 2**30 and fc.band_for(7).priority == 7
    names = {p.name for p in config.plugins}
    assert {
        "global-strict-fairness-policy",
        "fcfs-ordering-policy",
        "static-usage-limit-policy",
        "round-robin-fairness-policy",
    } <= names
    assert config.to_document()["flowControl"]["defaultRequestTTL"] == "30s"


def test_band_defaults_without_template(registry: PluginRegistry) -> None:
    config = load("featureGates: [flowControl]\n", registry)
    assert config.flow_control is not None
    assert config.flow_control.band_for(0).max_bytes == 1_000_000_000
    assert config.flow_control.band_for(0).max_requests == 0


def test_env_enables_flow_control_with_a_warning(registry: PluginRegistry) -> None:
    config = load("flowControl: {}\n", registry, environ={"ENABLE_EXPERIMENTAL_FLOW_CONTROL_LAYER": "true"})
    assert "flowControl" in config.feature_gates
    assert config.flow_control is not None
    assert any("ENABLE_EXPERIMENTAL_FLOW_CONTROL_LAYER is deprecated" in w for w in warnings(config))


def test_upstream_policy_this_build_lacks_is_a_warning(registry: PluginRegistry) -> None:
    config = load(
        "featureGates: [flowControl]\nflowControl:\n"
        "  defaultPriorityBand: {orderingPolicyRef: edf-ordering-policy}\n",
        registry,
    )
    assert "'edf-ordering-policy' is not available in this build" in warnings(config)[0]


# ---- data producers ------------------------------------------------------------------------------


def test_missing_producer_is_created_with_defaults(registry: PluginRegistry) -> None:
    config = load("plugins: [{type: token-load-scorer}]\n", registry)
    producer = config.plugin("inflight-load-producer")
    assert not producer.declared
    assert "produces 'InFlightLoad'" in (producer.default_reason or "")
    assert config.producers == ("inflight-load-producer",)


def test_scorer_parameters_are_forwarded_to_the_created_producer(registry: PluginRegistry) -> None:
    config = load(
        "plugins:\n- type: prefix-cache-scorer\n"
        "  parameters: {blockSizeTokens: 32, lruCapacityPerServer: 99}\n",
        registry,
    )
    producer = config.plugin("approx-prefix-cache-producer")
    assert producer.params.model_dump(by_alias=True) == {
        "autoTune": True,
        "blockSizeTokens": 32,
        "lruCapacityPerServer": 99,
    }
    assert config.warnings == ()


def test_forwarded_parameters_ignored_for_a_declared_producer_warn(registry: PluginRegistry) -> None:
    config = load(
        "plugins:\n- type: approx-prefix-cache-producer\n  parameters: {blockSizeTokens: 64}\n"
        "- type: prefix-cache-scorer\n  parameters: {blockSizeTokens: 32}\n",
        registry,
    )
    assert config.plugin("approx-prefix-cache-producer").params.model_dump()["block_size_tokens"] == 64
    assert warnings(config) == [
        "7: plugins[1].parameters: plugin 'prefix-cache-scorer' (type: prefix-cache-scorer): its producer "
        "parameters (blockSizeTokens) are ignored: the declared plugin 'approx-prefix-cache-producer' "
        "(type: approx-prefix-cache-producer) is used; set them there"
    ]


def test_same_parameters_on_both_do_not_warn(registry: PluginRegistry) -> None:
    config = load(
        "plugins:\n- type: approx-prefix-cache-producer\n  parameters: {blockSizeTokens: 32}\n"
        "- type: prefix-cache-scorer\n  parameters: {blockSizeTokens: 32}\n",
        registry,
    )
    assert config.warnings == ()


def test_bad_producer_parameters_on_the_scorer_are_located(registry: PluginRegistry) -> None:
    with pytest.raises(ConfigError) as info:
        load("plugins:\n- type: prefix-cache-scorer\n  parameters: {blockSizeTokens: -3}\n", registry)
    assert [(p.line, p.path) for p in info.value.problems] == [(5, "plugins[0].parameters.blockSizeTokens")]


def test_producers_are_ordered_before_their_consumers() -> None:
    from pydantic import BaseModel

    from epp.framework.plugins import PluginKind
    from epp.registry import EmptyParams, PluginType

    registry = fake_registry()

    def make(name: str, params: BaseModel, handle: object) -> object:
        return object()

    # "b" consumes what "a" produces; declared first, it must still run after "a"
    registry.register(
        PluginType(
            "b-producer", EmptyParams, make, frozenset({PluginKind.DATA_PRODUCER}), consumes=frozenset({"A"})
        )
    )
    registry.register(
        PluginType(
            "a-producer", EmptyParams, make, frozenset({PluginKind.DATA_PRODUCER}), produces=frozenset({"A"})
        )
    )
    config = load("plugins: [{type: b-producer}, {type: a-producer}, {type: queue-scorer}]\n", registry)
    assert config.producers == ("a-producer", "b-producer")


def test_consumed_data_nobody_produces(registry: PluginRegistry) -> None:
    from epp.framework.plugins import PluginKind
    from epp.registry import EmptyParams, PluginType

    registry.register(
        PluginType(
            "needy-scorer",
            EmptyParams,
            lambda *a: None,
            frozenset({PluginKind.SCORER}),
            consumes=frozenset({"Z"}),
        )
    )
    with pytest.raises(ConfigError) as info:
        load("plugins:\n- type: needy-scorer\n", registry)
    assert [str(p) for p in info.value.problems] == [
        "<config-text>:4: plugins[0].type: plugin 'needy-scorer' (type: needy-scorer) needs data 'Z' "
        "that no plugin produces, and no default producer is registered for it"
    ]


# ---- the effective document ---------------------------------------------------------------------


def test_effective_document_reloads_to_the_same_config(registry: PluginRegistry) -> None:
    import yaml

    config = load(
        "plugins:\n- type: prefix-cache-scorer\n  parameters: {blockSizeTokens: 32}\n"
        "- {name: kv, type: kv-cache-utilization-scorer}\n"
        "schedulingProfiles:\n- name: p\n"
        "  plugins: [{pluginRef: prefix-cache-scorer, weight: 3}, {pluginRef: kv}]\n",
        registry,
    )
    doc = config.to_document()
    again = load_config(yaml.safe_dump(doc), registry=registry, environ={})
    assert [p.spec for p in again.plugins] == [p.spec for p in config.plugins]
    assert entries(again, "p") == entries(config, "p")
    assert again.to_document() == doc


def test_warnings_are_logged_unless_asked_not_to(
    registry: PluginRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    text = HEAD + "featureGates: [dataLayer]\n"
    with caplog.at_level(logging.WARNING, logger="epp.config.loader"):
        load_config(text, registry=registry, source="w.yaml", environ={}, log_warnings=False)
        assert caplog.records == []
        load_config(text, registry=registry, source="w.yaml", environ={})
    assert [r.getMessage() for r in caplog.records] == [
        "w.yaml:3: featureGates[0]: feature gate 'dataLayer' is deprecated and has no effect: "
        "the data layer is always on"
    ]
