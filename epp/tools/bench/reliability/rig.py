"""What the reliability scenarios share: steady background traffic, process probes, metrics, table rows.

`Traffic` sends streamed completions at a Poisson rate in the background and keeps every result with
its start and end on one clock (`now()`), so a scenario can ask what happened before, during and after
a fault. `tree_pids`, `rss_bytes` and `open_fds` read `/proc` for a process and its children (the EPP's
workers). `metric_values` scrapes a `/metrics` page. `Row` is one line of the report: a figure, its
value, its limit and whether it is within it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from epp.tools.loadgen.client import LoadClient, RequestResult
from epp.tools.loadgen.stats import percentile
from epp.tools.loadgen.text import synthetic_text
from epp.tools.loadgen.workloads import Session, Turn
from epp.tools.procs import descendants as tree_pids
from epp.tools.procs import open_fds, rss_bytes
from epp.tools.sim.config import SimConfig

__all__ = [
    "MODEL",
    "Row",
    "Traffic",
    "counts",
    "metric_value",
    "metric_values",
    "now",
    "open_fds",
    "replace_file",
    "rss_bytes",
    "sim_configs",
    "tree_pids",
    "ttft_ms",
    "until",
]

MODEL = "sim-model"


def now() -> float:
    return time.perf_counter()


@dataclass
class Row:
    """One figure of the report. `ok` is None for a figure that has no limit (counted, shown)."""

    scenario: str
    figure: str
    value: str
    limit: str = ""
    ok: bool | None = None


def sim_configs(count: int, *, step_ms: float = 7.0, max_num_seqs: int = 64) -> list[SimConfig]:
    return [
        SimConfig(model=MODEL, step_base_ms=step_ms, max_num_seqs=max_num_seqs, seed=i) for i in range(count)
    ]


@dataclass
class Timed:
    """A result with its absolute start and end (`now()` clock)."""

    start: float
    end: float
    result: RequestResult


@dataclass
class Traffic:
    """Streamed completions to `url` at `rate` per second (Poisson) until `stop()`."""

    url: str
    rate: float
    prompt_tokens: int = 96
    max_tokens: int = 16
    groups: int = 8
    seed: int = 0
    timeout_s: float = 30.0
    headers: Mapping[str, str] = field(default_factory=dict)
    results: list[Timed] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None
    _inflight: set[asyncio.Task[None]] = field(default_factory=set)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def __aenter__(self) -> Traffic:
        self._client = LoadClient(self.url, model=MODEL, timeout_s=self.timeout_s, headers=self.headers)
        await self._client.__aenter__()
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        """No new requests; wait for those in flight (each bounded by its timeout)."""
        self._stop.set()
        if self._task is not None:
            await self._task
            self._task = None
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)
        await self._client.close()

    async def _run(self) -> None:
        rng = random.Random(self.seed)
        prefixes = [synthetic_text(rng, self.prompt_tokens // 2) for _ in range(self.groups)]
        n = 0
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), rng.expovariate(self.rate))
                return
            group = rng.randrange(self.groups)
            text = prefixes[group] + " " + synthetic_text(rng, self.prompt_tokens // 2)
            session = Session(
                id=f"rel-{self.seed}-{n}",
                group=f"g{group}",
                turns=(Turn(text=text, max_tokens=self.max_tokens),),
            )
            n += 1
            task = asyncio.create_task(self._one(session))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    async def _one(self, session: Session) -> None:
        start = now()
        result, _ = await self._client.send(session, 0)
        self.results.append(Timed(start, now(), result))

    def between(self, start: float, end: float) -> list[Timed]:
        """Results of the requests started in [start, end)."""
        return [t for t in self.results if start <= t.start < end]


def counts(counter: Counter[str]) -> str:
    """`a: 3, b: 1` (sorted by key), for a table cell."""
    return ", ".join(f"{k}: {v}" for k, v in sorted(counter.items()))


def replace_file(path: Path, text: str) -> None:
    """Write `text` to `path` the way a ConfigMap update lands: a new file renamed over the old one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def ttft_ms(timed: Iterable[Timed], q: float) -> float | None:
    values = [t.result.ttft_s for t in timed if t.result.ok and t.result.ttft_s is not None]
    p = percentile(values, q)
    return None if p is None else p * 1000


async def metric_values(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a `/metrics` page: (name, sorted labels) → value."""
    async with (
        aiohttp.ClientSession(trust_env=False) as http,
        http.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp,
    ):
        text = await resp.text()
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def metric_value(
    samples: Mapping[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    """The sum of `name`'s samples whose labels include `labels` (0 when there is none)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


async def until(predicate: object, timeout: float, interval: float = 0.02) -> float | None:
    """Poll an async or sync predicate until true; the seconds it took, or None on timeout."""
    start = now()
    while now() - start < timeout:
        value = predicate() if callable(predicate) else predicate
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return now() - start
        await asyncio.sleep(interval)
    return None
