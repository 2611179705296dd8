"""The static endpoint source: `--static-endpoints host:port,...`, no Kubernetes.

Entries are `ip:port`, `[ipv6]:port` or `hostname:port`. Hostnames are resolved once (IPv4 preferred when
a name has both families); an entry whose name does not resolve yet is logged and retried with backoff in
`run()`, never fatal. An endpoint's key is `ip:port` for an IP entry and `host:port` for a name, and its
engine label is `--model-server-type` when given, so the extractor reads the right metric names.
The datastore is marked synced after the first resolution attempt of every entry.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from epp.datalayer.datastore import Datastore
from epp.datalayer.metric_spec import ENGINE_LABEL_KEY
from epp.errors import SettingsError
from epp.framework.types import Endpoint, format_address

__all__ = ["StaticEndpointSource", "StaticTarget", "parse_static_endpoints"]

log = logging.getLogger(__name__)

_HOST_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\Z")


def _is_host_name(host: str) -> bool:
    """DNS rules the resolver enforces: 1-63 character labels, 253 characters in all."""
    return len(host) <= 253 and all(_HOST_LABEL.match(label) for label in host.split("."))


@dataclass(frozen=True, slots=True)
class StaticTarget:
    host: str
    port: int
    is_ip: bool

    @property
    def key(self) -> str:
        return format_address(self.host, self.port) if self.is_ip else f"{self.host}:{self.port}"


def parse_static_endpoints(value: str | Sequence[str]) -> list[StaticTarget]:
    """Parse the flag value (a comma list, or a list of entries); raises SettingsError on a bad entry."""
    items = value.split(",") if isinstance(value, str) else [p for v in value for p in v.split(",")]
    targets: list[StaticTarget] = []
    seen: set[str] = set()
    for raw in items:
        entry = raw.strip()
        if not entry:
            continue
        target = _parse_entry(entry)
        if target.key in seen:
            log.warning("--static-endpoints lists %s twice; using it once", target.key)
            continue
        seen.add(target.key)
        targets.append(target)
    if not targets:
        raise SettingsError("--static-endpoints: no endpoints given (expected host:port,host:port,...)")
    return targets


def _parse_entry(entry: str) -> StaticTarget:
    if entry.startswith("["):
        close = entry.find("]")
        if close < 0 or entry[close + 1 : close + 2] != ":":
            raise SettingsError(f"--static-endpoints: {entry!r} is not [ipv6]:port")
        host, port_text = entry[1:close], entry[close + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise SettingsError(f"--static-endpoints: {host!r} in {entry!r} is not an IPv6 address") from None
        return StaticTarget(host, _port(entry, port_text), True)
    host, sep, port_text = entry.rpartition(":")
    if not sep or not host:
        raise SettingsError(f"--static-endpoints: {entry!r} has no port (expected host:port)")
    if ":" in host:
        raise SettingsError(
            f"--static-endpoints: {entry!r}: write IPv6 addresses in brackets, as [{host}]:port"
        )
    try:
        ipaddress.IPv4Address(host)
        is_ip = True
    except ValueError:
        is_ip = False
        if not _is_host_name(host):
            raise SettingsError(
                f"--static-endpoints: {host!r} in {entry!r} is not a host name or IP"
            ) from None
    return StaticTarget(host, _port(entry, port_text), is_ip)


def _port(entry: str, text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise SettingsError(f"--static-endpoints: {entry!r}: port must be a number in 1..65535")
    return int(text)


class StaticEndpointSource:
    """Publishes a fixed endpoint list into the datastore."""

    def __init__(
        self,
        datastore: Datastore,
        targets: Sequence[StaticTarget],
        *,
        engine: str | None = None,
        engine_label_key: str = ENGINE_LABEL_KEY,
        endpoint_labels: Mapping[str, Mapping[str, str]] | None = None,
        resolve_timeout: float = 2.0,
        retry_initial: float = 1.0,
        retry_max: float = 30.0,
    ) -> None:
        self._ds = datastore
        self._targets = list(targets)
        self._labels = {engine_label_key: engine} if engine else {}
        self._endpoint_labels = dict(endpoint_labels or {})  # endpoint key -> extra labels
        self._resolve_timeout = resolve_timeout
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._resolved: dict[str, Endpoint] = {}
        self._started = False
        self._stopped = asyncio.Event()

    @property
    def unresolved(self) -> list[str]:
        return [t.key for t in self._targets if t.key not in self._resolved]

    async def start(self) -> None:
        """Resolve every entry once, publish the endpoints and mark the datastore synced."""
        if self._started:
            return
        self._started = True
        await self._resolve_pending()
        self._ds.mark_synced()

    async def run(self) -> None:
        """Retry names that did not resolve, with capped backoff, until all did or `stop` is called."""
        await self.start()
        delay = self._retry_initial
        while self.unresolved and not self._stopped.is_set():
            try:
                await asyncio.wait_for(self._stopped.wait(), delay)
                return
            except TimeoutError:
                pass
            await self._resolve_pending()
            delay = min(delay * 2, self._retry_max)
        await self._stopped.wait()

    async def stop(self) -> None:
        self._stopped.set()

    async def _resolve_pending(self) -> None:
        pending = [t for t in self._targets if t.key not in self._resolved]
        results = await asyncio.gather(*(self._resolve(t) for t in pending))
        added = False
        for target, ip in zip(pending, results, strict=True):
            if ip is None:
                continue
            self._resolved[target.key] = Endpoint(
                key=target.key,
                ip=ip,
                port=target.port,
                labels={**self._labels, **self._endpoint_labels.get(target.key, {})},
            )
            added = True
        if added:
            self._ds.set_endpoints(self._resolved[t.key] for t in self._targets if t.key in self._resolved)

    async def _resolve(self, target: StaticTarget) -> str | None:
        if target.is_ip:
            return target.host
        try:
            infos = await asyncio.wait_for(
                asyncio.get_running_loop().getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM),
                self._resolve_timeout,
            )
        except (OSError, TimeoutError, UnicodeError) as exc:  # UnicodeError: a name IDNA rejects
            log.warning("cannot resolve static endpoint %s yet (%s); will retry", target.key, exc)
            return None
        addresses = [(family, str(sockaddr[0])) for family, _, _, _, sockaddr in infos]
        v4 = [addr for family, addr in addresses if family == socket.AF_INET]
        ip = v4[0] if v4 else addresses[0][1]
        log.info("static endpoint %s resolved to %s", target.key, format_address(ip, target.port))
        return ip
