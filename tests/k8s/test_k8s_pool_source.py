"""The InferencePool source, the selector source and the objective/rewrite watches against kmock.

kmock stands in for a real Kubernetes API server in every test here: real HTTP, the official client
unchanged, but no label/field selector filtering and no resourceVersions (so the sources' client-side
filtering is what these tests exercise).
"""

from __future__ import annotations

import asyncio
import logging

import kmock
import pytest

from epp.datalayer.datastore import Datastore
from epp.k8s.pool_source import InferencePoolSource, PoolSpec, SelectorSource
from tests.helpers import until

from .conftest import FAST


def endpoints(ds: Datastore) -> dict[str, str]:
    return {e.key: e.address for e in ds.snapshot()}


@pytest.fixture
async def pool_source(api):
    made: list[InferencePoolSource] = []

    def make(ds: Datastore, name: str = "pool") -> InferencePoolSource:
        source = InferencePoolSource(ds, api, pool_name=name, namespace="default", options=FAST)
        made.append(source)
        return source

    yield make
    for source in made:
        await source.stop()


async def test_pool_pods_become_endpoints(kube, pool_source, kube_server):
    """kmock stands in for the API server: a pool and its ready, matching pods become endpoints."""
    await kube.create_pod(
        "vllm-a", "10.0.0.1", labels={"app": "vllm", "inference.networking.k8s.io/engine-type": "vllm"}
    )
    await kube.create_pod("vllm-b", "10.0.0.2", ready=False)
    await kube.create_pod("other", "10.0.0.3", labels={"app": "other"})
    await kube.create_pool("pool", {"app": "vllm"}, [8000])
    ds = Datastore()
    source = pool_source(ds)
    await source.start()
    await until(lambda: ds.synced)
    assert endpoints(ds) == {"vllm-a-rank-0": "10.0.0.1:8000"}
    ep = ds.get("vllm-a-rank-0")
    assert (ep.pod_name, ep.namespace, ep.rank) == ("vllm-a", "default", 0)
    assert ep.labels["inference.networking.k8s.io/engine-type"] == "vllm"
    assert source.spec == PoolSpec((("app", "vllm"),), (8000,))
    pool_lists = list(kube_server.k8s[kmock.action.LIST, kmock.resource(group="inference.networking.k8s.io")])
    assert pool_lists and pool_lists[0].params.get("fieldSelector") == "metadata.name=pool"


async def test_not_synced_until_the_pool_exists(kube, pool_source, caplog):
    """kmock stands in for the API server: without the pool there is no sync (and one warning naming
    what was looked for); creating it syncs."""
    await kube.create_pod("vllm-a", "10.0.0.1")
    ds = Datastore()
    source = pool_source(ds)
    with caplog.at_level(logging.WARNING, logger="epp.k8s.pool_source"):
        await source.start()
        await until(lambda: any("not found" in r.getMessage() for r in caplog.records))
        await asyncio.sleep(0.2)
    assert not ds.synced and len(ds) == 0
    (missing,) = [r.getMessage() for r in caplog.records if "not found" in r.getMessage()]
    assert "default/pool (group inference.networking.k8s.io)" in missing
    await kube.create_pool("pool", {"app": "vllm"}, [8000])
    await until(lambda: ds.synced and len(ds) == 1)


async def test_pod_ready_not_ready_deleted(kube, pool_source):
    """kmock stands in for the API server: pod readiness and deletion drive membership."""
    await kube.create_pool("pool", {"app": "vllm"}, [8000])
    ds = Datastore()
    await pool_source(ds).start()
    await until(lambda: ds.synced)
    assert endpoints(ds) == {}
    await kube.create_pod("p", "10.0.0.7", ready=False)
    await asyncio.sleep(0.1)
    assert endpoints(ds) == {}
    await kube.set_ready("p", True)
    await until(lambda: endpoints(ds) == {"p-rank-0": "10.0.0.7:8000"})
    await kube.set_ready("p", False)
    await until(lambda: endpoints(ds) == {})
    await kube.delete_pod("p")
    await until(lambda: endpoints(ds) == {})


async def test_terminating_pod_leaves_before_it_is_gone(kube, pool_source):
    """kmock stands in for the API server: a pod with a finalizer is first marked for deletion
    (deletionTimestamp, still Ready) and must stop receiving traffic at that point."""
    await kube.create_pool("pool", {"app": "vllm"}, [8000])
    await kube.create_pod("p", "10.0.0.7", finalizers=["example.com/drain"])
    ds = Datastore()
    await pool_source(ds).start()
    await until(lambda: len(ds) == 1)
    await kube.delete_pod("p")
    await until(lambda: endpoints(ds) == {})
    await kube.patch_pod("p", {"metadata": {"finalizers": []}})  # now it really goes away
    await asyncio.sleep(0.05)
    assert endpoints(ds) == {}


