"""P/D in the simulator: a decode server given `x-prefiller-host-port` has the prefill server prefill, pulls
the KV blocks it lacks (timed by the transfer bandwidth) and decodes with the prompt cached."""

from __future__ import annotations

import pytest

from epp.tools.sim.config import SimConfig
from epp.tools.sim.engine import Engine

PROMPT = "The quick brown fox jumps over the lazy dog. " * 90  # ~1000 tokens


async def complete(http, sim, headers=None, **body):
    body = {"model": sim.config.model, "prompt": PROMPT, "max_tokens": 4, **body}
    async with http.post(sim.url + "/v1/completions", json=body, headers=headers or {}) as resp:
        return resp.status, await resp.json()


async def test_decode_pulls_the_prompt_from_the_prefill_server(start_sim, http):
    prefill = await start_sim(role="prefill", name="p")
    decode = await start_sim(role="decode", name="d", kv_transfer_gbps=1.0)
    status, body = await complete(http, decode, {"x-prefiller-host-port": prefill.address})
    assert status == 200 and body["usage"]["completion_tokens"] == 4
    prompt_tokens = body["usage"]["prompt_tokens"]
    cached = body["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached == (prompt_tokens - 1) // 16 * 16  # every reusable block came over
    d, p = decode.stats(), prefill.stats()
    assert d["kv_transfers"] == 1 and d["kv_transfer_blocks"] == cached // 16
    # blocks x 16 tokens x 128 KiB at 1 GB/s, time-scaled by 0.05
    assert d["kv_transfer_s"] == pytest.approx(cached * 131072 / 1e9 * 0.05)
    assert d["prefix_cache_hits"] == cached and d["prefill_tokens_computed"] == prompt_tokens - cached
    assert p["remote_prefill_requests"] == 1 and p["prefill_tokens_computed"] == prompt_tokens
    assert p["generation_tokens"] == 1  # max_tokens 1


async def test_the_second_request_moves_nothing(start_sim, http):
    prefill = await start_sim(role="prefill")
    decode = await start_sim(role="decode")
    headers = {"x-prefiller-host-port": prefill.address}
    await complete(http, decode, headers)
    moved = decode.stats()["kv_transfer_blocks"]
    assert moved > 0
    await complete(http, decode, headers)
    assert decode.stats()["kv_transfers"] == 2 and decode.stats()["kv_transfer_blocks"] == moved


async def test_prefill_server_answers_with_kv_transfer_params_and_ignores_the_header(start_sim, http):
    prefill = await start_sim(role="prefill")
    other = await start_sim(role="prefill")
    status, body = await complete(
        http,
        prefill,
        {"x-prefiller-host-port": other.address},
        max_tokens=1,
        kv_transfer_params={"do_remote_decode": True},
    )
    assert status == 200
    params = body["kv_transfer_params"]
    assert params["do_remote_prefill"] is True and params["remote_port"] == prefill.port
    assert len(params["remote_block_ids"]) == (body["usage"]["prompt_tokens"] - 1) // 16
    assert other.stats()["requests_received"] == 0 and prefill.stats()["kv_transfers"] == 0


async def test_unreachable_prefill_server_falls_back_to_local_prefill(start_sim, http):
    decode = await start_sim(role="both")
    status, body = await complete(http, decode, {"x-prefiller-host-port": "127.0.0.1:9"})
    assert status == 200 and body["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert decode.stats()["kv_transfer_failures"] == 1 and decode.stats()["kv_transfers"] == 0


def test_engine_receive_kv_keeps_the_local_prefix_and_fills_the_rest() -> None:
    engine = Engine(SimConfig(kv_blocks=64, block_size=4))
    prompt = list(range(1, 42))  # 41 tokens: 10 reusable blocks
    assert engine.missing_blocks(prompt, None) == 10
    assert engine.receive_kv(prompt[:21], None) == 5
    assert engine.missing_blocks(prompt, None) == 5
    assert engine.receive_kv(prompt, None) == 5
    assert engine.missing_blocks(prompt, None) == 0 and engine.pool.num_free == 64  # cached, not pinned
    small = Engine(SimConfig(kv_blocks=3, block_size=4))
    assert small.receive_kv(prompt, None) == 3  # only what fits


def test_role_is_validated() -> None:
    with pytest.raises(ValueError, match="--role"):
        SimConfig(role="encode").validate()
