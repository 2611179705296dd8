"""Choosing and starting the one endpoint source a daemon runs (static list, InferencePool, or selector).

`start_endpoint_source(settings, datastore)` reads the settings by attribute name (`static_endpoints`,
`pool_name`, `pool_namespace`, `pool_group`, `endpoint_selector`, `endpoint_target_ports`,
`model_server_type`), builds the source, starts it and returns it; the caller runs `source.run()` as a
background task and awaits `source.stop()` on shutdown. The Kubernetes sources are built by the function the
caller passes (`build_kubernetes`, from `epp.app`): the datalayer never imports `epp.k8s`, and a
static-endpoint daemon never loads the Kubernetes client.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from epp.datalayer.datastore import Datastore
from epp.datalayer.static_source import StaticEndpointSource, parse_static_endpoints
from epp.errors import SettingsError

__all__ = ["EndpointSource", "KubernetesSourceBuilder", "configured_source_kind", "start_endpoint_source"]


class EndpointSource(Protocol):
    async def start(self) -> None:
        """Begin delivering endpoints (returns quickly; Kubernetes listing continues in the background)."""
        ...

    async def run(self) -> None:
        """Keep the endpoints current until `stop` (start first if needed)."""
        ...

    async def stop(self) -> None: ...


#: builds the Kubernetes source of `kind` ('pool' or 'selector') from the settings
KubernetesSourceBuilder = Callable[[str, object, Datastore], EndpointSource]


def _get(settings: object, name: str) -> Any:
    return getattr(settings, name, None)


def _present(value: object) -> bool:
    if value is None:
        return False
    if isinstance(value, str):
        return bool(value.strip())
    if isinstance(value, Sequence | dict):
        return len(value) > 0
    return True


def configured_source_kind(settings: object) -> str:
    """'static', 'pool' or 'selector'; SettingsError unless exactly one source is configured."""
    chosen = [
        kind
        for kind, flag in (
            ("static", "static_endpoints"),
            ("pool", "pool_name"),
            ("selector", "endpoint_selector"),
        )
        if _present(_get(settings, flag))
    ]
    if len(chosen) != 1:
        what = "none" if not chosen else " and ".join(f"--{_FLAGS[k]}" for k in chosen)
        raise SettingsError(
            "exactly one endpoint source must be set: --static-endpoints, --pool-name or --endpoint-selector "
            f"(got {what})"
        )
    return chosen[0]


_FLAGS = {"static": "static-endpoints", "pool": "pool-name", "selector": "endpoint-selector"}


async def start_endpoint_source(
    settings: object, datastore: Datastore, *, build_kubernetes: KubernetesSourceBuilder | None = None
) -> EndpointSource:
    """Build the configured endpoint source, start it and return it."""
    kind = configured_source_kind(settings)
    source: EndpointSource
    if kind == "static":
        engine = _get(settings, "model_server_type")  # a str or a StrEnum of engine names
        labels = _get(settings, "static_endpoint_labels") or {}
        source = StaticEndpointSource(
            datastore,
            parse_static_endpoints(_get(settings, "static_endpoints")),
            engine=str(engine) if engine else None,
            endpoint_labels={parse_static_endpoints(a)[0].key: dict(kv) for a, kv in labels.items()},
        )
    elif build_kubernetes is None:
        raise SettingsError(f"--{_FLAGS[kind]} needs Kubernetes, which this daemon was started without")
    else:
        source = build_kubernetes(kind, settings, datastore)
    await source.start()
    return source
