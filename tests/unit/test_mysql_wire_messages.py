"""engines/mysql/wire: every message decoded from known bytes (the MySQL/MariaDB protocol
documentation's examples where it has one), encode -> decode identity for every message
and row type, and random bytes into every decoder (only ProtocolError may come out)."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dbsentry.engines.mysql.wire import commands as cmd
from dbsentry.engines.mysql.wire import constants as c
from dbsentry.engines.mysql.wire import generic as g
from dbsentry.engines.mysql.wire import handshake as hs
from dbsentry.engines.mysql.wire import primitives as p
from dbsentry.engines.mysql.wire import results as res
from dbsentry.engines.mysql.wire.constants import ColumnType as T
from dbsentry.engines.mysql.wire.values import (
    DateTime,
    ParamType,
    Time,
    decode_binary_value,
    encode_binary_value,
    value_text,
)
from dbsentry.errors import ProtocolError

P41 = c.CLIENT_PROTOCOL_41


def payload_of(hexdump: str) -> bytes:
    """The payload of one packet written as hex (header included, checked)."""
    raw = bytes.fromhex(hexdump)
    assert int.from_bytes(raw[:3], "little") == len(raw) - 4
    return raw[4:]


# ---------------------------------------------------------------------- known bytes: connection phase


def test_handshake_v10_from_the_documentation() -> None:
    # MySQL 5.5.2-m2 greeting without CLIENT_PLUGIN_AUTH (the documentation's example).
    raw = payload_of(
        "360000000a352e352e322d6d32000b000000" "64764840492d434a00" "fff7" "08" "0200" "0000" "00"
        "00000000000000000000" "2a34647c635a776b345e5d3a00"
    )
    h = hs.decode_handshake(raw)
    assert h.server_version == "5.5.2-m2"
    assert h.connection_id == 11
    assert h.auth_plugin_data == b"dvH@I-CJ*4d|cZwk4^]:"
    assert h.capabilities == 0xF7FF
    assert h.charset == 8
    assert h.status == c.SERVER_STATUS_AUTOCOMMIT
    assert h.auth_plugin_name == ""
    assert hs.encode_handshake(h) == raw


def test_handshake_v10_with_plugin_auth() -> None:
    # A MySQL 5.7.18 greeting captured on the wire.
    raw = payload_of(
        "4e000000" "0a" "352e372e31382d6c6f6700" "127a2900" "33583818445e1648" "00" "ffff" "21" "0200" "ffc1" "15"
        "00000000000000000000" "407911302a41615564776e0d00" "6d7973716c5f6e61746976655f70617373776f726400"
    )
    h = hs.decode_handshake(raw)
    assert h.server_version == "5.7.18-log"
    assert h.connection_id == 0x297A12
    assert h.auth_plugin_data == bytes.fromhex("33583818445e1648" "407911302a41615564776e0d")
    assert len(h.auth_plugin_data) == 20
    assert h.capabilities & c.CLIENT_PLUGIN_AUTH
    assert h.mariadb_capabilities == 0
    assert h.auth_plugin_name == "mysql_native_password"
    assert hs.encode_handshake(h) == raw


def test_mariadb_extended_capabilities_in_the_filler() -> None:
    caps = (c.CLIENT_PROTOCOL_41 | c.CLIENT_SECURE_CONNECTION | c.CLIENT_PLUGIN_AUTH) | (
        c.MARIADB_CLIENT_STMT_BULK_OPERATIONS | c.MARIADB_CLIENT_EXTENDED_METADATA
    )
    h = hs.Handshake("5.5.5-10.11.19-MariaDB", 7, b"n" * 20, caps, 45, c.SERVER_STATUS_AUTOCOMMIT, "mysql_native_password")
    raw = hs.encode_handshake(h)
    assert raw[raw.index(b"\x00", 1) + 1 + 4 + 8 + 1 + 2 + 1 + 2 + 2 + 1 + 6 :][:4] == bytes.fromhex("0c000000")
    assert hs.decode_handshake(raw) == h
    # The same bytes from a MySQL server (CLIENT_MYSQL set) are filler, not capabilities.
    mysql = hs.Handshake("8.0", 7, b"n" * 20, (caps & 0xFFFFFFFF) | c.CLIENT_MYSQL, auth_plugin_name="x")
    assert hs.decode_handshake(hs.encode_handshake(mysql)).mariadb_capabilities == 0


def test_greeting_may_be_an_error() -> None:
    err = hs.decode_server_greeting(b"\xff\x10\x04Too many connections")
    assert err == g.ERR(1040, "Too many connections", None)
    with pytest.raises(ProtocolError, match="unsupported handshake protocol version 9"):
        hs.decode_server_greeting(b"\x09" + b"4.0\x00" + bytes(20))
    with pytest.raises(ProtocolError, match=r"4\.1 fields"):
        hs.decode_handshake(b"\x0a3.23\x00" + bytes(4) + b"12345678\x00\xff\xff")


def test_handshake_response41_from_the_documentation() -> None:
    raw = payload_of(
        "540000018da60f0000000001080000000000000000000000000000000000000000000000"
        "70616d0014ab09eef6bcb1323e61143865c0991d957d75d447746573740"
        "06d7973716c5f6e61746976655f70617373776f726400"
    )
    r = hs.decode_client_handshake(raw)
    assert isinstance(r, hs.HandshakeResponse)
    assert r.capabilities == 0x000FA68D
    assert r.max_packet_size == 16 * 1024 * 1024
    assert r.charset == 8
    assert r.user == "pam"
    assert r.auth_response == bytes.fromhex("ab09eef6bcb1323e61143865c0991d957d75d447")
    assert r.database == "test"
    assert r.auth_plugin_name == "mysql_native_password"
    assert hs.encode_handshake_response(r) == raw


def test_handshake_response_with_attributes_lenenc_auth_and_mariadb_caps() -> None:
    caps = (
        c.CLIENT_PROTOCOL_41 | c.CLIENT_SECURE_CONNECTION | c.CLIENT_PLUGIN_AUTH | c.CLIENT_CONNECT_ATTRS
        | c.CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA | c.CLIENT_CONNECT_WITH_DB | c.MARIADB_CLIENT_PROGRESS
    )  # fmt: skip
    r = hs.HandshakeResponse(
        caps, "alice@example.com", b"t" * 300, database="prod", auth_plugin_name="mysql_clear_password",
        attributes=(("_client_name", "libmariadb"), ("program_name", "mariadb")),
    )  # fmt: skip
    raw = hs.encode_handshake_response(r)
    assert raw[28:32] == b"\x01\x00\x00\x00"  # MariaDB's extended capabilities
    assert hs.decode_client_handshake(raw) == r
    assert r.attribute("program_name") == "mariadb"
    assert r.attribute("missing") is None


def test_ssl_request() -> None:
    s = hs.SSLRequest(c.CLIENT_PROTOCOL_41 | c.CLIENT_SSL | c.CLIENT_SECURE_CONNECTION | c.CLIENT_MYSQL, 1 << 24, 45)
    raw = hs.encode_ssl_request(s)
    assert len(raw) == 32
    assert hs.decode_client_handshake(raw) == s


def test_old_or_short_client_handshakes_are_refused() -> None:
    with pytest.raises(ProtocolError, match=r"older than 4\.1"):
        hs.decode_client_handshake(b"\x85\x00\x00\x00" + bytes(40))
    with pytest.raises(ProtocolError, match="without a user name"):
        hs.decode_client_handshake(p.int4(P41) + bytes(28))
    with pytest.raises(ProtocolError, match="shorter"):
        hs.decode_client_handshake(p.int4(P41) + bytes(10))


def test_auth_switch_more_data_and_replies() -> None:
    raw = b"\xfe" + b"mysql_native_password\x00" + b"0123456789abcdefghij\x00"
    sw = hs.decode_auth_reply(raw, P41)
    assert sw == hs.AuthSwitchRequest("mysql_native_password", b"0123456789abcdefghij\x00")
    assert isinstance(sw, hs.AuthSwitchRequest)
    assert sw.nonce == b"0123456789abcdefghij"
    assert hs.encode_auth_switch_request(sw) == raw
    assert hs.decode_auth_reply(b"\x01\x04", P41) == hs.AuthMoreData(b"\x04")
    assert hs.encode_auth_more_data(hs.AuthMoreData(b"\x03")) == b"\x01\x03"
    assert hs.decode_auth_reply(bytes.fromhex("00000002000000"), P41) == g.OK(status=2)
    with pytest.raises(ProtocolError, match="mysql_old_password"):
        hs.decode_auth_reply(b"\xfe", P41)
    with pytest.raises(ProtocolError, match="unexpected packet during authentication"):
        hs.decode_auth_reply(b"\x07", P41)


# ---------------------------------------------------------------------- known bytes: OK, ERR, EOF


def test_ok_eof_err_from_the_documentation() -> None:
    assert g.decode_ok(payload_of("0700000200000002000000"), P41) == g.OK(0, 0, c.SERVER_STATUS_AUTOCOMMIT, 0)
    assert g.decode_eof(payload_of("05000005fe00000200")) == g.EOF(0, c.SERVER_STATUS_AUTOCOMMIT)
    err_raw = payload_of("17000001ff48042348593030304e6f207461626c65732075736564")
    err = g.decode_err(err_raw)
    assert err == g.ERR(1096, "No tables used", "HY000")
    assert g.encode_err(err) == err_raw


def test_ok_with_session_state() -> None:
    caps = P41 | c.CLIENT_SESSION_TRACK
    state = (
        g.SessionState(c.SESSION_TRACK_SCHEMA, p.lenenc_text("test")),
        g.SessionState(c.SESSION_TRACK_SYSTEM_VARIABLES, p.lenenc_text("autocommit") + p.lenenc_text("OFF")),
    )
    ok = g.OK(0, 0, c.SERVER_SESSION_STATE_CHANGED | c.SERVER_STATUS_IN_TRANS, 0, "", state)
    raw = g.encode_ok(ok, caps)
    assert raw == bytes.fromhex("0000000140" "0000" "00" "18" "0105" "0474657374" "000f" "0a6175746f636f6d6d6974" "034f4646")
    assert g.decode_ok(raw, caps) == ok
    assert [s.fields() for s in ok.session_state] == [("test",), ("autocommit", "OFF")]
    # The server may leave the info out altogether.
    assert g.decode_ok(bytes.fromhex("00010002000000"), caps) == g.OK(1, 0, 2, 0)


def test_result_end_is_told_from_a_row() -> None:
    deprecate = P41 | c.CLIENT_DEPRECATE_EOF
    assert g.is_result_end(b"\xfe\x00\x00\x02\x00\x00\x00", deprecate)
    assert g.is_result_end(b"\xfe\x00\x00\x02\x00", P41)
    assert not g.is_result_end(b"\xfe" + bytes(20), P41)  # a row: 0xFE is an 8-byte length
    assert not g.is_result_end(b"\x00\x00", deprecate)
    assert g.is_eof(b"\xfe\x00\x00\x02\x00")


# ---------------------------------------------------------------------- known bytes: commands


def test_com_query_from_the_documentation() -> None:
    raw = payload_of("210000000373656c65637420404076657273696f6e5f636f6d6d656e74206c696d69742031")
    assert cmd.decode_command(raw, P41) == cmd.Query(b"select @@version_comment limit 1")
    assert cmd.encode_command(cmd.Query(b"select @@version_comment limit 1"), P41) == raw


def test_com_query_with_query_attributes() -> None:
    caps = P41 | c.CLIENT_QUERY_ATTRIBUTES
    raw = bytes.fromhex("03" "01" "01" "00" "01" "fe00" "0474726163" "0461626364") + b"SELECT 1"
    q = cmd.decode_command(raw, caps)
    assert q == cmd.Query(b"SELECT 1", (cmd.Param(ParamType(T.STRING), b"abcd", "trac"),))
    assert cmd.encode_command(q, caps) == raw
    # No attributes: two zero counts... and one parameter set.
    assert cmd.decode_command(b"\x03\x00\x01SELECT 2", caps) == cmd.Query(b"SELECT 2")
    with pytest.raises(ProtocolError, match="without their types"):
        cmd.decode_command(bytes.fromhex("0301010000") + b"SELECT 1", caps)


def test_com_stmt_execute_from_the_documentation() -> None:
    raw = payload_of("12000000170100000000010000000001" "0f0003666f6f")
    head = cmd.decode_command(raw, P41)
    assert head == cmd.StmtExecuteHead(1, 0, 1)
    e = cmd.decode_stmt_execute(raw, P41, 1)
    assert e == cmd.StmtExecute(1, (cmd.Param(ParamType(T.VARCHAR), b"foo"),))
    assert cmd.encode_command(e, P41, 1) == raw


def test_com_stmt_execute_nulls_unsigned_reused_types_and_long_data() -> None:
    types = (ParamType(T.LONGLONG, c.PARAM_UNSIGNED), ParamType(T.VAR_STRING), ParamType(T.BLOB), ParamType(T.TINY))
    e = cmd.StmtExecute(
        9,
        (cmd.Param(types[0], 2**64 - 1), cmd.Param(types[1], None), cmd.Param(types[2], long_data=True), cmd.Param(types[3], -1)),
        new_params_bound=False,
    )
    raw = cmd.encode_command(e, P41, 4)
    assert raw == bytes.fromhex("17090000000001000000" "02" "00" "ffffffffffffffff" "ff")
    assert cmd.decode_stmt_execute(raw, P41, 4, types, frozenset({2})) == e
    with pytest.raises(ProtocolError, match="none were bound before"):
        cmd.decode_stmt_execute(raw, P41, 4)


def test_com_stmt_execute_with_query_attributes() -> None:
    caps = P41 | c.CLIENT_QUERY_ATTRIBUTES
    e = cmd.StmtExecute(
        3,
        (cmd.Param(ParamType(T.LONG), 5), cmd.Param(ParamType(T.VAR_STRING), b"x", "trace_id")),
        flags=c.PARAMETER_COUNT_AVAILABLE,
    )
    raw = cmd.encode_command(e, caps, 1)
    assert raw == bytes.fromhex("17030000000801000000" "02" "00" "01" "0300" "00" "fd00" "0874726163655f6964" "05000000" "0178")
    assert cmd.decode_stmt_execute(raw, caps, 1) == e
    # Attributes on a statement without parameters.
    only = cmd.StmtExecute(4, (cmd.Param(ParamType(T.VAR_STRING), b"y", "a"),), flags=c.PARAMETER_COUNT_AVAILABLE)
    assert cmd.decode_stmt_execute(cmd.encode_command(only, caps, 0), caps, 0) == only


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\x01", cmd.Quit()),
        (b"\x0e", cmd.Ping()),
        (b"\x09", cmd.Statistics()),
        (b"\x1f", cmd.ResetConnection()),
        (b"\x0d", cmd.Debug()),
        (b"\x02test", cmd.InitDB("test")),
        (b"\x16SELECT ?", cmd.StmtPrepare(b"SELECT ?")),
        (b"\x19\x01\x00\x00\x00", cmd.StmtClose(1)),
        (b"\x1a\x02\x00\x00\x00", cmd.StmtReset(2)),
        (b"\x1c\x03\x00\x00\x00\x0a\x00\x00\x00", cmd.StmtFetch(3, 10)),
        (b"\x18\x04\x00\x00\x00\x01\x00data", cmd.StmtSendLongData(4, 1, b"data")),
        (b"\x04users\x00na%", cmd.FieldList("users", "na%")),
        (b"\x0c\x2a\x00\x00\x00", cmd.ProcessKill(42)),
        (b"\x1b\x01\x00", cmd.SetOption(c.MYSQL_OPTION_MULTI_STATEMENTS_OFF)),
        (b"\x12\x04\x00\x00\x00", cmd.OtherCommand(c.Command.BINLOG_DUMP, b"\x04\x00\x00\x00")),
        (b"\x08", cmd.OtherCommand(c.Command.SHUTDOWN, b"")),
    ],
)
def test_simple_commands(raw: bytes, message: cmd.AnyCommand) -> None:
    assert cmd.decode_command(raw, P41) == message
    assert cmd.encode_command(message, P41) == raw


def test_com_change_user() -> None:
    caps = P41 | c.CLIENT_SECURE_CONNECTION | c.CLIENT_PLUGIN_AUTH | c.CLIENT_CONNECT_ATTRS
    u = cmd.ChangeUser("bob", b"\x01" * 20, "prod", 45, "mysql_native_password", (("_os", "Linux"),))
    raw = cmd.encode_command(u, caps)
    assert raw[:5] == b"\x11bob\x00" and raw[5] == 20
    assert cmd.decode_command(raw, caps) == u
    # An old client stops after the database.
    assert cmd.decode_command(b"\x11bob\x00\x00prod\x00", caps) == cmd.ChangeUser("bob", b"", "prod", 0)


def test_trailing_bytes_and_empty_commands_are_refused() -> None:
    with pytest.raises(ProtocolError, match="empty command packet"):
        cmd.decode_command(b"", P41)
    with pytest.raises(ProtocolError, match="trailing bytes in COM_PING"):
        cmd.decode_command(b"\x0ex", P41)
    with pytest.raises(ProtocolError, match="trailing bytes in COM_STMT_CLOSE"):
        cmd.decode_command(b"\x19\x01\x00\x00\x00\x00", P41)


# ---------------------------------------------------------------------- known bytes: result sets


DOC_RESULT = [
    "01000001" "01",
    "27000002" "0364656600000011404076657273696f6e5f636f6d6d656e74000c08001c000000fd00001f0000",
    "05000003" "fe00000200",
    "1d000004" "1c4d7953514c20436f6d6d756e69747920536572766572202847504c29",
    "05000005" "fe00000200",
]


def test_text_result_set_from_the_documentation() -> None:
    reader = res.ResultReader(P41)
    events = [reader.feed(payload_of(h)) for h in DOC_RESULT]
    assert reader.done
    assert events[0] == res.ColumnCount(1)
    col = events[1]
    assert isinstance(col, res.ColumnDefinition)
    assert (col.name, col.type, col.charset, col.length, col.decimals) == ("@@version_comment", T.VAR_STRING, 8, 28, 0x1F)
    assert res.encode_column_definition(col) == payload_of(DOC_RESULT[1])
    assert events[2] == g.EOF(0, 2)
    assert events[3] == res.TextRow((b"MySQL Community Server (GPL)",))
    assert res.encode_text_row(res.TextRow((b"MySQL Community Server (GPL)",))) == payload_of(DOC_RESULT[3])
    assert events[4] == g.EOF(0, 2)
    with pytest.raises(ProtocolError, match="after the end"):
        reader.feed(b"\x00")


def test_text_row_nulls_and_result_with_deprecate_eof_and_more_results() -> None:
    caps = P41 | c.CLIENT_DEPRECATE_EOF
    reader = res.ResultReader(caps)
    col = res.ColumnDefinition("a", T.LONGLONG, flags=c.UNSIGNED_FLAG | c.BINARY_FLAG, charset=63)
    packets = [
        res.encode_column_count(res.ColumnCount(2), caps),
        res.encode_column_definition(col),
        res.encode_column_definition(col),
        res.encode_text_row(res.TextRow((None, b"18446744073709551615"))),
        g.encode_ok(g.OK(status=c.SERVER_MORE_RESULTS_EXISTS, header=0xFE), caps),
        g.encode_ok(g.OK(affected_rows=3), caps),
    ]
    assert packets[3] == b"\xfb\x1418446744073709551615"
    events = [reader.feed(pk) for pk in packets]
    assert events[3] == res.TextRow((None, b"18446744073709551615"))
    assert events[4] == g.OK(status=c.SERVER_MORE_RESULTS_EXISTS, header=0xFE)
    assert events[5] == g.OK(affected_rows=3)
    assert reader.done
    assert col.unsigned and col.binary


def test_binary_row_from_the_documentation() -> None:
    raw = payload_of("09000004" "0000" "06666f6f626172")
    types = [(int(T.VAR_STRING), False)]
    assert res.decode_binary_row(raw, types) == res.BinaryRow((b"foobar",))
    assert res.encode_binary_row(res.BinaryRow((b"foobar",)), types) == raw


def test_binary_row_null_bitmap_has_offset_two() -> None:
    types = [(int(T.TINY), False)] * 7
    row = res.BinaryRow((None, 1, None, None, None, None, 2))
    raw = res.encode_binary_row(row, types)
    # bits 2, 4, 5, 6, 7 -> 0b11110100; bit 8 -> 0 (value 2 is not NULL)
    assert raw == b"\x00\xf4\x00\x01\x02"
    assert res.decode_binary_row(raw, types) == row


@pytest.mark.parametrize(
    ("type_", "unsigned", "wire", "value"),
    [
        (T.DATETIME, False, "0bda070a11131b1e01000000", DateTime(2010, 10, 17, 19, 27, 30, 1)),
        (T.DATETIME, False, "07da070a11131b1e", DateTime(2010, 10, 17, 19, 27, 30)),
        (T.DATE, False, "04da070a11", DateTime(2010, 10, 17)),
        (T.TIMESTAMP, False, "00", DateTime()),
        (T.TIME, False, "0c0178000000131b1e01000000", Time(True, 120, 19, 27, 30, 1)),
        (T.TIME, False, "080178000000131b1e", Time(True, 120, 19, 27, 30)),
        (T.TIME, False, "00", Time()),
        (T.DOUBLE, False, "0000000000c04140", 35.5),
        (T.FLOAT, False, "00000e42", 35.5),
        (T.LONGLONG, False, "0100000000000000", 1),
        (T.LONGLONG, True, "ffffffffffffffff", 2**64 - 1),
        (T.LONGLONG, False, "ffffffffffffffff", -1),
        (T.LONG, False, "01000000", 1),
        (T.INT24, True, "ffffff00", 2**24 - 1),
        (T.SHORT, False, "0100", 1),
        (T.YEAR, True, "e707", 2023),
        (T.TINY, False, "ff", -1),
        (T.TINY, True, "ff", 255),
        (T.NEWDECIMAL, False, "052d312e3530", "-1.50"),
        (T.JSON, False, "027b7d", b"{}"),
        (T.BIT, False, "020003", b"\x00\x03"),
        (T.GEOMETRY, False, "00", b""),
    ],
)
def test_binary_values_from_the_documentation(type_: int, unsigned: bool, wire: str, value: Any) -> None:
    raw = bytes.fromhex(wire)
    r = p.Reader(raw)
    assert decode_binary_value(r, type_, unsigned) == value
    assert r.at_end()
    assert encode_binary_value(type_, unsigned, value) == raw


def test_date_and_time_values_convert_to_python() -> None:
    assert DateTime(2010, 10, 17, 19, 27, 30, 1).to_python() == dt.datetime(2010, 10, 17, 19, 27, 30, 1)
    assert DateTime().to_python() is None
    assert str(DateTime()) == "0000-00-00"
    assert str(DateTime(2024, 2, 29, 1, 2, 3, 4)) == "2024-02-29 01:02:03.000004"
    assert DateTime.of(dt.date(2024, 2, 29)) == DateTime(2024, 2, 29)
    assert Time(True, 1, 2, 3, 4, 5).to_python() == -dt.timedelta(days=1, hours=2, minutes=3, seconds=4, microseconds=5)
    assert Time.of(dt.timedelta(hours=-1, seconds=-1)) == Time(True, 0, 1, 0, 1)
    assert str(Time(True, 34, 22, 59, 59)) == "-838:59:59"
    assert encode_binary_value(T.DATETIME, False, dt.datetime(2020, 1, 1)) == bytes.fromhex("04e4070101")
    assert value_text(b"caf\xc3\xa9") == "café"
    assert value_text(None) is None
    assert value_text(Time(False, 0, 1, 2, 3)) == "01:02:03"


@pytest.mark.parametrize(
    ("type_", "wire", "message"),
    [
        (T.DATETIME, "05", "invalid length 5 of a DATETIME value"),
        (T.TIME, "07", "invalid length 7 of a TIME value"),
        (T.TIME, "080200000000000000", "invalid sign"),
        (T.LONG, "0102", "shorter"),
        (T.BLOB, "fd000001", "shorter"),
        (T.TYPED_ARRAY, "00", "unsupported type TYPED_ARRAY"),
        (99, "00", "unsupported type 99"),
    ],
)
def test_bad_binary_values(type_: int, wire: str, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        decode_binary_value(p.Reader(bytes.fromhex(wire)), type_, False)


def test_stmt_prepare_ok_from_the_documentation_and_its_reader() -> None:
    raw = payload_of("0c000001" "00010000000100020000" "0000")
    ok = res.decode_stmt_prepare_ok(raw, P41)
    assert ok == res.StmtPrepareOK(1, 1, 2, 0)
    assert res.encode_stmt_prepare_ok(ok, P41) == raw
    reader = res.PrepareReader(P41)
    param = res.encode_column_definition(res.ColumnDefinition("?", T.VAR_STRING))
    column = res.encode_column_definition(res.ColumnDefinition("a", T.LONG))
    eof = g.encode_eof(g.EOF())
    for packet in (raw, param, param, eof, column):
        reader.feed(packet)
        assert not reader.done
    reader.feed(eof)
    assert reader.done
    assert [col.name for col in reader.params] == ["?", "?"]
    assert [col.name for col in reader.columns] == ["a"]
    # Without EOFs, and with an error.
    reader = res.PrepareReader(P41 | c.CLIENT_DEPRECATE_EOF)
    for packet in (raw, param, param, column):
        reader.feed(packet)
    assert reader.done
    reader = res.PrepareReader(P41)
    assert isinstance(reader.feed(g.encode_err(g.ERR(1064, "syntax", "42000"))), g.ERR)
    assert reader.done


def test_column_definition_with_field_list_default_and_mariadb_extended_metadata() -> None:
    col = res.ColumnDefinition("n", T.LONG, "db", "t", "t", "n", 63, 11, c.NOT_NULL_FLAG, 0, default=b"0")
    raw = res.encode_column_definition(col, field_list=True)
    assert raw.endswith(b"\x00\x00\x010")
    assert res.decode_column_definition(raw, field_list=True) == col
    ext = res.ColumnDefinition("j", T.BLOB, extended=b"\x00\x04json")
    raw = res.encode_column_definition(ext, extended_metadata=True)
    assert res.decode_column_definition(raw, extended_metadata=True) == ext
    with pytest.raises(ProtocolError, match="fixed fields of 11 bytes"):
        res.decode_column_definition(bytes.fromhex("03646566" "0000000000" "0b") + bytes(11))


@pytest.mark.parametrize("deprecate_eof", [True, False])
def test_execute_that_opens_a_cursor_ends_after_the_metadata(deprecate_eof: bool) -> None:
    caps = P41 | (c.CLIENT_DEPRECATE_EOF if deprecate_eof else 0)
    status = c.SERVER_STATUS_AUTOCOMMIT | c.SERVER_STATUS_CURSOR_EXISTS
    col = res.ColumnDefinition("v", T.LONGLONG, charset=63)
    end = g.encode_ok(g.OK(status=status, header=0xFE), caps) if deprecate_eof else g.encode_eof(g.EOF(0, status))
    reader = res.ResultReader(caps, binary=True)
    for packet in (res.encode_column_count(res.ColumnCount(1), caps), res.encode_column_definition(col), end):
        assert not reader.done
        reader.feed(packet)
    assert reader.done
    assert reader.columns == [col]
    # COM_STMT_FETCH: binary rows of those columns, then the end.
    fetch = res.ResultReader(caps, columns=[col], cursor=True)
    assert fetch.feed(res.encode_binary_row(res.BinaryRow((7,)), [(int(T.LONGLONG), False)])) == res.BinaryRow((7,))
    last = c.SERVER_STATUS_AUTOCOMMIT | c.SERVER_STATUS_LAST_ROW_SENT
    fetch.feed(g.encode_ok(g.OK(status=last, header=0xFE), caps) if deprecate_eof else g.encode_eof(g.EOF(0, last)))
    assert fetch.done


def test_local_infile_request_and_its_answer() -> None:
    reader = res.ResultReader(P41)
    assert reader.feed(b"\xfb/etc/passwd") == res.LocalInfileRequest("/etc/passwd")
    assert reader.state == "infile"
    assert res.encode_local_infile_request(res.LocalInfileRequest("/etc/passwd")) == b"\xfb/etc/passwd"
    assert reader.feed(g.encode_ok(g.OK(affected_rows=2), P41)) == g.OK(affected_rows=2)
    assert reader.done


def test_column_count_caps() -> None:
    with pytest.raises(ProtocolError, match="invalid column count 4097"):
        res.decode_column_count(p.lenenc_int(4097), P41)
    with pytest.raises(ProtocolError, match="invalid column count"):
        res.decode_column_count(b"\xfe" + p.int8(2**63), P41)
    assert res.decode_column_count(b"\x02\x01", P41 | c.CLIENT_OPTIONAL_RESULTSET_METADATA) == res.ColumnCount(2, 1)
    assert res.decode_column_count(b"\x02\x00", P41 | c.MARIADB_CLIENT_CACHE_METADATA) == res.ColumnCount(2, 0)
    reader = res.ResultReader(P41 | c.MARIADB_CLIENT_CACHE_METADATA)
    with pytest.raises(ProtocolError, match="without metadata"):
        reader.feed(b"\x02\x00")


def test_huge_auth_response_is_refused() -> None:
    caps = P41 | c.CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA | c.CLIENT_SECURE_CONNECTION
    raw = p.int4(caps) + p.int4(0) + b"\x21" + bytes(23) + b"u\x00" + p.lenenc_int(1 << 20) + bytes(100)
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        hs.decode_client_handshake(raw)


# ---------------------------------------------------------------------- strategies

text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=20)
u8 = st.integers(0, 255)
u16 = st.integers(0, 2**16 - 1)
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)

_INT_BITS = {T.TINY: 8, T.SHORT: 16, T.YEAR: 16, T.INT24: 32, T.LONG: 32, T.LONGLONG: 64}
_BYTE_TYPES = [T.VARCHAR, T.BIT, T.JSON, T.ENUM, T.SET, T.TINY_BLOB, T.MEDIUM_BLOB, T.LONG_BLOB, T.BLOB,
               T.VAR_STRING, T.STRING, T.GEOMETRY, T.VECTOR]  # fmt: skip
datetimes = st.builds(DateTime, st.integers(0, 65535), u8, u8, u8, u8, u8, u32)
times = st.builds(Time, st.booleans(), u32, u8, u8, u8, u32)
decimals = st.from_regex(r"-?[0-9]{1,30}(\.[0-9]{1,20})?", fullmatch=True)


@st.composite
def typed_value(draw: st.DrawFn, nullable: bool = True) -> tuple[ParamType, Any]:
    type_ = draw(st.sampled_from([*_INT_BITS, T.FLOAT, T.DOUBLE, T.DECIMAL, T.NEWDECIMAL, T.DATE, T.DATETIME,
                                  T.TIMESTAMP, T.NEWDATE, T.TIME, T.NULL, *_BYTE_TYPES]))  # fmt: skip
    unsigned = draw(st.booleans())
    ptype = ParamType(type_, c.PARAM_UNSIGNED if unsigned else 0)
    if type_ == T.NULL or (nullable and draw(st.integers(0, 5)) == 0):
        return ptype, None
    if type_ in _INT_BITS:
        bits = _INT_BITS[type_]
        lo, hi = (0, 2**bits - 1) if unsigned else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
        return ptype, draw(st.integers(lo, hi))
    if type_ == T.FLOAT:
        return ptype, draw(st.floats(width=32, allow_nan=False))
    if type_ == T.DOUBLE:
        return ptype, draw(st.floats(allow_nan=False))
    if type_ in (T.DECIMAL, T.NEWDECIMAL):
        return ptype, draw(decimals)
    if type_ in (T.DATE, T.DATETIME, T.TIMESTAMP, T.NEWDATE):
        return ptype, draw(datetimes)
    if type_ == T.TIME:
        return ptype, draw(times)
    return ptype, draw(st.binary(max_size=40))


def caps_with(required: int = 0) -> st.SearchStrategy[int]:
    """Capabilities as a 64-bit int: MariaDB's extended half only when CLIENT_MYSQL is clear."""

    def build(low: int, ext: int) -> int:
        low |= required
        return low if low & c.CLIENT_MYSQL else low | ext << 32

    return st.builds(build, u32, u32)


