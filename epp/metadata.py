"""Every header, metadata and attribute key the Endpoint Picker Protocol uses, in one place.

Header names are lowercase (Envoy delivers them lowercase). Values follow GIE's spec
(`docs/proposals/004-endpoint-picker-protocol`) and `pkg/epp/metadata/consts.go`.
"""

from __future__ import annotations

__all__ = [
    "BODY_CHUNK_LIMIT",
    "CONFORMANCE_SERVED_HEADER",
    "CONFORMANCE_TEST_SELECTION_HEADER",
    "CONTENT_LENGTH",
    "CONTENT_TYPE",
    "DATA_PARALLEL_ENDPOINT_HEADER",
    "DECISION_HEADER",
    "DESTINATION_ENDPOINT",
    "DESTINATION_ENDPOINT_SERVED",
    "DESTINATION_ENDPOINT_SUBSET",
    "ENCODER_ENDPOINTS_HEADER",
    "ENVOY_LB_NAMESPACE",
    "EXT_PROC_ATTRIBUTES_NAMESPACE",
    "EXT_PROC_SERVICE",
    "FAIRNESS_ID_HEADER",
    "FORWARDED_PATH_HEADER",
    "METHOD_HEADER",
    "MODEL_REWRITE_HEADER",
    "OBJECTIVE_HEADER",
    "ORIGINAL_PATH_HEADER",
    "PATH_HEADER",
    "PREFILL_ENDPOINT_HEADER",
    "REQUEST_ID_HEADER",
    "SLO_TPOT_HEADER",
    "SLO_TTFT_HEADER",
    "STATUS_HEADER",
    "SUBSET_HINT_NAMESPACE",
    "SYSTEM_OWNED_REQUEST_HEADERS",
    "UPSTREAM_ADDRESS_ATTRIBUTE",
]

# ---- request headers the EPP reads (input control) ------------------------------------------------
REQUEST_ID_HEADER = "x-request-id"
OBJECTIVE_HEADER = "x-gateway-inference-objective"
FAIRNESS_ID_HEADER = "x-gateway-inference-fairness-id"
MODEL_REWRITE_HEADER = "x-gateway-model-name-rewrite"
CONFORMANCE_TEST_SELECTION_HEADER = "test-epp-endpoint-selection"
#: Request header that asks for the decision trace in the response (honoured only when enabled).
DECISION_HEADER = "x-epp-decision"
#: Latency SLOs of a request in milliseconds (upstream's predicted-latency plugins): time to first token
#: and average time per output token. Also the deadline of `slo-deadline-ordering-policy`.
SLO_TTFT_HEADER = "x-slo-ttft-ms"
SLO_TPOT_HEADER = "x-slo-tpot-ms"

PATH_HEADER = ":path"
METHOD_HEADER = ":method"
STATUS_HEADER = ":status"
ORIGINAL_PATH_HEADER = "x-original-path"
FORWARDED_PATH_HEADER = "x-forwarded-path"
CONTENT_LENGTH = "content-length"
CONTENT_TYPE = "content-type"

# ---- what the EPP injects / the proxy reports ----------------------------------------------------
DESTINATION_ENDPOINT = "x-gateway-destination-endpoint"
DESTINATION_ENDPOINT_SERVED = "x-gateway-destination-endpoint-served"
DESTINATION_ENDPOINT_SUBSET = "x-gateway-destination-endpoint-subset"
CONFORMANCE_SERVED_HEADER = "x-conformance-test-served-endpoint"

# ---- metadata namespaces -------------------------------------------------------------------------
ENVOY_LB_NAMESPACE = "envoy.lb"
SUBSET_HINT_NAMESPACE = "envoy.lb.subset_hint"
#: Envoy puts the attributes it was asked for (`request_attributes` / `response_attributes`) under the
#: filter's name.
EXT_PROC_ATTRIBUTES_NAMESPACE = "envoy.filters.http.ext_proc"
#: The response attribute carrying the address of the upstream host that served (the last try).
UPSTREAM_ADDRESS_ATTRIBUTE = "upstream.address"

EXT_PROC_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"

# ---- request headers set for the model server's sidecar (llm-d's `pkg/common/routing`) --------------
#: P/D disaggregation: `ip:port` of the chosen prefill endpoint, read by the decode side.
PREFILL_ENDPOINT_HEADER = "x-prefiller-host-port"
#: E/PD: comma-separated `ip:port` of the chosen encode endpoints (not produced here).
ENCODER_ENDPOINTS_HEADER = "x-encoder-hosts-ports"
#: Data parallel: `ip:port` of the chosen rank while the destination is the pod's primary port.
DATA_PARALLEL_ENDPOINT_HEADER = "x-data-parallel-host-port"

#: Request headers only the gateway/EPP may set, or meant for the EPP alone. A client's copy is removed,
#: never forwarded to the model server (upstream only skips echoing them, so the proxy still forwards the
#: client's value).
SYSTEM_OWNED_REQUEST_HEADERS: frozenset[str] = frozenset(
    {
        DECISION_HEADER,
        FAIRNESS_ID_HEADER,
        OBJECTIVE_HEADER,
        MODEL_REWRITE_HEADER,
        DESTINATION_ENDPOINT_SUBSET,
        DESTINATION_ENDPOINT,
        DESTINATION_ENDPOINT_SERVED,
    }
)

#: Largest body chunk sent back to the proxy (margin under some proxies' 64 KiB limit).
BODY_CHUNK_LIMIT = 62_000
