"""The parts of `--workers` that need no process: codec, CPU count, metric merging, shared plugin state."""

from __future__ import annotations

import pickle
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from epp.datalayer.datastore import ModelRewriteRule, RewriteTarget
from epp.framework.cycle import CycleState
from epp.framework.types import (
    Endpoint,
    EndpointMetrics,
    InferenceRequest,
    ProfileRunResult,
    ResponseInfo,
    SchedulingResult,
    TypedName,
)
from epp.observability.metrics import WORKER_MAX_GAUGES, WORKER_METRICS, EppMetrics
from epp.plugins.producers.approx_prefix import ApproxPrefixCacheProducer
from epp.plugins.producers.inflight_load import InFlightLoadProducer
from epp.plugins.producers.prefill_ledger import EndpointLoad, PrefillLedger
from epp.requestcontrol.meter import RequestMeter
from epp.workers.codec import (
    decode_endpoint,
    decode_rules,
    encode_endpoint,
    encode_rules,
    pack,
    unpack,
)
from epp.workers.cpus import cgroup_cpu_limit, usable_cpus
from epp.workers.metrics_merge import ExcludingCollector, WorkerMetrics


def test_endpoints_and_rules_survive_the_wire() -> None:
    e = Endpoint(
        key="pod-a-rank-1",
        ip="fd00::1",
        port=8000,
        labels={"app": "vllm"},
        metrics=EndpointMetrics(
            waiting_queue_size=3,
            running_requests_size=2,
            kv_cache_usage=0.25,
            active_models=frozenset({"m", "lora-a"}),
            waiting_models=frozenset({"lora-b"}),
            max_active_models=4,
            cache_block_size=16,
            cache_num_blocks=1000,
            update_time=12.5,
        ),
        namespace="ns",
        pod_name="pod-a",
        rank=1,
        healthy=False,
    )
    assert decode_endpoint(unpack(pack(encode_endpoint(e)))) == e
    rules = (ModelRewriteRule("r", ("a",), (RewriteTarget("b", 3), RewriteTarget("c", 0)), 1.5, 2),)
    assert decode_rules(unpack(pack(encode_rules(rules)))) == rules


