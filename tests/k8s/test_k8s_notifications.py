"""`k8s-notification-source`: a watch of any Kubernetes kind whose add/update and delete events reach the
notification extractors wired under it.

kmock stands in for a real Kubernetes API server in the watch tests: real HTTP, API discovery, the
official client unchanged (no resourceVersions: the feed compares objects instead).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import kmock
import pytest

from epp.builtins import builtin_registry
from epp.config import build_pipeline, load_config
from epp.datalayer.datastore import Datastore
from epp.datalayer.k8s_notifications import (
    K8S_NOTIFICATION_SOURCE_TYPE,
    STATIC_MODE_REASON,
    NotificationFeed,
    WatchTarget,
)
from epp.errors import ConfigError
from epp.framework.handle import Handle
from epp.framework.plugins import NotificationEvent, PluginKind
from epp.framework.types import TypedName
from epp.k8s.listwatch import WatchEvent
from epp.k8s.notifications import KindNotServed, KubeObjectWatcher, resource_path
from epp.plugin_runtime import PluginRuntime
from epp.registry import EmptyParams, PluginRegistry, PluginType
from epp.scheduling.pipeline import PipelineHolder
from tests.helpers import until
from tests.plugins._kit import assert_documented

from .conftest import FAST

GROUP = "example.com"


class Recorder:
    def __init__(self, name: str) -> None:
        self.typed_name = TypedName("recorder", name)
        self.events: list[tuple[str, str, Any]] = []  # (type, name, spec.size)

    def extract_notification(self, event: NotificationEvent) -> None:
        spec = event.object.get("spec") or {}
        self.events.append((str(event.type), event.name, spec.get("size")))
        if isinstance(event.object, dict):
            event.object["spec"] = "scribbled"  # its own copy: nobody else sees this


def _registry() -> PluginRegistry:
    registry = builtin_registry()

    def factory(name: str, params: EmptyParams, handle: Handle) -> Recorder:
        return Recorder(name)

    registry.register(
        PluginType("recorder", EmptyParams, factory, frozenset({PluginKind.NOTIFICATION_EXTRACTOR}))
    )
    return registry


CONFIG = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: k8s-notification-source
  parameters:
    group: example.com
    version: v1
    kind: Widget
- type: recorder
- name: second
  type: recorder
- type: queue-scorer
dataLayer:
  sources:
  - pluginRef: metrics-data-source
    extractors: [{pluginRef: core-metrics-extractor}]
  - pluginRef: k8s-notification-source
    extractors: [{pluginRef: recorder}, {pluginRef: second}]
"""


def _pipeline(registry: PluginRegistry, text: str = CONFIG, generation: int = 1) -> Any:
    return build_pipeline(load_config(text, registry=registry, environ={}), registry, generation=generation)


def _widgets(k8s: Any) -> None:
    k8s.resources[f"{GROUP}/v1/widgets"] = {"kind": "Widget", "namespaced": True}


def _widget(name: str, size: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/v1",
        "kind": "Widget",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"size": size},
    }


@pytest.fixture
async def runtime(api, kube_server):
    kube_server.react(_widgets)
    made: list[PluginRuntime] = []

    def make(holder: PipelineHolder) -> PluginRuntime:
        rt = PluginRuntime(
            holder, Datastore(), log_membership=False, object_watcher=KubeObjectWatcher(api, options=FAST)
        )
        made.append(rt)
        rt.start()
        return rt

    yield make
    for rt in made:
        await rt.stop()


async def test_extractors_see_create_patch_delete(kube, runtime) -> None:
    """kmock stands in for the API server: each create, patch and delete reaches every extractor wired
    under the source, in order, each with its own copy of the object."""
    custom = kube.sync.custom
    await _call(custom.create_namespaced_custom_object, GROUP, "v1", "default", "widgets", _widget("w1", 1))
    holder = PipelineHolder(_pipeline(_registry()))
    rt = runtime(holder)
    first: Any = holder.current.plugins["recorder"]
    second: Any = holder.current.plugins["second"]
    await until(lambda: first.events == [("add-or-update", "w1", 1)])
    await _call(custom.create_namespaced_custom_object, GROUP, "v1", "default", "widgets", _widget("w2", 2))
    await _call(
        custom.patch_namespaced_custom_object, GROUP, "v1", "default", "widgets", "w1", {"spec": {"size": 3}}
    )
    await _call(custom.delete_namespaced_custom_object, GROUP, "v1", "default", "widgets", "w2")
    expected = [
        ("add-or-update", "w1", 1),
        ("add-or-update", "w2", 2),
        ("add-or-update", "w1", 3),
        ("delete", "w2", 2),
    ]
    await until(lambda: first.events == expected)
    assert second.events == expected
    feed = rt.watched()[WatchTarget(GROUP, "v1", "Widget")]
    assert sorted(name for _, name in feed.objects) == ["w1"]
    assert feed.objects[("default", "w1")]["spec"] == {"size": 3}  # the extractors' scribbles stayed theirs


