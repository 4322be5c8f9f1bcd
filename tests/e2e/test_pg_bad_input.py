"""Hostile and broken clients, bad credentials and broken upstreams.

Each case checks exactly what the client is told (severity, SQLSTATE, message) and that the
proxy goes on serving: a session opened before the bad one still answers, and new logins work.
Most cases talk to the proxy over a raw socket, to control every byte.
"""

from __future__ import annotations

import base64
import secrets
import socket
import ssl
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from support.pg import AuthCluster, PgServer, free_port
from support.proxy import RunningProxy, dbsentry_cli, run_proxy, write_config

pytestmark = pytest.mark.e2e

SSL_REQUEST = struct.pack("!II", 8, 80877103)
GSSENC_REQUEST = struct.pack("!II", 8, 80877104)
CANCEL_CODE = 80877102
ALICE = "alice@example.com"


# ---------------------------------------------------------------------------------------
# A minimal hand-driven PostgreSQL client


def startup_packet(**params: str) -> bytes:
    body = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items()) + b"\0"
    return struct.pack("!II", len(body) + 8, 196608) + body


def typed(t: bytes, body: bytes) -> bytes:
    return t + struct.pack("!I", len(body) + 4) + body


class Closed(Exception):
    """The server closed the connection."""


class RawClient:
    def __init__(self, host: str, port: int, timeout: float = 5) -> None:
        self.sock: socket.socket = socket.create_connection((host, port), timeout=timeout)
        self._buf = b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        try:
            chunk = self.sock.recv(65536)
        except (ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError) as err:
            raise Closed(str(err)) from None
        if not chunk:
            raise Closed("EOF")
        self._buf += chunk

    def read_exact(self, n: int) -> bytes:
        while len(self._buf) < n:
            self._fill()
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def read_message(self) -> tuple[bytes, bytes]:
        head = self.read_exact(5)
        (length,) = struct.unpack("!I", head[1:])
        return head[:1], self.read_exact(length - 4)

    def start_tls(self) -> None:
        self.send(SSL_REQUEST)
        assert self.read_exact(1) == b"S"
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        self.sock = ctx.wrap_socket(self.sock)

    def login(self, user: str, password: str, database: str = "prod", **params: str) -> None:
        """Start up and authenticate; returns at the first ReadyForQuery (raises on an error)."""
        self.send(startup_packet(user=user, database=database, **params))
        t, body = self.read_message()
        assert (t, body) == (b"R", struct.pack("!i", 3)), (t, body)
        self.send(typed(b"p", password.encode() + b"\0"))
        while True:
            t, body = self.read_message()
            if t == b"E":
                raise AssertionError(f"login failed: {error_fields(body)}")
            if t == b"Z":
                return

    def query(self, sql: str) -> list[tuple[bytes, bytes]]:
        self.send(typed(b"Q", sql.encode() + b"\0"))
        out = []
        while True:
            t, body = self.read_message()
            out.append((t, body))
            if t == b"Z":
                return out

    def expect_closed(self, timeout: float = 5) -> None:
        """The server closes the connection without sending anything more."""
        self.sock.settimeout(timeout)
        with pytest.raises(Closed):
            t, body = self.read_message()
            raise AssertionError(f"unexpected message {t!r}: {body!r}")

    def expect_fatal(self) -> dict[str, str]:
        """The next message is an ErrorResponse and then the server closes the connection."""
        t, body = self.read_message()
        assert t == b"E", (t, body)
        fields = error_fields(body)
        self.expect_closed()
        return fields


def error_fields(body: bytes) -> dict[str, str]:
    out = {}
    for part in body.rstrip(b"\0").split(b"\0"):
        if part:
            out[chr(part[0])] = part[1:].decode()
    return out


def fatal(fields: dict[str, str]) -> tuple[str, str, str]:
    return fields["S"], fields["C"], fields["M"]


def tls_client(proxy: RunningProxy) -> RawClient:
    client = RawClient(proxy.host, proxy.port)
    client.start_tls()
    return client


def assert_serving(proxy: RunningProxy, before: psycopg.Connection[Any]) -> None:
    """The session opened before still answers, and a new login works."""
    assert before.execute("select 'still here'").fetchone() == ("still here",)
    with psycopg.connect(proxy.dsn()) as again:
        assert again.execute("select 1").fetchone() == (1,)
    assert proxy.alive()


def active_queries(server: PgServer, marker: str) -> int:
    with psycopg.connect(server.dsn()) as direct:
        row = direct.execute(
            "select count(*) from pg_stat_activity where state = 'active' and query like %s and pid <> pg_backend_pid()",
            (f"%{marker}%",),
        ).fetchone()
    assert row is not None
    return int(row[0])


