"""The proxy logs in to upstreams that demand real authentication, over plaintext and TLS.

Uses the ``auth_cluster`` fixture: a throwaway cluster whose pg_hba.conf asks each role for
a different method (scram-sha-256, md5, password, trust; tls_user only over TLS).
"""

from __future__ import annotations

import socket
import ssl
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors

from support.pg import AuthCluster, PgServer, _generate_tls
from support.proxy import RunningProxy, run_proxy, write_config

pytestmark = pytest.mark.e2e

PASSWORD_ENV = "DBSENTRY_TEST_UPSTREAM_PW"


@pytest.fixture(scope="module")
def upstreams(
    pg_server: PgServer, auth_cluster: AuthCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningProxy]:
    directory = tmp_path_factory.mktemp("upstream-auth")
    pw = auth_cluster.passwords
    # A relative password_file resolves against the config file's directory.
    (directory / "scram.pw").write_text(pw["scram_user"] + "\n")
    (directory / "scram.pw").chmod(0o600)
    other_ca_dir = directory / "other-ca"
    other_ca_dir.mkdir()
    other_ca, _, _ = _generate_tls(other_ca_dir, ["localhost", "127.0.0.1"])
    assert auth_cluster.ca_path is not None

    def conn(user: str, **kw: Any) -> dict[str, Any]:
        return {
            "host": auth_cluster.host,
            "port": auth_cluster.port,
            "database": "postgres",
            "user": user,
            **kw,
        }

    connections = {
        "scram": conn("scram_user", password=pw["scram_user"]),
        "scram_env": conn("scram_user", password_env=PASSWORD_ENV),
        "scram_file": conn("scram_user", password_file="scram.pw"),
        "md5": conn("md5_user", password=pw["md5_user"]),
        "clear": conn("clear_user", password=pw["clear_user"]),
        "trust": conn("trust_user"),
        "scram_tls": conn("scram_user", password=pw["scram_user"], upstream_tls="require"),
        "tls_require": conn("tls_user", password=pw["tls_user"], upstream_tls="require"),
        "tls_verify_name": conn(
            "tls_user",
            host="localhost",
            password=pw["tls_user"],
            upstream_tls="verify-full",
            upstream_ca=str(auth_cluster.ca_path),
        ),
        "tls_verify_ip": conn(
            "tls_user",
            password=pw["tls_user"],
            upstream_tls="verify-full",
            upstream_ca=str(auth_cluster.ca_path),
        ),
        "md5_tls": conn(
            "md5_user",
            password=pw["md5_user"],
            upstream_tls="verify-full",
            upstream_ca=str(auth_cluster.ca_path),
        ),
        "tls_user_plain": conn("tls_user", password=pw["tls_user"]),
        "wrong_ca": conn(
            "tls_user",
            password=pw["tls_user"],
            upstream_tls="verify-full",
            upstream_ca=str(other_ca),
        ),
        "env_unset": conn("scram_user", password_env="DBSENTRY_TEST_NOT_SET"),
        "no_password": conn("scram_user"),
    }
    config = write_config(directory, pg_server, connections=connections)
    with run_proxy(config, env={PASSWORD_ENV: pw["scram_user"]}) as running:
        yield running


def connect(proxy: RunningProxy, name: str) -> psycopg.Connection[Any]:
    return psycopg.connect(proxy.dsn(dbname=name), autocommit=True)


@pytest.mark.parametrize(
    ("name", "role", "tls"),
    [
        ("scram", "scram_user", False),
        ("scram_env", "scram_user", False),
        ("scram_file", "scram_user", False),
        ("md5", "md5_user", False),
        ("clear", "clear_user", False),
        ("trust", "trust_user", False),
        ("scram_tls", "scram_user", True),
        ("tls_require", "tls_user", True),
        ("tls_verify_name", "tls_user", True),
        ("tls_verify_ip", "tls_user", True),
        ("md5_tls", "md5_user", True),
    ],
)
def test_query_through_each_upstream_login(
    upstreams: RunningProxy, name: str, role: str, tls: bool
) -> None:
    with connect(upstreams, name) as conn:
        row = conn.execute(
            "select current_user::text, ssl from pg_stat_ssl where pid = pg_backend_pid()"
        ).fetchone()
        assert row == (role, tls)
        assert conn.execute("select %s::int + 1", (41,)).fetchone() == (42,)


