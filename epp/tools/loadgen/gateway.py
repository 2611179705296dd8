"""The gateway under test: the EPP daemon on free loopback ports, and Envoy in front of it.

The EPP runs from the same flags a user would pass (`--static-endpoints`, loopback binding), either
in-process (`EppServer`: the real `epp.app.App` on the current event loop, ports chosen by the
kernel) or as its own process (`EppProcess`: `python -m epp ...`, as it is deployed, so its CPU time
is not shared with the load client; free ports are picked first, and a start that loses a port race
is retried). Both wait until readiness is SERVING (endpoints synced and scraped once). `Gateway` adds
a real Envoy (`epp.tools.proxy`) whose ext_proc filter talks to that EPP, TLS without verification by
default (the daemon's default, upstream's setup), with the Envoy config we ship (`EnvoyConfig()`: the
response body ON_DEMAND plus the observer filter) unless `body_mode` / `observer` say otherwise
(`body_mode="FULL_DUPLEX_STREAMED", observer=False` is upstream's setup, every token through the EPP).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypedDict, Unpack

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from epp.app import App
from epp.settings import parse_settings
from epp.tools.procs import descendants
from epp.tools.proxy import EnvoyConfig, EnvoyProcess
from epp.tools.proxy.envoy_config import BodyMode

__all__ = [
    "ANY_PORTS",
    "EppMode",
    "EppOptions",
    "EppProcess",
    "EppServer",
    "Gateway",
    "ReplicatedGateway",
    "epp_flags",
]

EppMode = Literal["inprocess", "subprocess"]

log = logging.getLogger(__name__)


#: The port flags of an in-process daemon: every port picked by the OS (`App` has them once started).
ANY_PORTS = ("--grpc-port=0", "--grpc-health-port=0", "--metrics-port=0")


def epp_flags(
    endpoints: Sequence[str],
    *,
    config_file: str | Path | None = None,
    config_text: str | None = None,
    secure_serving: bool = True,
    watch_config_file: bool = False,
) -> list[str]:
    """The daemon flags of a loopback EPP over static endpoints (without ports: `ANY_PORTS` for an
    in-process one)."""
    args = [
        "--static-endpoints",
        ",".join(endpoints),
        "--bind-address",
        "127.0.0.1",
        f"--secure-serving={'true' if secure_serving else 'false'}",
        f"--watch-config-file={'true' if watch_config_file else 'false'}",
    ]
    if config_file is not None:
        args += ["--config-file", str(config_file)]
    if config_text is not None:
        args += ["--config-text", config_text]
    return args


class EppOptions(TypedDict, total=False):
    """How to run the daemon, the same for `EppServer` and `EppProcess` (the defaults as in `epp_flags`)."""

    config_file: str | Path | None
    config_text: str | None
    secure_serving: bool
    #: more daemon flags, after those of `epp_flags`
    extra_args: Sequence[str]


class _Epp:
    """What `EppServer` and `EppProcess` share: the daemon's flags (`args`) and whether it serves TLS."""

    def __init__(self, endpoints: Sequence[str], **options: Unpack[EppOptions]) -> None:
        unknown = sorted(set(options) - EppOptions.__optional_keys__)
        if unknown:
            raise TypeError(f"{type(self).__name__}() got unexpected keyword arguments {unknown}")
        self.secure_serving = options.get("secure_serving", True)
        flags = epp_flags(
            endpoints,
            config_file=options.get("config_file"),
            config_text=options.get("config_text"),
            secure_serving=self.secure_serving,
        )
        self.args = [*flags, *options.get("extra_args", ())]


