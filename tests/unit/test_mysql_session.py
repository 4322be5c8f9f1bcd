"""The MySQL session state machine, without sockets: events in, commands out."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest

from dbsentry.audit.records import CompletionRecord, SessionEvent, StatementRecord
from dbsentry.config import ConfigError, parse_config
from dbsentry.engines.mysql.session import commands as c
from dbsentry.engines.mysql.session import events as e
from dbsentry.engines.mysql.session.governance import MySQLGovernor
from dbsentry.engines.mysql.session.literals import MYSQL_LITERALS, constant_value
from dbsentry.engines.mysql.session.session import (
    OFFERED,
    TRANSITIONS,
    ClientInfo,
    Session,
    SessionStateError,
    State,
)
from dbsentry.engines.mysql.session.upstream import UpstreamLogin
from dbsentry.engines.mysql.wire import auth
from dbsentry.engines.mysql.wire import constants as k
from dbsentry.engines.mysql.wire import generic as g
from dbsentry.engines.mysql.wire import handshake as hs
from dbsentry.engines.mysql.wire import results as res
from dbsentry.engines.mysql.wire.packets import PacketSplitter, encode_packet
from dbsentry.identity.model import Identity
from dbsentry.policy import default_policy

ALICE = Identity("alice@example.com", frozenset({"eng"}), "human", "tok1", "token")
CAPS = (
    k.CLIENT_LONG_PASSWORD | k.CLIENT_PROTOCOL_41 | k.CLIENT_TRANSACTIONS | k.CLIENT_SECURE_CONNECTION
    | k.CLIENT_PLUGIN_AUTH | k.CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA | k.CLIENT_CONNECT_WITH_DB
    | k.CLIENT_DEPRECATE_EOF | k.CLIENT_MULTI_STATEMENTS | k.CLIENT_MULTI_RESULTS
)


def config(tmp_path: Path, require_tls: bool = False) -> typing.Any:
    return parse_config(
        {
            "state_dir": str(tmp_path),
            "listen": {"mysql": "127.0.0.1:3307"},
            "tls": {"require_client_tls": require_tls},
            "connections": {
                "prod": {"engine": "mysql", "database": "shop", "user": "app", "environment": "production"},
                "pg": {"database": "x", "user": "y"},
            },
        },
        tmp_path,
    )


def packets(commands: list[c.Command], caps: int = CAPS) -> list[bytes]:
    data = b"".join(cmd.data for cmd in commands if isinstance(cmd, c.SendClient))
    splitter = PacketSplitter(first_seq=None)
    out = []
    for packet in splitter.feed(data):
        out.append(packet.payload)
        splitter.expect(None)
    return out


def upstream_sent(commands: list[c.Command]) -> list[bytes]:
    return [cmd.data for cmd in commands if isinstance(cmd, c.SendUpstream)]


def answer(payloads: list[bytes], first: int = 1) -> e.UpstreamData:
    data = b""
    seq = first
    for p in payloads:
        chunk, seq = encode_packet(p, seq)
        data += chunk
    return e.UpstreamData(data)


def settings_answer(sql_mode: bytes = b"STRICT_TRANS_TABLES", charset: bytes = b"utf8mb4") -> e.UpstreamData:
    col = res.ColumnDefinition("@@sql_mode", k.ColumnType.VAR_STRING, charset=45, length=100)
    return answer([
        res.encode_column_count(res.ColumnCount(2), CAPS),
        res.encode_column_definition(col),
        res.encode_column_definition(col),
        res.encode_text_row(res.TextRow((sql_mode, charset))),
        g.encode_ok(g.OK(status=k.SERVER_STATUS_AUTOCOMMIT, header=0xFE), CAPS),
    ])


def logged_in(tmp_path: Path, database: str = "prod") -> tuple[Session, list[c.Command]]:
    from dbsentry.audit.config import AuditConfig

    s = Session(config(tmp_path), ClientInfo("10.0.0.1:5000"), 7, governor=MySQLGovernor(default_policy), audit_config=AuditConfig(durability="write"))
    greeting = hs.decode_handshake(PacketSplitter().feed(s.greeting())[0].payload)
    assert greeting.connection_id == 7 and greeting.auth_plugin_name == "caching_sha2_password"
    assert greeting.capabilities == OFFERED and not greeting.capabilities & k.CLIENT_COMPRESS
    scramble = auth.caching_sha2_scramble("tok", greeting.auth_plugin_data)
    response = hs.HandshakeResponse(CAPS, "alice@example.com", scramble, database=database, auth_plugin_name="caching_sha2_password")
    out = s.handle(e.ClientData(encode_packet(hs.encode_handshake_response(response), 1)[0]))
    assert packets(out) == [b"\x01\x04"]  # perform full authentication
    # no TLS: the client asks for the key... which the proxy does not have here
    out = s.handle(e.ClientData(encode_packet(b"\x02", 3)[0]))
    err = g.decode_err(packets(out)[0])
    assert (err.code, err.sqlstate) == (1045, "28000")
    assert "connect with TLS" in err.message
    assert s.state is State.CLOSED
    # again, over TLS: the token in the clear
    s = Session(config(tmp_path), ClientInfo("10.0.0.1:5000"), 7, governor=MySQLGovernor(default_policy), audit_config=AuditConfig(durability="write"))
    s.greeting()
    out = s.handle(e.ClientData(encode_packet(hs.encode_ssl_request(hs.SSLRequest(CAPS | k.CLIENT_SSL)), 1)[0] + b"\x16\x03\x01"))
    assert out == [c.StartClientTLS(b"\x16\x03\x01")]
    assert s.handle(e.ClientTLSStarted("TLSv1.3")) == []
    out = s.handle(e.ClientData(encode_packet(hs.encode_handshake_response(dataclasses.replace(response, capabilities=CAPS | k.CLIENT_SSL)), 2)[0]))
    assert packets(out) == [b"\x01\x04"]
    out = s.handle(e.ClientData(encode_packet(b"tok\x00", 4)[0]))
    assert out == [c.VerifyPassword("alice@example.com", "tok")]
    out = s.handle(e.PasswordVerified(ALICE))
    opened = [cmd for cmd in out if isinstance(cmd, c.OpenUpstream)]
    assert opened and opened[0].connection == database and not opened[0].capabilities & k.CLIENT_SSL
    out = s.handle(e.UpstreamReady(4242, "10.11.19-MariaDB", CAPS, k.SERVER_STATUS_AUTOCOMMIT))
    assert upstream_sent(out) == [encode_packet(b"\x03SELECT @@sql_mode, @@character_set_client", 0)[0]]
    out = s.handle(settings_answer())
    assert s.state is State.READY and s.upstream_id == 4242
    assert any(isinstance(cmd, c.Audit) and isinstance(cmd.record, SessionEvent) and cmd.record.engine == "mysql" for cmd in out)
    ok = g.decode_ok(packets(out)[-1], CAPS)
    assert ok.status & k.SERVER_STATUS_AUTOCOMMIT
    return s, out


def test_login_then_an_allowed_select_is_audited_then_forwarded(tmp_path: Path) -> None:
    s, _ = logged_in(tmp_path)
    query = encode_packet(b"\x03SELECT id FROM t WHERE id = 1", 0)[0]
    out = s.handle(e.ClientData(query))
    assert len(out) == 1 and isinstance(out[0], c.AuditGate)
    gate = out[0]
    record = gate.records[0]
    assert isinstance(record, StatementRecord) and record.engine == "mysql" and record.decision == "allow"
    assert gate.then == [c.SendUpstream(query)]
    assert s.state is State.BUSY
    # the answer, forwarded packet by packet; rows through result_row; one completion
    col = res.ColumnDefinition("id", k.ColumnType.LONG, "shop", "t", "t", "id", 63, 11)
    out = s.handle(answer([
        res.encode_column_count(res.ColumnCount(1), CAPS),
        res.encode_column_definition(col),
        res.encode_text_row(res.TextRow((b"1",))),
        g.encode_ok(g.OK(status=k.SERVER_STATUS_AUTOCOMMIT | k.SERVER_STATUS_IN_TRANS, header=0xFE), CAPS),
    ]))
    sent = packets(out)
    assert len(sent) == 4 and sent[2] == res.encode_text_row(res.TextRow((b"1",)))
    done = [cmd.record for cmd in out if isinstance(cmd, c.Audit) and isinstance(cmd.record, CompletionRecord)]
    assert len(done) == 1 and done[0].rows == 1 and done[0].statement_id == record.id
    assert s.state is State.READY


def test_denied_statement_gets_42000_and_the_session_goes_on(tmp_path: Path) -> None:
    s, _ = logged_in(tmp_path)
    out = s.handle(e.ClientData(encode_packet(b"\x03DROP TABLE t", 0)[0]))
    err = g.decode_err(packets(out)[0])
    assert (err.code, err.sqlstate) == (1227, "42000")
    assert err.message.startswith("dbsentry:") and "baseline." in err.message
    assert not upstream_sent(out)
    assert s.state is State.READY
    out = s.handle(e.ClientData(encode_packet(b"\x03DELETE FROM t", 0)[0]))
    assert "baseline.prod.unbounded-write" in g.decode_err(packets(out)[0]).message
    # fail closed: what the analysis refuses does not run
    out = s.handle(e.ClientData(encode_packet(b"\x03SELECT /*! 1 */", 0)[0]))
    err = g.decode_err(packets(out)[0])
    assert err.sqlstate == "42000" and err.message.startswith("dbsentry:") and not upstream_sent(out)
    out = s.handle(e.ClientData(encode_packet(b"\x03select 'unterminated", 0)[0]))
    err = g.decode_err(packets(out)[0])
    assert (err.code, err.sqlstate) == (1064, "42000")
    assert err.message == "dbsentry: statement rejected: it is not valid MySQL (unterminated string at character 7) (rule: baseline.unparsable)"


def test_commands_wait_for_the_answer_in_flight(tmp_path: Path) -> None:
    s, _ = logged_in(tmp_path)
    two = encode_packet(b"\x0e", 0)[0] + encode_packet(b"\x0e", 0)[0]  # two pings at once
    out = s.handle(e.ClientData(two))
    assert upstream_sent(out) == [encode_packet(b"\x0e", 0)[0]]
    out = s.handle(answer([g.encode_ok(g.OK(status=2), CAPS)]))
    assert len(packets(out)) == 1 and upstream_sent(out) == [encode_packet(b"\x0e", 0)[0]]


def test_prepare_execute_decodes_parameters_for_the_audit(tmp_path: Path) -> None:
    s, _ = logged_in(tmp_path)
    out = s.handle(e.ClientData(encode_packet(b"\x16SELECT * FROM t WHERE id = ?", 0)[0]))
    assert upstream_sent(out) and s.state is State.BUSY
    param = res.ColumnDefinition("?", k.ColumnType.VAR_STRING, charset=63)
    out = s.handle(answer([res.encode_stmt_prepare_ok(res.StmtPrepareOK(9, 0, 1, 0), CAPS), res.encode_column_definition(param)]))
    assert len(packets(out)) == 2 and s.state is State.READY
    execute = b"\x17" + (9).to_bytes(4, "little") + b"\x00\x01\x00\x00\x00" + b"\x00" + b"\x01" + bytes((k.ColumnType.LONGLONG, 0)) + (42).to_bytes(8, "little")
    out = s.handle(e.ClientData(encode_packet(execute, 0)[0]))
    gate = out[0]
    assert isinstance(gate, c.AuditGate)
    assert isinstance(gate.records[0], StatementRecord) and gate.records[0].params == ("42",)


def test_kill_init_db_change_user(tmp_path: Path) -> None:
    s, _ = logged_in(tmp_path)
    out = s.handle(e.ClientData(encode_packet(b"\x03KILL QUERY 12", 0)[0]))
    assert [cmd for cmd in out if isinstance(cmd, c.Kill)] == [c.Kill(12, True, "alice@example.com", False)]
    assert s.state is State.GATED
    out = s.handle(e.KillAnswered(None))
    assert packets(out)[0][:1] == b"\x00" and s.state is State.READY
    out = s.handle(e.ClientData(encode_packet(b"\x02shop", 0)[0]))  # COM_INIT_DB to its own database
    assert packets(out)[0][:1] == b"\x00" and not upstream_sent(out)
    out = s.handle(e.ClientData(encode_packet(b"\x02mysql", 0)[0]))
    assert "one connection per session" in g.decode_err(packets(out)[0]).message
    out = s.handle(e.ClientData(encode_packet(b"\x11bob\x00\x00mysql\x00", 0)[0]))  # COM_CHANGE_USER elsewhere
    assert g.decode_err(packets(out)[0]).code == 1235 and s.state is State.CLOSED


def test_change_user_logs_in_again_and_resets_the_upstream_session(tmp_path: Path) -> None:
    s, _ = logged_in(tmp_path)
    bob = Identity("bob@example.com", frozenset({"eng"}), "human", "tok2", "token")
    out = s.handle(e.ClientData(encode_packet(b"\x11bob@example.com\x00\x00\x00", 0)[0]))
    switch = packets(out)[0]
    assert switch[:1] == b"\xfe" and b"caching_sha2_password" in switch and s.state is State.AUTH
    out = s.handle(e.ClientData(encode_packet(b"\x00" * 32, 2)[0]))  # the scramble: full authentication asked
    assert packets(out) == [b"\x01\x04"]
    out = s.handle(e.ClientData(encode_packet(b"tok2\x00", 4)[0]))
    assert out == [c.VerifyPassword("bob@example.com", "tok2")]
    out = s.handle(e.PasswordVerified(bob))
    assert upstream_sent(out) == [encode_packet(b"\x1f", 0)[0]]  # COM_RESET_CONNECTION
    closed = [cmd.record for cmd in out if isinstance(cmd, c.Audit) and isinstance(cmd.record, SessionEvent)]
    assert closed and closed[0].event == "closed" and closed[0].identity == "alice@example.com"
    out = s.handle(answer([g.encode_ok(g.OK(status=k.SERVER_STATUS_AUTOCOMMIT), CAPS)]))
    assert upstream_sent(out) == [encode_packet(b"\x03SELECT @@sql_mode, @@character_set_client", 0)[0]]
    out = s.handle(settings_answer())
    assert s.state is State.READY and s.identity == bob
    sent = b"".join(cmd.data for cmd in out if isinstance(cmd, c.SendClient))
    assert sent[3] == 5 and sent[4:5] == b"\x00"  # the OK ends the exchange at sequence id 5
    opened = [cmd.record for cmd in out if isinstance(cmd, c.Audit) and isinstance(cmd.record, SessionEvent)]
    assert opened and opened[0].event == "opened" and opened[0].identity == "bob@example.com"


def test_a_command_sent_while_change_user_verifies_runs_as_the_new_identity(tmp_path: Path) -> None:
    """A client that pipelines a statement behind COM_CHANGE_USER (here arriving while the
    token is verified): it waits for the new login, then runs, audited as the new identity;
    the session goes on (it was forwarded and its answer taken for nobody's before)."""
    s, _ = logged_in(tmp_path)
    bob = Identity("bob@example.com", frozenset({"eng"}), "human", "tok2", "token")
    s.handle(e.ClientData(encode_packet(b"\x11bob@example.com\x00\x00\x00", 0)[0]))
    s.handle(e.ClientData(encode_packet(b"\x00" * 32, 2)[0]))
    assert s.handle(e.ClientData(encode_packet(b"tok2\x00", 4)[0])) == [c.VerifyPassword("bob@example.com", "tok2")]
    assert s.handle(e.ClientData(encode_packet(b"\x03SELECT 1", 0)[0])) == []  # waits
    s.handle(e.PasswordVerified(bob))
    s.handle(answer([g.encode_ok(g.OK(status=k.SERVER_STATUS_AUTOCOMMIT), CAPS)]))
    out = s.handle(settings_answer())
    (gate,) = [cmd for cmd in out if isinstance(cmd, c.AuditGate)]
    assert gate.then == [c.SendUpstream(encode_packet(b"\x03SELECT 1", 0)[0])] and s.state is State.BUSY
    (record,) = [r for r in gate.records if isinstance(r, StatementRecord)]
    assert record.identity == "bob@example.com" and record.statement == "SELECT 1"
    out = s.handle(answer([g.encode_ok(g.OK(affected_rows=0, status=k.SERVER_STATUS_AUTOCOMMIT), CAPS)]))
    assert s.state is State.READY
    (done,) = [cmd.record for cmd in out if isinstance(cmd, c.Audit) and isinstance(cmd.record, CompletionRecord)]
    assert done.statement_id == record.id and done.error is None


def test_plaintext_refused_when_tls_required(tmp_path: Path) -> None:
    s = Session(config(tmp_path, require_tls=True), ClientInfo("x"), 1)
    s.greeting()
    response = hs.HandshakeResponse(CAPS, "alice@example.com", b"", database="prod", auth_plugin_name="mysql_native_password")
    out = s.handle(e.ClientData(encode_packet(hs.encode_handshake_response(response), 1)[0]))
    err = g.decode_err(packets(out)[0])
    assert (err.code, err.sqlstate) == (3159, "08004") and err.message.startswith("dbsentry: TLS is required")
    assert isinstance(out[-1], c.CloseClient)


def test_login_while_the_control_plane_is_down_is_refused_1053(tmp_path: Path) -> None:
    """Not the credentials' fault: the server's "cannot serve now" code, naming the control plane."""
    from dbsentry.identity.ratelimit import ControlPlaneUnavailable

    s = Session(config(tmp_path), ClientInfo("10.0.0.1:5000"), 7, governor=MySQLGovernor(default_policy))
    s.greeting()
    s.handle(e.ClientData(encode_packet(hs.encode_ssl_request(hs.SSLRequest(CAPS | k.CLIENT_SSL)), 1)[0]))
    s.handle(e.ClientTLSStarted("TLSv1.3"))
    response = hs.HandshakeResponse(CAPS | k.CLIENT_SSL, "alice@example.com", b"x" * 32, database="prod", auth_plugin_name="caching_sha2_password")
    s.handle(e.ClientData(encode_packet(hs.encode_handshake_response(response), 2)[0]))
    assert s.handle(e.ClientData(encode_packet(b"tok\x00", 4)[0])) == [c.VerifyPassword("alice@example.com", "tok")]
    out = s.handle(e.PasswordVerified(ControlPlaneUnavailable("cp.example:5432/dbsentry_control: refused")))
    err = g.decode_err(packets(out)[0])
    assert (err.code, err.sqlstate) == (1053, "08S01")
    assert err.message.startswith("dbsentry: the control plane is unavailable (cp.example")
    assert isinstance(out[-1], c.CloseClient) and s.state is State.CLOSED


def test_every_event_is_handled_and_transitions_are_checked(tmp_path: Path) -> None:
    for event_type in typing.get_args(e.Event):
        s = Session(config(tmp_path), ClientInfo("x"), 1)
        s.greeting()
        fields = {f.name: None for f in dataclasses.fields(event_type)}
        if event_type in (e.ClientData, e.UpstreamData):
            fields = {"data": b""}
        elif event_type is e.UpstreamReady:
            fields = {"connection_id": 1, "server_version": "x", "capabilities": CAPS, "status": 2}
        elif event_type is e.UpstreamFailed:
            fields = {"code": 2003, "sqlstate": "08001", "message": "down"}
        elif event_type is e.ApprovalAnswered:
            fields = {"approval_id": None, "message": "no"}
        elif event_type is e.AuditFailed:
            fields = {"message": "down"}
        assert isinstance(s.handle(event_type(**fields)), list)
    s = Session(config(tmp_path), ClientInfo("x"), 1)
    with pytest.raises(SessionStateError):
        s._enter(State.BUSY)
    assert all(State.CLOSED in targets for targets in TRANSITIONS.values())


def test_upstream_login_native_and_refusals() -> None:
    login = UpstreamLogin("root", "", "test", CAPS, 45, where="upstream")
    greeting = hs.Handshake("10.11.19-MariaDB", 77, b"n" * 20, (CAPS | k.CLIENT_SSL | k.CLIENT_LONG_FLAG) & ~k.CLIENT_MYSQL, auth_plugin_name="mysql_native_password")
    step = login.receive(encode_packet(hs.encode_handshake(greeting), 0)[0])
    sent = hs.decode_client_handshake(PacketSplitter(first_seq=1).feed(step.send)[0].payload)
    assert isinstance(sent, hs.HandshakeResponse) and sent.database == "test" and sent.user == "root"
    step = login.receive(encode_packet(g.encode_ok(g.OK(status=2), CAPS), 2)[0])
    assert step.ready == e.UpstreamReady(77, "10.11.19-MariaDB", login.capabilities, 2)
    login = UpstreamLogin("root", "pw", "test", CAPS, 45, where="upstream")
    login.receive(encode_packet(hs.encode_handshake(greeting), 0)[0])
    step = login.receive(encode_packet(b"\xfe" + b"dialog\x00" + b"x", 2)[0])
    assert step.refused is not None and "'dialog'" in step.refused.message
    login = UpstreamLogin("root", "pw", "test", CAPS, 45, tls=True, where="upstream")
    step = login.receive(encode_packet(hs.encode_handshake(dataclasses.replace(greeting, capabilities=greeting.capabilities & ~k.CLIENT_SSL)), 0)[0])
    assert step.refused is not None and "does not accept TLS" in step.refused.message


def test_config_mysql_connections(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    assert cfg.connections["prod"].port == 3306 and cfg.connections["pg"].port == 5432
    assert cfg.listen.mysql_addr == ("127.0.0.1", 3307)
    assert parse_config({}, tmp_path).listen.mysql_addr is None
    with pytest.raises(ConfigError, match="not supported for engine mysql"):
        parse_config({"connections": {"m": {"engine": "mysql", "database": "d", "user": "u", "roles": {"default": "r"}}}}, tmp_path)
    with pytest.raises(ConfigError, match="engine"):
        parse_config({"connections": {"m": {"engine": "oracle", "database": "d", "user": "u"}}}, tmp_path)


def test_mysql_literals_redact_by_value() -> None:
    assert constant_value("'it''s'") == "it's" and constant_value("'a\\nb'") == "a\nb" and constant_value("_utf8mb4'x'") == "x"
    from dbsentry.audit.redaction import LiteralRedactor

    r = LiteralRedactor(b"k" * 32, "sensitive", literals=MYSQL_LITERALS)
    text = r.redact("SELECT * FROM u WHERE email = 'alice@example.com' AND id = 3").text
    assert "alice@example.com" not in text and "id = 3" in text
    assert r.redact("SELECT /*! 1 */").text.startswith("<statement redacted")


from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunks=st.lists(st.binary(max_size=80), max_size=4))
def test_random_bytes_never_crash_a_session(tmp_path: Path, chunks: list[bytes]) -> None:
    """Before login and after it, any bytes from the client give commands (an error and a
    close for garbage), never an exception."""
    s = Session(config(tmp_path), ClientInfo("x"), 1)
    s.greeting()
    for chunk in chunks:
        assert isinstance(s.handle(e.ClientData(chunk)), list)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payloads=st.lists(st.binary(min_size=1, max_size=60), min_size=1, max_size=3), upstream=st.binary(max_size=60))
