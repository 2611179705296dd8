"""Usage extraction (JSON and SSE, events split across chunks), model rewrite rules and rewrite-back."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from epp.datalayer.datastore import ModelRewriteRule, RewriteTarget
from epp.requestcontrol.candidates import host_of, subset_filter
from epp.requestcontrol.rewrite import ModelNameRestorer, RewriteIndex, pick_weighted
from epp.requestcontrol.usage import SseUsageScanner, Usage, usage_from_json_body

from .harness import endpoint


def sse(*events: dict | str) -> bytes:
    out = b""
    for e in events:
        data = e if isinstance(e, str) else json.dumps(e)
        out += b"data: " + data.encode() + b"\n\n"
    return out


CHAT_USAGE = {
    "object": "chat.completion.chunk",
    "choices": [],
    "usage": {
        "prompt_tokens": 11,
        "completion_tokens": 7,
        "total_tokens": 18,
        "prompt_tokens_details": {"cached_tokens": 4},
    },
}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {"object": "text_completion", "usage": {"prompt_tokens": 5, "completion_tokens": 3}},
            Usage(5, 3, 0),
        ),
        (
            {"object": "chat.completion", "usage": {"prompt_tokens": 5, "completion_tokens": 3,
             "prompt_tokens_details": {"cached_tokens": 2}}},
            Usage(5, 3, 2),
        ),
        # upstream's misspelling is read too
        ({"usage": {"prompt_tokens": 9, "prompt_token_details": {"cached_tokens": 8}}}, Usage(9, 0, 8)),
        # Responses API
        (
            {"object": "response", "usage": {"input_tokens": 6, "output_tokens": 4,
             "input_tokens_details": {"cached_tokens": 1}}},
            Usage(6, 4, 1),
        ),
        ({"object": "embedding", "usage": {"prompt_tokens": 12, "total_tokens": 12}}, Usage(12, 0, 0)),
        ({"object": "x", "usage": None}, None),
        ({"object": "x"}, None),
        ({"usage": {"prompt_tokens": "7", "completion_tokens": -1}}, Usage(0, 0, 0)),
    ],
)  # fmt: skip
def test_usage_from_json_body(body: dict, expected: Usage | None) -> None:
    assert usage_from_json_body(json.dumps(body).encode()) == expected
    # the Go-style compact form too
    assert usage_from_json_body(json.dumps(body, separators=(",", ":")).encode()) == expected


def test_usage_from_json_body_with_usage_word_in_content_and_garbage() -> None:
    body = {
        "choices": [{"text": 'the "usage" of words'}],
        "usage": {"prompt_tokens": 2, "completion_tokens": 1},
    }
    assert usage_from_json_body(json.dumps(body).encode()) == Usage(2, 1, 0)
    # a string value "usage" after the real key: the fast path fails, the full parse finds it
    body2 = {"usage": {"prompt_tokens": 2}, "tag": "usage"}
    assert usage_from_json_body(json.dumps(body2).encode()) == Usage(2, 0, 0)
    assert usage_from_json_body(b'{"usage": {"prompt_tokens": 2') is None
    assert usage_from_json_body(b"\xff\xfe not json") is None


def test_sse_usage_whole_stream() -> None:
    stream = sse({"choices": [{"text": "a"}], "usage": None}, CHAT_USAGE, "[DONE]")
    s = SseUsageScanner()
    s.feed(stream)
    s.finish()
    assert s.usage == Usage(11, 7, 4)


def test_sse_usage_split_at_every_byte_boundary() -> None:
    stream = sse({"choices": [{"text": "hello"}]}, CHAT_USAGE, "[DONE]")
    for cut in range(1, len(stream)):
        s = SseUsageScanner()
        s.feed(stream[:cut])
        s.feed(stream[cut:])
        s.finish()
        assert s.usage == Usage(11, 7, 4), cut


def test_sse_usage_in_many_tiny_chunks_crlf_and_no_space_and_responses_api() -> None:
    event = {"type": "response.completed", "response": {"usage": {"input_tokens": 3, "output_tokens": 2}}}
    stream = b"event: response.completed\r\ndata:" + json.dumps(event).encode() + b"\r\n\r\n"
    s = SseUsageScanner()
    for i in range(len(stream)):
        s.feed(stream[i : i + 1])
    s.finish()
    assert s.usage == Usage(3, 2, 0)


def test_sse_last_usage_wins_and_last_line_without_newline() -> None:
    # vLLM's continuous_usage_stats: every event carries the running totals, the last one the final count
    first = dict(CHAT_USAGE)
    second = {"usage": {"prompt_tokens": 99, "completion_tokens": 99}}
    s = SseUsageScanner()
    s.feed(sse(first))
    assert s.usage == Usage(11, 7, 4)
    s.feed(sse({"choices": [{"text": "x"}], "usage": None}))  # an empty usage does not override
    assert s.usage == Usage(11, 7, 4)
    s.feed(b"data: " + json.dumps(second).encode())
    s.finish()
    assert s.usage == Usage(99, 99, 0)
    tail = SseUsageScanner()
    tail.feed(b"data: " + json.dumps(second).encode())
    assert tail.usage is None  # no newline yet: the line may still grow
    tail.finish()
    assert tail.usage == Usage(99, 99, 0)


def test_sse_chunks_of_whole_events_without_usage_are_skipped_but_split_events_are_not() -> None:
    token = sse({"choices": [{"text": "x"}]})
    usage = sse(dict(CHAT_USAGE))
    s = SseUsageScanner()
    s.feed(token * 3)
    assert s.usage is None
    # an event carrying usage split so that neither part ends an event, nor holds the whole word
    cut = usage.index(b"usage") + 2
    s.feed(usage[:cut])
    s.feed(usage[cut:])
    s.finish()
    assert s.usage == Usage(11, 7, 4)
    # a multi-line event whose usage line comes in a later chunk that ends the event
    m = SseUsageScanner()
    m.feed(b'data: {"id": 1,\n')
    m.feed(b'data: "usage": {"prompt_tokens": 5, "completion_tokens": 2}}\n\n')
    m.finish()
    assert m.usage == Usage(5, 2, 0)


def test_sse_multiline_data_event() -> None:
    s = SseUsageScanner()
    s.feed(b'data: {"usage":\ndata: {"prompt_tokens": 4, "completion_tokens": 1}}\n\n')
    s.finish()
    assert s.usage == Usage(4, 1, 0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=20))
def test_sse_scanner_never_raises_on_garbage(chunks: list[bytes]) -> None:
    s = SseUsageScanner()
    for c in chunks:
        s.feed(c)
    s.finish()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=256))
def test_usage_from_json_body_never_raises(body: bytes) -> None:
    usage_from_json_body(body)
    usage_from_json_body(b'{"usage":' + body)


# ---- model rewrite ------------------------------------------------------------------------------


def rule(
    name: str, matches: tuple[str, ...], *targets: tuple[str, int], created: float = 0.0, order: int = 0
):
    return ModelRewriteRule(
        name, matches, tuple(RewriteTarget(m, w) for m, w in targets), created=created, order=order
    )


def test_rewrite_precedence_exact_beats_generic_then_oldest_then_order() -> None:
    rng = random.Random(1)
    index = RewriteIndex()
    rules = (
        rule("generic", (), ("g", 1)),
        rule("newer-exact", ("a",), ("new", 1), created=5.0),
        rule("older-exact", ("a",), ("old", 1), created=1.0),
        rule("second-in-list", ("b",), ("second", 1), created=1.0, order=2),
        rule("first-in-list", ("b",), ("first", 1), created=1.0, order=1),
    )
    assert index.decide("a", None, rules, rng).target == "old"
    assert index.decide("a", None, rules, rng).rule == "older-exact"
    assert index.decide("b", None, rules, rng).target == "first"
    assert index.decide("zzz", None, rules, rng).target == "g"
    # a rule overrides the header; without rules the header wins
    assert index.decide("a", "hdr", rules, rng).target == "old"
    assert index.decide("a", "hdr", (), rng).target == "hdr"
    assert index.decide("a", None, (), rng).target == "a"


def test_weighted_pick_follows_weights_and_zero_weights_are_uniform() -> None:
    rng = random.Random(7)
    r = rule("w", ("m",), ("x", 1), ("y", 3))
    counts = {"x": 0, "y": 0}
    for _ in range(4000):
        counts[pick_weighted(r, rng)] += 1
    assert 0.2 < counts["x"] / 4000 < 0.3
    only = rule("o", ("m",), ("never", 0), ("always", 5))
    assert {pick_weighted(only, rng) for _ in range(200)} == {"always"}
    zero = rule("z", ("m",), ("p", 0), ("q", 0))
    assert {pick_weighted(zero, rng) for _ in range(200)} == {"p", "q"}


def test_restorer_replaces_both_spacings_and_across_chunks() -> None:
    r = ModelNameRestorer("target-model", "public-model")
    assert r.replace(b'{"model":"target-model","x":1}') == b'{"model":"public-model","x":1}'
    assert r.replace(b'{"model": "target-model"}') == b'{"model": "public-model"}'
    assert r.replace(b'{"model": "other"}') == b'{"model": "other"}'
    stream = b'data: {"model":"target-model","a":1}\n\ndata: {"model":"target-model"}\n\n'
    for cut in range(1, len(stream)):
        r = ModelNameRestorer("target-model", "public-model")
        out = r.feed(stream[:cut]) + r.feed(stream[cut:]) + r.flush()
        assert out == stream.replace(b"target-model", b"public-model"), cut


def test_restorer_releases_bytes_without_newlines_past_the_hold_limit() -> None:
    r = ModelNameRestorer("t", "p")
    big = b"x" * (ModelNameRestorer.MAX_HOLD + 10)
    out = r.feed(big)
    assert out + r.flush() == big
    assert len(out) > 0


# ---- subset hint --------------------------------------------------------------------------------


def test_host_of_forms() -> None:
    assert host_of("10.0.0.1:8000") == "10.0.0.1"
    assert host_of("10.0.0.1") == "10.0.0.1"
    assert host_of("[fd00::1]:8000") == "fd00::1"
    assert host_of("[fd00::1]") == "fd00::1"
    assert host_of("fd00::1") == "fd00::1"


def test_subset_filter_matches_ip_only_and_ignores_non_strings() -> None:
    eps = [endpoint("10.0.0.1", 8000), endpoint("10.0.0.2", 8000), endpoint("fd00::1", 8000)]
    assert [e.ip for e in subset_filter(eps, ["10.0.0.2:9999", 5, None])] == ["10.0.0.2"]
    assert [e.ip for e in subset_filter(eps, ["[fd00:0::1]:1"])] == ["fd00::1"]
    assert subset_filter(eps, []) == ()
    assert subset_filter(eps, ["10.9.9.9:8000"]) == ()
