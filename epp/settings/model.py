"""The settings model: `EppSettings`, every flag of the daemon with its type, default and checks.

*Settings* are how the process runs (ports, endpoint source, intervals); the *config* is the
EndpointPickerConfig document (see `epp.config`), which can be reloaded while settings cannot. Field
names are the upstream flags' (`grpc_port` is `--grpc-port` and `EPP_GRPC_PORT`); the field descriptions
and defaults are what `epp --help` prints.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import BeforeValidator, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from epp.errors import SettingsError
from epp.settings.env import ENV_PREFIX, EnvSource, current_environ
from epp.settings.values import (
    Bool,
    Port,
    Seconds,
    parse_csv,
    parse_endpoint_labels,
    parse_objectives,
    parse_port_list,
)
from epp.units import format_duration

__all__ = ["EppSettings", "HaMode", "LogFormat", "MetricsScheme", "ModelServerType"]


class LogFormat(StrEnum):
    CONSOLE = "console"
    JSON = "json"


class HaMode(StrEnum):
    """How replicas share the work: one leader at a time, or all routing and sharing their state."""

    ACTIVE_PASSIVE = "active-passive"
    ACTIVE_ACTIVE = "active-active"


class MetricsScheme(StrEnum):
    """How model-server metrics pages are fetched."""

    HTTP = "http"
    HTTPS = "https"


class ModelServerType(StrEnum):
    """Model-server engines whose metric names the datalayer knows."""

    VLLM = "vllm"
    SGLANG = "sglang"
    TRTLLM_SERVE = "trtllm-serve"
    TRITON_TENSORRT_LLM = "triton-tensorrt-llm"


class EppSettings(BaseSettings):
    """Every flag of the daemon. Durations are float seconds."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        frozen=True,
        case_sensitive=False,
        env_ignore_empty=False,
    )

    # ---- servers
    grpc_port: Port = Field(9002, description="Envoy ext_proc gRPC server port")
    grpc_health_port: Port = Field(9003, description="gRPC health server port (always plaintext)")
    metrics_port: Port = Field(9090, description="Prometheus /metrics HTTP port")
    bind_address: str = Field(
        "", description="address the gRPC, health and metrics servers listen on; empty = all interfaces"
    )
    secure_serving: Bool = Field(
        True, description="TLS on the ext_proc port (self-signed unless --cert-path)"
    )
    cert_path: str | None = Field(None, description="directory holding tls.crt and tls.key")
    enable_cert_reload: Bool = Field(
        True,
        description="re-read --cert-path's tls.crt and tls.key when they change (a rotated Secret), for "
        "new connections; open streams keep theirs",
    )
    metrics_endpoint_auth: Bool = Field(
        True,
        description="in Kubernetes mode, /metrics requires a bearer token that a TokenReview authenticates "
        "and a SubjectAccessReview allows to get /metrics; false: open (static mode never uses it)",
    )
    metrics_bearer_token_file: str | None = Field(
        None,
        description="when set, /metrics requires the bearer token in this file (in any mode; instead of "
        "--metrics-endpoint-auth's review)",
    )
    max_request_body_bytes: int = Field(
        64 * 1024 * 1024, gt=0, description="largest request body accepted (larger: 413)"
    )
    enable_decision_header: Bool = Field(
        False, description="allow the x-epp-decision debug response header when a request asks for it"
    )
    track_token_usage: Bool = Field(
        True,
        description="read token usage from responses that carry it (JSON bodies, streams asking "
        "include_usage) for the token metrics; false: response bodies are never read for it",
    )

    workers: int = Field(
        0,
        ge=0,
        le=64,
        description="decision processes sharing the ext_proc port; 0 = the CPUs this process may use "
        "(affinity mask and cgroup quota, at most 8); 1 = one process",
    )

    # ---- config
    config_file: str | None = Field(
        None, description="EndpointPickerConfig file; none = the built-in default config"
    )
    config_text: str | None = Field(
        None, description="EndpointPickerConfig as text (instead of --config-file)"
    )
    watch_config_file: Bool = Field(
        True, description="hot-reload --config-file when it (or its directory) changes"
    )
    config_reload_debounce: Seconds = Field(
        0.2, ge=0, description="wait this long after a change before reloading"
    )

    # ---- endpoints
    static_endpoints: Annotated[tuple[str, ...], NoDecode, BeforeValidator(parse_csv)] = Field(
        (), description="host:port,host:port,... — run without Kubernetes"
    )
    static_objectives: Annotated[dict[str, int], NoDecode, BeforeValidator(parse_objectives)] = Field(
        default_factory=dict, description="name=priority,... — InferenceObjectives for --static-endpoints"
    )
    static_endpoint_labels: Annotated[
        dict[str, dict[str, str]], NoDecode, BeforeValidator(parse_endpoint_labels)
    ] = Field(
        default_factory=dict,
        description="host:port=key=value,... — pod labels of --static-endpoints entries (e.g. "
        "llm-d.ai/role=prefill for P/D); an endpoint may repeat, once per label",
    )
    model_server_type: ModelServerType = Field(
        ModelServerType.VLLM,
        description="engine of endpoints without an engine-type label (vllm, sglang, trtllm-serve, "
        "triton-tensorrt-llm)",
    )
    pool_name: str = Field("", description="InferencePool to serve (Kubernetes mode)")
    pool_namespace: str = Field("", description="namespace of the pool")
    pool_group: str = Field("inference.networking.k8s.io", description="API group of the InferencePool")
    endpoint_selector: str = Field(
        "", description="standalone Kubernetes mode: pods by label selector k=v,..."
    )
    endpoint_target_ports: Annotated[tuple[int, ...], NoDecode, BeforeValidator(parse_port_list)] = Field(
        (), description="standalone mode: target ports of the selected pods (1 to 8)"
    )
    kubeconfig: str | None = Field(
        None, description="kubeconfig path; none = in-cluster config, else $KUBECONFIG"
    )
    disable_endpoint_subset_filter: Bool = Field(False, description="ignore the proxy's endpoint subset hint")

    # ---- metrics collection
    model_server_metrics_port: int = Field(
        0,
        description="deprecated upstream: scrape model-server metrics on this port instead of the "
        "endpoint's own (only for pods serving one target port); 0 = the endpoint's port",
    )
    model_server_metrics_path: str = Field(
        "/metrics",
        description="URL path of model-server metrics, when the config's metrics-data-source does not "
        "set path",
    )
    model_server_metrics_scheme: MetricsScheme = Field(
        MetricsScheme.HTTP,
        description="http or https for model-server metrics, when the config's metrics-data-source does "
        "not set scheme",
    )
    model_server_metrics_https_insecure_skip_verify: Bool = Field(
        True,
        description="with https, do not verify the model server's certificate, when the config's "
        "metrics-data-source does not set insecureSkipVerify",
    )
    refresh_metrics_interval: Seconds = Field(0.05, gt=0, description="model-server scrape interval")
    refresh_prometheus_metrics_interval: Seconds = Field(
        5.0, gt=0, description="pool gauges recompute interval"
    )
    metrics_staleness_threshold: Seconds = Field(
        2.0, gt=0, description="endpoint metrics older than this are stale"
    )
    total_queued_requests_metric: str | None = Field(
        None, description="deprecated: waiting-queue metric override"
    )
    total_running_requests_metric: str | None = Field(
        None, description="deprecated: running-requests metric override"
    )
    kv_cache_usage_percentage_metric: str | None = Field(
        None, description="deprecated: KV-cache usage metric override"
    )
    lora_info_metric: str | None = Field(None, description="deprecated: LoRA info metric override")
    cache_info_metric: str | None = Field(None, description="deprecated: cache config info metric override")

    # ---- high availability
    ha_enable_leader_election: Bool = Field(False, description="active-passive HA through a Lease")
    ha_lease_duration: Seconds = Field(15.0, gt=0, description="leader lease duration")
    ha_renew_deadline: Seconds = Field(
        10.0, gt=0, description="the leader gives up if it cannot renew in this time"
    )
    ha_retry_period: Seconds = Field(2.0, gt=0, description="interval between lease attempts")
    ha_mode: HaMode = Field(
        HaMode.ACTIVE_PASSIVE,
        description="active-passive (a leader, with --ha-enable-leader-election) or active-active (every "
        "replica routes and shares its routing state with the others)",
    )
    peers: Annotated[tuple[str, ...], NoDecode, BeforeValidator(parse_csv)] = Field(
        (), description="active-active: the other replicas' peer addresses, host:port,..."
    )
    ha_peer_selector: str = Field(
        "",
        description="active-active in Kubernetes: label selector of this EPP's own pods (peers are "
        "their ready IPs on --ha-port, in --pool-namespace)",
    )
    ha_port: Port = Field(9004, description="active-active: the peer channel's TCP port")
    ha_secret_file: str | None = Field(
        None,
        description="active-active: file holding the secret every replica shares (CURVE keys for the "
        "peer channel); without it the channel is plain TCP",
    )
    ha_bootstrap_timeout: Seconds = Field(
        3.0, ge=0, description="active-active: how long a starting replica waits for a peer's snapshot"
    )

    # ---- logging and tracing
    v: int = Field(2, ge=0, le=10, description="verbosity: 2 default, 3 verbose, 4 debug, 5 trace")
    log_format: LogFormat = Field(LogFormat.CONSOLE, description="log format: console or json")
    tracing: Bool = Field(
        True,
        description="OpenTelemetry traces of requests, configured by the OTEL_* environment variables "
        "(exporter, endpoint, service name, sampler; default parentbased_traceidratio 0.1); no exporter "
        "configured = no traces",
    )

    @property
    def verbosity(self) -> int:
        return self.v

    @property
    def deprecated_metric_overrides(self) -> dict[str, str]:
        """Metric names set by the deprecated upstream flags, by signal (for the default engine mapping)."""
        fields = {
            "queued_requests": self.total_queued_requests_metric,
            "running_requests": self.total_running_requests_metric,
            "kv_cache_usage": self.kv_cache_usage_percentage_metric,
            "lora_info": self.lora_info_metric,
            "cache_info": self.cache_info_metric,
        }
        return {k: v for k, v in fields.items() if v}

    @field_validator("static_endpoints", "peers")
    @classmethod
    def _check_endpoints(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            host, sep, port = item.rpartition(":")
            if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
                raise ValueError(f"expected host:port, got {item!r} (IPv6 as [fd00::1]:8000)")
            if ":" in host and not (host.startswith("[") and host.endswith("]")):
                raise ValueError(f"an IPv6 address needs brackets: [{host}]:{port}")
        return value

    @field_validator("endpoint_target_ports")
    @classmethod
    def _check_ports(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if len(value) > 8:
            raise ValueError(f"at most 8 target ports, got {len(value)}")
        for port in value:
            if not 1 <= port <= 65535:
                raise ValueError(f"port {port} is out of range 1-65535")
        return value

    @field_validator("model_server_metrics_port")
    @classmethod
    def _check_metrics_port(cls, value: int) -> int:
        if not 0 <= value <= 65535:
            raise ValueError(f"port {value} is out of range 0-65535 (0 = the endpoint's own port)")
        return value

    @field_validator("model_server_metrics_path")
    @classmethod
    def _check_metrics_path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"a URL path must start with '/', got {value!r}")
        return value

    @field_validator("endpoint_selector", "ha_peer_selector")
    @classmethod
    def _check_selector(cls, value: str) -> str:
        for part in (p.strip() for p in value.split(",") if p.strip()):
            key, sep, _ = part.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"expected key=value pairs separated by commas, got {part!r}")
        return value

    @model_validator(mode="after")
    def _check_combination(self) -> EppSettings:
        if not self.pool_namespace:
            namespace = current_environ().get("NAMESPACE", "") or "default"
            object.__setattr__(self, "pool_namespace", namespace)
        sources = [
            f"--{name.replace('_', '-')}"
            for name in ("static_endpoints", "pool_name", "endpoint_selector")
            if getattr(self, name)
        ]
        if len(sources) != 1:
            got = "none is set" if not sources else f"got {' and '.join(sources)}"
            raise SettingsError(
                "exactly one endpoint source is required: --static-endpoints (no Kubernetes), --pool-name "
                f"(an InferencePool) or --endpoint-selector (pods by label); {got}"
            )
        if self.pool_name and self.pool_group == "inference.networking.x-k8s.io":
            raise SettingsError(
                "--pool-group inference.networking.x-k8s.io is the v1alpha2 InferencePool, which this EPP "
                "does not serve (deprecated upstream); use inference.networking.k8s.io (v1)"
            )
        if self.config_file and self.config_text:
            raise SettingsError("--config-file and --config-text are mutually exclusive; set only one")
        if self.endpoint_target_ports and not self.endpoint_selector:
            raise SettingsError("--endpoint-target-ports only applies with --endpoint-selector")
        if self.endpoint_selector and not self.endpoint_target_ports:
            raise SettingsError("--endpoint-selector needs --endpoint-target-ports (1 to 8 ports)")
        ports = {"--grpc-port": self.grpc_port, "--grpc-health-port": self.grpc_health_port}
        ports["--metrics-port"] = self.metrics_port
        if self.ha_mode is HaMode.ACTIVE_ACTIVE:
            ports["--ha-port"] = self.ha_port
        seen: dict[int, str] = {}
        for flag, port in ports.items():
            if port and port in seen:
                raise SettingsError(
                    f"{flag} and {seen[port]} are both {port}; each server needs its own port"
                )
            seen[port] = flag
        if not self.ha_lease_duration > self.ha_renew_deadline > self.ha_retry_period:
            raise SettingsError(
                "leader election needs --ha-lease-duration > --ha-renew-deadline > --ha-retry-period, got "
                f"{format_duration(self.ha_lease_duration)}, {format_duration(self.ha_renew_deadline)}, "
                f"{format_duration(self.ha_retry_period)}"
            )
        self._check_ha()
        if self.static_objectives and not self.static_endpoints:
            raise SettingsError("--static-objectives only applies with --static-endpoints")
        unknown = sorted(set(self.static_endpoint_labels) - set(self.static_endpoints))
        if unknown:
            raise SettingsError(
                f"--static-endpoint-labels names {', '.join(unknown)}, not in --static-endpoints "
                "(write the address as --static-endpoints does)"
            )
        return self

    def _check_ha(self) -> None:
        active_active = self.ha_mode is HaMode.ACTIVE_ACTIVE
        if active_active and self.ha_enable_leader_election:
            raise SettingsError(
                "--ha-mode active-active and --ha-enable-leader-election exclude each other: every "
                "active-active replica routes, no lease is taken"
            )
        if not active_active:
            named = [f for f in ("peers", "ha_peer_selector", "ha_secret_file") if getattr(self, f)]
            if named:
                flags = ", ".join(f"--{n.replace('_', '-')}" for n in named)
                raise SettingsError(f"{flags} only apply with --ha-mode active-active")
            return
        if self.peers and self.ha_peer_selector:
            raise SettingsError("--peers and --ha-peer-selector exclude each other: peers come from one")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, EnvSource(settings_cls))
