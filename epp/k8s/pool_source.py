"""Kubernetes endpoint sources: an InferencePool's pods, or pods picked by a fixed label selector.

`InferencePoolSource` watches one InferencePool (`inference.networking.k8s.io/v1`, `inferencepools`,
by name) and the pods of its namespace matching the pool's `selector.matchLabels`; every change recomputes
the endpoint list (`pods.pods_to_endpoints`) and replaces it in the datastore, which publishes a new
immutable snapshot. When the selector changes, a new pod watch with the new label selector starts and the
old endpoint list stays in place until the new watch has listed. The datastore is marked synced after the
first pool listing that found the pool, and the first pod listing for it. A deleted pool empties the
endpoint list. It also runs the InferenceObjective / InferenceModelRewrite watches for the pool.

`SelectorSource` is the standalone mode (`--endpoint-selector` + `--endpoint-target-ports`): pods only,
no CRDs.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes import client

from epp.datalayer.datastore import Datastore
from epp.k8s.informer import Informer
from epp.k8s.listwatch import DEFAULT_WATCH_OPTIONS, WatchOptions
from epp.k8s.objectives import DEFAULT_POOL_GROUP, ObjectiveWatches
from epp.k8s.pods import label_selector, labels_match, pods_to_endpoints

__all__ = ["InferencePoolSource", "PoolSpec", "SelectorSource"]

log = logging.getLogger(__name__)

POOL_VERSION = "v1"
POOL_PLURAL = "inferencepools"


@dataclass(frozen=True, slots=True)
class PoolSpec:
    selector: tuple[tuple[str, str], ...]
    target_ports: tuple[int, ...]
    app_protocol: str = "http"

    @property
    def match_labels(self) -> dict[str, str]:
        return dict(self.selector)

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> PoolSpec:
        """Read a pool's spec; raises ValueError when it is not usable."""
        spec = obj.get("spec") or {}
        match_labels = (spec.get("selector") or {}).get("matchLabels") or {}
        if not isinstance(match_labels, Mapping) or not match_labels:
            raise ValueError("spec.selector.matchLabels must be a non-empty map")
        ports: list[int] = []
        for entry in spec.get("targetPorts") or ():
            number = entry.get("number") if isinstance(entry, Mapping) else entry
            if not isinstance(number, int) or not 1 <= number <= 65535:
                raise ValueError(f"spec.targetPorts has an invalid port {number!r}")
            if number not in ports:
                ports.append(number)
        if not 1 <= len(ports) <= 8:
            raise ValueError(f"spec.targetPorts must list 1 to 8 ports, got {len(ports)}")
        return cls(
            selector=tuple(sorted((str(k), str(v)) for k, v in match_labels.items())),
            target_ports=tuple(ports),
            app_protocol=str(spec.get("appProtocol") or "http"),
        )


class _PodWatch:
    """Pods of one namespace matching one selector (server-side label selector + client-side check)."""

    def __init__(
        self,
        core: client.CoreV1Api,
        namespace: str,
        selector: Mapping[str, str],
        on_change: Any,
        options: WatchOptions,
    ) -> None:
        self.selector = dict(selector)
        self.informer = Informer(
            f"pods/{namespace}[{label_selector(selector)}]",
            functools.partial(core.list_namespaced_pod, namespace),
            on_change=lambda: on_change(self),
            accept=lambda pod: labels_match(self.selector, (pod.get("metadata") or {}).get("labels")),
            selectors={"label_selector": label_selector(selector)},
            options=options,
        )


