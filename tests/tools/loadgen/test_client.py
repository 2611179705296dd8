"""The streaming client against a real simulator: TTFT, latency, usage, backend and errors."""

from __future__ import annotations

import random
import socket

import pytest

from epp.tools.loadgen.client import LoadClient, build_body
from epp.tools.loadgen.text import synthetic_text
from epp.tools.loadgen.workloads import Session, Turn


def _session(system_tokens: int, question: str = "what next?", max_tokens: int = 6, seed: int = 1) -> Session:
    system = synthetic_text(random.Random(seed), system_tokens)
    return Session(id=f"s{seed}", group="g", turns=(Turn(question, max_tokens),), system=system)


@pytest.mark.parametrize("api", ["completions", "chat"])
async def test_ttft_is_the_first_generated_text_and_follows_the_prefill(start_sim, api) -> None:
    # Real time: a 4000-token uncached prompt needs 7 + 4000 x 0.04 = 167 ms of prefill before the first
    # token; once cached, the same prompt's first token comes after one ~7 ms step. Response headers
    # are sent long before either, so a client that timed the headers would see no difference.
    sim = await start_sim(time_scale=1.0, name="sim-a")
    session = _session(4000)
    async with LoadClient(sim.url, api=api, model="m") as client:
        cold, text = await client.send(session, 0)
        warm, _ = await client.send(session, 0)
    assert cold.ok and warm.ok, (cold.error, warm.error)
    assert cold.status == 200 and cold.backend == "sim-a"
    assert text  # the generated text is returned for multi-turn replay
    assert cold.ttft_s is not None and warm.ttft_s is not None
    assert cold.ttft_s >= 0.160
    assert warm.ttft_s < 0.120  # one step (~7 ms) and scheduling noise, never the 160 ms prefill
    # 6 tokens: the first after the prefill, then 5 decode steps. Their wall-clock spacing is not asserted:
    # on a loaded machine the simulator's driver catches up late steps back to back.
    assert cold.e2e_s > cold.ttft_s
    assert cold.output_tokens == warm.output_tokens == 6
    assert cold.prompt_tokens == warm.prompt_tokens >= 4000
    assert cold.cached_tokens == 0
    assert warm.cached_tokens >= 3984
    assert cold.start_s == 0.0  # no run start given: relative to itself


async def test_http_errors_are_recorded_not_raised(start_sim) -> None:
    sim = await start_sim(time_scale=0.05, name="sim-b")
    async with LoadClient(sim.url, model="no-such-model") as client:
        result, text = await client.send(_session(10), 0)
    assert not result.ok and result.status == 404
    assert result.error is not None and result.error.startswith("HTTP 404:")
    assert "does not exist" in result.error
    assert result.backend == "sim-b" and result.ttft_s is None and text == ""


async def test_unreachable_server_and_timeout_are_errors(start_sim) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but not listening: connections are refused
        async with LoadClient(f"http://127.0.0.1:{port}", model="m") as client:
            refused, _ = await client.send(_session(10), 0)
    assert not refused.ok and refused.status == 0
    assert refused.error is not None and "ClientConnectorError" in refused.error

    sim = await start_sim(time_scale=0.05)
    sim.set_faults(hang={"requests"})
    async with LoadClient(sim.url, model="m", timeout_s=0.3) as client:
        hung, _ = await client.send(_session(10), 0)
    assert hung.error == "timeout after 0.3s"
    assert 0.3 <= hung.e2e_s < 2.0


async def test_the_served_request_is_what_the_session_says(start_sim) -> None:
    sim = await start_sim(time_scale=0.05)
    session = Session(id="abc", group="g", turns=(Turn("hello there", 3),), system="be brief", model="m")
    async with LoadClient(sim.url, headers={"x-test": "1"}) as client:
        result, _ = await client.send(session, 0)
    assert result.ok and result.session_id == "abc" and result.turn == 0 and result.group == "g"
    # "be brief\nhello there" is 20 characters: 5 tokens of 4 characters
    assert result.prompt_tokens == 5


def test_build_body_replays_history_for_both_apis() -> None:
    session = Session(id="s", group="g", turns=(Turn("q1", 5), Turn("q2", 7)), system="sys")
    history = [("q1", "a1")]
    chat = build_body("chat", session, session.turns[1], history, "m")
    assert chat["messages"] == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"},
    ]
    assert chat["max_tokens"] == 7 and chat["model"] == "m"
    assert chat["stream"] is True and chat["stream_options"] == {"include_usage": True}
    completion = build_body("completions", session, session.turns[1], history, None)
    assert completion["prompt"] == "sys\nq1\na1\nq2"
    assert "model" not in completion