@st.composite
def handshakes(draw: st.DrawFn) -> hs.Handshake:
    caps = draw(caps_with())
    if caps & c.CLIENT_SECURE_CONNECTION:
        size = draw(st.integers(20, 40)) if caps & c.CLIENT_PLUGIN_AUTH else 20
    else:
        size = 8
    plugin = draw(text) if caps & c.CLIENT_PLUGIN_AUTH else ""
    return hs.Handshake(draw(text), draw(u32), draw(st.binary(min_size=size, max_size=size)), caps, draw(u8), draw(u16), plugin)


@st.composite
def handshake_responses(draw: st.DrawFn) -> hs.HandshakeResponse:
    caps = draw(caps_with(c.CLIENT_PROTOCOL_41))
    if caps & c.CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA:
        auth = draw(st.binary(max_size=300))
    elif caps & c.CLIENT_SECURE_CONNECTION:
        auth = draw(st.binary(max_size=255))
    else:
        auth = draw(st.binary(max_size=40).filter(lambda b: b"\x00" not in b))
    return hs.HandshakeResponse(
        caps,
        draw(text),
        auth,
        draw(u32),
        draw(u8),
        draw(text) if caps & c.CLIENT_CONNECT_WITH_DB else "",
        draw(text) if caps & c.CLIENT_PLUGIN_AUTH else "",
        tuple(draw(st.lists(st.tuples(text, text), max_size=5))) if caps & c.CLIENT_CONNECT_ATTRS else (),
        draw(u8) if caps & c.CLIENT_ZSTD_COMPRESSION_ALGORITHM else 0,
    )