def wait_for(predicate: Any, timeout: float, what: str) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - start


# ---------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def lenient(
    pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningProxy]:
    """A proxy whose failed-login limit is out of reach, so the many refusals here do not
    lock 127.0.0.1 out (the shared ``proxy`` would be blocked for a minute), plus a
    connection whose upstream port has nothing listening."""
    directory = tmp_path_factory.mktemp("lenient")
    config = write_config(
        directory,
        pg_server,
        extra={"identity": {"max_failures": 10_000, "max_failures_per_address": 10_000}},
        connections={
            "down": {
                "host": "127.0.0.1",
                "port": free_port(),
                "database": "test",
                "user": "postgres",
                "connect_timeout_seconds": 3,
            }
        },
    )
    with run_proxy(config) as running:
        yield running


@pytest.fixture
def before(lenient: RunningProxy) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(lenient.dsn(), autocommit=True) as conn:
        yield conn


def _token_id(token: str) -> str:
    return token.split("_")[1]


def _random_secret() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()


# ---------------------------------------------------------------------------------------
# Bad credentials: all look the same to the client


def _bad_password(kind: str, proxy: RunningProxy) -> str:
    if kind == "wrong":
        return "not-a-token"
    if kind == "wrong-prefix":
        return "dbs_garbage"
    if kind == "expired":
        token = proxy.token(ALICE, ("eng",), ttl="1s")
        time.sleep(1.2)
        return token
    if kind == "revoked":
        token = proxy.token(ALICE, ("eng",), ttl="5m")
        dbsentry_cli("token", "revoke", _token_id(token), config=proxy.config_path)
        return token
    if kind == "forged":
        # The id of a real, active token of this identity, with a secret the attacker made up.
        real = proxy.token(ALICE, ("eng",))
        return f"dbs_{_token_id(real)}_{_random_secret()}"
    if kind == "other-identity":
        return proxy.token("bob@example.com", ("eng",))
    if kind == "empty":
        return ""
    raise AssertionError(kind)


BAD_KINDS = ["wrong", "wrong-prefix", "expired", "revoked", "forged", "other-identity", "empty"]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_token_is_refused_without_saying_why(
    lenient: RunningProxy, before: psycopg.Connection[Any], kind: str
) -> None:
    password = _bad_password(kind, lenient)
    with tls_client(lenient) as client:
        client.send(startup_packet(user=ALICE, database="prod"))
        assert client.read_message() == (b"R", struct.pack("!i", 3))
        client.send(typed(b"p", password.encode() + b"\0"))
        fields = client.expect_fatal()
    assert fatal(fields) == ("FATAL", "28P01", f'password authentication failed for user "{ALICE}"')
    assert set(fields) <= {"S", "V", "C", "M"}  # no detail or hint that tells the checks apart
    assert_serving(lenient, before)


@pytest.mark.parametrize("kind", ["wrong", "revoked", "other-identity"])
def test_bad_token_with_libpq(lenient: RunningProxy, kind: str) -> None:
    password = _bad_password(kind, lenient)
    with pytest.raises(psycopg.OperationalError) as err:
        psycopg.connect(lenient.dsn(token=password))
    assert str(err.value).endswith(f'FATAL:  password authentication failed for user "{ALICE}"')


def test_repeated_failures_lock_out_the_address(fresh_proxy: RunningProxy) -> None:
    good = fresh_proxy.token(ALICE, ("eng",))
    with psycopg.connect(fresh_proxy.dsn(token=good), autocommit=True) as before_conn:
        for _ in range(5):
            with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
                psycopg.connect(fresh_proxy.dsn(token="wrong"))
        with tls_client(fresh_proxy) as client:
            client.send(startup_packet(user=ALICE, database="prod"))
            client.read_message()
            client.send(typed(b"p", good.encode() + b"\0"))
            fields = client.expect_fatal()
        assert fatal(fields) == (
            "FATAL",
            "28000",
            "too many failed logins from this address; retry in 60 s",
        )
        # The lock-out refuses new logins only: the open session goes on.
        assert before_conn.execute("select 'still here'").fetchone() == ("still here",)
    assert fresh_proxy.alive()


# ---------------------------------------------------------------------------------------
# Authorisation and routing


