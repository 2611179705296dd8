"""`header-based-testing-filter` (conformance): keep only the endpoints named in a request header.

Header `test-epp-endpoint-selection`: a comma-separated list of `ip`, `ip:port`, `[v6]` or `[v6]:port`.
Endpoints match on their IP (every data-parallel rank of a listed IP is kept), in candidate order. No header
(or an empty one) keeps nothing, as upstream: conformance tests always send it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from epp.framework.cycle import CycleState
from epp.framework.handle import Handle
from epp.framework.plugins import PluginKind
from epp.framework.types import Endpoint, InferenceRequest, TypedName
from epp.plugins.common import canonical_ip, header_value, split_host_port
from epp.registry import EmptyParams, PluginType

__all__ = ["HEADER_BASED_TESTING_FILTER", "SELECTION_HEADER", "HeaderBasedTestingFilter", "selected_ips"]

TYPE_NAME = "header-based-testing-filter"
SELECTION_HEADER = "test-epp-endpoint-selection"


def selected_ips(value: str) -> frozenset[str]:
    """The canonical IPs listed in a selection header value."""
    ips = set()
    for item in value.split(","):
        item = item.strip()
        if item:
            host, _port = split_host_port(item)
            ips.add(canonical_ip(host))
    return frozenset(ips)


@dataclass(frozen=True, slots=True)
class HeaderBasedTestingFilter:
    typed_name: TypedName

    def filter(
        self, cycle: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Sequence[Endpoint]:
        value = header_value(request.headers, SELECTION_HEADER)
        if not value or not value.strip():
            return []
        ips = selected_ips(value)
        return [e for e in endpoints if e.ip in ips or canonical_ip(e.ip) in ips]


def _factory(name: str, params: EmptyParams, handle: Handle) -> HeaderBasedTestingFilter:
    return HeaderBasedTestingFilter(TypedName(TYPE_NAME, name))


HEADER_BASED_TESTING_FILTER = PluginType(
    type_name=TYPE_NAME,
    params_model=EmptyParams,
    factory=_factory,
    kinds=frozenset({PluginKind.FILTER}),
    description="Conformance: keeps the endpoints whose IP is listed in header test-epp-endpoint-selection.",
)
