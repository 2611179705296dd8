"""Process settings of the daemon: command-line flags and `EPP_*` environment variables.

*Settings* are how the process runs (ports, endpoint source, intervals); the *config* is the
EndpointPickerConfig document (see `epp.config`), which can be reloaded while settings cannot.

Flag names and defaults are the upstream EPP's, so the upstream Helm chart's arguments work unchanged:
`--flag=value` and `--flag value`, booleans as `--flag`, `--flag=true|false` (also `--flag false`),
Go-style durations (`50ms`, `2s`, `1m30s`), `-v`/`--v` for verbosity. Every flag can also be set as
`EPP_<FLAG_IN_UPPER_SNAKE>` (e.g. `EPP_GRPC_PORT=9002`); a flag wins over the environment. Flags the
upstream chart passes that mean nothing here (zap logging, tracing, pprof, ...) are accepted and ignored.
"""

from __future__ import annotations

import contextvars
import difflib
import logging
import os
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, get_args, get_origin

from pydantic import BeforeValidator, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from epp.errors import SettingsError
from epp.units import format_duration, parse_duration

__all__ = [
    "ENV_PREFIX",
    "EppSettings",
    "HelpRequested",
    "LogFormat",
    "ModelServerType",
    "flag_help",
    "parse_settings",
]

log = logging.getLogger(__name__)

ENV_PREFIX = "EPP_"
_GO_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_GO_FALSE = {"0", "f", "F", "FALSE", "false", "False"}

# The environment `parse_settings` was given (None = os.environ) for the pydantic-settings env source.
_ENVIRON: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar(
    "epp_environ", default=None
)


class LogFormat(StrEnum):
    CONSOLE = "console"
    JSON = "json"


class ModelServerType(StrEnum):
    """Model-server engines whose metric names the datalayer knows."""

    VLLM = "vllm"
    SGLANG = "sglang"
    TRTLLM_SERVE = "trtllm-serve"
    TRITON_TENSORRT_LLM = "triton-tensorrt-llm"


class HelpRequested(Exception):
    """`--help` was given; `text` is what to print."""

    def __init__(self, text: str) -> None:
        super().__init__("help requested")
        self.text = text


# ---- value parsers (shared by flags and environment) --------------------------------------------


def _duration(value: Any) -> Any:
    if isinstance(value, str):
        return parse_duration(value)
    return value  # a number of seconds from Python code


def _csv(value: Any) -> Any:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


def _objectives(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    out: dict[str, int] = {}
    for part in (p.strip() for p in value.split(",")):
        if not part:
            continue
        name, sep, prio = part.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"expected name=priority, got {part!r} (e.g. 'chat=10,batch=-1')")
        try:
            out[name.strip()] = int(prio.strip())
        except ValueError:
            raise ValueError(
                f"the priority of {name.strip()!r} must be an integer, got {prio.strip()!r}"
            ) from None
    return out


def _bool(value: Any) -> Any:
    if isinstance(value, str):
        if value in _GO_TRUE or value.lower() in ("yes", "on", "y"):
            return True
        if value in _GO_FALSE or value.lower() in ("no", "off", "n"):
            return False
        raise ValueError(f"expected true or false, got {value!r}")
    return value


Seconds = Annotated[float, BeforeValidator(_duration), Field(json_schema_extra={"flag_type": "duration"})]
Bool = Annotated[bool, BeforeValidator(_bool)]
Port = Annotated[int, Field(ge=0, le=65535)]  # 0 = any free port (tests, demos)