session_states = st.lists(st.builds(g.SessionState, u8, st.binary(max_size=20)), max_size=4).map(tuple)


@st.composite
def oks(draw: st.DrawFn, caps: int) -> g.OK:
    status = draw(u16)
    state = draw(session_states) if caps & c.CLIENT_SESSION_TRACK and status & c.SERVER_SESSION_STATE_CHANGED else ()
    return g.OK(draw(u64), draw(u64), status, draw(u16), draw(text), state, draw(st.sampled_from([0x00, 0xFE])))


params = st.builds(lambda tv, name, long: cmd.Param(tv[0], None if long else tv[1], name, long and tv[1] is not None),
                   typed_value(), text, st.booleans())  # fmt: skip


@st.composite
def executes(draw: st.DrawFn) -> tuple[cmd.StmtExecute, int, int]:
    attrs = draw(st.booleans())
    caps = P41 | (c.CLIENT_QUERY_ATTRIBUTES if attrs else 0)
    ps = draw(st.lists(params, max_size=12))
    if not attrs:
        ps = [cmd.Param(x.type, x.value, "", x.long_data) for x in ps]
    flags = draw(st.sampled_from([0, 1, 2, 4, c.PARAMETER_COUNT_AVAILABLE]))
    num = draw(st.integers(0, len(ps))) if attrs else len(ps)
    if attrs and num == 0 and ps:
        flags |= c.PARAMETER_COUNT_AVAILABLE
    return cmd.StmtExecute(draw(u32), tuple(ps), flags, draw(u32), draw(st.booleans()) if ps else True), caps, num