class EppServer(_Epp):
    """One in-process EPP. Envoy reaches it on `127.0.0.1:grpc_port`."""

    def __init__(self, endpoints: Sequence[str], **options: Unpack[EppOptions]) -> None:
        super().__init__(endpoints, **options)
        settings = parse_settings(self.args, environ={})
        # The flags reject port 0; free ports are what a fleet of test gateways needs.
        self.settings = settings.model_copy(update={"grpc_port": 0, "grpc_health_port": 0, "metrics_port": 0})
        self.app: App | None = None

    @property
    def grpc_port(self) -> int:
        return self.app.grpc_port if self.app is not None else 0

    @property
    def metrics_url(self) -> str:
        port = self.app.metrics_port if self.app is not None else 0
        return f"http://127.0.0.1:{port}/metrics"

    async def start(self, timeout: float = 20.0) -> EppServer:
        """Start the daemon and wait until it is ready; raises TimeoutError (after stopping it) if not."""
        app = self.app = App(self.settings)
        try:
            await app.start()
            async with asyncio.timeout(timeout):
                while True:
                    changed = app.readiness.next_change()
                    if app.readiness.ready:
                        break
                    if app.stopping.is_set():
                        raise RuntimeError("the EPP stopped during start-up (see its log)")
                    waiter = asyncio.create_task(changed.wait())
                    stopping = asyncio.create_task(app.stopping.wait())
                    try:
                        await asyncio.wait({waiter, stopping}, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        waiter.cancel()
                        stopping.cancel()
        except BaseException:
            await self.stop()
            raise
        return self

    async def stop(self) -> None:
        app, self.app = self.app, None
        if app is not None:
            await app.stop()

    async def __aenter__(self) -> EppServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def _free_ports(count: int) -> list[int]:
    """`count` distinct ports that were free on 127.0.0.1 a moment ago."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


class _PortTaken(Exception):
    pass


class EppProcess(_Epp):
    """The EPP as its own process (`python -m epp`), stopped by its PID. Same surface as `EppServer`."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        python: str = sys.executable,
        log_path: str | Path | None = None,
        ready_service: str = "readiness",
        **options: Unpack[EppOptions],
    ) -> None:
        super().__init__(endpoints, **options)
        #: the health service whose SERVING means started ("liveness" for a leader-election standby)
        self.ready_service = ready_service
        self.python = python
        self.log_path = Path(log_path) if log_path else Path(tempfile.mkdtemp(prefix="epp-")) / "epp.log"
        self.process: asyncio.subprocess.Process | None = None
        self.grpc_port = 0
        self.health_port = 0
        self.metrics_port = 0

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    async def start(self, timeout: float = 30.0, attempts: int = 3) -> EppProcess:
        """Start the daemon and wait for readiness; a start that lost a port race is retried."""
        try:
            async with asyncio.timeout(timeout):
                for attempt in range(attempts):
                    try:
                        await self._start_once()
                        return self
                    except _PortTaken:
                        await self.stop()
                        if attempt == attempts - 1:
                            raise RuntimeError(
                                f"the EPP could not bind its ports:\n{self.log_text()[-2000:]}"
                            ) from None
        except TimeoutError:
            pid = self.pid
            await self.stop()
            raise TimeoutError(
                f"the EPP (pid {pid}) did not report ready on its health port within {timeout:g}s; "
                f"its log ends:\n{self.log_text()[-2000:]}"
            ) from None
        except BaseException:
            await self.stop()
            raise
        return self

    async def crash(self) -> None:
        """SIGKILL the daemon and its worker processes at once, as a container's crash does (killed alone,
        the pod process's workers would get SIGTERM and drain), waiting until the daemon is gone."""
        proc = self.process
        if proc is None or proc.returncode is not None:
            return
        for pid in descendants(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        await proc.wait()

    async def restart(self, timeout: float = 30.0) -> None:
        """Start again on the same ports (after `crash` or `stop`) and wait for readiness."""
        if self.process is not None and self.process.returncode is None:
            raise RuntimeError("the EPP is still running")
        try:
            async with asyncio.timeout(timeout):
                await self._start_once(same_ports=True)
        except TimeoutError:
            await self.stop()
            raise TimeoutError(f"the EPP did not get ready again:\n{self.log_text()[-2000:]}") from None

    async def _start_once(self, same_ports: bool = False) -> None:
        if not same_ports:
            self.grpc_port, self.health_port, self.metrics_port = _free_ports(3)
        ports = ["--grpc-port", str(self.grpc_port), "--grpc-health-port", str(self.health_port)]
        ports += ["--metrics-port", str(self.metrics_port)]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                self.python,
                "-m",
                "epp",
                *self.args,
                *ports,
                stdout=log,
                stderr=log,
                stdin=asyncio.subprocess.DEVNULL,
            )
        exited = asyncio.create_task(self.process.wait())
        ready = asyncio.create_task(self._watch_ready())
        try:
            await asyncio.wait({exited, ready}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
            exited.cancel()
            await asyncio.gather(ready, exited, return_exceptions=True)
        if ready.done() and not ready.cancelled() and ready.exception() is None:
            return
        if self.process.returncode is None:
            await self.process.wait()
        text = self.log_text()
        if "cannot listen" in text or "address already in use" in text.lower():
            raise _PortTaken
        raise RuntimeError(f"the EPP exited with {self.process.returncode}:\n{text[-2000:]}")

    async def _watch_ready(self) -> None:
        """Until the health service says readiness is SERVING (waits for the server to come up)."""
        request = health_pb2.HealthCheckRequest(service=self.ready_service)
        # Retry connecting every 50-200 ms while the daemon starts (gRPC's default backoff grows to
        # seconds after a few refused attempts).
        options = [
            ("grpc.initial_reconnect_backoff_ms", 50),
            ("grpc.min_reconnect_backoff_ms", 50),
            ("grpc.max_reconnect_backoff_ms", 200),
        ]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.health_port}", options=options) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            async for reply in stub.Watch(request, wait_for_ready=True):
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return

    async def is_ready(self, timeout: float = 0.5) -> bool:
        """Whether readiness is SERVING now (one health check)."""
        request = health_pb2.HealthCheckRequest(service="readiness")
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{self.health_port}") as channel:
                reply = await health_pb2_grpc.HealthStub(channel).Check(request, timeout=timeout)
        except grpc.aio.AioRpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float = 8.0) -> None:
        """SIGTERM (the daemon drains), SIGKILL after `grace`; only this process, by its PID."""
        proc, self.process = self.process, None
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    async def __aenter__(self) -> EppProcess:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class _Front:
    """The Envoy in front of one or more EPPs: its options, starting it, stopping it before the EPPs."""

    def __init__(
        self,
        workdir: str | Path | None,
        route_timeout: float,
        body_mode: BodyMode,
        observer: bool,
        envoy_concurrency: int,
    ) -> None:
        self.workdir = workdir
        self.route_timeout = route_timeout
        self.body_mode: BodyMode = body_mode
        self.observer = observer
        self.envoy_concurrency = envoy_concurrency
        self.envoy: EnvoyProcess | None = None

    @property
    def url(self) -> str:
        if self.envoy is None:
            raise RuntimeError("the gateway is not started")
        return self.envoy.url

    async def _start_envoy(self, **ext_proc: Any) -> None:
        config = EnvoyConfig(
            route_timeout=self.route_timeout, body_mode=self.body_mode, observer=self.observer, **ext_proc
        )
        self.envoy = EnvoyProcess(config, self.workdir, concurrency=self.envoy_concurrency)
        await self.envoy.start()

    async def _stop(self, *epps: EppServer | EppProcess) -> None:
        envoy, self.envoy = self.envoy, None
        try:
            if envoy is not None:
                await envoy.stop()
        finally:
            await asyncio.gather(*(e.stop() for e in epps), return_exceptions=len(epps) > 1)


