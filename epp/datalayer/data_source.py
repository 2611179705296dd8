"""The `metrics-data-source` plugin: where and how to fetch an endpoint's Prometheus page.

The URL is `<scheme>://<ip>:<port><path>` (IPv6 bracketed), the port being the endpoint's own port (each
data-parallel rank serves its own metrics) unless a metrics port override is given. With `https`,
`insecureSkipVerify` (default true, as upstream) turns certificate verification off.
"""

from __future__ import annotations

from epp.framework.types import Endpoint, TypedName, format_address

__all__ = ["METRICS_DATA_SOURCE_TYPE", "MetricsDataSource"]

METRICS_DATA_SOURCE_TYPE = "metrics-data-source"


class MetricsDataSource:
    def __init__(
        self,
        name: str = METRICS_DATA_SOURCE_TYPE,
        *,
        scheme: str = "http",
        path: str = "/metrics",
        insecure_skip_verify: bool = True,
    ) -> None:
        if scheme not in ("http", "https"):
            raise ValueError(f"scheme must be 'http' or 'https', not {scheme!r}")
        if not path.startswith("/"):
            path = "/" + path
        self._name = name
        self.scheme = scheme
        self.path = path
        self.insecure_skip_verify = insecure_skip_verify

    @property
    def typed_name(self) -> TypedName:
        return TypedName(METRICS_DATA_SOURCE_TYPE, self._name)

    def url(self, endpoint: Endpoint, metrics_port: int = 0) -> str:
        port = metrics_port or endpoint.port
        return f"{self.scheme}://{format_address(endpoint.ip, port)}{self.path}"

    @property
    def verify_tls(self) -> bool:
        return self.scheme == "https" and not self.insecure_skip_verify
