"""The response path off the critical path: body modes chosen at response headers, observer streams.

Through a real grpc.aio server and clients that speak like Envoy: a routing stream configured as the
Envoy config we ship (request body BUFFERED, response body NONE unless the EPP asks), and observer streams
(`observability_mode`, nothing written back).
"""

from __future__ import annotations

import asyncio
import json

import pytest
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2 as pm
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from epp.extproc import wire as w
from epp.plugins.producers.prefill_load import PrefillLoadProducer
from tests.helpers import until

from .harness import (
    BUFFERED,
    DEFAULT_CONFIG,
    FULL_DUPLEX,
    NONE,
    STREAMED,
    Harness,
    Recorder,
    endpoint,
    pipeline_from,
    request_body,
    request_headers,
    response_body,
    response_headers,
    streamed,
)

EPS = [endpoint("10.0.0.1", 8000), endpoint("10.0.0.2", 8000, queue=9)]

FIRST_BYTE_CONFIG = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: prefill-cost-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: prefill-cost-scorer
"""

LABELS = {"model_name": "m1", "target_model_name": "m1"}


def harness(recorder: Recorder, config: str = DEFAULT_CONFIG) -> Harness:
    return Harness(pipeline_from(config, extra_plugins=[recorder]), EPS)


def body(*, stream: bool, usage: bool = False) -> bytes:
    doc: dict[str, object] = {"model": "m1", "prompt": "hello world", "stream": stream}
    if usage:
        doc["stream_options"] = {"include_usage": True}
    return json.dumps(doc).encode()


async def route(h: Harness, rid: str, data: bytes, *, response_mode: int = NONE, headers=None):
    """A routing stream as the Envoy config we ship drives it: request headers, then the whole body."""
    s = h.stream()
    await s.send(
        request_headers(
            headers={"x-request-id": rid, **(headers or {})}, mode=BUFFERED, response_mode=response_mode
        )
    )
    await s.recv()  # the headers reply goes at once in BUFFERED mode
    await s.send(request_body(data, eos=True))
    (routed,) = await s.recv()
    assert routed.WhichOneof("response") == "request_body"
    return s


async def observer(h: Harness, rid: str):
    """An observer stream: Envoy's observability mode copies the request headers; nothing comes back."""
    s = h.stream()
    msg = request_headers(headers={"x-request-id": rid}, mode=NONE, response_mode=STREAMED)
    msg.observability_mode = True
    await s.send(msg)
    return s


def obs_body(chunk: bytes, eos: bool = False) -> pb.ProcessingRequest:
    msg = response_body(chunk, eos)
    msg.observability_mode = True
    return msg


def sse(doc: object) -> bytes:
    return b"data: " + json.dumps(doc).encode() + b"\n\n"


TOKEN = sse({"choices": [{"text": "a"}]})
USAGE = sse({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}})
DONE = b"data: [DONE]\n\n"


async def ended(s) -> bool:
    """The server ended the stream (an observer closes by ending its RPC)."""
    return await s.drain() == []


def override(reply: pb.ProcessingResponse) -> int | None:
    return reply.mode_override.response_body_mode if reply.HasField("mode_override") else None


# ---- the routing stream alone -------------------------------------------------------------------


async def test_nothing_needed_no_body_is_asked_for_and_the_response_completes_when_the_stream_ends() -> None:
    rec = Recorder()
    async with harness(rec) as h:
        s = await route(h, "r-none", body(stream=True))
        await s.send(response_headers(content_type="text/event-stream"))
        (rh,) = await s.recv()
        assert override(rh) is None  # the configured NONE stands: tokens never cross the EPP
        assert not rec.completed
        await s.close()  # Envoy ends the ext_proc stream with the HTTP request
        assert await s.drain() == []
        await until(lambda: len(rec.completed) == 1)
        assert rec.completed[0].complete and rec.completed[0].first_byte_at == 0.0
        assert h.sample("inference_objective_request_duration_seconds_count", LABELS) == 1
        assert h.sample("inference_objective_input_tokens_count", LABELS) == 0
        assert h.sample("inference_objective_response_sizes_count", LABELS) == 0  # size unknown
        assert h.sample("epp_response_body_total", {"path": "none"}) == 1
        assert h.sample("inference_objective_running_requests", {"model_name": "m1"}) == 0


