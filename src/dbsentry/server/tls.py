"""TLS contexts: towards clients (a self-signed certificate is made when none is given)
and towards upstreams (disable / require / verify-full)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from dbsentry.config import Config, ConnectionConfig


def ensure_certificate(config: Config) -> tuple[Path, Path]:
    """The configured certificate and key, or a self-signed pair in the state directory."""
    if config.tls.cert is not None and config.tls.key is not None:
        return config.tls.cert, config.tls.key
    tls_dir = config.state_dir / "tls"
    cert_path, key_path = tls_dir / "server.crt", tls_dir / "server.key"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    tls_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_self_signed(cert_path, key_path, "dbsentry", days=825)
    return cert_path, key_path


def write_self_signed(cert_path: Path, key_path: Path, common_name: str, *, days: int) -> None:
    """A self-signed EC P-256 certificate for localhost and 127.0.0.1; the key mode 0600."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def server_context(config: Config) -> ssl.SSLContext:
    cert, key = ensure_certificate(config)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx


def upstream_context(conn: ConnectionConfig) -> ssl.SSLContext | None:
    if conn.upstream_tls == "disable":
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if conn.upstream_tls == "verify-full":
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
        if conn.upstream_ca is not None:
            ctx.load_verify_locations(cafile=str(conn.upstream_ca))
        else:
            ctx.load_default_certs()
    else:
        # "require": encrypted, not authenticated, like libpq's sslmode=require.
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx
