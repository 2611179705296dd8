"""Pure pod → endpoint rules (no API server involved)."""

from __future__ import annotations

import pytest

from epp.k8s.objectives import objectives_from, rewrite_rules_from
from epp.k8s.pods import (
    labels_match,
    parse_selector,
    parse_target_ports,
    pod_endpoints,
    pod_is_serving,
    pods_to_endpoints,
)
from epp.k8s.pool_source import PoolSpec

from .kube import Kube


def test_serving_requires_ready_ip_and_no_deletion():
    assert pod_is_serving(Kube.pod("a", "10.0.0.1"))
    assert not pod_is_serving(Kube.pod("a", "10.0.0.1", ready=False))
    assert not pod_is_serving(Kube.pod("a", ""))
    terminating = Kube.pod("a", "10.0.0.1")
    terminating["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert not pod_is_serving(terminating)
    no_conditions = Kube.pod("a", "10.0.0.1")
    no_conditions["status"]["conditions"] = []
    assert not pod_is_serving(no_conditions)


def test_labels_match_is_a_subset_match():
    assert labels_match({"app": "x"}, {"app": "x", "other": "y"})
    assert not labels_match({"app": "x", "tier": "gpu"}, {"app": "x"})
    assert labels_match({}, None)


def test_endpoint_naming_ranks_and_ports():
    pod = Kube.pod("vllm-0", "fd00::9", labels={"app": "x"})
    pod["metadata"]["namespace"] = "ns"
    eps = pod_endpoints(pod, [8000, 8001])
    assert [(e.key, e.address, e.rank, e.namespace, e.pod_name) for e in eps] == [
        ("vllm-0-rank-0", "[fd00::9]:8000", 0, "ns", "vllm-0"),
        ("vllm-0-rank-1", "[fd00::9]:8001", 1, "ns", "vllm-0"),
    ]
    assert eps[0].labels == {"app": "x"}


@pytest.mark.parametrize(
    ("annotation", "declared", "ranks"),
    [
        (None, None, [0, 1, 2]),
        ("8001", None, [1]),
        (" 8002 , 8000,junk,9999", None, [0, 2]),
        ("", None, []),
        (None, [8000, 8002], [0, 2]),
        ("8000,8001", [8001], [1]),
        (None, [15090], [0, 1, 2]),  # only a sidecar declares a port (Istio): every target port serves
        (None, [15090, 8001], [1]),
    ],
)
def test_active_ports_and_declared_ports(annotation, declared, ranks):
    annotations = {"inference.networking.k8s.io/active-ports": annotation} if annotation is not None else None
    pod = Kube.pod("p", "10.0.0.1", annotations=annotations, ports=declared)
    assert [e.rank for e in pod_endpoints(pod, [8000, 8001, 8002])] == ranks


def test_pods_to_endpoints_filters_and_sorts():
    pods = [
        Kube.pod("b", "10.0.0.2"),
        Kube.pod("a", "10.0.0.1"),
        Kube.pod("c", "10.0.0.3", labels={"app": "other"}),
        Kube.pod("d", "10.0.0.4", ready=False),
    ]
    assert [e.key for e in pods_to_endpoints(pods, {"app": "vllm"}, [80], "ns")] == ["a-rank-0", "b-rank-0"]
    assert pods_to_endpoints(pods, {"app": "vllm"}, [80], "ns")[0].namespace == "ns"


def test_selector_and_port_flags():
    assert parse_selector("app=vllm, tier = gpu") == {"app": "vllm", "tier": "gpu"}
    assert parse_selector({"a": "b"}) == {"a": "b"}
    with pytest.raises(ValueError, match="not key=value"):
        parse_selector("app")
    with pytest.raises(ValueError, match="empty"):
        parse_selector(" , ")
    assert parse_target_ports("3000,3001") == [3000, 3001]
    assert parse_target_ports([8000, "8001,8002"]) == [8000, 8001, 8002]
    assert parse_target_ports(9000) == [9000]
    for bad, fragment in (
        ("", "between 1 and 8"),
        ("1,1", "twice"),
        ("0", "1..65535"),
        (",".join(map(str, range(1, 10))), "between 1 and 8"),
    ):
        with pytest.raises(ValueError, match=fragment):
            parse_target_ports(bad)


def test_pool_spec_validation():
    good = {
        "spec": {
            "selector": {"matchLabels": {"app": "x"}},
            "targetPorts": [{"number": 8000}, {"number": 8001}],
            "appProtocol": "kubernetes.io/h2c",
        }
    }
    spec = PoolSpec.from_object(good)
    assert spec.target_ports == (8000, 8001) and spec.app_protocol == "kubernetes.io/h2c"
    assert spec.match_labels == {"app": "x"}
    for spec_body, fragment in (
        ({"selector": {"matchLabels": {}}, "targetPorts": [{"number": 1}]}, "matchLabels"),
        ({"selector": {"matchLabels": {"a": "b"}}, "targetPorts": []}, "1 to 8"),
        ({"selector": {"matchLabels": {"a": "b"}}, "targetPorts": [{"number": 0}]}, "invalid port"),
    ):
        with pytest.raises(ValueError, match=fragment):
            PoolSpec.from_object({"spec": spec_body})


def test_objectives_and_rewrites_from_objects():
    ref = {"poolRef": {"name": "pool"}}
    objs = [
        {"metadata": {"name": "a"}, "spec": {**ref, "priority": 3}},
        {"metadata": {"name": "b"}, "spec": {**ref}},
        {
            "metadata": {"name": "c"},
            "spec": {"poolRef": {"name": "pool", "group": "other.group"}, "priority": 1},
        },
        {
            "metadata": {"name": "d", "deletionTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {**ref, "priority": 1},
        },
        {"metadata": {"name": "e"}, "spec": {**ref, "priority": "high"}},
    ]
    assert objectives_from(objs, "pool") == {"a": 3, "b": 0, "e": 0}
    rewrites = [
        {
            "metadata": {"name": "r", "creationTimestamp": "2026-01-02T00:00:00Z"},
            "spec": {
                **ref,
                "rules": [
                    {
                        "matches": [
                            {"model": {"value": "m"}},
                            {"model": {"type": "RegularExpression", "value": "x.*"}},
                        ],
                        "targets": [{"modelRewrite": "m2"}],
                    },
                    {"targets": []},
                ],
            },
        }
    ]
    [rule] = rewrite_rules_from(rewrites, "pool")
    assert rule.matches == ("m",) and rule.targets[0].model == "m2" and rule.targets[0].weight == 1
    assert rule.created > 0
