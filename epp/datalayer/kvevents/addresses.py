"""Where each endpoint publishes its KV events: an explicit map, an address template, or discovery.

In order of precedence:
1. `addresses`: endpoint key or `ip:port` → ZMQ address (e.g. `tcp://10.0.0.7:5557`);
2. `template`: e.g. `tcp://{ip}:5557`, with `{ip}` (brackets added for IPv6), `{port}` (the endpoint's
   serving port) and `{eventPort}` (the serving port + `port_offset`);
3. discovery (`discovery.py`, in the source's background loop): `GET http://<endpoint>/kv_event_sources`,
   parsed here (`parse_discovery`) as vllm-router reads it (`{"0": {"endpoint": "tcp://*:5557", "topic":
   ...}}` keyed by DP rank, or a list of such objects); a wildcard host (`*`, `0.0.0.0`, `::`) is
   replaced by the endpoint's IP.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from epp.framework.types import Endpoint

__all__ = ["parse_discovery", "resolve_address"]

_WILDCARDS = ("*", "0.0.0.0", "::", "[::]")


def _host(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else ip


def resolve_address(
    endpoint: Endpoint, addresses: Mapping[str, str], template: str, port_offset: int
) -> str | None:
    """The configured ZMQ address of `endpoint`'s KV events, or None (discover or go without)."""
    explicit = addresses.get(endpoint.key) or addresses.get(endpoint.address)
    if explicit:
        return explicit
    if not template:
        return None
    return template.format(ip=_host(endpoint.ip), port=endpoint.port, eventPort=endpoint.port + port_offset)


def parse_discovery(document: Any, endpoint: Endpoint) -> str | None:
    """The ZMQ address in a `/kv_event_sources` answer for `endpoint` (rank 0 first), or None."""
    entries: list[Any]
    if isinstance(document, Mapping):
        entries = [
            document[k] for k in sorted(document, key=lambda k: (str(k) != str(endpoint.rank), str(k)))
        ]
    elif isinstance(document, list):
        entries = list(document)
    else:
        return None
    for entry in entries:
        if not isinstance(entry, Mapping) or entry.get("enable_kv_cache_events") is False:
            continue
        address = entry.get("endpoint")
        if isinstance(address, str) and address:
            return _fill_wildcard(address, endpoint.ip)
    return None


def _fill_wildcard(address: str, ip: str) -> str:
    """`tcp://*:5557` → `tcp://<ip>:5557` (the publisher binds everywhere; we connect to the endpoint)."""
    scheme, sep, rest = address.partition("://")
    host, colon, port = rest.rpartition(":")
    if not sep or not colon or host not in _WILDCARDS:
        return address
    return f"{scheme}://{_host(ip)}:{port}"
