"""`endpoint-notification-source`: its extractors are told each endpoint that joins or leaves, and every
current endpoint when their pipeline goes live; extractors must be endpoint extractors. Each new type
has its docs page."""

from __future__ import annotations

from typing import Any

import pytest

from epp.builtins import builtin_registry
from epp.config import build_pipeline, load_config
from epp.datalayer.datastore import Datastore
from epp.errors import ConfigError
from epp.framework.handle import Handle
from epp.framework.plugins import EndpointEvent, PluginKind
from epp.framework.types import Endpoint, TypedName
from epp.plugin_runtime import PluginRuntime
from epp.registry import EmptyParams, PluginRegistry, PluginType
from epp.scheduling.pipeline import PipelineHolder
from tests.plugins._kit import assert_documented


class Recorder:
    def __init__(self, name: str) -> None:
        self.typed_name = TypedName("recorder", name)
        self.events: list[tuple[str, bool]] = []

    def extract_endpoint(self, event: EndpointEvent) -> None:
        self.events.append((event.endpoint.key, event.deleted))


def _registry() -> PluginRegistry:
    registry = builtin_registry()

    def factory(name: str, params: EmptyParams, handle: Handle) -> Recorder:
        return Recorder(name)

    registry.register(
        PluginType("recorder", EmptyParams, factory, frozenset({PluginKind.ENDPOINT_EXTRACTOR}))
    )
    return registry


CONFIG = """
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: endpoint-notification-source
- type: recorder
- type: queue-scorer
dataLayer:
  sources:
  - pluginRef: endpoint-notification-source
    extractors: [{pluginRef: recorder}]
"""


def _ep(key: str, port: int = 8000) -> Endpoint:
    return Endpoint(key=key, ip="10.0.0.1", port=port)


def _pipeline(registry: PluginRegistry, generation: int = 1) -> Any:
    return build_pipeline(load_config(CONFIG, registry=registry, environ={}), registry, generation=generation)


async def test_extractors_are_told_joins_leaves_and_everything_on_go_live() -> None:
    registry = _registry()
    ds = Datastore()
    ds.set_endpoints([_ep("a")])
    holder = PipelineHolder(_pipeline(registry))
    runtime = PluginRuntime(holder, ds, log_membership=False)
    runtime.start()
    try:
        first: Any = holder.current.plugins["recorder"]
        assert first.events == [("a", False)]
        ds.set_endpoints([_ep("a"), _ep("b", 8001)])
        ds.set_endpoints([_ep("b", 8001)])
        assert first.events == [("a", False), ("b", False), ("a", True)]
        holder.swap(_pipeline(registry, generation=2))  # a reload rebuilds the extractor
        second: Any = holder.current.plugins["recorder"]
        assert second is not first and second.events == [("b", False)]
        ds.set_endpoints([])
        assert second.events[-1] == ("b", True) and first.events[-1] == ("a", True)  # old one: no more
    finally:
        await runtime.stop()


def test_extractors_under_it_must_be_endpoint_extractors() -> None:
    text = CONFIG.replace("extractors: [{pluginRef: recorder}]", "extractors: [{pluginRef: queue-scorer}]")
    with pytest.raises(ConfigError) as info:
        load_config(text, registry=_registry(), environ={})
    assert "is not an endpoint extractor" in str(info.value)


def test_k8s_notification_source_extractors_are_not_endpoint_extractors() -> None:
    """The sibling k8s-notification-source (tests/k8s/test_k8s_notifications.py) takes notification
    extractors: an endpoint extractor under it is refused."""
    text = CONFIG.replace(
        "- type: endpoint-notification-source\n",
        "- type: k8s-notification-source\n  parameters: {version: v1, kind: ConfigMap}\n",
    ).replace("- pluginRef: endpoint-notification-source", "- pluginRef: k8s-notification-source")
    with pytest.raises(ConfigError) as info:
        load_config(text, registry=_registry(), environ={})
    assert "is not a notification extractor" in str(info.value)


@pytest.mark.parametrize("type_name", ["endpoint-notification-source", "request-attribute-reporter"])
def test_new_types_have_their_docs_page(type_name: str) -> None:
    assert_documented(type_name, builtin_registry())