@st.composite
def commands_(draw: st.DrawFn) -> tuple[cmd.AnyCommand, int]:
    caps = draw(caps_with(P41))
    no_nul = st.binary(max_size=30).filter(lambda b: b"\x00" not in b)
    change_auth = draw(st.binary(max_size=255) if caps & c.CLIENT_SECURE_CONNECTION else no_nul)
    attrs_q = ()
    if caps & c.CLIENT_QUERY_ATTRIBUTES:
        attrs_q = tuple(draw(st.lists(params.filter(lambda x: not x.long_data), max_size=5)))
    options = [
        cmd.Quit(), cmd.Ping(), cmd.Statistics(), cmd.ResetConnection(), cmd.Debug(),
        cmd.InitDB(draw(text)),
        cmd.Query(draw(st.binary(max_size=60)), attrs_q, draw(u8) if caps & c.CLIENT_QUERY_ATTRIBUTES else 1),
        cmd.FieldList(draw(text), draw(text)),
        cmd.ChangeUser(
            draw(text), change_auth, draw(text), draw(u16),
            draw(text) if caps & c.CLIENT_PLUGIN_AUTH else "",
            tuple(draw(st.lists(st.tuples(text, text), max_size=3))) if caps & c.CLIENT_CONNECT_ATTRS else (),
        ),
        cmd.ProcessKill(draw(u32)), cmd.SetOption(draw(u16)), cmd.StmtPrepare(draw(st.binary(max_size=60))),
        cmd.StmtExecuteHead(draw(u32), draw(u8), draw(u32)),
        cmd.StmtSendLongData(draw(u32), draw(u16), draw(st.binary(max_size=60))),
        cmd.StmtClose(draw(u32)), cmd.StmtReset(draw(u32)), cmd.StmtFetch(draw(u32), draw(u32)),
        cmd.OtherCommand(draw(st.sampled_from([0x00, 0x05, 0x06, 0x07, 0x08, 0x0A, 0x12, 0x1D, 0x1E, 0x20, 0xFA])),
                         draw(st.binary(max_size=20))),
    ]  # fmt: skip
    return draw(st.sampled_from(options)), caps


