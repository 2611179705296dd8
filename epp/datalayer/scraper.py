"""Model-server metrics scraping: one asyncio loop per endpoint.

Each loop fetches its endpoint's page every `interval` (default 50 ms) with a per-scrape `timeout` (1 s),
reads the series its engine mapping needs (`promtext.scan`) and publishes new `EndpointMetrics` to the
datastore. The loops share one aiohttp session with keep-alive connections, so a scrape is one request
on an open connection. A slow or hung endpoint only delays its own loop.

Failure semantics:
- a failed scrape (refused, reset, timeout, HTTP status other than 200) keeps the last good metrics (their
  `update_time` does not advance, so they go stale) and marks the endpoint unhealthy at once, so it is not
  picked while healthy endpoints exist; the next successful scrape marks it healthy again;
- a page that parses only partly stores what was found (see `extractor.CoreMetricsExtractor.extract`);
- errors are logged at TRACE every time and at INFO only when an endpoint turns unreachable or reachable;
  every successful scrape is logged at TRACE with the values read (upstream's refresh-loop guideline).

The data source and extractor are read through callables on every scrape, so a config reload applies
without restarting the loops. `metrics_port` (upstream's deprecated `--model-server-metrics-port`)
replaces the endpoint's port in the scrape URL, as upstream, only for a pod serving one endpoint: each
data-parallel rank of a multi-port pod serves its own metrics on its own port. Loops start and stop
with datastore membership.
`first_round_done` is set once every endpoint present when the datastore got synced (or when `start` was
called, if it was already synced) has been tried once, successfully or not.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from epp.datalayer.data_source import MetricsDataSource
from epp.datalayer.datastore import Datastore
from epp.datalayer.extractor import CoreMetricsExtractor
from epp.datalayer.promtext import scan
from epp.framework.types import Endpoint
from epp.logs import TRACE

__all__ = ["ScrapeStats", "Scraper"]

log = logging.getLogger(__name__)

_HEADERS = {
    # Ask for the plain text format, uncompressed: decompressing costs more CPU than the bytes on a pod
    # network are worth.
    "Accept": "text/plain;version=0.0.4;q=1,*/*;q=0.1",
    "Accept-Encoding": "identity",
}


@dataclass(slots=True)
class ScrapeStats:
    """Per-endpoint scrape bookkeeping, for the EPP's own metrics and debugging."""

    attempts: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    last_error: str = ""
    last_duration: float = 0.0
    last_success: float = 0.0
    reachable: bool | None = None


class ScrapeError(Exception):
    """A scrape that produced no page (HTTP error status)."""


