"""Routers for the scheduling-quality probe: an EPP profile, and models of the rival policies.

- `EppRouter`: the real thing minus the wire — the config loader, the built pipeline, its parser, data
  producers, scheduler and request/response hooks, called in the order the director calls them, on the
  probe's virtual clock.
- `RoundRobin`: Envoy `ROUND_ROBIN` (a Kubernetes Service).
- `LeastRequest`: Envoy `LEAST_REQUEST` with equal weights: power of two random choices on active requests.
- `CacheAware`: sglang-router / vllm-router `cache_aware` as `peers.md` §4 describes it: a character prefix
  tree per worker that is never pruned within a run (`--eviction-interval-secs` 60 / 120 s only trims trees
  above ~33-67 M characters), load = router-tracked in-flight requests; imbalanced iff
  `max - min > balance_abs (64)` and `max > balance_rel (1.5) x min` -> least-loaded worker; else a match
  rate above `cache_threshold` (0.3) -> the worker with the longest match (ties: the less loaded, which is
  kinder to the rival than its first-index rule); else the least-loaded worker (ties: first index).
  The tree is modelled by chained hashes of 16-character chunks (one chunk = the match granularity).
- `Clairvoyant`: not a real router but a bound. It sees the engines themselves and sends each request
  where its first token comes soonest, predicted exactly by running a copy of every engine (its queue,
  its batch, its cache, the step in progress) until the request's first token; only later arrivals are
  unknown to it. No router that dispatches on arrival from observable state can beat its per-request
  choice; it is greedy, so a policy that trades one request's TTFT for later ones' may still do better
  on a percentile. About 100x slower than the EPP router (a copy of each engine per request).
"""

from __future__ import annotations

import copy
import json
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, Protocol

import xxhash

from epp.builtins import default_registry
from epp.config import build_pipeline, load_config
from epp.framework.cycle import CycleState
from epp.framework.types import Endpoint, InferenceRequest, ResponseInfo, SchedulingResult
from epp.plugins.datakeys import PREFIX_CACHE_MATCH_INFO_KEY
from epp.plugins.kvevents.producer import PrecisePrefixCacheProducer
from epp.plugins.kvevents.wire import decode_batch
from epp.scheduling.pipeline import Pipeline
from epp.tools.bench.probe_workloads import ProbeRequest
from epp.tools.sim.config import SimConfig
from epp.tools.sim.engine import Engine
from epp.tools.sim.kv_events import encode_batch
from epp.tools.sim.openai_api import parse_request
from epp.tools.sim.tokenizer import CharTokenizer, render_chat

__all__ = [
    "CacheAware",
    "Clairvoyant",
    "EngineView",
    "EppRouter",
    "LeastRequest",
    "RoundRobin",
    "Router",
    "routing_text",
]


class Router(Protocol):
    name: str

    def route(self, req: ProbeRequest, endpoints: Sequence[Endpoint], now: float) -> int: ...

    def first_token(self, rid: str, now: float) -> None: ...

    def finished(self, rid: str, now: float) -> None: ...


def routing_text(req: ProbeRequest) -> str:
    """The text a character-tree router matches: the prompt, or the rendered chat."""
    body = req.body
    if "messages" in body:
        return render_chat(body["messages"])
    prompt = body.get("prompt", "")
    return prompt if isinstance(prompt, str) else json.dumps(prompt)


class _InFlight:
    def __init__(self, n: int) -> None:
        self.loads = [0] * n
        self.where: dict[str, int] = {}

    def add(self, rid: str, i: int) -> int:
        self.loads[i] += 1
        self.where[rid] = i
        return i

    def done(self, rid: str) -> None:
        i = self.where.pop(rid, None)
        if i is not None:
            self.loads[i] -= 1


class RoundRobin:
    def __init__(self, n: int, seed: int = 0) -> None:
        self.name = "round-robin"
        self._next = 0
        self._n = n

    def route(self, req: ProbeRequest, endpoints: Sequence[Endpoint], now: float) -> int:
        i = self._next
        self._next = (i + 1) % self._n
        return i

    def first_token(self, rid: str, now: float) -> None:
        return None

    def finished(self, rid: str, now: float) -> None:
        return None


