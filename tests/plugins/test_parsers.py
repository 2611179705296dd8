"""openai-parser and passthrough-parser: APIs by path, required fields, 400 messages, hostile bodies."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from epp.errors import ErrorCode, RequestError
from epp.framework.types import ApiKind
from epp.plugins.parsers.openai import api_for_path

from ._kit import build


def parse(body: object, path: str = "/v1/completions", headers: dict[str, str] | None = None):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return build("openai-parser").parse("req-1", path, headers or {}, raw)


def parse_error(body: object, path: str = "/v1/completions") -> RequestError:
    with pytest.raises(RequestError) as err:
        parse(body, path)
    assert err.value.code is ErrorCode.BAD_REQUEST and err.value.status == 400
    return err.value


@pytest.mark.parametrize(
    ("path", "api"),
    [
        ("/v1/completions", ApiKind.COMPLETIONS),
        ("/v1/chat/completions", ApiKind.CHAT_COMPLETIONS),
        ("/v1/chat/completions?stream=1", ApiKind.CHAT_COMPLETIONS),
        ("/v1/chat/completions/", ApiKind.CHAT_COMPLETIONS),
        ("/openai/deployments/x/chat/completions", ApiKind.CHAT_COMPLETIONS),
        ("/v1/responses", ApiKind.RESPONSES),
        ("/v1/conversations", ApiKind.CONVERSATIONS),
        ("/v1/embeddings", ApiKind.EMBEDDINGS),
        ("/v1/models", ApiKind.COMPLETIONS),
        ("", ApiKind.COMPLETIONS),
    ],
)
def test_api_by_path_suffix(path: str, api: ApiKind) -> None:
    assert api_for_path(path) is api


def test_completions_prompt() -> None:
    r = parse({"model": "m", "prompt": "hello world", "stream": True, "cache_salt": "s1"})
    assert (r.request_id, r.model, r.target_model, r.api) == ("req-1", "m", "m", ApiKind.COMPLETIONS)
    assert r.prompt == "hello world" and r.prefix_material == b"hello world"
    assert r.stream is True and r.cache_salt == "s1"
    assert r.body["prompt"] == "hello world"
    assert r.size_bytes == len(
        json.dumps({"model": "m", "prompt": "hello world", "stream": True, "cache_salt": "s1"})
    )


def test_completions_token_ids() -> None:
    r = parse({"model": "m", "prompt": [1, 2, 70000]})
    assert r.token_ids == (1, 2, 70000) and r.prompt is None
    assert r.prefix_material == struct.pack("<3I", 1, 2, 70000)
    assert r.estimated_input_tokens == 3


def test_completions_batches() -> None:
    assert parse({"model": "m", "prompt": ["only"]}).prefix_material == b"only"
    assert parse({"model": "m", "prompt": ["a", "b"]}).prefix_material == b'["a","b"]'
    assert parse({"model": "m", "prompt": [[1], [2, 3]]}).token_ids == (1, 2, 3)


def test_chat_hashes_the_whole_conversation_canonically() -> None:
    messages = [{"role": "system", "content": "be brief"}, {"content": "hi", "role": "user"}]
    r = parse({"model": "m", "messages": messages}, "/v1/chat/completions")
    assert r.api is ApiKind.CHAT_COMPLETIONS and r.messages == messages
    assert r.prefix_material == b'[{"content":"be brief","role":"system"},{"content":"hi","role":"user"}]'
    reordered = [{"content": "be brief", "role": "system"}, {"role": "user", "content": "hi"}]
    assert (
        parse({"model": "m", "messages": reordered}, "/v1/chat/completions").prefix_material
        == r.prefix_material
    )
    longer = parse(
        {"model": "m", "messages": [*messages, {"role": "user", "content": "more"}]}, "/v1/chat/completions"
    )
    assert longer.prefix_material.startswith(r.prefix_material[:-1])


def test_responses_conversations_embeddings() -> None:
    r = parse({"model": "m", "input": "q", "instructions": "sys"}, "/v1/responses")
    assert r.api is ApiKind.RESPONSES and r.prefix_material == b'["sys","q"]'
    r = parse({"model": "m", "items": [{"type": "message"}]}, "/v1/conversations")
    assert r.prefix_material == b'[{"type":"message"}]'
    r = parse({"model": "m", "input": ["a", "b"]}, "/v1/embeddings")
    assert r.prefix_material == b'["a","b"]'


def test_headers_fill_objective_and_fairness() -> None:
    r = parse(
        {"model": "m", "prompt": "p"},
        headers={"x-gateway-inference-objective": "gold", "x-gateway-inference-fairness-id": "tenant"},
    )
    assert (r.objective, r.fairness_id) == ("gold", "tenant")
    assert parse({"model": "m", "prompt": "p"}).fairness_id == "default-flow"


@pytest.mark.parametrize(
    ("body", "path", "message"),
    [
        ({"model": "m"}, "/v1/completions", "invalid completions request: must have prompt field"),
        ({"model": "m", "prompt": ""}, "/v1/completions", "must have prompt field"),
        ({"model": "m", "prompt": []}, "/v1/completions", "must have prompt field"),
        ({"model": "m", "prompt": [1, "a"]}, "/v1/completions", "must have prompt field"),
        ({"model": "m", "prompt": [-1]}, "/v1/completions", "must have prompt field"),
        ({"model": "m", "prompt": [True]}, "/v1/completions", "must have prompt field"),
        ({"model": "m", "prompt": [2**40]}, "/v1/completions", "must have prompt field"),
        ({"model": "m", "prompt": 7}, "/v1/completions", "must have prompt field"),
        ({"model": "m", "messages": []}, "/v1/chat/completions", "must have valid messages field"),
        ({"model": "m", "messages": "hi"}, "/v1/chat/completions", "must have valid messages field"),
        ({"model": "m", "messages": [1]}, "/v1/chat/completions", "must have valid messages field"),
        ({"model": "m", "prompt": "p"}, "/v1/chat/completions", "must have valid messages field"),
        ({"model": "m"}, "/v1/responses", "invalid responses request: must have input field"),
        (
            {"model": "m", "items": []},
            "/v1/conversations",
            "invalid conversations request: must have items field",
        ),
        (
            {"model": "m", "input": None},
            "/v1/embeddings",
            "invalid embeddings request: must have input field",
        ),
        ({"prompt": "p"}, "/v1/completions", "model not found in request body"),
        ({"model": 3, "prompt": "p"}, "/v1/completions", "model not found in request body"),
        ({"model": None, "prompt": "p"}, "/v1/completions", "model not found in request body"),
        ({"model": "m", "prompt": "p", "cache_salt": 5}, "/v1/completions", "cache_salt must be a string"),
        ([1, 2], "/v1/completions", "must be a JSON object"),
        ("text", "/v1/completions", "must be a JSON object"),
    ],
)
def test_bad_requests(body: object, path: str, message: str) -> None:
    assert message in parse_error(body, path).message


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "error unmarshaling request body"),
        (b"{", "error unmarshaling request body"),
        (b'{"model": "m", "prompt": "p"} trailing', "error unmarshaling request body"),
        (b"\xff\xfe{}", "not valid UTF-8"),
        (b'{"model": "m", "prompt": "p", "x": NaN}', "NaN is not valid JSON"),
        (b'{"model": "m", "prompt": "p", "x": -Infinity}', "not valid JSON"),
        (b'{"model": "m", "prompt": "p", "x": 1e999}', "out of range"),
        (b'{"model": "m", "prompt": "p", "x": ' + b"9" * 5000 + b"}", "error unmarshaling request body"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"a":' * 50_000 + b"1" + b"}" * 50_000, "nested too deeply"),
    ],
)
def test_hostile_bodies_are_400s(raw: bytes, message: str) -> None:
    err = parse_error(raw)
    assert message in err.message
    assert len(err.body()) < 400


def test_deeply_nested_messages_are_a_400_not_a_crash() -> None:
    deep = "[" * 900 + "]" * 900
    raw = ('{"model": "m", "messages": [{"role": "user", "content": ' + deep + "}]}").encode()
    try:
        r = parse(raw, "/v1/chat/completions")
    except RequestError as err:
        assert err.code is ErrorCode.BAD_REQUEST
    else:
        assert r.prefix_material.startswith(b'[{"content":[[[')


def test_lone_surrogates_do_not_crash() -> None:
    r = parse(b'{"model": "m\\ud800", "prompt": "x\\udfff"}')
    assert r.prompt == "x\udfff" and r.prefix_material == "x\udfff".encode("utf-8", "surrogatepass")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {},
        optional={
            "model": json_values,
            "prompt": json_values,
            "messages": json_values,
            "input": json_values,
            "items": json_values,
            "stream": json_values,
            "cache_salt": json_values,
        },
    ).map(lambda d: json.dumps(d).encode()),
)


@settings(max_examples=300, deadline=None)
@given(
    body=bodies,
    path=st.sampled_from(
        [
            "/v1/completions",
            "/v1/chat/completions",
            "/v1/responses",
            "/v1/conversations",
            "/v1/embeddings",
            "/x",
        ]
    ),
)
def test_any_body_parses_or_raises_a_bad_request(body: bytes, path: str) -> None:
    try:
        r = build("openai-parser").parse("id", path, {}, body)
    except RequestError as err:
        assert err.code is ErrorCode.BAD_REQUEST
    else:
        assert isinstance(r.model, str) and isinstance(r.prefix_material, bytes) and r.prefix_material


# ---- passthrough-parser -----------------------------------------------------------------------------------


def test_passthrough_never_parses_the_body() -> None:
    p = build("passthrough-parser")
    r = p.parse("id", "/grpc.Service/Method", {"x-gateway-model-name": "llama"}, b"\x00\xffnot json")
    assert (r.model, r.target_model, r.api, r.prefix_material, r.size_bytes) == (
        "llama",
        "llama",
        ApiKind.NONE,
        b"",
        10,
    )
    assert p.parse("id", "/", {}, b"{}").model == ""


def test_passthrough_model_header_is_configurable() -> None:
    p = build("passthrough-parser", {"modelHeader": "X-Model"})
    assert p.parse("id", "/", {"x-model": "m2"}, b"").model == "m2"