def _port_list(value: Any) -> Any:
    value = _csv(value)
    if isinstance(value, tuple | list):
        try:
            return tuple(int(v) for v in value)
        except ValueError:
            raise ValueError(
                f"expected comma-separated port numbers, got {','.join(map(str, value))!r}"
            ) from None
    return value


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
    metrics_bearer_token_file: str | None = Field(
        None, description="when set, /metrics requires the bearer token in this file"
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
    static_endpoints: Annotated[tuple[str, ...], NoDecode, BeforeValidator(_csv)] = Field(
        (), description="host:port,host:port,... — run without Kubernetes"
    )
    static_objectives: Annotated[dict[str, int], NoDecode, BeforeValidator(_objectives)] = Field(
        default_factory=dict, description="name=priority,... — InferenceObjectives for --static-endpoints"
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
    endpoint_target_ports: Annotated[tuple[int, ...], NoDecode, BeforeValidator(_port_list)] = Field(
        (), description="standalone mode: target ports of the selected pods (1 to 8)"
    )
    kubeconfig: str | None = Field(
        None, description="kubeconfig path; none = in-cluster config, else $KUBECONFIG"
    )
    disable_endpoint_subset_filter: Bool = Field(False, description="ignore the proxy's endpoint subset hint")

    # ---- metrics collection
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

    # ---- logging
    v: int = Field(2, ge=0, le=10, description="verbosity: 2 default, 3 verbose, 4 debug, 5 trace")
    log_format: LogFormat = Field(LogFormat.CONSOLE, description="log format: console or json")

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

    @field_validator("static_endpoints")
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

    @field_validator("endpoint_selector")
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
            env = _ENVIRON.get()
            namespace = (os.environ if env is None else env).get("NAMESPACE", "") or "default"
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
        if self.static_objectives and not self.static_endpoints:
            raise SettingsError("--static-objectives only applies with --static-endpoints")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, _EnvSource(settings_cls))


class _EnvSource(EnvSettingsSource):
    """The environment source, reading the mapping given to `parse_settings` (default os.environ)."""

    def _load_env_vars(self) -> Mapping[str, str | None]:
        env = _ENVIRON.get()
        if env is None:
            return super()._load_env_vars()
        return {(k if self.case_sensitive else k.lower()): v for k, v in env.items()}


# ---- flags ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Flag:
    name: str  # without dashes
    field: str
    is_bool: bool
    repeatable: bool


def _flag_name(field: str) -> str:
    return field.replace("_", "-")


def _is_bool(info: FieldInfo) -> bool:
    annotation = info.annotation
    if get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return annotation is bool


def _flags() -> dict[str, _Flag]:
    out: dict[str, _Flag] = {}
    for field, info in EppSettings.model_fields.items():
        repeatable = field in ("static_endpoints", "static_objectives", "endpoint_target_ports")
        out[_flag_name(field)] = _Flag(_flag_name(field), field, _is_bool(info), repeatable)
    return out


#: Upstream flags accepted for compatibility and ignored; True = boolean flag.
IGNORED_FLAGS: Mapping[str, bool] = {
    "zap-encoder": False,
    "zap-devel": True,
    "zap-log-level": False,
    "zap-stacktrace-level": False,
    "zap-time-encoding": False,
    "tracing": True,
    "metrics-endpoint-auth": True,
    "enable-pprof": True,
    "health-checking": True,
    "enable-cert-reload": True,
    "model-server-metrics-port": False,
    "model-server-metrics-path": False,
    "model-server-metrics-scheme": False,
    "model-server-metrics-https-insecure-skip-verify": True,
}

_DEPRECATED_METRIC_FLAGS = (
    "total-queued-requests-metric",
    "total-running-requests-metric",
    "kv-cache-usage-percentage-metric",
    "lora-info-metric",
    "cache-info-metric",
)


def _split(arg: str) -> tuple[str, str | None]:
    body = arg[2:] if arg.startswith("--") else arg[1:]
    name, sep, value = body.partition("=")
    return name, (value if sep else None)


def _unknown(name: str, known: Sequence[str]) -> SettingsError:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.7)
    hint = f"; did you mean --{close[0]}?" if close else "; see epp --help"
    return SettingsError(f"unknown flag --{name}{hint}")


