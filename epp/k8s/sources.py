"""Building the Kubernetes endpoint source from the daemon settings (see `epp.datalayer.sources`)."""

from __future__ import annotations

from typing import Any

from epp.datalayer.datastore import Datastore
from epp.errors import SettingsError
from epp.k8s.client import load_api_client, resolve_namespace
from epp.k8s.objectives import DEFAULT_POOL_GROUP
from epp.k8s.pods import parse_selector, parse_target_ports
from epp.k8s.pool_source import InferencePoolSource, SelectorSource

__all__ = ["build_kubernetes_source"]


def build_kubernetes_source(
    kind: str, settings: object, datastore: Datastore, *, api_client: Any = None
) -> InferencePoolSource | SelectorSource:
    """`kind` is 'pool' or 'selector' (from `configured_source_kind`)."""
    namespace = resolve_namespace(getattr(settings, "pool_namespace", None))
    if kind == "selector":
        try:
            selector = parse_selector(getattr(settings, "endpoint_selector", "") or "")
            ports = parse_target_ports(getattr(settings, "endpoint_target_ports", None) or [])
        except ValueError as exc:
            raise SettingsError(f"--endpoint-selector / --endpoint-target-ports: {exc}") from None
        return SelectorSource(
            datastore,
            api_client or load_api_client(),
            selector=selector,
            target_ports=ports,
            namespace=namespace,
        )
    if kind != "pool":
        raise ValueError(f"not a Kubernetes source kind: {kind!r}")
    return InferencePoolSource(
        datastore,
        api_client or load_api_client(),
        pool_name=str(getattr(settings, "pool_name", "")),
        namespace=namespace,
        pool_group=str(getattr(settings, "pool_group", None) or DEFAULT_POOL_GROUP),
    )