def test_identity_not_in_allow_groups(
    lenient: RunningProxy, before: psycopg.Connection[Any]
) -> None:
    with tls_client(lenient) as client:
        client.send(startup_packet(user=ALICE, database="restricted"))
        client.read_message()
        client.send(typed(b"p", lenient.token(ALICE, ("eng",)).encode() + b"\0"))
        fields = client.expect_fatal()
    assert fatal(fields) == (
        "FATAL",
        "42501",
        f'dbsentry: identity "{ALICE}" is not allowed to use connection "restricted"',
    )
    # A member of the group gets in.
    with psycopg.connect(
        lenient.dsn("dora@example.com", dbname="restricted", groups=("dba",))
    ) as dba:
        assert dba.execute("select 1").fetchone() == (1,)
    assert_serving(lenient, before)


def test_unknown_connection(lenient: RunningProxy, before: psycopg.Connection[Any]) -> None:
    with tls_client(lenient) as client:
        client.send(startup_packet(user=ALICE, database="nope"))
        client.read_message()
        client.send(typed(b"p", lenient.token(ALICE, ("eng",)).encode() + b"\0"))
        fields = client.expect_fatal()
    # The identity is told which connections it can use ("restricted" is for dba only).
    assert fatal(fields) == (
        "FATAL",
        "3D000",
        'dbsentry: connection "nope" does not exist; connections you can use: down, prod, staging',
    )
    assert fields["H"] == "The database name picks the connection, e.g. dbname=down"
    with tls_client(lenient) as client:
        client.send(startup_packet(user="dora@example.com", database="nope"))
        client.read_message()
        client.send(typed(b"p", lenient.token("dora@example.com", ("dba",)).encode() + b"\0"))
        fields = client.expect_fatal()
    assert fields["M"].endswith("connections you can use: down, prod, restricted, staging")
    assert_serving(lenient, before)


def test_unknown_connection_with_bad_token_does_not_reveal_names(lenient: RunningProxy) -> None:
    # The token is checked first: a stranger cannot probe which connections exist.
    with tls_client(lenient) as client:
        client.send(startup_packet(user=ALICE, database="nope"))
        client.read_message()
        client.send(typed(b"p", b"wrong\0"))
        fields = client.expect_fatal()
    assert fatal(fields) == ("FATAL", "28P01", f'password authentication failed for user "{ALICE}"')


# ---------------------------------------------------------------------------------------
# TLS is required


TLS_REQUIRED = "dbsentry: this proxy requires TLS; connect with sslmode=require (or stronger)"


def test_sslmode_disable_is_refused(lenient: RunningProxy, before: psycopg.Connection[Any]) -> None:
    with pytest.raises(psycopg.OperationalError) as err:
        psycopg.connect(lenient.dsn(sslmode="disable"))
    assert f"FATAL:  {TLS_REQUIRED}" in str(err.value)
    assert_serving(lenient, before)


def test_plaintext_startup_gets_error_not_password_request(
    lenient: RunningProxy, before: psycopg.Connection[Any]
) -> None:
    with RawClient(lenient.host, lenient.port) as client:
        client.send(startup_packet(user=ALICE, database="prod"))
        t, body = client.read_message()
        assert t == b"E", "the proxy must not ask for the token over plaintext"
        fields = error_fields(body)
        client.expect_closed()
    assert fatal(fields) == ("FATAL", "28000", TLS_REQUIRED)
    assert fields["H"] == "The password is an access token and is never accepted over plaintext."
    assert_serving(lenient, before)


def test_plaintext_startup_with_password_already_sent(lenient: RunningProxy) -> None:
    # A client that pushes its password before being asked still gets only the refusal.
    with RawClient(lenient.host, lenient.port) as client:
        client.send(
            startup_packet(user=ALICE, database="prod")
            + typed(b"p", lenient.token(ALICE, ("eng",)).encode() + b"\0")
        )
        fields = client.expect_fatal()
    assert fatal(fields) == ("FATAL", "28000", TLS_REQUIRED)


# ---------------------------------------------------------------------------------------
# Malformed startup traffic


