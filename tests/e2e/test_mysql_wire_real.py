"""The MySQL codec (engines/mysql/wire) against a real MariaDB/MySQL server.

A small blocking client drives the codec over a plain socket: greeting, login (root with
no password, mysql_native_password and, where the plugin can be installed, ed25519 users),
text and binary result sets of every column type compared with what PyMySQL reads,
prepared statements with typed parameters, ERR with SQLSTATE, multi-results. Every packet
the server sends is also re-encoded and compared with its bytes.

Needs the server on 127.0.0.1:3306 (root, empty password, database ``test``); skipped
with the reason when it is not there.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import socket
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from dbsentry.engines.mysql.wire import auth
from dbsentry.engines.mysql.wire import commands as cmd
from dbsentry.engines.mysql.wire import constants as c
from dbsentry.engines.mysql.wire import generic as g
from dbsentry.engines.mysql.wire import handshake as hs
from dbsentry.engines.mysql.wire import results as res
from dbsentry.engines.mysql.wire.packets import PacketSplitter, encode_packet
from dbsentry.engines.mysql.wire.values import DateTime, ParamType, Time

HOST, PORT = "127.0.0.1", 3306
DATABASE = "test"


def _server_reason() -> str | None:
    try:
        with socket.create_connection((HOST, PORT), timeout=2) as s:
            s.settimeout(2)
            first = s.recv(4)
    except OSError as exc:
        return f"no MariaDB/MySQL server on {HOST}:{PORT} ({exc}); the real-server wire test needs one (root, empty password, database 'test')"
    if len(first) < 4:
        return f"the server on {HOST}:{PORT} sent no MySQL greeting"
    return None


_REASON = _server_reason()
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]

pymysql = pytest.importorskip("pymysql")

CLIENT_CAPS = (
    c.CLIENT_LONG_PASSWORD
    | c.CLIENT_LONG_FLAG
    | c.CLIENT_PROTOCOL_41
    | c.CLIENT_TRANSACTIONS
    | c.CLIENT_SECURE_CONNECTION
    | c.CLIENT_MULTI_STATEMENTS
    | c.CLIENT_MULTI_RESULTS
    | c.CLIENT_PS_MULTI_RESULTS
    | c.CLIENT_PLUGIN_AUTH
    | c.CLIENT_CONNECT_ATTRS
    | c.CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
    | c.CLIENT_SESSION_TRACK
)


class LoginFailed(Exception):
    pass


class Wire:
    """A blocking MySQL client made of the codec and a socket."""

    def __init__(self, user: str = "root", password: str = "", database: str | None = DATABASE, *, deprecate_eof: bool = True) -> None:
        self.sock = socket.create_connection((HOST, PORT), timeout=10)
        self.splitter = PacketSplitter(first_seq=0)
        self.queue: list[tuple[int, bytes]] = []
        self.seq = 0
        raw = self.read()
        greeting = hs.decode_server_greeting(raw)
        assert isinstance(greeting, hs.Handshake), greeting
        assert hs.encode_handshake(greeting) == raw  # the real greeting re-encodes exactly
        self.greeting = greeting
        wanted = CLIENT_CAPS | (c.CLIENT_DEPRECATE_EOF if deprecate_eof else 0)
        if database:
            wanted |= c.CLIENT_CONNECT_WITH_DB
        self.caps = wanted & greeting.capabilities & 0xFFFFFFFF
        if not greeting.capabilities & c.CLIENT_MYSQL:
            self.caps &= ~c.CLIENT_MYSQL
        nonce = greeting.auth_plugin_data
        plugin = greeting.auth_plugin_name
        response = hs.HandshakeResponse(
            self.caps,
            user,
            self._answer(plugin, password, nonce),
            database=database or "",
            auth_plugin_name=plugin,
            attributes=(("_client_name", "dbsentry-wire-test"), ("_pid", str(os.getpid()))),
        )
        payload = hs.encode_handshake_response(response)
        assert hs.decode_client_handshake(payload) == response
        self.send(payload)
        self.plugins_used = [plugin]
        sha2: auth.CachingSha2Client | None = None
        while True:
            reply = hs.decode_auth_reply(self.read(), self.caps)
            if isinstance(reply, g.OK):
                break
            if isinstance(reply, g.ERR):
                self.sock.close()
                raise LoginFailed(f"{reply.code} ({reply.sqlstate}): {reply.message}")
            if isinstance(reply, hs.AuthSwitchRequest):
                plugin, nonce = reply.plugin, reply.nonce
                self.plugins_used.append(plugin)
                if plugin == auth.CACHING_SHA2_PASSWORD:
                    sha2 = auth.CachingSha2Client(password, nonce, secure=False)
                    self.send(sha2.first())
                else:
                    self.send(self._answer(plugin, password, nonce))
            else:
                assert sha2 is not None, reply
                answer = sha2.more_data(reply.data)
                if answer is not None:
                    self.send(answer)

    @staticmethod
    def _answer(plugin: str, password: str, nonce: bytes) -> bytes:
        if plugin == auth.NATIVE_PASSWORD:
            return auth.native_password_scramble(password, nonce)
        if plugin == auth.CACHING_SHA2_PASSWORD:
            return auth.caching_sha2_scramble(password, nonce)
        if plugin == auth.ED25519:
            return auth.ed25519_response(password, nonce)
        if plugin == auth.CLEAR_PASSWORD:
            return auth.clear_password_response(password)
        raise AssertionError(f"unexpected plugin {plugin}")

    def close(self) -> None:
        try:
            self.command(cmd.Quit())
        finally:
            self.sock.close()

    # ------------------------------------------------------------------ packets

    def read(self) -> bytes:
        while not self.queue:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("server closed the connection")
            self.queue += [(pk.last_seq, pk.payload) for pk in self.splitter.feed(data)]
        last_seq, payload = self.queue.pop(0)
        self.seq = (last_seq + 1) & 0xFF
        return payload

    def send(self, payload: bytes) -> None:
        data, self.seq = encode_packet(payload, self.seq)
        self.splitter.expect(self.seq)
        self.sock.sendall(data)

    def command(self, command: cmd.AnyCommand, num_params: int = 0) -> None:
        payload = cmd.encode_command(command, self.caps, num_params)
        if not isinstance(command, cmd.StmtExecute):
            assert cmd.decode_command(payload, self.caps) == command
        self.seq = 0
        self.send(payload)

    # ------------------------------------------------------------------ answers

    def results(self, *, binary: bool = False, columns: list[res.ColumnDefinition] | None = None) -> list[Result]:
        reader = res.ResultReader(self.caps, binary=binary, columns=columns or (), cursor=columns is not None)
        out: list[Result] = []
        current = Result()
        while not reader.done:
            payload = self.read()
            before = reader.state
            event = reader.feed(payload)
            match event:
                case res.ColumnCount():
                    assert res.encode_column_count(event, self.caps) == payload
                case res.ColumnDefinition():
                    assert res.encode_column_definition(event) == payload
                    current.columns.append(event)
                case res.TextRow():
                    assert res.encode_text_row(event) == payload
                    current.rows.append(event.values)
                case res.BinaryRow():
                    assert res.encode_binary_row(event, res.column_types(reader.columns)) == payload
                    current.rows.append(event.values)
                case g.EOF() if before == "columns_eof" and not reader.done:
                    assert g.encode_eof(event) == payload
                case g.OK() | g.EOF():
                    encoded = g.encode_ok(event, self.caps) if isinstance(event, g.OK) else g.encode_eof(event)
                    assert encoded == payload
                    current.end = event
                    out.append(current)
                    current = Result()
                case g.ERR():
                    assert g.encode_err(event) == payload
                    current.error = event
                    out.append(current)
                case _:
                    raise AssertionError(event)
        return out

    def query(self, sql: str, **kw: Any) -> list[Result]:
        self.command(cmd.Query(sql.encode()))
        return self.results(**kw)

    def prepare(self, sql: str) -> res.PrepareReader:
        self.command(cmd.StmtPrepare(sql.encode()))
        reader = res.PrepareReader(self.caps)
        while not reader.done:
            payload = self.read()
            event = reader.feed(payload)
            if isinstance(event, res.StmtPrepareOK):
                assert res.encode_stmt_prepare_ok(event, self.caps) == payload
            elif isinstance(event, g.ERR):
                raise AssertionError(event)
        return reader


class Result:
    def __init__(self) -> None:
        self.columns: list[res.ColumnDefinition] = []
        self.rows: list[tuple[Any, ...]] = []
        self.end: g.OK | g.EOF | None = None
        self.error: g.ERR | None = None


@pytest.fixture
def wire() -> Iterator[Wire]:
    w = Wire()
    yield w
    w.close()


def _pymysql(**kw: Any) -> Any:
    return pymysql.connect(host=HOST, port=PORT, user="root", password="", database=DATABASE, **kw)



def _root_sql(*statements: str) -> None:
    conn = _pymysql()
    try:
        with conn.cursor() as cur:
            for sql in statements:
                cur.execute(sql)
        conn.commit()
    finally:
        conn.close()


# ---------------------------------------------------------------------- login


@pytest.mark.parametrize("deprecate_eof", [True, False])
def test_root_logs_in_and_reads_a_result(deprecate_eof: bool) -> None:
    w = Wire(deprecate_eof=deprecate_eof)
    try:
        assert w.greeting.connection_id > 0
        assert len(w.greeting.auth_plugin_data) == 20
        assert bool(w.caps & c.CLIENT_DEPRECATE_EOF) == deprecate_eof
        [result] = w.query("SELECT 1 AS one, NULL AS nothing, 'x' AS ex, DATABASE() AS db")
        assert [col.name for col in result.columns] == ["one", "nothing", "ex", "db"]
        assert result.rows == [(b"1", None, b"x", DATABASE.encode())]
        assert isinstance(result.end, g.OK if deprecate_eof else g.EOF)
        assert result.end.status & c.SERVER_STATUS_AUTOCOMMIT
    finally:
        w.close()


def test_native_password_user_logs_in_and_a_wrong_password_is_refused() -> None:
    user = f"dbs_wire_native_{os.getpid()}"
    _root_sql(f"CREATE OR REPLACE USER '{user}'@'127.0.0.1' IDENTIFIED VIA mysql_native_password USING PASSWORD('s3cr3t-ü')")
    try:
        w = Wire(user, "s3cr3t-ü", database=None)
        try:
            [result] = w.query("SELECT CURRENT_USER()")
            assert result.rows == [(f"{user}@127.0.0.1".encode(),)]
            assert w.plugins_used[-1] == auth.NATIVE_PASSWORD
        finally:
            w.close()
        with pytest.raises(LoginFailed, match=r"^1045 \(28000\): Access denied"):
            Wire(user, "wrong", database=None)
    finally:
        _root_sql(f"DROP USER IF EXISTS '{user}'@'127.0.0.1'")


def test_ed25519_user_logs_in() -> None:
    conn = _pymysql()
    installed_here = False
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT plugin_status FROM information_schema.plugins WHERE plugin_name = 'ed25519'")
            row = cur.fetchone()
            if row is None:
                try:
                    cur.execute("INSTALL SONAME 'auth_ed25519'")
                    installed_here = True
                except pymysql.MySQLError as exc:
                    pytest.skip(f"MariaDB's ed25519 plugin is not available here ({exc}): client_ed25519 is unit-tested only")
            elif row[0] != "ACTIVE":
                pytest.skip(f"MariaDB's ed25519 plugin is {row[0]}: client_ed25519 is unit-tested only")
    finally:
        conn.close()
    user = f"dbs_wire_ed_{os.getpid()}"
    try:
        _root_sql(f"CREATE OR REPLACE USER '{user}'@'127.0.0.1' IDENTIFIED VIA ed25519 USING PASSWORD('ed-pässword')")
        conn = _pymysql()
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT JSON_VALUE(priv, '$.authentication_string') FROM mysql.global_priv WHERE user = %s", (user,))
                (stored,) = cur.fetchone()
        finally:
            conn.close()
        # The public key derived the way MariaDB derives it is what the server stored.
        from dbsentry.engines.mysql.wire import ed25519

        assert ed25519.password_hash("ed-pässword".encode()) == stored
        w = Wire(user, "ed-pässword", database=None)
        try:
            assert auth.ED25519 in w.plugins_used
            [result] = w.query("SELECT CURRENT_USER()")
            assert result.rows == [(f"{user}@127.0.0.1".encode(),)]
        finally:
            w.close()
        with pytest.raises(LoginFailed, match=r"^1045 "):
            Wire(user, "not-it", database=None)
    finally:
        _root_sql(f"DROP USER IF EXISTS '{user}'@'127.0.0.1'")
        if installed_here:
            _root_sql("UNINSTALL SONAME 'auth_ed25519'")


# ---------------------------------------------------------------------- every column type

COLUMNS = """
  id INT PRIMARY KEY,
  c_tiny TINYINT, c_utiny TINYINT UNSIGNED, c_small SMALLINT, c_usmall SMALLINT UNSIGNED,
  c_medium MEDIUMINT, c_umedium MEDIUMINT UNSIGNED, c_int INT, c_uint INT UNSIGNED,
  c_big BIGINT, c_ubig BIGINT UNSIGNED, c_float FLOAT, c_double DOUBLE, c_dec DECIMAL(30,10),
  c_date DATE, c_datetime DATETIME(6), c_datetime0 DATETIME, c_ts TIMESTAMP(3) NULL DEFAULT NULL,
  c_time TIME(6), c_year YEAR, c_char CHAR(10), c_varchar VARCHAR(50), c_binary BINARY(4),
  c_varbinary VARBINARY(10), c_tinytext TINYTEXT, c_text TEXT, c_mediumblob MEDIUMBLOB,
  c_longblob LONGBLOB, c_blob BLOB, c_json JSON, c_bit BIT(10), c_enum ENUM('a','b'),
  c_set SET('x','y'), c_geom GEOMETRY NULL
