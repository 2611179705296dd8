"""The simulator over real HTTP on 127.0.0.1: OpenAI API shapes, errors, probes and headers."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest


def sse_data(text: str) -> list[str]:
    return [line[len("data: ") :] for line in text.split("\n") if line.startswith("data: ")]


async def post(http, server, path, body, **kw):
    async with http.post(server.url + path, json=body, **kw) as resp:
        return resp.status, await resp.json(), resp.headers


async def test_completion_non_streaming(start_sim, http):
    sim = await start_sim(name="alpha")
    status, body, headers = await post(
        http,
        sim,
        "/v1/completions",
        {"model": sim.config.model, "prompt": "x" * 400, "max_tokens": 7},
        headers={"x-request-id": "req-123"},
    )
    assert status == 200
    assert headers["x-sim-server"] == "alpha"
    assert headers["x-inference-port"] == str(sim.port)
    assert headers["x-request-id"] == "req-123"
    assert body["object"] == "text_completion" and body["id"] == "cmpl-req-123"
    assert body["model"] == sim.config.model
    (choice,) = body["choices"]
    assert choice["finish_reason"] == "length" and len(choice["text"].split()) == 7
    assert body["usage"] == {
        "prompt_tokens": 100,
        "completion_tokens": 7,
        "total_tokens": 107,
        "prompt_tokens_details": {"cached_tokens": 0},
    }


async def test_model_defaults_to_the_base_model_and_max_tokens_to_the_default(start_sim, http):
    sim = await start_sim(default_max_tokens=3)
    status, body, _ = await post(http, sim, "/v1/completions", {"prompt": "hello there"})
    assert status == 200 and body["usage"]["completion_tokens"] == 3 and body["model"] == sim.config.model


async def test_completion_streaming_with_usage_chunk(start_sim, http):
    sim = await start_sim()
    req = {"prompt": "y" * 200, "max_tokens": 5, "stream": True, "stream_options": {"include_usage": True}}
    async with http.post(sim.url + "/v1/completions", json=req) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        assert resp.headers["x-sim-server"] == sim.name
        data = sse_data(await resp.text())
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    token_chunks, usage_chunk = chunks[:-1], chunks[-1]
    assert len(token_chunks) == 5
    assert all(c["object"] == "text_completion" and len(c["choices"]) == 1 for c in token_chunks)
    assert [c["choices"][0]["finish_reason"] for c in token_chunks] == [None] * 4 + ["length"]
    assert all(c["choices"][0]["text"].startswith(" ") for c in token_chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["prompt_tokens"] == 50
    assert usage_chunk["usage"]["completion_tokens"] == 5
    assert usage_chunk["usage"]["total_tokens"] == 55
    assert usage_chunk["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}


async def test_streaming_without_include_usage_has_no_usage_chunk(start_sim, http):
    sim = await start_sim()
    async with http.post(
        sim.url + "/v1/completions", json={"prompt": "abc", "max_tokens": 3, "stream": True}
    ) as r:
        data = sse_data(await r.text())
    assert data[-1] == "[DONE]" and len(data) == 4
    assert all(json.loads(d)["choices"] for d in data[:-1])


async def test_chat_streaming_shape(start_sim, http):
    sim = await start_sim()
    req = {
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        "max_tokens": 4,
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }
    async with http.post(sim.url + "/v1/chat/completions", json=req) as resp:
        data = sse_data(await resp.text())
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    contents = [c["choices"][0]["delta"]["content"] for c in chunks[1:-1]]
    assert len(contents) == 4 and all(contents)
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert [c["usage"]["completion_tokens"] for c in chunks[1:-1]] == [1, 2, 3, 4]  # continuous usage
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4


async def test_chat_non_streaming(start_sim, http):
    sim = await start_sim()
    req = {
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hello"}]}],
        "max_completion_tokens": 2,
    }
    status, body, _ = await post(http, sim, "/v1/chat/completions", req)
    assert status == 200 and body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    message = body["choices"][0]["message"]
    assert message["role"] == "assistant" and len(message["content"].split()) == 2
    assert body["usage"]["completion_tokens"] == 2 and body["usage"]["prompt_tokens"] > 0


async def test_batched_prompts_give_one_choice_each(start_sim, http):
    sim = await start_sim()
    status, body, _ = await post(
        http, sim, "/v1/completions", {"prompt": ["a" * 40, [300, 301, 302]], "max_tokens": 2}
    )
    assert status == 200
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert body["usage"]["prompt_tokens"] == 13 and body["usage"]["completion_tokens"] == 4


@pytest.mark.parametrize(
    ("path", "body", "status", "err_type", "needle"),
    [
        ("/v1/completions", {"max_tokens": 2}, 400, "BadRequestError", "prompt"),
        ("/v1/completions", {"prompt": "x", "model": "nope"}, 404, "NotFoundError",
         "The model `nope` does not exist."),
        ("/v1/completions", {"prompt": "x", "max_tokens": 0}, 400, "BadRequestError", "max_tokens"),
        ("/v1/completions", {"prompt": "x", "stream_options": {"include_usage": True}}, 400,
         "BadRequestError", "stream"),
        ("/v1/completions", {"prompt": "x" * 40000}, 400, "BadRequestError", "maximum context length"),
        ("/v1/completions", {"prompt": "x", "n": 2}, 400, "BadRequestError", "n=1"),
        ("/v1/completions", {"prompt": [5, 10**9]}, 400, "BadRequestError", "out of vocabulary"),
        ("/v1/completions", {"prompt": ""}, 400, "BadRequestError", "empty"),
        ("/v1/chat/completions", {"messages": []}, 400, "BadRequestError", "messages"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400,
         "BadRequestError", "text"),
    ],
)  # fmt: skip
async def test_bad_requests_get_vllm_errors(start_sim, http, path, body, status, err_type, needle):
    sim = await start_sim()
    got_status, got, headers = await post(http, sim, path, body)
    assert got_status == status
    assert got["object"] == "error" and got["type"] == err_type and got["code"] == status
    assert needle in got["message"]
    assert headers["x-sim-server"] == sim.name
    assert sim.stats()["requests_rejected"] == 1


async def test_invalid_json_and_unknown_routes(start_sim, http):
    sim = await start_sim()
    async with http.post(sim.url + "/v1/completions", data=b"{nope") as resp:
        assert resp.status == 400
        assert (await resp.json())["type"] == "BadRequestError"
    async with http.get(sim.url + "/v1/nothing") as resp:
        assert resp.status == 404 and resp.headers["x-sim-server"] == sim.name
    async with http.get(sim.url + "/v1/completions") as resp:
        assert resp.status == 405


async def test_models_lists_base_and_adapters(start_sim, http):
    sim = await start_sim(model="base-m", lora_adapters=("ad1", "ad2"), max_loras=2)
    async with http.get(sim.url + "/v1/models") as resp:
        body = await resp.json()
    ids = [(m["id"], m["parent"]) for m in body["data"]]
    assert ids == [("base-m", None), ("ad1", "base-m"), ("ad2", "base-m")]
    status, got, _ = await post(
        http, sim, "/v1/completions", {"model": "ad2", "prompt": "q", "max_tokens": 1}
    )
    assert status == 200 and got["model"] == "ad2"


async def test_render_and_tokenize_agree(start_sim, http):
    sim = await start_sim()
    text = "The quick brown fox jumps over the lazy dog"
    status, rendered, _ = await post(http, sim, "/v1/completions/render", {"prompt": [text, "other"]})
    assert status == 200 and isinstance(rendered, list) and len(rendered) == 2
    _, tok, _ = await post(http, sim, "/tokenize", {"prompt": text})
    assert rendered[0]["token_ids"] == tok["tokens"] and tok["count"] == len(text) // 4 + 1
    msgs = {"messages": [{"role": "user", "content": text}]}
    _, chat, _ = await post(http, sim, "/v1/chat/completions/render", msgs)
    _, usage, _ = await post(http, sim, "/v1/chat/completions", {**msgs, "max_tokens": 1})
    assert len(chat["token_ids"]) == usage["usage"]["prompt_tokens"]


async def test_health_version_and_sglang_probes(start_sim, http):
    sim = await start_sim(engine="sglang", kv_blocks=100, block_size=8, max_num_seqs=1)
    for path in ("/health", "/health_generate", "/ping", "/version"):
        async with http.get(sim.url + path) as resp:
            assert resp.status == 200, path
    async with http.get(sim.url + "/get_model_info") as resp:
        info = await resp.json()
    assert info["model_path"] == sim.config.model and info["is_generation"] is True
    async with http.get(sim.url + "/get_server_info") as resp:
        server_info = await resp.json()
    assert server_info["page_size"] == 8 and server_info["max_total_num_tokens"] == 800
    assert server_info["kv_block_size"] == 8 and server_info["instance_id"] == sim.name
    async with http.get(sim.url + "/kv_event_sources") as resp:
        assert await resp.json() == {}
    # with one running and one waiting request, /get_load says so
    tasks = [
        asyncio.create_task(post(http, sim, "/v1/completions", {"prompt": "z" * 100, "max_tokens": 200}))
        for _ in range(2)
    ]
    load = await poll_json(http, sim.url + "/get_load", lambda b: b[0]["num_reqs"] == 2)
    assert load[0]["num_waiting_reqs"] == 1 and load[0]["num_tokens"] > 0
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def poll_json(http, url, predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while True:
        async with http.get(url) as resp:
            body = await resp.json()
        if predicate(body):
            return body
        assert time.monotonic() < deadline, f"timed out polling {url}: last {body}"
        await asyncio.sleep(0.01)


async def test_time_scale_runs_faster_than_real_time(start_sim, http):
    # simulated: prefill 7 + 0.04*2000 + 0.1 = 87.1 ms, then 99 decode steps of 7.1 ms: ~790 ms in total
    simulated = (7 + 0.04 * 2000 + 0.1 + 99 * 7.1) / 1000
    fast = await start_sim(time_scale=0.01)
    slow = await start_sim(time_scale=0.2)
    req = {"prompt": "w" * 8000, "max_tokens": 100}
    timings = []
    for sim in (fast, slow):
        t0 = time.monotonic()
        status, _, _ = await post(http, sim, "/v1/completions", req)
        timings.append(time.monotonic() - t0)
        assert status == 200
        assert sim.engine.stats.busy_time == pytest.approx(simulated * sim.config.time_scale)
    # much faster than real time (the scaled time is ~8 ms; the bound leaves room for a loaded CI machine)
    assert timings[0] < simulated * 0.5
    assert timings[1] >= simulated * 0.2 * 0.9  # and the engine really waits out the scaled step times


async def test_client_disconnect_aborts_the_request(start_sim, http):
    sim = await start_sim(time_scale=0.5)
    req = {"prompt": "v" * 100, "max_tokens": 2000, "stream": True}
    async with http.post(sim.url + "/v1/completions", json=req) as resp:
        await resp.content.readline()
        assert sim.engine.has_work
    # the connection is closed by leaving the block
    deadline = time.monotonic() + 5
    while sim.engine.has_work:
        assert time.monotonic() < deadline, "request still running after the client left"
        await asyncio.sleep(0.01)
    assert sim.engine.stats.requests_aborted == 1
    assert sim.engine.pool.num_free == sim.engine.pool.num_blocks


async def test_every_admin_and_probe_response_names_the_server(start_sim, http):
    sim = await start_sim(name="named")
    for method, path in (
        ("GET", "/metrics"),
        ("GET", "/admin/stats"),
        ("GET", "/get_load"),
        ("POST", "/admin/reset-cache"),
    ):
        async with http.request(method, sim.url + path, headers={"x-request-id": "abc"}) as resp:
            assert resp.status == 200, path
            assert resp.headers["x-sim-server"] == "named" and resp.headers["x-request-id"] == "abc"


async def test_bad_admin_input(start_sim, http):
    sim = await start_sim()
    for path, body in (
        ("/admin/metrics-override", {"queue": 3}),
        ("/admin/metrics-override", {"kv": 1.5}),
        ("/admin/metrics-override", {"waiting": -1}),
        ("/admin/fault", {"hang": ["everything"]}),
        ("/admin/fault", {"fail": {"requests": 200}}),
    ):
        status, got, _ = await post(http, sim, path, body)
        assert status == 400 and got["object"] == "error", (path, body)


async def test_server_stop_ends_hung_and_running_requests(start_sim, http):
    sim = await start_sim(time_scale=1.0)
    task = asyncio.create_task(post(http, sim, "/v1/completions", {"prompt": "p", "max_tokens": 5000}))
    deadline = time.monotonic() + 5
    while not sim.engine.running:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    t0 = time.monotonic()
    await sim.stop()
    assert time.monotonic() - t0 < 3
    status, body, _ = await asyncio.wait_for(task, 3)
    assert status == 503 and body["type"] == "ServiceUnavailableError"


async def test_bad_kv_events_topic_fails_start(start_sim):
    with pytest.raises(ValueError, match="kv-events-topic"):
        await start_sim(kv_events_endpoint="tcp://127.0.0.1:0", kv_events_topic="{nope}")


async def test_port_in_use_is_an_error(start_sim):
    first = await start_sim()
    with pytest.raises(OSError):
        await start_sim(port=first.port)


async def test_sim_responses_time_out_cleanly_for_clients(start_sim):
    # a hung /metrics must not hang the client forever: it times out while /health still answers
    sim = await start_sim()
    sim.set_faults(hang={"metrics"})
    timeout = aiohttp.ClientTimeout(total=0.3)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        with pytest.raises(asyncio.TimeoutError):
            async with session.get(sim.url + "/metrics") as resp:
                await resp.read()
        async with session.get(sim.url + "/health") as resp:
            assert resp.status == 200


async def test_stop_releases_hung_requests_with_503(start_sim, http):
    sim = await start_sim()
    sim.set_faults(hang={"requests"})
    task = asyncio.create_task(post(http, sim, "/v1/completions", {"prompt": "p", "max_tokens": 2}))
    deadline = time.monotonic() + 5
    while sim.counters.requests_received == 0:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    t0 = time.monotonic()
    await sim.stop()
    assert time.monotonic() - t0 < 0.9  # ended by the server, not by the runner's shutdown timeout
    status, body, _ = await asyncio.wait_for(task, 3)
    assert status == 503 and "shutting down" in body["message"]
