"""The inferencepool Helm chart, rendered by the real helm binary and checked object by object.

Built-in kinds are validated with kubernetes-validate (strict); the InferencePool and InferenceObjective
against the CRD schemas in tests/helm/schemas/.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections import Counter
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from epp.k8s.pods import parse_selector
from epp.settings import HaMode, parse_settings

from .conftest import BAD_VALUES, CHART, NAMESPACE, RELEASE, VALUES, Helm, RenderError
from .fakeapi import fake_api_server
from .helmbin import HELM_SHA256, HELM_VERSION

SCHEMAS = Path(__file__).resolve().parent / "schemas"
EPP = f"{RELEASE}-epp"

GOOD_VALUES = sorted(p.name for p in VALUES.glob("*.yaml"))

# Kinds that come from CRDs: validated by our own schema or checked structurally in the tests below.
CRD_KINDS = {
    ("inference.networking.k8s.io/v1", "InferencePool"),
    ("inference.networking.x-k8s.io/v1alpha2", "InferenceObjective"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("gateway.networking.k8s.io/v1", "HTTPRoute"),
    ("networking.istio.io/v1", "DestinationRule"),
    ("networking.gke.io/v1", "HealthCheckPolicy"),
    ("networking.gke.io/v1", "GCPBackendPolicy"),
}

# The upstream v1.5 default EndpointPickerConfig (chart _config.yaml, non-predictor branch).
UPSTREAM_DEFAULT_CONFIG = {
    "apiVersion": "inference.networking.x-k8s.io/v1alpha1",
    "kind": "EndpointPickerConfig",
    "plugins": [
        {"type": "queue-scorer"},
        {"type": "kv-cache-utilization-scorer"},
        {"type": "prefix-cache-scorer"},
        {
            "type": "metrics-data-source",
            "parameters": {"scheme": "http", "path": "/metrics", "insecureSkipVerify": True},
        },
        {"type": "core-metrics-extractor"},
    ],
    "schedulingProfiles": [
        {
            "name": "default",
            "plugins": [
                {"pluginRef": "queue-scorer", "weight": 2},
                {"pluginRef": "kv-cache-utilization-scorer", "weight": 2},
                {"pluginRef": "prefix-cache-scorer", "weight": 3},
            ],
        }
    ],
}


# --- helpers ---------------------------------------------------------------------------------------


def values(name: str) -> Path:
    return VALUES / name


def load_values(name: str) -> dict[str, Any]:
    return yaml.safe_load(values(name).read_text())


def objects(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects(objs, kind) if name is None or o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


def epp_container(objs: list[dict[str, Any]]) -> dict[str, Any]:
    containers = one(objs, "Deployment", EPP)["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "epp")


def args_of(objs: list[dict[str, Any]]) -> list[str]:
    args = epp_container(objs)["args"]
    assert all(isinstance(a, str) for a in args), args
    return args


def flag_map(args: list[str]) -> dict[str, str]:
    """--key=value args as a map; fails on a bare value argument or a flag given twice."""
    names = []
    out = {}
    for arg in args:
        assert arg.startswith("--") and "=" in arg, f"argument {arg!r} is not of the form --key=value"
        name, value = arg[2:].split("=", 1)
        names.append(name)
        out[name] = value
    dupes = [n for n, c in Counter(names).items() if c > 1]
    assert not dupes, f"flags given more than once: {dupes} in {args}"
    return out


@cache
def crd_validator(filename: str) -> jsonschema.protocols.Validator:
    schema = json.loads((SCHEMAS / filename).read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def k8s_versions() -> list[str]:
    """The oldest and a recent Kubernetes the package has schemas for (the chart says >= 1.27)."""
    available = {".".join(v.split(".")[:2]) for v in kubernetes_validate.utils.all_versions()}
    wanted = [v for v in ("1.29", "1.35") if v in available]
    assert wanted, f"kubernetes-validate has no schemas for 1.29 or 1.35: {sorted(available)}"
    return wanted


# --- the helm binary -----------------------------------------------------------------------------------


def test_helm_binary_is_the_verified_release(helm: Helm) -> None:
    digest = hashlib.sha256(helm.binary.read_bytes()).hexdigest()
    assert digest == HELM_SHA256
    proc = helm.run("version", "--short")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(HELM_VERSION)


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "inferencepool"
    assert chart["version"] == "0.1.0"
    assert chart["appVersion"] == "0.1.0"
    assert (CHART / "values.schema.json").is_file()
    assert (CHART / "templates" / "NOTES.txt").is_file()


# --- lint and validation of every values file -----------------------------------------------------------


@pytest.mark.parametrize("name", GOOD_VALUES)
def test_helm_lint_strict(helm: Helm, name: str) -> None:
    proc = helm.run("lint", "--strict", str(CHART), "-f", str(values(name)), "--namespace", NAMESPACE)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


def assert_valid(objs: list[dict[str, Any]]) -> None:
    """Every object in the release namespace; built-in kinds valid for Kubernetes (strict), CRD kinds
    valid against their schemas."""
    for obj in objs:
        assert obj["metadata"].get("namespace") == NAMESPACE, obj["metadata"]
        key = (obj["apiVersion"], obj["kind"])
        if obj["kind"] == "InferencePool":
            crd_validator("inferencepool-v1.schema.json").validate(obj)
        elif obj["kind"] == "InferenceObjective":
            crd_validator("inferenceobjective-v1alpha2.schema.json").validate(obj)
        elif key in CRD_KINDS:
            assert obj["metadata"]["name"] and isinstance(obj.get("spec"), dict), obj
        else:
            for version in k8s_versions():
                kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("name", GOOD_VALUES)
def test_rendered_manifests_are_valid(helm: Helm, name: str) -> None:
    objs = helm.template(values(name))
    kinds = Counter(o["kind"] for o in objs)
    for kind in ("Deployment", "Service", "ServiceAccount", "ConfigMap", "InferencePool"):
        assert kinds[kind] == 1, f"{name}: {kind} rendered {kinds[kind]} times"
    assert_valid(objs)


def test_kubernetes_validate_catches_a_broken_object(helm: Helm) -> None:
    """The strict validation above is not vacuous: a wrong type in a rendered object is caught."""
    dep = json.loads(json.dumps(one(helm.template(values("single.yaml")), "Deployment")))
    dep["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, k8s_versions()[-1], strict=True)
    dep["spec"]["replicas"] = 1
    dep["spec"]["template"]["spec"]["containers"][0]["livenessProb"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, k8s_versions()[-1], strict=True)


def test_inferencepool_schema_rejects_invalid_pools(helm: Helm) -> None:
    pool = one(helm.template(values("single.yaml")), "InferencePool")
    validator = crd_validator("inferencepool-v1.schema.json")
    validator.validate(pool)
    broken = [
        ("spec", "targetPorts", [{"number": p} for p in range(8000, 8009)]),
        ("spec", "targetPorts", [{"number": 8000}, {"number": 8000}]),
        ("spec", "selector", {"matchLabels": {}}),
        ("spec", "endpointPickerRef", {"name": EPP}),  # port required for a Service
        ("spec", "endpointPickerRef", {"name": EPP, "port": {"number": 9002}, "failureMode": "Open"}),
        ("spec", "appProtocol", "grpc"),
    ]
    for section, key, value in broken:
        bad = json.loads(json.dumps(pool))
        bad[section][key] = value
        assert not validator.is_valid(bad), f"{key}={value} passed the InferencePool schema"


# --- high availability --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "sets", "replicas"),
    [
        ("single.yaml", (), 1),
        ("ha.yaml", (), 3),
        ("single.yaml", ("inferenceExtension.replicas=2",), 2),
        ("ha.yaml", ("inferenceExtension.replicas=1",), 1),
        ("single.yaml", ("inferenceExtension.replicas=0",), 0),
        # one replica, but leader election asked for by flag (also upstream v1.0's misspelt flag name)
        ("single.yaml", ("inferenceExtension.flags.ha-enable-leader-election=true",), 1),
        ("single.yaml", ("inferenceExtension.flags.has-enable-leader-election=true",), 1),
        ("ha.yaml", ("inferenceExtension.flags.ha-enable-leader-election=false",), 3),
    ],
)
def test_leader_election_iff_more_than_one_replica_or_asked_for(
    helm: Helm, name: str, sets: tuple[str, ...], replicas: int
) -> None:
    objs = helm.template(values(name), sets=sets)
    dep = one(objs, "Deployment", EPP)
    asked = any("leader-election=" in s for s in sets)
    ha = replicas > 1 or any(s.endswith("leader-election=true") for s in sets)
    assert dep["spec"]["replicas"] == replicas
    flags = flag_map(args_of(objs))
    assert ("ha-enable-leader-election" in flags) == (ha or asked)
    if ha or asked:  # the user's value when given, else the chart's
        expected = next((s.rsplit("=", 1)[1] for s in sets if "leader-election=" in s), "true")
        assert flags["ha-enable-leader-election"] == expected
    assert (dep["spec"]["strategy"]["type"] == "Recreate") == ha
    lease_roles = [
        r for r in objects(objs, "Role") if any("leases" in rule.get("resources", []) for rule in r["rules"])
    ]
    assert len(lease_roles) == (1 if ha else 0)
    bindings = [b for b in objects(objs, "RoleBinding") if b["roleRef"]["name"].endswith("-leader-election")]
    assert len(bindings) == (1 if ha else 0)


def test_lease_role_grants_what_leader_election_needs(helm: Helm) -> None:
    objs = helm.template(values("ha.yaml"))
    role = one(objs, "Role", f"{EPP}-leader-election")
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): set(r["verbs"]) for r in role["rules"]}
    assert rules[(("coordination.k8s.io",), ("leases",))] == {
        "get",
        "list",
        "watch",
        "create",
        "update",
        "patch",
        "delete",
    }
    assert rules[(("",), ("events",))] == {"create", "patch"}
    binding = one(objs, "RoleBinding", f"{EPP}-leader-election")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": f"{EPP}-leader-election",
    }
    sa = one(objs, "Deployment", EPP)["spec"]["template"]["spec"]["serviceAccountName"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}]


def test_ha_replicas_prefer_different_nodes(helm: Helm) -> None:
    objs = helm.template(values("ha.yaml"))
    pod = one(objs, "Deployment", EPP)["spec"]["template"]
    (term,) = pod["spec"]["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert (
        term["podAffinityTerm"]["labelSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    )
    assert (
        "affinity" not in one(helm.template(values("single.yaml")), "Deployment")["spec"]["template"]["spec"]
    )
    # A user's affinity replaces the default entirely.
    objs = helm.template(values("upstream-latest.yaml"), sets=("inferenceExtension.replicas=3",))
    affinity = one(objs, "Deployment")["spec"]["template"]["spec"]["affinity"]
    assert affinity == load_values("upstream-latest.yaml")["inferenceExtension"]["affinity"]


def test_single_replica_rolls_without_downtime(helm: Helm) -> None:
    dep = one(helm.template(values("single.yaml")), "Deployment", EPP)
    assert dep["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }


# --- active-active HA -----------------------------------------------------------------------------------

AA = ("inferenceExtension.ha.mode=active-active",)
HA_SECRET_FILE = "/var/run/secrets/epp-ha/secret"


def granted(objs: list[dict[str, Any]], subject: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    """(apiGroup, resource) -> verbs the Roles bound to `subject` grant in the release namespace."""
    bound = {
        b["roleRef"]["name"]
        for b in objects(objs, "RoleBinding")
        if subject in b["subjects"] and b["roleRef"]["kind"] == "Role"
    }
    out: dict[tuple[str, str], set[str]] = {}
    for role in objects(objs, "Role"):
        if role["metadata"]["name"] in bound and role["metadata"]["namespace"] == NAMESPACE:
            for rule in role["rules"]:
                for group in rule["apiGroups"]:
                    for resource in rule["resources"]:
                        out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def secret_value(objs: list[dict[str, Any]], name: str, key: str = "secret") -> str:
    return base64.b64decode(one(objs, "Secret", name)["data"][key]).decode()


def ha_secret_volume(objs: list[dict[str, Any]]) -> dict[str, Any]:
    """The volume that --ha-secret-file's directory is mounted from."""
    secret_file = flag_map(args_of(objs))["ha-secret-file"]
    mount = next(
        m for m in epp_container(objs)["volumeMounts"] if secret_file.startswith(m["mountPath"] + "/")
    )
    assert mount["readOnly"] is True
    pod = one(objs, "Deployment", EPP)["spec"]["template"]["spec"]
    volume: dict[str, Any] = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    # the file the flag names is the one the Secret's key lands in
    (item,) = volume["secret"]["items"]
    assert f"{mount['mountPath']}/{item['path']}" == secret_file
    return volume