@pytest.mark.parametrize(
    "data",
    [
        struct.pack("!I", 3),
        struct.pack("!I", 7) + b"\0\0\0",
        struct.pack("!I", 0),
        b"X\0\0\0\x04",  # Terminate where the start-up packet belongs (a quick disconnect)
        b"GET / HTTP/1.1\r\nHost: db\r\n\r\n",
        struct.pack("!II", 20_000, 1234) + b"x" * 100,  # a plausible length, not protocol 3
    ],
    ids=["length-3", "length-7", "length-0", "terminate", "http", "oversized-not-v3"],
)
def test_not_a_startup_packet_is_closed_silently(
    lenient: RunningProxy, before: psycopg.Connection[Any], data: bytes
) -> None:
    # PostgreSQL logs "invalid length of startup packet" and closes without a word: a peer
    # that does not speak the protocol yet gets no FATAL frame (node-postgres crashed on one).
    with RawClient(lenient.host, lenient.port) as client:
        client.send(data)
        client.expect_closed()
    assert_serving(lenient, before)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            struct.pack("!II", 20_000, 196608) + b"user\0" + b"x" * 200,
            (
                "FATAL",
                "54000",
                "dbsentry: startup packet of 20000 bytes exceeds the limit of 10000",
            ),
        ),
        (
            b"\x00\x00\x00\x10\x12\x34\x56\x78garbage\0" + startup_packet(user=ALICE),
            ("FATAL", "08P01", "dbsentry: unsupported frontend protocol 4660.22136"),
        ),
        (
            struct.pack("!II", 16, 196608) + b"user\0alice",  # no terminator
            ("FATAL", "08P01", "dbsentry: startup packet is not null-terminated"),
        ),
        (
            struct.pack("!II", 12, 196608) + b"\xff\xfe\0\0",
            ("FATAL", "08P01", "dbsentry: startup packet has a parameter without a value"),
        ),
    ],
    ids=["over-10KB", "garbage-then-startup", "unterminated", "odd-params"],
)
def test_malformed_startup_packet(
    lenient: RunningProxy,
    before: psycopg.Connection[Any],
    data: bytes,
    expected: tuple[str, str, str],
) -> None:
    # A real start-up packet (protocol 3) that is too large or malformed gets a clear error.
    with RawClient(lenient.host, lenient.port) as client:
        client.send(data)
        fields = client.expect_fatal()
    assert fatal(fields) == expected
    assert_serving(lenient, before)


def test_startup_without_user(lenient: RunningProxy) -> None:
    with tls_client(lenient) as client:
        client.send(startup_packet(database="prod"))
        fields = client.expect_fatal()
    assert fatal(fields) == (
        "FATAL",
        "28000",
        "no PostgreSQL user name specified in startup packet",
    )


def test_ssl_request_followed_by_plaintext_is_refused(
    lenient: RunningProxy, before: psycopg.Connection[Any]
) -> None:
    # CVE-2021-23214: bytes after SSLRequest in the same write could be a MITM's injection.
    with RawClient(lenient.host, lenient.port) as client:
        client.send(SSL_REQUEST + startup_packet(user=ALICE, database="prod"))
        t, body = client.read_message()
        assert t == b"E", "the proxy must not answer 'S' and carry on"
        client.expect_closed()
    assert fatal(error_fields(body)) == (
        "FATAL",
        "08P01",
        "dbsentry: unencrypted data after SSLRequest",
    )
    assert_serving(lenient, before)


def test_second_ssl_request_inside_tls_is_refused(lenient: RunningProxy) -> None:
    with tls_client(lenient) as client:
        client.send(SSL_REQUEST)
        fields = client.expect_fatal()
    assert fatal(fields) == (
        "FATAL",
        "08P01",
        "dbsentry: SSLRequest received on an encrypted connection",
    )


def test_gssenc_request_declined_then_tls_works(lenient: RunningProxy) -> None:
    with RawClient(lenient.host, lenient.port) as client:
        client.send(GSSENC_REQUEST)
        assert client.read_exact(1) == b"N"
        client.start_tls()
        client.login(ALICE, lenient.token(ALICE, ("eng",)))
        msgs = client.query("select 'after gss'")
        rows = [body for t, body in msgs if t == b"D"]
        assert rows == [struct.pack("!hi", 1, 9) + b"after gss"]


def test_password_message_too_large_before_login(
    lenient: RunningProxy, before: psycopg.Connection[Any]
) -> None:
    with tls_client(lenient) as client:
        client.send(startup_packet(user=ALICE, database="prod"))
        client.read_message()
        client.send(b"p" + struct.pack("!I", 1_000_000) + b"x" * 100)
        fields = client.expect_fatal()
    assert fatal(fields) == (
        "FATAL",
        "54000",
        "dbsentry: message of 1000000 bytes exceeds the limit of 65536",
    )
    assert_serving(lenient, before)


def test_query_before_authentication_is_refused(lenient: RunningProxy) -> None:
    with tls_client(lenient) as client:
        client.send(startup_packet(user=ALICE, database="prod"))
        client.read_message()
        client.send(typed(b"Q", b"select 1\0"))
        fields = client.expect_fatal()
    assert fatal(fields) == ("FATAL", "08P01", "dbsentry: expected a password message, got 'Q'")


