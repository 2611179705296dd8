"""`SimServer`: one simulated vLLM-compatible model server (aiohttp), startable in-process.

Serves the OpenAI API (`/v1/completions`, `/v1/chat/completions`, `/v1/models`), vLLM's extras
(`/health`, `/ping`, `/version`, `/tokenize`, `/v1/completions/render`, `/v1/chat/completions/render`,
`/kv_event_sources`, `/reset_prefix_cache`), SGLang's probes (`/get_model_info`, `/get_server_info`,
`/health_generate`, `/get_load`) and `/metrics`. Non-vLLM test and fault hooks live under `/admin/`.
Every response names the server (`x-sim-server`, `x-inference-port`) and echoes `x-request-id`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from epp.tools.sim.config import EngineKind, SimConfig
from epp.tools.sim.driver import EngineDriver
from epp.tools.sim.engine import Engine, EngineRequest, EngineStats, StepResult, TokenOutput
from epp.tools.sim.kv_events import KVEventPublisher
from epp.tools.sim.metrics import CONTENT_TYPE, LatencyHistograms, MetricsOverride, SimMetrics
from epp.tools.sim.openai_api import (
    ApiError,
    ChoiceState,
    Kind,
    ParsedRequest,
    chat_chunk,
    chat_response,
    completion_chunk,
    completion_response,
    error_body,
    now_created,
    parse_request,
    usage_body,
)
from epp.tools.sim.tokenizer import make_tokenizer

__all__ = ["FAULT_TARGETS", "SimServer"]

log = logging.getLogger("epp.tools.sim")

FAULT_TARGETS = ("metrics", "requests", "health")
_GENERATE_PATHS = ("/v1/completions", "/v1/chat/completions")
_SAMPLE_LIMIT = 100_000
#: llm-d's P/D header: the prefill server a decode server pulls the prompt's KV from.
PREFILLER_HEADER = "x-prefiller-host-port"
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _InjectedFault(ApiError):
    """An error reply forced by /admin/fault."""


@dataclass(slots=True)
class _Faults:
    hang: set[str] = field(default_factory=set)
    fail: dict[str, int] = field(default_factory=dict)
    released: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(slots=True)
class _Counters:
    requests_received: int = 0
    requests_rejected: int = 0
    requests_failed_injected: int = 0
    client_aborts: int = 0
    # P/D: decode side (KV pulled from a prefill server) and prefill side (prefill-only requests served)
    kv_transfers: int = 0
    kv_transfer_blocks: int = 0
    kv_transfer_s: float = 0.0
    kv_transfer_failures: int = 0
    remote_prefill_requests: int = 0
    ttft: deque[float] = field(default_factory=lambda: deque(maxlen=_SAMPLE_LIMIT))
    e2e: deque[float] = field(default_factory=lambda: deque(maxlen=_SAMPLE_LIMIT))
    queue: deque[float] = field(default_factory=lambda: deque(maxlen=_SAMPLE_LIMIT))


@dataclass(slots=True, eq=False)
class _Pending:
    """One HTTP generation request: its engine requests and what they produced so far."""

    queue: asyncio.Queue[tuple[int, TokenOutput] | None]
    choices: list[ChoiceState]
    engine_ids: list[str] = field(default_factory=list)
    engine_reqs: list[EngineRequest] = field(default_factory=list)
    done: int = 0


class SimServer:
    """A simulated model server. `await start()`, then use `.url`; `await stop()` when done."""

    def __init__(self, config: SimConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        config.validate()
        self.config = config
        self.tokenizer = make_tokenizer(config.tokenizer, config.vocab_size)
        self.engine = Engine(config)
        self.latency = LatencyHistograms.new()
        self.metrics = SimMetrics(config, self.engine, self.latency)
        self.driver = EngineDriver(self.engine, clock=clock, on_step=self._on_step)
        self.publisher: KVEventPublisher | None = None
        self.counters = _Counters()
        self._clock = clock
        self._faults = _Faults()
        self._faults.released.set()
        self._baseline = EngineStats()
        self._baseline_lora_loads = 0
        self._baseline_evictions = 0
        self._pending: set[_Pending] = set()
        self._closing = False
        self._last_token: dict[str, float] = {}
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None
        self._port = 0
        self._started = 0.0
        self._created = now_created()
        self.name = config.name

    # ---- lifecycle -----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        host = self.config.host
        return f"http://[{host}]:{self._port}" if ":" in host else f"http://{host}:{self._port}"

    @property
    def address(self) -> str:
        """`host:port`, the form `--static-endpoints` takes."""
        return self.url.removeprefix("http://")

    async def start(self) -> None:
        if self._runner is not None:
            return
        app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[self._error_middleware])
        self._add_routes(app)
        app.on_response_prepare.append(self._stamp_headers)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.config.host, self.config.port)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        self.name = self.config.name or f"sim-{self._port}"
        try:
            self._start_publisher()
        except ValueError:
            await self.stop()
            raise
        self._started = self._clock()
        self._closing = False
        await self.driver.start()
        log.info("sim %s serving %s on %s", self.name, self.config.model, self.url)

    async def stop(self) -> None:
        self._closing = True
        self._faults.released.set()
        for pending in list(self._pending):
            pending.queue.put_nowait(None)
        await self.driver.stop()
        client, self._client = self._client, None
        if client is not None:
            await client.close()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        if self.publisher is not None:
            self.publisher.close()
            self.publisher = None

    async def __aenter__(self) -> SimServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _start_publisher(self) -> None:
        cfg = self.config
        if not cfg.kv_events_endpoint:
            return
        try:
            topic = cfg.kv_events_topic.format_map({"host": cfg.host, "port": self._port, "model": cfg.model})
        except (KeyError, ValueError, IndexError) as exc:
            raise ValueError(f"--kv-events-topic {cfg.kv_events_topic!r}: {exc}") from exc
        self.publisher = KVEventPublisher(cfg.kv_events_endpoint, topic)

    # ---- admin surface used in-process by tests, the demo and benchmarks --------------------------

    def set_metrics_override(self, override: MetricsOverride) -> None:
        self.metrics.override = override

    def set_faults(self, hang: set[str] | None = None, fail: dict[str, int] | None = None) -> None:
        """Hang and/or fail targets in FAULT_TARGETS; empty arguments clear (and release hung calls)."""
        unknown = (set(hang or ()) | set(fail or {})) - set(FAULT_TARGETS)
        if unknown:
            raise ValueError(f"unknown fault target(s) {sorted(unknown)}; expected {list(FAULT_TARGETS)}")
        self._faults.hang = set(hang or ())
        self._faults.fail = dict(fail or {})
        if self._faults.hang:
            self._faults.released.clear()
        else:
            self._faults.released.set()

    def reset_cache(self) -> int:
        dropped = self.engine.reset_prefix_cache()
        self._publish_events()
        return dropped

    def reset_stats(self) -> None:
        self._baseline = dataclasses.replace(self.engine.stats)
        self._baseline_lora_loads = self.engine.lora.loads
        self._baseline_evictions = self.engine.pool.evictions
        self.counters = _Counters()

    def stats(self) -> dict[str, Any]:
        """Counters since start (or the last reset_stats), for the demo and the benchmarks."""
        cur, base = dataclasses.asdict(self.engine.stats), dataclasses.asdict(self._baseline)
        delta = {k: cur[k] - base[k] for k in cur}
        queries, hits = delta["prefix_cache_queries"], delta["prefix_cache_hits"]
        uptime = max(self._clock() - self._started, 1e-9) if self._started else 0.0
        c = self.counters
        return {
            "name": self.name,
            "url": self.url,
            "model": self.config.model,
            "engine": self.config.engine.value,
            "time_scale": self.config.time_scale,
            "requests_received": c.requests_received,
            "requests_rejected": c.requests_rejected,
            "requests_failed_injected": c.requests_failed_injected,
            "client_aborts": c.client_aborts,
            "role": self.config.role,
            "gpu": self.config.gpu,
            "kv_transfers": c.kv_transfers,
            "kv_transfer_blocks": c.kv_transfer_blocks,
            "kv_transfer_s": c.kv_transfer_s,
            "kv_transfer_failures": c.kv_transfer_failures,
            "remote_prefill_requests": c.remote_prefill_requests,
            "requests_finished": delta["requests_finished"],
            "requests_aborted": delta["requests_aborted"],
            "waiting": len(self.engine.waiting),
            "running": len(self.engine.running),
            "kv_cache_usage": self.engine.pool.usage,
            "cached_blocks": self.engine.pool.num_cached,
            "free_blocks": self.engine.pool.num_free,
            "prompt_tokens": delta["prompt_tokens"],
            "generation_tokens": delta["generation_tokens"],
            "prefix_cache_queries": queries,
            "prefix_cache_hits": hits,
            "prefix_cache_hit_ratio": hits / queries if queries else 0.0,
            "prefill_tokens_computed": delta["prefill_tokens_computed"],
            "evicted_blocks": self.engine.pool.evictions - self._baseline_evictions,
            "preemptions": delta["preemptions"],
            "lora_loads": self.engine.lora.loads - self._baseline_lora_loads,
            "lora_resident": self.engine.lora.resident,
            "steps": delta["steps"],
            "busy_time_s": delta["busy_time"],
            "uptime_s": uptime,
            "ttft_s": list(c.ttft),
            "e2e_s": list(c.e2e),
            "queue_s": list(c.queue),
            "kv_events_endpoint": self.publisher.endpoint if self.publisher else None,
        }

    # ---- engine observer -----------------------------------------------------------------------

    def _on_step(self, result: StepResult) -> None:
        end = result.end
        for out in result.outputs:
            last = self._last_token.get(out.request_id)
            if last is not None:
                self.latency.itl.observe(max(0.0, end - last))
            if out.finish_reason is None:
                self._last_token[out.request_id] = end
            else:
                self._last_token.pop(out.request_id, None)
        for req in result.finished:
            self._observe_finished(req)
        self.metrics.note_lora_state()
        self._publish_events()

    def _observe_finished(self, req: EngineRequest) -> None:
        reason = req.finish_reason or "length"
        self.metrics.finished_by_reason[reason] = self.metrics.finished_by_reason.get(reason, 0) + 1
        if req.first_token_time is None or req.finish_time is None or req.first_scheduled is None:
            return
        ttft = req.first_token_time - req.arrival
        e2e = req.finish_time - req.arrival
        queued = req.first_scheduled - req.arrival
        self.latency.ttft.observe(ttft)
        self.latency.e2e.observe(e2e)
        self.latency.queue.observe(queued)
        self.counters.ttft.append(ttft)
        self.counters.e2e.append(e2e)
        self.counters.queue.append(queued)

    def _publish_events(self) -> None:
        events = self.engine.pool.drain_events()
        if events and self.publisher is not None:
            self.publisher.publish(events)

    # ---- HTTP plumbing -------------------------------------------------------------------------

    def _add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_post("/v1/completions", self._completions)
        r.add_post("/v1/chat/completions", self._chat_completions)
        r.add_get("/v1/models", self._models)
        r.add_post("/v1/completions/render", self._render_completions)
        r.add_post("/v1/chat/completions/render", self._render_chat)
        r.add_post("/tokenize", self._tokenize)
        r.add_get("/health", self._health)
        r.add_get("/ping", self._health)
        r.add_get("/health_generate", self._health)
        r.add_get("/version", self._version)
        r.add_get("/metrics", self._metrics)
        r.add_get("/get_model_info", self._model_info)
        r.add_get("/model_info", self._model_info)
        r.add_get("/get_server_info", self._server_info)
        r.add_get("/server_info", self._server_info)
        r.add_get("/get_load", self._load)
        r.add_get("/kv_event_sources", self._kv_event_sources)
        r.add_post("/reset_prefix_cache", self._reset_cache)
        r.add_get("/admin/stats", self._admin_stats)
        r.add_post("/admin/reset-stats", self._admin_reset_stats)
        r.add_post("/admin/reset-cache", self._reset_cache)
        r.add_get("/admin/metrics-override", self._override_get)
        r.add_post("/admin/metrics-override", self._override_set)
        r.add_delete("/admin/metrics-override", self._override_clear)
        r.add_get("/admin/fault", self._fault_get)
        r.add_post("/admin/fault", self._fault_set)
        r.add_delete("/admin/fault", self._fault_clear)

    async def _stamp_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        response.headers["x-sim-server"] = self.name
        response.headers["x-inference-port"] = str(self._port)
        rid = request.headers.get("x-request-id")
        if rid is not None:
            response.headers["x-request-id"] = rid

    @web.middleware
    async def _error_middleware(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as err:
            if request.path in _GENERATE_PATHS and not isinstance(err, _InjectedFault):
                self.counters.requests_rejected += 1
            return web.json_response(error_body(err), status=err.status)
        except web.HTTPException as exc:
            if exc.status in (404, 405):
                return web.json_response({"detail": exc.reason}, status=exc.status)
            raise

    async def _fault_gate(self, target: str) -> None:
        if target in self._faults.hang:
            await self._faults.released.wait()
        status = self._faults.fail.get(target)
        if status is not None:
            if target == "requests":
                self.counters.requests_failed_injected += 1
            raise _InjectedFault(status, f"injected fault: {target} fail with {status}")

    @staticmethod
    async def _json_body(request: web.Request) -> Any:
        raw = await request.read()
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"Invalid JSON body: {exc}") from exc

    # ---- OpenAI API ----------------------------------------------------------------------------

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "completion")

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "chat")

    async def _generate(self, request: web.Request, kind: Kind) -> web.StreamResponse:
        self.counters.requests_received += 1
        await self._fault_gate("requests")
        if self._closing:
            raise ApiError(503, "The server is shutting down.")
        body = await self._json_body(request)
        parsed = parse_request(kind, body, self.config, self.tokenizer)
        remote_decode = _asks_remote_decode(body)
        if remote_decode:
            self.counters.remote_prefill_requests += 1
        prefiller = request.headers.get(PREFILLER_HEADER)
        if prefiller and self.config.role != "prefill" and not remote_decode:
            await self._pull_kv(request, body, parsed, prefiller)
        prefix = "cmpl" if kind == "completion" else "chatcmpl"
        rid = f"{prefix}-{request.headers.get('x-request-id') or uuid.uuid4().hex}"
        pending = _Pending(asyncio.Queue(), [ChoiceState(len(p)) for p in parsed.prompts])
        self._pending.add(pending)
        try:
            for i, prompt in enumerate(parsed.prompts):
                engine_id = f"{uuid.uuid4().hex}-{i}"
                sink = _make_sink(pending.queue, i)
                pending.engine_reqs.append(
                    self.driver.submit(engine_id, prompt, parsed.max_tokens, parsed.lora, sink)
                )
                pending.engine_ids.append(engine_id)
            if parsed.stream:
                return await self._stream(request, parsed, rid, pending)
            await self._collect(pending)
            created = now_created()
            if kind == "chat":
                reply = chat_response(rid, parsed.model, created, pending.choices[0])
            else:
                reply = completion_response(rid, parsed.model, created, pending.choices)
            if remote_decode:
                reply["kv_transfer_params"] = self._kv_transfer_params(parsed)
            return web.json_response(reply)
        except (asyncio.CancelledError, ConnectionError):
            self.counters.client_aborts += 1
            raise
        finally:
            self._pending.discard(pending)
            for engine_id, req in zip(pending.engine_ids, pending.engine_reqs, strict=True):
                if not req.finished:
                    self.driver.abort(engine_id)
                    self.metrics.finished_by_reason["abort"] = (
                        self.metrics.finished_by_reason.get("abort", 0) + 1
                    )

    # ---- P/D disaggregation -----------------------------------------------------------------------

    async def _pull_kv(
        self, request: web.Request, body: dict[str, Any], parsed: ParsedRequest, prefiller: str
    ) -> None:
        """Decode side of P/D, as llm-d's sidecar with vLLM's NIXL connector: ask the prefill server to
        prefill (the same request, non-streaming, max_tokens 1, `kv_transfer_params.do_remote_decode`),
        then wait for the KV blocks this server lacks to arrive (blocks x block size x bytes per token at
        `--kv-transfer-gbps`, time-scaled) and store them in the prefix cache, so the request that follows
        computes only its last token. A failed prefill falls back to prefilling here."""
        pbody = dict(body)
        pbody["stream"] = False
        pbody.pop("stream_options", None)
        pbody["max_tokens"] = 1
        if "max_completion_tokens" in pbody:
            pbody["max_completion_tokens"] = 1
        pbody["kv_transfer_params"] = {
            "do_remote_decode": True,
            "do_remote_prefill": False,
            "remote_engine_id": None,
            "remote_block_ids": None,
            "remote_host": None,
            "remote_port": None,
        }
        headers = {"x-request-id": request.headers.get("x-request-id") or uuid.uuid4().hex}
        if self._client is None:
            self._client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120))
        url = f"http://{prefiller}{request.path}"
        try:
            async with self._client.post(url, json=pbody, headers=headers) as r:
                await r.read()
                ok = r.status == 200
                status = str(r.status)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            ok, status = False, repr(exc)
        if not ok:
            self.counters.kv_transfer_failures += 1
            log.warning("remote prefill on %s failed (%s): prefilling locally", prefiller, status)
            return
        cfg = self.config
        moved = sum(self.engine.missing_blocks(p, parsed.lora) for p in parsed.prompts)
        seconds = moved * cfg.block_size * cfg.kv_bytes_per_token / (cfg.kv_transfer_gbps * 1e9)
        seconds *= cfg.time_scale
        if seconds > 0:
            await asyncio.sleep(seconds)
        for prompt in parsed.prompts:
            self.engine.receive_kv(prompt, parsed.lora)
        self._publish_events()
        c = self.counters
        c.kv_transfers += 1
        c.kv_transfer_blocks += moved
        c.kv_transfer_s += seconds

    def _kv_transfer_params(self, parsed: ParsedRequest) -> dict[str, Any]:
        """What a vLLM prefill server (NIXL) returns to the decode side: where to read which blocks."""
        ids = [h for p in parsed.prompts for h in self.engine.transferable(p, parsed.lora)]
        return {
            "do_remote_prefill": True,
            "do_remote_decode": False,
            "remote_block_ids": ids,
            "remote_engine_id": self.name,
            "remote_host": self.config.host,
            "remote_port": self._port,
            "tp_size": 1,
        }

    async def _next(self, pending: _Pending) -> tuple[int, TokenOutput]:
        item = await pending.queue.get()
        if item is None:
            raise ApiError(503, "The server is shutting down.")
        i, out = item
        choice = pending.choices[i]
        choice.text += out.text
        choice.completion_tokens += 1
        choice.cached_tokens = pending.engine_reqs[i].cached_tokens
        if out.finish_reason is not None:
            choice.finish_reason = out.finish_reason
            pending.done += 1
        return i, out

    async def _collect(self, pending: _Pending) -> None:
        while pending.done < len(pending.choices):
            await self._next(pending)

    async def _stream(
        self, request: web.Request, parsed: ParsedRequest, rid: str, pending: _Pending
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        response.headers["Cache-Control"] = "no-cache"
        await response.prepare(request)
        created = now_created()
        started = [False] * len(pending.choices)

        async def send(payload: dict[str, Any]) -> None:
            await response.write(b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n")

        while pending.done < len(pending.choices):
            try:
                i, out = await self._next(pending)
            except ApiError:
                break
            if parsed.kind == "chat":
                if not started[i]:
                    await send(
                        chat_chunk(rid, parsed.model, created, {"role": "assistant", "content": ""}, None)
                    )
                chunk = chat_chunk(rid, parsed.model, created, {"content": out.text}, out.finish_reason)
            else:
                chunk = completion_chunk(rid, parsed.model, created, i, out.text, out.finish_reason)
            started[i] = True
            if parsed.include_usage and parsed.continuous_usage:
                chunk["usage"] = usage_body(pending.choices)
            await send(chunk)
        if parsed.include_usage:
            obj = "chat.completion.chunk" if parsed.kind == "chat" else "text_completion"
            await send(
                {
                    "id": rid,
                    "object": obj,
                    "created": created,
                    "model": parsed.model,
                    "choices": [],
                    "usage": usage_body(pending.choices),
                }
            )
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _models(self, request: web.Request) -> web.StreamResponse:
        cfg = self.config

        def card(model_id: str, root: str, parent: str | None) -> dict[str, Any]:
            return {
                "id": model_id,
                "object": "model",
                "created": self._created,
                "owned_by": "sglang" if cfg.engine is EngineKind.SGLANG else "vllm",
                "root": root,
                "parent": parent,
                "max_model_len": cfg.effective_max_model_len,
                "permission": [],
            }

        data = [card(cfg.model, cfg.model, None)]
        data += [card(a, f"/adapters/{a}", cfg.model) for a in cfg.lora_adapters]
        return web.json_response({"object": "list", "data": data})

    async def _render_completions(self, request: web.Request) -> web.StreamResponse:
        parsed = parse_request(
            "completion", await self._json_body(request), self.config, self.tokenizer, for_render=True
        )
        return web.json_response(
            [
                {"token_ids": list(p), "model": parsed.model, "request_id": f"cmpl-{uuid.uuid4().hex}"}
                for p in parsed.prompts
            ]
        )

    async def _render_chat(self, request: web.Request) -> web.StreamResponse:
        parsed = parse_request(
            "chat", await self._json_body(request), self.config, self.tokenizer, for_render=True
        )
        return web.json_response({"token_ids": list(parsed.prompts[0]), "model": parsed.model})

    async def _tokenize(self, request: web.Request) -> web.StreamResponse:
        body = await self._json_body(request)
        kind: Kind = "chat" if isinstance(body, dict) and "messages" in body else "completion"
        parsed = parse_request(kind, body, self.config, self.tokenizer, for_render=True)
        tokens = list(parsed.prompts[0])
        return web.json_response(
            {"count": len(tokens), "max_model_len": self.config.effective_max_model_len, "tokens": tokens}
        )

    # ---- probes ----------------------------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.StreamResponse:
        await self._fault_gate("health")
        return web.Response(status=200)

    async def _version(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"version": "0.0.0+epp-sim"})

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        await self._fault_gate("metrics")
        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    async def _model_info(self, request: web.Request) -> web.StreamResponse:
        m = self.config.model
        return web.json_response(
            {
                "model_path": m,
                "tokenizer_path": self.config.tokenizer or m,
                "is_generation": True,
                "preferred_sampling_params": None,
                "weight_version": "default",
                "has_image_understanding": False,
                "has_audio_understanding": False,
                "model_type": "llama",
                "architectures": ["LlamaForCausalLM"],
            }
        )

    async def _server_info(self, request: web.Request) -> web.StreamResponse:
        cfg = self.config
        busy = self.engine.stats.busy_time
        gen = self.engine.stats.generation_tokens
        return web.json_response(
            {
                "model_path": cfg.model,
                "model_id": cfg.model,
                "instance_id": self.name,
                "tokenizer_path": cfg.tokenizer or cfg.model,
                "served_model_name": cfg.model,
                "kv_block_size": cfg.block_size,
                "host": cfg.host,
                "port": self._port,
                "tp_size": 1,
                "dp_size": 1,
                "page_size": cfg.block_size,
                "max_total_num_tokens": cfg.kv_blocks * cfg.block_size,
                "max_running_requests": cfg.max_num_seqs,
                "chunked_prefill_size": cfg.max_num_batched_tokens,
                "context_length": cfg.effective_max_model_len,
                "disable_radix_cache": False,
                "enable_lora": bool(cfg.lora_adapters),
                "max_loras_per_batch": cfg.max_loras,
                "lora_paths": {a: f"/adapters/{a}" for a in cfg.lora_adapters},
                "version": "0.0.0+epp-sim",
                "internal_states": [{"last_gen_throughput": gen / busy if busy else 0.0}],
            }
        )

    async def _load(self, request: web.Request) -> web.StreamResponse:
        await self._fault_gate("metrics")
        waiting, running = self.metrics.waiting(), self.metrics.running()
        capacity = self.config.kv_blocks * self.config.block_size
        return web.json_response(
            [
                {
                    "rid": None,
                    "http_worker_ipc": None,
                    "dp_rank": 0,
                    "num_reqs": waiting + running,
                    "num_waiting_reqs": waiting,
                    "num_tokens": round(self.metrics.kv_usage() * capacity),
                }
            ]
        )

    async def _kv_event_sources(self, request: web.Request) -> web.StreamResponse:
        # vllm-router's discovery format: an object keyed by data-parallel rank ({} when events are off).
        if self.publisher is None:
            return web.json_response({})
        return web.json_response(
            {
                "0": {
                    "publisher": "zmq",
                    "enable_kv_cache_events": True,
                    "endpoint": self.publisher.endpoint,
                    "replay_endpoint": None,
                    "topic": self.publisher.topic,
                    "hwm": self.publisher.hwm,
                }
            }
        )

    # ---- admin -----------------------------------------------------------------------------------

    async def _reset_cache(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"dropped_blocks": self.reset_cache()})

    async def _admin_stats(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self.stats())

    async def _admin_reset_stats(self, request: web.Request) -> web.StreamResponse:
        self.reset_stats()
        return web.json_response({"ok": True})

    async def _override_get(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(dataclasses.asdict(self.metrics.override))

    async def _override_set(self, request: web.Request) -> web.StreamResponse:
        body = await self._json_body(request)
        self.set_metrics_override(_parse_override(body))
        return web.json_response(dataclasses.asdict(self.metrics.override))

    async def _override_clear(self, request: web.Request) -> web.StreamResponse:
        self.set_metrics_override(MetricsOverride())
        return web.json_response(dataclasses.asdict(self.metrics.override))

    async def _fault_get(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"hang": sorted(self._faults.hang), "fail": self._faults.fail})

    async def _fault_set(self, request: web.Request) -> web.StreamResponse:
        body = await self._json_body(request)
        if not isinstance(body, dict) or set(body) - {"hang", "fail"}:
            raise ApiError(400, 'expected {"hang": [targets], "fail": {target: status}}')
        hang, fail = body.get("hang") or [], body.get("fail") or {}
        if not isinstance(hang, list) or not all(isinstance(t, str) for t in hang):
            raise ApiError(400, '"hang" must be a list of targets')
        if not isinstance(fail, dict) or not all(
            isinstance(s, int) and not isinstance(s, bool) and 400 <= s <= 599 for s in fail.values()
        ):
            raise ApiError(400, '"fail" must map targets to HTTP statuses 400..599')
        try:
            self.set_faults(set(hang), fail)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from exc
        return await self._fault_get(request)

    async def _fault_clear(self, request: web.Request) -> web.StreamResponse:
        self.set_faults()
        return await self._fault_get(request)


def _asks_remote_decode(body: Any) -> bool:
    params = body.get("kv_transfer_params") if isinstance(body, dict) else None
    return isinstance(params, dict) and params.get("do_remote_decode") is True


def _make_sink(
    queue: asyncio.Queue[tuple[int, TokenOutput] | None], index: int
) -> Callable[[TokenOutput], None]:
    def sink(out: TokenOutput) -> None:
        queue.put_nowait((index, out))

    return sink


def _parse_override(body: Any) -> MetricsOverride:
    if not isinstance(body, dict):
        raise ApiError(400, 'expected an object like {"waiting": 12, "running": 3, "kv": 0.9}')
    aliases = {"waiting": "waiting", "running": "running", "kv": "kv", "kv_cache_usage": "kv"}
    unknown = set(body) - set(aliases)
    if unknown:
        raise ApiError(400, f"unknown override field(s) {sorted(unknown)}; expected waiting, running, kv")
    values: dict[str, Any] = {aliases[k]: v for k, v in body.items()}
    for key in ("waiting", "running"):
        v = values.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
            raise ApiError(400, f"{key} must be a non-negative integer")
    kv = values.get("kv")
    if kv is not None and (not isinstance(kv, int | float) or isinstance(kv, bool) or not 0.0 <= kv <= 1.0):
        raise ApiError(400, "kv must be a number in [0, 1]")
    return MetricsOverride(
        waiting=values.get("waiting"), running=values.get("running"), kv=None if kv is None else float(kv)
    )