def test_cgroup_quota_bounds_the_cpus(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(tmp_path) == 1.5
    assert usable_cpus(tmp_path) == min(2, usable_cpus(tmp_path / "none"))  # 1.5 rounds up to 2
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(tmp_path) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("100000")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert cgroup_cpu_limit(v1) == 1.0 and usable_cpus(v1) == 1
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1")
    assert cgroup_cpu_limit(v1) is None


def _worker_families(requests: int, running: int, index_size: int) -> list:
    m = EppMetrics(CollectorRegistry())
    meter = RequestMeter(m)
    for _ in range(requests):
        meter.request("m", "m", 0, 100)
        m.requests.duration.labels("m", "m").observe(0.3)
    m.requests.running.labels("m").set(running)
    m.scheduler.prefix_indexer_size.set(index_size)
    names = m.family_names(WORKER_METRICS)
    return pickle.loads(pickle.dumps([f for f in m.registry.collect() if f.name in names]))


def _exposed(registry: CollectorRegistry) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            if not s.name.endswith("_created"):
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_worker_metrics_add_up_keep_the_largest_index_and_survive_a_dead_worker() -> None:
    pod = EppMetrics(CollectorRegistry())
    pod.config.generation.set(7)
    pod.scheduler.prefix_indexer_size.set(999)  # the pod process's own (unused) copy must not show
    workers = WorkerMetrics(max_gauges=pod.family_names(WORKER_MAX_GAUGES))
    exposition = CollectorRegistry(auto_describe=False)
    exposition.register(ExcludingCollector(pod.registry, pod.family_names(WORKER_METRICS)))
    exposition.register(workers)
    workers.update(0, _worker_families(3, 2, 50))
    workers.update(1, _worker_families(4, 1, 70))
    total = (
        "inference_objective_request_total",
        (("model_name", "m"), ("priority", "0"), ("target_model_name", "m")),
    )
    running = ("inference_objective_running_requests", (("model_name", "m"),))
    size = ("inference_extension_prefix_indexer_size", ())
    buckets = (
        "inference_objective_request_duration_seconds_count",
        (("model_name", "m"), ("target_model_name", "m")),
    )
    seen = _exposed(exposition)
    assert seen[total] == 7 and seen[running] == 3 and seen[size] == 70 and seen[buckets] == 7
    assert seen[("epp_config_generation", ())] == 7
    # worker 1 dies: its counts stay, its gauges go; its successor starts from zero
    workers.retire(1)
    workers.update(1, _worker_families(1, 0, 10))
    seen = _exposed(exposition)
    assert seen[total] == 3 + 4 + 1 and seen[buckets] == 8
    assert seen[running] == 2 and seen[size] == 50


def _request(rid: str = "r") -> InferenceRequest:
    return InferenceRequest(
        request_id=rid, model="m", target_model="m", prefix_material=b"x" * 4000, size_bytes=400
    )


def _ep(key: str) -> Endpoint:
    ip, _, port = key.partition(":")
    return Endpoint(key=key, ip=ip, port=int(port), metrics=EndpointMetrics(update_time=1.0))


def _result(endpoint: Endpoint) -> SchedulingResult:
    return SchedulingResult("default", {"default": ProfileRunResult((endpoint,))})


def test_prefix_records_replay_in_another_process_and_nothing_is_kept_unless_shared() -> None:
    a = ApproxPrefixCacheProducer(TypedName("approx-prefix-cache-producer", "p"))
    b = ApproxPrefixCacheProducer(TypedName("approx-prefix-cache-producer", "p"))
    eps = [_ep("10.0.0.1:8000"), _ep("10.0.0.2:8000")]
    cycle = CycleState()
    a.prepare_data(cycle, _request(), eps)
    a.pre_request(cycle, _request(), _result(eps[1]))
    assert a.export_changes() is None  # not shared: no outbox growing for nobody
    a.start_sharing()
    cycle = CycleState()
    a.prepare_data(cycle, _request("r2"), eps)
    a.pre_request(cycle, _request("r2"), _result(eps[0]))
    changes = a.export_changes()
    assert changes is not None and a.export_changes() is None
    b.endpoints_changed(frozenset(e.key for e in eps))
    b.import_changes("w0.1", unpack(pack(changes)))
    match = b.match(_request("r3"), eps)
    assert match.scores == {"10.0.0.1:8000": 1.0}
    # a correction (another endpoint served) is replayed too
    info = ResponseInfo(served_endpoint="10.0.0.2:8000")
    a.response_received(cycle, _request("r2"), info, _result(eps[0]))
    b.import_changes("w0.1", unpack(pack(a.export_changes())))
    assert b.match(_request("r4"), eps).scores == {"10.0.0.2:8000": 1.0}


def test_ledgers_add_other_processes_totals_and_forget_a_dead_one() -> None:
    a, b = PrefillLedger(), PrefillLedger()
    entry = a.add("e1", 100)
    a.add("e1", 50)
    b.add("e1", 7)
    b.import_changes("w0.1", unpack(pack(a.export_changes())))
    assert b.load("e1") == EndpointLoad(157, 3, 0)
    assert a.export_changes() is None  # nothing changed since
    a.attach(entry, ResponseInfo(first_byte_at=1.0))  # its first token: prefill over, decoding
    b.import_changes("w0.1", a.export_changes())
    assert b.load("e1") == EndpointLoad(57, 2, 1)
    assert b.loads(["e1", "e2"]) == {"e1": EndpointLoad(57, 2, 1)}
    b.forget_origin("w0.1")
    assert b.load("e1") == EndpointLoad(7, 1, 0)

    p, q = (
        InFlightLoadProducer(TypedName("inflight-load-producer", "i")),
        InFlightLoadProducer(TypedName("inflight-load-producer", "i")),
    )
    p.pre_request(CycleState(), _request(), _result(_ep("10.0.0.1:8000")))
    q.import_changes("w1.1", p.export_changes())
    assert q.load("10.0.0.1:8000").requests == 1
    q.endpoints_changed(frozenset())  # the endpoint left the pool: remote counts go too
    assert q.load("10.0.0.1:8000").requests == 0
