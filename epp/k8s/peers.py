"""Active-active peers from Kubernetes: the ready pods of this EPP (by `--ha-peer-selector`), other than
this one, as `podIP:port` for the peer link (`epp.ha.link`). The chart sets the selector to the
Deployment's labels and grants `list`/`watch` on pods."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes import client

from epp.k8s.informer import Informer
from epp.k8s.listwatch import DEFAULT_WATCH_OPTIONS, WatchOptions
from epp.k8s.pods import label_selector, labels_match, pod_is_serving

__all__ = ["KubernetesPeers", "peer_addresses"]

Obj = Mapping[str, Any]


def peer_addresses(pods: list[Obj], port: int, own_ip: str, own_name: str) -> list[str]:
    """`ip:port` of every ready pod but this one (by IP, or by name when the IP is unknown)."""
    out: set[str] = set()
    for pod in pods:
        if not pod_is_serving(pod):
            continue
        ip = str((pod.get("status") or {}).get("podIP") or "")
        name = str((pod.get("metadata") or {}).get("name") or "")
        if (own_ip and ip == own_ip) or (own_name and name == own_name):
            continue
        host = f"[{ip}]" if ":" in ip else ip
        out.add(f"{host}:{port}")
    return sorted(out)


class KubernetesPeers:
    """Watches this EPP's pods; calls `on_peers(addresses)` whenever the set of ready peers changes."""

    def __init__(
        self,
        api_client: Any,
        *,
        namespace: str,
        selector: Mapping[str, str],
        port: int,
        own_ip: str,
        own_name: str,
        on_peers: Callable[[list[str]], None],
        options: WatchOptions = DEFAULT_WATCH_OPTIONS,
    ) -> None:
        self.port = port
        self.own_ip = own_ip
        self.own_name = own_name
        self.on_peers = on_peers
        self.current: list[str] | None = None
        labels = label_selector(selector)
        core = client.CoreV1Api(api_client)
        self.informer = Informer(
            f"peers/{namespace}[{labels}]",
            functools.partial(core.list_namespaced_pod, namespace),
            on_change=self._changed,
            accept=lambda pod: labels_match(selector, (pod.get("metadata") or {}).get("labels")),
            selectors={"label_selector": labels},
            options=options,
        )

    def start(self) -> None:
        self.informer.start()

    async def stop(self) -> None:
        await self.informer.stop()

    def _changed(self) -> None:
        found = peer_addresses(self.informer.objects(), self.port, self.own_ip, self.own_name)
        if found != self.current:
            self.current = found
            self.on_peers(found)