async def test_selector_change_swaps_the_pods(kube, pool_source, kube_server):
    """kmock stands in for the API server: a new selector restarts the pod watch with that selector."""
    await kube.create_pod("v1", "10.0.0.1", labels={"app": "vllm"})
    await kube.create_pod("s1", "10.0.0.2", labels={"app": "sglang"})
    await kube.create_pool("pool", {"app": "vllm"}, [8000])
    ds = Datastore()
    await pool_source(ds).start()
    await until(lambda: endpoints(ds) == {"v1-rank-0": "10.0.0.1:8000"})
    await kube.patch_pool("pool", {"selector": {"matchLabels": {"app": "sglang"}}})
    await until(lambda: endpoints(ds) == {"s1-rank-0": "10.0.0.2:8000"})

    # The pod watch asked the server to filter (real servers do) as well as filtering itself.
    def selectors() -> list[str]:
        return [
            r.params.get("labelSelector")
            for r in kube_server.k8s[kmock.action.WATCH, kmock.resource("v1/pods")]
        ]

    await until(lambda: "app=vllm" in selectors() and "app=sglang" in selectors())
    # A pod relabelled out of the selector leaves; one relabelled in joins.
    await kube.patch_pod("v1", {"metadata": {"labels": {"app": "sglang"}}})
    await until(lambda: set(endpoints(ds)) == {"s1-rank-0", "v1-rank-0"})
    await kube.patch_pod("s1", {"metadata": {"labels": {"app": "gone"}}})
    await until(lambda: set(endpoints(ds)) == {"v1-rank-0"})


async def test_old_pods_serve_until_the_new_selector_has_listed(kube, pool_source, kube_server):
    """kmock stands in for the API server: while the pod listing of a changed selector fails, an event on
    the old watch must not empty the endpoints (they are the old selector's pods, filtered by it)."""

    def fail():
        raise kmock.KubernetesError(status=500, reason="InternalError", message="etcd is sad")

    kube_server.react(
        lambda k8s: (
            k8s[kmock.action.LIST, kmock.resource("v1/pods"), kmock.params(labelSelector="app=sglang")]
            << fail
        )
    )
    await kube.create_pod("v1", "10.0.0.1", labels={"app": "vllm"})
    await kube.create_pool("pool", {"app": "vllm"}, [8000])
    ds = Datastore()
    source = pool_source(ds)
    await source.start()
    await until(lambda: endpoints(ds) == {"v1-rank-0": "10.0.0.1:8000"})
    await kube.patch_pool("pool", {"selector": {"matchLabels": {"app": "sglang"}}})
    await until(
        lambda: source._next_pods is not None and "500" in source._next_pods.informer.list_watch.last_error
    )
    await kube.patch_pod("v1", {"metadata": {"annotations": {"touched": "yes"}}})  # an event on the old watch
    await until(
        lambda: (
            source._pods is not None
            and any(
                (p.get("metadata") or {}).get("annotations", {}).get("touched")
                for p in source._pods.informer.objects()
            )
        )
    )
    assert endpoints(ds) == {"v1-rank-0": "10.0.0.1:8000"}


async def test_multiple_target_ports_active_ports_and_declared_ports(kube, pool_source):
    """kmock stands in for the API server: one endpoint per (pod, live target port), IPv6 bracketed."""
    await kube.create_pool("pool", {"app": "vllm"}, [8000, 8001, 8002])
    await kube.create_pod("all", "10.0.0.1")
    await kube.create_pod(
        "annotated", "10.0.0.2", annotations={"inference.networking.k8s.io/active-ports": "8001, 9999"}
    )
    await kube.create_pod("declared", "10.0.0.3", ports=[8000, 8002, 7000])
    await kube.create_pod("v6", "fd00::5", annotations={"inference.networking.k8s.io/active-ports": "8002"})
    ds = Datastore()
    await pool_source(ds).start()
    await until(lambda: len(ds) == 7)
    assert endpoints(ds) == {
        "all-rank-0": "10.0.0.1:8000",
        "all-rank-1": "10.0.0.1:8001",
        "all-rank-2": "10.0.0.1:8002",
        "annotated-rank-1": "10.0.0.2:8001",
        "declared-rank-0": "10.0.0.3:8000",
        "declared-rank-2": "10.0.0.3:8002",
        "v6-rank-2": "[fd00::5]:8002",
    }
    assert ds.get("all-rank-2").rank == 2
    # The annotation changes which ranks are live.
    await kube.patch_pod(
        "annotated", {"metadata": {"annotations": {"inference.networking.k8s.io/active-ports": "8000,8002"}}}
    )
    await until(
        lambda: (
            {k for k in endpoints(ds) if k.startswith("annotated")}
            == {"annotated-rank-0", "annotated-rank-2"}
        )
    )
    # Target ports shrink: ranks beyond the list disappear.
    await kube.patch_pool("pool", {"targetPorts": [{"number": 8000}]})
    await until(lambda: set(endpoints(ds)) == {"all-rank-0", "annotated-rank-0", "declared-rank-0"})