class Scraper:
    def __init__(
        self,
        datastore: Datastore,
        *,
        data_source: Callable[[], MetricsDataSource | None],
        extractor: Callable[[], CoreMetricsExtractor | None],
        interval: float = 0.05,
        timeout: float = 1.0,
        metrics_port: int = 0,
        on_error: Callable[[str], None] | None = None,
        session: aiohttp.ClientSession | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval <= 0:
            raise ValueError("refresh interval must be positive")
        self._ds = datastore
        self._data_source = data_source
        self._extractor = extractor
        self.interval = interval
        self.timeout = timeout
        self._metrics_port = metrics_port
        self._on_error = on_error
        self._session = session
        self._own_session = session is None
        self._clock = clock
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._multi_rank_pods: frozenset[tuple[str, str]] = frozenset()
        self._stats: dict[str, ScrapeStats] = {}
        self._pending: set[str] | None = None
        self._attempted: set[str] = set()
        self._started = False
        self._rng = random.Random()
        self._client_timeout = aiohttp.ClientTimeout(total=timeout)
        self.first_round_done = asyncio.Event()

    # ---- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=0, limit_per_host=2, keepalive_timeout=60.0)
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers=_HEADERS,
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            )
        self._ds.subscribe_membership(self._on_membership)
        if self._ds.synced:
            self._capture_first_round()
        else:
            self._ds.subscribe_synced(self._capture_first_round)
        self._on_membership(self._ds.keys())

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        self._ds.unsubscribe_membership(self._on_membership)
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def run(self) -> None:
        """Start and run until cancelled (for use as a background task)."""
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop()

    def stats(self) -> dict[str, ScrapeStats]:
        """Scrape stats of the endpoints currently scraped, by endpoint key."""
        return dict(self._stats)

    # ---- membership --------------------------------------------------------------------------------

    def _on_membership(self, keys: frozenset[str]) -> None:
        if not self._started:
            return
        if self._metrics_port:
            pods = Counter(_pod_of(e) for e in self._ds.snapshot())
            self._multi_rank_pods = frozenset(pod for pod, n in pods.items() if n > 1)
        for key in list(self._tasks):
            if key not in keys:
                self._tasks.pop(key).cancel()
                self._stats.pop(key, None)
                self._mark_attempted(key)
                self._attempted.discard(key)
        for key in keys:
            if key not in self._tasks:
                self._stats[key] = ScrapeStats()
                self._tasks[key] = asyncio.get_running_loop().create_task(
                    self._loop(key), name=f"scrape {key}"
                )

    def _capture_first_round(self) -> None:
        self._pending = set(self._ds.keys()) - self._attempted
        self._check_first_round()

    def _mark_attempted(self, key: str) -> None:
        self._attempted.add(key)
        if self._pending is not None:
            self._pending.discard(key)
            self._check_first_round()

    def _check_first_round(self) -> None:
        if self._pending is not None and not self._pending:
            self.first_round_done.set()

    # ---- the loop ----------------------------------------------------------------------------------

    async def _loop(self, key: str) -> None:
        loop = asyncio.get_running_loop()
        first = True
        next_at = loop.time()
        while True:
            endpoint = self._ds.get(key)
            if endpoint is None:
                return
            try:
                await self.scrape_once(endpoint)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug, not a scrape failure: keep the loop alive
                log.exception("unexpected error scraping %s", key)
            self._mark_attempted(key)
            now = loop.time()
            if first:
                # Spread the loops over the interval so 64 endpoints do not all fire at once.
                next_at = now + self.interval * self._rng.random()
                first = False
            else:
                next_at += self.interval
                if next_at < now:  # fell behind (slow scrape): do not burst to catch up
                    next_at = now
            await asyncio.sleep(next_at - now)

    async def scrape_once(self, endpoint: Endpoint) -> bool:
        """Scrape one endpoint once and publish the result; True on success."""
        source = self._data_source()
        extractor = self._extractor()
        stats = self._stats.setdefault(endpoint.key, ScrapeStats())
        if source is None or extractor is None:
            return False  # no data layer configured: nothing to scrape
        stats.attempts += 1
        started = time.perf_counter()
        url = source.url(endpoint, self.metrics_port_for(endpoint))
        try:
            body = await self._fetch(url, source)
        except asyncio.CancelledError:
            raise
        except (aiohttp.ClientError, OSError, TimeoutError, ScrapeError) as exc:
            stats.last_duration = time.perf_counter() - started
            if self._current_at(endpoint) is not None:
                self._failed(endpoint, stats, url, _describe(exc))
            return False
        current = self._current_at(endpoint)
        if current is None:
            return False  # the key moved to another address (or left) while the scrape was in flight
        mapping = extractor.mapping_for(endpoint.labels)
        found = scan(body, mapping.names)
        previous = current.metrics
        result = extractor.extract(mapping, found.samples, previous, self._clock())
        self._ds.update_metrics(endpoint.key, result.metrics, healthy=True)
        stats.last_duration = time.perf_counter() - started
        stats.last_success = self._clock()
        stats.consecutive_failures = 0
        if result.missing or found.malformed:
            stats.last_error = _partial(result.missing, found.malformed, mapping.name)
            log.log(TRACE, "partial metrics from %s (%s): %s", endpoint.key, url, stats.last_error)
        else:
            stats.last_error = ""
            if log.isEnabledFor(TRACE):
                m = result.metrics
                log.log(
                    TRACE,
                    "scraped %s: queue=%d running=%d kv=%.3f in %.1fms",
                    endpoint.key,
                    m.waiting_queue_size,
                    m.running_requests_size,
                    m.kv_cache_usage,
                    stats.last_duration * 1000,
                )
        if stats.reachable is not True:
            level = logging.INFO if stats.reachable is False else logging.DEBUG
            log.log(level, "model server %s (%s) is reachable", endpoint.key, url)
            stats.reachable = True
        return True

    def metrics_port_for(self, endpoint: Endpoint) -> int:
        """The port override for `endpoint` (0 = its own port)."""
        if not self._metrics_port or _pod_of(endpoint) in self._multi_rank_pods:
            return 0
        return self._metrics_port

    def _current_at(self, endpoint: Endpoint) -> Endpoint | None:
        """The datastore's endpoint of `endpoint.key` if it still names the address that was scraped."""
        current = self._ds.get(endpoint.key)
        if current is None or (current.ip, current.port) != (endpoint.ip, endpoint.port):
            return None
        return current

    async def _fetch(self, url: str, source: MetricsDataSource) -> bytes:
        session = self._session
        if session is None:
            raise ScrapeError("scraper is stopped")
        ssl = source.verify_tls  # False: no certificate verification (insecureSkipVerify)
        # The session's total timeout covers connect, headers and body; a second asyncio timer per
        # request would only cost CPU.
        async with session.get(url, ssl=ssl, allow_redirects=False, timeout=self._client_timeout) as resp:
            if resp.status != 200:
                raise ScrapeError(f"HTTP {resp.status}")
            return await resp.read()

    def _failed(self, endpoint: Endpoint, stats: ScrapeStats, url: str, reason: str) -> None:
        stats.failures += 1
        stats.consecutive_failures += 1
        stats.last_error = reason
        self._ds.set_healthy(endpoint.key, False)
        if self._on_error is not None:
            self._on_error(endpoint.key)
        log.log(TRACE, "scrape of %s (%s) failed: %s", endpoint.key, url, reason)
        if stats.reachable is not False:
            log.info("model server %s (%s) is unreachable: %s; retrying", endpoint.key, url, reason)
            stats.reachable = False


def _pod_of(endpoint: Endpoint) -> tuple[str, str]:
    """The pod an endpoint belongs to: its (namespace, pod name), or its IP for a static endpoint."""
    return (endpoint.namespace, endpoint.pod_name) if endpoint.pod_name else ("", endpoint.ip)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, ScrapeError) else f"{type(exc).__name__}: {text}"


def _partial(missing: tuple[str, ...], malformed: int, engine: str) -> str:
    parts = []
    if missing:
        parts.append(f"no value for {', '.join(missing)} (engine {engine})")
    if malformed:
        parts.append(f"{malformed} malformed line(s)")
    return "; ".join(parts)
