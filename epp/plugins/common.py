"""Small helpers shared by the built-in plugins."""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Mapping, Sequence

from epp.framework.handle import Handle
from epp.framework.types import Endpoint

__all__ = [
    "canonical_ip",
    "clamp01",
    "derive_rng",
    "endpoint_scores",
    "header_value",
    "same_address",
    "split_host_port",
]


def derive_rng(handle: Handle) -> random.Random:
    """A random source of the plugin's own, seeded once from the handle's (deterministic when it is)."""
    return random.Random(handle.rng.getrandbits(64))


def endpoint_scores(endpoints: Sequence[Endpoint], scores: Mapping[str, float] | None) -> dict[str, float]:
    """Each endpoint's score from a producer's per-key scores (0 for endpoints it did not score)."""
    if not scores:
        return dict.fromkeys((e.key for e in endpoints), 0.0)
    get = scores.get
    return {e.key: get(e.key, 0.0) for e in endpoints}


def clamp01(value: float) -> float:
    """Clamp to [0, 1]; NaN becomes 0."""
    return 1.0 if value > 1.0 else value if value > 0.0 else 0.0


def split_host_port(text: str) -> tuple[str, int | None]:
    """Split `ip`, `ip:port`, `[v6]`, `[v6]:port` or a bare IPv6 address; the host loses its brackets."""
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return text, None
        host, rest = text[1:end], text[end + 1 :]
        return host, _port(rest[1:]) if rest.startswith(":") else None
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, _port(port)
    return text, None


def _port(text: str) -> int | None:
    return int(text) if text.isdigit() and len(text) <= 5 else None


def canonical_ip(host: str) -> str:
    """The canonical text of an IP address (`fd00:0::1` → `fd00::1`); other text unchanged."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


def same_address(address: str, endpoint: Endpoint) -> bool:
    """Whether an `ip:port` text (as a proxy reports it) names `endpoint`."""
    if address == endpoint.address:
        return True
    host, port = split_host_port(address)
    return port == endpoint.port and canonical_ip(host) == canonical_ip(endpoint.ip)


def header_value(headers: Mapping[str, str], name: str) -> str | None:
    """A header by lower-case name, tolerating other spellings of the name."""
    value = headers.get(name)
    if value is None:
        for k, v in headers.items():
            if k.lower() == name:
                return v
    return value
