"""The throwaway AuthCluster really demands passwords, and dbsentry.engines.postgres.wire.auth logs in to it.

The first half uses psycopg (libpq) directly to prove the fixture; the second half drives
the sans-IO md5 / SCRAM code over a raw socket with a minimal hand-written startup
exchange, including SCRAM-SHA-256-PLUS with tls-server-end-point binding over TLS.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import ssl
import struct
from dataclasses import dataclass, field

import psycopg
import pytest

from dbsentry.engines.postgres.wire.auth import (
    SCRAM_SHA_256,
    SCRAM_SHA_256_PLUS,
    AuthError,
    ScramClient,
    md5_password_message,
    parse_sasl_mechanisms,
    tls_server_end_point_hash,
)
from support.pg import AuthCluster

pytestmark = pytest.mark.e2e

PASSWORD_ROLES = ["scram_user", "md5_user", "clear_user"]


# ---------------------------------------------------------------------------------------
# With libpq


@pytest.mark.parametrize("role", PASSWORD_ROLES)
def test_right_password_connects(auth_cluster: AuthCluster, role: str) -> None:
    with psycopg.connect(auth_cluster.dsn(role, sslmode="disable")) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (role,)


@pytest.mark.parametrize("role", PASSWORD_ROLES)
def test_wrong_password_fails(auth_cluster: AuthCluster, role: str) -> None:
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(auth_cluster.dsn(role, password="wrong", sslmode="disable"))


@pytest.mark.parametrize("role", PASSWORD_ROLES)
def test_missing_password_fails(auth_cluster: AuthCluster, role: str) -> None:
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(auth_cluster.dsn(role, password="", sslmode="disable"))


def test_trust_user_needs_no_password(auth_cluster: AuthCluster) -> None:
    with psycopg.connect(auth_cluster.dsn("trust_user", sslmode="disable")) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("trust_user",)


def test_superuser_over_tcp_needs_password(auth_cluster: AuthCluster) -> None:
    with psycopg.connect(auth_cluster.dsn("postgres")) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("postgres",)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(auth_cluster.dsn("postgres", password="wrong"))


def test_hba_rules_as_loaded_by_the_server(auth_cluster: AuthCluster) -> None:
    with auth_cluster.admin_connect() as conn:
        rows = conn.execute(
            "SELECT type, user_name[1], auth_method, error FROM pg_hba_file_rules"
            " WHERE type LIKE 'host%' ORDER BY line_number"
        ).fetchall()
    methods = {(kind, user): method for kind, user, method, _ in rows}
    assert all(error is None for *_, error in rows)
    assert methods[("host", "scram_user")] == "scram-sha-256"
    assert methods[("host", "md5_user")] == "md5"
    assert methods[("host", "clear_user")] == "password"
    assert methods[("host", "trust_user")] == "trust"
    assert methods[("hostssl", "tls_user")] == "scram-sha-256"
    assert methods[("hostnossl", "tls_user")] == "reject"


def test_password_storage(auth_cluster: AuthCluster) -> None:
    with auth_cluster.admin_connect() as conn:
        stored = dict(
            conn.execute(
                "SELECT rolname, rolpassword FROM pg_authid WHERE rolname = ANY(%s)",
                (["scram_user", "md5_user", "trust_user"],),
            ).fetchall()
        )
    expected_md5 = hashlib.md5(
        (auth_cluster.passwords["md5_user"] + "md5_user").encode()
    ).hexdigest()
    assert stored["md5_user"] == "md5" + expected_md5
    assert stored["scram_user"].startswith("SCRAM-SHA-256$4096:")
    assert stored["trust_user"] is None


def test_tls_user_needs_tls(auth_cluster: AuthCluster) -> None:
    with pytest.raises(psycopg.OperationalError, match=r"no encryption|rejects connection"):
        psycopg.connect(auth_cluster.dsn("tls_user", sslmode="disable"))
    with psycopg.connect(auth_cluster.dsn("tls_user", sslmode="require")) as conn:
        row = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
        assert row == (True,)


def test_tls_verify_full_with_the_ca(auth_cluster: AuthCluster) -> None:
    assert auth_cluster.ca_path is not None
    dsn = auth_cluster.dsn("tls_user", sslmode="verify-full", sslrootcert=str(auth_cluster.ca_path))
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("tls_user",)
    with psycopg.connect(dsn.replace("127.0.0.1", "localhost")) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_libpq_channel_binding_require(auth_cluster: AuthCluster) -> None:
    dsn = auth_cluster.dsn("tls_user", sslmode="require", channel_binding="require")
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


# ---------------------------------------------------------------------------------------
# A minimal hand-written startup exchange over a raw socket

PROTOCOL_3_0 = 196608
SSL_REQUEST_CODE = 80877103
AUTH_OK, AUTH_CLEARTEXT, AUTH_MD5 = 0, 3, 5
AUTH_SASL, AUTH_SASL_CONTINUE, AUTH_SASL_FINAL = 10, 11, 12


class ServerError(Exception):
    def __init__(self, fields: dict[str, str]) -> None:
        super().__init__(f"{fields.get('C')}: {fields.get('M')}")
        self.fields = fields
        self.sqlstate = fields.get("C", "")


@dataclass
class LoginResult:
    auth_codes: list[int] = field(default_factory=list)
    mechanisms: list[str] = field(default_factory=list)
    mechanism: str | None = None
    tls: bool = False
    parameters: dict[str, str] = field(default_factory=dict)


class RawConnection:
    """Just enough of the frontend protocol to log in and leave."""

    def __init__(self, host: str, port: int, *, cafile: str | None = None) -> None:
        self.sock: socket.socket = socket.create_connection((host, port), timeout=15)
        self.binding: bytes | None = None
        if cafile is not None:
            self.sock.sendall(struct.pack("!ii", 8, SSL_REQUEST_CODE))
            answer = self._recv_exact(1)
            assert answer == b"S", f"server refused TLS: {answer!r}"
            context = ssl.create_default_context(cafile=cafile)
            self.sock = context.wrap_socket(self.sock, server_hostname=host)
            der = self.sock.getpeercert(binary_form=True)
            assert der is not None
            self.binding = tls_server_end_point_hash(der)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.send(b"X", b"")
        self.sock.close()

    def _recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("server closed the connection")
            buf += chunk
        return bytes(buf)

    def send(self, kind: bytes, payload: bytes) -> None:
        self.sock.sendall(kind + struct.pack("!i", len(payload) + 4) + payload)

    def startup(self, user: str, dbname: str) -> None:
        params = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in
                          (("user", user), ("database", dbname))) + b"\0"  # fmt: skip
        body = struct.pack("!i", PROTOCOL_3_0) + params
        self.sock.sendall(struct.pack("!i", len(body) + 4) + body)

    def read(self) -> tuple[bytes, bytes]:
        header = self._recv_exact(5)
        (length,) = struct.unpack("!i", header[1:])
        assert 4 <= length < 1 << 20
        payload = self._recv_exact(length - 4)
        if header[:1] == b"E":
            raise ServerError(
                {f[:1]: f[1:] for f in payload.decode(errors="replace").split("\0") if f}
            )
        return header[:1], payload

    def read_auth(self) -> tuple[int, bytes]:
        kind, payload = self.read()
        assert kind == b"R", f"expected Authentication, got {kind!r}"
        (code,) = struct.unpack("!i", payload[:4])
        return code, payload[4:]


def login(
    cluster: AuthCluster,
    user: str,
    password: str,
    *,
    tls: bool = False,
    use_binding: bool = True,
    hide_plus: bool = False,
    binding_override: bytes | None = None,
) -> LoginResult:
    """Log in with dbsentry.engines.postgres.wire.auth doing the cryptography; raise ServerError on refusal."""
    cafile = str(cluster.ca_path) if tls else None
    conn = RawConnection(cluster.host, cluster.port, cafile=cafile)
    result = LoginResult(tls=tls)
    try:
        conn.startup(user, "postgres")
        scram: ScramClient | None = None
        while True:
            code, body = conn.read_auth()
            result.auth_codes.append(code)
            if code == AUTH_OK:
                break
            if code == AUTH_CLEARTEXT:
                conn.send(b"p", password.encode() + b"\0")
            elif code == AUTH_MD5:
                conn.send(b"p", md5_password_message(user, password, body))
            elif code == AUTH_SASL:
                result.mechanisms = parse_sasl_mechanisms(body)
                offered = [m for m in result.mechanisms if not (hide_plus and m.endswith("-PLUS"))]
                binding = binding_override or (conn.binding if use_binding else None)
                scram = ScramClient(password, offered, binding)
                result.mechanism = scram.mechanism
                first = scram.client_first()
                conn.send(
                    b"p",
                    scram.mechanism.encode() + b"\0" + struct.pack("!i", len(first)) + first,
                )
            elif code == AUTH_SASL_CONTINUE:
                assert scram is not None
                conn.send(b"p", scram.client_final(body))
            elif code == AUTH_SASL_FINAL:
                assert scram is not None
                scram.verify_server_final(body)
            else:
                raise AssertionError(f"unexpected authentication request {code}")
        if scram is not None:
            assert scram.done, "AuthenticationOk before the server proved itself"
        while True:
            kind, payload = conn.read()
            if kind == b"S":
                key, value, _ = payload.split(b"\0")
                result.parameters[key.decode()] = value.decode()
            if kind == b"Z":
                return result
    finally:
        conn.close()


def test_raw_scram(auth_cluster: AuthCluster) -> None:
    result = login(auth_cluster, "scram_user", auth_cluster.passwords["scram_user"])
    assert result.auth_codes == [AUTH_SASL, AUTH_SASL_CONTINUE, AUTH_SASL_FINAL, AUTH_OK]
    assert result.mechanisms == [SCRAM_SHA_256]  # no PLUS without TLS
    assert result.mechanism == SCRAM_SHA_256
    assert result.parameters["session_authorization"] == "scram_user"


def test_raw_scram_wrong_password(auth_cluster: AuthCluster) -> None:
    with pytest.raises(ServerError) as info:
        login(auth_cluster, "scram_user", "wrong")
    assert info.value.sqlstate == "28P01"


def test_raw_md5(auth_cluster: AuthCluster) -> None:
    result = login(auth_cluster, "md5_user", auth_cluster.passwords["md5_user"])
    assert result.auth_codes == [AUTH_MD5, AUTH_OK]
    with pytest.raises(ServerError) as info:
        login(auth_cluster, "md5_user", "wrong")
    assert info.value.sqlstate == "28P01"


def test_raw_cleartext(auth_cluster: AuthCluster) -> None:
    result = login(auth_cluster, "clear_user", auth_cluster.passwords["clear_user"])
    assert result.auth_codes == [AUTH_CLEARTEXT, AUTH_OK]


def test_raw_scram_plus_over_tls(auth_cluster: AuthCluster) -> None:
    result = login(auth_cluster, "tls_user", auth_cluster.passwords["tls_user"], tls=True)
    assert result.mechanisms == [SCRAM_SHA_256_PLUS, SCRAM_SHA_256]
    assert result.mechanism == SCRAM_SHA_256_PLUS
    assert result.auth_codes[-1] == AUTH_OK


def test_raw_scram_over_tls_without_binding(auth_cluster: AuthCluster) -> None:
    # "n,,": we cannot bind; the server accepts that.
    result = login(
        auth_cluster, "tls_user", auth_cluster.passwords["tls_user"], tls=True, use_binding=False
    )
    assert result.mechanism == SCRAM_SHA_256
    assert result.auth_codes[-1] == AUTH_OK


def test_raw_scram_downgrade_is_refused_by_server(auth_cluster: AuthCluster) -> None:
    # "y,," over TLS ("we could bind but you can't") is what a client says when an attacker
    # stripped PLUS from the offer; the server knows it supports binding and refuses.
    with pytest.raises(ServerError) as info:
        login(auth_cluster, "tls_user", auth_cluster.passwords["tls_user"], tls=True, hide_plus=True)
    assert "channel binding" in info.value.fields.get("M", "")


def test_raw_scram_plus_wrong_binding_refused(auth_cluster: AuthCluster) -> None:
    # A man in the middle terminating TLS would present a different certificate.
    with pytest.raises(ServerError) as info:
        login(
            auth_cluster,
            "tls_user",
            auth_cluster.passwords["tls_user"],
            tls=True,
            binding_override=b"\0" * 32,
        )
    assert "channel binding" in info.value.fields.get("M", "")


def test_raw_tls_user_refused_without_tls(auth_cluster: AuthCluster) -> None:
    with pytest.raises(ServerError) as info:
        login(auth_cluster, "tls_user", auth_cluster.passwords["tls_user"])
    assert info.value.sqlstate == "28000"


def test_raw_saslprep_matches_server(auth_cluster: AuthCluster) -> None:
    # The server SASLpreps the password when it stores the verifier: U+2168 ROMAN NUMERAL
    # NINE becomes "IX" and the soft hyphen disappears.  We must agree, whichever form
    # the configuration uses.
    auth_cluster.create_role("unicode_user", "p\u00e4ss\u00adw\u00f6rd-\u2168")
    for password in ("p\u00e4ss\u00adw\u00f6rd-\u2168", "p\u00e4ssw\u00f6rd-IX"):
        result = login(auth_cluster, "unicode_user", password)
        assert result.auth_codes[-1] == AUTH_OK
    with pytest.raises(ServerError):
        login(auth_cluster, "unicode_user", "p\u00e4ssw\u00f6rd-XI")


def test_scram_client_rejects_a_server_that_does_not_know_the_password(
    auth_cluster: AuthCluster,
) -> None:
    # Replay a genuine exchange to a client holding another password (same nonce): the
    # real server's signature must not verify for it, so an impostor cannot pass either.
    conn = RawConnection(auth_cluster.host, auth_cluster.port)
    try:
        conn.startup("scram_user", "postgres")
        code, body = conn.read_auth()
        assert code == AUTH_SASL
        client = ScramClient(auth_cluster.passwords["scram_user"], parse_sasl_mechanisms(body))
        first = client.client_first()
        conn.send(b"p", client.mechanism.encode() + b"\0" + struct.pack("!i", len(first)) + first)
        code, server_first = conn.read_auth()
        assert code == AUTH_SASL_CONTINUE
        conn.send(b"p", client.client_final(server_first))
        code, server_final = conn.read_auth()
        assert code == AUTH_SASL_FINAL
        client.verify_server_final(server_final)
        assert conn.read_auth()[0] == AUTH_OK
    finally:
        conn.close()
    nonce = first.split(b"r=", 1)[1].decode()
    other = ScramClient("not-the-password", [SCRAM_SHA_256], nonce=nonce)
    other.client_first()
    other.client_final(server_first)
    with pytest.raises(AuthError, match="signature"):
        other.verify_server_final(server_final)