# ---------------------------------------------------------------------------------------
# Cancel requests


def test_cancel_with_wrong_key_is_ignored(lenient: RunningProxy) -> None:
    with psycopg.connect(lenient.dsn(), autocommit=True) as conn:
        result: dict[str, Any] = {}

        def sleep() -> None:
            try:
                result["row"] = conn.execute("select pg_sleep(1.2), 'finished'").fetchone()
            except psycopg.Error as err:  # pragma: no cover - the failure being tested for
                result["error"] = err

        runner = threading.Thread(target=sleep)
        runner.start()
        time.sleep(0.3)
        for pid, secret in (
            (conn.info.backend_pid, b"\0\0\0\0"),
            (conn.info.backend_pid ^ 1, b"abcd"),
            (1, secrets.token_bytes(4)),
        ):
            with RawClient(lenient.host, lenient.port) as client:
                client.send(struct.pack("!III", 16, CANCEL_CODE, pid) + secret)
                client.expect_closed()
        runner.join(10)
        assert result == {"row": ("", "finished")}
        assert conn.execute("select 1").fetchone() == (1,)


def test_cancel_with_right_key_over_raw_socket(lenient: RunningProxy, pg_server: PgServer) -> None:
    marker = f"raw-cancel-{uuid.uuid4().hex[:8]}"
    with tls_client(lenient) as client:
        client.send(startup_packet(user=ALICE, database="prod"))
        client.read_message()
        client.send(typed(b"p", lenient.token(ALICE, ("eng",)).encode() + b"\0"))
        key = None
        while True:
            t, body = client.read_message()
            if t == b"K":
                key = body
            if t == b"Z":
                break
        assert key is not None and len(key) == 8
        client.send(typed(b"Q", f"select pg_sleep(30) /* {marker} */".encode() + b"\0"))
        wait_for(lambda: active_queries(pg_server, marker) == 1, 5, "the query to start")
        with RawClient(lenient.host, lenient.port) as canceller:
            canceller.send(struct.pack("!II", 16, CANCEL_CODE) + key)
            canceller.expect_closed()
        t, body = client.read_message()
        if t == b"T":  # RowDescription comes before the query runs
            t, body = client.read_message()
        assert t == b"E", (t, body)
        assert fatal(error_fields(body)) == (
            "ERROR",
            "57014",
            "canceling statement due to user request",
        )
        assert client.read_message() == (b"Z", b"I")


# ---------------------------------------------------------------------------------------
# Limits: message size and startup time


@pytest.fixture(scope="module")
def small_limits(
    pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningProxy]:
    config = write_config(
        tmp_path_factory.mktemp("small-limits"),
        pg_server,
        extra={"limits": {"max_message_bytes": 4096, "startup_timeout_seconds": 1}},
    )
    with run_proxy(config) as running:
        yield running


def test_message_over_cap_after_login(small_limits: RunningProxy) -> None:
    with psycopg.connect(small_limits.dsn(), autocommit=True) as other:
        with tls_client(small_limits) as client:
            client.login(ALICE, small_limits.token(ALICE, ("eng",)))
            # Under the cap: fine.
            sql = "select '" + "a" * 3000 + "'"
            assert client.query(sql)[-1] == (b"Z", b"I")
            client.send(b"Q" + struct.pack("!I", 100_000) + b"select '" + b"b" * 200)
            fields = client.expect_fatal()
        assert fatal(fields) == (
            "FATAL",
            "54000",
            "dbsentry: message of 100000 bytes exceeds the limit of 4096",
        )
        assert other.execute("select 'still here'").fetchone() == ("still here",)
        # Idle for longer than the startup timeout: a logged-in session is not timed out.
        time.sleep(1.3)
        assert other.execute("select 'still here'").fetchone() == ("still here",)
    assert small_limits.alive()


