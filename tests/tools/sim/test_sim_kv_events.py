"""KV-cache events over ZMQ as vLLM publishes them: [topic, seq, msgpack([ts, events, dp_rank])]."""

from __future__ import annotations

import msgpack
import zmq

from epp.tools.sim.kvcache import chain_block_hashes


async def post(http, sim, path, body=None):
    async with http.post(sim.url + path, json=body) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


def receive(sock, timeout_ms=2000):
    assert sock.poll(timeout_ms), "no KV event batch arrived"
    topic, seq, payload = sock.recv_multipart()
    return topic.decode(), int.from_bytes(seq, "big"), msgpack.unpackb(payload, raw=False)


def drain(sock):
    out = []
    while sock.poll(200):
        out.append(receive(sock))
    return out


async def test_block_stored_removed_and_cleared_events(start_sim, http):
    sim = await start_sim(
        model="m",
        kv_blocks=20,
        block_size=16,
        kv_events_endpoint="tcp://127.0.0.1:0",
        kv_events_topic="kv@{port}@{model}",
    )
    endpoint = sim.publisher.endpoint
    assert endpoint.startswith("tcp://127.0.0.1:") and not endpoint.endswith(":0")
    async with http.get(sim.url + "/kv_event_sources") as resp:  # vllm-router's discovery format
        sources = await resp.json()
    assert sources == {
        "0": {
            "publisher": "zmq",
            "enable_kv_cache_events": True,
            "endpoint": endpoint,
            "replay_endpoint": None,
            "topic": f"kv@{sim.port}@m",
            "hwm": 100000,
        }
    }
    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(endpoint)
    try:
        # PUB drops messages until the subscription has propagated: warm up until one arrives
        for i in range(50):
            await post(http, sim, "/v1/completions", {"prompt": f"warm{i} " * 20, "max_tokens": 1})
            if sock.poll(100):
                break
        else:
            raise AssertionError("subscriber never received a batch")
        drain(sock)

        tokens = list(range(300, 300 + 40))  # 2 full blocks + 8 tokens
        await post(http, sim, "/v1/completions", {"prompt": tokens, "max_tokens": 1})
        batches = drain(sock)
        stored = [e for _, _, (_, events, _) in batches for e in events if e[0] == "BlockStored"]
        assert len(stored) == 1
        _, hashes, parent, token_ids, block_size, lora_id, medium, lora_name = stored[0]
        assert hashes == chain_block_hashes(tokens, 16) and parent is None
        assert token_ids == tokens[:32] and block_size == 16 and medium == "GPU"
        assert lora_id is None and lora_name is None
        topic, _, (ts, _, dp_rank) = batches[-1]
        assert topic == f"kv@{sim.port}@m" and dp_rank == 0 and isinstance(ts, float)
        seqs = [s for _, s, _ in batches]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))

        # fill the 20-block cache with new prompts: the oldest blocks are removed
        for i in range(4):
            await post(http, sim, "/v1/completions", {"prompt": [400 + i] * 160, "max_tokens": 1})
        events = [e for _, _, (_, evs, _) in drain(sock) for e in evs]
        removed = [h for e in events if e[0] == "BlockRemoved" for h in e[1]]
        assert removed and all(e[2] == "GPU" for e in events if e[0] == "BlockRemoved")
        assert sim.engine.pool.evictions >= len(removed) > 0

        await post(http, sim, "/admin/reset-cache")
        (_, _, (_, events, _)), *_ = drain(sock)
        assert events == [["AllBlocksCleared"]]
    finally:
        sock.close(linger=0)
        ctx.term()