async def test_reload_keeps_the_watch_tells_new_extractors_and_stops_when_dropped(kube, runtime) -> None:
    """kmock stands in for the API server: a reload that rebuilds an extractor keeps the watch and tells
    the new extractor every current object; a reload without the source stops the watch."""
    custom = kube.sync.custom
    await _call(custom.create_namespaced_custom_object, GROUP, "v1", "default", "widgets", _widget("w1", 1))
    registry = _registry()
    holder = PipelineHolder(_pipeline(registry))
    rt = runtime(holder)
    old: Any = holder.current.plugins["recorder"]
    await until(lambda: old.events == [("add-or-update", "w1", 1)])
    watch_before = dict(rt._feeds)
    holder.swap(_pipeline(registry, generation=2))
    new: Any = holder.current.plugins["recorder"]
    assert new is not old and new.events == [("add-or-update", "w1", 1)]
    assert rt._feeds == watch_before  # the same watch goes on
    without = CONFIG.split("- type: k8s-notification-source")[0] + "- type: queue-scorer\n"
    holder.swap(_pipeline(registry, without, generation=3))
    assert rt.watched() == {}
    await _call(custom.create_namespaced_custom_object, GROUP, "v1", "default", "widgets", _widget("w3", 3))
    await _call(custom.delete_namespaced_custom_object, GROUP, "v1", "default", "widgets", "w1")
    assert new.events == [("add-or-update", "w1", 1)]


async def test_watch_survives_api_errors(kube, runtime, kube_server) -> None:
    """kmock stands in for the API server: failing listings (HTTP 500) are retried with backoff; once the
    server answers, the objects arrive."""

    def fail():
        raise kmock.KubernetesError(status=500, reason="InternalError", message="etcd is sad")

    kube_server.react(lambda k8s: k8s[kmock.action.LIST, kmock.resource(f"{GROUP}/v1/widgets")][:3] << fail)
    custom = kube.sync.custom
    await _call(custom.create_namespaced_custom_object, GROUP, "v1", "default", "widgets", _widget("w1", 1))
    holder = PipelineHolder(_pipeline(_registry()))
    rt = runtime(holder)
    rec: Any = holder.current.plugins["recorder"]
    await until(lambda: rec.events == [("add-or-update", "w1", 1)])
    await _call(custom.create_namespaced_custom_object, GROUP, "v1", "default", "widgets", _widget("w2", 2))
    await until(lambda: rec.events[-1] == ("add-or-update", "w2", 2))
    lw = rt._feeds[WatchTarget(GROUP, "v1", "Widget")][1].list_watch  # type: ignore[union-attr]
    assert "500" in lw.last_error


async def test_an_unknown_kind_is_retried_not_fatal(kube, runtime) -> None:
    """kmock stands in for the API server: a kind it does not serve is a logged, retried failure."""
    registry = _registry()
    holder = PipelineHolder(_pipeline(registry, CONFIG.replace("kind: Widget", "kind: Gadget")))
    rt = runtime(holder)
    watch: Any = rt._feeds[WatchTarget(GROUP, "v1", "Gadget")][1]
    await until(lambda: "no kind Gadget" in watch.list_watch.last_error)


def test_resource_path_from_discovery() -> None:
    listing = {
        "resources": [
            {"name": "pods/status", "kind": "Pod", "namespaced": True},
            {"name": "pods", "kind": "Pod", "namespaced": True},
            {"name": "nodes", "kind": "Node", "namespaced": False},
        ]
    }
    assert resource_path(WatchTarget("", "v1", "Pod"), listing) == "/api/v1/pods"
    assert resource_path(WatchTarget("", "v1", "Pod", "ns"), listing) == "/api/v1/namespaces/ns/pods"
    assert resource_path(WatchTarget("", "v1", "Node", "ns"), listing) == "/api/v1/nodes"
    with pytest.raises(KindNotServed):
        resource_path(WatchTarget("", "v1", "Service"), listing)


