"""The watches behind `k8s-notification-source`: any Kubernetes kind, by group / version / kind.

`KubeObjectWatcher.watch(target, on_event)` runs a `ListWatch` (a daemon thread with the official client,
see `listwatch.py`: list, then watch from the listing's resourceVersion; 410 relists at once, any other
failure relists after a backoff of `backoff_initial` doubling to `backoff_max`) of the target kind and
hands its raw events to `on_event` in the event loop. The resource path comes from API discovery
(`GET /api/v1` or `GET /apis/<group>/<version>`: the kind's plural name and whether it is namespaced),
looked up in the watch thread before the first listing and again after a 404 (a CRD installed late, or
removed and reinstalled), so an unknown kind is a retried, logged failure, never a crash.

Objects stay plain JSON, as everywhere in `epp.k8s`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from kubernetes.client.exceptions import ApiException

from epp.datalayer.k8s_notifications import ObjectWatch, RawWatchEvent, WatchTarget
from epp.k8s.listwatch import DEFAULT_WATCH_OPTIONS, ListWatch, WatchEvent, WatchOptions

__all__ = ["KindNotServed", "KubeObjectWatcher", "resource_path"]

log = logging.getLogger(__name__)

_QUERY_NAMES = {
    "watch": "watch",
    "resource_version": "resourceVersion",
    "allow_watch_bookmarks": "allowWatchBookmarks",
    "timeout_seconds": "timeoutSeconds",
    "label_selector": "labelSelector",
    "field_selector": "fieldSelector",
}


class KindNotServed(LookupError):
    """The API server does not serve the watched kind (yet)."""


def resource_path(target: WatchTarget, discovery: dict[str, Any]) -> str:
    """The list path of `target` from its group version's APIResourceList."""
    for resource in discovery.get("resources") or ():
        name = str(resource.get("name") or "")
        if resource.get("kind") != target.kind or not name or "/" in name:
            continue  # another kind, or a subresource (pods/status has kind Pod too)
        base = f"/apis/{target.group}/{target.version}" if target.group else f"/api/{target.version}"
        if resource.get("namespaced") is False:
            if target.namespace:
                log.warning(
                    "k8s-notification-source: %s is cluster-scoped; namespace %s is ignored",
                    target.kind,
                    target.namespace,
                )
            return f"{base}/{name}"
        if target.namespace:
            return f"{base}/namespaces/{target.namespace}/{name}"
        return f"{base}/{name}"
    raise KindNotServed(f"the API server serves no kind {target.kind} in {target.api_version}")


class _Lister:
    """A `list_fn` for `ListWatch` over a path found by discovery (runs in the watch thread)."""

    def __init__(self, api_client: Any, target: WatchTarget) -> None:
        self._api = api_client
        self._target = target
        self._path: str | None = None
        self._lock = threading.Lock()

    def _get(self, path: str, query: list[tuple[str, Any]], timeout: Any) -> Any:
        request = self._api.param_serialize(
            method="GET",
            resource_path=path,
            query_params=query,
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        response = self._api.call_api(*request, _request_timeout=timeout)
        if not 200 <= response.status <= 299:
            response.read()
            raise ApiException.from_response(http_resp=response, body=None, data=None)
        return response.response

    def _discover(self, timeout: Any) -> str:
        target = self._target
        where = f"/apis/{target.group}/{target.version}" if target.group else f"/api/{target.version}"
        try:
            resp = self._get(where, [], timeout)
        except ApiException as exc:
            if exc.status == 404:
                raise KindNotServed(
                    f"the API server serves no {target.api_version} (GET {where}: 404)"
                ) from None
            raise
        try:
            discovery = json.loads(resp.data)
        finally:
            resp.release_conn()
        return resource_path(target, discovery)

    def __call__(self, **kwargs: Any) -> Any:
        timeout = kwargs.pop("_request_timeout", None)
        kwargs.pop("_preload_content", None)
        with self._lock:
            path = self._path
        if path is None:
            path = self._discover(timeout)
            with self._lock:
                self._path = path
        query = [(_QUERY_NAMES[k], v) for k, v in kwargs.items() if k in _QUERY_NAMES and v is not None]
        try:
            return self._get(path, query, timeout)
        except ApiException as exc:
            if exc.status == 404:  # the kind went away (CRD removed?): look it up again next time
                with self._lock:
                    self._path = None
            raise


class _KubeObjectWatch:
    def __init__(self, lw: ListWatch) -> None:
        self._lw: ListWatch | None = lw

    @property
    def list_watch(self) -> ListWatch | None:
        return self._lw

    async def stop(self) -> None:
        lw, self._lw = self._lw, None
        if lw is not None:
            await lw.close()


class KubeObjectWatcher:
    """The daemon's `ObjectWatcher`: one list+watch thread per watched kind."""

    def __init__(self, api_client: Any, *, options: WatchOptions = DEFAULT_WATCH_OPTIONS) -> None:
        self._api = api_client
        self._options = options

    def watch(self, target: WatchTarget, on_event: Callable[[RawWatchEvent], None]) -> ObjectWatch:
        handle: _KubeObjectWatch | None = None

        def deliver(event: WatchEvent) -> None:
            if handle is not None and handle.list_watch is not None:  # stopped: late events dropped
                on_event(event)

        lw = ListWatch(
            f"{target.describe()} (k8s-notification-source)",
            _Lister(self._api, target),
            deliver,
            asyncio.get_running_loop(),
            options=self._options,
        )
        handle = _KubeObjectWatch(lw)
        lw.start()
        return handle