async def test_metrics_survive_unrelated_pod_churn(kube, pool_source):
    """kmock stands in for the API server: membership updates keep the metrics of unchanged endpoints."""
    from epp.framework.types import EndpointMetrics

    await kube.create_pool("pool", {"app": "vllm"}, [8000])
    await kube.create_pod("a", "10.0.0.1")
    ds = Datastore()
    await pool_source(ds).start()
    await until(lambda: len(ds) == 1)
    ds.update_metrics("a-rank-0", EndpointMetrics(waiting_queue_size=4, update_time=1.0))
    await kube.create_pod("b", "10.0.0.2")
    await until(lambda: len(ds) == 2)
    assert ds.get("a-rank-0").metrics.waiting_queue_size == 4


async def test_pool_deleted_and_recreated(kube, pool_source):
    """kmock stands in for the API server: deleting the pool removes every endpoint."""
    await kube.create_pool("pool", {"app": "vllm"}, [8000])
    await kube.create_pod("a", "10.0.0.1")
    ds = Datastore()
    await pool_source(ds).start()
    await until(lambda: len(ds) == 1)
    await kube.delete_pool("pool")
    await until(lambda: len(ds) == 0)
    await kube.create_pool("pool", {"app": "vllm"}, [8001])
    await until(lambda: endpoints(ds) == {"a-rank-0": "10.0.0.1:8001"})


async def test_other_pools_are_ignored(kube, pool_source):
    """kmock stands in for the API server (it ignores the field selector): only our pool counts."""
    await kube.create_pool("other", {"app": "other"}, [9000])
    await kube.create_pod("a", "10.0.0.1")
    ds = Datastore()
    await pool_source(ds).start()
    await asyncio.sleep(0.2)
    assert not ds.synced
    await kube.create_pool("pool", {"app": "vllm"}, [8000])
    await until(lambda: endpoints(ds) == {"a-rank-0": "10.0.0.1:8000"})


async def test_invalid_pool_keeps_the_last_good_one(kube, pool_source, caplog):
    """kmock stands in for the API server: a pool with bad target ports is reported and ignored."""
    await kube.create_pool("pool", {"app": "vllm"}, [8000])
    await kube.create_pod("a", "10.0.0.1")
    ds = Datastore()
    await pool_source(ds).start()
    await until(lambda: len(ds) == 1)
    await kube.patch_pool("pool", {"targetPorts": []})
    await until(lambda: "is invalid" in caplog.text)
    assert endpoints(ds) == {"a-rank-0": "10.0.0.1:8000"}


