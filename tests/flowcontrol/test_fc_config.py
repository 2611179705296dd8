"""Flow control and detectors from real EndpointPickerConfig documents (loader + pipeline builder)."""

from __future__ import annotations

import asyncio

import pytest

from epp.builtins import builtin_registry, default_flow_policies
from epp.config import build_pipeline, load_config
from epp.datalayer.datastore import Datastore
from epp.errors import ConfigError, RequestError
from epp.flowcontrol.admission import FlowControlAdmission
from epp.framework.cycle import CycleState
from epp.framework.types import Endpoint, InferenceRequest, ProfileRunResult, ResponseInfo, SchedulingResult
from epp.plugins.flowcontrol.fairness import RoundRobinFairness
from epp.plugins.flowcontrol.ordering import EdfOrdering
from epp.plugins.saturation.concurrency import ConcurrencyDetector
from epp.plugins.saturation.utilization import UtilizationDetector
from tests.helpers import until

HEAD = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"

FLOW_CONFIG = (
    HEAD
    + """
featureGates: [flowControl]
plugins:
- type: queue-scorer
- name: rr
  type: round-robin-fairness-policy
- type: edf-ordering-policy
- name: limit
  type: static-usage-limit-policy
  parameters: {threshold: 0.9}
- type: concurrency-detector
  parameters: {maxConcurrency: 2, hysteresis: 0}
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: queue-scorer
saturationDetector: {pluginRef: concurrency-detector}
flowControl:
  maxRequests: 3
  defaultRequestTTL: 5s
  usageLimitPolicyPluginRef: limit
  defaultPriorityBand: {fairnessPolicyRef: rr}
  priorityBands:
  - {priority: 10, orderingPolicyRef: edf-ordering-policy, maxRequests: 1}
"""
)


def pipeline_for(text: str):
    registry = builtin_registry()
    return build_pipeline(load_config(text, registry=registry), registry)


def test_default_config_uses_the_utilization_detector():
    p = pipeline_for(HEAD + "plugins:\n- type: queue-scorer\n")
    assert isinstance(p.saturation_detector, UtilizationDetector)
    assert "flowControl" not in p.feature_gates


def test_inline_v12_thresholds_configure_the_utilization_detector():
    p = pipeline_for(
        HEAD + "plugins:\n- type: queue-scorer\nsaturationDetector:\n  queueDepthThreshold: 9\n"
        "  metricsStalenessThreshold: 500ms\n"
    )
    det = p.saturation_detector
    assert isinstance(det, UtilizationDetector)
    assert det.queue_threshold == 9 and det.staleness == 0.5


def test_bad_detector_parameters_are_config_errors():
    with pytest.raises(ConfigError) as info:
        pipeline_for(
            HEAD + "plugins:\n- type: utilization-detector\n  parameters: {kvCacheUtilThreshold: 2}\n"
            "saturationDetector: {pluginRef: utilization-detector}\n"
        )
    assert "kvCacheUtilThreshold" in str(info.value)


async def test_flow_control_config_end_to_end_through_admission():
    p = pipeline_for(FLOW_CONFIG)
    det = p.saturation_detector
    assert isinstance(det, ConcurrencyDetector)
    producer = p.plugins["inflight-load-producer"]  # created because the detector consumes InFlightLoad
    assert producer in p.pre_request and producer in p.response_complete

    ds = Datastore()
    ep = Endpoint(key="a", ip="127.0.0.1", port=9001)
    ds.set_endpoints([ep])
    adm = FlowControlAdmission(ds, 2.0, default_policies=default_flow_policies)
    cands = ds.candidates(2.0)

    # simulate two scheduled, in-flight requests: concurrency 2/2 -> saturated
    result = SchedulingResult("default", {"default": ProfileRunResult((ep,))})
    inflight = []
    for i in range(2):
        r = InferenceRequest(request_id=f"run{i}", model="m", target_model="m")
        cycle = CycleState()
        producer.pre_request(cycle, r, result)
        inflight.append((cycle, r))
    assert det.saturation(cands, 0.0) == 1.0

    def request(rid: str, priority: int = 0, flow: str = "default-flow") -> InferenceRequest:
        return InferenceRequest(
            request_id=rid, model="m", target_model="m", priority=priority, fairness_id=flow
        )

    waiting = [asyncio.create_task(adm.admit(request("hi", 10), cands, p))]
    await until(lambda: adm.controller is not None and adm.controller.queued_requests == 1)
    settings = adm.controller.settings
    assert settings.max_requests == 3 and settings.default_ttl == 5.0
    assert isinstance(settings.bands[10].ordering, EdfOrdering)
    assert isinstance(settings.default_band.fairness, RoundRobinFairness)
    with pytest.raises(RequestError) as info:  # band 10 holds one request
        await adm.admit(request("hi2", 10), cands, p)
    assert info.value.status == 429
    waiting += [asyncio.create_task(adm.admit(request(f"lo{i}", -5), cands, p)) for i in range(2)]
    await until(lambda: adm.controller.queued_requests == 3)
    with pytest.raises(RequestError) as info:  # global maxRequests 3
        await adm.admit(request("extra", 0), cands, p)
    assert info.value.status == 429

    # one request completes: 1/2 = 0.5 < threshold 0.9, so the queue drains (nothing here puts the
    # dispatched requests in flight), highest band first
    order: list[str] = []
    for name, t in zip(["hi", "lo0", "lo1"], waiting, strict=True):
        t.add_done_callback(lambda _t, name=name: order.append(name))
    cycle, r = inflight.pop()
    producer.response_complete(cycle, r, ResponseInfo(), result)
    adm.request_finished()
    await asyncio.wait_for(asyncio.gather(*waiting), 1.0)
    assert order == ["hi", "lo0", "lo1"]
    assert adm.controller.queued_requests == 0
    await adm.close()