def test_random_commands_and_answers_never_crash_a_logged_in_session(tmp_path: Path, payloads: list[bytes], upstream: bytes) -> None:
    s, _ = logged_in(tmp_path)
    for payload in payloads:
        assert isinstance(s.handle(e.ClientData(encode_packet(payload, 0)[0])), list)
        assert isinstance(s.handle(answer([upstream or b"\x00"])), list)


def test_ssl_request_split_across_reads_keeps_the_tls_bytes(tmp_path: Path) -> None:
    s = Session(config(tmp_path), ClientInfo("x"), 1)
    s.greeting()
    wire = encode_packet(hs.encode_ssl_request(hs.SSLRequest(CAPS | k.CLIENT_SSL)), 1)[0] + b"\x16\x03\x01\x02\x00"
    assert s.handle(e.ClientData(wire[:2])) == []
    assert s.handle(e.ClientData(wire[2:20])) == []
    assert s.handle(e.ClientData(wire[20:])) == [c.StartClientTLS(b"\x16\x03\x01\x02\x00")]
    assert s.state is State.TLS


def test_a_statement_that_cannot_be_audited_does_not_run(tmp_path: Path) -> None:
    s, _ = logged_in(tmp_path)
    out = s.handle(e.ClientData(encode_packet(b"\x03UPDATE t SET a = 1 WHERE id = 2", 0)[0]))
    gate = out[0]
    assert isinstance(gate, c.AuditGate) and gate.durable  # it may change data: waits for durability
    out = s.handle(e.AuditFailed("disk full"))
    err = g.decode_err(packets(out)[-1])
    assert (err.code, err.sqlstate) == (3098, "58000") and "was not run" in err.message
    assert not upstream_sent(out) and s.state is State.READY
    done = [cmd.record for cmd in out if isinstance(cmd, c.Audit) and isinstance(cmd.record, CompletionRecord)]
    assert done and done[0].error is not None and "not executed" in done[0].error


