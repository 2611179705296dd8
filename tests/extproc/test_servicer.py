"""The per-stream state machine through a real grpc.aio server and a client that speaks like Envoy."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid

import pytest

from epp.datalayer.datastore import ModelRewriteRule, RewriteTarget
from epp.errors import ErrorCode, RequestError
from epp.framework.types import TypedName
from epp.metadata import BODY_CHUNK_LIMIT
from epp.requestcontrol.context import RequestOptions
from tests.helpers import until

from .harness import (
    BUFFERED,
    BUFFERED_PARTIAL,
    DEFAULT_CONFIG,
    NONE,
    Harness,
    Recorder,
    endpoint,
    json_body,
    metadata_destination,
    pipeline_from,
    removed_headers,
    request_body,
    request_headers,
    request_trailers,
    response_body,
    response_headers,
    response_trailers,
    set_headers,
    streamed,
)

EPS = [endpoint("10.0.0.1", 8000), endpoint("10.0.0.2", 8000, queue=9)]
BODY = json_body(model="m1", prompt="hello world")


def harness(
    *, recorder: Recorder | None = None, endpoints=EPS, config: str = DEFAULT_CONFIG, **kw
) -> Harness:
    pipeline = pipeline_from(config, extra_plugins=[recorder] if recorder else ())
    return Harness(pipeline, endpoints, **kw)


async def route(h: Harness, body: bytes = BODY, headers: dict | None = None, **kw):
    """Send headers + body (two chunks); return the stream and the routing replies."""
    s = h.stream()
    await s.send(request_headers(headers=headers, **kw))
    half = len(body) // 2
    await s.send(request_body(body[:half]))
    await s.send(request_body(body[half:], eos=True))
    n = 1 + max(1, -(-len(body) // BODY_CHUNK_LIMIT))
    return s, await s.recv(n)


# ---- full duplex request path -------------------------------------------------------------------


async def test_full_duplex_holds_headers_reply_then_routes_with_header_metadata_and_body() -> None:
    async with harness() as h:
        s, replies = await route(h, headers={"x-request-id": "rid-1"})
        head, body = replies
        assert head.WhichOneof("response") == "request_headers"
        sets = set_headers(head)
        # the lowest queue wins; header and metadata agree
        assert sets["x-gateway-destination-endpoint"] == "10.0.0.1:8000"
        assert metadata_destination(head) == "10.0.0.1:8000"
        assert sets["content-length"] == str(len(BODY))
        assert "x-request-id" not in sets  # the client's id is kept, not re-set
        assert head.request_headers.response.clear_route_cache
        # the body goes back unchanged (not re-serialised when the model did not change)
        assert streamed(body) == (BODY, True)
        await s.close()
        assert await s.drain() == []


async def test_generated_request_id_is_forwarded() -> None:
    async with harness() as h:
        s, (head, _) = await route(h)
        rid = set_headers(head)["x-request-id"]
        assert uuid.UUID(rid).version == 4
        s.cancel()


async def test_large_body_is_streamed_back_in_chunks() -> None:
    prompt = "x" * 300_000
    body = json_body(model="m1", prompt=prompt)
    async with harness() as h:
        s = h.stream()
        await s.send(request_headers())
        for i in range(0, len(body), 16384):  # Envoy-sized chunks
            await s.send(request_body(body[i : i + 16384]))
        await s.send(request_body(b"", eos=True))
        head, *chunks = await s.recv(1 + 5)
        parts = [streamed(c) for c in chunks]
        assert all(len(b) <= BODY_CHUNK_LIMIT for b, _ in parts)
        assert [e for _, e in parts] == [False] * 4 + [True]
        assert b"".join(b for b, _ in parts) == body
        assert set_headers(head)["content-length"] == str(len(body))
        s.cancel()


async def test_client_system_owned_headers_are_removed_not_forwarded() -> None:
    client = {
        "x-gateway-destination-endpoint": "6.6.6.6:1",
        "x-gateway-destination-endpoint-served": "6.6.6.6:1",
        "x-gateway-destination-endpoint-subset": "6.6.6.6:1",
        "x-gateway-model-name-rewrite": "m1",
        "x-gateway-inference-objective": "nope",
        "x-gateway-inference-fairness-id": "tenant",
        "x-epp-decision": "1",
        "authorization": "Bearer secret",
    }
    async with harness() as h:
        s, (head, _) = await route(h, headers=client)
        assert set_headers(head)["x-gateway-destination-endpoint"] == "10.0.0.1:8000"  # overwritten
        assert set(removed_headers(head)) == {
            "x-gateway-destination-endpoint-served",
            "x-gateway-destination-endpoint-subset",
            "x-gateway-model-name-rewrite",
            "x-gateway-inference-objective",
            "x-gateway-inference-fairness-id",
            "x-epp-decision",
        }
        # ordinary headers are neither echoed nor removed
        assert "authorization" not in set_headers(head)
        assert "authorization" not in removed_headers(head)
        s.cancel()


async def test_model_rewrite_header_reserialises_body_and_rewrites_back() -> None:
    rec = Recorder()
    async with harness(recorder=rec) as h:
        s, (head, body) = await route(h, headers={"x-gateway-model-name-rewrite": "m1-lora"})
        new, eos = streamed(body)
        assert eos and json.loads(new) == {"model": "m1-lora", "prompt": "hello world"}
        assert set_headers(head)["content-length"] == str(len(new))  # never stale
        assert rec.pre[0].model == "m1" and rec.pre[0].target_model == "m1-lora"
        # non-SSE response: held until the end, model name restored across the chunk boundary
        await s.send(response_headers())
        assert (await s.recv())[0].WhichOneof("response") == "response_headers"
        resp = b'{"model":"m1-lora","choices":[],"usage":{"prompt_tokens":2,"completion_tokens":1}}'
        await s.send(response_body(resp[:12]))
        await s.send(response_body(resp[12:], eos=True))
        (out,) = await s.recv()
        assert streamed(out) == (resp.replace(b"m1-lora", b"m1"), True)
        await s.close()
        assert await s.drain() == []
        assert rec.completed[0].prompt_tokens == 2


async def test_model_rewrite_in_sse_chunks_is_restored_line_by_line() -> None:
    async with harness() as h:
        s, _ = await route(h, headers={"x-gateway-model-name-rewrite": "tgt"})
        await s.send(response_headers(content_type="text/event-stream"))
        await s.recv()
        events = b'data: {"model":"tgt","choices":[{"text":"a"}]}\n\ndata: {"model":"tgt","choices":[]}\n\n'
        cut = events.index(b"tgt", 20) + 1  # split inside the second model name
        await s.send(response_body(events[:cut]))
        (first,) = await s.recv()
        await s.send(response_body(events[cut:]))
        (second,) = await s.recv()
        await s.send(response_body(b"data: [DONE]\n\n", eos=True))
        (last,) = await s.recv()
        out = b"".join(streamed(r)[0] for r in (first, second, last))
        assert out == events.replace(b'"tgt"', b'"m1"') + b"data: [DONE]\n\n"
        assert streamed(last)[1] and not streamed(first)[1]
        s.cancel()


async def test_rewrite_rules_from_datastore_pick_weighted_target_and_count_metric() -> None:
    async with harness() as h:
        h.datastore.set_rewrite_rules(
            [ModelRewriteRule("split", ("m1",), (RewriteTarget("never", 0), RewriteTarget("always", 1)))]
        )
        s, (_, body) = await route(h, headers={"x-gateway-model-name-rewrite": "header-loses"})
        assert json.loads(streamed(body)[0])["model"] == "always"
        s.cancel()
        labels = {"model_rewrite_name": "split", "model_name": "m1", "target_model": "always"}
        assert h.sample("inference_extension_model_rewrite_decisions_total", labels) == 1


async def test_request_ended_by_trailers_routes_without_end_of_stream() -> None:
    async with harness() as h:
        s = h.stream()
        await s.send(request_headers())
        await s.send(request_body(BODY))
        await s.send(request_trailers())
        head, body, trailers = await s.recv(3)
        assert set_headers(head)["x-gateway-destination-endpoint"] == "10.0.0.1:8000"
        assert streamed(body) == (BODY, False)
        assert trailers.WhichOneof("response") == "request_trailers"
        s.cancel()


# ---- BUFFERED and other modes ------------------------------------------------------------------


async def test_buffered_mode_headers_reply_at_once_and_route_on_body_reply() -> None:
    async with harness() as h:
        s = h.stream()
        await s.send(request_headers(mode=BUFFERED, headers={"x-gateway-destination-endpoint": "6.6.6.6:1"}))
        (first,) = await s.recv()
        assert first.WhichOneof("response") == "request_headers"
        assert "x-gateway-destination-endpoint" not in set_headers(first)
        await s.send(request_body(BODY, eos=True))
        (reply,) = await s.recv()
        assert reply.WhichOneof("response") == "request_body"
        sets = set_headers(reply)
        assert sets["x-gateway-destination-endpoint"] == "10.0.0.1:8000"
        assert "content-length" not in sets  # body unchanged: the original length stays right
        assert not reply.request_body.response.HasField("body_mutation")
        assert metadata_destination(reply) == "10.0.0.1:8000"
        s.cancel()


async def test_buffered_mode_rewrite_sets_body_and_content_length_both_ways() -> None:
    async with harness() as h:
        s = h.stream()
        await s.send(request_headers(mode=BUFFERED, headers={"x-gateway-model-name-rewrite": "longer-model"}))
        await s.recv()
        await s.send(request_body(BODY, eos=True))
        (reply,) = await s.recv()
        new = reply.request_body.response.body_mutation.body
        assert json.loads(new)["model"] == "longer-model"
        assert set_headers(reply)["content-length"] == str(len(new))
        await s.send(response_headers())
        await s.recv()
        resp = b'{"model": "longer-model", "usage": {"prompt_tokens": 3}}'
        await s.send(response_body(resp, eos=True))
        (out,) = await s.recv()
        restored = out.response_body.response.body_mutation.body
        assert restored == resp.replace(b"longer-model", b"m1")
        assert set_headers(out)["content-length"] == str(len(restored))
        s.cancel()


async def test_buffered_body_followed_by_trailers_is_routed_on_the_body_message() -> None:
    """Envoy sends a BUFFERED body with end_of_stream false when trailers follow (HTTP/2, gRPC clients)."""
    async with harness() as h:
        s = h.stream()
        await s.send(request_headers(mode=BUFFERED))
        await s.recv()
        await s.send(request_body(BODY, eos=False))
        (routed,) = await s.recv()
        assert routed.WhichOneof("response") == "request_body"
        assert set_headers(routed)["x-gateway-destination-endpoint"] == "10.0.0.1:8000"
        await s.send(request_trailers())
        (trailers,) = await s.recv()
        assert trailers.WhichOneof("response") == "request_trailers"
        s.cancel()


@pytest.mark.parametrize("complete", [True, False])
async def test_buffered_partial_routes_on_its_one_message_or_says_the_body_was_cut(complete) -> None:
    async with harness() as h:
        s = h.stream()
        await s.send(request_headers(mode=BUFFERED_PARTIAL))
        await s.recv()
        # the only body message this mode sends: the whole body (trailers follow) or what fit the buffer
        await s.send(request_body(BODY if complete else BODY[:10], eos=False))
        (reply,) = await s.recv()
        if complete:
            assert set_headers(reply)["x-gateway-destination-endpoint"] == "10.0.0.1:8000"
        else:
            assert reply.immediate_response.status.code == 413
            assert b"only the first 10 bytes" in reply.immediate_response.body
        s.cancel()


async def test_body_mode_none_asks_for_buffered() -> None:
    async with harness() as h:
        s = h.stream()
        await s.send(request_headers(mode=NONE))
        (reply,) = await s.recv()
        assert reply.mode_override.request_body_mode == BUFFERED
        await s.send(request_body(BODY, eos=True))
        (routed,) = await s.recv()
        assert set_headers(routed)["x-gateway-destination-endpoint"] == "10.0.0.1:8000"
        s.cancel()


# ---- bodyless -------------------------------------------------------------------------------------


async def test_bodyless_get_goes_to_any_candidate() -> None:
    async with harness() as h:
        seen = set()
        for _ in range(30):
            replies = await h.exchange([request_headers("/v1/models", method="GET", eos=True)])
            (head,) = replies
            dest = set_headers(head)["x-gateway-destination-endpoint"]
            assert dest == metadata_destination(head)
            assert "content-length" not in set_headers(head)
            seen.add(dest)
        assert seen == {"10.0.0.1:8000", "10.0.0.2:8000"}  # random, not scored


async def test_bodyless_get_without_endpoints_is_503() -> None:
    async with harness(endpoints=[]) as h:
        (reply,) = await h.exchange([request_headers("/v1/models", method="GET", eos=True)])
        assert reply.immediate_response.status.code == 503


# ---- immediate responses ------------------------------------------------------------------------


async def _rejected(
    h: Harness, body: bytes, path: str = "/v1/completions", headers: dict | None = None, **kw
):
    replies = await h.exchange(
        [
            request_headers(path, headers=headers, **kw),
            request_body(body[:5]),
            request_body(body[5:], eos=True),
        ]
    )
    assert len(replies) == 1, replies
    imm = replies[0].immediate_response
    return imm.status.code, imm.body.decode()


@pytest.mark.parametrize(
    ("path", "body", "status", "why"),
    [
        ("/v1/completions", b"{not json", 400, "error unmarshaling request body"),
        ("/v1/completions", b'{"prompt": "x"}', 400, "model not found in request body"),
        ("/v1/chat/completions", b'{"model": "m", "messages": []}', 400, "must have valid messages field"),
        ("/v1/completions", b'{"model": "", "prompt": "x"}', 400, "model not found in request body"),
        ("/v1/completions", b"[1, 2, 3]", 400, "must be a JSON object"),
        ("/v1/completions", b'{"model": "m\\ud800", "prompt": "x"}', 400, "is not valid Unicode"),
    ],
)
async def test_bad_bodies_get_400_with_reason(path: str, body: bytes, status: int, why: str) -> None:
    async with harness() as h:
        code, text = await _rejected(h, body, path)
        assert code == status
        assert text.startswith("inference error: BadRequest - ") and why in text
        assert h.sample("inference_objective_request_error_total", {
            "model_name": "", "target_model_name": "", "error_code": "BadRequest"}) == 1  # fmt: skip


async def test_a_lone_surrogate_model_cannot_break_the_metrics_exposition() -> None:
    from prometheus_client import generate_latest

    async with harness() as h:
        code, _ = await _rejected(h, b'{"model": "\\udc80x", "prompt": "x"}')
        assert code == 400
        s, _ = await route(h)  # a good request after it is metered as usual
        s.cancel()
        assert b'model_name="m1"' in generate_latest(h.metrics.registry)


async def test_body_over_limit_gets_413_before_the_end() -> None:
    async with harness(options=RequestOptions(max_request_body_bytes=100)) as h:
        s = h.stream()
        await s.send(request_headers())
        await s.send(request_body(b"x" * 60))
        await s.send(request_body(b"x" * 60))  # no end_of_stream needed
        (reply,) = await s.recv()
        assert reply.immediate_response.status.code == 413
        assert b"exceeds 100 bytes" in reply.immediate_response.body
        assert await s.drain() == []


async def test_sheddable_request_is_429_when_saturated_and_critical_passes() -> None:
    config = DEFAULT_CONFIG + "saturationDetector:\n  pluginRef: utilization-detector\n"
    saturated = [endpoint("10.0.0.1", 8000, queue=50), endpoint("10.0.0.2", 8000, queue=50)]
    async with harness(endpoints=saturated, config=config) as h:
        h.datastore.set_objectives({"batch": -1, "chat": 5})
        code, text = await _rejected(h, BODY, headers={"x-gateway-inference-objective": "batch"})
        assert code == 429 and "system saturated, sheddable request dropped" in text
        s, (head, _) = await route(h, headers={"x-gateway-inference-objective": "chat"})
        assert "x-gateway-destination-endpoint" in set_headers(head)
        s.cancel()
        # unknown objective: priority 0, never shed
        s, (head, _) = await route(h, headers={"x-gateway-inference-objective": "unknown"})
        assert "x-gateway-destination-endpoint" in set_headers(head)
        s.cancel()


async def test_no_endpoints_is_503() -> None:
    async with harness(endpoints=[]) as h:
        code, text = await _rejected(h, BODY)
        assert code == 503 and "failed to find endpoint candidates" in text


@pytest.mark.parametrize(
    ("hint", "status", "chosen"),
    [
        ([], 503, None),
        (["10.9.9.9:8000"], 503, None),
        (["10.0.0.2:1234"], 200, "10.0.0.2:8000"),  # IP match, port ignored
        (["10.0.0.2", "10.0.0.1"], 200, "10.0.0.1:8000"),  # the scorer still decides within the subset
    ],
)
async def test_subset_hint(hint: list[str], status: int, chosen: str | None) -> None:
    md = {"envoy.lb.subset_hint": {"x-gateway-destination-endpoint-subset": hint}}
    async with harness() as h:
        if status == 503:
            code, text = await _rejected(h, BODY, metadata=md)
            assert code == 503 and "failed to find endpoint candidates" in text
        else:
            s, (head, _) = await route(h, metadata=md)
            assert set_headers(head)["x-gateway-destination-endpoint"] == chosen
            s.cancel()


async def test_subset_filter_can_be_disabled() -> None:
    md = {"envoy.lb.subset_hint": {"x-gateway-destination-endpoint-subset": []}}
    async with harness(options=RequestOptions(disable_endpoint_subset_filter=True)) as h:
        s, (head, _) = await route(h, metadata=md)
        assert set_headers(head)["x-gateway-destination-endpoint"] == "10.0.0.1:8000"
        s.cancel()


class _Boom:
    typed_name = TypedName("boom", "boom")

    def parse(self, *args: object) -> None:
        raise RuntimeError("kaboom")


async def test_unexpected_exception_is_500_not_a_hung_stream() -> None:
    async with harness() as h:
        h.holder.swap(dataclasses.replace(h.holder.current, parser=_Boom()))
        code, text = await _rejected(h, BODY)
        assert code == 500 and text == "inference error: Internal - internal error"
        labels = {"model_name": "", "target_model_name": "", "error_code": "Internal"}
        assert h.sample("inference_objective_request_error_total", labels) == 1


async def test_admitter_denial_is_429() -> None:
    class Deny:
        typed_name = TypedName("deny", "deny")

        def admit(self, cycle, request, endpoints):
            return "tenant over quota"

    pipeline = pipeline_from(DEFAULT_CONFIG, extra_plugins=[Deny()])
    async with Harness(pipeline, EPS) as h:
        code, text = await _rejected(h, BODY)
        assert code == 429 and "request cannot be admitted: tenant over quota" in text


async def test_custom_admission_error_reaches_the_client() -> None:
    class Queue:
        async def admit(self, request, candidates, pipeline):
            await asyncio.sleep(0)
            raise RequestError(ErrorCode.SERVICE_UNAVAILABLE, "request timed out in queue")

    async with harness(admission=Queue()) as h:
        code, text = await _rejected(h, BODY)
        assert code == 503 and "timed out in queue" in text


# ---- response path -------------------------------------------------------------------------------


async def test_response_path_hooks_headers_usage_and_metrics() -> None:
    rec = Recorder(set_header=("x-hook", "yes"), metadata={"epp.test": {"done": True}})
    async with harness(recorder=rec) as h:
        s, _ = await route(h)
        await s.send(
            response_headers(
                content_type="text/event-stream", served="10.0.0.1:8000", upstream_address="10.0.0.2:8000"
            )
        )
        (rh,) = await s.recv()
        assert set_headers(rh) == {"x-hook": "yes"}
        assert rec.received[0].served_endpoint == "10.0.0.1:8000"  # the spec's metadata wins
        await s.send(response_body(b"data: " + json.dumps({"choices": [{"text": "a"}]}).encode() + b"\n\nda"))
        (c1,) = await s.recv()
        usage = {
            "usage": {
                "prompt_tokens": 7,
                "completion_tokens": 3,
                "prompt_tokens_details": {"cached_tokens": 5},
            }
        }
        await s.send(response_body(b"ta: " + json.dumps(usage).encode() + b"\n\n"))
        await s.recv()
        await s.send(response_body(b"data: [DONE]\n\n", eos=True))
        (c3,) = await s.recv()
        assert streamed(c3)[1]
        assert c3.dynamic_metadata.fields["epp.test"].struct_value.fields["done"].bool_value
        assert not c1.HasField("dynamic_metadata")
        await s.close()
        assert await s.drain() == []
        info = rec.completed[0]
        assert (info.prompt_tokens, info.completion_tokens, info.cached_tokens) == (7, 3, 5)
        assert info.streaming and info.complete and info.status == 200
        assert len(rec.received) == 1 and len(rec.completed) == 1
        labels = {"model_name": "m1", "target_model_name": "m1"}
        assert h.sample("inference_objective_input_tokens_count", labels) == 1
        assert h.sample("inference_objective_input_tokens_sum", labels) == 7
        assert h.sample("inference_objective_output_tokens_sum", labels) == 3
        assert h.sample("inference_objective_prompt_cached_tokens_sum", labels) == 5
        assert h.sample("inference_objective_request_total", {**labels, "priority": "0"}) == 1
        assert h.sample("inference_objective_running_requests", {"model_name": "m1"}) == 0


async def test_served_endpoint_from_attribute_or_header_which_is_stripped() -> None:
    rec = Recorder()
    async with harness(recorder=rec) as h:
        s, _ = await route(h)
        await s.send(response_headers(upstream_address="10.0.0.2:8000"))
        (rh,) = await s.recv()
        assert removed_headers(rh) == [] if rh.response_headers.HasField("response") else True
        s.cancel()
        s, _ = await route(h)
        await s.send(response_headers(headers={"x-gateway-destination-endpoint-served": "10.0.0.1:8000"}))
        (rh,) = await s.recv()
        assert removed_headers(rh) == ["x-gateway-destination-endpoint-served"]
        s.cancel()
        await until(lambda: len(rec.completed) == 2)
        assert [r.served_endpoint for r in rec.received] == ["10.0.0.2:8000", "10.0.0.1:8000"]


async def test_model_server_error_is_counted_once_and_response_trailers_answered() -> None:
    rec = Recorder()
    async with harness(recorder=rec) as h:
        s, _ = await route(h)
        await s.send(response_headers(status=503))
        await s.recv()
        await s.send(response_body(b'{"error": "overloaded"}'))  # held: a JSON body goes back whole
        await s.send(response_trailers())
        body, t = await s.recv(2)
        assert streamed(body) == (b'{"error": "overloaded"}', False)  # the trailers end the stream
        assert t.WhichOneof("response") == "response_trailers"
        await s.close()
        assert await s.drain() == []
        assert rec.completed[0].complete
        labels = {"model_name": "m1", "target_model_name": "m1", "error_code": "ModelServerError"}
        assert h.sample("inference_objective_request_error_total", labels) == 1


async def test_json_response_is_held_to_its_end_and_released_whole() -> None:
    rec = Recorder()
    async with harness(recorder=rec) as h:
        s, _ = await route(h)
        await s.send(response_headers())
        await s.recv()
        resp = b'{"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 2}}'
        await s.send(response_body(resp[:20]))
        await s.send(response_body(resp[20:]))
        await s.send(response_body(b"", eos=True))  # Envoy's trailing empty end-of-stream chunk
        (out,) = await s.recv()  # one reply for the whole body
        assert streamed(out) == (resp, True)
        await s.close()
        assert await s.drain() == []
        assert (rec.completed[0].prompt_tokens, rec.completed[0].completion_tokens) == (4, 2)
        assert rec.completed[0].body_bytes == len(resp)


async def test_response_without_body_completes_on_headers() -> None:
    rec = Recorder()
    async with harness(recorder=rec) as h:
        s, _ = await route(h)
        await s.send(response_headers(status=204, eos=True))
        await s.recv()
        assert len(rec.completed) == 1
        s.cancel()


async def test_client_cancel_mid_stream_runs_complete_hooks_exactly_once() -> None:
    rec = Recorder()
    async with harness(recorder=rec) as h:
        s, _ = await route(h)
        await s.send(response_headers(content_type="text/event-stream"))
        await s.recv()
        await s.send(response_body(b'data: {"choices":[]}\n\n'))
        await s.recv()
        assert h.sample("inference_objective_running_requests", {"model_name": "m1"}) == 1
        s.cancel()
        await asyncio.wait_for(rec.complete_event.wait(), 5)
        await until(lambda: h.sample("inference_objective_running_requests", {"model_name": "m1"}) == 0)
        assert len(rec.completed) == 1 and not rec.completed[0].complete
        assert len(rec.received) == 1
        # no response metrics for an incomplete response
        labels = {"model_name": "m1", "target_model_name": "m1"}
        assert h.sample("inference_objective_request_duration_seconds_count", labels) == 0


async def test_stream_closed_after_routing_still_completes_once() -> None:
    rec = Recorder()
    async with harness(recorder=rec) as h:
        s, _ = await route(h)
        await s.close()  # Envoy gave up before any response (e.g. upstream connect failure)
        assert await s.drain() == []
        await until(lambda: len(rec.completed) == 1)
        assert len(rec.received) == 0


async def test_cancel_before_routing_runs_no_hooks() -> None:
    rec = Recorder()
    async with harness(recorder=rec) as h:
        s = h.stream()
        await s.send(request_headers())
        await s.send(request_body(BODY[:5]))
        s.cancel()
        # a routed request afterwards proves the server is healthy and the cancelled one left no trace
        s2, _ = await route(h)
        s2.cancel()
        await until(lambda: len(rec.completed) == 1)
        assert len(rec.pre) == 1


async def test_pipeline_is_fixed_per_stream_across_a_swap() -> None:
    async with harness() as h:
        s = h.stream()
        await s.send(request_headers(mode=BUFFERED))
        await s.recv()  # the stream has started and taken its pipeline
        old = h.holder.current
        h.holder.swap(dataclasses.replace(old, parser=_Boom()))
        await s.send(request_body(BODY, eos=True))
        (routed,) = await s.recv()
        assert "x-gateway-destination-endpoint" in set_headers(routed)
        s.cancel()
        code, _ = await _rejected(h, BODY)  # new streams use the new pipeline
        assert code == 500


async def test_decision_header_only_when_enabled_and_requested() -> None:
    for enabled, asked, expect in ((True, True, True), (True, False, False), (False, True, False)):
        async with harness(options=RequestOptions(decision_header=enabled)) as h:
            s, _ = await route(h, headers={"x-epp-decision": "1"} if asked else None)
            await s.send(response_headers())
            (rh,) = await s.recv()
            sets = set_headers(rh) if rh.response_headers.HasField("response") else {}
            assert ("x-epp-decision" in sets) == expect
            if expect:
                assert "picked=10.0.0.1:8000" in sets["x-epp-decision"]
            s.cancel()


async def test_many_concurrent_streams() -> None:
    async with harness() as h:

        async def one(i: int) -> str:
            replies = await h.exchange(
                [
                    request_headers(headers={"x-request-id": f"r{i}"}),
                    request_body(json_body(model="m1", prompt=f"p{i}"), eos=True),
                    response_headers(),
                    response_body(b"{}", eos=True),
                ]
            )
            assert [r.WhichOneof("response") for r in replies] == [
                "request_headers",
                "request_body",
                "response_headers",
                "response_body",
            ]
            return set_headers(replies[0])["x-gateway-destination-endpoint"]

        results = await asyncio.gather(*(one(i) for i in range(50)))
        assert set(results) == {"10.0.0.1:8000"}
        assert h.sample("inference_objective_running_requests", {"model_name": "m1"}) == 0


async def test_rewrite_of_a_body_with_lone_surrogate_escapes_stays_valid_json() -> None:
    body = b'{"model": "m1", "prompt": "bad \\ud800 text"}'
    async with harness() as h:
        s, (head, out) = await route(h, body=body, headers={"x-gateway-model-name-rewrite": "m2"})
        new, _ = streamed(out)
        assert json.loads(new) == {"model": "m2", "prompt": "bad \ud800 text"}
        assert set_headers(head)["content-length"] == str(len(new))
        s.cancel()


async def test_request_id_and_model_are_bound_for_logging_in_hooks() -> None:
    from epp import logs as eplog

    seen: list[tuple[str, str]] = []

    class Probe:
        typed_name = TypedName("probe", "probe")

        def pre_request(self, cycle, request, result):
            seen.append((eplog.request_id.get(), eplog.request_model.get()))

    pipeline = pipeline_from(DEFAULT_CONFIG, extra_plugins=[Probe()])
    async with Harness(pipeline, EPS) as h:
        s, _ = await route(h, headers={"x-request-id": "rid-42"})
        s.cancel()
        s, (head, _) = await route(h)
        s.cancel()
    assert seen[0] == ("rid-42", "m1")
    assert seen[1] == (set_headers(head)["x-request-id"], "m1")  # the generated id is the forwarded one


# ---- the response always gets through ---------------------------------------------------------------


@pytest.mark.parametrize("trouble", ["nested-usage", "bad-hook-metadata"])
async def test_accounting_trouble_never_costs_the_client_its_response_body(trouble, caplog) -> None:
    rec = Recorder(metadata={"epp.test": {"raw": b"\x00bytes are not a Struct value"}, "epp.ok": {"n": 1}})
    if trouble == "nested-usage":
        rec = Recorder()
        body = b'{"id": "x", "usage": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    else:
        body = json.dumps({"id": "x", "usage": {"prompt_tokens": 3, "completion_tokens": 1}}).encode()
    async with harness(recorder=rec) as h:
        s, _ = await route(h)
        await s.send(response_headers())
        await s.recv()
        await s.send(response_body(body[:7]))
        await s.send(response_body(body[7:]))
        await s.send(response_body(b"", eos=True))
        replies = await s.recv(-(-len(body) // BODY_CHUNK_LIMIT))
        got = b"".join(streamed(r)[0] for r in replies)
        assert got == body and streamed(replies[-1])[1]
        if trouble == "bad-hook-metadata":  # the good namespace still goes out, the bad one is logged
            assert "epp.ok" in replies[-1].dynamic_metadata.fields
            assert "epp.test" not in replies[-1].dynamic_metadata.fields
            assert any("'epp.test' from a hook left out" in r.getMessage() for r in caplog.records)
        assert rec.completed and rec.completed[0].complete
        s.cancel()
