"""Building pipelines: slots, weights, the handle, hooks from every plugin, reuse across reloads."""

from __future__ import annotations

import random

import pytest

from epp.config import build_pipeline, load_config
from epp.errors import ConfigError
from epp.framework.types import Endpoint, InferenceRequest
from epp.registry import PluginRegistry
from epp.scheduling.pipeline import Pipeline

from .cfg_fakes import Fake, fake_registry

HEAD = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"

CONFIG = (
    HEAD
    + """\
plugins:
- type: low-queue-filter
- {name: q, type: queue-scorer}
- type: prefix-cache-scorer
- type: test-admitter
- {name: top, type: max-score-picker, parameters: {maxNumOfEndpoints: 2}}
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: low-queue-filter
  - {pluginRef: q, weight: 2}
  - {pluginRef: prefix-cache-scorer, weight: 3}
  - pluginRef: top
"""
)


def build(text: str, registry: PluginRegistry, **kw) -> Pipeline:  # type: ignore[no-untyped-def]
    return build_pipeline(load_config(text, registry=registry, environ={}), registry, **kw)


def test_slots_weights_and_defaults(registry: PluginRegistry) -> None:
    pipeline = build(CONFIG, registry)
    profile = pipeline.scheduler.profiles["default"]
    assert [f.typed_name.name for f in profile.filters] == ["low-queue-filter"]
    assert [(w.scorer.typed_name.name, w.weight) for w in profile.scorers] == [
        ("q", 2.0),
        ("prefix-cache-scorer", 3.0),
    ]
    assert profile.picker.typed_name.name == "top"
    assert pipeline.scheduler.profile_handler.typed_name.type == "single-profile-handler"
    assert pipeline.parser.typed_name.name == "openai-parser"
    assert pipeline.saturation_detector is not None
    assert pipeline.saturation_detector.typed_name.name == "utilization-detector"
    assert [p.typed_name.name for p in pipeline.producers] == ["approx-prefix-cache-producer"]
    assert pipeline.generation == 1 and pipeline.source == "<config-text>"
    assert set(pipeline.extras) == {"flowControl", "dataLayer"}
    assert pipeline.extras["flowControl"] is None
    assert pipeline.effective_config["schedulingProfiles"][0]["plugins"][1] == {
        "pluginRef": "q",
        "weight": 2.0,
    }


def test_request_hooks_come_from_every_plugin_in_or_out_of_a_profile(registry: PluginRegistry) -> None:
    pipeline = build(CONFIG, registry)
    # test-admitter is in no profile, yet admits; the producer is a pre-request hook too
    assert [a.typed_name.name for a in pipeline.admitters] == ["test-admitter"]
    assert [p.typed_name.name for p in pipeline.pre_request] == ["approx-prefix-cache-producer"]
    assert pipeline.response_complete == ()


def test_the_pipeline_schedules(registry: PluginRegistry) -> None:
    pipeline = build(CONFIG, registry)
    endpoints = [Endpoint(key=f"10.0.0.{i}:8000", ip=f"10.0.0.{i}", port=8000) for i in range(3)]
    result = pipeline.scheduler.schedule(
        InferenceRequest(request_id="r", model="m", target_model="m"), endpoints
    )
    assert result.primary_profile == "default"
    assert result.targets[0] in endpoints


def test_build_options_are_passed_through(registry: PluginRegistry) -> None:
    rng = random.Random(7)
    pipeline = build(
        CONFIG, registry, generation=4, source="cm.yaml", config_hash="abc", rng=rng, clock=lambda: 5.0
    )
    assert (pipeline.generation, pipeline.source, pipeline.config_hash) == (4, "cm.yaml", "abc")
    fake = pipeline.plugins["q"]
    assert isinstance(fake, Fake) and fake.handle is not None
    assert fake.handle.rng is rng and fake.handle.clock() == 5.0


def test_decision_tree_sees_earlier_plugins(registry: PluginRegistry) -> None:
    text = HEAD + (
        "plugins:\n"
        "- type: low-queue-filter\n"
        "- type: least-queue-filter\n"
        "- name: tree\n  type: decision-tree-filter\n  parameters:\n"
        "    current: {pluginRef: low-queue-filter}\n"
        "    nextOnSuccess: {decisionTree: {current: {pluginRef: least-queue-filter}}}\n"
        "- type: random-picker\n"
        "- type: single-profile-handler\n"
        "schedulingProfiles:\n- name: default\n  plugins: [{pluginRef: tree}, {pluginRef: random-picker}]\n"
    )
    pipeline = build(text, registry)
    tree = pipeline.plugins["tree"]
    assert isinstance(tree, Fake)
    assert tree.refs == {
        "low-queue-filter": pipeline.plugins["low-queue-filter"],
        "least-queue-filter": pipeline.plugins["least-queue-filter"],
    }