def test_feed_dedupes_and_a_relist_tells_what_changed() -> None:
    feed = NotificationFeed(WatchTarget("", "v1", "ConfigMap"))

    def obj(name: str, rv: str) -> dict[str, Any]:
        return {"metadata": {"name": name, "namespace": "ns", "resourceVersion": rv}}

    def kinds(events: list[NotificationEvent]) -> list[tuple[str, str]]:
        return [(str(e.type), e.name) for e in events]

    assert kinds(feed.apply(WatchEvent("SYNC", (obj("a", "1"), obj("b", "1"))))) == [
        ("add-or-update", "a"),
        ("add-or-update", "b"),
    ]
    assert feed.apply(WatchEvent("ADDED", (obj("a", "1"),))) == []  # resourceVersion unchanged
    assert kinds(feed.apply(WatchEvent("MODIFIED", (obj("a", "2"),)))) == [("add-or-update", "a")]
    # the watch broke; the relist shows b gone, c new, a unchanged
    assert kinds(feed.apply(WatchEvent("SYNC", (obj("a", "2"), obj("c", "1"))))) == [
        ("delete", "b"),
        ("add-or-update", "c"),
    ]
    assert kinds(feed.apply(WatchEvent("DELETED", (obj("c", "2"),)))) == [("delete", "c")]


def test_parameters_are_typed_and_refused_at_their_line() -> None:
    text = CONFIG.replace("    version: v1\n", "    version: 1\n    colour: red\n")
    with pytest.raises(ConfigError) as info:
        load_config(text, registry=_registry(), environ={}, source="epp.yaml")
    message = str(info.value)
    assert "epp.yaml:7:" in message and "version" in message  # version: 1 is not a string
    assert "epp.yaml:8:" in message and "colour" in message
    missing = CONFIG.replace("    kind: Widget\n", "")
    with pytest.raises(ConfigError) as info:
        load_config(missing, registry=_registry(), environ={}, source="epp.yaml")
    assert "epp.yaml:" in str(info.value) and "kind" in str(info.value)


def test_extractors_under_it_must_be_notification_extractors() -> None:
    text = CONFIG.replace("{pluginRef: second}", "{pluginRef: queue-scorer}")
    with pytest.raises(ConfigError) as info:
        load_config(text, registry=_registry(), environ={}, source="epp.yaml")
    assert "epp.yaml:18:" in str(info.value)
    assert "is not a notification extractor" in str(info.value)


def test_one_source_per_watched_kind() -> None:
    text = (
        CONFIG.replace(
            "- type: recorder\n",
            "- name: again\n  type: k8s-notification-source\n  parameters: {group: example.com, version: v1, "
            "kind: Widget}\n- type: recorder\n",
        )
        + "  - pluginRef: again\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(text, registry=_registry(), environ={})
    assert "watches the same objects as source 'k8s-notification-source'" in str(info.value)


def test_refused_at_load_without_kubernetes() -> None:
    static = _registry().without({K8S_NOTIFICATION_SOURCE_TYPE: STATIC_MODE_REASON})
    with pytest.raises(ConfigError) as info:
        load_config(CONFIG, registry=static, environ={}, source="epp.yaml")
    message = str(info.value)
    assert "epp.yaml:4:" in message and "plugin type 'k8s-notification-source' is not available" in message
    assert "--static-endpoints" in message


def test_docs_page() -> None:
    assert_documented(K8S_NOTIFICATION_SOURCE_TYPE, builtin_registry())


async def _call(fn: Any, *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)


def test_a_static_daemon_refuses_it_at_its_line(tmp_path: Path) -> None:
    """`--static-endpoints`: the daemon's registry is built without the type, so the config is refused
    before anything starts, at the plugin's line, saying why."""
    from epp.app import App
    from epp.settings.parse import parse_settings

    config = tmp_path / "epp.yaml"
    config.write_text(CONFIG)
    settings = parse_settings(
        ["--static-endpoints=127.0.0.1:8000", f"--config-file={config}", "--secure-serving=false"], environ={}
    )
    with pytest.raises(ConfigError) as info:
        App(settings, registry=_registry())
    assert f"{config}:4:" in str(info.value) and "runs without Kubernetes" in str(info.value)
