"""`endpoint-notification-source`: endpoint lifecycle events for the extractors wired under it.

Upstream's notification data source (GIE `datalayer/source/notifications`): it passes every endpoint
add/update and delete through to its `EndpointExtractor`s (`dataLayer.sources[].extractors`). Here the
plugin runtime (`epp.plugin_runtime`) does the dispatching from the datastore's membership changes, in
the event loop, never on the request path; when a pipeline goes live its extractors are first told every
current endpoint, so a plugin rebuilt by a reload starts in step with the pool.
"""

from __future__ import annotations

from dataclasses import dataclass

from epp.framework.handle import Handle
from epp.framework.plugins import PluginKind
from epp.framework.types import TypedName
from epp.registry import EmptyParams, PluginType

__all__ = ["ENDPOINT_NOTIFICATION_SOURCE", "ENDPOINT_NOTIFICATION_SOURCE_TYPE", "EndpointNotificationSource"]

ENDPOINT_NOTIFICATION_SOURCE_TYPE = "endpoint-notification-source"


@dataclass(frozen=True, slots=True)
class EndpointNotificationSource:
    typed_name: TypedName


def _factory(name: str, params: EmptyParams, handle: Handle) -> EndpointNotificationSource:
    return EndpointNotificationSource(TypedName(ENDPOINT_NOTIFICATION_SOURCE_TYPE, name))


ENDPOINT_NOTIFICATION_SOURCE: PluginType[EmptyParams] = PluginType(
    type_name=ENDPOINT_NOTIFICATION_SOURCE_TYPE,
    params_model=EmptyParams,
    factory=_factory,
    kinds=frozenset({PluginKind.DATA_SOURCE, PluginKind.ENDPOINT_EVENT_SOURCE}),
    description="Delivers endpoint add/update and delete events to the endpoint extractors wired under it.",
)