async def test_usage_wanted_without_an_observer_asks_for_the_body_streamed() -> None:
    rec = Recorder()
    async with harness(rec) as h:
        s = await route(h, "r-stream", body(stream=True, usage=True))
        await s.send(response_headers(content_type="text/event-stream"))
        (rh,) = await s.recv()
        assert override(rh) == pm.ProcessingMode.STREAMED
        assert rh.mode_override.response_trailer_mode == pm.ProcessingMode.SKIP
        for chunk in (TOKEN, USAGE):
            await s.send(response_body(chunk))
            (r,) = await s.recv()
            assert r.WhichOneof("response") == "response_body" and not r.response_body.HasField("response")
        await s.send(response_body(DONE, eos=True))
        await s.recv()
        info = rec.completed[0]
        assert (info.prompt_tokens, info.completion_tokens) == (7, 3) and info.complete
        assert info.first_byte_at > 0
        await s.close()
        assert await s.drain() == []
        assert h.sample("inference_objective_output_tokens_sum", LABELS) == 3
        assert h.sample("inference_objective_response_sizes_sum", LABELS) == len(TOKEN + USAGE + DONE)
        assert h.sample("epp_response_body_total", {"path": "routing-stream"}) == 1


async def test_a_json_response_with_usage_is_asked_for_buffered() -> None:
    rec = Recorder()
    async with harness(rec) as h:
        s = await route(h, "r-json", body(stream=False))
        await s.send(response_headers(headers={"content-length": "64"}))
        (rh,) = await s.recv()
        assert override(rh) == pm.ProcessingMode.BUFFERED
        doc = b'{"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 2}}'
        await s.send(response_body(doc, eos=True))  # BUFFERED: the whole body in one message
        (r,) = await s.recv()
        assert r.WhichOneof("response") == "response_body"
        assert (rec.completed[0].prompt_tokens, rec.completed[0].completion_tokens) == (4, 2)
        s.cancel()


async def test_a_proxy_configured_to_stream_the_body_is_told_to_stop_when_nothing_needs_it() -> None:
    rec = Recorder()
    async with harness(rec) as h:
        s = await route(h, "r-streamed", body(stream=True), response_mode=STREAMED)
        await s.send(response_headers(content_type="text/event-stream"))
        (rh,) = await s.recv()
        assert override(rh) == pm.ProcessingMode.NONE
        # a proxy that ignores the override (no allow_mode_override) still gets every chunk back untouched
        await s.send(response_body(TOKEN))
        (r,) = await s.recv()
        assert r == pb.ProcessingResponse(response_body=pb.BodyResponse())
        await s.send(response_body(DONE, eos=True))
        await s.recv()
        assert rec.completed[0].complete
        s.cancel()


# ---- with an observer ---------------------------------------------------------------------------


async def test_observer_reads_first_byte_and_usage_and_the_routing_stream_takes_no_body() -> None:
    rec = Recorder()
    async with harness(rec) as h:
        obs = await observer(h, "r-obs")  # first, as the shipped Envoy config orders the filters
        s = await route(h, "r-obs", body(stream=True, usage=True))
        await s.send(response_headers(content_type="text/event-stream"))
        (rh,) = await s.recv()
        assert override(rh) is None  # no body for the routing stream: the observer has it
        for chunk in (TOKEN, USAGE):
            await obs.send(obs_body(chunk))
        await obs.send(obs_body(DONE, eos=True))
        assert await ended(obs)  # the observer ends its stream once the body ended
        await s.close()
        assert await s.drain() == []
        await until(lambda: h.sample("inference_objective_output_tokens_sum", LABELS) == 3)
        info = rec.completed[0]
        assert info.complete and info.first_byte_at > 0 and info.body_bytes == len(TOKEN + USAGE + DONE)
        assert h.sample("inference_objective_request_ttft_seconds_count", LABELS) == 1
        assert h.sample("inference_objective_input_tokens_sum", LABELS) == 7
        assert h.sample("inference_objective_response_sizes_sum", LABELS) == len(TOKEN + USAGE + DONE)
        assert h.sample("epp_response_body_total", {"path": "observer"}) == 1