def test_cancel_through_tls_upstream(upstreams: RunningProxy) -> None:
    # The proxy's CancelRequest to the upstream has to go over TLS too (hostssl only).
    with connect(upstreams, "tls_verify_name") as conn:
        timer = threading.Timer(0.3, conn.cancel_safe)
        timer.start()
        try:
            with pytest.raises(errors.QueryCanceled):
                conn.execute("select pg_sleep(30)")
        finally:
            timer.join()
        assert conn.execute("select 1").fetchone() == (1,)


def refusal(proxy: RunningProxy, name: str) -> str:
    """The error a client gets at login, or at its first query once the proxy greets
    clients of this connection without an upstream (limits.lazy_upstream)."""
    with pytest.raises(psycopg.OperationalError) as err, connect(proxy, name) as conn:
        conn.execute("select 1")
    return str(err.value)


def test_verify_full_with_wrong_ca(upstreams: RunningProxy) -> None:
    message = refusal(upstreams, "wrong_ca")
    assert 'FATAL:  dbsentry: TLS to the upstream of connection "wrong_ca" failed:' in message
    assert "certificate verify failed" in message


def login_error(proxy: RunningProxy, database: str) -> dict[str, str]:
    """Log in over a raw TLS socket; the fields of the ErrorResponse that ends the login."""
    user = "alice@example.com"
    password = proxy.token(user, ("eng",)).encode()
    body = b"user\0" + user.encode() + b"\0database\0" + database.encode() + b"\0\0"
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((proxy.host, proxy.port), timeout=10) as plain:
        plain.sendall(struct.pack("!II", 8, 80877103))
        assert plain.recv(1) == b"S"
        with ctx.wrap_socket(plain) as sock:
            sock.sendall(struct.pack("!II", len(body) + 8, 196608) + body)
            data = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
                if data[:1] == b"R" and len(data) >= 9:
                    sock.sendall(b"p" + struct.pack("!I", len(password) + 5) + password + b"\0")
                    data = data[9:]
    assert data[:1] == b"E", data
    (length,) = struct.unpack("!I", data[1:5])
    fields = {}
    for part in data[5 : 1 + length].rstrip(b"\0").split(b"\0"):
        fields[chr(part[0])] = part[1:].decode()
    return fields


def test_verify_full_with_wrong_ca_is_08001(upstreams: RunningProxy) -> None:
    fields = login_error(upstreams, "wrong_ca")
    assert (fields["S"], fields["C"]) == ("FATAL", "08001")
    assert fields["M"].startswith('dbsentry: TLS to the upstream of connection "wrong_ca" failed: ')


def test_upstream_refusals_sqlstates(upstreams: RunningProxy) -> None:
    assert login_error(upstreams, "tls_user_plain")["C"] == "08004"
    assert login_error(upstreams, "env_unset")["C"] == "08004"
    assert login_error(upstreams, "no_password")["C"] == "08004"


def test_hba_rejects_plaintext_for_tls_user(upstreams: RunningProxy) -> None:
    message = refusal(upstreams, "tls_user_plain")
    assert (
        'FATAL:  dbsentry: the upstream of connection "tls_user_plain" rejected the proxy\'s credentials'
        in message
    )


def test_password_env_not_set(upstreams: RunningProxy, auth_cluster: AuthCluster) -> None:
    message = refusal(upstreams, "env_unset")
    assert (
        "FATAL:  dbsentry: connection 'env_unset' is misconfigured: environment variable DBSENTRY_TEST_NOT_SET (password_env) is not set"
        in message
    )


def test_upstream_demands_password_none_configured(upstreams: RunningProxy) -> None:
    message = refusal(upstreams, "no_password")
    assert "FATAL:  dbsentry: the upstream demands a password and the connection has none configured" in message


def test_password_file_is_reread(upstreams: RunningProxy, auth_cluster: AuthCluster) -> None:
    # Read at connect time, so a rotated password needs no restart.
    pw_file = Path(upstreams.config_path).parent / "scram.pw"
    original = pw_file.read_text()
    try:
        pw_file.write_text("not-the-password\n")
        assert "rejected the proxy's credentials" in refusal(upstreams, "scram_file")
    finally:
        pw_file.write_text(original)
    with connect(upstreams, "scram_file") as conn:
        assert conn.execute("select current_user::text").fetchone() == ("scram_user",)
    for secret in auth_cluster.passwords.values():
        assert secret not in upstreams.log_text()