def _looks_like_flag(arg: str) -> bool:
    """`--known-flag...` or `-h`/`-v`: taking it as the previous flag's value would only hide a mistake."""
    if arg in ("-h", "-v") or arg.startswith(("-v=", "--help")):
        return True
    name = arg[2:].partition("=")[0] if arg.startswith("--") else ""
    return bool(name) and (name in _flags() or name in IGNORED_FLAGS or name == "v")


def _flag_value(name: str, inline: str | None, is_bool: bool, args: list[str], i: int) -> tuple[str, int]:
    """The value of flag `name` (inline, or the next argument) and the index after it."""
    if inline is None:
        nxt = args[i] if i < len(args) else None
        if is_bool:
            if nxt is not None and (nxt in _GO_TRUE or nxt in _GO_FALSE):
                return nxt, i + 1  # `--flag false`: safe, the daemon takes no positionals
            return "true", i
        if nxt is None or _looks_like_flag(nxt):
            raise SettingsError(f"flag --{name} needs a value (--{name}=VALUE or --{name} VALUE)")
        return nxt, i + 1
    if is_bool and inline not in _GO_TRUE and inline not in _GO_FALSE:
        raise SettingsError(f"flag --{name}: expected true or false, got {inline!r}")
    return inline, i


def _parse_flags(argv: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """Flag values by field (as strings, validated later by the model) and the ignored flags seen."""
    flags = _flags()
    known = [*flags, *IGNORED_FLAGS]
    values: dict[str, Any] = {}
    ignored: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg in ("-h", "--help", "-help"):
            raise HelpRequested(flag_help())
        if arg == "--":
            if i < len(args):
                raise SettingsError(f"unexpected argument {args[i]!r}: the daemon takes only flags")
            break
        if not arg.startswith("-") or arg == "-":
            raise SettingsError(f"unexpected argument {arg!r}: the daemon takes only flags (see epp --help)")
        name, inline = _split(arg)
        if arg.startswith("-v") and not arg.startswith("--") and len(arg) > 2 and arg[2:].isdigit():
            name, inline = "v", arg[2:]  # -v5
        if not arg.startswith("--") and name != "v":
            raise SettingsError(f"unknown flag {arg}: long flags take two dashes (--{name})")
        flag = flags.get(name)
        is_bool = flag.is_bool if flag else IGNORED_FLAGS.get(name)
        if flag is None and name not in IGNORED_FLAGS:
            raise _unknown(name, known)
        inline, i = _flag_value(name, inline, bool(is_bool), args, i)
        if flag is None:
            ignored.append(f"--{name}={inline}")
            if name == "zap-encoder":
                values.setdefault("_zap_encoder", inline)
            continue
        if flag.repeatable and flag.field in values:
            values[flag.field] = f"{values[flag.field]},{inline}"
        else:
            values[flag.field] = inline
    return values, ignored


def _describe_error(exc: ValidationError, from_flags: Mapping[str, Any]) -> str:
    lines = []
    for err in exc.errors(include_url=False):
        field = str(err["loc"][0]) if err["loc"] else ""
        where = f"--{_flag_name(field)}" if field in from_flags else f"{ENV_PREFIX}{field.upper()}"
        if field == "v":
            where = "-v" if field in from_flags else f"{ENV_PREFIX}V"
        ctx = err.get("ctx") or {}
        msg = str(ctx["error"]) if err["type"] == "value_error" and "error" in ctx else err["msg"]
        if msg.startswith("Input should be "):
            msg = "must be " + msg[len("Input should be ") :]
        value = err.get("input")
        shown = f" (got {value!r})" if isinstance(value, str | int | float) and repr(value) not in msg else ""
        lines.append(f"{where}: {msg}{shown}")
    return "; ".join(lines)


def parse_settings(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> EppSettings:
    """Settings from command-line flags and the environment (`environ`, default os.environ).

    Raises HelpRequested for `--help` and SettingsError (exit status 2) for anything wrong.
    """
    values, ignored = _parse_flags(argv)
    zap_encoder = values.pop("_zap_encoder", None)
    if zap_encoder is not None and "log_format" not in values:
        if zap_encoder in ("json", "console"):
            values["log_format"] = zap_encoder
        else:
            log.warning("--zap-encoder=%s is not json or console; ignored", zap_encoder)
    for flag in ignored:
        log.debug("ignoring upstream flag %s (it has no meaning in this EPP)", flag)
    env = os.environ if environ is None else environ
    prefixed = {k for k in env if k.upper().startswith(ENV_PREFIX)}
    known_env = {f"{ENV_PREFIX}{f.upper()}" for f in EppSettings.model_fields}
    for name in sorted(prefixed):
        if name.upper() not in known_env:
            log.warning("environment variable %s is not a setting of epp; ignored", name)
    token = _ENVIRON.set(env)
    try:
        settings = EppSettings(**values)
    except ValidationError as exc:
        raise SettingsError(_describe_error(exc, values)) from None
    finally:
        _ENVIRON.reset(token)
    for flag in _DEPRECATED_METRIC_FLAGS:
        if getattr(settings, flag.replace("-", "_")):
            log.warning(
                "--%s is deprecated (upstream rejects it): it overrides the metric name of the default "
                "engine mapping; configure engineConfigs on core-metrics-extractor instead",
                flag,
            )
    return settings


# ---- help ----------------------------------------------------------------------------------------


def _type_word(info: FieldInfo) -> str:
    annotation = info.annotation
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    for meta in info.metadata:
        if isinstance(meta, FieldInfo) and isinstance(meta.json_schema_extra, dict):
            extra = {**extra, **meta.json_schema_extra}
    if extra.get("flag_type") == "duration":
        return "duration"
    if _is_bool(info):
        return ""
    if get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if annotation is int:
        return "int"
    if isinstance(annotation, type) and issubclass(annotation, StrEnum):
        values = "|".join(m.value for m in annotation)
        return values if len(values) <= 16 else "string"
    if get_origin(annotation) in (tuple, dict):
        return "list"
    return "string"


def _default_text(field: str, info: FieldInfo) -> str:
    if field == "pool_namespace":
        return "$NAMESPACE or default"
    default = info.get_default(call_default_factory=True)
    if default in (None, "", (), {}):
        return "none"
    if _type_word(info) == "duration":
        return format_duration(float(default))
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, StrEnum):
        return default.value
    return str(default)


def flag_help() -> str:
    """What `epp --help` prints: usage, then every flag with its default."""
    lines = [
        "usage: epp [serve] [FLAGS]        run the Endpoint Picker daemon",
        "       epp validate [--effective] FILE...  check EndpointPickerConfig files",
        "       epp schema                 print the JSON schema of EndpointPickerConfig",
        "       epp sim | demo | bench ... simulator, local demo, benchmarks (see their --help)",
        "",
        f"Flags (each also from the environment as {ENV_PREFIX}<FLAG_IN_UPPER_SNAKE>, e.g. "
        f"{ENV_PREFIX}GRPC_PORT; a flag wins).",
        "Exactly one endpoint source: --static-endpoints, --pool-name or --endpoint-selector.",
        "",
    ]
    rows = []
    for field, info in EppSettings.model_fields.items():
        name = "-v, --v" if field == "v" else f"--{_flag_name(field)}"
        word = _type_word(info)
        left = f"  {name} {word}".rstrip()
        rows.append((left, f"{info.description or ''} (default {_default_text(field, info)})"))
    width = 42
    for left, right in rows:
        if len(left) < width:
            lines.append(f"{left.ljust(width)}{right}")
        else:
            lines += [left, f"{'':{width}}{right}"]
    lines += [
        "",
        "Accepted for compatibility with the upstream chart and ignored (--zap-encoder sets --log-format):",
    ]
    lines += textwrap.wrap(
        ", ".join(f"--{n}" for n in IGNORED_FLAGS), width=100, initial_indent="  ", subsequent_indent="  "
    )
    lines.append("")
    return "\n".join(lines)
