"""`destination-endpoint-served-verifier` (conformance): echo the served endpoint in a response header.

Copies what the proxy reported in `envoy.lb` / `x-gateway-destination-endpoint-served` into response
header `x-conformance-test-served-endpoint`, so a conformance client can see where its request went.
"""

from __future__ import annotations

from dataclasses import dataclass

from epp.framework.cycle import CycleState
from epp.framework.handle import Handle
from epp.framework.plugins import PluginKind
from epp.framework.types import InferenceRequest, ResponseInfo, SchedulingResult, TypedName
from epp.registry import EmptyParams, PluginType

__all__ = ["DESTINATION_ENDPOINT_SERVED_VERIFIER", "SERVED_ENDPOINT_HEADER", "ServedEndpointVerifier"]

TYPE_NAME = "destination-endpoint-served-verifier"
SERVED_ENDPOINT_HEADER = "x-conformance-test-served-endpoint"


@dataclass(frozen=True, slots=True)
class ServedEndpointVerifier:
    typed_name: TypedName

    def response_received(
        self, cycle: CycleState, request: InferenceRequest, response: ResponseInfo, result: SchedulingResult
    ) -> None:
        response.set_headers[SERVED_ENDPOINT_HEADER] = response.served_endpoint


def _factory(name: str, params: EmptyParams, handle: Handle) -> ServedEndpointVerifier:
    return ServedEndpointVerifier(TypedName(TYPE_NAME, name))


DESTINATION_ENDPOINT_SERVED_VERIFIER = PluginType(
    type_name=TYPE_NAME,
    params_model=EmptyParams,
    factory=_factory,
    kinds=frozenset({PluginKind.RESPONSE_RECEIVED}),
    description="Conformance: copies the served endpoint into response header "
    "x-conformance-test-served-endpoint.",
)
