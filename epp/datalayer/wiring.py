"""Which data source and extractor the scrape loops use: those of the live pipeline's `dataLayer`.

The config loader leaves the validated `dataLayer` section in `Pipeline.extras["dataLayer"]` and the
plugin instances in `Pipeline.plugins`. `DataLayerSelector` gives the `Scraper` two callables that resolve
them from `holder.current` (once per pipeline generation), so a config reload changes what the running
loops scrape without restarting them.

- `dataLayer` with sources: the first source that is a `metrics-data-source` and its first extractor that is
  a `core-metrics-extractor`;
- `dataLayer: {sources: []}`: nothing is scraped (upstream keeps this and warns);
- no `dataLayer` at all (legacy metrics mode, or a pipeline built without a config): the defaults, as
  upstream's legacy collector does.

The deprecated `--*-metric` flag specs (`MetricOverrides`) are applied to the chosen extractor's default
engine; the deprecated `--model-server-metrics-scheme|-path|-https-insecure-skip-verify` flags
(`MetricsSourceDefaults`) fill the data source's parameters the config leaves out.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Protocol

from epp.datalayer.data_source import MetricsDataSource, MetricsSourceDefaults
from epp.datalayer.extractor import CoreMetricsExtractor
from epp.datalayer.metric_spec import MetricOverrides

__all__ = ["DataLayerSelector", "data_layer_of"]

log = logging.getLogger(__name__)


class _PipelineLike(Protocol):
    @property
    def plugins(self) -> Mapping[str, object]: ...

    @property
    def extras(self) -> Mapping[str, Any]: ...


class _HolderLike(Protocol):
    @property
    def current(self) -> Any: ...


_MISSING = object()


def _field(obj: Any, *names: str) -> Any:
    for name in names:
        if isinstance(obj, Mapping) and name in obj:
            return obj[name]
        if hasattr(obj, name):
            return getattr(obj, name)
    return None


def data_layer_of(pipeline: _PipelineLike) -> tuple[MetricsDataSource | None, CoreMetricsExtractor | None]:
    """The (data source, extractor) pair a pipeline's config asks for; (None, None) means do not scrape."""
    section = pipeline.extras.get("dataLayer", _MISSING) if pipeline.extras else _MISSING
    if section is _MISSING or section is None:
        return MetricsDataSource(), CoreMetricsExtractor()
    for source_spec in _field(section, "sources") or ():
        source = pipeline.plugins.get(str(_field(source_spec, "plugin_ref", "pluginRef")))
        if not isinstance(source, MetricsDataSource):
            continue
        for extractor_spec in _field(source_spec, "extractors") or ():
            extractor = pipeline.plugins.get(str(_field(extractor_spec, "plugin_ref", "pluginRef")))
            if isinstance(extractor, CoreMetricsExtractor):
                return source, extractor
    return None, None


class DataLayerSelector:
    """Scraper callables that follow the live pipeline of a `PipelineHolder`."""

    def __init__(
        self,
        holder: _HolderLike,
        overrides: MetricOverrides | None = None,
        source_defaults: MetricsSourceDefaults | None = None,
    ) -> None:
        self._holder = holder
        self._overrides = overrides if overrides is not None and overrides.any() else None
        self._source_defaults = (
            source_defaults if source_defaults is not None and source_defaults.any() else None
        )
        self._resolved_for: object = None
        self._pair: tuple[MetricsDataSource | None, CoreMetricsExtractor | None] = (None, None)

    def _resolve(self) -> tuple[MetricsDataSource | None, CoreMetricsExtractor | None]:
        pipeline = self._holder.current
        if pipeline is not self._resolved_for:
            source, extractor = data_layer_of(pipeline)
            if extractor is not None and self._overrides is not None:
                extractor = extractor.with_overrides(self._overrides)
            if source is not None and self._source_defaults is not None:
                source = source.with_defaults(self._source_defaults)
            if source is None:
                log.warning(
                    "the data layer has no metrics-data-source with a core-metrics-extractor: not scraping"
                )
            self._pair = (source, extractor)
            self._resolved_for = pipeline
        return self._pair

    def data_source(self) -> MetricsDataSource | None:
        return self._resolve()[0]

    def extractor(self) -> CoreMetricsExtractor | None:
        return self._resolve()[1]
