"""GIE conformance request cases at the ext_proc level (reference protocol.md §8.1, tests 10-12).

The EPP runs the conformance plugins (`header-based-testing-filter`, `destination-endpoint-served-verifier`)
from a real config; the client speaks like a gateway that honours the comma list and reports `-served`.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from .harness import (
    CONFORMANCE_CONFIG,
    Harness,
    endpoint,
    json_body,
    pipeline_from,
    request_body,
    request_headers,
    response_body,
    response_headers,
    set_headers,
)

PODS = [endpoint("10.0.0.10", 3000), endpoint("10.0.0.11", 3000), endpoint("10.0.0.12", 3000)]
V6_PODS = [endpoint("fd00::10", 3000), endpoint("fd00::11", 3000), endpoint("10.0.0.12", 3000)]
BODY = json_body(model="conformance-fake-model", prompt="Write as if you were a critic: San Francisco")


async def destination(h: Harness, selection: str) -> list[str]:
    replies = await h.exchange(
        [
            request_headers(headers={"test-epp-endpoint-selection": selection}),
            request_body(BODY, eos=True),
        ]
    )
    head = replies[0]
    assert head.WhichOneof("response") == "request_headers", head
    return set_headers(head)["x-gateway-destination-endpoint"].split(",")


@pytest.mark.parametrize(
    ("pods", "selection", "allowed"),
    [
        (PODS, "10.0.0.11", {"10.0.0.11:3000"}),
        (PODS, "10.0.0.10,10.0.0.11", {"10.0.0.10:3000", "10.0.0.11:3000"}),
        (PODS, "10.0.0.10:3000, 10.0.0.12:9", {"10.0.0.10:3000", "10.0.0.12:3000"}),
        (PODS, "10.0.0.10,10.0.0.11,10.0.0.12", {p.address for p in PODS}),
        (V6_PODS, "[fd00::11]:3000", {"[fd00::11]:3000"}),
        (V6_PODS, "fd00::10,[fd00:0::11]", {"[fd00::10]:3000", "[fd00::11]:3000"}),
        (V6_PODS, "[fd00::10],10.0.0.12", {"[fd00::10]:3000", "10.0.0.12:3000"}),
    ],
)
async def test_gateway_following_epp_routing(pods, selection: str, allowed: set[str]) -> None:
    """Test 10: 100 requests at concurrency 10; every endpoint returned is a selected one, and the list
    names each selected endpoint exactly once (primary first, then fallbacks)."""
    async with Harness(pipeline_from(CONFORMANCE_CONFIG), pods) as h:
        sem = asyncio.Semaphore(10)

        async def one() -> list[str]:
            async with sem:
                return await destination(h, selection)

        results = await asyncio.gather(*(one() for _ in range(100)))
        primaries = set()
        for dest in results:
            assert set(dest) == allowed and len(dest) == len(allowed)
            primaries.add(dest[0])
        # no scorer: ties are broken at random, so with several selected pods the primary varies
        if len(allowed) > 1:
            assert len(primaries) > 1


async def test_unselected_request_gets_503_not_a_wrong_pod() -> None:
    async with Harness(pipeline_from(CONFORMANCE_CONFIG), PODS) as h:
        replies = await h.exchange(
            [
                request_headers(headers={"test-epp-endpoint-selection": "10.9.9.9"}),
                request_body(BODY, eos=True),
            ]
        )
        assert replies[0].immediate_response.status.code == 503


async def test_data_parallel_ranks_of_a_selected_ip_are_all_candidates() -> None:
    """Test 11: one pod with several target ports; selecting its IP keeps every rank."""
    ranks = [endpoint("10.0.0.10", 3000), endpoint("10.0.0.10", 3002), endpoint("10.0.0.11", 3000)]
    async with Harness(pipeline_from(CONFORMANCE_CONFIG), ranks) as h:
        dest = await destination(h, "10.0.0.10")
        assert set(dest) == {"10.0.0.10:3000", "10.0.0.10:3002"}


@pytest.mark.parametrize("source", ["metadata", "attribute"])
async def test_gateway_destination_endpoint_served(source: str) -> None:
    """Test 12: the served endpoint reported by the proxy comes back in x-conformance-test-served-endpoint."""
    async with Harness(pipeline_from(CONFORMANCE_CONFIG), PODS) as h:
        for _ in range(5):
            s = h.stream()
            await s.send(request_headers(headers={"test-epp-endpoint-selection": "10.0.0.10,10.0.0.11"}))
            await s.send(request_body(BODY, eos=True))
            head, _ = await s.recv(2)
            listed = set_headers(head)["x-gateway-destination-endpoint"].split(",")
            served = random.choice(listed)  # e.g. the primary failed and the proxy used a fallback
            kw = {"served": served} if source == "metadata" else {"upstream_address": served}
            await s.send(response_headers(**kw))
            (rh,) = await s.recv()
            assert set_headers(rh) == {"x-conformance-test-served-endpoint": served}
            await s.send(response_body(b"{}", eos=True))
            await s.recv()
            await s.close()
            assert await s.drain() == []


async def test_fallback_order_is_primary_first_then_by_score() -> None:
    """The comma list is ordered: the primary, then fallbacks in the picker's order (best score first)."""
    config = CONFORMANCE_CONFIG.replace(
        "- type: max-score-picker", "- type: queue-scorer\n- type: max-score-picker"
    ).replace(
        "  - pluginRef: max-score-picker", "  - pluginRef: queue-scorer\n  - pluginRef: max-score-picker"
    )
    pods = [endpoint("10.0.0.10", 3000, queue=10), endpoint("10.0.0.11", 3000, queue=0),
            endpoint("10.0.0.12", 3000, queue=5)]  # fmt: skip
    async with Harness(pipeline_from(config), pods) as h:
        for _ in range(5):
            dest = await destination(h, "10.0.0.10,10.0.0.11,10.0.0.12")
            assert dest == ["10.0.0.11:3000", "10.0.0.12:3000", "10.0.0.10:3000"]