async def test_usage_read_after_the_routing_stream_ended_is_still_recorded_once() -> None:
    rec = Recorder()
    async with harness(rec) as h:
        obs = await observer(h, "r-late")
        s = await route(h, "r-late", body(stream=True, usage=True))
        await s.send(response_headers(content_type="text/event-stream"))
        await s.recv()
        await obs.send(obs_body(TOKEN))
        await s.close()  # the routing stream ends first (Envoy sends the observer's copy after it)
        await asyncio.sleep(0.05)
        assert not rec.completed  # waiting for the observer to say whether the body ended
        await obs.send(obs_body(USAGE + DONE, eos=True))
        assert await ended(obs)
        assert await s.drain() == []
        await until(lambda: h.sample("inference_objective_output_tokens_count", LABELS) == 1)
        assert rec.completed[0].complete and rec.completed[0].completion_tokens == 3
        assert h.sample("inference_objective_request_duration_seconds_count", LABELS) == 1


@pytest.mark.parametrize("observer_ends_first", [False, True])
async def test_a_client_gone_mid_stream_is_no_completion_when_the_observer_never_saw_the_end(
    observer_ends_first: bool,
) -> None:
    """Envoy drops the observer stream without an end of body, before or after it ends the routing one."""
    rec = Recorder()
    async with harness(rec) as h:
        obs = await observer(h, "r-gone")
        s = await route(h, "r-gone", body(stream=True, usage=True))
        await s.send(response_headers(content_type="text/event-stream"))
        await s.recv()
        await obs.send(obs_body(TOKEN))
        if observer_ends_first:
            obs.cancel()
            ctx = h.server.servicer.registry.find("r-gone")
            assert ctx is not None and ctx.observed
            await until(lambda: not ctx.observer_active)
            await s.close()
        else:
            await s.close()
            obs.cancel()
        await until(lambda: len(rec.completed) == 1)
        assert not rec.completed[0].complete
        assert h.sample("inference_objective_request_duration_seconds_count", LABELS) == 0
        assert h.sample("inference_objective_running_requests", {"model_name": "m1"}) == 0


async def test_observer_stops_after_the_first_byte_when_no_usage_is_wanted() -> None:
    rec = Recorder()
    async with harness(rec, FIRST_BYTE_CONFIG) as h:
        producer = next(p for p in h.holder.current.plugins.values() if isinstance(p, PrefillLoadProducer))
        obs = await observer(h, "r-first")
        s = await route(h, "r-first", body(stream=True))
        (key,) = producer.ledger.endpoints()
        assert producer.ledger.load(key).pending_requests == 1
        await s.send(response_headers(content_type="text/event-stream"))
        (rh,) = await s.recv()
        assert override(rh) is None  # the first byte comes from the observer, not the critical path
        await obs.send(obs_body(TOKEN))
        assert await ended(obs)  # one body message was all it needed
        load = producer.ledger.load(key)
        assert (load.pending_requests, load.decoding_requests) == (
            0,
            1,
        )  # the prefill ended at the first byte
        await s.close()
        assert await s.drain() == []
        await until(lambda: len(rec.completed) == 1)
        assert producer.ledger.endpoints() == frozenset()


async def test_first_byte_wanted_without_an_observer_takes_the_body() -> None:
    rec = Recorder()
    async with harness(rec, FIRST_BYTE_CONFIG) as h:
        s = await route(h, "r-nobs", body(stream=True))
        await s.send(response_headers(content_type="text/event-stream"))
        (rh,) = await s.recv()
        assert override(rh) == pm.ProcessingMode.STREAMED
        s.cancel()


async def test_an_observer_with_an_unknown_or_shared_request_id_ends_at_its_first_body_message() -> None:
    rec = Recorder()
    async with harness(rec) as h:
        obs = await observer(h, "nobody")
        await obs.send(obs_body(TOKEN))
        assert await ended(obs)
        one = await route(h, "dup", body(stream=True, usage=True))
        two = await route(h, "dup", body(stream=True, usage=True))
        obs = await observer(h, "dup")
        await obs.send(obs_body(TOKEN))
        assert await ended(obs)
        await one.send(response_headers(content_type="text/event-stream"))
        (rh,) = await one.recv()
        assert override(rh) == pm.ProcessingMode.STREAMED  # no observer: the routing stream reads usage
        one.cancel()
        two.cancel()
        await until(lambda: len(rec.completed) == 2)
        assert len(h.server.servicer.registry) == 0  # nothing left behind