class Gateway(_Front):
    """EPP + Envoy: requests to `url` are scheduled by the EPP and served by the picked endpoint."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        config_file: str | Path | None = None,
        config_text: str | None = None,
        secure_serving: bool = True,
        workdir: str | Path | None = None,
        extra_args: Sequence[str] = (),
        route_timeout: float = 60.0,
        epp_mode: EppMode = "inprocess",
        body_mode: BodyMode = "ON_DEMAND",
        observer: bool = True,
        envoy_concurrency: int = 1,
        ext_proc_max_streams: int | None = None,
        failure_mode_allow: bool = False,
    ) -> None:
        options: EppOptions = {
            "config_file": config_file,
            "config_text": config_text,
            "secure_serving": secure_serving,
            "extra_args": extra_args,
        }
        self.epp: EppServer | EppProcess
        if epp_mode == "subprocess":
            log_path = Path(workdir) / "epp.log" if workdir is not None else None
            self.epp = EppProcess(endpoints, log_path=log_path, **options)
        elif epp_mode == "inprocess":
            self.epp = EppServer(endpoints, **options)
        else:
            raise ValueError(f"epp_mode must be 'inprocess' or 'subprocess', got {epp_mode!r}")
        super().__init__(workdir, route_timeout, body_mode, observer, envoy_concurrency)
        self.ext_proc_max_streams = ext_proc_max_streams
        self.endpoints = list(endpoints)
        self.failure_mode_allow = failure_mode_allow

    @property
    def envoy_pid(self) -> int | None:
        proc = self.envoy.proc if self.envoy is not None else None
        return proc.pid if proc is not None else None

    @property
    def epp_pid(self) -> int | None:
        """The EPP daemon's process (None when it runs in this process)."""
        return self.epp.pid if isinstance(self.epp, EppProcess) else None

    @property
    def processes(self) -> dict[str, int]:
        """The running child processes by role: `envoy`, and `epp` when the EPP is a subprocess."""
        out = {"envoy": self.envoy_pid, "epp": self.epp_pid}
        return {role: pid for role, pid in out.items() if pid is not None}

    @property
    def pids(self) -> list[int]:
        """Child processes this gateway started (Envoy, and the EPP when it runs as a subprocess)."""
        return list(self.processes.values())

    async def start(self) -> Gateway:
        try:
            await self.epp.start()
            await self._start_envoy(
                ext_proc_port=self.epp.grpc_port,
                ext_proc_tls=self.epp.secure_serving,
                ext_proc_max_streams=self.ext_proc_max_streams,
                failure_mode_allow=self.failure_mode_allow,
                static_endpoints=self.endpoints if self.failure_mode_allow else (),
            )
        except BaseException:
            await self.stop()
            raise
        return self

    async def stop(self) -> None:
        await self._stop(self.epp)

    async def __aenter__(self) -> Gateway:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class ReplicatedGateway(_Front):
    """N EPP replicas (own processes) behind one Envoy: `--ha-mode active-active` sharing their routing
    state over the peer link (CURVE, a secret file in `workdir`), or, with `sync=False`, N independent
    daemons (no HA flags). Envoy keeps both ext_proc streams of a request on one replica (by request id)
    and spreads requests evenly (`EnvoyConfig.ext_proc_replicas`)."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        replicas: int,
        sync: bool = True,
        config_file: str | Path | None = None,
        secure_serving: bool = True,
        workdir: str | Path | None = None,
        extra_args: Sequence[str] = (),
        route_timeout: float = 60.0,
        body_mode: BodyMode = "ON_DEMAND",
        observer: bool = True,
        envoy_concurrency: int = 1,
    ) -> None:
        if replicas < 2:
            raise ValueError(f"a replicated gateway needs 2 or more replicas, got {replicas}")
        directory = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="epp-rg-"))
        super().__init__(directory, route_timeout, body_mode, observer, envoy_concurrency)
        self.directory = directory
        self.secure_serving = secure_serving
        ports = _free_ports(replicas) if sync else []
        secret = directory / "ha-secret"
        self.replicas: list[EppProcess] = []
        for i in range(replicas):
            args = list(extra_args)
            if sync:
                peers = ",".join(f"127.0.0.1:{p}" for j, p in enumerate(ports) if j != i)
                args += ["--ha-mode", "active-active", "--ha-port", str(ports[i]), "--peers", peers]
                args += ["--ha-secret-file", str(secret), "--ha-bootstrap-timeout", "1s"]
            self.replicas.append(
                EppProcess(
                    endpoints,
                    config_file=config_file,
                    secure_serving=secure_serving,
                    extra_args=args,
                    log_path=directory / f"epp-{i}.log",
                )
            )
        self._secret = secret if sync else None

    @property
    def epp(self) -> EppProcess:
        """The first replica (its `/metrics` for reports that read one EPP)."""
        return self.replicas[0]

    @property
    def processes(self) -> dict[str, int]:
        out = {f"epp-{i}": r.pid for i, r in enumerate(self.replicas)}
        if self.envoy is not None and self.envoy.proc is not None:
            out["envoy"] = self.envoy.proc.pid
        return {role: pid for role, pid in out.items() if pid is not None}

    @property
    def pids(self) -> list[int]:
        return list(self.processes.values())

    async def start(self) -> ReplicatedGateway:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            if self._secret is not None:
                self._secret.write_text(secrets.token_hex(24) + "\n")
                self._secret.chmod(0o600)
            await asyncio.gather(*(r.start() for r in self.replicas))
            first, *rest = self.replicas
            await self._start_envoy(
                ext_proc_port=first.grpc_port,
                ext_proc_health_port=first.health_port,
                ext_proc_replicas=[("127.0.0.1", r.grpc_port, r.health_port) for r in rest],
                ext_proc_tls=self.secure_serving,
            )
        except BaseException:
            await self.stop()
            raise
        return self

    async def stop(self) -> None:
        await self._stop(*self.replicas)