@pytest.mark.serial
def test_slow_loris_is_disconnected(small_limits: RunningProxy) -> None:
    with psycopg.connect(small_limits.dsn(), autocommit=True) as other:
        packet = startup_packet(user=ALICE, database="prod")
        with RawClient(small_limits.host, small_limits.port) as client:
            start = time.monotonic()
            client.send(packet[: len(packet) // 2])
            fields = client.expect_fatal()
            elapsed = time.monotonic() - start
        assert fatal(fields) == (
            "FATAL",
            "08P01",
            "dbsentry: timeout waiting for startup and authentication",
        )
        assert 0.8 < elapsed < 2.5
        assert other.execute("select 'still here'").fetchone() == ("still here",)


@pytest.mark.serial
def test_stall_after_tls_before_password_is_disconnected(small_limits: RunningProxy) -> None:
    with tls_client(small_limits) as client:
        start = time.monotonic()
        client.send(startup_packet(user=ALICE, database="prod"))
        assert client.read_message() == (b"R", struct.pack("!i", 3))
        fields = client.expect_fatal()
        elapsed = time.monotonic() - start
    assert fatal(fields) == (
        "FATAL",
        "08P01",
        "dbsentry: timeout waiting for startup and authentication",
    )
    assert elapsed < 2.5


def test_silent_connection_is_disconnected(small_limits: RunningProxy) -> None:
    with RawClient(small_limits.host, small_limits.port) as client:
        fields = client.expect_fatal()
    assert fatal(fields) == (
        "FATAL",
        "08P01",
        "dbsentry: timeout waiting for startup and authentication",
    )


# ---------------------------------------------------------------------------------------
# Upstream failures


def test_upstream_down(lenient: RunningProxy, before: psycopg.Connection[Any]) -> None:
    with tls_client(lenient) as client:
        client.send(startup_packet(user=ALICE, database="down"))
        client.read_message()
        client.send(typed(b"p", lenient.token(ALICE, ("eng",)).encode() + b"\0"))
        fields = client.expect_fatal()
    assert fatal(fields) == (
        "FATAL",
        "08001",
        'dbsentry: could not connect to the upstream of connection "down": Connection refused',
    )
    assert_serving(lenient, before)


def test_upstream_rejects_proxy_credentials(
    pg_server: PgServer, auth_cluster: AuthCluster, tmp_path: Path
) -> None:
    wrong = "Wr0ng-" + secrets.token_hex(8)
    config = write_config(
        tmp_path,
        pg_server,
        connections={
            "badcreds": {
                "host": auth_cluster.host,
                "port": auth_cluster.port,
                "database": "postgres",
                "user": "scram_user",
                "password": wrong,
            },
        },
    )
    with run_proxy(config) as running, psycopg.connect(running.dsn(), autocommit=True) as other:
        with tls_client(running) as client:
            client.send(startup_packet(user=ALICE, database="badcreds"))
            client.read_message()
            client.send(typed(b"p", running.token(ALICE, ("eng",)).encode() + b"\0"))
            fields = client.expect_fatal()
        assert fatal(fields) == (
            "FATAL",
            "08004",
            'dbsentry: the upstream of connection "badcreds" rejected the proxy\'s credentials',
        )
        assert wrong not in str(fields)
        assert auth_cluster.passwords["scram_user"] not in str(fields)
        assert wrong not in running.log_text()
        assert other.execute("select 1").fetchone() == (1,)


# ---------------------------------------------------------------------------------------
# A client that vanishes mid-query


@pytest.mark.serial
def test_client_killed_mid_query_stops_the_query(
    lenient: RunningProxy, pg_server: PgServer, before: psycopg.Connection[Any]
) -> None:
    marker = f"killed-{uuid.uuid4().hex[:8]}"
    client = tls_client(lenient)
    client.login(ALICE, lenient.token(ALICE, ("eng",)))
    client.send(typed(b"Q", f"select pg_sleep(30) /* {marker} */".encode() + b"\0"))
    wait_for(lambda: active_queries(pg_server, marker) == 1, 5, "the query to start")
    # Abortive close: RST, no Terminate.
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    elapsed = wait_for(lambda: active_queries(pg_server, marker) == 0, 5, "the query to stop")
    assert elapsed < 2.0
    assert_serving(lenient, before)


@pytest.mark.serial
def test_client_killed_mid_extended_query_stops_the_query(
    lenient: RunningProxy, pg_server: PgServer
) -> None:
    marker = f"killed-ext-{uuid.uuid4().hex[:8]}"
    client = tls_client(lenient)
    client.login(ALICE, lenient.token(ALICE, ("eng",)))
    sql = f"select pg_sleep(30) /* {marker} */".encode()
    client.send(
        typed(b"P", b"\0" + sql + b"\0" + b"\0\0")
        + typed(b"B", b"\0\0" + b"\0\0" + b"\0\0" + b"\0\0")
        + typed(b"E", b"\0" + b"\0\0\0\0")
        + typed(b"S", b"")
    )
    wait_for(lambda: active_queries(pg_server, marker) == 1, 5, "the query to start")
    client.close()
    elapsed = wait_for(lambda: active_queries(pg_server, marker) == 0, 5, "the query to stop")
    assert elapsed < 2.0


@pytest.mark.serial
def test_client_killed_after_execute_with_flush_stops_the_query(
    lenient: RunningProxy, pg_server: PgServer
) -> None:
    # Pipelining clients (libpq pipeline mode, psycopg's conn.pipeline()) send Flush rather
    # than Sync to get results early: the query is running although no Sync is pending.
    marker = f"killed-flush-{uuid.uuid4().hex[:8]}"
    client = tls_client(lenient)
    client.login(ALICE, lenient.token(ALICE, ("eng",)))
    sql = f"select pg_sleep(30) /* {marker} */".encode()
    client.send(
        typed(b"P", b"\0" + sql + b"\0" + b"\0\0")
        + typed(b"B", b"\0\0" + b"\0\0" + b"\0\0" + b"\0\0")
        + typed(b"E", b"\0" + b"\0\0\0\0")
        + typed(b"H", b"")
    )
    wait_for(lambda: active_queries(pg_server, marker) == 1, 5, "the query to start")
    client.close()
    elapsed = wait_for(lambda: active_queries(pg_server, marker) == 0, 5, "the query to stop")
    assert elapsed < 2.0


# ---------------------------------------------------------------------------------------
# Login traffic in fewer writes than messages


def test_startup_and_password_in_one_write(lenient: RunningProxy) -> None:
    with tls_client(lenient) as client:
        client.send(
            startup_packet(user=ALICE, database="prod")
            + typed(b"p", lenient.token(ALICE, ("eng",)).encode() + b"\0")
        )
        assert client.read_message() == (b"R", struct.pack("!i", 3))
        while client.read_message()[0] != b"Z":
            pass
        assert (b"D", struct.pack("!hi", 1, 2) + b"ok") in client.query("select 'ok'")


def test_query_sent_with_password_is_answered(lenient: RunningProxy) -> None:
    # PostgreSQL keeps bytes that follow the password and runs them once the login is done;
    # a client that pipelines its first query must get an answer, not silence.
    with tls_client(lenient) as client:
        client.send(startup_packet(user=ALICE, database="prod"))
        assert client.read_message() == (b"R", struct.pack("!i", 3))
        client.send(
            typed(b"p", lenient.token(ALICE, ("eng",)).encode() + b"\0")
            + typed(b"Q", b"select 'pipelined'\0")
        )
        while client.read_message()[0] != b"Z":  # the end of the login
            pass
        client.sock.settimeout(3)
        answer = []
        while not answer or answer[-1][0] != b"Z":
            answer.append(client.read_message())
    assert (b"D", struct.pack("!hi", 1, 9) + b"pipelined") in answer


# ---------------------------------------------------------------------------------------
# Protocol negotiation and refused startup options


def test_newer_protocol_minor_and_pq_options_are_negotiated_down(lenient: RunningProxy) -> None:
    body = b"user\0" + ALICE.encode() + b"\0database\0prod\0_pq_.frobnicate\0on\0\0"
    packet = struct.pack("!II", len(body) + 8, (3 << 16) | 2) + body
    with tls_client(lenient) as client:
        client.send(packet)
        t, msg = client.read_message()
        assert t == b"v"
        # As PostgreSQL sends it: the full protocol version it will speak (3.0), then the
        # options it does not know.
        assert msg == struct.pack("!ii", 3 << 16, 1) + b"_pq_.frobnicate\0"
        assert client.read_message() == (b"R", struct.pack("!i", 3))
        client.send(typed(b"p", lenient.token(ALICE, ("eng",)).encode() + b"\0"))
        while client.read_message()[0] != b"Z":
            pass
        assert client.query("select 1")[-1] == (b"Z", b"I")


def test_libpq_asking_for_protocol_3_2_connects(lenient: RunningProxy) -> None:
    with psycopg.connect(lenient.dsn(max_protocol_version="3.2"), autocommit=True) as conn:
        assert conn.execute("select 'negotiated'").fetchone() == ("negotiated",)
        timer = threading.Timer(0.3, conn.cancel_safe)
        timer.start()
        try:
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute("select pg_sleep(30)")
        finally:
            timer.join()


def test_replication_connection_refused(lenient: RunningProxy) -> None:
    with tls_client(lenient) as client:
        client.send(startup_packet(user=ALICE, database="prod", replication="database"))
        fields = client.expect_fatal()
    assert fatal(fields) == (
        "FATAL",
        "0A000",
        "dbsentry: replication connections are not supported",
    )


def test_garbage_instead_of_tls_handshake(
    lenient: RunningProxy, before: psycopg.Connection[Any]
) -> None:
    with RawClient(lenient.host, lenient.port) as client:
        client.send(SSL_REQUEST)
        assert client.read_exact(1) == b"S"
        client.send(startup_packet(user=ALICE, database="prod"))  # plaintext where TLS must be
        client.expect_closed()
    assert_serving(lenient, before)


@pytest.mark.serial
def test_stall_after_ssl_answer_is_disconnected(small_limits: RunningProxy) -> None:
    with RawClient(small_limits.host, small_limits.port) as client:
        start = time.monotonic()
        client.send(SSL_REQUEST)
        assert client.read_exact(1) == b"S"
        client.sock.settimeout(5)
        with pytest.raises(Closed):
            while True:
                client.read_message()
        assert time.monotonic() - start < 2.5
    with psycopg.connect(small_limits.dsn()) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


# ---------------------------------------------------------------------------------------
# The upstream goes away or hangs


def test_upstream_backend_terminated(
    lenient: RunningProxy, pg_server: PgServer, before: psycopg.Connection[Any]
) -> None:
    with psycopg.connect(lenient.dsn(), autocommit=True) as conn:
        pid = conn.execute("select pg_backend_pid()").fetchone()
        with psycopg.connect(pg_server.dsn(), autocommit=True) as direct:
            assert direct.execute("select pg_terminate_backend(%s)", pid).fetchone() == (True,)
        with pytest.raises(
            psycopg.OperationalError, match="terminating connection due to administrator command"
        ):
            conn.execute("select 1")
        assert conn.closed
    assert_serving(lenient, before)


def test_result_row_over_cap_ends_session_cleanly(small_limits: RunningProxy) -> None:
    with psycopg.connect(small_limits.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.OperationalError) as err:
            conn.execute("select repeat('x', 10000)")
        assert (
            "dbsentry: a message from the upstream exceeds limits.max_message_bytes: "
            "message of 10010 bytes exceeds the limit of 4096" in str(err.value)
        )
    with psycopg.connect(small_limits.dsn(), autocommit=True) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_upstream_closed_sockets_after_client_leaves(
    lenient: RunningProxy, pg_server: PgServer
) -> None:
    tag = f"leak-{uuid.uuid4().hex[:8]}"
    for i in range(10):
        conn = psycopg.connect(lenient.dsn(application_name=tag), autocommit=True)
        conn.execute("select 1")
        if i % 2:
            conn.close()  # Terminate
        else:
            conn.pgconn.finish()  # also Terminate, through libpq directly
    raw = tls_client(lenient)
    raw.login(ALICE, lenient.token(ALICE, ("eng",)), application_name=tag)
    raw.close()  # no Terminate at all

    def remaining() -> int:
        with psycopg.connect(pg_server.dsn()) as direct:
            row = direct.execute(
                "select count(*) from pg_stat_activity where application_name = %s", (tag,)
            ).fetchone()
        assert row is not None
        return int(row[0])

    wait_for(lambda: remaining() == 0, 3, "the upstream sessions to end")


@pytest.fixture
def hanging_upstream(pg_server: PgServer, tmp_path: Path) -> Iterator[RunningProxy]:
    """A connection whose upstream accepts TCP and then never says a word."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        config = write_config(
            tmp_path,
            pg_server,
            extra={"limits": {"startup_timeout_seconds": 3}},
            connections={
                "hang": {
                    "host": "127.0.0.1",
                    "port": listener.getsockname()[1],
                    "database": "test",
                    "user": "postgres",
                    "connect_timeout_seconds": 1,
                }
            },
        )
        with run_proxy(config) as running:
            yield running


def test_upstream_that_never_answers(hanging_upstream: RunningProxy) -> None:
    token = hanging_upstream.token(ALICE, ("eng",))  # a CLI run: not inside the 3 s startup timeout
    with tls_client(hanging_upstream) as client:
        client.send(startup_packet(user=ALICE, database="hang"))
        client.read_message()
        start = time.monotonic()
        client.send(typed(b"p", token.encode() + b"\0"))
        client.sock.settimeout(10)
        fields = client.expect_fatal()
        elapsed = time.monotonic() - start
    # The upstream's fault, within its connect_timeout_seconds, not the client's.
    assert fields["C"] == "08001", fields
    assert fields["M"].startswith("dbsentry: ") and '"hang"' in fields["M"], fields
    # connect_timeout_seconds is 1: the SQLSTATE says which timeout fired (the 3 s startup
    # timeout answers otherwise); the bound only says it did not hang.
    assert elapsed < 8