def test_active_active_renders_peer_link_and_no_leader(helm: Helm) -> None:
    objs = helm.template(values("active-active.yaml"))
    assert_valid(objs)
    dep = one(objs, "Deployment", EPP)
    pod = dep["spec"]["template"]
    assert dep["spec"]["replicas"] == 3
    flags = flag_map(args_of(objs))
    assert "ha-enable-leader-election" not in flags
    assert flags["ha-mode"] == "active-active"
    assert flags["ha-port"] == "9004"
    assert flags["ha-secret-file"] == HA_SECRET_FILE
    # peers are this Deployment's own pods: the selector is its selector, as k=v pairs
    selector = dep["spec"]["selector"]["matchLabels"]
    assert flags["ha-peer-selector"] == ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
    assert selector.items() <= pod["metadata"]["labels"].items()
    # every replica is ready, so they roll one by one; no lease, no lease Role
    assert dep["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    assert not any("leases" in rule["resources"] for r in objects(objs, "Role") for rule in r["rules"])
    assert not [o for o in objs if o["metadata"]["name"].endswith("-leader-election")]
    # spread over nodes, as with leader election
    (term,) = pod["spec"]["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == selector
    # the pod knows its IP (the peer watch leaves itself out by it), name and namespace
    env = {e["name"]: e for e in epp_container(objs)["env"]}
    assert env["POD_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    # the peer port is a container port, pod to pod, and not in the Service
    ports = {p["name"]: p for p in epp_container(objs)["ports"]}
    assert ports["ha-peer"] == {"name": "ha-peer", "containerPort": 9004, "protocol": "TCP"}
    svc = one(objs, "Service", EPP)
    assert svc["spec"]["type"] == "ClusterIP" and "clusterIP" not in svc["spec"]
    assert all(p["targetPort"] != "ha-peer" and p["port"] != 9004 for p in svc["spec"]["ports"])
    # the shared secret: created by the chart, random, mounted read-only where the flag points
    secret = one(objs, "Secret", f"{EPP}-ha")
    assert secret["type"] == "Opaque" and set(secret["data"]) == {"secret"}
    value = secret_value(objs, f"{EPP}-ha")
    assert len(value) == 48 and value.isascii() and value.isalnum()
    volume = ha_secret_volume(objs)
    assert volume["secret"]["secretName"] == f"{EPP}-ha"
    assert volume["secret"]["items"] == [{"key": "secret", "path": "secret"}]
    # the service account may watch its own pods in the release namespace (shared with the pool source)
    sa = {"kind": "ServiceAccount", "name": pod["spec"]["serviceAccountName"], "namespace": NAMESPACE}
    assert {"get", "list", "watch"} <= granted(objs, sa)[("", "pods")]
    assert flags["pool-namespace"] == NAMESPACE


def test_active_active_args_are_what_the_daemon_accepts(helm: Helm) -> None:
    """The rendered flags parse with the daemon's own settings (ports distinct, modes not mixed)."""
    settings = parse_settings(args_of(helm.template(values("active-active.yaml"))), {})
    assert settings.ha_mode is HaMode.ACTIVE_ACTIVE
    assert not settings.ha_enable_leader_election
    assert settings.ha_port == 9004
    assert settings.ha_secret_file == HA_SECRET_FILE
    assert parse_selector(settings.ha_peer_selector) == {"inferencepool": EPP}
    assert settings.peers == ()
    # and the active-passive chart flags still mean leader election to it
    assert parse_settings(args_of(helm.template(values("ha.yaml"))), {}).ha_enable_leader_election


def test_active_active_secret_is_new_per_install_without_a_cluster(helm: Helm) -> None:
    """With nothing to look up (helm template, a first install) every render draws a fresh value."""
    seen = set()
    for _ in range(2):
        proc = helm.run(
            "template", RELEASE, str(CHART), "-n", NAMESPACE, "-f", str(values("single.yaml")), "--set", AA[0]
        )
        assert proc.returncode == 0, proc.stderr
        seen.add(secret_value([d for d in yaml.safe_load_all(proc.stdout) if d], f"{EPP}-ha"))
    assert len(seen) == 2


def test_upgrade_keeps_the_live_secret(helm: Helm, tmp_path: Path) -> None:
    """lookup, run by the real helm against a fake API server: the Secret already in the cluster keeps its
    value, so an upgrade does not split the replicas into two groups that cannot hear each other."""
    live = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": f"{EPP}-ha",
            "namespace": NAMESPACE,
            "labels": {"app.kubernetes.io/managed-by": "Helm"},
            "annotations": {
                "meta.helm.sh/release-name": RELEASE,
                "meta.helm.sh/release-namespace": NAMESPACE,
            },
        },
        "type": "Opaque",
        "data": {"secret": base64.b64encode(b"the-value-from-the-first-install-0123").decode()},
    }
    server_side = ("--dry-run=server", "--disable-openapi-validation")
    path = f"/api/v1/namespaces/{NAMESPACE}/secrets/{EPP}-ha"
    with fake_api_server({("v1/secrets", NAMESPACE, f"{EPP}-ha"): live}) as api:
        objs = helm.template(
            values("active-active.yaml"), extra=server_side, kubeconfig=api.kubeconfig(tmp_path)
        )
        assert ("GET", path) in api.requests  # helm did look it up
    assert secret_value(objs, f"{EPP}-ha") == "the-value-from-the-first-install-0123"
    assert ha_secret_volume(objs)["secret"]["secretName"] == f"{EPP}-ha"
    # the same cluster without the Secret: a fresh random value
    with fake_api_server({}) as api:
        objs = helm.template(
            values("active-active.yaml"), extra=server_side, kubeconfig=api.kubeconfig(tmp_path)
        )
        assert ("GET", path) in api.requests
    value = secret_value(objs, f"{EPP}-ha")
    assert len(value) == 48 and value.isalnum()


@pytest.mark.parametrize("create", ["true", "false"])
def test_an_existing_secret_is_used_and_none_created(helm: Helm, create: str) -> None:
    objs = helm.template(
        values("active-active.yaml"),
        sets=(
            "inferenceExtension.ha.secret.name=team-ha-secret",
            "inferenceExtension.ha.secret.key=peer-token",
            f"inferenceExtension.ha.secret.create={create}",
        ),
    )
    assert_valid(objs)
    assert not objects(objs, "Secret")
    assert flag_map(args_of(objs))["ha-secret-file"] == HA_SECRET_FILE
    volume = ha_secret_volume(objs)
    assert volume["secret"]["secretName"] == "team-ha-secret"
    assert volume["secret"]["items"] == [{"key": "peer-token", "path": "secret"}]


def test_no_secret_means_a_plain_channel_and_a_warning(helm: Helm) -> None:
    sets = (*AA, "inferenceExtension.ha.secret.create=false")
    objs = helm.template(values("active-active.yaml"), sets=sets)
    assert not objects(objs, "Secret")
    assert "ha-secret-file" not in flag_map(args_of(objs))
    assert not [m for m in epp_container(objs)["volumeMounts"] if "epp-ha" in m["mountPath"]]
    assert flag_map(args_of(objs))["ha-mode"] == "active-active"
    notes = install_notes(helm, values("active-active.yaml"), sets)
    assert "WARNING: no ha.secret: the peer channel is plain, unauthenticated TCP" in notes
    notes = install_notes(helm, values("active-active.yaml"))
    assert f"CURVE-encrypted with the shared secret in Secret {EPP}-ha" in notes
    assert "WARNING" not in notes


def install_notes(helm: Helm, values_file: Path, sets: tuple[str, ...] = ()) -> str:
    """NOTES.txt as `helm install --dry-run` (no cluster) prints it."""
    args = ["install", RELEASE, str(CHART), "-n", NAMESPACE, "--dry-run=client", "-f", str(values_file)]
    for s in sets:
        args += ["--set", s]
    proc = helm.run(*args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split("NOTES:", 1)[1]


def test_notes_describe_the_ha_mode(helm: Helm) -> None:
    notes = install_notes(helm, values("active-active.yaml"))
    assert "High availability: active-active, 3 replica(s); every replica routes" in notes
    assert "scale to 2 or more" not in notes
    assert "scale to 2 or more" in install_notes(helm, values("single.yaml"), AA)
    assert "leader election on; only the leader is Ready" in install_notes(helm, values("ha.yaml"))
    assert "High availability" not in install_notes(helm, values("single.yaml"))


@pytest.mark.parametrize(
    ("sets", "port"),
    [
        (("inferenceExtension.ha.peerPort=9200",), 9200),
        (("inferenceExtension.flags.ha-port=9100",), 9100),  # a user flag still wins, the port follows
    ],
)
def test_peer_port_moves_flag_and_container_port_together(
    helm: Helm, sets: tuple[str, ...], port: int
) -> None:
    objs = helm.template(values("active-active.yaml"), sets=sets)
    assert flag_map(args_of(objs))["ha-port"] == str(port)  # also: given once
    assert {p["name"]: p["containerPort"] for p in epp_container(objs)["ports"]}["ha-peer"] == port
    assert all(p["port"] != port for p in one(objs, "Service", EPP)["spec"]["ports"])


def test_user_flags_merge_with_the_active_active_flags(helm: Helm) -> None:
    objs = helm.template(
        values("active-active.yaml"),
        sets=(
            "inferenceExtension.flags.ha-bootstrap-timeout=10s",
            "inferenceExtension.flags.ha-secret-file=/etc/epp-ha/key",
            "inferenceExtension.flags.ha-mode=active-active",  # agrees with ha.mode: allowed, given once
        ),
    )
    flags = flag_map(args_of(objs))
    assert flags["ha-bootstrap-timeout"] == "10s"
    assert flags["ha-secret-file"] == "/etc/epp-ha/key"
    assert flags["ha-mode"] == "active-active"
    # static peers replace the pod watch (the daemon refuses both)
    objs = helm.template(
        values("active-active.yaml"), sets=("inferenceExtension.flags.peers=10.0.0.5:9004\\,10.0.0.6:9004",)
    )
    flags = flag_map(args_of(objs))
    assert flags["peers"] == "10.0.0.5:9004,10.0.0.6:9004"
    assert "ha-peer-selector" not in flags
    assert parse_settings(args_of(objs), {}).peers == ("10.0.0.5:9004", "10.0.0.6:9004")


def test_active_active_with_one_replica_or_user_affinity(helm: Helm) -> None:
    """The mode, not the count, decides: one replica (e.g. before an autoscaler adds more) is still
    active-active, with RollingUpdate and no lease; a user's affinity replaces the default spread."""
    objs = helm.template(values("single.yaml"), sets=AA)
    dep = one(objs, "Deployment", EPP)
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"]["type"] == "RollingUpdate"
    assert flag_map(args_of(objs))["ha-mode"] == "active-active"
    assert "podAntiAffinity" in dep["spec"]["template"]["spec"]["affinity"]
    objs = helm.template(values("upstream-latest.yaml"), sets=AA)
    affinity = one(objs, "Deployment")["spec"]["template"]["spec"]["affinity"]
    assert affinity == load_values("upstream-latest.yaml")["inferenceExtension"]["affinity"]


def test_leader_election_flag_with_active_active_fails_also_with_schema_checks(helm: Helm) -> None:
    with pytest.raises(RenderError, match="exclude each other"):
        helm.template(
            values("active-active.yaml"), sets=("inferenceExtension.flags.ha-enable-leader-election=true",)
        )
    # turning it off explicitly is not a conflict
    objs = helm.template(
        values("active-active.yaml"), sets=("inferenceExtension.flags.ha-enable-leader-election=false",)
    )
    assert flag_map(args_of(objs))["ha-enable-leader-election"] == "false"
    assert not parse_settings(args_of(objs), {}).ha_enable_leader_election


def test_headless_service_only_when_asked(helm: Helm) -> None:
    assert not [
        o for o in helm.template(values("active-active.yaml")) if o["metadata"]["name"].endswith("-headless")
    ]
    objs = helm.template(values("active-active.yaml"), sets=("inferenceExtension.ha.headlessService=true",))
    assert_valid(objs)
    headless, svc = one(objs, "Service", f"{EPP}-headless"), one(objs, "Service", EPP)
    assert headless["spec"]["clusterIP"] == "None"
    assert "clusterIP" not in svc["spec"]  # the ClusterIP Service, which the pool points at, stays
    assert one(objs, "InferencePool")["spec"]["endpointPickerRef"]["name"] == EPP
    pod_labels = one(objs, "Deployment", EPP)["spec"]["template"]["metadata"]["labels"]
    assert headless["spec"]["selector"] == svc["spec"]["selector"]
    assert headless["spec"]["selector"].items() <= pod_labels.items()
    container_ports = {p["name"]: p["containerPort"] for p in epp_container(objs)["ports"]}
    ports = {p["name"]: (p["port"], container_ports[p["targetPort"]]) for p in headless["spec"]["ports"]}
    assert ports == {"grpc-ext-proc": (9002, 9002), "grpc-health": (9003, 9003)}


@pytest.mark.parametrize("name", ["single.yaml", "ha.yaml", "upstream-v1.0.yaml"])
def test_active_passive_is_the_default_and_unchanged(helm: Helm, name: str) -> None:
    """ha.mode active-passive renders exactly what no ha values render, with nothing of active-active."""
    objs = helm.template(values(name))
    assert objs == helm.template(values(name), sets=("inferenceExtension.ha.mode=active-passive",))
    # the active-active options are ignored in active-passive mode
    assert objs == helm.template(
        values(name),
        sets=("inferenceExtension.ha.peerPort=9100", "inferenceExtension.ha.secret.name=x"),
    )
    flags = flag_map(args_of(objs))
    assert not [
        f for f in flags if f in {"ha-mode", "ha-port", "ha-peer-selector", "ha-secret-file", "peers"}
    ]
    assert "POD_IP" not in {e["name"] for e in epp_container(objs)["env"]}
    assert "ha-peer" not in {p["name"] for p in epp_container(objs)["ports"]}
    assert not [o for o in objs if o["metadata"]["name"] in {f"{EPP}-ha", f"{EPP}-headless"}]


# --- config ConfigMap -------------------------------------------------------------------------------


def config_map_data(objs: list[dict[str, Any]]) -> dict[str, str]:
    return one(objs, "ConfigMap", EPP)["data"]


def test_default_config_is_upstream_default(helm: Helm) -> None:
    objs = helm.template(values("single.yaml"))
    data = config_map_data(objs)
    assert set(data) == {"default-plugins.yaml"}
    assert yaml.safe_load(data["default-plugins.yaml"]) == UPSTREAM_DEFAULT_CONFIG
    assert flag_map(args_of(objs))["config-file"] == "/config/default-plugins.yaml"


def test_custom_config_equals_values(helm: Helm) -> None:
    objs = helm.template(values("custom-plugins.yaml"))
    custom = load_values("custom-plugins.yaml")["inferenceExtension"]["pluginsCustomConfig"]
    data = config_map_data(objs)
    assert set(data) == {"default-plugins.yaml", *custom}
    for file, text in custom.items():
        assert yaml.safe_load(data[file]) == yaml.safe_load(text), file
    assert yaml.safe_load(data["default-plugins.yaml"]) == UPSTREAM_DEFAULT_CONFIG
    assert flag_map(args_of(objs))["config-file"] == "/config/prefix-heavy.yaml"


def test_custom_config_may_be_a_yaml_object_and_may_replace_the_default(helm: Helm, tmp_path: Path) -> None:
    config = {
        "apiVersion": "inference.networking.x-k8s.io/v1alpha1",
        "kind": "EndpointPickerConfig",
        "plugins": [{"type": "kv-cache-utilization-scorer"}],
        "schedulingProfiles": [
            {"name": "default", "plugins": [{"pluginRef": "kv-cache-utilization-scorer"}]}
        ],
    }
    f = tmp_path / "v.yaml"
    f.write_text(
        yaml.safe_dump(
            {
                "inferenceExtension": {"pluginsCustomConfig": {"default-plugins.yaml": config}},
                "inferencePool": {"modelServers": {"matchLabels": {"app": "x"}}},
            }
        )
    )
    data = config_map_data(helm.template(f))
    assert yaml.safe_load(data["default-plugins.yaml"]) == config


def test_config_is_mounted_as_a_directory(helm: Helm) -> None:
    """No subPath and no items: kubelet's ..data swap must reach the pod for hot reload to work."""
    for name in GOOD_VALUES:
        objs = helm.template(values(name))
        pod = one(objs, "Deployment", EPP)["spec"]["template"]["spec"]
        container = epp_container(objs)
        mounts = [m for m in container["volumeMounts"] if m["mountPath"] == "/config"]
        assert len(mounts) == 1, name
        assert "subPath" not in mounts[0] and "subPathExpr" not in mounts[0], name
        volume = next(v for v in pod["volumes"] if v["name"] == mounts[0]["name"])
        assert volume["configMap"]["name"] == EPP
        assert "items" not in volume["configMap"], name
        assert not any(m.get("subPath") for m in container["volumeMounts"]), name
        config_file = flag_map(args_of(objs))["config-file"]
        assert config_file.startswith("/config/")
        assert config_file.removeprefix("/config/") in config_map_data(objs), name
        annotations = pod.get("metadata", {}).get("annotations", {})
        assert not any("checksum" in k for k in annotations), "a config checksum would restart pods on edit"


# --- flags and env --------------------------------------------------------------------------------


def test_every_flag_rendered_once_as_key_equals_value(helm: Helm) -> None:
    objs = helm.template(values("env-flags.yaml"))
    args = args_of(objs)
    rendered = flag_map(args)
    wanted = {
        "v": "4",
        "secure-serving": "false",
        "disable-endpoint-subset-filter": "true",
        "refresh-metrics-interval": "100ms",
        "refresh-prometheus-metrics-interval": "5s",
        "metrics-staleness-threshold": "2s",
        "cert-path": "/etc/epp/certs with space",
    }
    assert set(wanted) == set(load_values("env-flags.yaml")["inferenceExtension"]["flags"])
    for key, value in wanted.items():
        assert [a for a in args if a.startswith(f"--{key}=")] == [f"--{key}={value}"]
        assert rendered[key] == value
    # The chart's own flags are still there.
    assert rendered["pool-name"] == RELEASE
    assert rendered["pool-namespace"] == NAMESPACE
    assert rendered["pool-group"] == "inference.networking.k8s.io"
    assert rendered["model-server-type"] == "vllm"


def test_flag_values_keep_their_exact_text(helm: Helm, tmp_path: Path) -> None:
    """Values files give numbers as float64: 1000000 must not become 1e+06, 0.5 stays 0.5."""
    f = tmp_path / "v.yaml"
    f.write_text(
        "inferenceExtension:\n"
        "  flags:\n"
        "    big-number: 1000000\n"
        "    ratio: 0.5\n"
        "    endpoint-target-ports: [8000, 8001]\n"
        "    quoted: 'a \"quoted\" value: {x}'\n"
        "    --already-dashed: yes-string\n"
        "inferencePool:\n  modelServers:\n    matchLabels: {app: x}\n"
    )
    rendered = flag_map(args_of(helm.template(f)))
    assert rendered["big-number"] == "1000000"
    assert rendered["ratio"] == "0.5"
    assert rendered["endpoint-target-ports"] == "8000,8001"
    assert rendered["quoted"] == 'a "quoted" value: {x}'
    assert rendered["already-dashed"] == "yes-string"


def test_user_flag_overrides_the_chart_flag(helm: Helm) -> None:
    objs = helm.template(
        values("ha.yaml"),
        sets=(
            "inferenceExtension.flags.config-file=/etc/epp/config.yaml",
            "inferenceExtension.flags.pool-name=other",
        ),
    )
    rendered = flag_map(args_of(objs))  # also asserts each flag appears once
    assert rendered["config-file"] == "/etc/epp/config.yaml"
    assert rendered["pool-name"] == "other"
    assert rendered["ha-enable-leader-election"] == "true"


def test_custom_env_and_downward_api(helm: Helm) -> None:
    objs = helm.template(values("env-flags.yaml"))
    env = {e["name"]: e for e in epp_container(objs)["env"]}
    assert env["NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["EPP_METRICS_STALENESS_THRESHOLD"] == {
        "name": "EPP_METRICS_STALENESS_THRESHOLD",
        "value": "3s",
    }
    assert env["HF_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "hf-token", "key": "token"}}
    names = [e["name"] for e in epp_container(objs)["env"]]
    assert len(names) == len(set(names))


def test_user_env_replaces_a_chart_env_var(helm: Helm) -> None:
    objs = helm.template(
        values("single.yaml"),
        sets=("inferenceExtension.env[0].name=NAMESPACE", "inferenceExtension.env[0].value=fixed"),
    )
    env = epp_container(objs)["env"]
    assert [e for e in env if e["name"] == "NAMESPACE"] == [{"name": "NAMESPACE", "value": "fixed"}]


def test_pool_namespace_is_always_the_release_namespace(helm: Helm) -> None:
    objs = helm.template(values("single.yaml"), namespace="team-a", release="mistral")
    rendered = flag_map(args_of_named(objs, "mistral-epp"))
    assert rendered["pool-namespace"] == "team-a"
    assert rendered["pool-name"] == "mistral"
    assert one(objs, "InferencePool")["metadata"] == {
        **one(objs, "InferencePool")["metadata"],
        "name": "mistral",
    }


def args_of_named(objs: list[dict[str, Any]], deployment: str) -> list[str]:
    containers = one(objs, "Deployment", deployment)["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "epp")["args"]


# --- model server type --------------------------------------------------------------------------------


def test_sglang_model_server_type(helm: Helm) -> None:
    objs = helm.template(values("sglang.yaml"))
    rendered = flag_map(args_of(objs))
    assert rendered["model-server-type"] == "sglang"
    # No deprecated per-engine metric flags (upstream's chart passed them and the EPP rejected them).
    assert not any(k.endswith("-metric") for k in rendered)
    config = yaml.safe_load(config_map_data(objs)["default-plugins.yaml"])
    extractor = next(p for p in config["plugins"] if p["type"] == "core-metrics-extractor")
    assert extractor["parameters"] == {"defaultEngine": "sglang"}
    pool = one(objs, "InferencePool")
    assert pool["spec"]["targetPorts"] == [{"number": 30000}, {"number": 30001}]
    assert pool["spec"]["selector"]["matchLabels"] == {"app": "sglang-qwen", "tier": "gpu"}


@pytest.mark.parametrize("server_type", ["vllm", "sglang", "triton-tensorrt-llm", "trtllm-serve"])
def test_every_model_server_type_renders(helm: Helm, server_type: str) -> None:
    objs = helm.template(values("single.yaml"), sets=(f"inferencePool.modelServerType={server_type}",))
    assert flag_map(args_of(objs))["model-server-type"] == server_type


# --- the wiring between objects ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", GOOD_VALUES)
def test_pool_service_and_pods_are_wired_together(helm: Helm, name: str) -> None:
    objs = helm.template(values(name))
    pool, svc, dep = one(objs, "InferencePool"), one(objs, "Service", EPP), one(objs, "Deployment", EPP)
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    ref = pool["spec"]["endpointPickerRef"]
    assert ref["name"] == svc["metadata"]["name"]
    ports = {p["name"]: p for p in svc["spec"]["ports"]}
    assert ref["port"]["number"] == ports["grpc-ext-proc"]["port"]
    container_ports = {p["name"]: p["containerPort"] for p in epp_container(objs)["ports"]}
    for port in ("grpc-ext-proc", "grpc-health", "http-metrics"):
        assert ports[port]["targetPort"] in container_ports
    expected = {"grpc": 9002, "grpc-health": 9003, "metrics": 9090}
    if load_values(name).get("inferenceExtension", {}).get("ha", {}).get("mode") == "active-active":
        expected["ha-peer"] = 9004  # pod to pod only: never a Service port
    assert container_ports == expected
    assert {p["targetPort"] for p in svc["spec"]["ports"]} == {"grpc", "grpc-health", "metrics"}
    matchlabels = load_values(name)["inferencePool"]["modelServers"]["matchLabels"]
    assert pool["spec"]["selector"]["matchLabels"] == {k: str(v) for k, v in matchlabels.items()}
    assert pool["metadata"]["name"] == RELEASE


def test_failure_mode_default_and_override(helm: Helm) -> None:
    ref = one(helm.template(values("single.yaml")), "InferencePool")["spec"]["endpointPickerRef"]
    assert ref == {"name": EPP, "port": {"number": 9002}, "failureMode": "FailOpen"}
    ref = one(helm.template(values("upstream-latest.yaml")), "InferencePool")["spec"]["endpointPickerRef"]
    assert ref["failureMode"] == "FailClose"


def test_ext_proc_port_moves_service_container_and_pool_together(helm: Helm) -> None:
    objs = helm.template(values("single.yaml"), sets=("inferenceExtension.extProcPort=9100",))
    assert one(objs, "InferencePool")["spec"]["endpointPickerRef"]["port"] == {"number": 9100}
    svc_port = next(p for p in one(objs, "Service", EPP)["spec"]["ports"] if p["name"] == "grpc-ext-proc")
    assert svc_port["port"] == 9100
    assert {p["name"]: p["containerPort"] for p in epp_container(objs)["ports"]}["grpc"] == 9100
    assert flag_map(args_of(objs))["grpc-port"] == "9100"


def test_probes_use_the_grpc_health_services(helm: Helm) -> None:
    for name in ("single.yaml", "ha.yaml"):
        container = epp_container(helm.template(values(name)))
        assert container["livenessProbe"]["grpc"] == {"port": 9003, "service": "liveness"}
        assert container["readinessProbe"]["grpc"] == {"port": 9003, "service": "readiness"}
        assert container["readinessProbe"]["periodSeconds"] == 2


def test_rbac_covers_pods_pools_objectives_and_rewrites(helm: Helm) -> None:
    objs = helm.template(values("single.yaml"))
    granted: dict[tuple[str, str], set[str]] = {}
    for role in objects(objs, "Role"):
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    granted.setdefault((group, resource), set()).update(rule["verbs"])
    read = {"get", "list", "watch"}
    for need in [
        ("", "pods"),
        ("inference.networking.k8s.io", "inferencepools"),
        ("inference.networking.x-k8s.io", "inferenceobjectives"),
        ("inference.networking.x-k8s.io", "inferencemodelrewrites"),
    ]:
        assert read <= granted.get(need, set()), need
    sa = one(objs, "ServiceAccount", EPP)
    assert (
        one(objs, "Deployment", EPP)["spec"]["template"]["spec"]["serviceAccountName"]
        == sa["metadata"]["name"]
    )
    binding = one(objs, "RoleBinding", EPP)
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": EPP, "namespace": NAMESPACE}]
    assert not objects(objs, "ClusterRole") and not objects(objs, "ClusterRoleBinding")


def test_pod_spec_defaults(helm: Helm) -> None:
    objs = helm.template(values("single.yaml"))
    pod = one(objs, "Deployment", EPP)["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 130
    container = epp_container(objs)
    assert container["resources"] == {"requests": {"cpu": 4, "memory": "8Gi"}, "limits": {"memory": "16Gi"}}
    assert container["image"] == "ghcr.io/epp-project/epp:0.1.0"
    assert "affinity" not in pod and "tolerations" not in pod
    # Hardened by default; the read-only root still has a writable /tmp.
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    tmp = next(m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
    assert next(v for v in pod["volumes"] if v["name"] == tmp["name"])["emptyDir"] == {}


def test_docs_describe_every_value() -> None:
    """docs/operations.md's values table names every key the schema knows."""
    docs = (CHART.parents[1] / "docs" / "operations.md").read_text()
    schema = json.loads((CHART / "values.schema.json").read_text())
    missing = []
    for section in ("inferenceExtension", "inferencePool", "experimentalHttpRoute"):
        for key in schema["properties"][section]["properties"]:
            if f"{section}.{key}" not in docs and f"`{key}`" not in docs and f"/ `{key}`" not in docs:
                missing.append(f"{section}.{key}")
    assert not missing, f"undocumented values: {missing}"


def test_affinity_tolerations_and_image_override(helm: Helm) -> None:
    objs = helm.template(
        values("upstream-latest.yaml"),
        sets=(
            "inferenceExtension.image.registry=registry.example.com",
            "inferenceExtension.image.repository=ml/epp",
            "inferenceExtension.image.tag=v9",
        ),
    )
    pod = one(objs, "Deployment", EPP)["spec"]["template"]["spec"]
    src = load_values("upstream-latest.yaml")["inferenceExtension"]
    assert pod["affinity"] == src["affinity"]
    assert pod["tolerations"] == src["tolerations"]
    assert epp_container(objs)["image"] == "registry.example.com/ml/epp:v9"


# --- monitoring -------------------------------------------------------------------------------------


def test_service_monitor_only_when_enabled(helm: Helm) -> None:
    assert not objects(helm.template(values("single.yaml")), "ServiceMonitor")
    assert not objects(helm.template(values("single.yaml")), "Secret")


def test_service_monitor_scrapes_the_epp_with_a_bearer_token(helm: Helm) -> None:
    objs = helm.template(values("monitoring.yaml"))
    monitor = one(objs, "ServiceMonitor", f"{EPP}-monitor")
    svc = one(objs, "Service", EPP)
    assert monitor["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in svc["spec"]["ports"]}
    assert endpoint["interval"] == "15s"
    secret_name = "inference-gateway-sa-metrics-reader-secret"
    assert endpoint["authorization"]["credentials"] == {"name": secret_name, "key": "token"}
    secret = one(objs, "Secret", secret_name)
    assert secret["type"] == "kubernetes.io/service-account-token"
    assert secret["metadata"]["annotations"]["kubernetes.io/service-account.name"] == EPP
    # The EPP checks the same token: the Secret is mounted and named by --metrics-bearer-token-file.
    token_file = flag_map(args_of(objs))["metrics-bearer-token-file"]
    container, pod = epp_container(objs), one(objs, "Deployment", EPP)["spec"]["template"]["spec"]
    mount = next(m for m in container["volumeMounts"] if token_file.startswith(m["mountPath"] + "/"))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == secret_name
    assert token_file == f"{mount['mountPath']}/token"


def test_metrics_without_auth(helm: Helm) -> None:
    objs = helm.template(values("upstream-latest.yaml"))
    (endpoint,) = one(objs, "ServiceMonitor")["spec"]["endpoints"]
    assert "authorization" not in endpoint
    assert not objects(objs, "Secret")
    assert "metrics-bearer-token-file" not in flag_map(args_of(objs))


TOKEN_REVIEW = "inferenceExtension.monitoring.prometheus.auth.tokenReview"


@pytest.mark.parametrize("name", ["single.yaml", "upstream-latest.yaml"])
def test_metrics_endpoint_auth_off_without_a_token_file_or_token_review(helm: Helm, name: str) -> None:
    """No ServiceMonitor (single) or auth.enabled false (upstream-latest): /metrics is left open."""
    objs = helm.template(values(name))
    flags = flag_map(args_of(objs))
    assert flags["metrics-endpoint-auth"] == "false"
    assert "metrics-bearer-token-file" not in flags
    assert not objects(objs, "ClusterRoleBinding")


@pytest.mark.parametrize("name", GOOD_VALUES)
def test_token_review_off_changes_nothing(helm: Helm, name: str) -> None:
    default = helm.template(values(name))
    off = helm.template(values(name), sets=(f"{TOKEN_REVIEW}=false",))
    without_random = [o for o in default if o["kind"] != "Secret" or o["metadata"]["name"] != f"{EPP}-ha"]
    assert [o for o in off if o["kind"] != "Secret" or o["metadata"]["name"] != f"{EPP}-ha"] == without_random
    assert not objects(default, "ClusterRoleBinding")
    assert not objects(default, "ClusterRole")


@pytest.mark.parametrize("name", ["monitoring.yaml", "single.yaml"])
def test_token_review_binds_auth_delegator_and_keeps_endpoint_auth_on(helm: Helm, name: str) -> None:
    objs = helm.template(values(name), sets=(f"{TOKEN_REVIEW}=true",))
    for obj in objs:
        if (obj["apiVersion"], obj["kind"]) not in CRD_KINDS:
            kubernetes_validate.validate(obj, k8s_versions()[-1], strict=True)
    binding = one(objs, "ClusterRoleBinding", f"{NAMESPACE}-{EPP}-auth-delegator")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "system:auth-delegator",
    }
    sa = one(objs, "ServiceAccount", EPP)
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": EPP, "namespace": NAMESPACE}]
    assert (
        one(objs, "Deployment", EPP)["spec"]["template"]["spec"]["serviceAccountName"]
        == sa["metadata"]["name"]
    )
    flags = flag_map(args_of(objs))
    assert "metrics-endpoint-auth" not in flags
    assert "metrics-bearer-token-file" not in flags
    assert not objects(objs, "Secret")
    volumes = one(objs, "Deployment", EPP)["spec"]["template"]["spec"].get("volumes", [])
    assert not [v for v in volumes if "secret" in v]
    # The daemon's own default is then in force: Kubernetes-mode /metrics auth by TokenReview.
    assert parse_settings(args_of(objs), {}).metrics_endpoint_auth is True
    monitors = objects(objs, "ServiceMonitor")
    if name == "monitoring.yaml":
        (endpoint,) = monitors[0]["spec"]["endpoints"]
        assert endpoint["bearerTokenFile"] == "/var/run/secrets/kubernetes.io/serviceaccount/token"
        assert "authorization" not in endpoint
    else:
        assert not monitors


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (
            ("inferenceExtension.monitoring.prometheus.auth.enabled=false",),
            "auth.tokenReview needs auth.enabled: true",
        ),
        (
            ("inferenceExtension.flags.metrics-bearer-token-file=/t/token",),
            "auth.tokenReview and the flag metrics-bearer-token-file exclude each other",
        ),
        (
            ("inferenceExtension.flags.metrics-endpoint-auth=false",),
            "auth.tokenReview and the flag metrics-endpoint-auth: false exclude each other",
        ),
    ],
)
def test_token_review_conflicts_fail_with_a_message(helm: Helm, sets: tuple[str, ...], message: str) -> None:
    with pytest.raises(RenderError) as err:
        helm.template(values("monitoring.yaml"), sets=(f"{TOKEN_REVIEW}=true", *sets))
    assert message in str(err.value)


# --- upstream values compatibility ------------------------------------------------------------------------


def test_upstream_v1_0_values(helm: Helm) -> None:
    objs = helm.template(values("upstream-v1.0.yaml"))
    container = epp_container(objs)
    assert container["image"] == "registry.example.com/inference/epp:v1.0.1"
    assert container["imagePullPolicy"] == "Always"
    rendered = flag_map(args_of(objs))
    assert rendered["v"] == "3"
    assert rendered["ha-enable-leader-election"] == "false"
    assert "has-enable-leader-election" not in rendered
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["EPP_REFRESH_METRICS_INTERVAL"] == "100ms"
    assert one(objs, "InferencePool")["spec"]["targetPorts"] == [{"number": 8080}]


def test_istio_destination_rule_follows_secure_serving(helm: Helm) -> None:
    objs = helm.template(
        values("upstream-latest.yaml"), sets=("inferenceExtension.flags.secure-serving=false",)
    )
    rule = one(objs, "DestinationRule", EPP)
    assert rule["spec"]["trafficPolicy"]["tls"] == {"mode": "DISABLE"}
    assert flag_map(args_of(objs))["secure-serving"] == "false"


def test_upstream_latest_values(helm: Helm) -> None:
    objs = helm.template(values("upstream-latest.yaml"))
    rule = one(objs, "DestinationRule", EPP)
    assert rule["spec"]["host"] == f"{EPP}.{NAMESPACE}.svc.cluster.local"
    assert rule["spec"]["trafficPolicy"] == {
        "tls": {"mode": "SIMPLE", "insecureSkipVerify": True},
        "connectionPool": {"http": {"maxRequestsPerConnection": 256000}},
    }
    route = one(objs, "HTTPRoute", RELEASE)
    assert route["spec"]["parentRefs"][0]["name"] == "my-gateway"
    (rule0,) = route["spec"]["rules"]
    assert rule0["backendRefs"] == [
        {"group": "inference.networking.k8s.io", "kind": "InferencePool", "name": RELEASE}
    ]
    assert rule0["matches"][0]["headers"] == [{"type": "Exact", "name": "x-model-family", "value": "llama"}]
    assert rule0["timeouts"] == {"request": "300s"}
    objectives = {o["metadata"]["name"]: o["spec"] for o in objects(objs, "InferenceObjective")}
    pool_ref = {"group": "inference.networking.k8s.io", "kind": "InferencePool", "name": RELEASE}
    assert objectives == {
        "chat": {"priority": 10, "poolRef": pool_ref},
        "batch": {"priority": -1, "poolRef": pool_ref},
    }
    env = {e["name"]: e.get("value") for e in epp_container(objs)["env"]}
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.observability:4317"
    assert env["OTEL_TRACES_SAMPLER_ARG"] == "0.5"
    assert flag_map(args_of(objs))["tracing"] == "true"


def test_tracing_flag_and_otel_environment_follow_tracing_enabled(helm: Helm) -> None:
    """--tracing=true|false as upstream's chart; when on, the OTEL_* variables the EPP reads (the exporter
    is OTLP, the pod's name and namespace go in the resource), after the variables they refer to."""
    off = helm.template(values("single.yaml"))
    assert flag_map(args_of(off))["tracing"] == "false"
    assert not [e for e in epp_container(off)["env"] if e["name"].startswith("OTEL_")]
    assert parse_settings(args_of(off), {}).tracing is False

    on = helm.template(values("single.yaml"), sets=("inferenceExtension.tracing.enabled=true",))
    assert parse_settings(args_of(on), {}).tracing is True
    names = [e["name"] for e in epp_container(on)["env"]]
    env = {e["name"]: e.get("value") for e in epp_container(on)["env"]}
    assert {k: v for k, v in env.items() if k.startswith("OTEL_")} == {
        "OTEL_SERVICE_NAME": "gateway-api-inference-extension/epp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://localhost:4317",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.1",
        "OTEL_RESOURCE_ATTRIBUTES": "k8s.pod.name=$(POD_NAME),k8s.namespace.name=$(NAMESPACE)",
    }
    assert names.index("OTEL_RESOURCE_ATTRIBUTES") > max(names.index("POD_NAME"), names.index("NAMESPACE"))
    # a user's flag wins over the chart's
    forced = helm.template(
        values("single.yaml"),
        sets=("inferenceExtension.flags.tracing=false", "inferenceExtension.tracing.enabled=true"),
    )
    assert flag_map(args_of(forced))["tracing"] == "false"


def test_gke_provider(helm: Helm) -> None:
    objs = helm.template(values("gke.yaml"))
    check = one(objs, "HealthCheckPolicy", RELEASE)
    assert check["spec"]["targetRef"] == {
        "group": "inference.networking.k8s.io",
        "kind": "InferencePool",
        "name": RELEASE,
    }
    assert check["spec"]["default"]["config"] == {
        "type": "HTTP",
        "httpHealthCheck": {"requestPath": "/health", "port": 8000},
    }
    assert one(objs, "GCPBackendPolicy", RELEASE)["spec"]["default"]["timeoutSec"] == 300


# --- rejected values ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("replicas-string.yaml", "/inferenceExtension/replicas"),
        ("targetports-too-many.yaml", "/inferencePool/targetPorts"),
        ("failuremode.yaml", "/inferenceExtension/failureMode"),
        ("model-server-type.yaml", "/inferencePool/modelServerType"),
        ("typo-key.yaml", "'replica' not allowed"),
        ("flags-map-value.yaml", "/inferenceExtension/flags"),
        ("ha-mode.yaml", "/inferenceExtension/ha/mode"),
    ],
)
def test_schema_rejects_bad_values(helm: Helm, name: str, message: str) -> None:
    with pytest.raises(RenderError) as err:
        helm.template(BAD_VALUES / name)
    assert "don't meet the specifications of the schema" in str(err.value)
    assert message in str(err.value)
    proc = helm.run("lint", "--strict", str(CHART), "-f", str(BAD_VALUES / name))
    assert proc.returncode != 0


@pytest.mark.parametrize("name", ["empty-matchlabels.yaml", "no-matchlabels.yaml"])
def test_missing_match_labels_fails_with_a_clear_message(helm: Helm, name: str) -> None:
    with pytest.raises(RenderError) as err:
        helm.template(BAD_VALUES / name)
    assert "inferencePool.modelServers.matchLabels is required and must not be empty" in str(err.value)


def test_chart_without_values_asks_for_match_labels(helm: Helm) -> None:
    with pytest.raises(RenderError, match=r"inferencePool\.modelServers\.matchLabels is required"):
        helm.template()


@pytest.mark.parametrize(
    ("name", "sets", "message"),
    [
        ("missing-config-file.yaml", (), 'pluginsConfigFile "custom.yaml" is not in the config ConfigMap'),
        (None, ("inferenceExtension.sidecar.enabled=true",), "does not run a sidecar"),
        (None, ("inferenceExtension.latencyPredictor.enabled=true",), "latency predictor is not supported"),
        (None, ("provider.name=aws",), 'provider.name "aws": use none, gke or istio'),
        (None, ("inferencePool.modelServerProtocol=grpc",), "this EPP has no gRPC request parser"),
        (
            "ha-mode.yaml",
            (),
            'inferenceExtension.ha.mode "active-standby": use active-passive (one leader routes, leader '
            "election with more than one replica) or active-active",
        ),
        (None, ("inferenceExtension.ha.mode=",), 'inferenceExtension.ha.mode "": use active-passive'),
        *(
            (
                None,
                ("inferenceExtension.ha.mode=active-active", f"inferenceExtension.flags.{flag}=true"),
                "inferenceExtension.ha.mode active-active and the flag ha-enable-leader-election: true "
                "exclude each other: every active-active replica routes and no lease is taken; remove "
                "inferenceExtension.flags.ha-enable-leader-election, or set inferenceExtension.ha.mode: "
                "active-passive",
            )
            # upstream v1.0's misspelt flag means the same
            for flag in ("ha-enable-leader-election", "has-enable-leader-election")
        ),
        (
            None,
            ("inferenceExtension.flags.ha-mode=active-active",),
            'inferenceExtension.flags.ha-mode "active-active" disagrees with inferenceExtension.ha.mode '
            '"active-passive": set the mode with inferenceExtension.ha.mode only',
        ),
    ],
)
def test_template_checks_fail_with_a_message(
    helm: Helm, name: str | None, sets: tuple[str, ...], message: str
) -> None:
    files = [BAD_VALUES / name] if name else [values("single.yaml")]
    with pytest.raises(RenderError) as err:
        helm.template(*files, sets=sets, extra=("--skip-schema-validation",))
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("name", "sets", "message"),
    [
        ("flags-map-value.yaml", (), "a flag value must be a string, number, boolean or list"),
        (
            None,
            ("inferencePool.targetPorts[0].number=8000", "inferencePool.targetPorts[1].number=8000"),
            "port 8000 is listed twice",
        ),
        ("ha-mode.yaml", (), 'inferenceExtension.ha.mode "active-standby": use active-passive'),
    ],
)
def test_template_checks_back_up_the_schema(
    helm: Helm, name: str | None, sets: tuple[str, ...], message: str
) -> None:
    """With --skip-schema-validation the templates still refuse what the schema would have refused."""
    files = [BAD_VALUES / name] if name else [values("single.yaml")]
    with pytest.raises(RenderError, match="schema"):
        helm.template(*files, sets=sets)
    with pytest.raises(RenderError) as err:
        helm.template(*files, sets=sets, extra=("--skip-schema-validation",))
    assert message in str(err.value)


def test_grpc_model_servers_with_an_explicit_parser(helm: Helm) -> None:
    objs = helm.template(
        values("single.yaml"),
        sets=("inferencePool.modelServerProtocol=grpc", "inferencePool.parser=passthrough-parser"),
    )
    assert one(objs, "InferencePool")["spec"]["appProtocol"] == "kubernetes.io/h2c"
    config = yaml.safe_load(config_map_data(objs)["default-plugins.yaml"])
    assert {"type": "passthrough-parser"} in config["plugins"]
    assert one(helm.template(values("single.yaml")), "InferencePool")["spec"]["appProtocol"] == "http"


# --- workers ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sets", "workers"),
    [
        ([], "4"),  # the chart's default CPU request
        (["inferenceExtension.resources.requests.cpu=2500m"], "3"),
        (["inferenceExtension.resources.requests.cpu=500m"], "1"),
        (["inferenceExtension.resources.requests.cpu=2"], "2"),
        (["inferenceExtension.workers=6"], "6"),
        (["inferenceExtension.resources=null"], None),  # no request: the EPP counts its CPUs itself
        (["inferenceExtension.flags.workers=1"], "1"),  # a flag the user sets wins
    ],
)
def test_workers_follow_the_cpu_request(helm: Helm, sets: list[str], workers: str | None) -> None:
    flags = flag_map(args_of(helm.template(values("single.yaml"), sets=sets)))
    assert flags.get("workers") == workers


def test_a_bad_workers_value_is_refused(helm: Helm) -> None:
    with pytest.raises(RenderError, match="workers"):
        helm.template(values("single.yaml"), sets=["inferenceExtension.workers=-2"])
