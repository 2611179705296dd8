"""A minimal fake Kubernetes API server, so that `helm template --dry-run=server` runs the chart's `lookup`.

helm asks it for the server version and API discovery (to map each rendered kind to its resource), then
for the objects the templates look up and, before installing, for each rendered object (a conflict check:
404 = free). It serves exactly that from a dict of objects, and records every request so a test can assert
what helm asked. Anything else (a write, an unknown path) answers 405 / 404 and is recorded too.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

__all__ = ["FakeApiServer", "fake_api_server"]

# group/version -> [(plural, kind)], all namespaced: what the chart renders.
RESOURCES: dict[str, list[tuple[str, str]]] = {
    "v1": [
        ("configmaps", "ConfigMap"),
        ("secrets", "Secret"),
        ("serviceaccounts", "ServiceAccount"),
        ("services", "Service"),
        ("pods", "Pod"),
    ],
    "apps/v1": [("deployments", "Deployment")],
    "rbac.authorization.k8s.io/v1": [("roles", "Role"), ("rolebindings", "RoleBinding")],
    "inference.networking.k8s.io/v1": [("inferencepools", "InferencePool")],
    "inference.networking.x-k8s.io/v1alpha2": [("inferenceobjectives", "InferenceObjective")],
}
VERSION = {"major": "1", "minor": "31", "gitVersion": "v1.31.0", "platform": "linux/amd64"}


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Status",
        "status": "Failure",
        "code": code,
        "reason": reason,
        "message": message,
        "metadata": {},
    }


class FakeApiServer:
    def __init__(self, objects: Mapping[tuple[str, str, str], Mapping[str, Any]]) -> None:
        """`objects`: (resource path "v1/secrets" or "apps/v1/deployments", namespace, name) -> object."""
        self.objects = {k: dict(v) for k, v in objects.items()}
        self.requests: list[tuple[str, str]] = []
        server = self
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler(server))
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="fake-api", daemon=True)

    @staticmethod
    def _handler(server: FakeApiServer) -> type[BaseHTTPRequestHandler]:
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def _send(self, code: int, body: Mapping[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0].rstrip("/")
                server.requests.append(("GET", path))
                code, body = server.get(path)
                self._send(code, body)

            def _refuse(self) -> None:
                server.requests.append((self.command, self.path.split("?", 1)[0]))
                self._send(405, _status(405, "MethodNotAllowed", "the fake API server is read-only"))

            do_POST = do_PUT = do_PATCH = do_DELETE = _refuse

        return Handler

    def get(self, path: str) -> tuple[int, dict[str, Any]]:
        if path == "/version":
            return 200, VERSION
        if path == "/api":
            return 200, {"kind": "APIVersions", "versions": ["v1"]}
        if path == "/apis":
            groups = sorted({gv.split("/")[0] for gv in RESOURCES if "/" in gv})
            return 200, {
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": [self._group(g) for g in groups],
            }
        if path.startswith("/apis/") and path.count("/") == 2:
            group = path.split("/")[2]
            if any(gv.startswith(group + "/") for gv in RESOURCES):
                return 200, {"kind": "APIGroup", "apiVersion": "v1", **self._group(group)}
        gv, rest = self._split(path)
        if gv in RESOURCES and not rest:
            return 200, {
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": gv,
                "resources": [
                    {
                        "name": plural,
                        "singularName": kind.lower(),
                        "kind": kind,
                        "namespaced": True,
                        "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"],
                    }
                    for plural, kind in RESOURCES[gv]
                ],
            }
        if gv in RESOURCES and len(rest) == 4 and rest[0] == "namespaces":
            _, namespace, plural, name = rest
            obj = self.objects.get((f"{gv}/{plural}", namespace, name))
            if obj is not None:
                return 200, obj
            return 404, _status(404, "NotFound", f'{plural} "{name}" not found')
        return 404, _status(404, "NotFound", f"the fake API server does not serve {path}")

    @staticmethod
    def _group(group: str) -> dict[str, Any]:
        versions = [
            {"groupVersion": gv, "version": gv.split("/")[1]}
            for gv in RESOURCES
            if gv.startswith(group + "/")
        ]
        return {"name": group, "versions": versions, "preferredVersion": versions[0]}

    @staticmethod
    def _split(path: str) -> tuple[str, list[str]]:
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "v1"]:
            return "v1", parts[2:]
        if parts[0] == "apis" and len(parts) >= 3:
            return f"{parts[1]}/{parts[2]}", parts[3:]
        return "", parts

    def kubeconfig(self, directory: Path) -> Path:
        path = directory / "kubeconfig"
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
                    "users": [{"name": "fake", "user": {"token": "fake"}}],
                    "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
                    "current-context": "fake",
                }
            )
        )
        return path

    def start(self) -> FakeApiServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


@contextmanager
def fake_api_server(objects: Mapping[tuple[str, str, str], Mapping[str, Any]]) -> Iterator[FakeApiServer]:
    server = FakeApiServer(objects).start()
    try:
        yield server
    finally:
        server.stop()
