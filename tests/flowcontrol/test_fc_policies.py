"""Flow-control policies and the flow queue: ordering keys, fairness picks, usage limits, removal."""

from __future__ import annotations

import math

import pytest

from epp.flowcontrol.band import BandSettings, PriorityBand
from epp.flowcontrol.queue import FlowQueue
from epp.framework.flowcontrol import FlowKey, QueueItem
from epp.framework.handle import SimpleHandle
from epp.plugins.flowcontrol import PLUGIN_TYPES
from epp.plugins.flowcontrol.fairness import GlobalStrictFairness, RoundRobinFairness
from epp.plugins.flowcontrol.ordering import EdfOrdering, FcfsOrdering, SloDeadlineOrdering
from epp.plugins.flowcontrol.usage_limit import STATIC_USAGE_LIMIT_POLICY, StaticUsageLimit

from .fc_helpers import req

_seq = iter(range(1, 1_000_000))


def item(
    rid: str, t: float, *, flow: str = "f", ttl: float | None = None, headers=None, size=10
) -> QueueItem:
    r = req(rid, flow=flow, size=size, headers=headers or {})
    return QueueItem(
        request=r, key=FlowKey(flow, 0), size_bytes=size, enqueue_time=t, seq=next(_seq), ttl=ttl
    )


def drain(queue: FlowQueue) -> list[str]:
    out = []
    while (it := queue.pop()) is not None:
        out.append(it.request.request_id)
    return out


def test_plugin_types_build_with_their_names():
    handle = SimpleHandle()
    built = {t.type_name: t.build("x", None, handle) for t in PLUGIN_TYPES}
    assert set(built) == {
        "global-strict-fairness-policy",
        "round-robin-fairness-policy",
        "fcfs-ordering-policy",
        "edf-ordering-policy",
        "slo-deadline-ordering-policy",
        "static-usage-limit-policy",
    }
    for type_name, plugin in built.items():
        assert plugin.typed_name.type == type_name
        assert plugin.typed_name.name == "x"


def test_static_usage_limit_params():
    handle = SimpleHandle()
    assert STATIC_USAGE_LIMIT_POLICY.build("s", {"threshold": 0.7}, handle).threshold == 0.7
    with pytest.raises(ValueError, match="threshold"):
        STATIC_USAGE_LIMIT_POLICY.build("s", {"threshold": 0}, handle)
    with pytest.raises(ValueError, match="ceiling"):
        STATIC_USAGE_LIMIT_POLICY.build("s", {"ceiling": 1}, handle)
    assert StaticUsageLimit(threshold=0.9).compute_limits(0.5, [10, 0, -1]) == {10: 0.9, 0: 0.9, -1: 0.9}


def test_fcfs_queue_order_is_enqueue_time():
    q = FlowQueue("f")
    order = FcfsOrdering()
    for rid, t in [("b", 2.0), ("a", 1.0), ("c", 3.0)]:
        it = item(rid, t)
        it.sort_key = order.sort_key(it)
        q.push(it)
    assert drain(q) == ["a", "b", "c"]


def test_edf_orders_by_deadline_then_fcfs_and_no_ttl_last():
    order = EdfOrdering()
    q = FlowQueue("f")
    specs = [
        ("late", 0.0, 10.0),
        ("none", 0.5, None),
        ("soon", 1.0, 2.0),
        ("tie-b", 2.0, 1.0),
        ("tie-a", 1.0, 2.0),
    ]
    for rid, t, ttl in specs:
        it = item(rid, t, ttl=ttl)
        it.sort_key = order.sort_key(it)
        q.push(it)
    # deadlines: late 10, none inf, soon 3, tie-b 3, tie-a 3 (ties broken by enqueue time)
    assert drain(q) == ["soon", "tie-a", "tie-b", "late", "none"]
    assert order.sort_key(item("x", 5.0))[0] == math.inf


@pytest.mark.parametrize(
    "header, deadline",
    [("250", 10.25), ("0", 10.0), ("abc", math.inf), ("-5", math.inf), ("nan", math.inf), (None, math.inf)],
)
def test_slo_deadline_ordering(header, deadline):
    headers = {} if header is None else {"x-slo-ttft-ms": header}
    assert SloDeadlineOrdering().sort_key(item("x", 10.0, headers=headers))[0] == pytest.approx(deadline)


def test_queue_removal_is_immediate_and_compacts():
    q = FlowQueue("f")
    order = FcfsOrdering()
    items = []
    for i in range(200):
        it = item(str(i), float(i), size=5)
        it.sort_key = order.sort_key(it)
        q.push(it)
        items.append(it)
    for it in items[:150]:
        assert q.remove(it)
    assert not q.remove(items[0])  # already gone
    assert len(q) == 50
    assert q.byte_size == 250
    assert q.heap_entries <= len(q) + 33  # dead entries do not pile up
    assert drain(q) == [str(i) for i in range(150, 200)]
    assert q.byte_size == 0 and q.heap_entries == 0


def test_rekey_reorders_live_items():
    q = FlowQueue("f")
    a, b = item("a", 1.0, ttl=10.0), item("b", 2.0, ttl=1.0)
    for it in (a, b):
        it.sort_key = FcfsOrdering().sort_key(it)
        q.push(it)
    q.rekey(EdfOrdering().sort_key)
    assert drain(q) == ["b", "a"]


def band_with(fairness) -> PriorityBand:
    return PriorityBand(BandSettings(0, fairness, FcfsOrdering()), listed=True)


def test_global_strict_serves_the_oldest_head_across_flows():
    band = band_with(GlobalStrictFairness())
    for rid, flow, t in [("x1", "x", 1.0), ("x2", "x", 2.0), ("y1", "y", 1.5), ("z1", "z", 0.5)]:
        band.push(item(rid, t, flow=flow), t)
    order = [band.pop_next().request.request_id for _ in range(4)]
    assert order == ["z1", "x1", "y1", "x2"]
    assert band.pop_next() is None and band.count == 0 and band.flows == {}


def test_round_robin_takes_turns_in_flow_id_order_and_skips_empty_flows():
    band = band_with(RoundRobinFairness())
    t = 0.0
    for flow, n in [("b", 3), ("a", 3), ("c", 1)]:
        for i in range(n):
            t += 1
            band.push(item(f"{flow}{i}", t, flow=flow), t)
    order = [band.pop_next().request.request_id for _ in range(7)]
    assert order == ["a0", "b0", "c0", "a1", "b1", "a2", "b2"]


def test_round_robin_cursor_survives_flows_coming_and_going():
    band = band_with(RoundRobinFairness())
    band.push(item("a0", 1, flow="a"), 1)
    band.push(item("c0", 2, flow="c"), 2)
    assert band.pop_next().request.request_id == "a0"  # flow a is now empty and dropped
    band.push(item("b0", 3, flow="b"), 3)  # a new flow sorting after the cursor
    band.push(item("a1", 4, flow="a"), 4)
    assert [band.pop_next().request.request_id for _ in range(3)] == ["b0", "c0", "a1"]


def test_band_capacity_problems():
    band = PriorityBand(
        BandSettings(5, GlobalStrictFairness(), FcfsOrdering(), max_bytes=100, max_requests=2), listed=True
    )
    assert band.capacity_problem(100) is None
    assert "bytes" in band.capacity_problem(101)
    band.push(item("a", 1, size=60), 1)
    assert "bytes" in band.capacity_problem(41)
    band.push(item("b", 2, size=10), 2)
    assert "2/2 requests" in band.capacity_problem(1)
