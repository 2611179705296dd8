"""Choosing the scrape source and extractor from a loaded EndpointPickerConfig (the real loader)."""

from __future__ import annotations

from types import SimpleNamespace

from epp.builtins import default_registry
from epp.config import build_pipeline, load_config
from epp.datalayer.data_source import MetricsDataSource
from epp.datalayer.extractor import CoreMetricsExtractor
from epp.datalayer.metric_spec import MetricOverrides
from epp.datalayer.wiring import DataLayerSelector, data_layer_of


def pipeline(text: str | None):
    registry = default_registry(entry_points=False)
    return build_pipeline(load_config(text, registry=registry), registry)


def test_default_config_scrapes_with_the_default_plugins():
    source, extractor = data_layer_of(pipeline(None))
    assert isinstance(source, MetricsDataSource) and source.path == "/metrics"
    assert isinstance(extractor, CoreMetricsExtractor) and extractor.default_engine == "vllm"


CUSTOM = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- name: src
  type: metrics-data-source
  parameters: {path: /stats, scheme: https}
- name: ext
  type: core-metrics-extractor
  parameters:
    defaultEngine: sglang
    engineConfigs:
    - name: mine
      queuedRequestsSpec: my_queue
- type: queue-scorer
schedulingProfiles:
- name: default
  plugins: [{pluginRef: queue-scorer}]
dataLayer:
  sources:
  - pluginRef: src
    extractors: [{pluginRef: ext}]
"""


def test_configured_data_layer_is_used():
    source, extractor = data_layer_of(pipeline(CUSTOM))
    assert source is not None and (source.scheme, source.path) == ("https", "/stats")
    assert extractor is not None and extractor.default_engine == "sglang" and "mine" in extractor.engines


def test_empty_sources_scrape_nothing():
    text = CUSTOM.replace(
        "  sources:\n  - pluginRef: src\n    extractors: [{pluginRef: ext}]\n", "  sources: []\n"
    )
    assert data_layer_of(pipeline(text)) == (None, None)


def test_selector_follows_reloads_and_applies_overrides():
    holder = SimpleNamespace(current=pipeline(None))
    selector = DataLayerSelector(holder, MetricOverrides(queued="old_queue_metric"))
    first = selector.extractor()
    assert [str(s) for s in first.engines["vllm"].queued] == ["old_queue_metric"]
    assert selector.extractor() is first  # resolved once per pipeline
    holder.current = pipeline(CUSTOM)
    assert selector.data_source().path == "/stats"
    assert [str(s) for s in selector.extractor().engines["sglang"].queued] == ["old_queue_metric"]


def test_pipeline_without_data_layer_section_uses_defaults():
    bare = SimpleNamespace(plugins={}, extras={})
    source, extractor = data_layer_of(bare)
    assert isinstance(source, MetricsDataSource) and isinstance(extractor, CoreMetricsExtractor)
