"""A kmock fake Kubernetes API server in a background thread (Leases), for tests and `epp bench reliability`.

kmock stands in for a real kube-apiserver (none is installable here): it serves real HTTP to the official
`kubernetes` client. It has no resourceVersion conflicts, so races between electors are not tested with it.
`kubeconfig()` writes a kubeconfig that points a daemon process at it.
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import kmock
from kubernetes import client


class KmockThread:
    def __init__(self) -> None:
        self.url = ""
        self.k8s: Any = None
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="kmock")
        self.fail_requests = False

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with kmock.KubernetesEmulator() as k8s, kmock.Server(k8s, host="127.0.0.1") as srv:
            k8s.resources["coordination.k8s.io/v1/leases"] = {}  # type: ignore[assignment]

            def put_obj(req: Any) -> Any:
                for key in list(k8s.objects.keys()):
                    res, ns, name = key
                    if ns == req.namespace and name == req.name and res.plural == req.resource.plural:
                        k8s.objects[key].patch(req.data)
                        return k8s.objects[key].raw
                raise kmock.KubernetesObjectNotFoundError()

            k8s["put", kmock.resource("coordination.k8s.io/v1/leases")] << put_obj
            self.k8s = k8s
            self.url = str(srv.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def start(self) -> KmockThread:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("kmock did not start")
        return self

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def kubeconfig(self, path: Path) -> Path:
        """A kubeconfig for this server (no credentials: kmock asks for none)."""
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kmock", "cluster": {"server": self.url}}],
            "users": [{"name": "kmock", "user": {}}],
            "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock"}}],
            "current-context": "kmock",
        }
        path.write_text(json.dumps(doc))
        return path

    def api_client(self) -> client.ApiClient:
        cfg = client.Configuration()
        cfg.host = self.url
        return client.ApiClient(cfg)