@st.composite
def column_definitions(draw: st.DrawFn, field_list: bool = False, extended: bool = False) -> res.ColumnDefinition:
    return res.ColumnDefinition(
        draw(text), draw(u8), draw(text), draw(text), draw(text), draw(text), draw(u16), draw(u32), draw(u16),
        draw(u8), draw(text), draw(st.one_of(st.none(), st.binary(max_size=20))) if field_list else None,
        draw(st.binary(max_size=20)) if extended else None,
    )  # fmt: skip


# ---------------------------------------------------------------------- round trips


@given(handshakes())
def test_handshake_round_trip(h: hs.Handshake) -> None:
    assert hs.decode_handshake(hs.encode_handshake(h)) == h
    assert hs.decode_server_greeting(hs.encode_handshake(h)) == h


@given(handshake_responses())
def test_handshake_response_round_trip(r: hs.HandshakeResponse) -> None:
    assert hs.decode_client_handshake(hs.encode_handshake_response(r)) == r


@given(caps_with(c.CLIENT_PROTOCOL_41 | c.CLIENT_SSL), u32, u8)
def test_ssl_request_round_trip(caps: int, max_packet: int, charset: int) -> None:
    s = hs.SSLRequest(caps, max_packet, charset)
    assert hs.decode_client_handshake(hs.encode_ssl_request(s)) == s


