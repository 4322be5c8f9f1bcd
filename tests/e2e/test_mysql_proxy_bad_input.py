"""Bad input at the MySQL listener, each with its exact error: malformed packets, wrong
sequence ids, oversized lengths, a client that never finishes the handshake, an upstream
that is down; and the logins that are fine without TLS being required (the token
RSA-encrypted with the proxy's key) or with mysql_clear_password over TLS. One proxy."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from dbsentry.engines.mysql.wire import constants as c
from dbsentry.engines.mysql.wire import generic as g
from dbsentry.engines.mysql.wire import handshake as hs
from dbsentry.engines.mysql.wire.packets import encode_packet
from dbsentry.engines.mysql.wire.results import decode_column_definition
from support.mysql import MySQLProxy, run_mysql_proxy, server_reason
from support.pg import free_port

_REASON = server_reason()
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]
pymysql = pytest.importorskip("pymysql")

ALICE = "alice@example.com"
CAPS = (
    c.CLIENT_LONG_PASSWORD | c.CLIENT_LONG_FLAG | c.CLIENT_PROTOCOL_41 | c.CLIENT_TRANSACTIONS
    | c.CLIENT_SECURE_CONNECTION | c.CLIENT_PLUGIN_AUTH | c.CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
    | c.CLIENT_CONNECT_WITH_DB | c.CLIENT_DEPRECATE_EOF
)


@pytest.fixture(scope="module")
def mysql_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MySQLProxy]:
    extra = {
        "tls": {"require_client_tls": False},
        "limits": {"upstream_check_seconds": 0, "startup_timeout_seconds": 1},
        "approvals": {"modes": [{"connections": ["prod"], "mode": "wait"}]},
    }
    down = {"engine": "mysql", "host": "127.0.0.1", "port": free_port(), "database": "test", "user": "root", "environment": "development"}
    badcreds = {**down, "port": 3306, "user": "dbsentry_no_such_user", "password": "wrong"}
    with run_mysql_proxy(tmp_path_factory.mktemp("mysql-bad"), extra=extra, connections={"down": down, "badcreds": badcreds}) as running:
        running.token()  # made now: the start-up timeout (1 s) is shorter than the token CLI
        yield running


class Raw:
    """A client speaking the protocol by hand (the codec's encoders)."""

    def __init__(self, port: int) -> None:
        self.sock: Any = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.buf = bytearray()
        self.greeting = hs.decode_handshake(self.read())

    def __enter__(self) -> Raw:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def read(self) -> bytes:
        """The next packet's payload (sequence ids are not checked here)."""
        while True:
            if len(self.buf) >= 4:
                size = int.from_bytes(self.buf[:3], "little")
                if len(self.buf) >= 4 + size:
                    payload = bytes(self.buf[4 : 4 + size])
                    del self.buf[: 4 + size]
                    return payload
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed")
            self.buf += data

    def send(self, payload: bytes, seq: int) -> None:
        self.sock.sendall(encode_packet(payload, seq)[0])

    def error(self) -> tuple[int, str | None, str]:
        err = g.decode_err(self.read())
        return err.code, err.sqlstate, err.message

    def closed(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except OSError:
            return True

    def login_tls(self, token: str, database: str = "dev") -> None:
        """SSLRequest, TLS, then mysql_clear_password with the token."""
        self.send(hs.encode_ssl_request(hs.SSLRequest(CAPS | c.CLIENT_SSL)), 1)
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        self.sock = ctx.wrap_socket(self.sock, server_hostname="localhost")
        response = hs.HandshakeResponse(CAPS | c.CLIENT_SSL, ALICE, token.encode() + b"\x00", database=database, auth_plugin_name="mysql_clear_password")
        self.send(hs.encode_handshake_response(response), 2)
        ok = self.read()
        assert ok[:1] == b"\x00", g.decode_err(ok)


def test_malformed_handshake_response(mysql_proxy: MySQLProxy) -> None:
    with Raw(mysql_proxy.port) as raw:
        raw.send(b"hello", 1)
        assert raw.error() == (1043, "08S01", "dbsentry: the client speaks a protocol older than 4.1 (HandshakeResponse320)")
        assert raw.closed()


def test_wrong_sequence_id(mysql_proxy: MySQLProxy) -> None:
    with Raw(mysql_proxy.port) as raw:
        raw.send(hs.encode_handshake_response(hs.HandshakeResponse(CAPS, ALICE, b"x" * 32, database="dev")), 5)
        assert raw.error() == (1156, "08S01", "dbsentry: got packet sequence id 5, expected 1")
        assert raw.closed()


def test_oversized_length_before_login(mysql_proxy: MySQLProxy) -> None:
    with Raw(mysql_proxy.port) as raw:
        raw.sock.sendall(b"\xff\xff\xff\x01")  # a 16 MiB - 1 payload announced, nothing sent
        assert raw.error() == (1153, "08S01", "dbsentry: packet of more than 16777215 bytes exceeds the limit of 65536")
        assert raw.closed()


def test_handshake_never_finished_times_out(mysql_proxy: MySQLProxy) -> None:
    with Raw(mysql_proxy.port) as raw:
        assert raw.error() == (1043, "08S01", "dbsentry: the login did not complete within 1s")
        assert raw.closed()


def test_upstream_down_is_a_clear_error(mysql_proxy: MySQLProxy) -> None:
    with pytest.raises(pymysql.err.OperationalError) as err:
        pymysql.connect(host="127.0.0.1", port=mysql_proxy.port, user=ALICE, password=mysql_proxy.token(), database="down", ssl_disabled=True)
    assert err.value.args == (2003, 'dbsentry: could not connect to the upstream of connection "down": Connection refused')


def test_upstream_rejecting_the_proxys_credentials_is_not_the_clients_fault(mysql_proxy: MySQLProxy) -> None:
    with pytest.raises(pymysql.err.OperationalError) as err:
        pymysql.connect(host="127.0.0.1", port=mysql_proxy.port, user=ALICE, password=mysql_proxy.token(), database="badcreds", ssl_disabled=True)
    assert err.value.args == (1045, 'dbsentry: the upstream of connection "badcreds": the server rejected the proxy\'s credentials')
    assert "dbsentry_no_such_user" in mysql_proxy.proxy.log_text()  # the operator's log has the server's words


def test_token_rsa_encrypted_on_plaintext_when_tls_is_not_required(mysql_proxy: MySQLProxy) -> None:
    # PyMySQL asks for the proxy's public key and encrypts the token with it
    with pymysql.connect(host="127.0.0.1", port=mysql_proxy.port, user=ALICE, password=mysql_proxy.token(), database="dev", ssl_disabled=True) as conn, conn.cursor() as cur:
        cur.execute("SELECT 40 + 2")
        assert cur.fetchone() == (42,)


def test_commands_after_login_with_bad_input(mysql_proxy: MySQLProxy) -> None:
    with Raw(mysql_proxy.port) as raw:
        raw.login_tls(mysql_proxy.token())
        raw.send(b"\x17" + (12345).to_bytes(4, "little") + b"\x00\x01\x00\x00\x00", 0)  # COM_STMT_EXECUTE, no such statement
        assert raw.error() == (1243, "HY000", "dbsentry: unknown prepared statement handler (12345) given to COM_STMT_EXECUTE")
        raw.send(b"\x11" + b"bob\x00\x00other\x00", 0)  # COM_CHANGE_USER to another connection
        assert raw.error() == (
            1235, "42000", "dbsentry: COM_CHANGE_USER to 'other': one connection per session; connect again with it as the database"
        )
        assert raw.closed()
    with Raw(mysql_proxy.port) as raw:
        raw.login_tls(mysql_proxy.token())
        raw.send(b"\x08", 0)  # COM_SHUTDOWN
        assert raw.error() == (1047, "08S01", "dbsentry: COM_SHUTDOWN is not allowed through the proxy")
        raw.send(b"\x03SELECT 1", 3)  # a command must start at sequence id 0
        assert raw.error() == (1156, "08S01", "dbsentry: got packet sequence id 3, expected 0")
        assert raw.closed()


def test_without_a_connection_only_kill_works(mysql_proxy: MySQLProxy) -> None:
    with Raw(mysql_proxy.port) as raw:
        raw.login_tls(mysql_proxy.token(), database="")
        raw.send(b"\x03SELECT 1", 0)
        code, state, message = raw.error()
        assert (code, state) == (1046, "3D000")
        assert message.startswith("dbsentry: no connection chosen: the database name picks the connection (mariadb -D <name>)")


@pytest.mark.skipif(shutil.which("mariadb") is None, reason="the mariadb command-line client is not installed")
def test_mariadb_cli_clear_password_over_tls(mysql_proxy: MySQLProxy) -> None:
    cmd = [
        "mariadb", "-h", "127.0.0.1", "-P", str(mysql_proxy.port), "-u", ALICE, f"-p{mysql_proxy.token()}",
        "--ssl", "--ssl-verify-server-cert=0", "--default-auth=mysql_clear_password", "-D", "dev", "-N", "-e", "SELECT 7",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "7", out.stderr


def test_ping_statistics_field_list_reset_set_option_quit(mysql_proxy: MySQLProxy) -> None:
    with Raw(mysql_proxy.port) as raw:
        raw.login_tls(mysql_proxy.token())
        raw.send(b"\x0e", 0)  # COM_PING
        assert raw.read()[:1] == b"\x00"
        raw.send(b"\x09", 0)  # COM_STATISTICS: one string
        assert raw.read().startswith(b"Uptime: ")
        raw.send(b"\x03CREATE TABLE IF NOT EXISTS dbs_proxy_fields (id INT, name VARCHAR(10))", 0)
        assert raw.read()[:1] == b"\x00"
        raw.send(b"\x04dbs_proxy_fields\x00", 0)  # COM_FIELD_LIST: definitions, then EOF
        names = []
        while True:
            payload = raw.read()
            if payload[:1] == b"\xfe":
                break
            names.append(decode_column_definition(payload, field_list=True).name)
        assert names == ["id", "name"]
        raw.send(b"\x03SET autocommit = 0", 0)
        ok = g.decode_ok(raw.read(), CAPS)
        raw.send(b"\x03INSERT INTO dbs_proxy_fields VALUES (1, 'x')", 0)
        ok = g.decode_ok(raw.read(), CAPS)
        assert ok.affected_rows == 1 and ok.status & c.SERVER_STATUS_IN_TRANS  # status flags forwarded
        raw.send(b"\x1f", 0)  # COM_RESET_CONNECTION: the transaction is rolled back
        ok = g.decode_ok(raw.read(), CAPS)
        assert not ok.status & c.SERVER_STATUS_IN_TRANS and ok.status & c.SERVER_STATUS_AUTOCOMMIT
        raw.send(b"\x1b\x00\x00", 0)  # COM_SET_OPTION multi-statements on: EOF
        assert raw.read()[:1] == b"\xfe"
        raw.send(b"\x03SELECT COUNT(*) FROM dbs_proxy_fields; SELECT 2", 0)
        assert raw.read()[:1] == b"\x01"  # one column: the first result set of two
    with Raw(mysql_proxy.port) as raw:
        raw.login_tls(mysql_proxy.token())
        raw.send(b"\x01", 0)  # COM_QUIT
        assert raw.closed()


def _pending(mp: MySQLProxy, text: str, seconds: float = 10) -> str:
    """The id of the pending request whose statement holds ``text`` (read from the store)."""
    import time

    from dbsentry.approvals.store import open_approval_store
    from dbsentry.config import load_config

    config = load_config(mp.proxy.config_path).config
    store = open_approval_store(config.audit, config.state_dir)
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for request in store.list(status="pending"):
                if text in (request.statement or ""):
                    return request.id
            time.sleep(0.1)
    finally:
        store.close()
    raise AssertionError(f"no pending request for {text}")


def test_wait_mode_runs_the_statement_once_approved_and_kill_withdraws_it(mysql_proxy: MySQLProxy) -> None:
    import threading
    import time

    from support.proxy import dbsentry_cli

    token = mysql_proxy.token()
    reviewer = mysql_proxy.token("dana@example.com", ("dba",))
    name = f"dbs_wait_{time.time_ns() % 10**9}"
    result: dict[str, Any] = {}

    def run(sql: str, key: str) -> None:
        try:
            with pymysql.connect(host="127.0.0.1", port=mysql_proxy.port, user=ALICE, password=token, database="prod", ssl_disabled=True) as conn:
                result[f"{key}_id"] = conn.thread_id()
                with conn.cursor() as cur:
                    cur.execute(sql)
                    result[key] = "ran"
        except pymysql.err.MySQLError as exc:
            result[key] = exc.args

    waiting = threading.Thread(target=run, args=(f"CREATE TABLE {name} (id INT)", "create"))
    waiting.start()
    request = _pending(mysql_proxy, name)
    assert waiting.is_alive()  # it waits for the reviewer
    dbsentry_cli("approvals", "approve", request, "--token", reviewer, "--comment", "ok", config=mysql_proxy.proxy.config_path)
    waiting.join(10)
    assert result["create"] == "ran"
    killed = threading.Thread(target=run, args=(f"CREATE TABLE {name}_2 (id INT)", "second"))
    killed.start()
    _pending(mysql_proxy, f"{name}_2")
    with pymysql.connect(host="127.0.0.1", port=mysql_proxy.port, user=ALICE, password=token, ssl_disabled=True) as conn, conn.cursor() as cur:
        cur.execute(f"KILL QUERY {result['second_id']}")
    killed.join(10)
    assert result["second"][0] == 1227 and "withdrawn: the statement was killed" in result["second"][1]
    with pymysql.connect(host="127.0.0.1", port=3306, user="root", database="test") as direct, direct.cursor() as cur:
        cur.execute(f"DROP TABLE {name}")
