"""The pool gauges: their recording, the refresh loop (upstream's metrics logger), the per-endpoint series.

- `inference_pool_*` averages and `ready_pods` are recomputed every `--refresh-prometheus-metrics-interval`
  (default 5 s), and once at once when asked (`refresh_now`, e.g. when the endpoints were first scraped,
  so a fresh daemon does not show an empty pool for a whole interval).
- `inference_extension_prefix_indexer_size` is summed over the live pipeline's plugins that expose
  `index_size()` every `size_interval` (1 s, as upstream's prefix plugin reports it), and
  `epp_hardware_prefill_seconds_per_token` from the plugins that expose `prefill_speeds()` at the same
  pace.
- `inference_pool_per_pod_queue_size` is computed when `/metrics` is scraped (`before_scrape`), as
  upstream's custom collector: always the current endpoints, never a departed one.
- At DEBUG, the endpoints and their metrics are logged every `debug_interval` (5 s), upstream's debug loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from epp.datalayer.datastore import Datastore
from epp.framework.types import Endpoint
from epp.observability.metrics import EppMetrics

__all__ = ["PoolGauges", "PoolMetricsRefresher", "describe_endpoints"]

log = logging.getLogger(__name__)


def describe_endpoints(endpoints: Sequence[Endpoint], now: float, staleness: float) -> str:
    """One short item per endpoint: queue, running, KV usage, metrics age, fresh or stale."""
    parts = []
    for e in endpoints:
        m = e.metrics
        age = m.age(now)
        state = (
            "never scraped" if math.isinf(age) else f"age={age:.2f}s" + (" STALE" if age > staleness else "")
        )
        parts.append(
            f"{e.key}[queue={m.waiting_queue_size} running={m.running_requests_size} "
            f"kv={m.kv_cache_usage:.3f} {state}]"
        )
    return ", ".join(parts) if parts else "(none)"


class PoolGauges:
    """Records the pool families of one `EppMetrics`: averages, ready pods, per-endpoint series."""

    def __init__(self, metrics: EppMetrics) -> None:
        self.name = metrics.pool_name
        self.pool = metrics.pool
        self.scrape = metrics.scrape
        self._averages_set = False

    def update_averages(self, endpoints: Sequence[Endpoint], now: float, staleness: float) -> None:
        """Recompute the pool averages from endpoints with fresh metrics (upstream's refresh loop).

        `ready_pods` counts fresh endpoints. With none fresh the averages keep their last values, as
        upstream: a dead scrape must not read as an idle pool to an autoscaler (they start at 0).
        """
        fresh = [e for e in endpoints if e.metrics.age(now) <= staleness]
        name = self.name
        n = len(fresh)
        self.pool.ready_pods.labels(name).set(n)
        if n == 0 and self._averages_set:
            return
        self._averages_set = n > 0
        self.pool.avg_kv_cache.labels(name).set(
            sum(e.metrics.kv_cache_usage for e in fresh) / n if n else 0.0
        )
        self.pool.avg_queue.labels(name).set(
            sum(e.metrics.waiting_queue_size for e in fresh) / n if n else 0.0
        )
        self.pool.avg_running.labels(name).set(
            sum(e.metrics.running_requests_size for e in fresh) / n if n else 0.0
        )

    def update_endpoint_series(self, endpoints: Sequence[Endpoint], now: float) -> None:
        """One `per_pod_queue_size` (and metrics-age) series per endpoint, exactly the current ones.

        Upstream computes the per-pod series at scrape time (a custom collector); the app calls this
        before every scrape, so departed endpoints vanish and new ones appear at once.
        """
        name = self.name
        self.pool.per_pod_queue.clear()
        self.scrape.metrics_age.clear()
        for e in endpoints:
            self.pool.per_pod_queue.labels(name, e.key).set(e.metrics.waiting_queue_size)
            age = e.metrics.age(now)
            self.scrape.metrics_age.labels(e.key).set(age if age != float("inf") else -1.0)


class PoolMetricsRefresher:
    def __init__(
        self,
        metrics: EppMetrics,
        datastore: Datastore,
        plugins: Callable[[], Iterable[object]],
        *,
        interval: float,
        staleness: float,
        size_interval: float = 1.0,
        debug_interval: float = 5.0,
    ) -> None:
        self.metrics = metrics
        self.gauges = PoolGauges(metrics)
        self.datastore = datastore
        self.plugins = plugins
        self.interval = interval
        self.staleness = staleness
        self.size_interval = size_interval
        self.debug_interval = debug_interval
        self.refreshes = 0  # how many times the pool averages were recomputed
        self._kick = asyncio.Event()
        self._last_debug = -math.inf
        self._failing: set[str] = set()

    def refresh_now(self) -> None:
        """Recompute the pool averages at the loop's next turn instead of at the end of the interval."""
        self._kick.set()

    def before_scrape(self) -> None:
        """Bring the per-endpoint series up to date (called by the /metrics handler)."""
        ds = self.datastore
        self.gauges.update_endpoint_series(ds.snapshot(), ds.clock())

    def refresh_pool(self) -> None:
        ds = self.datastore
        endpoints = ds.snapshot()
        now = ds.clock()
        self.gauges.update_averages(endpoints, now, self.staleness)
        self.refreshes += 1
        if log.isEnabledFor(logging.DEBUG) and now - self._last_debug >= self.debug_interval:
            self._last_debug = now
            log.debug(
                "pool %s: %d endpoint(s): %s",
                self.metrics.pool_name,
                len(endpoints),
                describe_endpoints(endpoints, now, self.staleness),
            )

    def refresh_prefix_size(self) -> None:
        size = sum(int(index_size()) for index_size in self._plugin_methods("index_size"))
        self.metrics.scheduler.prefix_indexer_size.set(size)

    def refresh_prefill_speeds(self) -> None:
        gauge = self.metrics.scheduler.prefill_seconds_per_token
        for prefill_speeds in self._plugin_methods("prefill_speeds"):
            for hardware_class, seconds in prefill_speeds().items():
                gauge.labels(hardware_class).set(seconds)

    def _plugin_methods(self, name: str) -> Iterator[Callable[[], Any]]:
        """The live pipeline's plugins' methods called `name` (plugins without one are skipped)."""
        for plugin in self.plugins():
            method = getattr(plugin, name, None)
            if callable(method):
                yield method

    def _guarded(self, refresh: Callable[[], None]) -> None:
        """Run one refresh; a failure is logged (once until it succeeds again), never the loop's end."""
        name = refresh.__name__
        try:
            refresh()
        except Exception:
            if name not in self._failing:
                log.exception("%s failed; the gauges keep their last values until it succeeds", name)
            self._failing.add(name)
        else:
            if name in self._failing:
                self._failing.discard(name)
                log.info("%s works again", name)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_pool = loop.time()
        next_size = next_pool
        while True:
            now = loop.time()
            if self._kick.is_set() or now >= next_pool:
                self._kick.clear()
                self._guarded(self.refresh_pool)
                next_pool = now + self.interval
            if now >= next_size:
                self._guarded(self.refresh_prefix_size)
                self._guarded(self.refresh_prefill_speeds)
                next_size = now + self.size_interval
            wait = max(0.0, min(next_pool, next_size) - loop.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), wait)
