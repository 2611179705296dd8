"""The instant-answer servers and the lean client used by `epp bench overhead`."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from epp.bench.instant import LeanClient, completion_request, serve


async def test_streamed_and_whole_answers_probes_and_keep_alive() -> None:
    servers = await serve(2)
    try:
        ports = [s.sockets[0].getsockname()[1] for s in servers]
        assert len(set(ports)) == 2
        client = LeanClient("127.0.0.1", ports[0])
        t = await client.request(completion_request(f"127.0.0.1:{ports[0]}"))
        assert t.status == 200 and t.ttft_s is not None and 0 < t.ttft_s <= t.total_s
        t = await client.request(completion_request(f"127.0.0.1:{ports[0]}", stream=False))
        assert t.status == 200 and t.ttft_s is not None
        assert len(client._all) == 1  # one keep-alive connection served both
        await client.close()

        async with aiohttp.ClientSession() as http:
            base = f"http://127.0.0.1:{ports[1]}"
            async with http.post(
                base + "/v1/chat/completions",
                json={"messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 1},
            ) as resp:
                assert resp.headers["x-sim-server"] == f"instant-{ports[1]}"
                events = [line for line in (await resp.text()).splitlines() if line.startswith("data: ")]
            assert events[-1] == "data: [DONE]"
            assert json.loads(events[0][6:])["choices"][0]["delta"]["content"] == " x"
            assert json.loads(events[1][6:])["usage"]["completion_tokens"] == 1
            for path in ("/health", "/get_model_info", "/get_server_info", "/v1/models"):
                async with http.get(base + path) as resp:
                    assert resp.status == 200, path
            async with http.get(base + "/metrics") as resp:
                assert "vllm:num_requests_waiting" in await resp.text()
            async with http.get(base + "/nope") as resp:
                assert resp.status == 404

            async def chunks():  # a chunked request body, as Envoy forwards a mutated body
                yield b'{"prompt": "a", "stream": '
                yield b"false}"

            async with http.post(base + "/v1/completions", data=chunks()) as resp:
                assert (await resp.json())["usage"]["completion_tokens"] == 1
    finally:
        for s in servers:
            s.close()
        await asyncio.gather(*(s.wait_closed() for s in servers))