class LeastRequest:
    def __init__(self, n: int, seed: int = 0) -> None:
        self.name = "least-request"
        self._rng = random.Random(seed)
        self._inflight = _InFlight(n)
        self._n = n

    def route(self, req: ProbeRequest, endpoints: Sequence[Endpoint], now: float) -> int:
        a, b = self._rng.sample(range(self._n), 2)
        loads = self._inflight.loads
        return self._inflight.add(req.rid, a if loads[a] <= loads[b] else b)

    def first_token(self, rid: str, now: float) -> None:
        return None

    def finished(self, rid: str, now: float) -> None:
        self._inflight.done(rid)


class CacheAware:
    CHUNK = 16

    def __init__(
        self,
        n: int,
        seed: int = 0,
        *,
        cache_threshold: float = 0.3,
        balance_abs: int = 64,
        balance_rel: float = 1.5,
    ) -> None:
        self.name = "cache-aware"
        self._inflight = _InFlight(n)
        self._n = n
        self._trees: list[set[int]] = [set() for _ in range(n)]
        self.cache_threshold = cache_threshold
        self.balance_abs = balance_abs
        self.balance_rel = balance_rel

    def _chunks(self, text: str) -> list[int]:
        data = text.encode()
        out: list[int] = []
        prev = 0
        for start in range(0, len(data) - self.CHUNK + 1, self.CHUNK):
            prev = xxhash.xxh64_intdigest(data[start : start + self.CHUNK] + prev.to_bytes(8, "little"))
            out.append(prev)
        return out

    def route(self, req: ProbeRequest, endpoints: Sequence[Endpoint], now: float) -> int:
        text = routing_text(req)
        chunks = self._chunks(text)
        loads = self._inflight.loads
        lo, hi = min(loads), max(loads)
        least = loads.index(lo)
        if hi - lo > self.balance_abs and hi > self.balance_rel * lo:
            choice = least
        else:
            best, best_len = least, 0
            for i, tree in enumerate(self._trees):
                n = 0
                for h in chunks:
                    if h not in tree:
                        break
                    n += 1
                if n > best_len or (n == best_len and n > 0 and loads[i] < loads[best]):
                    best, best_len = i, n
            rate = best_len * self.CHUNK / max(1, len(text))
            choice = best if rate > self.cache_threshold else least
        self._trees[choice].update(chunks)
        return self._inflight.add(req.rid, choice)

    def first_token(self, rid: str, now: float) -> None:
        return None

    def finished(self, rid: str, now: float) -> None:
        self._inflight.done(rid)


class EppRouter:
    """An EPP profile (YAML text) driven on the probe's clock."""

    def __init__(self, config_text: str, name: str, seed: int, clock: Callable[[], float]) -> None:
        self.name = name
        registry = default_registry(entry_points=False)
        config = load_config(config_text, registry=registry, log_warnings=False)
        self.pipeline: Pipeline = build_pipeline(config, registry, clock=clock, rng=random.Random(seed))
        self._clock = clock
        self._live: dict[str, tuple[CycleState, InferenceRequest, SchedulingResult, ResponseInfo]] = {}
        self._keys: frozenset[str] = frozenset()
        #: how each decision related to the prefix match: best / partial / spill / cold
        self.decisions: Counter[str] = Counter()
        self.decision_of: dict[str, str] = {}
        self._precise = [
            plugin
            for plugin in self.pipeline.plugins.values()
            if isinstance(plugin, PrecisePrefixCacheProducer)
        ]
        #: the probe delivers the engines' KV events here (None: no plugin subscribes to events)
        self.kv_events: Callable[[str, Sequence[Any]], None] | None = (
            self._kv_events if self._precise else None
        )

    def _kv_events(self, endpoint_key: str, events: Sequence[Any]) -> None:
        """Engine events go through the real wire format: encoded as the simulator publishes them."""
        batch = decode_batch(encode_batch(events, self._clock()))
        for producer in self._precise:
            producer.index.apply(endpoint_key, batch)

    def plugins(self) -> Sequence[object]:
        return list(self.pipeline.plugins.values())

    def route(self, req: ProbeRequest, endpoints: Sequence[Endpoint], now: float) -> int:
        p = self.pipeline
        keys = frozenset(e.key for e in endpoints)
        if keys != self._keys:
            self._keys = keys
            for plugin in p.plugins.values():
                changed = getattr(plugin, "endpoints_changed", None)
                if callable(changed):
                    changed(keys)
        body = json.dumps(req.body, separators=(",", ":")).encode()
        headers = {":path": req.path, "x-request-id": req.rid}
        parsed = p.parser.parse(req.rid, req.path, headers, body)
        ir = replace(parsed, size_bytes=len(body), received_at=now)
        cycle = CycleState()
        for producer in p.producers:
            producer.prepare_data(cycle, ir, endpoints)
        result = p.scheduler.schedule(ir, endpoints, cycle, None)
        for hook in p.pre_request:
            hook.pre_request(cycle, ir, result)
        target = result.targets[0]
        decision = _decision(cycle, target.key)
        self.decisions[decision] += 1
        self.decision_of[req.rid] = decision
        info = ResponseInfo(status=200, streaming=True, served_endpoint=target.address)
        for received in p.response_received:
            received.response_received(cycle, ir, info, result)
        self._live[req.rid] = (cycle, ir, result, info)
        return next(i for i, e in enumerate(endpoints) if e.key == target.key)

    def first_token(self, rid: str, now: float) -> None:
        live = self._live.get(rid)
        if live is not None and not live[3].first_byte_at:
            live[3].first_byte_at = now

    def finished(self, rid: str, now: float) -> None:
        live = self._live.pop(rid, None)
        if live is None:
            return
        cycle, ir, result, info = live
        info.complete = True
        for hook in self.pipeline.response_complete:
            hook.response_complete(cycle, ir, info, result)