class InferencePoolSource:
    def __init__(
        self,
        datastore: Datastore,
        api_client: client.ApiClient,
        *,
        pool_name: str,
        namespace: str,
        pool_group: str = DEFAULT_POOL_GROUP,
        watch_objectives: bool = True,
        options: WatchOptions = DEFAULT_WATCH_OPTIONS,
    ) -> None:
        self._ds = datastore
        self._api = api_client
        self._core = client.CoreV1Api(api_client)
        self.pool_name = pool_name
        self.namespace = namespace
        self.pool_group = pool_group
        self._options = options
        custom = client.CustomObjectsApi(api_client)
        self._pool_informer = Informer(
            f"{POOL_PLURAL}/{namespace}/{pool_name}",
            functools.partial(
                custom.list_namespaced_custom_object, pool_group, POOL_VERSION, namespace, POOL_PLURAL
            ),
            on_change=self._pool_changed,
            accept=lambda obj: (obj.get("metadata") or {}).get("name") == pool_name,
            selectors={"field_selector": f"metadata.name={pool_name}"},
            options=options,
        )
        self._objectives = (
            ObjectiveWatches(
                datastore,
                api_client,
                namespace=namespace,
                pool_name=pool_name,
                pool_group=pool_group,
                options=options,
            )
            if watch_objectives
            else None
        )
        self.spec: PoolSpec | None = None
        self._pods: _PodWatch | None = None
        self._next_pods: _PodWatch | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        self._started = False
        self._reported_missing = False
        self._stopped = asyncio.Event()

    @property
    def app_protocol(self) -> str:
        return self.spec.app_protocol if self.spec is not None else "http"

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._pool_informer.start()
        if self._objectives is not None:
            self._objectives.start()

    async def run(self) -> None:
        await self.start()
        await self._stopped.wait()

    async def stop(self) -> None:
        self._stopped.set()
        await self._pool_informer.stop()
        if self._objectives is not None:
            await self._objectives.stop()
        for watch in (self._pods, self._next_pods):
            if watch is not None:
                await watch.informer.stop()
        self._pods = self._next_pods = None
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)

    # ---- reactions (event-loop thread) -------------------------------------------------------------

    def _pool_changed(self) -> None:
        if not self._pool_informer.synced:
            return
        pools = self._pool_informer.objects()
        if not pools:
            if self.spec is None:
                if not self._reported_missing:
                    self._reported_missing = True
                    log.warning(
                        "InferencePool %s/%s (group %s) not found; not ready until it exists "
                        "(check --pool-name, --pool-namespace and --pool-group)",
                        self.namespace,
                        self.pool_name,
                        self.pool_group,
                    )
            else:
                log.warning(
                    "InferencePool %s/%s is gone; no endpoints until it is back",
                    self.namespace,
                    self.pool_name,
                )
                self.spec = None
                self._retire(self._pods, self._next_pods)
                self._pods = self._next_pods = None
                self._ds.set_endpoints(())
            return
        try:
            spec = PoolSpec.from_object(pools[0])
        except ValueError as exc:
            log.error(
                "InferencePool %s/%s is invalid, keeping the last good one: %s",
                self.namespace,
                self.pool_name,
                exc,
            )
            return
        if spec == self.spec:
            return
        old, self.spec = self.spec, spec
        log.info(
            "InferencePool %s/%s: selector %s, target ports %s",
            self.namespace,
            self.pool_name,
            label_selector(spec.match_labels),
            list(spec.target_ports),
        )
        if old is None or old.selector != spec.selector:
            self._retire(self._next_pods)
            self._next_pods = _PodWatch(
                self._core, self.namespace, spec.match_labels, self._pods_changed, self._options
            )
            self._next_pods.informer.start()
        else:
            self._publish()

    def _pods_changed(self, watch: _PodWatch) -> None:
        if watch is self._next_pods and watch.informer.synced:
            self._retire(self._pods)
            self._pods, self._next_pods = watch, None
        if watch is self._pods:
            self._publish()

    def _publish(self) -> None:
        if self._pods is None or self.spec is None:
            return
        # the pods' own selector: until the watch of a changed selector has listed, the old one serves
        endpoints = pods_to_endpoints(
            self._pods.informer.objects(), self._pods.selector, self.spec.target_ports, self.namespace
        )
        self._ds.set_endpoints(endpoints)
        if not self._ds.synced:
            log.info(
                "InferencePool %s/%s synced: %d endpoints", self.namespace, self.pool_name, len(endpoints)
            )
            self._ds.mark_synced()

    def _retire(self, *watches: _PodWatch | None) -> None:
        for watch in watches:
            if watch is None:
                continue
            task = asyncio.get_running_loop().create_task(watch.informer.stop())
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)


class SelectorSource:
    """Standalone mode: pods matching a fixed selector, at fixed target ports."""

    def __init__(
        self,
        datastore: Datastore,
        api_client: client.ApiClient,
        *,
        selector: Mapping[str, str],
        target_ports: tuple[int, ...] | list[int],
        namespace: str,
        options: WatchOptions = DEFAULT_WATCH_OPTIONS,
    ) -> None:
        self._ds = datastore
        self.namespace = namespace
        self.selector = dict(selector)
        self.target_ports = tuple(target_ports)
        self._watch = _PodWatch(
            client.CoreV1Api(api_client), namespace, self.selector, self._changed, options
        )
        self._started = False
        self._stopped = asyncio.Event()

    async def start(self) -> None:
        if not self._started:
            self._started = True
            self._watch.informer.start()

    async def run(self) -> None:
        await self.start()
        await self._stopped.wait()

    async def stop(self) -> None:
        self._stopped.set()
        await self._watch.informer.stop()

    def _changed(self, watch: _PodWatch) -> None:
        endpoints = pods_to_endpoints(
            watch.informer.objects(), self.selector, self.target_ports, self.namespace
        )
        self._ds.set_endpoints(endpoints)
        if not self._ds.synced:
            log.info("pods matching %s synced: %d endpoints", label_selector(self.selector), len(endpoints))
            self._ds.mark_synced()
