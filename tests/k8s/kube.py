"""A fake Kubernetes API server (kmock) in a background thread, and helpers to edit objects in it.

kmock stands in for a real API server: it serves list and watch (watch starts with ADDED for every
existing object), create, merge-patch and delete over real HTTP, but it ignores label and field
selectors, timeoutSeconds and resourceVersions, and does not fill in `metadata.namespace` (the helpers
below set it, as a real server would). The official `kubernetes` client talks to it unchanged.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Mapping
from typing import Any

import kmock
from kubernetes import client

POOL_GROUP = "inference.networking.k8s.io"
X_GROUP = "inference.networking.x-k8s.io"
RESOURCES = (
    "v1/pods",
    f"{POOL_GROUP}/v1/inferencepools",
    f"{X_GROUP}/v1alpha2/inferenceobjectives",
    f"{X_GROUP}/v1alpha2/inferencemodelrewrites",
)


class KubeServer:
    def __init__(self) -> None:
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kmock", daemon=True)
        self.url = ""
        self.k8s: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    def _run(self) -> None:
        async def main() -> None:
            async with kmock.KubernetesEmulator() as k8s, kmock.Server(k8s, host="127.0.0.1") as srv:
                for resource in RESOURCES:
                    k8s.resources[resource] = {}
                self.k8s = k8s
                self.url = str(srv.url).rstrip("/")
                self._loop = asyncio.get_running_loop()
                self._stop = asyncio.Event()
                self._ready.set()
                await self._stop.wait()

        asyncio.run(main())

    def start(self) -> KubeServer:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("kmock did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(5)

    def react(self, install: Callable[[Any], None]) -> None:
        """Install a kmock reaction (from the test thread) on the server's loop."""
        assert self._loop is not None
        done = threading.Event()

        def run() -> None:
            install(self.k8s)
            done.set()

        self._loop.call_soon_threadsafe(run)
        done.wait(5)

    def api_client(self) -> client.ApiClient:
        cfg = client.Configuration(host=self.url)
        cfg.connection_pool_maxsize = 16
        return client.ApiClient(cfg)


class Kube:
    """Blocking helpers that create, patch and delete objects through the official client."""

    def __init__(self, api: client.ApiClient, namespace: str = "default") -> None:
        self.ns = namespace
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)

    # ---- pods ------------------------------------------------------------------------------------

    @staticmethod
    def pod(
        name: str,
        ip: str,
        *,
        labels: Mapping[str, str] | None = None,
        ready: bool = True,
        ports: list[int] | None = None,
        annotations: Mapping[str, str] | None = None,
        finalizers: list[str] | None = None,
    ) -> dict[str, Any]:
        container: dict[str, Any] = {"name": "server", "image": "vllm"}
        if ports:
            container["ports"] = [{"containerPort": p} for p in ports]
        meta: dict[str, Any] = {"name": name, "labels": dict(labels or {"app": "vllm"})}
        if annotations:
            meta["annotations"] = dict(annotations)
        if finalizers:
            meta["finalizers"] = list(finalizers)
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": meta,
            "spec": {"containers": [container]},
            "status": {
                "podIP": ip,
                "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            },
        }

    def create_pod(self, name: str, ip: str, **kwargs: Any) -> None:
        body = self.pod(name, ip, **kwargs)
        body["metadata"]["namespace"] = self.ns  # as a real API server fills it in (kmock's watch needs it)
        self.core.create_namespaced_pod(self.ns, body)

    def set_ready(self, name: str, ready: bool) -> None:
        status = "True" if ready else "False"
        self.core.patch_namespaced_pod(
            name, self.ns, {"status": {"conditions": [{"type": "Ready", "status": status}]}}
        )

    def patch_pod(self, name: str, body: Mapping[str, Any]) -> None:
        self.core.patch_namespaced_pod(name, self.ns, dict(body))

    def delete_pod(self, name: str) -> None:
        self.core.delete_namespaced_pod(name, self.ns)

    # ---- custom resources ------------------------------------------------------------------------

    def create_pool(self, name: str, selector: Mapping[str, str], ports: list[int]) -> None:
        body = {
            "apiVersion": f"{POOL_GROUP}/v1",
            "kind": "InferencePool",
            "metadata": {"name": name, "namespace": self.ns},
            "spec": {
                "selector": {"matchLabels": dict(selector)},
                "targetPorts": [{"number": p} for p in ports],
                "endpointPickerRef": {"name": "epp", "port": {"number": 9002}},
            },
        }
        self.custom.create_namespaced_custom_object(POOL_GROUP, "v1", self.ns, "inferencepools", body)

    def patch_pool(self, name: str, spec: Mapping[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(
            POOL_GROUP, "v1", self.ns, "inferencepools", name, {"spec": dict(spec)}
        )

    def delete_pool(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(POOL_GROUP, "v1", self.ns, "inferencepools", name)

    def create_x(self, plural: str, name: str, spec: Mapping[str, Any], created: str | None = None) -> None:
        kind = {
            "inferenceobjectives": "InferenceObjective",
            "inferencemodelrewrites": "InferenceModelRewrite",
        }
        meta: dict[str, Any] = {"name": name, "namespace": self.ns}
        if created:
            meta["creationTimestamp"] = created
        body = {
            "apiVersion": f"{X_GROUP}/v1alpha2",
            "kind": kind[plural],
            "metadata": meta,
            "spec": dict(spec),
        }
        self.custom.create_namespaced_custom_object(X_GROUP, "v1alpha2", self.ns, plural, body)

    def patch_x(self, plural: str, name: str, spec: Mapping[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(
            X_GROUP, "v1alpha2", self.ns, plural, name, {"spec": dict(spec)}
        )

    def delete_x(self, plural: str, name: str) -> None:
        self.custom.delete_namespaced_custom_object(X_GROUP, "v1alpha2", self.ns, plural, name)
