"""InferenceObjective and InferenceModelRewrite watches (`inference.networking.x-k8s.io/v1alpha2`).

Only objects whose `spec.poolRef` names our pool (and pool group) count, as upstream. Objectives become
`objective name -> spec.priority` (unset = 0) in the datastore; rewrites become `ModelRewriteRule`s carrying
the resource's creationTimestamp and each rule's index, ordered oldest resource first, then by name and
rule order (the precedence tie-breakers; exact-match-beats-generic is the reader's job).
"""

from __future__ import annotations

import datetime
import functools
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from kubernetes import client

from epp.datalayer.datastore import Datastore, ModelRewriteRule, RewriteTarget
from epp.k8s.informer import Informer
from epp.k8s.listwatch import DEFAULT_WATCH_OPTIONS, WatchOptions

__all__ = [
    "OBJECTIVES_GROUP",
    "ObjectiveWatches",
    "objectives_from",
    "rewrite_rules_from",
]

OBJECTIVES_GROUP = "inference.networking.x-k8s.io"
OBJECTIVES_VERSION = "v1alpha2"
DEFAULT_POOL_GROUP = "inference.networking.k8s.io"

log = logging.getLogger(__name__)

Obj = Mapping[str, Any]


def _refers_to_pool(obj: Obj, pool_name: str, pool_group: str) -> bool:
    meta = obj.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return False
    ref = (obj.get("spec") or {}).get("poolRef") or {}
    return ref.get("name") == pool_name and (ref.get("group") or DEFAULT_POOL_GROUP) == pool_group


def objectives_from(
    objs: Iterable[Obj], pool_name: str, pool_group: str = DEFAULT_POOL_GROUP
) -> dict[str, int]:
    out: dict[str, int] = {}
    for obj in objs:
        if not _refers_to_pool(obj, pool_name, pool_group):
            continue
        name = str((obj.get("metadata") or {}).get("name") or "")
        priority = (obj.get("spec") or {}).get("priority")
        try:
            out[name] = int(priority) if priority is not None else 0
        except (TypeError, ValueError):
            log.warning("InferenceObjective %s has a non-integer priority %r; using 0", name, priority)
            out[name] = 0
    return out


def _timestamp(value: object) -> float:
    if not isinstance(value, str) or not value:
        return 0.0
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def rewrite_rules_from(
    objs: Iterable[Obj], pool_name: str, pool_group: str = DEFAULT_POOL_GROUP
) -> list[ModelRewriteRule]:
    rules: list[ModelRewriteRule] = []
    for obj in objs:
        if not _refers_to_pool(obj, pool_name, pool_group):
            continue
        meta = obj.get("metadata") or {}
        name = str(meta.get("name") or "")
        created = _timestamp(meta.get("creationTimestamp"))
        for order, rule in enumerate((obj.get("spec") or {}).get("rules") or ()):
            matches = tuple(
                str(model.get("value"))
                for m in rule.get("matches") or ()
                for model in [m.get("model") or {}]
                if model.get("value") and (model.get("type") or "Exact") == "Exact"
            )
            targets = tuple(
                RewriteTarget(str(t["modelRewrite"]), int(t.get("weight", 1) or 0))
                for t in rule.get("targets") or ()
                if t.get("modelRewrite")
            )
            if not targets:
                log.warning("InferenceModelRewrite %s rule %d has no targets; ignored", name, order)
                continue
            rules.append(
                ModelRewriteRule(name=name, matches=matches, targets=targets, created=created, order=order)
            )
    rules.sort(key=lambda r: (r.created, r.name, r.order))
    return rules


class ObjectiveWatches:
    """Keeps the datastore's objectives and rewrite rules in step with the cluster."""

    def __init__(
        self,
        datastore: Datastore,
        api_client: client.ApiClient,
        *,
        namespace: str,
        pool_name: str,
        pool_group: str = DEFAULT_POOL_GROUP,
        options: WatchOptions = DEFAULT_WATCH_OPTIONS,
    ) -> None:
        self._ds = datastore
        self._pool_name = pool_name
        self._pool_group = pool_group
        custom = client.CustomObjectsApi(api_client)

        def lister(plural: str) -> Any:
            return functools.partial(
                custom.list_namespaced_custom_object, OBJECTIVES_GROUP, OBJECTIVES_VERSION, namespace, plural
            )

        self.objectives = Informer(
            f"inferenceobjectives/{namespace}",
            lister("inferenceobjectives"),
            on_change=self._objectives_changed,
            options=options,
        )
        self.rewrites = Informer(
            f"inferencemodelrewrites/{namespace}",
            lister("inferencemodelrewrites"),
            on_change=self._rewrites_changed,
            options=options,
        )

    def start(self) -> None:
        self.objectives.start()
        self.rewrites.start()

    async def stop(self) -> None:
        await self.objectives.stop()
        await self.rewrites.stop()

    def _objectives_changed(self) -> None:
        self._ds.set_objectives(objectives_from(self.objectives.objects(), self._pool_name, self._pool_group))

    def _rewrites_changed(self) -> None:
        self._ds.set_rewrite_rules(
            rewrite_rules_from(self.rewrites.objects(), self._pool_name, self._pool_group)
        )
