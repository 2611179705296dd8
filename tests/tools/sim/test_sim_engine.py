"""The simulated engine (scheduler, prefix cache, LoRA slots) driven step by step with a fake clock."""

from __future__ import annotations

import pytest

from epp.tools.sim.config import SimConfig
from epp.tools.sim.engine import Engine, EngineRequest
from epp.tools.sim.kvcache import chain_block_hashes


def cfg(**kw) -> SimConfig:
    base = {"kv_blocks": 256, "block_size": 16, "step_base_ms": 5.0, "prefill_ms_per_token": 0.05}
    base.update(kw)
    return SimConfig(**base)


def prompt(seed: int, n: int) -> list[int]:
    return [1000 + (seed * 7919 + i * 31) % 50000 for i in range(n)]


class Clock:
    """Drives an engine: `now` advances by each step's duration."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.now = 0.0

    def step(self):
        result = self.engine.step(self.now)
        self.now = result.end
        return result

    def run(self, max_steps: int = 100_000) -> None:
        for _ in range(max_steps):
            if not self.engine.has_work:
                return
            self.step()
        raise AssertionError("engine did not drain")

    def run_until(self, req: EngineRequest, max_steps: int = 100_000) -> None:
        for _ in range(max_steps):
            if req.finished:
                return
            self.step()
        raise AssertionError("request did not finish")


def ttft(req: EngineRequest) -> float:
    assert req.first_token_time is not None
    return req.first_token_time - req.arrival


def test_a_request_gets_exactly_max_tokens_and_step_times_follow_the_formula():
    engine = Engine(cfg())
    clock = Clock(engine)
    req = engine.add_request("r", prompt(1, 100), 5, None, 0.0)
    first = clock.step()
    assert first.prefill_tokens == 100 and first.decode_seqs == 0 and len(first.outputs) == 1
    assert first.duration == pytest.approx((5.0 + 0.05 * 100 + 0.1 * 1) / 1000)
    second = clock.step()
    assert second.prefill_tokens == 0 and second.decode_seqs == 1
    assert second.duration == pytest.approx((5.0 + 0.1) / 1000)
    clock.run()
    assert req.finish_reason == "length" and len(req.output_ids) == 5
    assert engine.pool.num_free == engine.pool.num_blocks  # every block returned
    assert engine.stats.generation_tokens == 5 and engine.stats.requests_finished == 1


def test_time_scale_scales_every_step():
    fast, slow = Engine(cfg(time_scale=0.05)), Engine(cfg())
    for e in (fast, slow):
        e.add_request("r", prompt(1, 300), 3, None, 0.0)
    a, b = fast.step(0.0), slow.step(0.0)
    assert a.duration == pytest.approx(b.duration * 0.05)


def test_queue_grows_when_arrivals_exceed_max_num_seqs():
    engine = Engine(cfg(max_num_seqs=4, kv_blocks=1024))
    for i in range(20):
        engine.add_request(f"r{i}", prompt(i, 64), 8, None, 0.0)
    assert len(engine.waiting) == 20
    engine.step(0.0)
    assert len(engine.running) == 4
    assert len(engine.waiting) == 16
    # later arrivals keep piling up while the batch is full
    for i in range(20, 30):
        engine.add_request(f"r{i}", prompt(i, 64), 8, None, 0.0)
    engine.step(1.0)
    assert len(engine.running) == 4 and len(engine.waiting) == 26


def test_queueing_delays_later_requests():
    engine = Engine(cfg(max_num_seqs=2, kv_blocks=1024))
    reqs = [engine.add_request(f"r{i}", prompt(i, 64), 20, None, 0.0) for i in range(6)]
    Clock(engine).run()
    waits = [r.first_scheduled - r.arrival for r in reqs]
    assert waits[0] == waits[1] == 0.0
    assert waits[2] > 0 and waits[4] > waits[2]
    assert ttft(reqs[5]) > ttft(reqs[0])


def test_repeated_prompt_hits_the_prefix_cache_and_gets_a_lower_ttft():
    engine = Engine(cfg())
    clock = Clock(engine)
    p = prompt(3, 1000)
    cold = engine.add_request("cold", p, 4, None, clock.now)
    clock.run()
    warm = engine.add_request("warm", p, 4, None, clock.now)
    clock.run()
    assert cold.cached_tokens == 0
    # all full blocks but the one holding the last token (vLLM recomputes at least one token)
    assert warm.cached_tokens == (1000 - 1) // 16 * 16 == 992
    assert engine.stats.prefix_cache_queries == 2000
    assert engine.stats.prefix_cache_hits == 992
    assert ttft(warm) < ttft(cold) / 3


def test_shared_prefix_hits_only_the_common_blocks():
    engine = Engine(cfg())
    clock = Clock(engine)
    system = prompt(5, 320)  # 20 full blocks
    engine.add_request("a", [*system, *prompt(6, 50)], 2, None, 0.0)
    clock.run()
    b = engine.add_request("b", [*system, *prompt(7, 50)], 2, None, clock.now)
    clock.run()
    assert b.cached_tokens == 320


def test_lora_adapters_do_not_share_prefix_blocks():
    engine = Engine(cfg(lora_adapters=("a1", "a2"), max_loras=2))
    clock = Clock(engine)
    p = prompt(8, 200)
    engine.add_request("x", p, 2, "a1", 0.0)
    clock.run()
    other = engine.add_request("y", p, 2, "a2", clock.now)
    same = engine.add_request("z", p, 2, "a1", clock.now)
    clock.run()
    assert other.cached_tokens == 0
    assert same.cached_tokens == 192


def test_chunked_prefill_respects_the_token_budget():
    engine = Engine(cfg(max_num_batched_tokens=256, kv_blocks=1024))
    req = engine.add_request("long", prompt(9, 1000), 2, None, 0.0)
    steps = []
    clock = Clock(engine)
    while req.first_token_time is None:
        steps.append(clock.step().prefill_tokens)
    assert steps == [256, 256, 256, 232]


def test_decode_and_prefill_share_a_step():
    engine = Engine(cfg(kv_blocks=1024))
    clock = Clock(engine)
    engine.add_request("a", prompt(1, 64), 10, None, 0.0)
    clock.step()
    engine.add_request("b", prompt(2, 128), 10, None, clock.now)
    mixed = clock.step()
    assert mixed.decode_seqs == 1 and mixed.prefill_tokens == 128 and mixed.scheduled_seqs == 2


def test_full_cache_evicts_least_recently_used_blocks():
    engine = Engine(cfg(kv_blocks=40))  # 640 tokens
    clock = Clock(engine)
    a, b, c = prompt(1, 320), prompt(2, 320), prompt(3, 320)
    for name, p in (("a", a), ("b", b)):
        engine.add_request(name, p, 1, None, clock.now)
        clock.run()
    assert engine.pool.evictions == 0
    assert engine.pool.num_cached == 40 and engine.pool.usage == 0.0  # cached but free
    engine.add_request("c", c, 1, None, clock.now)  # needs 20 blocks: a's (least recent) go
    clock.run()
    assert engine.pool.evictions == 20
    assert not any(engine.pool.is_cached(h) for h in chain_block_hashes(a, 16))
    assert all(engine.pool.is_cached(h) for h in chain_block_hashes(b, 16))
    b_again = engine.add_request("b2", b, 1, None, clock.now)
    clock.run()
    assert b_again.cached_tokens == 304


def test_blocks_held_by_running_requests_are_never_evicted():
    engine = Engine(cfg(kv_blocks=64, max_num_seqs=8))
    clock = Clock(engine)
    holder = engine.add_request("holder", prompt(1, 480), 50, None, 0.0)
    clock.step()
    held = list(holder.blocks)
    hashes_before = [b.block_hash for b in held]
    for i in range(5):
        engine.add_request(f"n{i}", prompt(10 + i, 200), 2, None, clock.now)
    for _ in range(30):
        clock.step()
    assert not holder.finished
    assert [b.block_hash for b in held] == hashes_before
    assert all(b.ref_cnt >= 1 for b in held)


def test_admission_waits_for_free_blocks_and_preemption_recomputes():
    # 24 blocks: two 160-token prompts fit (10 + 10 blocks), decode growth forces a preemption
    engine = Engine(cfg(kv_blocks=24, max_model_len=384))
    clock = Clock(engine)
    r1 = engine.add_request("r1", prompt(1, 160), 60, None, 0.0)
    r2 = engine.add_request("r2", prompt(2, 160), 60, None, 0.0)
    r3 = engine.add_request("r3", prompt(3, 160), 60, None, 0.0)
    clock.step()
    assert r3 in engine.waiting  # no blocks left for a third prompt
    clock.run()
    assert all(r.finish_reason == "length" for r in (r1, r2, r3))
    assert engine.stats.preemptions >= 1
    assert sum(r.preemptions for r in (r1, r2, r3)) == engine.stats.preemptions
    assert all(len(r.output_ids) == 60 for r in (r1, r2, r3))
    assert engine.pool.num_free == 24


def test_lora_slots_limit_concurrent_adapters():
    engine = Engine(cfg(lora_adapters=("a", "b", "c"), max_loras=2, kv_blocks=1024, lora_load_ms=30.0))
    clock = Clock(engine)
    ra = engine.add_request("ra", prompt(1, 64), 10, "a", 0.0)
    rb = engine.add_request("rb", prompt(2, 64), 10, "b", 0.0)
    rc = engine.add_request("rc", prompt(3, 64), 10, "c", 0.0)
    base = engine.add_request("base", prompt(4, 64), 10, None, 0.0)
    first = clock.step()
    assert {r.request_id for r in engine.running} == {"ra", "rb", "base"}
    assert list(engine.waiting) == [rc]  # c waits: both slots are busy with running adapters
    assert first.lora_loads == 2
    assert first.duration >= 60.0 / 1000
    assert engine.running_adapters() == ["a", "b"] and engine.waiting_adapters() == ["c"]
    while not (ra.finished and rb.finished):
        clock.step()
        assert len(engine.running_adapters()) <= 2
    clock.run()
    assert rc.finished and base.finished
    assert engine.lora.loads == 3 and engine.lora.evictions == 1
    assert rc.first_scheduled >= min(ra.finish_time, rb.finish_time)


def test_a_resident_adapter_loads_once():
    engine = Engine(cfg(lora_adapters=("a",), max_loras=1, lora_load_ms=30.0))
    clock = Clock(engine)
    r1 = engine.add_request("1", prompt(1, 32), 2, "a", 0.0)
    clock.run()
    r2 = engine.add_request("2", prompt(2, 32), 2, "a", clock.now)
    clock.run()
    assert engine.lora.loads == 1
    assert ttft(r2) < ttft(r1) - 0.02


def test_abort_frees_blocks_and_removes_the_request():
    engine = Engine(cfg())
    clock = Clock(engine)
    engine.add_request("a", prompt(1, 300), 50, None, 0.0)
    waiting = engine.add_request("w", prompt(2, 30), 5, None, 0.0)
    clock.step()
    assert engine.pool.num_free < engine.pool.num_blocks
    assert engine.abort("a") and engine.abort("w")
    assert not engine.abort("a")
    assert engine.pool.num_free == engine.pool.num_blocks
    assert not engine.has_work and waiting.finish_reason == "abort"
    assert engine.stats.requests_aborted == 2


def test_bad_requests_are_refused():
    engine = Engine(cfg(lora_adapters=("a",)))
    with pytest.raises(ValueError, match="empty"):
        engine.add_request("x", [], 4, None, 0.0)
    with pytest.raises(ValueError, match="context length"):
        engine.add_request("x", prompt(1, 4090), 10, None, 0.0)
    with pytest.raises(ValueError, match="adapter"):
        engine.add_request("x", prompt(1, 10), 4, "zzz", 0.0)
    engine.add_request("x", prompt(1, 10), 4, None, 0.0)
    with pytest.raises(ValueError, match="duplicate"):
        engine.add_request("x", prompt(1, 10), 4, None, 0.0)


def test_same_seed_and_arrivals_give_the_same_outputs_and_timing():
    def run(seed: int):
        engine = Engine(cfg(seed=seed, max_num_seqs=3))
        clock = Clock(engine)
        reqs = [engine.add_request(f"r{i}", prompt(i % 3, 100 + i), 6, None, 0.0) for i in range(8)]
        clock.run()
        return [(r.output_ids, r.first_token_time, r.cached_tokens) for r in reqs]

    assert run(7) == run(7)
    assert [o for o, _, _ in run(7)] != [o for o, _, _ in run(8)]


def test_reset_prefix_cache_forgets_cached_blocks():
    engine = Engine(cfg())
    clock = Clock(engine)
    p = prompt(1, 200)
    engine.add_request("a", p, 1, None, 0.0)
    clock.run()
    assert engine.reset_prefix_cache() == 12
    again = engine.add_request("b", p, 1, None, clock.now)
    clock.run()
    assert again.cached_tokens == 0


def test_a_step_never_starts_before_the_requests_it_admits_arrived():
    # the driver may pass a lagging start time while catching up; arrivals keep causality
    engine = Engine(cfg())
    engine.add_request("early", prompt(1, 64), 3, None, 0.0)
    engine.step(0.0)
    late = engine.add_request("late", prompt(2, 64), 3, None, 5.0)
    result = engine.step(0.01)  # a start before "late" arrived
    assert result.start == 5.0 and late.first_scheduled == 5.0
    assert ttft(late) == pytest.approx(result.duration)