def test_approval_asked_then_refused_or_run(tmp_path: Path) -> None:
    s, _ = logged_in(tmp_path)
    s.approvals = True
    query = encode_packet(b"\x03CREATE TABLE t9 (id INT)", 0)[0]
    out = s.handle(e.ClientData(query))
    asks = [cmd for cmd in out if isinstance(cmd, c.AskApproval)]
    assert len(asks) == 1 and asks[0].decision.action == "require_approval" and asks[0].key
    out = s.handle(e.ApprovalAnswered(None, "dbsentry: needs approval: request apr_x is pending"))
    err = g.decode_err(packets(out)[-1])
    assert (err.code, err.sqlstate, err.message) == (1227, "42000", "dbsentry: needs approval: request apr_x is pending")
    s.handle(e.ClientData(query))
    out = s.handle(e.ApprovalAnswered("apr_x"))
    gate = out[0]
    assert isinstance(gate, c.AuditGate) and gate.then == [c.SendUpstream(query)]
    record = gate.records[0]
    assert isinstance(record, StatementRecord) and record.decision == "approved" and record.approval_id == "apr_x"


def test_statement_over_the_size_limit_is_refused(tmp_path: Path) -> None:
    s, _ = logged_in(tmp_path)
    sql = b"SELECT '" + b"x" * (s.config.limits.max_statement_bytes + 1) + b"'"
    out = s.handle(e.ClientData(encode_packet(b"\x03" + sql, 0)[0]))
    err = g.decode_err(packets(out)[-1])
    assert err.sqlstate == "42000" and "exceeds limits.max_statement_bytes" in err.message and not upstream_sent(out)


