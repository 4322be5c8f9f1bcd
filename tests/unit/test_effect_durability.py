"""audit.durability "effect": a statement that may change data (or a COMMIT) is forwarded
only behind an audit gate that waits for its record to be durable; reads go behind a gate
that waits for the write only (their results are held by the shell, see
test_audit_appender's hold property)."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from dbsentry.audit.config import AuditConfig
from dbsentry.config import parse_config
from dbsentry.engines.postgres.session import commands as c
from dbsentry.engines.postgres.session.events import ClientData, PasswordVerified, UpstreamData
from dbsentry.engines.postgres.session.governance import Governor
from dbsentry.engines.postgres.session.pg import ClientInfo, Session
from dbsentry.engines.postgres.session.upstream import UpstreamReady
from dbsentry.engines.postgres.sql.facts import analyze
from dbsentry.engines.postgres.wire import codec
from dbsentry.engines.postgres.wire import messages as m
from dbsentry.governance.durability import changes_data
from dbsentry.identity.model import Identity

WRITES = [
    "insert into t values (1)",
    "update t set a = 1 where id = 2",
    "delete from t where id = 3",
    "commit",
    "end",
    "select nextval('s')",
    "select 1 from t for update",
    "create table x (a int)",
    "with d as (delete from t where id = 4 returning *) select * from d",
    "prepare transaction 'p1'",
    "commit prepared 'p1'",
    "notify ch",
    "call p()",
    "do $$ begin perform 1; end $$",
    "copy t from stdin",
    "select set_config('transaction_read_only', 'off', false)",
]
# (a setting is session state, as SET is: it commits no data)
READS = ["select set_config('x.y', '1', false)", "select 1", "select a from t where id = 5", "show work_mem", "begin", "rollback", "explain select 1", "fetch 1 from c"]


def _session() -> Session:
    config = parse_config(
        {
            "tls": {"require_client_tls": False},
            "connections": {"app": {"database": "app", "user": "postgres", "environment": "staging"}},
        },
        Path("."),
    )
    session = Session(
        config,
        ClientInfo("127.0.0.1:5000"),
        1,
        b"1234",
        governor=Governor.from_path(None),
        audit_config=AuditConfig(durability="effect"),
    )
    session.handle(ClientData(codec.encode_startup((("user", "ann@example.com"), ("database", "app")))))
    session.handle(ClientData(codec.encode_password("token")))
    session.handle(PasswordVerified(Identity("ann@example.com", frozenset({"eng"}), "human", "t", "token")))
    session.handle(UpstreamReady(b"", {}, 42, b"abcd", "I"))
    return session


def _forwarded(cmds: list[c.Command]) -> list[tuple[bytes, c.AuditGate | None]]:
    """What goes upstream, each with the gate it waits behind (None: sent at once)."""
    out: list[tuple[bytes, c.AuditGate | None]] = []
    for cmd in cmds:
        if isinstance(cmd, c.SendUpstream):
            out.append((cmd.data, None))
        elif isinstance(cmd, c.AuditGate):
            out.extend((t.data, cmd) for t in cmd.then if isinstance(t, c.SendUpstream))
    return out


def test_the_oracle_agrees_with_the_lists() -> None:
    for sql in WRITES:
        f = analyze(sql)[0]
        assert changes_data(f.command, f.classes, f.flags), sql
    for sql in READS:
        f = analyze(sql)[0]
        assert not changes_data(f.command, f.classes, f.flags), sql


def _reply(session: Session) -> None:
    session.handle(UpstreamData(codec.frame(b"C", b"OK\x00") + codec.encode_ready("I")))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(WRITES + READS), st.booleans()), min_size=1, max_size=8))
def test_no_change_runs_before_its_record_is_durable(statements: list[tuple[str, bool]]) -> None:
    session = _session()
    for sql, extended in statements:
        if extended:
            data = (
                codec.encode_parse(m.Parse("", sql, ()))
                + codec.encode_bind(m.Bind("", "", (), (), ()))
                + codec.encode_execute(m.Execute("", 0))
                + codec.SYNC
            )
        else:
            data = codec.encode_query(sql)
        forwarded = _forwarded(session.handle(ClientData(data)))
        carrying = [(d, gate) for d, gate in forwarded if sql.encode() in d]
        if sql in WRITES:
            for _, gate in carrying:  # a write that goes upstream at all waits for durability
                assert gate is not None and gate.durable, (sql, extended)
        else:
            for _, gate in carrying:
                assert gate is not None and not gate.durable, (sql, extended)
        _reply(session)
