"""/metrics (vLLM and SGLang names, parsed with prometheus_client), load, prefix hits, LoRA, admin hooks."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

VLLM_NAMES = {
    "vllm:num_requests_waiting",
    "vllm:num_requests_running",
    "vllm:kv_cache_usage_perc",
    "vllm:gpu_cache_usage_perc",
    "vllm:cache_config_info",
    "vllm:prefix_cache_queries_total",
    "vllm:prefix_cache_hits_total",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "vllm:time_to_first_token_seconds_bucket",
    "vllm:e2e_request_latency_seconds_bucket",
    "vllm:e2e_request_latency_seconds_count",
}
SGLANG_NAMES = {
    "sglang:num_queue_reqs",
    "sglang:num_running_reqs",
    "sglang:token_usage",
    "sglang:cache_config_info",
    "sglang:prompt_tokens_total",
    "sglang:generation_tokens_total",
    "sglang:time_to_first_token_seconds_bucket",
    "sglang:e2e_request_latency_seconds_bucket",
}


async def scrape(http, sim) -> dict[str, list]:
    async with http.get(sim.url + "/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append(s)
    return samples


def value(samples, name: str) -> float:
    (s,) = samples[name]
    return s.value


async def complete(http, sim, prompt: str, max_tokens: int = 4, model: str | None = None) -> dict:
    body = {"prompt": prompt, "max_tokens": max_tokens, **({"model": model} if model else {})}
    async with http.post(sim.url + "/v1/completions", json=body) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def test_vllm_metrics_parse_and_carry_vllm_names(start_sim, http):
    sim = await start_sim(model="m1", kv_blocks=512, block_size=32, lora_adapters=("sql",), max_loras=3)
    await complete(http, sim, "a" * 400)
    samples = await scrape(http, sim)
    assert set(samples) >= VLLM_NAMES
    assert not any(n.startswith("sglang:") for n in samples)
    for name in ("vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc"):
        assert samples[name][0].labels["model_name"] == "m1"
    (info,) = samples["vllm:cache_config_info"]
    assert info.labels["block_size"] == "32" and info.labels["num_gpu_blocks"] == "512"
    assert value(samples, "vllm:prefix_cache_queries_total") == 100
    assert value(samples, "vllm:prompt_tokens_total") == 100
    assert value(samples, "vllm:generation_tokens_total") == 4
    assert value(samples, "vllm:e2e_request_latency_seconds_count") == 1
    lora = samples["vllm:lora_requests_info"]
    assert {s.labels["max_lora"] for s in lora} == {"3"}
    newest = max(lora, key=lambda s: s.value)
    assert newest.value == pytest.approx(time.time(), abs=60)
    assert newest.labels["running_lora_adapters"] == "" and newest.labels["waiting_lora_adapters"] == ""


async def test_sglang_metrics_names(start_sim, http):
    sim = await start_sim(engine="sglang", kv_blocks=300, block_size=4)
    await complete(http, sim, "b" * 100)
    samples = await scrape(http, sim)
    assert set(samples) >= SGLANG_NAMES
    assert not any(n.startswith("vllm:") for n in samples)
    (info,) = samples["sglang:cache_config_info"]
    assert info.labels["page_size"] == "4" and info.labels["num_pages"] == "300"
    assert samples["sglang:num_queue_reqs"][0].labels["model_name"] == sim.config.model
    assert value(samples, "sglang:prompt_tokens_total") == 25


async def test_no_lora_metric_without_adapters(start_sim, http):
    sim = await start_sim()
    assert "vllm:lora_requests_info" not in await scrape(http, sim)


async def test_queue_grows_under_load(start_sim, http):
    sim = await start_sim(max_num_seqs=2, time_scale=0.2)
    tasks = [asyncio.create_task(complete(http, sim, f"{i} " + "q" * 200, max_tokens=300)) for i in range(8)]
    try:
        deadline = time.monotonic() + 5
        while True:
            samples = await scrape(http, sim)
            if value(samples, "vllm:num_requests_waiting") == 6:
                break
            assert time.monotonic() < deadline, "queue never reached 6"
            await asyncio.sleep(0.01)
        assert value(samples, "vllm:num_requests_running") == 2
        assert value(samples, "vllm:kv_cache_usage_perc") > 0
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_repeated_prompt_gets_prefix_hits_and_lower_ttft(start_sim, http):
    sim = await start_sim(time_scale=0.1)
    prompt = "shared system prompt. " * 200  # ~1100 tokens
    first = await complete(http, sim, prompt, max_tokens=2)
    second = await complete(http, sim, prompt, max_tokens=2)
    assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached >= first["usage"]["prompt_tokens"] - 16
    samples = await scrape(http, sim)
    assert value(samples, "vllm:prefix_cache_hits_total") == cached
    ttft = sim.stats()["ttft_s"]
    assert len(ttft) == 2 and ttft[1] < ttft[0] / 2


async def test_lora_running_adapters_show_in_the_metric(start_sim, http):
    sim = await start_sim(lora_adapters=("a", "b"), max_loras=1, time_scale=0.2)
    tasks = [
        asyncio.create_task(complete(http, sim, "x" * 50, max_tokens=400, model="a")),
        asyncio.create_task(complete(http, sim, "y" * 50, max_tokens=400, model="b")),
    ]
    try:
        deadline = time.monotonic() + 5
        while True:
            lora = (await scrape(http, sim))["vllm:lora_requests_info"]
            newest = max(lora, key=lambda s: s.value)
            if newest.labels["running_lora_adapters"] and newest.labels["waiting_lora_adapters"]:
                break
            assert time.monotonic() < deadline, "never saw one running and one waiting adapter"
            await asyncio.sleep(0.01)
        assert {newest.labels["running_lora_adapters"], newest.labels["waiting_lora_adapters"]} == {"a", "b"}
        assert newest.labels["max_lora"] == "1"
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_metrics_override_pins_the_load_gauges(start_sim, http):
    sim = await start_sim()
    async with http.post(sim.url + "/admin/metrics-override", json={"waiting": 12, "kv": 0.9}) as resp:
        assert resp.status == 200 and (await resp.json())["waiting"] == 12
    samples = await scrape(http, sim)
    assert value(samples, "vllm:num_requests_waiting") == 12
    assert value(samples, "vllm:kv_cache_usage_perc") == 0.9
    assert value(samples, "vllm:gpu_cache_usage_perc") == 0.9
    assert value(samples, "vllm:num_requests_running") == 0  # not overridden
    async with http.get(sim.url + "/get_load") as resp:
        assert (await resp.json())[0]["num_waiting_reqs"] == 12
    async with http.delete(sim.url + "/admin/metrics-override") as resp:
        assert resp.status == 200
    samples = await scrape(http, sim)
    assert (
        value(samples, "vllm:num_requests_waiting") == 0 and value(samples, "vllm:kv_cache_usage_perc") == 0
    )


async def test_hung_metrics_and_injected_failures(start_sim, http):
    sim = await start_sim()
    async with http.post(
        sim.url + "/admin/fault", json={"hang": ["metrics"], "fail": {"requests": 503}}
    ) as resp:
        assert resp.status == 200 and (await resp.json())["hang"] == ["metrics"]
    hung = asyncio.create_task(scrape(http, sim))
    async with http.post(sim.url + "/v1/completions", json={"prompt": "x"}) as resp:
        assert resp.status == 503 and (await resp.json())["object"] == "error"
    async with http.get(sim.url + "/health") as resp:
        assert resp.status == 200
    assert not hung.done()
    async with http.delete(sim.url + "/admin/fault") as resp:
        assert resp.status == 200
    samples = await asyncio.wait_for(hung, 2)  # released once the fault is cleared
    assert "vllm:num_requests_waiting" in samples
    await complete(http, sim, "works again")
    assert sim.stats()["requests_failed_injected"] == 1


async def test_hung_requests_and_health(start_sim, http):
    sim = await start_sim()
    sim.set_faults(hang={"requests", "health"})
    timeout = aiohttp.ClientTimeout(total=0.2)
    for path, method in (("/v1/completions", "POST"), ("/health", "GET")):
        with pytest.raises(asyncio.TimeoutError):
            async with http.request(method, sim.url + path, json={"prompt": "x"}, timeout=timeout) as resp:
                await resp.read()
    samples = await scrape(http, sim)  # metrics still answer
    assert value(samples, "vllm:num_requests_running") == 0


async def test_admin_stats_reset_and_cache_reset(start_sim, http):
    sim = await start_sim(kv_blocks=64)
    prompt = "p" * 640  # 160 tokens: 10 blocks
    await complete(http, sim, prompt)
    await complete(http, sim, prompt)
    async with http.get(sim.url + "/admin/stats") as resp:
        stats = await resp.json()
    assert stats["name"] == sim.name and stats["requests_finished"] == 2 and stats["requests_received"] == 2
    assert stats["prefix_cache_queries"] == 320 and stats["prefix_cache_hits"] == 144
    assert stats["prefix_cache_hit_ratio"] == pytest.approx(144 / 320)
    assert len(stats["ttft_s"]) == 2 and stats["busy_time_s"] > 0 and stats["cached_blocks"] == 10
    async with http.post(sim.url + "/admin/reset-stats") as resp:
        assert resp.status == 200
    async with http.post(sim.url + "/admin/reset-cache") as resp:
        assert (await resp.json())["dropped_blocks"] == 10
    third = await complete(http, sim, prompt)
    assert third["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    stats = sim.stats()
    assert stats["requests_finished"] == 1 and stats["prefix_cache_hits"] == 0 and len(stats["ttft_s"]) == 1
    samples = await scrape(http, sim)  # Prometheus counters stay monotonic across an admin reset
    assert value(samples, "vllm:prefix_cache_queries_total") == 480


async def test_eviction_under_cache_pressure_over_http(start_sim, http):
    sim = await start_sim(kv_blocks=32, block_size=16)  # 512 tokens
    prompts = [f"{i}:" + "e" * 1200 for i in range(4)]  # ~300 tokens each
    for p in prompts:
        await complete(http, sim, p, max_tokens=1)
    stats = sim.stats()
    assert stats["evicted_blocks"] > 0
    again = await complete(http, sim, prompts[0], max_tokens=1)
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] == 0  # the oldest prompt was evicted
    latest = await complete(http, sim, prompts[0], max_tokens=1)
    assert latest["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