@given(text, st.binary(max_size=60), st.binary(max_size=60))
def test_auth_packets_round_trip(plugin: str, data: bytes, more: bytes) -> None:
    sw = hs.AuthSwitchRequest(plugin, data)
    assert hs.decode_auth_reply(hs.encode_auth_switch_request(sw), P41) == sw
    md = hs.AuthMoreData(more)
    assert hs.decode_auth_reply(hs.encode_auth_more_data(md), P41) == md


@given(st.data(), st.sampled_from([P41, P41 | c.CLIENT_SESSION_TRACK, P41 | c.CLIENT_DEPRECATE_EOF | c.CLIENT_SESSION_TRACK]))
def test_ok_round_trip(data: st.DataObject, caps: int) -> None:
    ok = data.draw(oks(caps))
    assert g.decode_ok(g.encode_ok(ok, caps), caps) == ok


@given(u16, text, st.one_of(st.none(), st.text(st.characters(codec="ascii"), min_size=5, max_size=5)))
def test_err_round_trip(code: int, message: str, sqlstate: str | None) -> None:
    if sqlstate is None and message.startswith("#"):
        message = " " + message
    err = g.ERR(code, message, sqlstate)
    assert g.decode_err(g.encode_err(err)) == err


@given(u16, u16)
def test_eof_round_trip(warnings: int, status: int) -> None:
    eof = g.EOF(warnings, status)
    raw = g.encode_eof(eof)
    assert g.decode_eof(raw) == eof
    assert g.is_eof(raw) and g.is_result_end(raw, P41)