async def test_a_rewritten_model_is_restored_by_the_routing_stream_and_the_observer_steps_back() -> None:
    rec = Recorder()
    async with harness(rec) as h:
        obs = await observer(h, "r-rw")
        s = await route(h, "r-rw", body(stream=True), headers={"x-gateway-model-name-rewrite": "m1-lora"})
        await s.send(response_headers(content_type="text/event-stream"))
        (rh,) = await s.recv()
        assert override(rh) == pm.ProcessingMode.STREAMED
        await obs.send(obs_body(TOKEN))
        assert await ended(obs)
        chunk = sse({"model": "m1-lora", "choices": [{"text": "a"}]})
        await s.send(response_body(chunk[:20]))
        await s.send(response_body(chunk[20:], eos=True))
        first, second = await s.recv(2)
        out = (
            first.response_body.response.body_mutation.body + second.response_body.response.body_mutation.body
        )
        assert out == sse({"model": "m1", "choices": [{"text": "a"}]})  # restored across the split
        s.cancel()


async def test_full_duplex_routing_streams_never_hand_the_body_to_an_observer() -> None:
    rec = Recorder()
    async with harness(rec) as h:
        obs = await observer(h, "r-fd")
        s = h.stream()
        await s.send(request_headers(headers={"x-request-id": "r-fd"}, mode=FULL_DUPLEX))
        await s.send(request_body(body(stream=True, usage=True), eos=True))
        await s.recv(2)
        await obs.send(obs_body(TOKEN))
        assert await ended(obs)
        await s.send(response_headers(content_type="text/event-stream"))
        await s.recv()
        await s.send(response_body(TOKEN + USAGE + DONE, eos=True))
        (r,) = await s.recv()
        assert streamed(r) == (TOKEN + USAGE + DONE, True)
        assert rec.completed[0].completion_tokens == 3
        assert h.sample("epp_response_body_total", {"path": "full-duplex"}) == 1
        s.cancel()


def test_the_hand_encoded_mode_override_is_what_protobuf_encodes() -> None:
    reply = w.headers_reply(w.RESPONSE, [("x-a", b"1")], [])
    for mode in (pm.ProcessingMode.NONE, pm.ProcessingMode.STREAMED, pm.ProcessingMode.BUFFERED):
        got = pb.ProcessingResponse.FromString(w.with_response_mode(reply, mode))
        want = pb.ProcessingResponse.FromString(reply)
        want.mode_override.response_body_mode = mode
        want.mode_override.response_trailer_mode = pm.ProcessingMode.SKIP
        assert got == want


async def test_a_first_byte_trailing_the_end_of_the_routing_stream_still_counts_for_ttft() -> None:
    """Envoy ends the routing stream and sends the observer's copy of the body around the same time: with a
    one-chunk response the routing stream often ends first. The response completes once the observer saw
    the first byte, so the TTFT is there."""
    rec = Recorder()
    async with harness(rec) as h:
        obs = await observer(h, "r-trail")
        s = await route(h, "r-trail", body(stream=True))  # no usage asked: the observer wants one chunk
        await s.send(response_headers(content_type="text/event-stream"))
        await s.recv()
        await s.close()
        assert await s.drain() == []
        await asyncio.sleep(0.05)
        assert not rec.completed  # waiting for the observer's first byte
        await obs.send(obs_body(TOKEN + DONE, eos=True))
        assert await ended(obs)
        await until(lambda: len(rec.completed) == 1)
        assert rec.completed[0].complete and rec.completed[0].first_byte_at > 0
        assert h.sample("inference_objective_request_ttft_seconds_count", LABELS) == 1


# ---- the routing stream shown nothing of the response ----------------------------------------------


async def waiting_observer(h: Harness, rid: str):
    """An observer stream the EPP has seen (waiting for its routing stream), as Envoy orders them."""
    obs = await observer(h, rid)
    await until(lambda: len(h.server.servicer.registry) == 1)
    return obs


async def ask_to_route(h: Harness, rid: str, data: bytes, headers=None):
    """A routing stream as above, returning the request-headers reply too."""
    s = h.stream()
    await s.send(
        request_headers(headers={"x-request-id": rid, **(headers or {})}, mode=BUFFERED, response_mode=NONE)
    )
    (headers_reply,) = await s.recv()
    await s.send(request_body(data, eos=True))
    (routed,) = await s.recv()
    assert routed.WhichOneof("response") == "request_body"
    return s, headers_reply


def obs_response_headers(status: int = 200, upstream: str = "") -> pb.ProcessingRequest:
    """Response headers as the observer filter sees them, the served endpoint under its own name."""
    msg = response_headers(status, content_type="text/event-stream")
    if upstream:
        msg.attributes["epp.observer"].update({"upstream.address": upstream})
    msg.observability_mode = True
    return msg


