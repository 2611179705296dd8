"""The two channels of `--workers` in one process: the state mesh between workers (real ZeroMQ over ipc://
in a temporary directory) and the fleet picture the pod process sends them."""

from __future__ import annotations

import dataclasses
import shutil
import tempfile

import pytest

from epp.builtins import builtin_registry
from epp.config import build_pipeline, load_config
from epp.datalayer.datastore import Datastore, ModelRewriteRule, RewriteTarget
from epp.framework.cycle import CycleState
from epp.framework.types import (
    Endpoint,
    EndpointMetrics,
    InferenceRequest,
    ProfileRunResult,
    SchedulingResult,
)
from epp.plugins.producers.approx_prefix import ApproxPrefixCacheProducer
from epp.scheduling.pipeline import PipelineHolder
from epp.workers import control as c
from epp.workers.codec import decode_endpoint, unpack
from epp.workers.picture import PicturePublisher
from epp.workers.statebus import StateBus
from epp.workers.worker import apply_picture_message
from tests.helpers import until

CONFIG = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: prefix-cache-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: prefix-cache-scorer
"""


def _holder(text: str = CONFIG) -> PipelineHolder:
    registry = builtin_registry()
    return PipelineHolder(build_pipeline(load_config(text, registry=registry), registry))


def _producer(holder: PipelineHolder) -> ApproxPrefixCacheProducer:
    return next(p for p in holder.current.plugins.values() if isinstance(p, ApproxPrefixCacheProducer))


EPS = [
    Endpoint(key=f"10.0.0.{i}:8000", ip=f"10.0.0.{i}", port=8000, metrics=EndpointMetrics(update_time=1.0))
    for i in (1, 2)
]


def _route(producer: ApproxPrefixCacheProducer, rid: str, target: Endpoint) -> InferenceRequest:
    req = InferenceRequest(request_id=rid, model="m", target_model="m", prefix_material=b"shared " * 600)
    cycle = CycleState()
    producer.prepare_data(cycle, req, EPS)
    producer.pre_request(cycle, req, SchedulingResult("default", {"default": ProfileRunResult((target,))}))
    return req


@pytest.fixture
def short_dir():
    d = tempfile.mkdtemp(prefix="epp-t-")  # ipc paths must stay short
    yield d
    shutil.rmtree(d, ignore_errors=True)


async def test_a_decision_of_one_worker_reaches_the_other_within_milliseconds(short_dir) -> None:
    holders = [_holder(), _holder()]
    seen: list[tuple[str, float, int]] = []
    buses = [
        StateBus(h, directory=short_dir, slot=i, incarnation=1, slots=2, on_message=lambda *a: seen.append(a))
        for i, h in enumerate(holders)
    ]
    for bus in buses:
        bus.start()
    try:
        a, b = (_producer(h) for h in holders)
        b.endpoints_changed(frozenset(e.key for e in EPS))

        # ZeroMQ connects asynchronously: keep deciding until the first message gets through
        def shared() -> bool:
            if b.index.size():
                return True
            _route(a, "r", EPS[1])
            buses[0].notify()
            return False

        await until(shared, 5, what="a shared decision")
        probe = InferenceRequest(
            request_id="p", model="m", target_model="m", prefix_material=b"shared " * 600
        )
        assert b.match(probe, EPS).scores == {"10.0.0.2:8000": 1.0}
        assert buses[1].received >= 1 and buses[0].sent >= buses[1].received
        assert ("received", pytest.approx(0.0, abs=0.5), 1) in [
            (d, lag, n) for d, lag, n in seen if d == "received"
        ]
        # a worker configured differently (another spec) ignores the part it cannot use
        other = _holder(
            CONFIG.replace(
                "- type: prefix-cache-scorer",
                "- type: prefix-cache-scorer\n  parameters: {blockSizeTokens: 32}",
            )
        )
        holders[1].swap(other.current)
        before = buses[1].received
        _route(a, "r2", EPS[0])
        buses[0].notify()
        await until(lambda: buses[1].received > before)
        assert _producer(holders[1]).index.size() == 0
        assert seen[-1][0] == "ignored"
    finally:
        for bus in buses:
            bus.close()


async def test_the_fleet_picture_reaches_a_worker_copy() -> None:
    pod = Datastore()
    sent: list[list] = []
    publisher = PicturePublisher(pod, lambda data: sent.append(unpack(data)), delay=0.001)
    publisher.start()
    pod.set_endpoints(EPS)
    pod.set_objectives({"critical": 10})
    rules = (ModelRewriteRule("r", ("m",), (RewriteTarget("m2", 1),)),)
    pod.set_rewrite_rules(rules)
    pod.mark_synced()
    await until(lambda: any(m[0] == c.SYNCED for m in sent))
    copy = Datastore()

    def apply(message: list) -> None:
        assert apply_picture_message(copy, message), message[0]

    for m in sent:
        apply(m)
    assert copy.snapshot() == pod.snapshot() and copy.synced
    assert copy.objectives == {"critical": 10} and copy.rewrite_rules == rules
    # a scrape changes one endpoint's metrics: only that endpoint travels
    sent.clear()
    pod.update_metrics(EPS[0].key, EndpointMetrics(waiting_queue_size=5, update_time=2.0))
    await until(lambda: bool(sent))
    assert [m[0] for m in sent] == [c.UPDATE] and len(sent[0][1]) == 1
    for m in sent:
        apply(m)
    assert copy.snapshot() == pod.snapshot()
    # new labels (same members): the whole membership travels
    sent.clear()
    pod.upsert(dataclasses.replace(pod.get(EPS[0].key), labels={"role": "decode"}))
    await until(lambda: bool(sent))
    assert [m[0] for m in sent] == [c.ENDPOINTS]
    for m in sent:
        apply(m)
    assert copy.snapshot() == pod.snapshot()
    # an endpoint leaves: the whole membership travels
    sent.clear()
    pod.remove(EPS[1].key)
    await until(lambda: bool(sent))
    for m in sent:
        apply(m)
    assert copy.keys() == frozenset({EPS[0].key})
    # a new worker's snapshot is the picture as it is now
    snap = publisher.snapshot()
    assert [decode_endpoint(v) for v in snap["endpoints"]] == list(pod.snapshot())
    fresh = Datastore()
    apply_picture_message(fresh, [c.SNAPSHOT, snap])
    assert fresh.snapshot() == pod.snapshot() and fresh.synced and fresh.rewrite_rules == rules
