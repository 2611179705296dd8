"""Candidate endpoints for one request: the datastore's fit endpoints, narrowed by the proxy's subset hint.

Subset hint semantics (upstream `candidates.go`): namespace or key absent → every endpoint; present but an
empty list → none (the request gets a 503); otherwise keep endpoints whose IP matches an entry's IP part
(the port is ignored); non-string entries are ignored.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from epp.framework.types import Endpoint

__all__ = ["canonical_ip", "host_of", "subset_filter"]


def host_of(address: str) -> str:
    """The IP part of `ip`, `ip:port`, `[v6]:port`, `[v6]` or a bare IPv6 address."""
    a = address.strip()
    if a.startswith("["):
        end = a.find("]")
        return a[1:end] if end > 0 else a[1:]
    if a.count(":") == 1:
        return a.rsplit(":", 1)[0]
    return a  # plain IPv4, hostname or bare IPv6


def canonical_ip(host: str) -> str:
    """The canonical text of an IP address (so `fd00:0::1` equals `fd00::1`); other text unchanged."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


def subset_filter(endpoints: Sequence[Endpoint], hint: Sequence[object]) -> tuple[Endpoint, ...]:
    """Endpoints whose IP appears in the hint list."""
    ips = {canonical_ip(host_of(h)) for h in hint if isinstance(h, str)}
    if not ips:
        return ()
    return tuple(e for e in endpoints if e.ip in ips or canonical_ip(e.ip) in ips)
