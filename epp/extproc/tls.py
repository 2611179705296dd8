"""TLS for the ext_proc port: a self-signed certificate made at start, or `tls.crt`/`tls.key` from a dir.

With `--cert-path`, the files are re-read when they change (checked before each new connection's
handshake, as upstream watches its cert dir with `--enable-cert-reload`), so a rotated Secret takes effect
without a restart; connections already open keep the certificate they were made with, and their streams
go on. `--enable-cert-reload=false` keeps the certificate read at start.
gRPC negotiates ALPN `h2` itself. The proxy side does not validate the certificate (upstream's setup).
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from epp.errors import SettingsError

__all__ = ["CERT_FILE", "KEY_FILE", "TlsOptions", "generate_self_signed", "server_credentials"]

log = logging.getLogger(__name__)

CERT_FILE = "tls.crt"
KEY_FILE = "tls.key"


@dataclass(frozen=True, slots=True)
class TlsOptions:
    """`cert_path` None: a self-signed certificate generated at start; `reload`: re-read changed files."""

    cert_path: str | None = None
    reload: bool = True


def generate_self_signed(
    common_name: str = "epp",
    valid_days: int = 3650,
    hosts: tuple[str, ...] = ("localhost", "127.0.0.1", "::1"),
) -> tuple[bytes, bytes]:
    """A fresh ECDSA P-256 key and a self-signed certificate for it: (cert PEM, key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    sans: list[x509.GeneralName] = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=valid_days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert_pem, key_pem


class _CertDirWatcher:
    """The gRPC certificate fetcher: a new configuration when tls.crt or tls.key changed on disk."""

    def __init__(self, directory: Path) -> None:
        self.cert = directory / CERT_FILE
        self.key = directory / KEY_FILE
        self._stamp = self._stat()

    def _stat(self) -> tuple[float, float, int, int]:
        c, k = os.stat(self.cert), os.stat(self.key)
        return (c.st_mtime, k.st_mtime, c.st_ino, k.st_ino)

    def load(self) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration([(self.key.read_bytes(), self.cert.read_bytes())])

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        try:
            stamp = self._stat()
            if stamp == self._stamp:
                return None
            config = self.load()
        except (OSError, ValueError) as exc:  # mid-rotation: keep serving the old certificate
            log.warning("TLS certificate reload failed, keeping the current one: %s", exc)
            return None
        self._stamp = stamp
        log.info("TLS certificate reloaded from %s", self.cert.parent)
        return config


def server_credentials(options: TlsOptions) -> grpc.ServerCredentials:
    """Server credentials from `options` (files must exist when a cert path is given)."""
    if options.cert_path is None:
        cert, key = generate_self_signed()
        return grpc.ssl_server_credentials([(key, cert)])
    directory = Path(options.cert_path)
    try:
        watcher = _CertDirWatcher(directory)
        initial = watcher.load()
    except OSError as exc:
        raise SettingsError(
            f"--cert-path {directory}: cannot read {CERT_FILE} and {KEY_FILE}: {exc}"
        ) from exc
    if not options.reload:
        return grpc.ssl_server_credentials([(watcher.key.read_bytes(), watcher.cert.read_bytes())])
    # grpc-stubs types the fetcher as never returning None, but None means "no change"
    return grpc.dynamic_ssl_server_credentials(initial, watcher)  # type: ignore[arg-type]
