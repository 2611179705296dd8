"""Hostile request bodies and headers never crash or hang the stream: a routed reply or a 4xx with a reason.

The server runs in a background event loop for the whole module; hypothesis drives a synchronous gRPC
client against it, so each example is one real ext_proc stream.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pbg
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from .harness import (
    DEFAULT_CONFIG,
    Harness,
    endpoint,
    pipeline_from,
    request_body,
    request_headers,
    response_body,
    response_headers,
    set_headers,
    streamed,
)

PATHS = [
    "/v1/completions",
    "/v1/chat/completions",
    "/v1/responses",
    "/v1/embeddings",
    "/v1/conversations",
    "/x",
]


@pytest.fixture(scope="module")
def stub() -> Iterator[pbg.ExternalProcessorStub]:
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    box: dict[str, Any] = {}

    def run() -> None:
        asyncio.set_event_loop(loop)
        h = Harness(pipeline_from(DEFAULT_CONFIG), [endpoint("10.0.0.1", 8000), endpoint("fd00::2", 8000)])
        box["harness"] = h
        box["port"] = loop.run_until_complete(h.server.start(0, host="127.0.0.1"))
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, name="extproc-hostile", daemon=True)
    thread.start()
    assert ready.wait(10)
    channel = grpc.insecure_channel(f"127.0.0.1:{box['port']}")
    yield pbg.ExternalProcessorStub(channel)
    channel.close()
    asyncio.run_coroutine_threadsafe(box["harness"].server.stop(0), loop).result(5)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["bytes", "json", "request", "valid", "valid"]))
    if kind == "bytes":
        return draw(st.binary(max_size=512))
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    if kind == "valid":  # well-formed for every API, with hostile content and extra fields
        text = st.text(max_size=40)
        fields = {
            "model": draw(st.text(min_size=1, max_size=16)),
            "prompt": draw(
                st.text(min_size=1, max_size=40) | st.lists(st.integers(0, 2**32 - 1), min_size=1)
            ),
            "messages": draw(
                st.lists(st.fixed_dictionaries({"role": text, "content": json_values}), min_size=1)
            ),
            "input": draw(json_values.filter(lambda v: v is not None)),
            "items": draw(st.lists(json_values, min_size=1, max_size=3)),
        }
        fields.update(draw(st.dictionaries(st.text(max_size=8), json_values, max_size=3)))
        return json.dumps(fields, ensure_ascii=draw(st.booleans())).encode()
    fields = draw(
        st.dictionaries(
            st.sampled_from(["model", "prompt", "messages", "input", "items", "stream", "cache_salt"]),
            json_values,
            max_size=5,
        )
    )
    return json.dumps(fields).encode()


def _exchange(
    stub: pbg.ExternalProcessorStub, path: str, headers: dict[str, str], body: bytes, cuts: list[int]
):
    msgs = [request_headers(path, headers=headers)]
    points = [*sorted({c % (len(body) + 1) for c in cuts}), len(body)]
    start = 0
    for p in points:
        msgs.append(request_body(body[start:p], eos=p == len(body) and p == points[-1]))
        start = p
    msgs[-1].request_body.end_of_stream = True
    msgs += [response_headers(), response_body(b'{"usage": {"prompt_tokens": 1}}', eos=True)]
    return list(stub.Process(iter(msgs), timeout=10))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    path=st.sampled_from(PATHS),
    body=bodies(),
    cuts=st.lists(st.integers(min_value=0, max_value=600), max_size=4),
    rewrite=st.one_of(
        st.none(), st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=12)
    ),
)
def test_hostile_bodies_get_routed_or_a_4xx(
    stub: pbg.ExternalProcessorStub, path: str, body: bytes, cuts: list[int], rewrite: str | None
) -> None:
    headers = {"x-gateway-model-name-rewrite": rewrite} if rewrite else {}
    replies = _exchange(stub, path, headers, body, cuts)
    first = replies[0]
    event(first.WhichOneof("response"))
    if first.WhichOneof("response") == "immediate_response":
        assert len(replies) == 1
        imm = first.immediate_response
        assert imm.status.code == 400, imm.body
        assert imm.body.startswith(b"inference error: BadRequest - ")
        return
    kinds = [r.WhichOneof("response") for r in replies]
    assert kinds[0] == "request_headers" and kinds[-2:] == ["response_headers", "response_body"]
    forwarded = b"".join(streamed(r)[0] for r in replies if r.WhichOneof("response") == "request_body")
    assert set_headers(first)["content-length"] == str(len(forwarded))
    model = json.loads(body)["model"]
    if rewrite and rewrite != model:
        assert json.loads(forwarded)["model"] == rewrite
    else:
        assert forwarded == body


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    headers=st.dictionaries(
        st.text("abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12),
        st.text(max_size=30).filter(lambda t: "\x00" not in t),
        max_size=6,
    ),
    hint=st.one_of(st.none(), st.lists(st.text(max_size=24) | st.integers() | st.none(), max_size=4)),
)
def test_hostile_headers_and_hints_never_500(
    stub: pbg.ExternalProcessorStub, headers: dict[str, str], hint: list[Any] | None
) -> None:
    msg = request_headers(headers=headers)
    if hint is not None:
        msg.metadata_context.filter_metadata["envoy.lb.subset_hint"].update(
            {"x-gateway-destination-endpoint-subset": hint}
        )
    body = json.dumps({"model": "m", "prompt": "p"}).encode()
    replies = list(stub.Process(iter([msg, request_body(body, eos=True)]), timeout=10))
    first = replies[0]
    if first.WhichOneof("response") == "immediate_response":
        assert first.immediate_response.status.code in (400, 503), first.immediate_response.body
    else:
        assert set_headers(first)["x-gateway-destination-endpoint"] in ("10.0.0.1:8000", "[fd00::2]:8000")
