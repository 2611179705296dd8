"""The instant-answer servers and the lean client used by `epp bench overhead`."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from epp.tools.bench.instant import MAX_TOKENS, LeanClient, _Conn, completion_request, max_tokens_of, serve


@pytest.fixture
async def ports(request) -> AsyncIterator[list[int]]:
    """Two instant servers; `@pytest.mark.parametrize("ports", [seconds], indirect=True)` sets the token
    interval (default 0)."""
    interval = getattr(request, "param", 0.0)
    servers = await serve(2, token_interval_s=interval)
    try:
        yield [int(s.sockets[0].getsockname()[1]) for s in servers]
    finally:
        for s in servers:
            s.close()
        await asyncio.gather(*(s.wait_closed() for s in servers))


async def _read_chunks(
    reader: asyncio.StreamReader, started: float
) -> tuple[bytes, list[tuple[float, bytes]]]:
    """One chunked response read chunk by chunk: (head, [(seconds since `started`, payload), ...])."""
    head = await reader.readuntil(b"\r\n\r\n")
    chunks = []
    while True:
        size = int((await reader.readline()).split(b";", 1)[0], 16)
        if size == 0:
            assert await reader.readline() == b"\r\n"
            return head, chunks
        data = await reader.readexactly(size + 2)
        assert data.endswith(b"\r\n")
        chunks.append((time.perf_counter() - started, data[:-2]))


def _event(payload: bytes) -> dict | str:
    assert payload.startswith(b"data: ") and payload.endswith(b"\n\n"), payload  # one whole event per chunk
    text = payload[6:-2].decode()
    assert "\n\n" not in text
    return text if text == "[DONE]" else json.loads(text)


async def test_streamed_and_whole_answers_probes_and_keep_alive(ports) -> None:
    assert len(set(ports)) == 2
    client = LeanClient("127.0.0.1", ports[0])
    t = await client.request(completion_request(f"127.0.0.1:{ports[0]}"))
    assert t.status == 200 and t.ttft_s is not None and 0 < t.ttft_s <= t.total_s and t.tokens == 1
    t = await client.request(completion_request(f"127.0.0.1:{ports[0]}", stream=False))
    assert t.status == 200 and t.ttft_s is not None and t.tokens == 1
    assert len(client._all) == 1  # one keep-alive connection served both
    await client.close()

    async with aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{ports[1]}"
        for usage in (False, True):
            body = {"messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 1}
            if usage:
                body["stream_options"] = {"include_usage": True}
            async with http.post(base + "/v1/chat/completions", json=body) as resp:
                assert resp.headers["x-sim-server"] == f"instant-{ports[1]}"
                events = [line for line in (await resp.text()).splitlines() if line.startswith("data: ")]
            assert events[-1] == "data: [DONE]"
            assert json.loads(events[0][6:])["choices"][0]["delta"]["content"] == " x"
            assert len(events) == (3 if usage else 2)  # the usage event only when asked, as vLLM
            if usage:
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


def test_max_tokens_is_found_in_the_raw_body() -> None:
    assert max_tokens_of(b'{"prompt":"a"}') == 1
    assert max_tokens_of(b'{"max_tokens":7}') == 7
    assert max_tokens_of(b'{"prompt": "a", "max_tokens" :  12, "stream": true}') == 12
    assert max_tokens_of(b'{"max_completion_tokens":5}') == 5
    assert max_tokens_of(b'{"max_tokens":null}') == 1
    assert max_tokens_of(b'{"max_tokens":0}') == 1
    assert max_tokens_of(b'{"max_tokens":999999}') == MAX_TOKENS


@pytest.mark.parametrize("usage", [False, True])
async def test_n_tokens_one_event_per_chunk_usage_only_when_asked(ports, usage) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", ports[0])
    try:
        for n in (1, 5):
            writer.write(completion_request(f"127.0.0.1:{ports[0]}", max_tokens=n, include_usage=usage))
            head, chunks = await _read_chunks(reader, time.perf_counter())
            assert b" 200 OK" in head
            events = [_event(payload) for _, payload in chunks]
            assert events[-1] == "[DONE]"
            tokens = [e for e in events[:-1] if isinstance(e, dict) and e["choices"]]
            assert len(tokens) == n and all(e["choices"][0]["text"] == " x" for e in tokens)
            assert [e["choices"][0]["finish_reason"] for e in tokens] == [None] * (n - 1) + ["length"]
            rest = events[n:-1]
            if usage:
                assert len(rest) == 1 and isinstance(rest[0], dict)
                assert rest[0]["usage"]["completion_tokens"] == n and rest[0]["choices"] == []
            else:
                assert rest == []
    finally:
        writer.close()


@pytest.mark.parametrize("ports", [0.02], indirect=True)
async def test_tokens_are_spaced_by_the_interval_and_the_next_request_waits(ports) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", ports[0])
    try:
        one = completion_request(f"127.0.0.1:{ports[0]}", max_tokens=4, include_usage=True)
        started = time.perf_counter()
        writer.write(one + one)  # pipelined: the second is answered after the first has streamed
        _, first = await _read_chunks(reader, started)
        _, second = await _read_chunks(reader, started)
        for chunks in (first, second):
            assert len(chunks) == 4 + 2  # 4 tokens, usage, [DONE]
            times = [at for at, _ in chunks[:4]]
            # each token was written 20 ms after the previous one (timer slack only makes it later)
            assert all(b - a >= 0.015 for a, b in itertools.pairwise(times)), times
            assert _event(chunks[4][1])["usage"]["completion_tokens"] == 4  # type: ignore[index]
        assert second[0][0] >= first[3][0]
    finally:
        writer.close()

    client = LeanClient("127.0.0.1", ports[1])
    t = await client.request(completion_request(f"127.0.0.1:{ports[1]}", max_tokens=3))
    assert t.status == 200 and t.tokens == 3 and t.ttft_s is not None
    assert t.total_s - t.ttft_s >= 0.03  # two intervals between the first token and the last
    await client.close()


@pytest.mark.parametrize("usage", [False, True])
async def test_lean_client_counts_tokens_and_reuses_the_connection(ports, usage) -> None:
    client = LeanClient("127.0.0.1", ports[0])
    for n in (1, 2, 17, 300):
        t = await client.request(
            completion_request(f"127.0.0.1:{ports[0]}", max_tokens=n, include_usage=usage)
        )
        assert (t.status, t.tokens) == (200, n)
        assert t.ttft_s is not None and 0 < t.ttft_s <= t.total_s
    assert len(client._all) == 1
    await client.close()


class _FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed = False

    def write(self, data) -> None:
        self.written += bytes(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


async def test_the_client_parser_counts_tokens_split_anywhere() -> None:
    """Envoy re-chunks what it forwards: an event, a chunk header or a token mark may be split anywhere."""
    body = b"".join(
        f"{len(e):x}\r\n".encode() + e + b"\r\n"
        for e in [b'data: {"choices":[{"text":" x"}]}\n\ndata: {"choices":[{"text":" y"}]}\n\n'] * 3
        + [b'data: {"choices":[],"usage":{"completion_tokens":6}}\n\n', b"data: [DONE]\n\n"]
    )
    raw = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + body + b"0\r\n\r\n"
    for step in (1, 2, 3, 7, 13, len(raw)):
        conn = _Conn()
        conn.connection_made(_FakeTransport())
        waiter = conn.send(b"GET / HTTP/1.1\r\n\r\n")
        for i in range(0, len(raw), step):
            assert not waiter.done()
            conn.data_received(raw[i : i + step])
        t = waiter.result()
        assert (t.status, t.tokens) == (200, 6), step
        assert conn.keep

    conn = _Conn()
    conn.connection_made(_FakeTransport())
    waiter = conn.send(b"GET / HTTP/1.1\r\n\r\n")
    conn.data_received(raw[:80])
    conn.connection_lost(None)
    with pytest.raises(ConnectionResetError):
        waiter.result()
