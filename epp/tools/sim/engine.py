"""The simulated inference engine: vLLM V1's scheduler loop as pure, clock-free logic.

Requests wait in a FCFS queue. Each `step(now)`:

1. schedules the running requests first (one decode token each, or the next chunk of a prefill),
   allocating KV blocks as sequences grow; when blocks run out the most recently admitted running
   request is preempted (its blocks are freed, it goes back to the head of the queue and recomputes);
2. then, if nothing was preempted, admits waiting requests while `max_num_seqs`, the token budget
   (`max_num_batched_tokens`), the free KV blocks and the LoRA slots allow. An admitted request first
   reuses its longest cached prefix (whole blocks, at most all tokens but one) and prefills the rest,
   chunked across steps by the token budget;
3. charges the step time `base + per_token * prefill_tokens + per_seq * scheduled_seqs` (plus the load
   time of adapters made resident), scaled by `time_scale`, and emits one token for every request
   whose computed tokens caught up with its length. `max_tokens` is always honoured (no EOS).

Times are in the caller's clock (seconds): `step(now)` returns the step's duration and stamps
first-token and finish times at `now + duration`, so tests drive it with a fake clock.
"""

from __future__ import annotations

import contextlib
import random
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from epp.tools.sim.config import SimConfig
from epp.tools.sim.kvcache import Block, BlockPool, chain_block_hashes
from epp.tools.sim.lora import LoraSlots
from epp.tools.sim.tokenizer import next_output_token

__all__ = ["Engine", "EngineRequest", "EngineStats", "StepResult", "TokenOutput"]

TokenSampler = Callable[[random.Random], tuple[int, str]]


@dataclass(slots=True, eq=False)
class EngineRequest:
    """One sequence inside the engine, with its progress and timing."""

    request_id: str
    prompt: list[int]
    max_tokens: int
    lora: str | None
    arrival: float
    block_hashes: list[int]
    rng: random.Random
    output_ids: list[int] = field(default_factory=list)
    num_computed: int = 0
    blocks: list[Block] = field(default_factory=list)
    num_hashed_blocks: int = 0
    cached_tokens: int = 0
    first_scheduled: float | None = None
    first_token_time: float | None = None
    finish_time: float | None = None
    finish_reason: str | None = None
    preemptions: int = 0

    @property
    def num_tokens(self) -> int:
        return len(self.prompt) + len(self.output_ids)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(frozen=True, slots=True)
class TokenOutput:
    """A token produced by a step. `finish_reason` is set on the request's last token."""

    request_id: str
    token_id: int
    text: str
    index: int
    finish_reason: str | None


@dataclass(slots=True)
class StepResult:
    start: float
    duration: float
    outputs: list[TokenOutput] = field(default_factory=list)
    finished: list[EngineRequest] = field(default_factory=list)
    prefill_tokens: int = 0
    decode_seqs: int = 0
    scheduled_seqs: int = 0
    lora_loads: int = 0
    preempted: int = 0

    @property
    def end(self) -> float:
        return self.start + self.duration


@dataclass(slots=True)
class EngineStats:
    """Monotonic counters (token counts in tokens, times in the caller's clock seconds)."""

    requests_added: int = 0
    requests_finished: int = 0
    requests_aborted: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0
    prefill_tokens_computed: int = 0
    preemptions: int = 0
    steps: int = 0
    busy_time: float = 0.0


