"""The oracle hit ratio tokenizes like the simulator: on one server with room for everything, they agree."""

from __future__ import annotations

from epp.tools.bench.oracle import OracleCache, RecordingClient, oracle_hit_ratio, workload_bodies
from epp.tools.loadgen.runner import run_closed_loop
from epp.tools.loadgen.workloads import multiturn, shared_prefix, zipf
from epp.tools.sim import SimConfig, SimServer


def test_oracle_counts_the_longest_seen_prefix_in_whole_blocks_but_never_the_last_token() -> None:
    cache = OracleCache()
    body = {"prompt": "a" * 4 * 64, "max_tokens": 1}  # 64 tokens = 4 blocks
    assert cache.add("completions", body) == 0
    assert cache.add("completions", body) == 48  # all but the block holding the last token
    longer = {"prompt": "a" * 4 * 64 + "b" * 4 * 20, "max_tokens": 1}
    assert cache.add("completions", longer) == 64
    assert cache.queries == 64 + 64 + 84 and cache.hits == 112
    assert cache.hit_ratio == 112 / 212


async def test_oracle_equals_the_simulator_counters_for_one_big_server() -> None:
    sim = SimServer(SimConfig(time_scale=0.01, kv_blocks=20000))
    await sim.start()
    try:
        w = zipf(groups=6, requests=24, system_prompt_len=200, question_len=20, output_len=2, seed=4)
        async with RecordingClient(sim.url, model=sim.config.model) as client:
            run = await run_closed_loop(client, w, concurrency=1)
        assert all(r.ok for r in run.results)
        stats = sim.stats()
        expected = oracle_hit_ratio("completions", workload_bodies(w, sim.config.model))
        assert stats["prefix_cache_hits"] / stats["prefix_cache_queries"] == expected
        assert expected == oracle_hit_ratio("completions", client.bodies())
        assert 0.5 < expected < 1.0

        sim.reset_cache()
        sim.reset_stats()
        chat = multiturn(sessions=3, turns=3, groups=2, system_prompt_len=100, think_time_s=0, seed=1)
        async with RecordingClient(sim.url, api="chat", model=sim.config.model) as client:
            run = await run_closed_loop(client, chat, concurrency=1)
        assert all(r.ok for r in run.results) and len(client.sent) == 9
        stats = sim.stats()
        got = oracle_hit_ratio("chat", client.bodies())
        assert stats["prefix_cache_hits"] / stats["prefix_cache_queries"] == got
        assert got > 0.5  # later turns resend the history
    finally:
        await sim.stop()


def test_single_turn_bodies_only() -> None:
    w = shared_prefix(groups=1, prompts_per_group=2, system_prompt_len=10)
    assert len(list(workload_bodies(w, "m"))) == 2
    try:
        list(workload_bodies(multiturn(sessions=1), "m"))
    except ValueError as exc:
        assert "single-turn" in str(exc)
    else:
        raise AssertionError("multi-turn bodies need a recorded run")


def test_the_bench_caches_oracles_per_workload_not_per_rate(tmp_path) -> None:
    # a saturation probe and a sweep run share a rate but not a duration: their oracles differ
    from epp.tools.bench.harness import Children
    from epp.tools.bench.quality import FULL, Bench, QualityOptions, make_workload

    bench = Bench(QualityOptions(sizing=FULL, routers=("envoy-rr",)), print, Children(), tmp_path)
    shape = FULL.shapes["shared_prefix"]
    short, _ = make_workload("shared_prefix", 30.0, 6.0, shape, seed=0)
    long, _ = make_workload("shared_prefix", 30.0, 10.0, shape, seed=0)
    client = RecordingClient("http://127.0.0.1:9")
    a, b = bench._oracle(short, 30.0, client), bench._oracle(long, 30.0, client)
    assert a == oracle_hit_ratio("completions", workload_bodies(short, bench.model))
    assert b == oracle_hit_ratio("completions", workload_bodies(long, bench.model))
    assert b > a  # more requests per group: more reuse