@given(commands_())
def test_command_round_trip(case: tuple[cmd.AnyCommand, int]) -> None:
    command, caps = case
    assert cmd.decode_command(cmd.encode_command(command, caps), caps) == command


@given(executes())
def test_stmt_execute_round_trip(case: tuple[cmd.StmtExecute, int, int]) -> None:
    e, caps, num = case
    raw = cmd.encode_command(e, caps, num)
    long_data = frozenset(i for i, x in enumerate(e.params) if x.long_data)
    assert cmd.decode_stmt_execute(raw, caps, num, e.types, long_data, e.names) == e
    assert cmd.decode_command(raw, caps) == cmd.StmtExecuteHead(e.statement_id, e.flags, e.iteration_count)


@given(st.data(), st.booleans(), st.booleans())
def test_column_definition_round_trip(data: st.DataObject, field_list: bool, extended: bool) -> None:
    col = data.draw(column_definitions(field_list, extended))
    raw = res.encode_column_definition(col, field_list=field_list, extended_metadata=extended)
    assert res.decode_column_definition(raw, field_list=field_list, extended_metadata=extended) == col


@given(st.integers(1, res.MAX_COLUMNS), u8, st.booleans())
def test_column_count_round_trip(count: int, follows: int, optional: bool) -> None:
    caps = P41 | (c.CLIENT_OPTIONAL_RESULTSET_METADATA if optional else 0)
    cc = res.ColumnCount(count, follows if optional else 1)
    assert res.decode_column_count(res.encode_column_count(cc, caps), caps) == cc


@given(u32, u16, u16, u16, u8, st.booleans())
def test_stmt_prepare_ok_round_trip(stmt: int, cols: int, ps: int, warnings: int, follows: int, optional: bool) -> None:
    caps = P41 | (c.CLIENT_OPTIONAL_RESULTSET_METADATA if optional else 0)
    ok = res.StmtPrepareOK(stmt, cols, ps, warnings, follows if optional else 1)
    assert res.decode_stmt_prepare_ok(res.encode_stmt_prepare_ok(ok, caps), caps) == ok


@given(st.lists(st.one_of(st.none(), st.binary(max_size=300)), min_size=1, max_size=20))
def test_text_row_round_trip(values: list[bytes | None]) -> None:
    row = res.TextRow(tuple(values))
    assert res.decode_text_row(res.encode_text_row(row), len(values)) == row


@given(st.lists(typed_value(), min_size=1, max_size=20))
def test_binary_row_round_trip(typed: list[tuple[ParamType, Any]]) -> None:
    types = [(pt.type, pt.unsigned) for pt, _ in typed]
    row = res.BinaryRow(tuple(v for _, v in typed))
    assert res.decode_binary_row(res.encode_binary_row(row, types), types) == row


@given(typed_value(nullable=False))
def test_binary_value_round_trip(tv: tuple[ParamType, Any]) -> None:
    ptype, value = tv
    r = p.Reader(encode_binary_value(ptype.type, ptype.unsigned, value))
    assert decode_binary_value(r, ptype.type, ptype.unsigned) == value
    assert r.at_end()


