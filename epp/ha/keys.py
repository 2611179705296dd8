"""The peer channel's keys: CURVE key pairs derived from the one secret every replica mounts.

Every replica reads the same secret (`--ha-secret-file`, a Kubernetes Secret in the chart) and derives
the same two key pairs from it: the server pair (each replica's listening socket) and the client pair
(each replica's connections to the others). A peer must prove it holds the client secret key (CURVE
handshake, checked by the ZAP handler against the derived client public key) and can only talk to a
server whose public key it derived: without the secret there is neither. The traffic is encrypted.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import zmq
from zmq.utils import z85

from epp.errors import SettingsError

__all__ = ["MIN_SECRET_BYTES", "PeerKeys", "derive_keys", "read_secret"]

#: A shorter secret is refused: the keys are only as strong as the secret they come from.
MIN_SECRET_BYTES = 16


@dataclass(frozen=True, slots=True)
class PeerKeys:
    """Z85-encoded CURVE keys (40 bytes each), as pyzmq's socket options take them."""

    server_public: bytes
    server_secret: bytes
    client_public: bytes
    client_secret: bytes


def _pair(secret: bytes, role: bytes) -> tuple[bytes, bytes]:
    raw = hashlib.blake2b(secret, digest_size=32, person=b"epp-ha-" + role).digest()
    private = z85.encode(raw)
    return zmq.curve_public(private), private


def derive_keys(secret: bytes) -> PeerKeys:
    """The key pairs of the peer channel for `secret` (surrounding whitespace ignored)."""
    secret = secret.strip()
    if len(secret) < MIN_SECRET_BYTES:
        raise SettingsError(
            f"the HA peer secret is {len(secret)} bytes; at least {MIN_SECRET_BYTES} are needed"
        )
    if not zmq.has("curve"):
        raise SettingsError("this build of ZeroMQ has no CURVE security: the peer channel cannot be secured")
    server_public, server_secret = _pair(secret, b"server")
    client_public, client_secret = _pair(secret, b"client")
    return PeerKeys(server_public, server_secret, client_public, client_secret)


def read_secret(path: str) -> bytes:
    """The secret in the file at `path` (SettingsError when it cannot be read)."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise SettingsError(f"--ha-secret-file {path}: {exc.strerror or exc}") from None