@pytest.mark.parametrize("style", ["error-event", "http-status"])
async def test_watch_expiry_relists(kube, pool_source, kube_server, style):
    """kmock stands in for the API server: an expired watch (410 Gone) makes the source relist and
    carry on; changes made after the relist still arrive."""
    gone = {
        "type": "ERROR",
        "object": {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"},
    }

    def raise_gone():
        raise kmock.KubernetesError(status=410, reason="Expired", message="too old resource version")

    payload = gone if style == "error-event" else raise_gone
    kube_server.react(lambda k8s: k8s[kmock.action.WATCH, kmock.resource("v1/pods")][:2] << payload)
    await kube.create_pool("pool", {"app": "vllm"}, [8000])
    await kube.create_pod("a", "10.0.0.1")
    ds = Datastore()
    source = pool_source(ds)
    await source.start()
    await until(lambda: len(ds) == 1)
    # The first listing, then one relisting per expired watch.
    await until(lambda: source._pods is not None and source._pods.informer.list_watch.relists >= 3)
    assert len(list(kube_server.k8s[kmock.action.LIST, kmock.resource("v1/pods")])) >= 3
    # The watch after the relisting delivers new changes.
    await kube.create_pod("b", "10.0.0.2")
    await until(lambda: len(ds) == 2)
    assert source._pods.informer.list_watch.relists == 3


async def test_api_errors_are_retried_with_backoff(kube, pool_source, kube_server):
    """kmock stands in for the API server: failing listings are retried until they succeed."""

    def fail():
        raise kmock.KubernetesError(status=500, reason="InternalError", message="etcd is sad")

    kube_server.react(lambda k8s: k8s[kmock.action.LIST, kmock.resource("v1/pods")][:3] << fail)
    await kube.create_pool("pool", {"app": "vllm"}, [8000])
    await kube.create_pod("a", "10.0.0.1")
    ds = Datastore()
    source = pool_source(ds)
    await source.start()
    await until(lambda: ds.synced and len(ds) == 1)
    assert "500" in source._pods.informer.list_watch.last_error


async def test_objectives_and_rewrites_follow_the_cluster(kube, pool_source):
    """kmock stands in for the API server: InferenceObjective priorities and InferenceModelRewrite rules
    for our pool reach the datastore; other pools' objects are ignored."""
    ref = {"name": "pool", "group": "inference.networking.k8s.io", "kind": "InferencePool"}
    await kube.create_x("inferenceobjectives", "critical", {"poolRef": ref, "priority": 10})
    await kube.create_x("inferenceobjectives", "plain", {"poolRef": {"name": "pool"}})
    await kube.create_x("inferenceobjectives", "theirs", {"poolRef": {"name": "other"}, "priority": 99})
    rule = {
        "matches": [{"model": {"type": "Exact", "value": "llama"}}],
        "targets": [{"modelRewrite": "llama-v2", "weight": 3}],
    }
    generic = {"targets": [{"modelRewrite": "base", "weight": 1}]}
    await kube.create_x(
        "inferencemodelrewrites", "newer", {"poolRef": ref, "rules": [rule]}, created="2026-02-01T00:00:00Z"
    )
    await kube.create_x(
        "inferencemodelrewrites",
        "older",
        {"poolRef": ref, "rules": [generic, rule]},
        created="2026-01-01T00:00:00Z",
    )
    await kube.create_x("inferencemodelrewrites", "theirs", {"poolRef": {"name": "other"}, "rules": [rule]})
    ds = Datastore()
    await pool_source(ds).start()
    await until(lambda: ds.objectives == {"critical": 10, "plain": 0})
    await until(lambda: len(ds.rewrite_rules) == 3)
    assert [(r.name, r.order, r.matches) for r in ds.rewrite_rules] == [
        ("older", 0, ()),
        ("older", 1, ("llama",)),
        ("newer", 0, ("llama",)),
    ]
    assert ds.rewrite_rules[1].targets[0].model == "llama-v2" and ds.rewrite_rules[1].targets[0].weight == 3
    assert ds.rewrite_rules[0].created < ds.rewrite_rules[2].created
    await kube.patch_x("inferenceobjectives", "plain", {"priority": -1})
    await until(lambda: ds.objectives.get("plain") == -1)
    await kube.delete_x("inferenceobjectives", "critical")
    await until(lambda: ds.objectives == {"plain": -1})
    await kube.delete_x("inferencemodelrewrites", "older")
    await until(lambda: [r.name for r in ds.rewrite_rules] == ["newer"])


async def test_selector_source_standalone(kube, api, kube_server):
    """kmock stands in for the API server: standalone mode watches pods by selector at fixed ports."""
    await kube.create_pod("a", "10.0.0.1", labels={"app": "vllm", "tier": "gpu"})
    await kube.create_pod("b", "10.0.0.2", labels={"app": "vllm"})
    ds = Datastore()
    source = SelectorSource(
        ds,
        api,
        selector={"app": "vllm", "tier": "gpu"},
        target_ports=[3000, 3001],
        namespace="default",
        options=FAST,
    )
    await source.start()
    try:
        await until(lambda: ds.synced)
        assert endpoints(ds) == {"a-rank-0": "10.0.0.1:3000", "a-rank-1": "10.0.0.1:3001"}
        await kube.patch_pod("b", {"metadata": {"labels": {"tier": "gpu"}}})
        await until(lambda: len(ds) == 4)
        lists = list(kube_server.k8s[kmock.action.LIST, kmock.resource("v1/pods")])
        assert lists[0].params.get("labelSelector") == "app=vllm,tier=gpu"
        # No CRDs are touched in standalone mode.
        assert not list(kube_server.k8s[kmock.resource(group="inference.networking.k8s.io")])
    finally:
        await source.stop()


async def test_stop_ends_the_watch_threads(kube, api):
    """kmock stands in for the API server: stop() unblocks and ends the watch threads promptly."""
    await kube.create_pod("a", "10.0.0.1")
    ds = Datastore()
    source = SelectorSource(
        ds, api, selector={"app": "vllm"}, target_ports=[8000], namespace="default", options=FAST
    )
    await source.start()
    await until(lambda: ds.synced)
    lw = source._watch.informer.list_watch
    assert lw.alive
    started = asyncio.get_running_loop().time()
    await source.stop()
    assert not lw.alive
    assert asyncio.get_running_loop().time() - started < 2.0
