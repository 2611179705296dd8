"""One `/metrics` for the pod: the workers' request-path families added up, beside the pod process's own.

The pod process asks every worker for its families when `/metrics` is scraped (`WorkerPool.collect`) and
this collector merges them: counters, histograms (buckets, sums, counts) and gauges summed, except the
gauges named as "largest value" (e.g. the prefix index size, which every worker holds in full). A worker
that died keeps counting: what it had counted at its last collection is kept and added, so the pod's
counters never go backwards across a worker restart.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

__all__ = ["ExcludingCollector", "WorkerMetrics", "merge_families"]

_SampleKey = tuple[str, tuple[tuple[str, str], ...]]


def _key(name: str, labels: dict[str, str]) -> _SampleKey:
    return name, tuple(sorted(labels.items()))


def merge_families(
    sources: Iterable[Sequence[Metric]],
    max_gauges: frozenset[str] = frozenset(),
    base: dict[str, dict[_SampleKey, float]] | None = None,
) -> list[Metric]:
    """Add up families of the same name over `sources` (plus `base` values, e.g. retired workers')."""
    meta: dict[str, tuple[str, str, str]] = {}  # name -> (documentation, type, unit)
    values: dict[str, dict[_SampleKey, float]] = {}
    for families in sources:
        for family in families:
            meta.setdefault(family.name, (family.documentation, family.type, family.unit))
            acc = values.setdefault(family.name, {})
            largest = family.type == "gauge" and family.name in max_gauges
            for sample in family.samples:
                key = _key(sample.name, sample.labels)
                old = acc.get(key)
                if old is None:
                    acc[key] = sample.value
                elif sample.name.endswith("_created"):
                    acc[key] = min(old, sample.value)
                elif largest:
                    acc[key] = max(old, sample.value)
                else:
                    acc[key] = old + sample.value
    for name, extra in (base or {}).items():
        known = values.get(name)
        if known is None:
            continue  # no live worker reports the family (yet): its metadata is unknown
        for key, value in extra.items():
            if not key[0].endswith("_created"):
                known[key] = known.get(key, 0.0) + value
    out: list[Metric] = []
    for name, (doc, typ, unit) in meta.items():
        metric = Metric(name, doc, typ, unit)
        for (sample_name, labels), value in values[name].items():
            metric.add_sample(sample_name, dict(labels), value)
        out.append(metric)
    return out


class WorkerMetrics(Collector):
    """The merged families of the workers, as last collected."""

    def __init__(self, max_gauges: frozenset[str] = frozenset()) -> None:
        self.max_gauges = max_gauges
        self._live: dict[int, list[Metric]] = {}
        self._retired: dict[str, dict[_SampleKey, float]] = {}

    def update(self, slot: int, families: list[Metric]) -> None:
        self._live[slot] = families

    def retire(self, slot: int) -> None:
        """The worker in `slot` is gone: keep what its counters and histograms had counted."""
        for family in self._live.pop(slot, ()):
            if family.type not in ("counter", "histogram"):
                continue
            acc = self._retired.setdefault(family.name, {})
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                key = _key(sample.name, sample.labels)
                acc[key] = acc.get(key, 0.0) + sample.value

    def collect(self) -> Iterator[Metric]:
        yield from merge_families(self._live.values(), self.max_gauges, self._retired)


class ExcludingCollector(Collector):
    """A registry's families minus some names (the pod process's copies of the workers' metrics)."""

    def __init__(self, registry: CollectorRegistry, exclude: frozenset[str]) -> None:
        self.registry = registry
        self.exclude = exclude

    def collect(self) -> Iterator[Metric]:
        for family in self.registry.collect():
            if family.name not in self.exclude:
                yield family
