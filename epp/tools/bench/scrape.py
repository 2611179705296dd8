"""Benchmark of model-server metrics scraping: `python -m epp.tools.bench.scrape`.

The setting is the issue's: 64 endpoints scraped every 50 ms (1,280 pages a second), each page a realistic
vLLM `/metrics` page (`engine_pages.vllm_page`: ~56 KB, 600 lines, 20 histograms). The gauges the
scheduler reads change on every page (random queue, running and KV values), so per-line caching only helps
where a real server's page repeats itself.

Three measurements in one run:

- `library`: prometheus_client's `text_string_to_metric_families` on the page, then picking the wanted
  samples, extracting `EndpointMetrics` and storing them in a `Datastore` (what using the library costs);
- `ours`: `promtext.scan` of the raw body + extract + store, the path the scrape loop runs;
- `end-to-end`: the real `Scraper` with 64 loops at 50 ms against 64 HTTP servers in a child process,
  measuring this process's CPU time (event loop, aiohttp client, parse, store) over `--duration` seconds.

The per-page costs are process CPU time (so other load on the machine does not inflate them), converted
to "% of one core at 64 endpoints x 20 Hz"; the goal is < 20 % for parse + store. The end-to-end figure is
also reported per scrape, projected to the full rate, for runs where the busy machine slowed the
servers down.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from prometheus_client.parser import text_string_to_metric_families

from epp.datalayer.data_source import MetricsDataSource
from epp.datalayer.datastore import Datastore
from epp.datalayer.extractor import CoreMetricsExtractor
from epp.datalayer.promtext import Sample, scan
from epp.datalayer.scraper import Scraper
from epp.framework.types import Endpoint
from epp.tools.engine_pages import ServerState, vllm_page

__all__ = ["main"]

ENDPOINTS = 64
INTERVAL = 0.05
PAGES_PER_SECOND = ENDPOINTS / INTERVAL

# Sentinels rendered into the template page and replaced with fresh values per page.
_WAITING, _RUNNING, _KV = 987654, 876543, 0.123456789


def template_page() -> str:
    page = vllm_page(
        ServerState(waiting=_WAITING, running=_RUNNING, kv_usage=_KV, max_loras=4, running_loras=("a",))
    )
    for marker in (f"{_WAITING}.0", f"{_RUNNING}.0", repr(_KV)):
        assert page.count(marker) == 1, marker
    return page


def fresh_page(template: str, rng: random.Random) -> str:
    return (
        template.replace(f"{_WAITING}.0", f"{float(rng.randint(0, 20))}")
        .replace(f"{_RUNNING}.0", f"{float(rng.randint(0, 64))}")
        .replace(repr(_KV), repr(rng.random()))
    )


@dataclass(frozen=True)
class PerPage:
    median_us: float  # wall time per page (median)
    cpu_us: float  # process CPU time per page (mean): robust to other processes on the machine
    core_percent: float  # cpu_us x 1,280 pages/s, as % of one core


def _per_page(samples_ns: list[int], cpu_ns: int) -> PerPage:
    cpu_us = cpu_ns / len(samples_ns) / 1000
    return PerPage(
        median_us=round(statistics.median(samples_ns) / 1000, 1),
        cpu_us=round(cpu_us, 1),
        core_percent=round(cpu_us * PAGES_PER_SECOND / 1e6 * 100, 1),
    )


def _library_samples(text: str, names: frozenset[str]) -> dict[str, list[Sample]]:
    out: dict[str, list[Sample]] = {n: [] for n in names}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in out:
                ts = None if s.timestamp is None else int(float(s.timestamp) * 1000)
                out[s.name].append(Sample(s.name, s.labels, float(s.value), ts))
    return out


def measure_parse(iterations: int, seed: int = 1) -> dict[str, PerPage]:
    """Per-page cost of both parse + store paths over the same freshly varied pages."""
    rng = random.Random(seed)
    template = template_page()
    bodies = [fresh_page(template, rng).encode() for _ in range(iterations)]
    extractor = CoreMetricsExtractor()
    ds = Datastore()
    ds.set_endpoints(Endpoint(key=f"ep{i}", ip="10.0.0.1", port=8000 + i) for i in range(ENDPOINTS))
    keys = [f"ep{i}" for i in range(ENDPOINTS)]
    mapping = extractor.mapping_for({})

    def library(i: int, body: bytes) -> None:
        key = keys[i % ENDPOINTS]
        samples = _library_samples(body.decode("utf-8", "replace"), mapping.names)
        ep = ds.get(key)
        assert ep is not None
        ds.update_metrics(key, extractor.extract(mapping, samples, ep.metrics, time.monotonic()).metrics)

    def ours(i: int, body: bytes) -> None:
        key = keys[i % ENDPOINTS]
        found = scan(body, mapping.names)
        ep = ds.get(key)
        assert ep is not None
        ds.update_metrics(
            key, extractor.extract(mapping, found.samples, ep.metrics, time.monotonic()).metrics
        )

    def timed(fn: Callable[[int, bytes], None], count: int) -> PerPage:
        out = []
        cpu0 = time.process_time_ns()
        for i, body in enumerate(bodies[:count]):
            t0 = time.perf_counter_ns()
            fn(i, body)
            out.append(time.perf_counter_ns() - t0)
        return _per_page(out, time.process_time_ns() - cpu0)

    timed(ours, min(200, iterations))  # warm-up (regex compile, caches)
    lib_count = max(20, iterations // 20)  # the library is ~100x slower: fewer pages suffice
    return {"library": timed(library, lib_count), "ours": timed(ours, iterations)}


# ---- end to end ------------------------------------------------------------------------------------


async def _serve(count: int) -> None:
    """Child process: `count` HTTP servers on 127.0.0.1, each serving varied vLLM pages."""
    from aiohttp import web

    template = template_page().encode()
    # Split at the three sentinel values so a fresh page is one cheap join.
    parts: list[bytes] = []
    rest = template
    for marker in (f"{_WAITING}.0", f"{_RUNNING}.0", repr(_KV)):
        head, _, rest = rest.partition(marker.encode())
        parts.append(head)
    parts.append(rest)
    rng = random.Random(7)

    async def handle(request: web.Request) -> web.Response:
        values = (f"{float(rng.randint(0, 20))}", f"{float(rng.randint(0, 64))}", repr(rng.random()))
        body = b"".join(
            p for pair in zip(parts, (*(v.encode() for v in values), b""), strict=True) for p in pair
        )
        return web.Response(body=body, content_type="text/plain")

    app = web.Application()
    app.router.add_get("/metrics", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    ports = []
    for _ in range(count):
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        ports.append(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
    print(json.dumps(ports), flush=True)
    await asyncio.Event().wait()


@dataclass(frozen=True)
class EndToEnd:
    duration_s: float
    scrapes: int
    scrapes_per_endpoint_per_s: float
    failures: int
    process_cpu_percent: float  # this process's CPU over the window, % of one core
    cpu_us_per_scrape: float  # the same CPU divided by the scrapes done
    projected_core_percent: float  # cpu_us_per_scrape x 1,280 scrapes/s (if the servers lagged)


async def measure_end_to_end(duration: float) -> EndToEnd:
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "epp.tools.bench.scrape",
        "--serve",
        str(ENDPOINTS),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        ports = json.loads(await asyncio.wait_for(child.stdout.readline(), 30))
        ds = Datastore()
        ds.set_endpoints(Endpoint(key=f"ep{p}", ip="127.0.0.1", port=p) for p in ports)
        ds.mark_synced()
        source, extractor = MetricsDataSource(), CoreMetricsExtractor()
        scraper = Scraper(ds, data_source=lambda: source, extractor=lambda: extractor, interval=INTERVAL)
        await scraper.start()
        try:
            await asyncio.wait_for(scraper.first_round_done.wait(), 10)
            await asyncio.sleep(1.0)  # settle into the steady cadence
            before = sum(s.attempts for s in scraper.stats().values())
            fails_before = sum(s.failures for s in scraper.stats().values())
            cpu0, wall0 = time.process_time(), time.monotonic()
            await asyncio.sleep(duration)
            cpu1, wall1 = time.process_time(), time.monotonic()
            after = sum(s.attempts for s in scraper.stats().values())
            fails = sum(s.failures for s in scraper.stats().values()) - fails_before
        finally:
            await scraper.stop()
    finally:
        child.kill()
        await child.wait()
    wall = wall1 - wall0
    scrapes = after - before
    per_scrape_us = (cpu1 - cpu0) / max(1, scrapes) * 1e6
    return EndToEnd(
        duration_s=round(wall, 2),
        scrapes=scrapes,
        scrapes_per_endpoint_per_s=round(scrapes / wall / ENDPOINTS, 2),
        failures=fails,
        process_cpu_percent=round((cpu1 - cpu0) / wall * 100, 1),
        cpu_us_per_scrape=round(per_scrape_us, 1),
        projected_core_percent=round(per_scrape_us * PAGES_PER_SECOND / 1e4, 1),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m epp.tools.bench.scrape", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--iterations", type=int, default=2000, help="pages for the parse + store measurement"
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of end-to-end scraping")
    parser.add_argument("--no-end-to-end", action="store_true", help="skip the HTTP measurement")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--serve", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        asyncio.run(_serve(args.serve))
        return 0
    page_bytes = len(template_page().encode())
    parse = measure_parse(args.iterations)
    e2e = None if args.no_end_to_end else asyncio.run(measure_end_to_end(args.duration))
    ratio = round(parse["library"].cpu_us / parse["ours"].cpu_us, 1)
    result = {
        "page_bytes": page_bytes,
        "endpoints": ENDPOINTS,
        "interval_s": INTERVAL,
        "library": asdict(parse["library"]),
        "ours": asdict(parse["ours"]),
        "library_over_ours": ratio,
        "end_to_end": asdict(e2e) if e2e else None,
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"vLLM page: {page_bytes} bytes; {ENDPOINTS} endpoints every {INTERVAL * 1000:.0f} ms")
    print(f"{'parse + store':<16}{'median wall':>14}{'mean CPU':>12}{'% of a core':>14}")
    for name in ("library", "ours"):
        p = parse[name]
        print(f"{name:<16}{p.median_us:>12.1f}us{p.cpu_us:>10.1f}us{p.core_percent:>13.1f}%")
    print(f"library / ours: {ratio}x")
    if e2e is not None:
        print(
            f"end-to-end (HTTP + parse + store, real Scraper): {e2e.process_cpu_percent}% of a core at "
            f"{e2e.scrapes_per_endpoint_per_s} scrapes/s per endpoint ({e2e.cpu_us_per_scrape} us/scrape, "
            f"{e2e.projected_core_percent}% at 20/s), {e2e.failures} failures over {e2e.duration_s}s"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
