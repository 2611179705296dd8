"""Binding a grpc.aio server to a port, with the IPv6 wildcard falling back to IPv4."""

from __future__ import annotations

import grpc

__all__ = ["bind_port"]


def bind_port(server: grpc.aio.Server, host: str, port: int, creds: grpc.ServerCredentials | None) -> int:
    """Bind `host:port` (0 = any free port); returns the bound port or raises OSError."""
    hosts = [host] if host != "[::]" else ["[::]", "0.0.0.0"]
    for h in hosts:
        address = f"{h}:{port}"
        try:
            bound = server.add_secure_port(address, creds) if creds else server.add_insecure_port(address)
        except RuntimeError:
            bound = 0
        if bound:
            return int(bound)
    raise OSError(f"cannot listen on {host}:{port}")
