"""audit.durability "effect": a statement that may change data (or a COMMIT) is forwarded
only behind an audit gate that waits for its record to be durable; reads go behind a gate
that waits for the write only (their results are held by the shell, see
test_audit_appender's hold property)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dbsentry.audit.config import AuditConfig
from dbsentry.config import parse_config
from dbsentry.engines.postgres.session import commands as c
from dbsentry.engines.postgres.session.events import ClientData, PasswordVerified, UpstreamData
from dbsentry.engines.postgres.session.governance import Governor
from dbsentry.engines.postgres.session.masking import MaskingService
from dbsentry.engines.postgres.session.pg import ClientInfo, Session
from dbsentry.engines.postgres.session.upstream import UpstreamReady
from dbsentry.engines.postgres.sql.facts import analyze
from dbsentry.engines.postgres.wire import codec
from dbsentry.engines.postgres.wire import messages as m
from dbsentry.governance.durability import changes_data, transactional_only
from dbsentry.identity.model import Identity
from dbsentry.masking.catalog import Catalog, classify_catalog

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
READS = [
    "select set_config('x.y', '1', false)",
    "select 1",
    "select a from t where id = 5",
    "show work_mem",
    "begin",
    "rollback",
    "explain select 1",
    "fetch 1 from c",
]


# The connection's catalog: t a plain table; v a view of it; ft a foreign table; rls a table
# with row-level security; f a user function the catalog says reads only (STABLE SQL).
_REL = [
    (1, "public", "t", "r", 1, "a", 23, "integer", -1, None, "N"),
    (2, "public", "v", "v", 1, "a", 23, "integer", -1, None, "N"),
    (3, "public", "ft", "f", 1, "a", 23, "integer", -1, None, "N"),
    (4, "public", "rls", "r", 1, "a", 23, "integer", -1, None, "N", True),
    (5, "public", "vft", "v", 1, "a", 23, "integer", -1, None, "N"),
]
_VIEWS = [(2, "SELECT t.a FROM public.t"), (5, "SELECT ft.a FROM public.ft")]
_FUNCTIONS = [(10, "public", "f", "sql", "SELECT 1", False, 0, [], [], 0, "f", "s", [])]
_BUILTINS = ["set_config", "nextval", "now", "count", "pg_notify"]
# Reads the catalog says change nothing, that may all the same (FunctionSafety.reads_beyond):
# they wait for durability like writes.
READS_BEYOND = [
    "select f()",  # a user function: replaced since the catalog was read, it may write
    "select a from ft",  # a foreign table: the other side runs what it likes
    "select a from rls",  # row-level security: its policies call functions
    "select a from vft",  # a view over a foreign table
    "select a from not_in_the_catalog",  # created since: could be any of these
]
# ... and reads that need not wait
READS_KNOWN = ["select a from t", "select a from v", "select count(*) from t", "select now()"]


def _session(catalog: bool = True) -> Session:
    config = parse_config(
        {
            "tls": {"require_client_tls": False},
            "connections": {
                "app": {"database": "app", "user": "postgres", "environment": "staging"}
            },
        },
        Path("."),
    )
    service = None
    if catalog:
        cat = Catalog.from_rows(_REL, _VIEWS, _FUNCTIONS, ("public",), _BUILTINS)
        service = MaskingService(config.masking, b"k" * 32)
        service.install("app", cat, classify_catalog(cat))
    session = Session(
        config,
        ClientInfo("127.0.0.1:5000"),
        1,
        b"1234",
        governor=Governor.from_path(None),
        audit_config=AuditConfig(durability="effect"),
        catalog_service=service,
    )
    session.handle(
        ClientData(codec.encode_startup((("user", "ann@example.com"), ("database", "app"))))
    )
    session.handle(ClientData(codec.encode_password("token")))
    session.handle(
        PasswordVerified(Identity("ann@example.com", frozenset({"eng"}), "human", "t", "token"))
    )
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
    for sql in IN_BLOCK:
        f = analyze(sql)[0]
        assert transactional_only(f.command, f.commands, f.classes, f.flags, f.functions), sql
    for sql in NOT_IN_BLOCK:
        f = analyze(sql)[0]
        assert not transactional_only(f.command, f.commands, f.classes, f.flags, f.functions), sql


def _reply(session: Session) -> None:
    session.handle(UpstreamData(codec.frame(b"C", b"OK\x00") + codec.encode_ready("I")))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(WRITES + READS), st.booleans()), min_size=1, max_size=8))
def test_no_change_runs_before_its_record_is_durable(statements: list[tuple[str, bool]]) -> None:
    session = _session()
    for sql, extended in statements:
        forwarded = _forwarded(session.handle(ClientData(_message(sql, extended))))
        carrying = [(d, gate) for d, gate in forwarded if sql.encode() in d]
        if sql in WRITES:
            for _, gate in carrying:  # a write that goes upstream at all waits for durability
                assert gate is not None and gate.durable, (sql, extended)
        else:
            for _, gate in carrying:
                assert gate is not None and not gate.durable, (sql, extended)
        _reply(session)


def _reply_in(session: Session, status: str) -> None:
    session.handle(UpstreamData(codec.frame(b"C", b"OK\x00") + codec.encode_ready(status)))


def _message(sql: str, extended: bool) -> bytes:
    if not extended:
        return codec.encode_query(sql)
    return (
        codec.encode_parse(m.Parse("", sql, ()))
        + codec.encode_bind(m.Bind("", "", (), (), ()))
        + codec.encode_execute(m.Execute("", 0))
        + codec.SYNC
    )


# Statements a ROLLBACK undoes entirely (no function, no side effect): inside the client's
# open block they go once their record is written; their COMMIT waits for durability.
IN_BLOCK = [
    "insert into t values (1)",
    "update t set a = a + 1 where id = 2",
    "delete from t where id = 3",
    "with d as (delete from t where id = 4 returning *) select * from d",
    "merge into t using u on t.id = u.id when matched then update set a = 1",
]
# Still wait in a block: what may act outside the transaction, or end it.
NOT_IN_BLOCK = [
    "commit", "end", "prepare transaction 'p1'", "select nextval('s')", "update t set a = f(1)",
    "update t set a = lower(b)", "select 1 from t for update", "create table x (a int)", "call p()",
    "do $$ begin perform 1; end $$", "copy t from stdin", "notify ch",
]  # fmt: skip


def _gates(session: Session, data: bytes) -> list[c.AuditGate]:
    return [cmd for cmd in session.handle(ClientData(data)) if isinstance(cmd, c.AuditGate)]


def test_in_an_open_block_a_statement_a_rollback_undoes_goes_once_written() -> None:
    for extended in (False, True):
        for sql in IN_BLOCK:
            session = _session()
            _gates(session, codec.encode_query("begin"))
            _reply_in(session, "T")
            (gate,) = _gates(session, _message(sql, extended))
            assert not gate.durable, (sql, extended)  # its results still wait (the shell's hold)
            _reply_in(session, "T")
            (commit,) = _gates(session, _message("commit", extended))
            assert commit.durable, extended  # the COMMIT waits for every record before it
        for sql in NOT_IN_BLOCK:
            session = _session()
            _gates(session, codec.encode_query("begin"))
            _reply_in(session, "T")
            gates = _gates(session, _message(sql, extended))
            assert all(g.durable for g in gates) and gates, (sql, extended)


def test_outside_a_block_or_behind_what_may_end_it_a_write_waits() -> None:
    session = _session()  # idle: an UPDATE commits by itself
    (gate,) = _gates(session, codec.encode_query("update t set a = 1 where id = 2"))
    assert gate.durable
    session = _session()
    _gates(session, codec.encode_query("begin"))
    _reply_in(session, "T")
    # In one read, a ROLLBACK (or COMMIT) before the UPDATE: it runs in autocommit.
    for ender in ("rollback", "commit", "savepoint s", "rollback to savepoint s"):
        gates = _gates(
            session,
            codec.encode_query(ender) + codec.encode_query("update t set a = 1 where id = 2"),
        )
        assert gates and all(g.durable for g in gates), ender
        _reply_in(session, "T")
        _reply_in(session, "T")
    # Sent before the block's BEGIN was answered: the session does not count on it yet.
    session = _session()
    _gates(session, codec.encode_query("begin"))
    (gate,) = _gates(session, codec.encode_query("update t set a = 1 where id = 2"))
    assert gate.durable
    # A failed block ('E'): no exception.
    session = _session()
    _gates(session, codec.encode_query("begin"))
    _reply_in(session, "E")
    (gate,) = _gates(session, codec.encode_query("update t set a = 1 where id = 2"))
    assert gate.durable


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(WRITES + READS + IN_BLOCK), st.booleans(), st.sampled_from("ITE")
        ),
        min_size=1,
        max_size=8,
    )
)
def test_no_commit_and_nothing_outside_a_block_runs_before_durable(
    statements: list[tuple[str, bool, str]],
) -> None:
    """Whatever the transaction states: a statement goes without waiting for durability
    only when it is read-only, or when the upstream reported an open block, nothing was in
    flight, and the statement only changes rows of that transaction."""
    session = _session()
    status = "I"
    for sql, extended, reply in statements:
        forwarded = _forwarded(session.handle(ClientData(_message(sql, extended))))
        facts = analyze(sql)[0]
        for data, gate in forwarded:
            if sql.encode() not in data:
                continue
            assert gate is not None
            may_wait_less = not changes_data(facts.command, facts.classes, facts.flags) or (
                status == "T"
                and transactional_only(facts.command, facts.commands, facts.classes, facts.flags, facts.functions)
            )
            if not may_wait_less:
                assert gate.durable, (sql, extended, status)
        _reply_in(session, reply)
        status = reply


def _gates_of(session: Session, sql: str, extended: bool) -> list[c.AuditGate | None]:
    forwarded = _forwarded(session.handle(ClientData(_message(sql, extended))))
    gates = [gate for d, gate in forwarded if sql.encode() in d]
    _reply(session)
    return gates


@pytest.mark.parametrize("extended", [False, True])
def test_reads_that_may_reach_beyond_what_the_catalog_says_wait_for_durability(extended: bool) -> None:
    """Found by an attack round that froze the fsync helper: a function replaced behind the
    catalog, a row-level security policy, a foreign table each committed a write from a
    SELECT forwarded before its record was durable."""
    session = _session()
    for sql in READS_BEYOND:
        gates = _gates_of(session, sql, extended)
        assert gates and all(g is not None and g.durable for g in gates), sql
    for sql in READS_KNOWN:
        gates = _gates_of(session, sql, extended)
        assert gates and all(g is not None and not g.durable for g in gates), sql


def test_without_a_catalog_yet_a_read_of_a_table_or_a_function_waits() -> None:
    session = _session(catalog=False)
    for sql in ("select a from t", "select now()"):
        gates = _gates_of(session, sql, False)
        assert gates and all(g is not None and g.durable for g in gates), sql
    gates = _gates_of(session, "select 1", False)  # nothing it calls or reads
    assert gates and all(g is not None and not g.durable for g in gates)