"""

ROWS = [
    "(1, -128, 0, -32768, 0, -8388608, 0, -2147483648, 0, -9223372036854775808, 0, -1.5, -1e300,"
    " '-12345678901234567890.0123456789', '1000-01-01', '1000-01-01 00:00:00', '1000-01-01 00:00:00',"
    " '1970-01-02 00:00:00.000', '-838:59:59', 1901, '', '', x'00000000', x'', '', '', x'', x'', x'',"
    " '[]', b'0', 'a', '', ST_GeomFromText('POINT(0 0)'))",
    "(2, 127, 255, 32767, 65535, 8388607, 16777215, 2147483647, 4294967295, 9223372036854775807,"
    " 18446744073709551615, 3.25, 1.7976931348623157e308, '99999999999999999999.9999999999',"
    " '9999-12-31', '9999-12-31 23:59:59.999999', '2020-02-29 12:34:56', '2038-01-19 03:14:07.999',"
    " '838:59:59', 2155, 'héllo', 'ünïcødé ✓', x'DEADBEEF', x'00FF', 'tiny', 'text', x'0102',"
    " REPEAT('z', 70000), x'00', '{\"a\": [1, 2]}', b'1111111111', 'b', 'x,y', ST_GeomFromText('POINT(1 2)'))",
    "(3" + ", NULL" * 33 + ")",
    "(4, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 0.1, '0', '0000-00-00', '2001-02-03 04:05:06.7',"
    " '2001-02-03 04:05:06', '2001-02-03 04:05:06', '-00:00:01.5', 0, 'a', 'b', x'01', x'02', 'c', 'd',"
    " x'03', x'04', x'05', 'null', b'1', 'a', 'x', NULL)",
]


@pytest.fixture
def types_table() -> Iterator[str]:
    name = f"dbs_wire_types_{os.getpid()}"
    _root_sql(
        f"DROP TABLE IF EXISTS {name}",
        f"CREATE TABLE {name} ({COLUMNS}) CHARACTER SET utf8mb4",
        *(f"INSERT INTO {name} VALUES {row}" for row in ROWS),
    )
    yield name
    _root_sql(f"DROP TABLE IF EXISTS {name}")


_STRING_TYPES = {
    c.ColumnType.BIT, c.ColumnType.BLOB, c.ColumnType.LONG_BLOB, c.ColumnType.MEDIUM_BLOB, c.ColumnType.STRING,
    c.ColumnType.TINY_BLOB, c.ColumnType.VAR_STRING, c.ColumnType.VARCHAR, c.ColumnType.GEOMETRY,
}  # fmt: skip


def _text_as_pymysql(value: bytes | None, col: res.ColumnDefinition) -> Any:
    """Raw text as PyMySQL hands it over without decoders: strings of the binary charset
    as bytes, everything else (numbers and dates have the binary charset too) as str."""
    if value is None or (col.binary and col.type in _STRING_TYPES):
        return value
    return value.decode()


def _binary_as_python(value: Any, col: res.ColumnDefinition) -> Any:
    if value is None:
        return None
    if isinstance(value, DateTime):
        if col.type == c.ColumnType.DATE:
            return value.to_date() or str(value)
        return value.to_python() or str(value)
    if isinstance(value, Time):
        return value.to_python()
    if col.type in (c.ColumnType.DECIMAL, c.ColumnType.NEWDECIMAL):
        return Decimal(value)
    if isinstance(value, bytes):
        return value if col.binary else value.decode()
    return value


def _same(ours: Any, theirs: Any, col: res.ColumnDefinition) -> bool:
    if col.type == c.ColumnType.FLOAT and ours is not None and theirs is not None:
        return math.isclose(ours, theirs, rel_tol=1e-6)
    return bool(ours == theirs)


def test_text_result_of_every_column_type_matches_pymysql(wire: Wire, types_table: str) -> None:
    [result] = wire.query(f"SELECT * FROM {types_table} ORDER BY id")
    conn = _pymysql(conv=dict(pymysql.converters.encoders))  # no decoders: raw text
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT * FROM {types_table} ORDER BY id")
            expected = cur.fetchall()
    finally:
        conn.close()
    assert len(result.rows) == len(expected) == len(ROWS)
    for ours, theirs in zip(result.rows, expected, strict=True):
        assert tuple(_text_as_pymysql(v, col) for v, col in zip(ours, result.columns, strict=True)) == tuple(theirs)
    types = {col.name: c.ColumnType(col.type) for col in result.columns}
    assert types["c_medium"] == c.ColumnType.INT24
    assert types["c_dec"] == c.ColumnType.NEWDECIMAL
    assert types["c_geom"] == c.ColumnType.GEOMETRY
    assert types["c_bit"] == c.ColumnType.BIT
    assert {col.name for col in result.columns if col.unsigned} >= {"c_utiny", "c_usmall", "c_umedium", "c_uint", "c_ubig"}


def test_binary_result_of_every_column_type_matches_pymysql(wire: Wire, types_table: str) -> None:
    prepared = wire.prepare(f"SELECT * FROM {types_table} WHERE id >= ? ORDER BY id")
    assert prepared.ok is not None
    assert prepared.ok.num_params == 1
    assert len(prepared.columns) == prepared.ok.num_columns == 34
    execute = cmd.StmtExecute(prepared.ok.statement_id, (cmd.Param(ParamType(c.ColumnType.LONGLONG), 0),))
    wire.command(execute, num_params=1)
    [result] = wire.results(binary=True)
    conn = _pymysql()
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT * FROM {types_table} ORDER BY id")
            expected = cur.fetchall()
    finally:
        conn.close()
    assert len(result.rows) == len(expected) == len(ROWS)
    for ours, theirs in zip(result.rows, expected, strict=True):
        for value, their, col in zip(ours, theirs, result.columns, strict=True):
            assert _same(_binary_as_python(value, col), their, col), (col.name, value, their)
    # A few wire-level facts.
    row2 = dict(zip([col.name for col in result.columns], result.rows[1], strict=True))
    assert row2["c_ubig"] == 2**64 - 1
    assert row2["c_datetime"] == DateTime(9999, 12, 31, 23, 59, 59, 999999)
    assert row2["c_time"] == Time(False, 34, 22, 59, 59)
    assert row2["c_longblob"] == b"z" * 70000
    row4 = dict(zip([col.name for col in result.columns], result.rows[3], strict=True))
    assert row4["c_date"] == DateTime()
    assert row4["c_time"] == Time(True, 0, 0, 0, 1, 500000)
    wire.command(cmd.StmtClose(prepared.ok.statement_id))  # no answer
    [after] = wire.query("SELECT 2")
    assert after.rows == [(b"2",)]


# ---------------------------------------------------------------------- typed parameters


PARAMS = [
    (ParamType(c.ColumnType.TINY), -5, -5),
    (ParamType(c.ColumnType.LONGLONG, c.PARAM_UNSIGNED), 2**64 - 1, 2**64 - 1),
    (ParamType(c.ColumnType.LONGLONG), -(2**63), -(2**63)),
    (ParamType(c.ColumnType.SHORT, c.PARAM_UNSIGNED), 65535, 65535),
    (ParamType(c.ColumnType.LONG), -7, -7),
    (ParamType(c.ColumnType.DOUBLE), 2.5, 2.5),
    (ParamType(c.ColumnType.FLOAT), 1.25, 1.25),
    (ParamType(c.ColumnType.NEWDECIMAL), "123.450", Decimal("123.450")),
    (ParamType(c.ColumnType.DATE), DateTime(2024, 2, 29), dt.date(2024, 2, 29)),
    (ParamType(c.ColumnType.DATETIME), DateTime(2024, 2, 29, 13, 14, 15, 123456), dt.datetime(2024, 2, 29, 13, 14, 15, 123456)),
    (ParamType(c.ColumnType.TIME), Time(True, 1, 2, 3, 4, 5), -dt.timedelta(days=1, hours=2, minutes=3, seconds=4, microseconds=5)),
    (ParamType(c.ColumnType.VAR_STRING), "héllo".encode(), "héllo"),
    (ParamType(c.ColumnType.BLOB), b"\x00\xff", b"\x00\xff"),
    (ParamType(c.ColumnType.NULL), None, None),
    (ParamType(c.ColumnType.VAR_STRING), None, None),
]


def test_prepared_select_with_typed_parameters_echoes_them(wire: Wire) -> None:
    sql = "SELECT " + ", ".join("?" for _ in PARAMS)
    prepared = wire.prepare(sql)
    assert prepared.ok is not None
    assert prepared.ok.num_params == len(PARAMS) == len(prepared.params)
    params = tuple(cmd.Param(ptype, value) for ptype, value, _ in PARAMS)
    execute = cmd.StmtExecute(prepared.ok.statement_id, params)
    payload = cmd.encode_command(execute, wire.caps, len(PARAMS))
    assert cmd.decode_stmt_execute(payload, wire.caps, len(PARAMS)) == execute
    wire.command(execute, num_params=len(PARAMS))
    [result] = wire.results(binary=True)
    [row] = result.rows
    got = [_binary_as_python(v, col) for v, col in zip(row, result.columns, strict=True)]
    assert got == [expected for _, _, expected in PARAMS]
    # Again without sending the types: the server keeps the ones bound before.
    again = cmd.StmtExecute(prepared.ok.statement_id, params, new_params_bound=False)
    payload = cmd.encode_command(again, wire.caps, len(PARAMS))
    assert cmd.decode_stmt_execute(payload, wire.caps, len(PARAMS), execute.types) == again
    wire.command(again, num_params=len(PARAMS))
    [result] = wire.results(binary=True)
    assert [_binary_as_python(v, col) for v, col in zip(result.rows[0], result.columns, strict=True)] == got


def test_insert_with_typed_parameters_stores_what_pymysql_reads(wire: Wire, types_table: str) -> None:
    columns = ["id", "c_utiny", "c_ubig", "c_double", "c_dec", "c_date", "c_datetime", "c_time", "c_year", "c_varchar", "c_varbinary", "c_json", "c_bit"]
    values: list[tuple[ParamType, Any, Any]] = [
        (ParamType(c.ColumnType.LONG), 10, 10),
        (ParamType(c.ColumnType.TINY, c.PARAM_UNSIGNED), 200, 200),
        (ParamType(c.ColumnType.LONGLONG, c.PARAM_UNSIGNED), 2**64 - 2, 2**64 - 2),
        (ParamType(c.ColumnType.DOUBLE), -0.125, -0.125),
        (ParamType(c.ColumnType.NEWDECIMAL), "-1.5", Decimal("-1.5000000000")),
        (ParamType(c.ColumnType.DATE), DateTime(1999, 12, 31), dt.date(1999, 12, 31)),
        (ParamType(c.ColumnType.DATETIME), DateTime(2000, 1, 1, 0, 0, 1, 7), dt.datetime(2000, 1, 1, 0, 0, 1, 7)),
        (ParamType(c.ColumnType.TIME), Time(False, 0, 23, 59, 59, 999999), dt.timedelta(hours=23, minutes=59, seconds=59, microseconds=999999)),
        (ParamType(c.ColumnType.SHORT), 2024, 2024),
        (ParamType(c.ColumnType.VAR_STRING), "✓ ok".encode(), "✓ ok"),
        (ParamType(c.ColumnType.BLOB), b"\x01\x00\x02", b"\x01\x00\x02"),
        (ParamType(c.ColumnType.VAR_STRING), b'{"k": null}', '{"k": null}'),
        (ParamType(c.ColumnType.LONGLONG), 5, b"\x00\x05"),
    ]
    prepared = wire.prepare(f"INSERT INTO {types_table} ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})")
    assert prepared.ok is not None
    params = tuple(cmd.Param(ptype, value) for ptype, value, _ in values)
    wire.command(cmd.StmtExecute(prepared.ok.statement_id, params), num_params=len(params))
    [result] = wire.results(binary=True)
    assert isinstance(result.end, g.OK)
    assert result.end.affected_rows == 1
    conn = _pymysql()
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT {', '.join(columns)} FROM {types_table} WHERE id = 10")
            stored = cur.fetchone()
    finally:
        conn.close()
    assert list(stored) == [expected for _, _, expected in values]


@pytest.mark.parametrize("deprecate_eof", [True, False])
def test_long_data_cursor_fetch_and_reset(deprecate_eof: bool) -> None:
    w = Wire(deprecate_eof=deprecate_eof)
    try:
        prepared = w.prepare("SELECT CONCAT(?, '!') AS v UNION ALL SELECT 'second' UNION ALL SELECT 'third'")
        assert prepared.ok is not None
        stmt = prepared.ok.statement_id
        w.command(cmd.StmtSendLongData(stmt, 0, b"long "))  # no answer
        w.command(cmd.StmtSendLongData(stmt, 0, b"data"))
        param = cmd.Param(ParamType(c.ColumnType.BLOB), long_data=True)
        execute = cmd.StmtExecute(stmt, (param,), flags=c.CURSOR_TYPE_READ_ONLY)
        payload = cmd.encode_command(execute, w.caps, 1)
        assert cmd.decode_stmt_execute(payload, w.caps, 1, long_data=frozenset({0})) == execute
        w.command(execute, num_params=1)
        # With a cursor open, the answer is the metadata only.
        [opened] = w.results(binary=True)
        assert opened.rows == []
        assert opened.end is not None
        assert opened.end.status & c.SERVER_STATUS_CURSOR_EXISTS
        columns = opened.columns
        w.command(cmd.StmtFetch(stmt, 2))
        [first] = w.results(columns=columns)
        assert [row[0] for row in first.rows] == [b"long data!", b"second"]
        w.command(cmd.StmtFetch(stmt, 2))
        [second] = w.results(columns=columns)
        assert [row[0] for row in second.rows] == [b"third"]
        assert second.end is not None
        assert second.end.status & c.SERVER_STATUS_LAST_ROW_SENT
        w.command(cmd.StmtReset(stmt))
        assert isinstance(g.decode_ok(w.read(), w.caps), g.OK)
    finally:
        w.close()


# ---------------------------------------------------------------------- errors, multi-results, other commands


def test_error_carries_sqlstate_and_the_session_goes_on(wire: Wire) -> None:
    [result] = wire.query("SELECT * FROM dbs_no_such_table_anywhere")
    assert result.error is not None
    assert result.error.code == 1146
    assert result.error.sqlstate == "42S02"
    assert "doesn't exist" in result.error.message
    [result] = wire.query("SELEKT 1")
    assert result.error is not None
    assert (result.error.code, result.error.sqlstate) == (1064, "42000")
    wire.command(cmd.StmtPrepare(b"SELECT * FROM dbs_no_such_table_anywhere"))
    reader = res.PrepareReader(wire.caps)
    err = reader.feed(wire.read())
    assert isinstance(err, g.ERR)
    assert err.sqlstate == "42S02"
    assert reader.done
    [result] = wire.query("SELECT 'still here'")
    assert result.rows == [(b"still here",)]


@pytest.mark.parametrize("deprecate_eof", [True, False])
def test_multi_statement_results_flag_more_results(deprecate_eof: bool) -> None:
    w = Wire(deprecate_eof=deprecate_eof)
    try:
        results = w.query("SELECT 1; DO 0; SELECT 2, 'b'; BEGIN; SELECT @@in_transaction")
        assert len(results) == 5
        statuses = [r.end.status for r in results if r.end is not None]
        assert [bool(s & c.SERVER_MORE_RESULTS_EXISTS) for s in statuses] == [True, True, True, True, False]
        assert results[0].rows == [(b"1",)]
        assert results[1].columns == [] and isinstance(results[1].end, g.OK)
        assert results[2].rows == [(b"2", b"b")]
        assert statuses[3] & c.SERVER_STATUS_IN_TRANS
        assert results[4].rows == [(b"1",)]
        [rolled] = w.query("ROLLBACK")
        assert rolled.end is not None
        assert not rolled.end.status & c.SERVER_STATUS_IN_TRANS
        # An error stops the batch.
        results = w.query("SELECT 1; SELECT * FROM dbs_no_such_table_anywhere; SELECT 3")
        assert len(results) == 2
        assert results[1].error is not None
        assert results[1].error.sqlstate == "42S02"
    finally:
        w.close()


def test_ping_init_db_statistics_field_list_set_option_reset(wire: Wire, types_table: str) -> None:
    wire.command(cmd.Ping())
    assert isinstance(g.decode_ok(wire.read(), wire.caps), g.OK)
    wire.command(cmd.InitDB("information_schema"))
    ok = g.decode_ok(wire.read(), wire.caps)
    # Session tracking reports the schema change.
    if ok.status & c.SERVER_SESSION_STATE_CHANGED:
        schemas = [s.fields() for s in ok.session_state if s.type == c.SESSION_TRACK_SCHEMA]
        assert schemas == [("information_schema",)]
    [result] = wire.query("SELECT DATABASE()")
    assert result.rows == [(b"information_schema",)]
    wire.command(cmd.InitDB("dbs_no_such_database"))
    err = g.decode_err(wire.read())
    assert (err.code, err.sqlstate) == (1049, "42000")
    wire.command(cmd.InitDB(DATABASE))
    g.decode_ok(wire.read(), wire.caps)
    wire.command(cmd.Statistics())
    assert b"Uptime:" in wire.read()
    wire.command(cmd.FieldList(types_table, "c_t%"))
    names = []
    while True:
        payload = wire.read()
        if g.is_result_end(payload, wire.caps):
            break
        col = res.decode_column_definition(payload, field_list=True)
        assert res.encode_column_definition(col, field_list=True) == payload
        names.append(col.name)
    assert names == ["c_tiny", "c_ts", "c_time", "c_tinytext", "c_text"]
    wire.command(cmd.SetOption(c.MYSQL_OPTION_MULTI_STATEMENTS_OFF))
    wire.read()  # EOF (or OK)
    [result] = wire.query("SELECT 1; SELECT 2")
    assert result.error is not None
    assert result.error.code == 1064
    wire.command(cmd.SetOption(c.MYSQL_OPTION_MULTI_STATEMENTS_ON))
    wire.read()
    wire.query("SET @dbs_marker = 42")
    wire.command(cmd.ResetConnection())
    assert isinstance(g.decode_ok(wire.read(), wire.caps), g.OK)
    [result] = wire.query("SELECT @dbs_marker")
    assert result.rows == [(None,)]


def test_every_collation_of_the_server_has_its_charset(wire: Wire) -> None:
    from dbsentry.engines.mysql.wire.charsets import charset

    [result] = wire.query("SELECT id, character_set_name FROM information_schema.collations WHERE id IS NOT NULL")
    assert len(result.rows) > 100
    for raw_id, name in result.rows:
        cs = charset(int(raw_id))
        assert cs is not None and cs.name.encode() == name, (raw_id, name)
