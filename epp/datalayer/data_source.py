"""The `metrics-data-source` plugin: where and how to fetch an endpoint's Prometheus page.

The URL is `<scheme>://<ip>:<port><path>` (IPv6 bracketed), the port being the endpoint's own port (each
data-parallel rank serves its own metrics) unless a metrics port override is given. With `https`,
`insecureSkipVerify` (default true, as upstream) turns certificate verification off.

Upstream's deprecated `--model-server-metrics-scheme|-path|-https-insecure-skip-verify` flags are the
defaults of the parameters a config leaves out (`with_defaults`); parameters the config sets win.
"""

from __future__ import annotations

import dataclasses

from epp.framework.types import Endpoint, TypedName, format_address

__all__ = ["METRICS_DATA_SOURCE_TYPE", "MetricsDataSource", "MetricsSourceDefaults"]


@dataclasses.dataclass(frozen=True, slots=True)
class MetricsSourceDefaults:
    """What the process flags say for the parameters a config does not set."""

    scheme: str = "http"
    path: str = "/metrics"
    insecure_skip_verify: bool = True

    def any(self) -> bool:
        return self != MetricsSourceDefaults()


METRICS_DATA_SOURCE_TYPE = "metrics-data-source"


class MetricsDataSource:
    def __init__(
        self,
        name: str = METRICS_DATA_SOURCE_TYPE,
        *,
        scheme: str = "http",
        path: str = "/metrics",
        insecure_skip_verify: bool = True,
        explicit: frozenset[str] = frozenset(),
    ) -> None:
        if scheme not in ("http", "https"):
            raise ValueError(f"scheme must be 'http' or 'https', not {scheme!r}")
        if not path.startswith("/"):
            path = "/" + path
        self._name = name
        self.scheme = scheme
        self.path = path
        self.insecure_skip_verify = insecure_skip_verify
        #: the parameters the config set (scheme, path, insecure_skip_verify): flags do not override them
        self.explicit = explicit

    def with_defaults(self, defaults: MetricsSourceDefaults) -> MetricsDataSource:
        """This source with `defaults` for every parameter the config did not set."""
        values = {
            key: getattr(self if key in self.explicit else defaults, key)
            for key in ("scheme", "path", "insecure_skip_verify")
        }
        if all(values[key] == getattr(self, key) for key in values):
            return self
        return MetricsDataSource(self._name, explicit=self.explicit, **values)

    @property
    def typed_name(self) -> TypedName:
        return TypedName(METRICS_DATA_SOURCE_TYPE, self._name)

    def url(self, endpoint: Endpoint, metrics_port: int = 0) -> str:
        port = metrics_port or endpoint.port
        return f"{self.scheme}://{format_address(endpoint.ip, port)}{self.path}"

    @property
    def verify_tls(self) -> bool:
        return self.scheme == "https" and not self.insecure_skip_verify
