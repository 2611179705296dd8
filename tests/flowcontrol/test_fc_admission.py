"""FlowControlAdmission: legacy shedding with the gate off, queueing with it on, config and reloads.

Uses the real datastore and the real utilization-detector: saturation comes from endpoint metrics.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from epp.builtins import default_flow_policies
from epp.config.api import FlowControlConfig
from epp.datalayer.datastore import Datastore
from epp.errors import RequestError
from epp.flowcontrol.admission import FlowControlAdmission
from epp.flowcontrol.build import settings_from_config
from epp.framework.flowcontrol import Outcome
from epp.framework.handle import SimpleHandle
from epp.framework.types import Endpoint, EndpointMetrics, InferenceRequest
from epp.plugins.flowcontrol import PLUGIN_TYPES
from epp.plugins.flowcontrol.fairness import GlobalStrictFairness, RoundRobinFairness
from epp.plugins.flowcontrol.ordering import EdfOrdering, FcfsOrdering
from epp.plugins.saturation.utilization import UTILIZATION_DETECTOR
from epp.scheduling.pipeline import Pipeline
from tests.helpers import until


def make_datastore() -> Datastore:
    ds = Datastore()
    ds.set_endpoints(
        [Endpoint(key="a", ip="127.0.0.1", port=9001), Endpoint(key="b", ip="127.0.0.1", port=9002)]
    )
    set_queue(ds, 0)
    return ds


def set_queue(ds: Datastore, queue: int) -> None:
    for key in ("a", "b"):
        ds.update_metrics(key, EndpointMetrics(waiting_queue_size=queue, update_time=time.monotonic()))


def policy_plugins() -> dict[str, object]:
    handle = SimpleHandle()
    return {t.type_name: t.build(t.type_name, None, handle) for t in PLUGIN_TYPES}


def pipeline(
    generation: int = 1, flow_control: dict | None = None, gate: bool = True, plugins=None
) -> Pipeline:
    detector = UTILIZATION_DETECTOR.build("utilization-detector", {"hysteresis": 0}, SimpleHandle())
    extras = {} if flow_control is None else {"flowControl": FlowControlConfig.model_validate(flow_control)}
    return Pipeline(
        generation=generation,
        config_hash="h",
        source="<test>",
        scheduler=None,  # admission never schedules
        parser=None,
        plugins=plugins if plugins is not None else policy_plugins(),
        saturation_detector=detector,
        feature_gates=frozenset({"flowControl"}) if gate else frozenset(),
        extras=extras,
    )


def req(rid: str, priority: int = 0, flow: str = "default-flow") -> InferenceRequest:
    return InferenceRequest(
        request_id=rid, model="m", target_model="m", priority=priority, fairness_id=flow, size_bytes=50
    )


async def test_gate_off_is_legacy_shedding():
    ds = make_datastore()
    adm = FlowControlAdmission(ds, 2.0, default_policies=default_flow_policies)
    p = pipeline(gate=False, flow_control={"maxRequests": 1})
    cands = ds.candidates(2.0)
    set_queue(ds, 4)  # saturation 0.8
    await adm.admit(req("shed-ok", -1), ds.candidates(2.0), p)
    set_queue(ds, 5)  # saturation 1.0
    with pytest.raises(RequestError) as info:
        await adm.admit(req("shed", -1), ds.candidates(2.0), p)
    assert info.value.status == 429
    assert info.value.message == "system saturated, sheddable request dropped"
    await adm.admit(req("critical", 0), cands, p)  # priority >= 0 is never shed
    assert adm.controller is None


async def test_gate_on_queues_sheddable_requests_instead_of_dropping():
    ds = make_datastore()
    adm = FlowControlAdmission(ds, 2.0, default_policies=default_flow_policies, dispatch_tick=0.005)
    p = pipeline(flow_control={})
    set_queue(ds, 5)
    task = asyncio.create_task(adm.admit(req("sheddable", -1), ds.candidates(2.0), p))
    await until(lambda: adm.controller is not None and adm.controller.queued_requests == 1)
    assert not task.done()
    set_queue(ds, 1)  # metrics show the pool recovering; the tick notices
    await asyncio.wait_for(task, 1.0)
    assert adm.controller.queued_requests == 0
    await adm.close()


async def test_gate_on_ttl_gives_503():
    ds = make_datastore()
    adm = FlowControlAdmission(ds, 2.0, default_policies=default_flow_policies)
    p = pipeline(flow_control={"defaultRequestTTL": "30ms"})
    set_queue(ds, 9)
    with pytest.raises(RequestError) as info:
        await asyncio.wait_for(adm.admit(req("r"), ds.candidates(2.0), p), 2.0)
    assert info.value.status == 503
    assert "timed out in queue" in info.value.message
    await adm.close()


async def test_reload_reconfigures_the_same_controller_and_keeps_the_queue():
    ds = make_datastore()
    adm = FlowControlAdmission(ds, 2.0, default_policies=default_flow_policies)
    p1 = pipeline(1, {"maxRequests": 5})
    set_queue(ds, 5)
    task = asyncio.create_task(adm.admit(req("queued"), ds.candidates(2.0), p1))
    await until(lambda: adm.controller is not None and adm.controller.queued_requests == 1)
    controller = adm.controller
    assert controller is not None and controller.queued_requests == 1
    p2 = pipeline(2, {"maxRequests": 1})
    with pytest.raises(RequestError) as info:
        await adm.admit(req("over"), ds.candidates(2.0), p2)
    assert info.value.status == 429
    assert adm.controller is controller and controller.settings.max_requests == 1
    # a straggler on the old generation does not revert the settings
    with pytest.raises(RequestError):
        await adm.admit(req("old"), ds.candidates(2.0), p1)
    assert controller.settings.max_requests == 1
    set_queue(ds, 0)
    adm.request_finished()
    await asyncio.wait_for(task, 1.0)
    await adm.close()


def test_settings_from_config_resolves_policies_and_defaults():
    plugins = policy_plugins()
    plugins["rr"] = RoundRobinFairness()
    cfg = FlowControlConfig.model_validate(
        {
            "maxBytes": "10Gi",
            "maxRequests": "1k",
            "defaultRequestTTL": "1m30s",
            "defaultPriorityBand": {"maxBytes": "1Mi", "maxRequests": 50, "fairnessPolicyRef": "rr"},
            "priorityBands": [
                {"priority": 100, "maxRequests": 500, "orderingPolicyRef": "edf-ordering-policy"},
                {"priority": -1, "fairnessPolicyRef": "global-strict-fairness-policy"},
            ],
        }
    )
    s = settings_from_config(cfg, plugins, default_flow_policies())
    assert (s.max_bytes, s.max_requests, s.default_ttl) == (10 * 2**30, 1000, 90.0)
    assert isinstance(s.default_band.fairness, RoundRobinFairness)
    assert (s.default_band.max_bytes, s.default_band.max_requests) == (2**20, 50)
    high = s.bands[100]
    assert isinstance(high.ordering, EdfOrdering) and high.max_requests == 500
    low = s.bands[-1]
    assert isinstance(low.fairness, GlobalStrictFairness) and isinstance(low.ordering, FcfsOrdering)
    band, listed = s.band_for(7)
    assert band.priority == 7 and not listed and band.max_requests == 50
    assert s.usage_limit.compute_limits(0.5, [1]) == {1: 1.0}


def test_settings_defaults_without_config_or_plugins():
    s = settings_from_config(None, {}, default_flow_policies())
    assert (s.max_bytes, s.max_requests, s.default_ttl) == (0, 0, 0.0)
    assert s.default_band.max_bytes == 1_000_000_000 and s.default_band.max_requests == 0
    assert isinstance(s.default_band.fairness, GlobalStrictFairness)
    assert isinstance(s.default_band.ordering, FcfsOrdering)


async def test_outcomes_map_to_upstream_statuses():
    from epp.flowcontrol.outcomes import outcome_error

    assert outcome_error(Outcome.REJECTED_CAPACITY, "x").status == 429
    assert outcome_error(Outcome.EVICTED_TTL, "x").status == 503
    assert outcome_error(Outcome.EVICTED_CONTEXT_CANCELLED, "x").message.startswith("client disconnected: ")
    assert outcome_error(Outcome.EVICTED_OTHER, "x").status == 500
    with pytest.raises(ValueError):
        outcome_error(Outcome.DISPATCHED, "")