def skips_response(reply: pb.ProcessingResponse) -> bool:
    mode = reply.mode_override
    return reply.HasField("mode_override") and (
        mode.response_header_mode,
        mode.response_body_mode,
        mode.response_trailer_mode,
        mode.request_body_mode,
    ) == (pm.ProcessingMode.SKIP, pm.ProcessingMode.NONE, pm.ProcessingMode.SKIP, pm.ProcessingMode.BUFFERED)


async def test_with_an_observer_the_routing_stream_is_shown_nothing_of_the_response() -> None:
    rec = Recorder()
    async with harness(rec, FIRST_BYTE_CONFIG) as h:
        producer = next(p for p in h.holder.current.plugins.values() if isinstance(p, PrefillLoadProducer))
        obs = await waiting_observer(h, "r-skip")
        s, headers_reply = await ask_to_route(h, "r-skip", body(stream=True, usage=True))
        assert skips_response(headers_reply)
        (key,) = producer.ledger.endpoints()
        await obs.send(obs_response_headers(upstream=key))
        await until(lambda: len(rec.received) == 1)
        assert (rec.received[0].status, rec.received[0].served_endpoint) == (200, key)
        await obs.send(obs_body(TOKEN))
        await until(lambda: producer.ledger.load(key).decoding_requests == 1)  # the prefill ended
        await obs.send(obs_body(USAGE + DONE, eos=True))
        assert await ended(obs)
        await s.close()  # Envoy ends the routing stream when the request is over
        assert await s.drain() == []
        await until(lambda: len(rec.completed) == 1)
        info = rec.completed[0]
        assert info.complete and info.first_byte_at > 0 and info.completion_tokens == 3
        assert producer.ledger.endpoints() == frozenset()
        assert h.sample("inference_objective_request_ttft_seconds_count", LABELS) == 1
        assert h.sample("epp_response_body_total", {"path": "observer-only"}) == 1


async def test_a_model_server_error_seen_by_the_observer_alone_is_an_error() -> None:
    rec = Recorder()
    async with harness(rec) as h:
        obs = await waiting_observer(h, "r-503")
        s, headers_reply = await ask_to_route(h, "r-503", body(stream=True))
        assert skips_response(headers_reply)
        await obs.send(obs_response_headers(503))
        await obs.send(obs_body(b"overloaded", eos=True))
        assert await ended(obs)
        await s.close()
        await until(lambda: len(rec.completed) == 1)
        assert rec.completed[0].status == 503
        errors = {"error_code": "ModelServerError", "model_name": "m1", "target_model_name": "m1"}
        assert h.sample("inference_objective_request_error_total", errors) == 1


async def test_the_routing_stream_keeps_the_response_when_it_may_have_to_write_to_it() -> None:
    cases = [
        (Recorder(), False, {}),  # no observer
        (Recorder(set_header=("x-hook", "1")), True, {}),  # a response hook sets a header
        (Recorder(metadata={"ns": {"k": "v"}}), True, {}),  # ... or dynamic metadata
        (Recorder(), True, {"x-gateway-model-name-rewrite": "m1-lora"}),  # a model name to restore
    ]
    for rec, observed, headers in cases:
        async with harness(rec) as h:
            if observed:
                await waiting_observer(h, "r-keep")
            s, headers_reply = await ask_to_route(h, "r-keep", body(stream=True), headers)
            assert not headers_reply.HasField("mode_override"), (rec, observed, headers)
            s.cancel()


def test_the_hand_encoded_override_without_a_response_path_is_what_protobuf_encodes() -> None:
    reply = w.headers_reply(w.REQUEST, [("x-a", b"1")], ["x-b"])
    got = pb.ProcessingResponse.FromString(w.without_response_path(reply))
    want = pb.ProcessingResponse.FromString(reply)
    mode = want.mode_override
    mode.request_body_mode = pm.ProcessingMode.BUFFERED
    mode.request_trailer_mode = pm.ProcessingMode.SKIP
    mode.response_header_mode = pm.ProcessingMode.SKIP
    mode.response_body_mode = pm.ProcessingMode.NONE
    mode.response_trailer_mode = pm.ProcessingMode.SKIP
    assert got == want
    assert w.without_response_path(reply) == want.SerializeToString()  # byte for byte, field order too