def test_agents_in_production_get_read_only_transactions_upstream(tmp_path: Path) -> None:
    s = Session(config(tmp_path), ClientInfo("x"), 1, governor=MySQLGovernor(default_policy))
    s.greeting()
    response = hs.HandshakeResponse(CAPS, "bot", b"tok\x00", database="prod", auth_plugin_name="mysql_clear_password")
    s._tls = True  # as after ClientTLSStarted
    assert s.handle(e.ClientData(encode_packet(hs.encode_handshake_response(response), 1)[0])) == [c.VerifyPassword("bot", "tok")]
    s.handle(e.PasswordVerified(Identity("bot", frozenset(), "agent", "t", "token")))
    out = s.handle(e.UpstreamReady(5, "v", CAPS, 2))
    assert upstream_sent(out) == [encode_packet(b"\x03SET SESSION TRANSACTION READ ONLY", 0)[0]]
    out = s.handle(answer([g.encode_ok(g.OK(status=2), CAPS)]))
    assert upstream_sent(out) == [encode_packet(b"\x03SELECT @@sql_mode, @@character_set_client", 0)[0]]
    s.handle(settings_answer())
    assert s.state is State.READY


def test_sql_execute_is_judged_by_what_its_prepare_runs(tmp_path: Path) -> None:
    s, _ = logged_in(tmp_path)
    s.approvals = True
    ok = answer([g.encode_ok(g.OK(status=2), CAPS)])
    out = s.handle(e.ClientData(encode_packet(b"\x03PREPARE s FROM 'SELECT 1'", 0)[0]))
    assert isinstance(out[0], c.AuditGate)
    s.handle(ok)
    out = s.handle(e.ClientData(encode_packet(b"\x03EXECUTE s", 0)[0]))
    assert isinstance(out[0], c.AuditGate)  # runs what it prepared: a SELECT
    s.handle(ok)
    out = s.handle(e.ClientData(encode_packet(b"\x03EXECUTE nope", 0)[0]))
    assert "no statement of that name was prepared" in g.decode_err(packets(out)[-1]).message
    # an approval for the PREPARE does not let later EXECUTEs run it again and again
    s.handle(e.ClientData(encode_packet(b"\x03PREPARE c FROM 'CREATE TABLE x (id INT)'", 0)[0]))
    out = s.handle(e.ApprovalAnswered("apr_1"))
    assert isinstance(out[0], c.AuditGate)
    s.handle(ok)
    out = s.handle(e.ClientData(encode_packet(b"\x03EXECUTE c", 0)[0]))
    err = g.decode_err(packets(out)[-1])
    assert err.sqlstate == "42000" and "EXECUTE c runs a statement that needs approval" in err.message
    assert not upstream_sent(out)
    # one string: PREPARE then EXECUTE of a statement the baseline denies
    out = s.handle(e.ClientData(encode_packet(b"\x03DEALLOCATE PREPARE s; PREPARE s FROM 'SELECT 2'; EXECUTE s", 0)[0]))
    assert isinstance(out[0], c.AuditGate)
