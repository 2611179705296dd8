"""Render an Envoy bootstrap for the EPP (or for plain-Envoy baselines).

`routing="epp"` gives GIE's setup: an ext_proc filter talking to the EPP over HTTP/2 (TLS without
verification, or plaintext) and an ORIGINAL_DST cluster that takes the destination from the
`x-gateway-destination-endpoint` header or from `envoy.lb` dynamic metadata (metadata wins when both are
set), with `metadata_options.receiving_namespaces: ["envoy.lb"]` so the EPP's metadata is accepted.
The served endpoint reaches the EPP on the response path as the `upstream.address` response attribute
(verified with Envoy 1.40: it names the host of the last try, so it is right after retries too), or, with
`served_endpoint="header"`, as a route-added response header the EPP strips.

Body modes of the routing filter:
- ON_DEMAND (the default, ours): request body BUFFERED (one message), response headers sent, response body
  NONE unless the EPP asks for it in its reply to the response headers (`allow_mode_override`; Envoy
  ignores overrides whenever a configured body mode is FULL_DUPLEX_STREAMED). With `observer` a second
  ext_proc filter in `observability_mode`, placed before the routing filter, copies the response headers
  and body to the EPP without holding them, so the EPP reads the first byte and token usage off the
  critical path, and the routing stream may skip the response altogether (docs/protocol.md, "Response
  path"). With `served_endpoint="header"` the served header then reaches the client: an observer cannot
  remove it.
- FULL_DUPLEX_STREAMED (upstream's): both bodies through the routing filter; request and response
  trailers SEND, as Envoy requires. Every streamed chunk waits for the EPP's reply.
- BUFFERED: request body buffered; response body STREAMED so SSE still streams.
`routing="round_robin"`, `"least_request"` route over `static_endpoints` without any ext_proc (benchmark
baselines).

Listener and admin ports may be 0: `EnvoyProcess` discovers the bound ports through the admin API.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import yaml

from epp.metadata import (
    DESTINATION_ENDPOINT,
    DESTINATION_ENDPOINT_SERVED,
    ENVOY_LB_NAMESPACE,
    UPSTREAM_ADDRESS_ATTRIBUTE,
)

__all__ = ["OBSERVER_FILTER", "BodyMode", "EnvoyConfig", "Routing", "ServedEndpoint", "render_bootstrap"]

#: Name of the observability-mode ext_proc filter (Envoy scopes attributes and stats by filter name).
OBSERVER_FILTER = "epp.observer"

BodyMode = Literal["ON_DEMAND", "FULL_DUPLEX_STREAMED", "BUFFERED"]
Routing = Literal["epp", "round_robin", "least_request"]
#: How the served endpoint reaches the EPP on the response path: the `upstream.address` ext_proc
#: attribute, or a response header `x-gateway-destination-endpoint-served: %UPSTREAM_HOST%` added by the
#: route (the EPP strips it), or not at all.
ServedEndpoint = Literal["attribute", "header", "none"]

_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_EXT_PROC = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor"
_EXT_PROC_PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute"
ROUTING_FILTER = "envoy.filters.http.ext_proc"
_HEX = "0123456789abcdef"
_ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
_HTTP_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
_RAW_BUFFER = "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"


@dataclass(frozen=True, slots=True)
class EnvoyConfig:
    """What the bootstrap contains.

    Attributes:
        listener_port / admin_port: 0 = any free port (discovered after start).
        ext_proc_port / ext_proc_host: where the EPP listens (routing "epp").
        ext_proc_replicas: more EPP replicas (`host`, `port`, `health_port`; at most 16 in all) for
            `--ha-mode active-active`: a route per replica by the first hex digit of the request id sends
            both ext_proc streams of a request to that replica (failing over to the others), so requests
            spread evenly and each meets its observer (`_replica_routes`; a request id that is not hex
            falls to the shared cluster, round robin). Envoy checks each replica's gRPC readiness on its
            health port (`ext_proc_health_port` for the first) every 0.5 s and ejects one whose connection
            fails at once (outlier detection), so a replica that dies or is not ready gets no new streams.
        ext_proc_tls: TLS to the EPP (no certificate validation, ALPN h2), as upstream's chart.
        body_mode: ON_DEMAND (default), FULL_DUPLEX_STREAMED (upstream's) or BUFFERED (see above).
        observer: add the observability-mode filter that copies response bodies to the EPP off the
            critical path (what ON_DEMAND is meant to run with).
        ext_proc_max_streams: streams per HTTP/2 connection to the EPP before Envoy opens another (None:
            HTTP/2's own limit, so one connection per Envoy worker thread). An EPP with `--workers N`
            gets work only over the connections it is given: more connections spread it.
        static_endpoints: `ip:port` list for the plain-Envoy baselines (and the FailOpen fallback).
        route_timeout: whole-request timeout at the route (0 = none).
        failure_mode_allow: forward without a pick when the EPP is unreachable (upstream's FailOpen); with
            `static_endpoints` such a request goes to them round robin (else to the listener's own address).
        buffer_limit_bytes: per-connection buffer (bounds BUFFERED request bodies).
        served_endpoint: how the EPP learns which endpoint served (see `ServedEndpoint`).
    """

    listener_port: int = 0
    admin_port: int = 0
    ext_proc_port: int = 9002
    ext_proc_host: str = "127.0.0.1"
    ext_proc_replicas: Sequence[tuple[str, int, int]] = ()
    ext_proc_health_port: int = 0
    ext_proc_tls: bool = True
    body_mode: BodyMode = "ON_DEMAND"
    observer: bool = True
    ext_proc_max_streams: int | None = None
    routing: Routing = "epp"
    static_endpoints: Sequence[str] = ()
    route_timeout: float = 60.0
    grpc_timeout: float = 10.0
    message_timeout: float = 10.0
    failure_mode_allow: bool = False
    buffer_limit_bytes: int = 32 << 20
    listen_address: str = "127.0.0.1"
    connect_timeout: float = 1.0
    access_log_path: str | None = None
    served_endpoint: ServedEndpoint = "attribute"


def _seconds(value: float) -> str:
    return f"{value:g}s"


def _address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _split(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host.strip("[]"), int(port)


def _processing_mode(mode: BodyMode) -> dict[str, str]:
    if mode == "FULL_DUPLEX_STREAMED":
        return {
            "request_header_mode": "SEND",
            "response_header_mode": "SEND",
            "request_body_mode": "FULL_DUPLEX_STREAMED",
            "response_body_mode": "FULL_DUPLEX_STREAMED",
            "request_trailer_mode": "SEND",
            "response_trailer_mode": "SEND",
        }
    return {
        "request_header_mode": "SEND",
        "response_header_mode": "SEND",
        "request_body_mode": "BUFFERED",
        "response_body_mode": "NONE" if mode == "ON_DEMAND" else "STREAMED",
        "request_trailer_mode": "SKIP",
        "response_trailer_mode": "SKIP",
    }


def _grpc_service(cfg: EnvoyConfig, cluster: str = "ext_proc") -> dict[str, Any]:
    return {
        "envoy_grpc": {"cluster_name": cluster, "authority": f"localhost:{cfg.ext_proc_port}"},
        "timeout": _seconds(cfg.grpc_timeout),
    }


def _observer_filter(cfg: EnvoyConfig) -> dict[str, Any]:
    """Copies request headers (for the request id), response headers (with the served endpoint) and the
    response body to the EPP; never waits."""
    flt: dict[str, Any] = {
        "name": OBSERVER_FILTER,
        "typed_config": {
            "@type": _EXT_PROC,
            "grpc_service": _grpc_service(cfg),
            "observability_mode": True,
            "failure_mode_allow": True,
            "processing_mode": {
                "request_header_mode": "SEND",
                "response_header_mode": "SEND",
                "request_body_mode": "NONE",
                "response_body_mode": "STREAMED",
                "request_trailer_mode": "SKIP",
                "response_trailer_mode": "SKIP",
            },
        },
    }
    if cfg.served_endpoint == "attribute":
        flt["typed_config"]["response_attributes"] = [UPSTREAM_ADDRESS_ATTRIBUTE]
    return flt


def _ext_proc_filter(cfg: EnvoyConfig) -> dict[str, Any]:
    flt: dict[str, Any] = {
        "name": ROUTING_FILTER,
        "typed_config": {
            "@type": _EXT_PROC,
            "grpc_service": _grpc_service(cfg),
            "failure_mode_allow": cfg.failure_mode_allow,
            "allow_mode_override": True,
            "message_timeout": _seconds(cfg.message_timeout),
            "processing_mode": _processing_mode(cfg.body_mode),
            "metadata_options": {"receiving_namespaces": {"untyped": [ENVOY_LB_NAMESPACE]}},
        },
    }
    if cfg.served_endpoint == "attribute":
        flt["typed_config"]["response_attributes"] = [UPSTREAM_ADDRESS_ATTRIBUTE]
    return flt


def _replicas(cfg: EnvoyConfig) -> list[tuple[str, int, int]]:
    return [(cfg.ext_proc_host, cfg.ext_proc_port, cfg.ext_proc_health_port), *cfg.ext_proc_replicas]


def _ext_proc_cluster(
    cfg: EnvoyConfig, name: str = "ext_proc", preferred: int | None = None
) -> dict[str, Any]:
    """The EPP replicas: all alike, or (`preferred`) that one first and the others as its failover."""
    replicas = _replicas(cfg)
    groups: list[dict[str, Any]]
    if preferred is None:
        groups = [{"lb_endpoints": [_ext_proc_endpoint(*r) for r in replicas]}]
    else:
        others = [_ext_proc_endpoint(*r) for i, r in enumerate(replicas) if i != preferred]
        groups = [{"priority": 0, "lb_endpoints": [_ext_proc_endpoint(*replicas[preferred])]}]
        if others:
            groups.append({"priority": 1, "lb_endpoints": others})
    h2: dict[str, Any] = {}
    if cfg.ext_proc_max_streams:
        h2["max_concurrent_streams"] = cfg.ext_proc_max_streams
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": _seconds(cfg.connect_timeout),
        "lb_policy": "ROUND_ROBIN",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _HTTP_OPTIONS,
                "explicit_http_config": {"http2_protocol_options": h2},
            }
        },
        "load_assignment": {"cluster_name": name, "endpoints": groups},
    }
    if cfg.ext_proc_tls:
        cluster["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {"@type": _TLS, "common_tls_context": {"alpn_protocols": ["h2"]}},
        }
    if cfg.ext_proc_replicas:
        cluster["health_checks"] = [
            {
                "timeout": "1s",
                "interval": "0.5s",
                "no_traffic_interval": "1s",
                "unhealthy_threshold": 1,
                "healthy_threshold": 1,
                "grpc_health_check": {"service_name": "readiness"},
            }
        ]
        if cfg.ext_proc_tls:  # the EPP's health port is always plaintext
            cluster["health_checks"][0]["transport_socket_match_criteria"] = {"health": "plaintext"}
            cluster["transport_socket_matches"] = [
                {
                    "name": "health-plaintext",
                    "match": {"health": "plaintext"},
                    "transport_socket": {
                        "name": "envoy.transport_sockets.raw_buffer",
                        "typed_config": {"@type": _RAW_BUFFER},
                    },
                }
            ]
        cluster["outlier_detection"] = {
            "split_external_local_origin_errors": True,
            "consecutive_local_origin_failure": 1,
            "base_ejection_time": "2s",
            "max_ejection_percent": 100,
            "interval": "1s",
        }
        cluster["common_lb_config"] = {"healthy_panic_threshold": {"value": 0}}
    return cluster


def _ext_proc_endpoint(host: str, port: int, health_port: int) -> dict[str, Any]:
    endpoint: dict[str, Any] = {"address": _address(host, port)}
    if health_port:
        endpoint["health_check_config"] = {"port_value": health_port}
    return {"endpoint": endpoint}


def _original_dst_cluster(cfg: EnvoyConfig) -> dict[str, Any]:
    return {
        "name": "original_destination_cluster",
        "type": "ORIGINAL_DST",
        "connect_timeout": _seconds(cfg.connect_timeout),
        "lb_policy": "CLUSTER_PROVIDED",
        "original_dst_lb_config": {
            "use_http_header": True,
            "http_header_name": DESTINATION_ENDPOINT,
            "metadata_key": {"key": ENVOY_LB_NAMESPACE, "path": [{"key": DESTINATION_ENDPOINT}]},
        },
    }


def _static_cluster(cfg: EnvoyConfig, policy: str) -> dict[str, Any]:
    endpoints = [{"endpoint": {"address": _address(*_split(e))}} for e in cfg.static_endpoints]
    return {
        "name": "static_backends",
        "type": "STATIC",
        "connect_timeout": _seconds(cfg.connect_timeout),
        "lb_policy": policy,
        "load_assignment": {"cluster_name": "static_backends", "endpoints": [{"lb_endpoints": endpoints}]},
    }


def bootstrap(cfg: EnvoyConfig) -> dict[str, Any]:
    """The bootstrap as a dict (see `render_bootstrap`)."""
    if cfg.routing == "epp":
        filters = [_ext_proc_filter(cfg)]
        if cfg.observer:
            # first: its request headers reach the EPP before the routing stream's, so the two are paired
            # long before the response comes (the response path runs the filters in reverse order)
            filters.insert(0, _observer_filter(cfg))
        clusters = [_ext_proc_cluster(cfg), _original_dst_cluster(cfg)]
        target = "original_destination_cluster"
    else:
        if not cfg.static_endpoints:
            raise ValueError(f"routing {cfg.routing!r} needs static_endpoints")
        filters = []
        clusters = [_static_cluster(cfg, "ROUND_ROBIN" if cfg.routing == "round_robin" else "LEAST_REQUEST")]
        target = "static_backends"
    route: dict[str, Any] = {"cluster": target, "timeout": _seconds(cfg.route_timeout)}
    route_entry: dict[str, Any] = {"match": {"prefix": "/"}, "route": route}
    if cfg.routing == "epp" and cfg.served_endpoint == "header":
        route_entry["response_headers_to_add"] = [
            {"header": {"key": DESTINATION_ENDPOINT_SERVED, "value": "%UPSTREAM_HOST%"}}
        ]
    routes = [route_entry]
    if cfg.routing == "epp" and cfg.failure_mode_allow and cfg.static_endpoints:
        # FailOpen: a request the EPP did not route (no destination header) goes to the pool's endpoints
        # round robin, as gateways do with an unreachable EPP, instead of back to this listener.
        picked = {"name": DESTINATION_ENDPOINT, "present_match": True}
        route_entry["match"] = {"prefix": "/", "headers": [picked]}
        fallback = {"match": {"prefix": "/"}, "route": {**route, "cluster": "static_backends"}}
        routes = [route_entry, fallback]
        clusters.append(_static_cluster(cfg, "ROUND_ROBIN"))
    if cfg.routing == "epp" and cfg.ext_proc_replicas:
        routes = [*_replica_routes(cfg, route_entry), *routes]
        clusters += [_ext_proc_cluster(cfg, f"ext_proc_r{i}", i) for i in range(len(_replicas(cfg)))]
    hcm: dict[str, Any] = {
        "@type": _HCM,
        "stat_prefix": "ingress_http",
        "route_config": {
            "name": "local_route",
            "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}],
        },
        "http_filters": [*filters, {"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER}}],
    }
    if cfg.access_log_path:
        hcm["access_log"] = [
            {
                "name": "envoy.access_loggers.file",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                    "path": cfg.access_log_path,
                    "log_format": {
                        "text_format_source": {
                            "inline_string": "%START_TIME% %REQ(:METHOD)% %REQ(:PATH)% %RESPONSE_CODE% "
                            "%RESPONSE_CODE_DETAILS% %UPSTREAM_HOST% %DURATION%ms\n"
                        }
                    },
                },
            }
        ]
    return {
        "admin": {"address": _address("127.0.0.1", cfg.admin_port)},
        "static_resources": {
            "listeners": [
                {
                    "name": "gateway",
                    "address": _address(cfg.listen_address, cfg.listener_port),
                    "per_connection_buffer_limit_bytes": cfg.buffer_limit_bytes,
                    "filter_chains": [
                        {
                            "filters": [
                                {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                            ]
                        }
                    ],
                }
            ],
            "clusters": clusters,
        },
    }


def _replica_routes(cfg: EnvoyConfig, base: dict[str, Any]) -> list[dict[str, Any]]:
    """One route per EPP replica, by the first hex digit of the request id (Envoy's UUID), whose two
    ext_proc filters both talk to that replica (`ext_proc_r<i>`, failing over to the others): the routing
    stream and the observer stream of a request meet on one replica, and requests spread evenly."""
    count = len(_replicas(cfg))
    if count > len(_HEX):
        raise ValueError(f"at most {len(_HEX)} EPP replicas behind one Envoy, got {count}")
    routes: list[dict[str, Any]] = []
    for i in range(count):
        digits = _HEX[i * 16 // count : (i + 1) * 16 // count]
        override = {
            "@type": _EXT_PROC_PER_ROUTE,
            "overrides": {"grpc_service": _grpc_service(cfg, f"ext_proc_r{i}")},
        }
        entry = dict(base)
        entry["match"] = {
            "prefix": "/",
            "headers": [
                {"name": "x-request-id", "string_match": {"safe_regex": {"regex": f"^[{digits}].*"}}}
            ],
        }
        filters = {ROUTING_FILTER: override}
        if cfg.observer:
            filters[OBSERVER_FILTER] = override
        entry["typed_per_filter_config"] = filters
        routes.append(entry)
    return routes


def render_bootstrap(cfg: EnvoyConfig) -> str:
    """The Envoy bootstrap YAML for `cfg`."""
    return yaml.safe_dump(bootstrap(cfg), sort_keys=False)