class Engine:
    """Scheduler + KV block pool + LoRA slots. Not thread-safe; drive it from one loop."""

    def __init__(self, config: SimConfig, *, sampler: TokenSampler = next_output_token) -> None:
        config.validate()
        self.config = config
        self.pool = BlockPool(
            config.kv_blocks, config.block_size, record_events=config.kv_events_endpoint is not None
        )
        self.lora = LoraSlots(config.max_loras)
        self.waiting: deque[EngineRequest] = deque()
        self.running: list[EngineRequest] = []
        self.stats = EngineStats()
        self._requests: dict[str, EngineRequest] = {}
        self._sampler = sampler
        self._lora_ids = {name: i + 1 for i, name in enumerate(config.lora_adapters)}
        self._arrivals = 0

    # ---- requests ------------------------------------------------------------------------------

    def add_request(
        self, request_id: str, prompt: Sequence[int], max_tokens: int, lora: str | None, now: float
    ) -> EngineRequest:
        """Queue a request. Raises ValueError for what the server should have rejected already."""
        if request_id in self._requests:
            raise ValueError(f"duplicate request id {request_id!r}")
        if not prompt:
            raise ValueError("the prompt must not be empty")
        if max_tokens < 1:
            raise ValueError("max_tokens must be >= 1")
        if len(prompt) + max_tokens > self.config.effective_max_model_len:
            raise ValueError(
                f"prompt ({len(prompt)} tokens) + max_tokens ({max_tokens}) exceeds the maximum "
                f"context length {self.config.effective_max_model_len}"
            )
        if lora is not None and lora not in self._lora_ids:
            raise ValueError(f"unknown LoRA adapter {lora!r}")
        self._arrivals += 1
        req = EngineRequest(
            request_id=request_id,
            prompt=list(prompt),
            max_tokens=max_tokens,
            lora=lora,
            arrival=now,
            block_hashes=chain_block_hashes(prompt, self.config.block_size, lora),
            rng=random.Random(f"{self.config.seed}:{self._arrivals}"),
        )
        self._requests[request_id] = req
        self.waiting.append(req)
        self.stats.requests_added += 1
        return req

    def abort(self, request_id: str) -> bool:
        """Drop a request wherever it is, freeing its blocks. False when it is unknown or done."""
        req = self._requests.pop(request_id, None)
        if req is None:
            return False
        if req in self.running:
            self.running.remove(req)
        else:
            with contextlib.suppress(ValueError):
                self.waiting.remove(req)
        self.pool.free(req.blocks)
        req.blocks = []
        req.finish_reason = "abort"
        self.stats.requests_aborted += 1
        return True

    def get(self, request_id: str) -> EngineRequest | None:
        return self._requests.get(request_id)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def running_adapters(self) -> list[str]:
        return _unique(r.lora for r in self.running)

    def waiting_adapters(self) -> list[str]:
        return _unique(r.lora for r in self.waiting)

    def used_tokens(self) -> int:
        return sum(r.num_computed for r in self.running)

    def reset_prefix_cache(self) -> int:
        return self.pool.reset_prefix_cache()

    # ---- P/D: KV blocks received from a prefill server ------------------------------------------

    def transferable(self, prompt: Sequence[int], lora: str | None) -> list[int]:
        """Hashes of the prompt's full blocks a request could reuse (all tokens but the last)."""
        bs = self.config.block_size
        return chain_block_hashes(prompt, bs, lora)[: (len(prompt) - 1) // bs]

    def missing_blocks(self, prompt: Sequence[int], lora: str | None) -> int:
        """How many of the prompt's reusable blocks are not cached here (what a transfer must bring)."""
        hashes = self.transferable(prompt, lora)
        return len(hashes) - len(self.pool.lookup(hashes))

    def receive_kv(self, prompt: Sequence[int], lora: str | None) -> int:
        """Store the prompt's reusable blocks as if a prefill server had sent them (NIXL): they join the
        prefix cache, free (unpinned) at the LRU tail, so the request admitted next finds them cached.
        Returns how many blocks were written; fewer than missing when the pool has too few free blocks."""
        hashes = self.transferable(prompt, lora)
        hits = self.pool.lookup(hashes)
        todo = hashes[len(hits) :]
        self.pool.touch(hits)  # keep the local prefix while allocating for the rest
        try:
            n = min(len(todo), self.pool.num_free)
            if n == 0:
                return 0
            blocks = self.pool.allocate(n)
            bs = self.config.block_size
            start = len(hits) * bs
            self.pool.cache_full_blocks(
                blocks,
                todo[:n],
                hits[-1].block_hash if hits else None,
                prompt[start : start + n * bs],
                self._lora_ids.get(lora) if lora else None,
                lora,
            )
            self.pool.free(blocks)
            return n
        finally:
            self.pool.free(hits)

    # ---- the step ------------------------------------------------------------------------------

    def step(self, now: float) -> StepResult:
        """Run one engine iteration starting at `now`; a zero duration means nothing could run."""
        cfg = self.config
        result = StepResult(start=now, duration=0.0)
        batch_adapters: list[str] = []
        scheduled: list[tuple[EngineRequest, int]] = []
        budget = self._schedule_running(cfg.max_num_batched_tokens, scheduled, batch_adapters, result)
        if not result.preempted:
            first_time = self._schedule_waiting(budget, scheduled, batch_adapters)
            # A step cannot start before the requests it admits arrived (the driver may run a lagging
            # clock to catch up on oversleeping; arrivals are stamped with the real clock).
            result.start = max([now, *(r.arrival for r in first_time)])
            for req in first_time:
                req.first_scheduled = result.start
        if not scheduled:
            return result

        for adapter in batch_adapters:
            if self.lora.ensure_resident(adapter, batch_adapters):
                result.lora_loads += 1
        for req, n in scheduled:
            if n == 1 and req.num_computed >= len(req.prompt):
                result.decode_seqs += 1
            else:
                result.prefill_tokens += n
        result.scheduled_seqs = len(scheduled)
        step_ms = (
            cfg.step_base_ms
            + cfg.prefill_ms_per_token * result.prefill_tokens
            + cfg.decode_ms_per_seq * result.scheduled_seqs
            + cfg.lora_load_ms * result.lora_loads
        )
        result.duration = step_ms / 1000.0 * cfg.time_scale

        for req, n in scheduled:
            req.num_computed += n
            self._cache_new_blocks(req)
            if req.num_computed == req.num_tokens:
                self._sample(req, result.end, result)
        if result.finished:
            done = {id(r) for r in result.finished}
            self.running = [r for r in self.running if id(r) not in done]

        self.stats.steps += 1
        self.stats.busy_time += result.duration
        self.stats.prefill_tokens_computed += result.prefill_tokens
        return result

    def _schedule_running(
        self,
        budget: int,
        scheduled: list[tuple[EngineRequest, int]],
        batch_adapters: list[str],
        result: StepResult,
    ) -> int:
        """Running requests, oldest first; preempt from the newest end when blocks run out."""
        idx = 0
        while idx < len(self.running) and budget > 0:
            req = self.running[idx]
            n = min(req.num_tokens - req.num_computed, budget)
            ok = self._reserve(req, n)
            while not ok:
                victim = self.running.pop()
                self._preempt(victim)
                result.preempted += 1
                if victim is req:
                    break
                ok = self._reserve(req, n)
            if not ok:
                break
            scheduled.append((req, n))
            budget -= n
            _add_adapter(batch_adapters, req.lora)
            idx += 1
        return budget

    def _schedule_waiting(
        self,
        budget: int,
        scheduled: list[tuple[EngineRequest, int]],
        batch_adapters: list[str],
    ) -> list[EngineRequest]:
        """Admit waiting requests FCFS; one whose adapter cannot get a slot is skipped, not blocking.

        Returns the requests scheduled for the first time (preempted ones coming back are not)."""
        skipped: list[EngineRequest] = []
        first_time: list[EngineRequest] = []
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            req = self.waiting[0]
            if req.lora is not None and not self.lora.can_schedule(req.lora, batch_adapters):
                skipped.append(self.waiting.popleft())
                continue
            fresh = req.first_scheduled is None
            n = self._admit(req, budget)
            if n == 0:
                break
            if fresh:
                first_time.append(req)
            self.waiting.popleft()
            self.running.append(req)
            scheduled.append((req, n))
            budget -= n
            _add_adapter(batch_adapters, req.lora)
        self.waiting.extendleft(reversed(skipped))
        return first_time

    # ---- internals -----------------------------------------------------------------------------

    def _reserve(self, req: EngineRequest, n: int) -> bool:
        """Give `req` blocks for `n` more tokens; False when the pool cannot."""
        need = self.pool.blocks_for_tokens(req.num_computed + n) - len(req.blocks)
        if need <= 0:
            return True
        if need > self.pool.num_free:
            return False
        req.blocks.extend(self.pool.allocate(need))
        return True

    def _admit(self, req: EngineRequest, budget: int) -> int:
        """Reuse the cached prefix and reserve blocks for the first chunk; 0 when blocks are short."""
        bs = self.config.block_size
        max_hit_blocks = (req.num_tokens - 1) // bs
        hits = self.pool.lookup(req.block_hashes[:max_hit_blocks])
        hit_tokens = len(hits) * bs
        n = min(req.num_tokens - hit_tokens, budget)
        need = self.pool.blocks_for_tokens(hit_tokens + n) - len(hits)
        pinned_free = sum(1 for b in hits if b.ref_cnt == 0)
        if need > self.pool.num_free - pinned_free:
            return 0
        self.pool.touch(hits)
        req.blocks = [*hits, *self.pool.allocate(need)]
        req.num_computed = hit_tokens
        req.num_hashed_blocks = len(hits)
        if req.first_scheduled is None:
            req.cached_tokens = hit_tokens
            self.stats.prefix_cache_queries += req.num_tokens
            self.stats.prefix_cache_hits += hit_tokens
            self.stats.prompt_tokens += len(req.prompt)
        return n

    def _preempt(self, req: EngineRequest) -> None:
        self.pool.free(req.blocks)
        req.blocks = []
        req.num_computed = 0
        req.num_hashed_blocks = 0
        req.preemptions += 1
        self.stats.preemptions += 1
        self.waiting.appendleft(req)

    def _cache_new_blocks(self, req: EngineRequest) -> None:
        bs = self.config.block_size
        full = min(req.num_computed, len(req.prompt)) // bs
        start = req.num_hashed_blocks
        if full <= start:
            return
        self.pool.cache_full_blocks(
            req.blocks[start:full],
            req.block_hashes[start:full],
            req.block_hashes[start - 1] if start > 0 else None,
            req.prompt[start * bs : full * bs],
            self._lora_ids.get(req.lora) if req.lora else None,
            req.lora,
        )
        req.num_hashed_blocks = full

    def _sample(self, req: EngineRequest, end: float, result: StepResult) -> None:
        token_id, text = self._sampler(req.rng)
        req.output_ids.append(token_id)
        self.stats.generation_tokens += 1
        if req.first_token_time is None:
            req.first_token_time = end
        reason = "length" if len(req.output_ids) >= req.max_tokens else None
        result.outputs.append(TokenOutput(req.request_id, token_id, text, len(req.output_ids) - 1, reason))
        if reason is not None:
            req.finish_reason = reason
            req.finish_time = end
            self.pool.free(req.blocks)
            req.blocks = []
            self._requests.pop(req.request_id, None)
            self.stats.requests_finished += 1
            result.finished.append(req)


def _unique(items: Iterable[str | None]) -> list[str]:
    seen: dict[str, None] = {}
    for item in items:
        if item is not None:
            seen[item] = None
    return list(seen)


def _add_adapter(batch_adapters: list[str], adapter: str | None) -> None:
    if adapter is not None and adapter not in batch_adapters:
        batch_adapters.append(adapter)