def _decision(cycle: CycleState, key: str) -> str:
    info = cycle.read(PREFIX_CACHE_MATCH_INFO_KEY)
    if info is None or not info.scores:
        return "cold"
    best = max(info.scores.values())
    mine = info.scores.get(key, 0.0)
    return "best" if mine >= best else "partial" if mine > 0.0 else "spill"


def describe(router: Any) -> str:
    return str(getattr(router, "name", type(router).__name__))


class EngineView(Protocol):
    """What the probe shows a router that may look inside the engines (`Clairvoyant`)."""

    engines: Sequence[Engine]
    #: per engine: the end of the step in progress (meaningful while `busy`)
    step_end: Sequence[float]
    busy: Sequence[bool]
    config: SimConfig
    tokenizer: CharTokenizer


class Clairvoyant:
    """Each request to the engine that gives it its first token soonest, by exact prediction."""

    #: steps simulated per prediction before giving up (a first token this far out loses anyway)
    MAX_STEPS = 512
    PROBE_ID = "__clairvoyant__"

    def __init__(self, n: int, seed: int = 0) -> None:
        self.name = "clairvoyant"
        self._view: EngineView | None = None

    def bind(self, view: EngineView) -> None:
        self._view = view

    def _bound(self) -> EngineView:
        if self._view is None:
            raise RuntimeError("Clairvoyant.bind(view) was not called")
        return self._view

    def predict_ttft(self, i: int, prompt: Sequence[int], max_tokens: int, now: float) -> float:
        """Seconds until the first token if the request were added to engine `i` now, no later arrivals."""
        view = self._bound()
        engine = copy.deepcopy(view.engines[i])
        engine.add_request(self.PROBE_ID, prompt, max_tokens, None, now)
        t = max(now, view.step_end[i]) if view.busy[i] else now
        for _ in range(self.MAX_STEPS):
            result = engine.step(t)
            if result.duration <= 0.0:
                break
            t = result.end
            if any(o.request_id == self.PROBE_ID and o.index == 0 for o in result.outputs):
                return t - now
        return float("inf")

    def route(self, req: ProbeRequest, endpoints: Sequence[Endpoint], now: float) -> int:
        view = self._bound()
        parsed = parse_request(
            "chat" if "messages" in req.body else "completion", req.body, view.config, view.tokenizer
        )
        prompt = parsed.prompts[0]
        ttfts = [self.predict_ttft(i, prompt, parsed.max_tokens, now) for i in range(len(view.engines))]
        return ttfts.index(min(ttfts))

    def first_token(self, rid: str, now: float) -> None:
        return None

    def finished(self, rid: str, now: float) -> None:
        return None