@given(text)
def test_local_infile_round_trip(name: str) -> None:
    req = res.LocalInfileRequest(name)
    assert res.decode_local_infile_request(res.encode_local_infile_request(req)) == req


# ---------------------------------------------------------------------- random bytes

Decoder = Callable[[bytes], object]
ALL_CAPS = 0xFFFFFFFF & ~c.CLIENT_MYSQL | (0xFF << 32)
TYPES = [(int(t), u) for t in (T.TINY, T.LONGLONG, T.DOUBLE, T.NEWDECIMAL, T.DATETIME, T.TIME, T.BLOB, T.FLOAT) for u in (False, True)]


def _result_stream(data: bytes, caps: int, binary: bool) -> None:
    reader = res.ResultReader(caps, binary=binary)
    for i in range(0, len(data), 7):
        if reader.done:
            break
        reader.feed(data[i : i + 7] or b"\x00")


DECODERS: list[Decoder] = [
    hs.decode_handshake,
    hs.decode_server_greeting,
    hs.decode_client_handshake,
    lambda b: hs.decode_auth_reply(b, ALL_CAPS),
    lambda b: hs.decode_auth_reply(b, P41),
    lambda b: g.decode_ok(b, ALL_CAPS),
    lambda b: g.decode_ok(b, P41),
    lambda b: g.decode_err(b),
    lambda b: g.decode_eof(b),
    lambda b: cmd.decode_command(b, ALL_CAPS),
    lambda b: cmd.decode_command(b, P41 | c.CLIENT_SECURE_CONNECTION),
    lambda b: cmd.decode_stmt_execute(b, ALL_CAPS, 3),
    lambda b: cmd.decode_stmt_execute(b, P41, 2, [ParamType(T.LONG), ParamType(T.DATETIME)]),
    lambda b: res.decode_column_definition(b),
    lambda b: res.decode_column_definition(b, field_list=True, extended_metadata=True),
    lambda b: res.decode_column_count(b, ALL_CAPS),
    lambda b: res.decode_text_row(b, 3),
    lambda b: res.decode_binary_row(b, TYPES),
    lambda b: res.decode_stmt_prepare_ok(b, ALL_CAPS),
    lambda b: [s.fields() for s in g.decode_ok(b, ALL_CAPS).session_state],
    lambda b: _result_stream(b, P41, False),
    lambda b: _result_stream(b, ALL_CAPS, True),
    lambda b: res.PrepareReader(ALL_CAPS).feed(b),
    lambda b: decode_binary_value(p.Reader(b[1:]), b[0] if b else 0, True),
]

fuzz = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@fuzz
@given(data=st.binary(max_size=300), decoder=st.sampled_from(DECODERS))
def test_random_bytes_never_crash_a_decoder(data: bytes, decoder: Decoder) -> None:
    with contextlib.suppress(ProtocolError):
        decoder(data)


# Payloads shaped like real ones reach deeper than noise: a valid message, then a bit
# flipped, a byte changed or the tail cut.
valid_payloads = st.one_of(
    handshakes().map(hs.encode_handshake),
    handshake_responses().map(hs.encode_handshake_response),
    commands_().map(lambda case: cmd.encode_command(case[0], case[1])),
    executes().map(lambda case: cmd.encode_command(case[0], case[1], case[2])),
    oks(ALL_CAPS).map(lambda ok: g.encode_ok(ok, ALL_CAPS)),
    st.lists(typed_value(), min_size=1, max_size=8).map(lambda tv: res.encode_binary_row(res.BinaryRow(tuple(v for _, v in tv)), [(pt.type, pt.unsigned) for pt, _ in tv])),
)


@fuzz
@given(payload=valid_payloads, pos=st.integers(0, 10_000), byte=u8, cut=st.booleans(), decoder=st.sampled_from(DECODERS))
def test_mutated_payloads_never_crash_a_decoder(payload: bytes, pos: int, byte: int, cut: bool, decoder: Decoder) -> None:
    if payload:
        i = pos % len(payload)
        payload = payload[:i] if cut else payload[:i] + bytes((byte,)) + payload[i + 1 :]
    with contextlib.suppress(ProtocolError):
        decoder(payload)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\x03", "packet is shorter than its value"),
        (b"\x03\x01", "packet is shorter than its value"),
        (b"\x03\x01\x01", "packet is shorter than its NULL bitmap"),
        (b"\x03\x01\x01\x00\x00SELECT 1", "parameters sent without their types, and none were bound before"),
        (b"\x03\x01\x01\x00\x05", "invalid new-params-bound flag 5"),
        (b"\x03\x01\x01\x00\x01\xfe\x00\x05ab", "packet is shorter than its parameter name"),
        (b"\x03\x01\x01\x00\x01\x03\x00\x01a\x01\x02", "packet is shorter than its integer value"),
        # a huge count costs nothing: its NULL bitmap alone would outgrow the packet
        (b"\x03\xfe" + (1 << 40).to_bytes(8, "little") + b"\x01", "packet is shorter than its NULL bitmap"),
    ],
)
def test_malformed_query_attributes_are_refused_with_exact_errors(raw: bytes, reason: str) -> None:
    caps = P41 | c.CLIENT_QUERY_ATTRIBUTES
    with pytest.raises(cmd.MalformedAttributes) as err:
        cmd.decode_command(raw, caps)
    assert str(err.value) == f"COM_QUERY: the query attributes cannot be read: {reason}"
    assert isinstance(err.value, ProtocolError)
    # without the capability the same bytes are plain SQL text
    assert cmd.decode_command(raw, P41) == cmd.Query(raw[1:])


def test_query_attributes_stripped_for_a_server_without_them() -> None:
    caps = P41 | c.CLIENT_QUERY_ATTRIBUTES
    q = cmd.Query(b"SELECT 1", (cmd.Param(ParamType(T.VAR_STRING), b"00-ab-01", "traceparent"), cmd.Param(ParamType(T.NULL), None, "n")))
    raw = cmd.encode_command(q, caps)
    assert cmd.decode_command(raw, caps) == q
    assert cmd.encode_command(cmd.Query(cmd.decode_command(raw, caps).sql), P41) == b"\x03SELECT 1"