def test_decision_tree_reference_to_a_non_filter_names_the_plugin_and_line(registry: PluginRegistry) -> None:
    text = HEAD + (
        "plugins:\n- type: queue-scorer\n"
        "- name: tree\n  type: decision-tree-filter\n  parameters: {current: {pluginRef: queue-scorer}}\n"
    )
    with pytest.raises(ConfigError) as info:
        build(text, registry)
    assert [str(p) for p in info.value.problems] == [
        "<config-text>:5: plugins[1]: failed to create plugin 'tree' (type: decision-tree-filter): "
        "queue-scorer is not a filter"
    ]


def test_instance_missing_its_declared_methods(registry: PluginRegistry) -> None:
    with pytest.raises(ConfigError) as info:
        build(HEAD + "plugins:\n- type: kindless-scorer\n", registry)
    (problem,) = info.value.problems
    assert (problem.line, problem.path) == (4, "plugins[0]")
    assert "the instance its factory built has no score()" in problem.message


def test_failure_of_a_defaulted_plugin_says_why_it_was_added() -> None:
    from epp.framework.plugins import PluginKind
    from epp.registry import EmptyParams, PluginType

    registry = fake_registry()

    def boom(name: str, params: object, handle: object) -> object:
        raise ValueError("no GPU")

    registry.register(
        PluginType(
            "gpu-scorer",
            EmptyParams,
            lambda n, p, h: Fake("gpu-scorer", n, p, h),
            frozenset({PluginKind.SCORER}),
            consumes=frozenset({"G"}),
        )
    )
    registry.register(
        PluginType(
            "gpu-producer",
            EmptyParams,
            boom,
            frozenset({PluginKind.DATA_PRODUCER}),
            produces=frozenset({"G"}),
        ),
        default_producer_for=["G"],
    )
    with pytest.raises(ConfigError) as info:
        build(HEAD + "plugins:\n- type: gpu-scorer\n", registry)
    assert [str(p) for p in info.value.problems] == [
        "<config-text>:4: plugins[0]: failed to create plugin 'gpu-producer' (type: gpu-producer): no GPU "
        "(added by default: produces 'G' for plugin 'gpu-scorer' (type: gpu-scorer))"
    ]


# ---- reuse across reloads ------------------------------------------------------------------------


def test_unchanged_stateful_plugins_are_carried_over(registry: PluginRegistry) -> None:
    first = build(CONFIG, registry)
    changed_weights = CONFIG.replace("weight: 2}", "weight: 5}")
    second = build(changed_weights, registry, generation=2, previous=first)
    assert second.scheduler.profiles["default"].scorers[0].weight == 5.0
    # the prefix producer is stateful and unchanged: the same instance, index and all
    assert second.plugins["approx-prefix-cache-producer"] is first.plugins["approx-prefix-cache-producer"]
    assert second.producers[0] is first.producers[0]
    # stateless plugins are rebuilt
    assert second.plugins["q"] is not first.plugins["q"]


def test_changed_parameters_make_a_new_instance(registry: PluginRegistry) -> None:
    first = build(CONFIG, registry)
    explicit = (
        HEAD + "plugins:\n- type: approx-prefix-cache-producer\n  parameters: {blockSizeTokens: 64}\n"
        "- type: prefix-cache-scorer\n"
    )
    second = build(explicit, registry, previous=first)
    assert second.plugins["approx-prefix-cache-producer"] is not first.plugins["approx-prefix-cache-producer"]
    # the same explicit spec again: reused
    third = build(explicit, registry, previous=second)
    assert third.plugins["approx-prefix-cache-producer"] is second.plugins["approx-prefix-cache-producer"]


def test_default_parameters_written_out_still_match(registry: PluginRegistry) -> None:
    first = build(HEAD + "plugins: [{type: prefix-cache-scorer}]\n", registry)
    explicit = build(
        HEAD + "plugins:\n- type: prefix-cache-scorer\n- type: approx-prefix-cache-producer\n"
        "  parameters: {autoTune: true, blockSizeTokens: 16, lruCapacityPerServer: 31250}\n",
        registry,
        previous=first,
    )
    assert explicit.plugins["approx-prefix-cache-producer"] is first.plugins["approx-prefix-cache-producer"]
    assert (
        explicit.plugin_specs["approx-prefix-cache-producer"]
        == first.plugin_specs["approx-prefix-cache-producer"]
    )
