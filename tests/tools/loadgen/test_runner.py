"""Open- and closed-loop runs against real simulators: pacing, concurrency, deadlines, multi-turn."""

from __future__ import annotations

import asyncio

from epp.tools.loadgen.client import LoadClient, RequestResult
from epp.tools.loadgen.runner import poisson_arrivals, run_closed_loop, run_open_loop
from epp.tools.loadgen.workloads import Session, Turn, Workload, shared_prefix


def _max_in_flight(results: list[RequestResult]) -> int:
    events = sorted([(r.start_s, 1) for r in results] + [(r.start_s + r.e2e_s, -1) for r in results])
    peak = level = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak


async def test_open_loop_sends_every_request_at_its_poisson_arrival_time(start_sim) -> None:
    sim = await start_sim(time_scale=0.05)
    workload = shared_prefix(groups=3, prompts_per_group=10, system_prompt_len=50, question_len=5, seed=4)
    seen: list[RequestResult] = []
    async with LoadClient(sim.url, model="m") as client:
        run = await run_open_loop(client, workload, rate=60.0, seed=9, on_result=seen.append)
    assert run.unfinished == 0 and len(run.results) == 30 and seen == run.results
    assert all(r.ok for r in run.results), [r.error for r in run.results if not r.ok]
    arrivals = dict(zip((s.id for s in workload.sessions), poisson_arrivals(30, 60.0, 9), strict=True))
    lateness = sorted(r.start_s - arrivals[r.session_id] for r in run.results)
    assert lateness[0] >= -0.002  # never early ...
    assert lateness[len(lateness) // 2] < 0.05  # ... and late only by event-loop scheduling
    assert run.duration_s >= max(arrivals.values())
    assert sim.stats()["requests_finished"] == 30


async def test_open_loop_concurrency_cap_and_closed_loop_workers(start_sim) -> None:
    sim = await start_sim(time_scale=0.5)  # each request takes tens of milliseconds
    workload = shared_prefix(
        groups=2, prompts_per_group=6, system_prompt_len=20, question_len=5, output_len=8
    )
    async with LoadClient(sim.url, model="m") as client:
        capped = await run_open_loop(client, workload, rate=1000.0, max_concurrency=2)
        closed = await run_closed_loop(client, workload, concurrency=3)
    assert len(capped.results) == len(closed.results) == 12
    assert _max_in_flight(capped.results) <= 2
    assert _max_in_flight(closed.results) == 3
    assert closed.concurrency == 3 and capped.rate == 1000.0


async def test_a_deadline_cancels_what_is_left_and_counts_it_unfinished(start_sim) -> None:
    sim = await start_sim(time_scale=0.05)
    sim.set_faults(hang={"requests"})
    workload = shared_prefix(groups=1, prompts_per_group=5, system_prompt_len=10, question_len=2)
    loop = asyncio.get_running_loop()
    async with LoadClient(sim.url, model="m") as client:
        started = loop.time()
        run = await run_open_loop(client, workload, rate=100.0, duration_limit_s=0.5)
        open_took = loop.time() - started
        closed = await run_closed_loop(client, workload, concurrency=2, duration_limit_s=0.3)
    assert run.results == [] and run.unfinished == 5
    assert 0.5 <= open_took < 3.0
    assert closed.results == [] and closed.unfinished == 5


async def test_multi_turn_sessions_replay_their_history(start_sim) -> None:
    sim = await start_sim(time_scale=0.05)
    turns = (Turn("first question " * 8, 8), Turn("second " * 8, 8, think_time_s=0.05), Turn("third", 4))
    workload = Workload("chat", (Session(id="c1", group="c", turns=turns, system="you are helpful " * 20),))
    for api in ("completions", "chat"):
        workload = Workload("chat", workload.sessions, api=api)  # type: ignore[arg-type]
        async with LoadClient(sim.url, api=api, model="m") as client:
            run = await run_closed_loop(client, workload, concurrency=1)
        r1, r2, r3 = sorted(run.results, key=lambda r: r.turn)
        assert [r.turn for r in (r1, r2, r3)] == [0, 1, 2]
        # each turn carries the previous prompt and answer, so it is longer and its start is cached
        assert r1.prompt_tokens < r2.prompt_tokens < r3.prompt_tokens
        assert r2.prompt_tokens >= r1.prompt_tokens + 8 + 8
        assert r2.cached_tokens >= 16 * ((r1.prompt_tokens - 16) // 16)
        assert r2.start_s >= r1.start_s + r1.e2e_s + 0.05
        sim.reset_cache()


async def test_a_failed_turn_ends_its_session(start_sim) -> None:
    sim = await start_sim(time_scale=0.05)
    sim.set_faults(fail={"requests": 503})
    turns = (Turn("a", 2), Turn("b", 2))
    workload = Workload("w", (Session(id="s", group="g", turns=turns),))
    async with LoadClient(sim.url, model="m") as client:
        run = await run_closed_loop(client, workload, concurrency=1)
    assert len(run.results) == 1 and run.results[0].status == 503 and run.unfinished == 1
