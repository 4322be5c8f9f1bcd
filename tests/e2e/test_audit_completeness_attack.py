"""Attack round on audit completeness: SQL executed upstream without a matching audit record.

The promise (docs/audit.md, Records and Guarantees): every statement the upstream
PostgreSQL executes for a client has a ``statement`` record naming that exact statement
(and its parameters, for the extended protocol), the identity and the decision, followed
by a ``completion`` record with the true outcome; a statement refused has a ``deny``
record and never runs.

Each probe makes the upstream do something observable (INSERT a unique marker into a
table of this module's schema, read directly from PostgreSQL) through the proxy, in some
protocol corner, and compares it with the audit trail (``audit export --raw``): which
statement records name the marker, with which decision and parameters, and what their
completion says.  The proxy runs one worker with the default ``effect`` durability.

Probes that found a hole are kept, marked ``xfail(strict=True, reason="FINDING: ...")``,
asserting the secure behaviour; the others are plain tests that fail if the promise breaks.
"""

from __future__ import annotations

import socket
import struct
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from test_effect_freeze_attack import (  # type: ignore[import-not-found]
    SYNC,
    Raw,
    _tls,
    bind,
    describe,
    execute,
    msg,
    parse,
    query,
    raw_session,
    types,
)

from support.audit import raw_records
from support.pg import PgServer
from support.proxy import RunningProxy, run_proxy, write_config

pytestmark = pytest.mark.e2e

FLUSH = msg(b"H")


def close(kind: bytes, name: str = "") -> bytes:
    return msg(b"C", kind + name.encode() + b"\x00")


# --------------------------------------------------------------------------- environment


@dataclass
class Env:
    proxy: RunningProxy
    pg: PgServer
    s: str

    def direct(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.pg.dsn(), autocommit=True)

    def one(self, sql: str, *args: Any) -> Any:
        with self.direct() as conn:
            row = conn.execute(sql, args or None).fetchone()
        return None if row is None else row[0]

    def ran(self, marker: str) -> int:
        """How many rows with ``marker`` are committed in the probes' table (read directly)."""
        return int(self.one(f"select count(*) from {self.s}.t where v = %s", marker))

    def trail(self, text: str, want: int = 1, timeout: float = 5) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
        """The statement records whose text or parameters hold ``text``, each with its
        completion records; waits until at least ``want`` records all have a completion."""
        deadline = time.monotonic() + timeout
        while True:
            recs = records(self)
            stmts = [
                r
                for r in recs
                if r.get("type") == "statement"
                and (text in (r.get("statement") or "") or any(text in (p or "") for p in (r.get("params") or ())))
            ]
            done = {}
            for r in recs:
                if r.get("type") == "completion":
                    done.setdefault(r.get("statement_id"), []).append(r)
            out = [(st, done.get(st["id"], [])) for st in stmts]
            if (len(out) >= want and all(c for _, c in out)) or time.monotonic() > deadline:
                return out
            time.sleep(0.3)


def records(env: Env) -> list[dict[str, Any]]:
    """Every record of the trail (the exported rows carry it under ``record``)."""
    return [r.get("record", r) for r in raw_records(env.proxy.config_path)]


def mark() -> str:
    return f"m{uuid.uuid4().hex[:12]}"


def ok(completions: list[dict[str, Any]]) -> bool:
    return len(completions) == 1 and completions[0].get("sqlstate") is None and completions[0].get("error") is None


def errors(got: list[tuple[bytes, bytes]]) -> list[bytes]:
    return [b for t, b in got if t == b"E"]


@pytest.fixture(scope="module")
def env(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    s = f"audit_complete_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        conn.execute(
            f"""
            create schema {s};
            create table {s}.t (id serial primary key, v text);
            create table {s}.d (id int primary key, v text,
              constraint d_fk unique (v) deferrable initially deferred);
            create table {s}.keys (api_token text);
            create function {s}.ins(v text) returns int language sql volatile as
              $$ insert into {s}.t (v) values (v) returning 1 $$;
            """
        )
    directory = tmp_path_factory.mktemp("audit_complete")
    config = write_config(directory, pg_server, extra={"audit": {"durability": "effect", "redact_literals": False}})
    try:
        with run_proxy(config) as proxy:
            yield Env(proxy, pg_server, s)
    finally:
        with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
            conn.execute(f"drop schema if exists {s} cascade")


def ins(env: Env, marker: str) -> str:
    return f"INSERT INTO {env.s}.t (v) VALUES ('{marker}')"


# --------------------------------------------------------------------------- baseline


@pytest.mark.parametrize("dbname", ["prod", "staging"])
def test_baseline_extended_insert_recorded(env: Env, dbname: str) -> None:
    m1 = mark()
    with raw_session(env.proxy, dbname) as client:
        client.send(parse(f"INSERT INTO {env.s}.t (v) VALUES ($1)") + bind(params=(m1,)) + execute() + SYNC)
        got = client.until_ready()
    assert not errors(got), got
    assert env.ran(m1) == 1
    trail = env.trail(m1)
    assert len(trail) == 1 and trail[0][0]["params"] == [m1] and trail[0][0]["decision"] == "allow"
    assert trail[0][0]["identity"] == "alice@example.com"
    assert ok(trail[0][1]) and trail[0][1][0]["rows"] == 1


# --------------------------------------------------------------------------- prepared statement names


@pytest.mark.parametrize(
    "dbname",
    [
        "prod",
        "staging",  # FINDING, fixed: a failed re-Parse was taken as done; the INSERT that ran was recorded as the decoy
    ],
)
def test_parse_of_existing_name_fails_then_bind_runs_the_old(env: Env, dbname: str) -> None:
    """A second Parse of a named statement fails upstream (42P05): the name keeps the first
    statement.  The Execute must be recorded with the statement that ran."""
    m1, decoy = mark(), mark()
    name = f"s_{uuid.uuid4().hex[:10]}"
    with raw_session(env.proxy, dbname) as client:
        client.send(parse(ins(env, m1), name) + SYNC)
        assert not errors(client.until_ready())
        client.send(parse(f"SELECT '{decoy}'", name) + SYNC)
        assert errors(client.until_ready())  # already exists
        client.send(bind("", name) + execute() + SYNC)
        got = client.until_ready()
    assert not errors(got), got
    assert env.ran(m1) == 1
    trail = env.trail(m1)
    assert [ok(c) for _, c in trail] == [True], trail
    assert not [r for r, _ in env.trail(decoy, timeout=1) if r["decision"] == "allow"]


@pytest.mark.parametrize(
    "dbname",
    [
        "prod",
        "staging",  # FINDING, fixed: a refused re-Parse dropped the name; the INSERT still bound to it ran with no record
    ],
)
def test_refused_parse_of_existing_name_then_bind_runs_the_old(env: Env, dbname: str) -> None:
    """A Parse the proxy refuses (here a syntax error) under a name that exists upstream:
    the upstream keeps the old statement; an Execute of it must still be recorded."""
    m1 = mark()
    name = f"s_{uuid.uuid4().hex[:10]}"
    with raw_session(env.proxy, dbname) as client:
        client.send(parse(ins(env, m1), name) + SYNC)
        assert not errors(client.until_ready())
        client.send(parse("SELEC garbage", name) + SYNC)
        assert errors(client.until_ready())
        client.send(bind("", name) + execute() + SYNC)
        client.until_ready()
    trail = env.trail(m1)
    assert env.ran(m1) == len([1 for r, c in trail if r["decision"] == "allow" and ok(c)]), (env.ran(m1), trail)


# FINDING, fixed: a DEALLOCATE/DISCARD ALL that failed upstream dropped the name; its INSERT then ran
# with no record.  Now the name is unknown once its cycle fails: the Bind is refused.
@pytest.mark.parametrize("dbname", ["prod", "staging"])
@pytest.mark.parametrize("sql", ["DEALLOCATE {name}", "DEALLOCATE ALL", "DISCARD ALL"])
def test_deallocate_that_failed_then_bind(env: Env, sql: str, dbname: str) -> None:
    """A DEALLOCATE / DISCARD ALL that fails upstream leaves the statement there."""
    m1 = mark()
    name = f"s_{uuid.uuid4().hex[:10]}"
    with raw_session(env.proxy, dbname) as client:
        client.send(parse(ins(env, m1), name) + SYNC)
        assert not errors(client.until_ready())
        client.send(query("BEGIN"))
        client.until_ready()
        client.send(query("SELECT 1/0"))
        client.until_ready()
        client.send(query(sql.format(name=name)))
        assert errors(client.until_ready())  # current transaction is aborted
        client.send(query("ROLLBACK"))
        client.until_ready()
        client.send(bind("", name) + execute() + SYNC)
        client.until_ready()
    trail = env.trail(m1, timeout=2)
    assert env.ran(m1) == len([1 for r, c in trail if r["decision"] == "allow" and ok(c)]), (env.ran(m1), trail)


# FINDING, fixed: an SQL PREPARE that failed (42P05) renamed the statement: the INSERT that ran was
# recorded as the PREPARE text.  Now a PREPARE of a name in use is refused by the proxy.
@pytest.mark.parametrize("dbname", ["prod", "staging"])
def test_sql_prepare_that_failed_then_bind(env: Env, dbname: str) -> None:
    """An SQL PREPARE under a protocol statement's name fails upstream (already exists)."""
    m1, decoy = mark(), mark()
    name = f"s_{uuid.uuid4().hex[:10]}"
    with raw_session(env.proxy, dbname) as client:
        client.send(parse(ins(env, m1), name) + SYNC)
        assert not errors(client.until_ready())
        client.send(query(f"PREPARE {name} AS SELECT '{decoy}'"))
        assert errors(client.until_ready())
        client.send(bind("", name) + execute() + SYNC)
        client.until_ready()
    assert env.ran(m1) == 1
    trail = env.trail(m1)
    assert [ok(c) for r, c in trail if r["decision"] == "allow"] == [True], trail


# FINDING, fixed: an SQL DEALLOCATE and PREPARE sent in Parse messages changed the proxy's names
# at the Parse: a DEALLOCATE parsed and never executed, then a PREPARE of a decoy under the same
# name that failed upstream (the name was still in use), left the proxy judging, masking and
# recording EXECUTE by the decoy while the server ran the statement first prepared: a secret
# column left unmasked.  The names change at each Execute now.
@pytest.mark.parametrize("dbname", ["prod", "staging"])
def test_sql_deallocate_and_prepare_in_parse_messages_change_names_when_executed(env: Env, dbname: str) -> None:
    decoy = mark()
    secret = uuid.uuid4().hex
    name = f"x_{uuid.uuid4().hex[:10]}"
    with env.direct() as conn:
        conn.execute(f"insert into {env.s}.keys values (%s)", (secret,))
    with raw_session(env.proxy, dbname) as client:
        client.send(query(f"PREPARE {name} AS SELECT api_token FROM {env.s}.keys"))
        assert not errors(client.until_ready())
        client.send(parse(f"DEALLOCATE {name}", "d1") + SYNC)  # parsed, never executed
        client.until_ready()
        client.send(parse(f"PREPARE {name} AS SELECT '{decoy}'::text AS api_token", "p1") + bind("", "p1") + execute() + SYNC)
        assert errors(client.until_ready())  # the name is in use, upstream and here
        client.send(query(f"EXECUTE {name}"))
        got = client.until_ready()
    rows = [body for t, body in got if t == b"D"]
    assert rows and not any(secret.encode() in body for body in rows), got
    executes = [r for r, c in env.trail(f"EXECUTE {name}") if r["decision"] != "deny"]
    assert executes and all(f"{env.s}.keys.api_token" in r["masked_columns"] for r in executes), executes


def test_sql_execute_is_judged_by_the_statement_the_server_holds(env: Env) -> None:
    """The same trick against the production rule on bound values: the server holds an
    UPDATE whose WHERE compares its two parameters; ``EXECUTE x(1, 1)`` makes it always
    true and is refused (baseline.prod.unbounded-write).  A DEALLOCATE parsed and never
    executed, and a decoy PREPARE that failed upstream, must not make the proxy judge the
    EXECUTE by the decoy."""
    decoy = mark()
    name = f"x_{uuid.uuid4().hex[:10]}"
    with raw_session(env.proxy, "prod") as client:
        client.send(query(f"PREPARE {name}(int, int) AS UPDATE {env.s}.t SET v = v WHERE $1 = $2"))
        assert not errors(client.until_ready())
        client.send(parse(f"DEALLOCATE {name}", "d2") + SYNC)
        client.until_ready()
        client.send(parse(f"PREPARE {name}(int, int) AS SELECT '{decoy}' WHERE $1 = $2", "p3") + bind("", "p3") + execute() + SYNC)
        assert errors(client.until_ready())
        client.send(query(f"EXECUTE {name}(1, 1)"))
        got = client.until_ready()
    assert errors(got), got
    records = [r for r, _ in env.trail(f"EXECUTE {name}")]
    assert records and all(r["decision"] == "deny" and "baseline.prod.unbounded-write" in r["rules"] for r in records), records


def test_sql_prepare_in_a_parse_executed_twice(env: Env) -> None:
    """The second Execute of a Parse of ``PREPARE x`` fails (x exists): the proxy keeps
    the name as the first Execute made it, and EXECUTE runs and records that statement."""
    m1 = mark()
    name = f"x_{uuid.uuid4().hex[:10]}"
    with raw_session(env.proxy, "staging") as client:
        client.send(parse(f"PREPARE {name} AS {ins(env, m1)}", "p2") + bind("", "p2") + execute() + SYNC)
        assert not errors(client.until_ready())
        client.send(bind("", "p2") + execute() + SYNC)
        assert errors(client.until_ready())
        client.send(query(f"EXECUTE {name}"))
        assert not errors(client.until_ready())
    assert env.ran(m1) == 1
    executes = [(r, c) for r, c in env.trail(f"EXECUTE {name}") if r["decision"] == "allow"]
    assert len(executes) == 1 and ok(executes[0][1]), executes


# --------------------------------------------------------------------------- portals


# FINDING, fixed: a Bind that failed (42P03) re-bound the portal: after ROLLBACK TO SAVEPOINT the
# INSERT that ran was recorded as the decoy SELECT.  Now the portal is unknown once the Bind's
# cycle fails, and its Execute is refused.
@pytest.mark.parametrize("dbname", ["prod", "staging"])
def test_named_portal_rebind_fails_then_rollback_to_savepoint(env: Env, dbname: str) -> None:
    """A Bind of a portal name that exists fails (42P03); after ROLLBACK TO SAVEPOINT the
    first portal is still there and an Execute runs it."""
    m1, decoy = mark(), mark()
    sname, dname, portal = (f"{k}_{uuid.uuid4().hex[:10]}" for k in "sdp")
    with raw_session(env.proxy, dbname) as client:
        client.send(parse(ins(env, m1), sname) + parse(f"SELECT '{decoy}'", dname) + SYNC)
        assert not errors(client.until_ready())
        client.send(query("BEGIN"))
        client.until_ready()
        client.send(bind(portal, sname) + SYNC)
        assert not errors(client.until_ready())
        client.send(query("SAVEPOINT sp"))
        client.until_ready()
        client.send(bind(portal, dname) + SYNC)
        assert errors(client.until_ready())  # portal already exists
        client.send(query("ROLLBACK TO SAVEPOINT sp"))
        client.until_ready()
        client.send(execute(portal) + SYNC)
        got = client.until_ready()
        client.send(query("COMMIT"))
        client.until_ready()
    trail = env.trail(m1, timeout=2)
    assert env.ran(m1) == len([1 for r, c in trail if r["decision"] == "allow" and ok(c)]), (env.ran(m1), got, trail)
    assert not [r for r, c in env.trail(decoy, timeout=1) if r["decision"] == "allow" and ok(c)]


def test_portal_executed_in_parts(env: Env) -> None:
    """Execute with a row limit (PortalSuspended) and again: every Execute is recorded."""
    m1 = mark()
    with raw_session(env.proxy, "staging") as client:
        client.send(query("BEGIN"))
        client.until_ready()
        client.send(
            parse(f"INSERT INTO {env.s}.t (v) SELECT '{m1}' FROM generate_series(1, 3) RETURNING id")
            + bind("p1")
            + execute("p1", 1)
            + execute("p1", 1)
            + execute("p1", 0)
            + SYNC
        )
        got = client.until_ready()
        client.send(query("COMMIT"))
        client.until_ready()
    assert types(got).count(b"s") == 2 and b"E" not in types(got), got
    assert env.ran(m1) == 3
    trail = env.trail(m1, want=3)
    assert len(trail) == 3 and all(len(c) == 1 for _, c in trail), trail


# --------------------------------------------------------------------------- outcomes


# FINDING, fixed: an error of a Describe was taken as the next cycle's INSERT outcome (a committed INSERT
# recorded as failed, 26000): an error completes a pending statement of its own cycle only.
def test_pipeline_error_of_describe_is_not_the_next_cycles_outcome(env: Env) -> None:
    """A pipeline of two cycles: the first only Describes a statement that does not exist
    (an error that is no statement's), the second INSERTs.  The INSERT committed: its
    completion must say so."""
    m1 = mark()
    with raw_session(env.proxy, "staging") as client:
        client.send(describe(b"S", f"nosuch_{m1}") + SYNC + parse(ins(env, m1)) + bind() + execute() + SYNC)
        got = client.until_ready(count=2)
    assert types(got).count(b"E") == 1 and types(got).count(b"C") == 1, got
    assert env.ran(m1) == 1
    trail = env.trail(m1)
    assert len(trail) == 1 and ok(trail[0][1]), trail


# FINDING, fixed: an upstream Parse error was taken as the next cycle's INSERT outcome (42P01).
def test_pipeline_parse_error_upstream_is_not_the_next_cycles_outcome(env: Env) -> None:
    """As above with a Parse the server refuses (a relation that does not exist)."""
    m1 = mark()
    with raw_session(env.proxy, "staging") as client:
        client.send(parse(f"SELECT * FROM {env.s}.nosuch_{m1}", "x") + SYNC + parse(ins(env, m1)) + bind() + execute() + SYNC)
        got = client.until_ready(count=2)
    assert types(got).count(b"E") == 1, got
    assert env.ran(m1) == 1
    trail = env.trail(m1)
    assert len(trail) == 1 and ok(trail[0][1]), trail


# FINDING, fixed: an INSERT rolled back by its implicit COMMIT failing at the Sync was recorded
# ok (its CommandComplete came first); the completions of an implicit transaction now wait for
# its ReadyForQuery.
def test_deferred_constraint_failing_at_commit(env: Env) -> None:
    """An INSERT whose deferred constraint fails at the implicit COMMIT of its Query: the
    row is not committed; the next statement's completion must not take that error."""
    m1, m2 = mark(), mark()
    with env.direct() as conn:
        conn.execute(f"insert into {env.s}.d values (%s, %s)", (abs(hash(m1)) % 10**8, m1))
    with raw_session(env.proxy, "staging") as client:
        client.send(
            parse(f"INSERT INTO {env.s}.d VALUES ({abs(hash(m1)) % 10**8 + 1}, '{m1}')")
            + bind()
            + execute()
            + SYNC
            + parse(ins(env, m2))
            + bind()
            + execute()
            + SYNC
        )
        got = client.until_ready(count=2)
    assert types(got).count(b"E") == 1, got
    assert env.ran(m2) == 1
    trail = env.trail(m2)
    assert len(trail) == 1 and ok(trail[0][1]), trail
    first = env.trail(f"VALUES ({abs(hash(m1)) % 10**8 + 1}, '{m1}')")
    assert len(first) == 1 and not ok(first[0][1]), first


def rolled_back(completions: list[dict[str, Any]]) -> bool:
    return (
        len(completions) == 1
        and completions[0].get("sqlstate") is not None
        and "implicit transaction was rolled back" in (completions[0].get("error") or "")
    )


def test_query_string_whose_later_statement_fails_records_the_earlier_rolled_back(env: Env) -> None:
    """One Query string is one implicit transaction: its second statement fails, so the
    first one's INSERT is not committed, though its CommandComplete said INSERT 0 1."""
    m1 = mark()
    with raw_session(env.proxy, "staging") as client:
        client.send(query(f"{ins(env, m1)}; SELECT 1/0"))
        got = client.until_ready()
    assert types(got).count(b"C") == 1 and types(got).count(b"E") == 1, got
    assert env.ran(m1) == 0
    trail = env.trail(m1)
    assert len(trail) == 1 and rolled_back(trail[0][1]) and trail[0][1][0]["sqlstate"] == "22012", (
        trail
    )


def test_pipeline_whose_later_parse_fails_records_the_insert_rolled_back(env: Env) -> None:
    """Extended protocol: an INSERT runs, then a Parse the server refuses, before one Sync:
    the implicit transaction aborts and the INSERT is rolled back."""
    m1 = mark()
    with raw_session(env.proxy, "staging") as client:
        client.send(
            parse(ins(env, m1))
            + bind()
            + execute()
            + parse(f"SELECT * FROM {env.s}.nosuch_{m1}", "x")
            + SYNC
        )
        got = client.until_ready()
    assert types(got).count(b"E") == 1, got
    assert env.ran(m1) == 0
    trail = env.trail(m1)
    assert len(trail) == 1 and rolled_back(trail[0][1]), trail


def test_explicit_block_keeps_each_statements_own_outcome(env: Env) -> None:
    """In an explicit block an error does not end the transaction: the INSERT's completion
    stays as its CommandComplete said (the block's fate is its COMMIT's or ROLLBACK's)."""
    m1 = mark()
    with raw_session(env.proxy, "staging") as client:
        client.send(query(f"BEGIN; {ins(env, m1)}; SELECT 1/0"))
        client.until_ready()
        client.send(query("ROLLBACK"))
        client.until_ready()
    assert env.ran(m1) == 0
    trail = env.trail(m1)
    assert len(trail) == 1 and ok(trail[0][1]), trail


def test_commit_inside_the_string_leaves_the_earlier_statement_ok(env: Env) -> None:
    """A COMMIT inside the string commits what ran before it: an error after it must not
    make the INSERT look rolled back."""
    m1 = mark()
    with raw_session(env.proxy, "staging") as client:
        client.send(query(f"{ins(env, m1)}; COMMIT; SELECT 1/0"))
        client.until_ready()
    assert env.ran(m1) == 1
    trail = env.trail(m1)
    assert len(trail) == 1 and ok(trail[0][1]), trail


def test_autocommit_statements_that_commit_are_recorded_ok_at_their_ready(env: Env) -> None:
    """The common case: each statement of a clean string, and a pipeline of two cycles,
    completes ok (the completions waited only for their ReadyForQuery)."""
    m1, m2, m3 = mark(), mark(), mark()
    with raw_session(env.proxy, "staging") as client:
        client.send(query(f"{ins(env, m1)}; {ins(env, m2)}"))
        client.until_ready()
        client.send(parse(ins(env, m3)) + bind() + execute() + SYNC + query("SELECT 1"))
        client.until_ready(count=2)
    for m in (m1, m2, m3):
        assert env.ran(m) == 1
        trail = env.trail(m)
        assert len(trail) == 1 and ok(trail[0][1]), trail


# --------------------------------------------------------------------------- simple protocol


def test_several_statements_in_one_query(env: Env) -> None:
    m1, m2 = mark(), mark()
    with raw_session(env.proxy, "staging") as client:
        client.send(query(f"SELECT 1; {ins(env, m1)} /* ; */; SELECT $x$;$x$; {ins(env, m2)}"))
        got = client.until_ready()
    assert not errors(got), got
    assert env.ran(m1) == 1 and env.ran(m2) == 1
    for m in (m1, m2):
        trail = env.trail(m)
        assert len(trail) == 1 and ok(trail[0][1]) and trail[0][0]["decision"] == "allow", trail


def test_function_call_message_refused_and_recorded(env: Env) -> None:
    """The FunctionCall message (by OID, its arguments unseen by governance) for a person
    under masking: refused with a deny record, and the function does not run."""
    m1 = mark()
    oid = int(env.one(f"select '{env.s}.ins(text)'::regprocedure::oid"))
    arg = m1.encode()
    body = struct.pack("!IhhhI", oid, 1, 0, 1, len(arg)) + arg + struct.pack("!h", 0)
    with raw_session(env.proxy, "staging") as client:
        client.send(msg(b"F", body) + query("SELECT 1"))
        got = client.until_ready(count=2)
    assert types(got).count(b"E") == 1, got
    assert env.ran(m1) == 0
    deadline = time.monotonic() + 10
    while True:
        recs = [r for r in records(env) if r.get("type") == "statement" and r.get("statement") == "<FunctionCall>"]
        if recs or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert recs and all(r["decision"] == "deny" for r in recs), recs


# --------------------------------------------------------------------------- COPY


def copy_data(text: str) -> bytes:
    return msg(b"d", text.encode())


def test_copy_from_stdin_recorded(env: Env) -> None:
    m1 = mark()
    with raw_session(env.proxy, "staging") as client:
        client.send(query(f"COPY {env.s}.t (v) FROM STDIN /* {m1} */"))
        t, _ = client.read(10)
        assert t == b"G"
        client.send(copy_data(f"{m1}\n{m1}\n") + msg(b"c"))
        got = client.until_ready()
    assert not errors(got), got
    assert env.ran(m1) == 2
    trail = env.trail(m1)
    assert len(trail) == 1 and ok(trail[0][1]) and trail[0][1][0]["rows"] == 2, trail


def test_query_sent_during_copy_in(env: Env) -> None:
    """A Query in the middle of COPY FROM STDIN (the server would fail the COPY and
    discard the Query): whatever happens, what ran has its record and nothing else ran."""
    m1, m2 = mark(), mark()
    with raw_session(env.proxy, "staging") as client:
        client.send(query(f"COPY {env.s}.t (v) FROM STDIN /* {m1} */"))
        t, _ = client.read(10)
        assert t == b"G"
        client.send(copy_data(f"{m1}\n") + query(ins(env, m2)))
        try:
            client.until_ready(timeout=5)
            client.send(query("SELECT 1"))
            client.until_ready(timeout=5)
        except (ConnectionError, OSError, TimeoutError):
            pass
    time.sleep(0.5)
    for m in (m1, m2):
        ran = env.ran(m)
        trail = env.trail(m, timeout=2)
        assert ran == 0 or [1 for r, c in trail if r["decision"] == "allow" and ok(c)], (m, ran, trail)
        assert not [1 for r, c in trail if ok(c) and r["statement"].startswith("INSERT")] or ran, (m, ran, trail)


# --------------------------------------------------------------------------- disconnects


@pytest.mark.parametrize("proto", ["simple", "extended"])
def test_disconnect_right_after_sending(env: Env, proto: str) -> None:
    """The client sends an INSERT and closes its socket at once (no Terminate), several
    times: whether it ran or not, it has its record, and its completion never says what did
    not happen (when the server had not answered before the session ended, it says that the
    outcome is unknown: the proxy does not wait for the answer of a client that left)."""
    for _ in range(5):
        m1 = mark()
        client = Raw.login(env.proxy, "staging")
        client.send(query(ins(env, m1)) if proto == "simple" else parse(ins(env, m1)) + bind() + execute() + SYNC)
        client.sock.close()
        time.sleep(0.5)
        ran = env.ran(m1)
        trail = env.trail(m1, timeout=2 if ran else 0.5)
        assert len(trail) == int(bool(ran)) or (len(trail) == 1 and not ran), (ran, trail)
        if trail:
            unknown = [c for c in trail[0][1] if (c.get("error") or "").startswith("outcome unknown")]
            assert ok(trail[0][1]) == bool(ran) or unknown, (ran, trail)


def test_disconnect_with_pipeline_without_sync(env: Env) -> None:
    """Execute without Sync (Flush only), then the client goes: the INSERT ran in an
    implicit transaction that is rolled back; it is recorded (its completion is the
    statement's own: the transaction's end has no statement)."""
    m1 = mark()
    client = Raw.login(env.proxy, "staging")
    client.send(parse(ins(env, m1)) + bind() + execute() + FLUSH)
    while client.read(10)[0] != b"C":
        pass
    client.sock.close()
    time.sleep(0.5)
    assert env.ran(m1) == 0
    trail = env.trail(m1)
    assert len(trail) == 1 and trail[0][0]["decision"] == "allow" and trail[0][1], trail


def agent_login(proxy: RunningProxy, dbname: str = "prod", identity: str = "bot@example.com") -> Raw:
    """Raw.login with an agent's token."""
    raw = socket.create_connection((proxy.host, proxy.port), timeout=10)
    raw.sendall(struct.pack("!II", 8, 80877103))
    assert raw.recv(1) == b"S"
    client = Raw(_tls().wrap_socket(raw))
    params = f"user\x00{identity}\x00database\x00{dbname}\x00\x00".encode()
    client.sock.sendall(struct.pack("!II", len(params) + 8, 196608) + params)
    while True:
        t, body = client.read(10)
        if t == b"R" and struct.unpack("!I", body[:4])[0] == 3:
            client.send(msg(b"p", proxy.token(identity, ("eng",), agent=True).encode() + b"\x00"))
        elif t == b"Z":
            return client
        assert t != b"E", body


# FINDING, fixed: an agent in production (no guard) got the rows of the statement that ran while the
# record named the decoy.
def test_agent_reparse_of_existing_name(env: Env) -> None:
    """An agent in production: a failed re-Parse of a named statement; the Execute returns
    the first statement's rows.  The record must name the statement whose rows came back."""
    m1, decoy = mark(), mark()
    name = f"s_{uuid.uuid4().hex[:10]}"
    client = agent_login(env.proxy)
    try:
        client.send(parse(f"SELECT 'ran_{m1}' AS v", name) + SYNC)
        assert not errors(client.until_ready())
        client.send(parse(f"SELECT '{decoy}' AS v", name) + SYNC)
        assert errors(client.until_ready())
        client.send(bind("", name) + execute() + SYNC)
        got = client.until_ready()
    finally:
        client.close()
    rows = [b for t, b in got if t == b"D"]
    assert rows and f"ran_{m1}".encode() in rows[0], got
    trail = env.trail(f"ran_{m1}")
    assert [r["identity_kind"] for r, c in trail if ok(c)] == ["agent"], trail


# --------------------------------------------------------------------------- names replaced after Bind


def test_unnamed_statement_replaced_after_bind(env: Env) -> None:
    m1, decoy = mark(), mark()
    with raw_session(env.proxy, "staging") as client:
        client.send(parse(ins(env, m1)) + bind("p") + parse(f"SELECT '{decoy}'") + execute("p") + SYNC)
        got = client.until_ready()
    assert not errors(got), got
    assert env.ran(m1) == 1
    trail = env.trail(m1)
    assert len(trail) == 1 and ok(trail[0][1]), trail


def test_named_statement_closed_and_reparsed_after_bind(env: Env) -> None:
    m1, decoy = mark(), mark()
    name = f"s_{uuid.uuid4().hex[:10]}"
    with raw_session(env.proxy, "staging") as client:
        client.send(
            parse(ins(env, m1), name) + bind("p", name) + close(b"S", name) + parse(f"SELECT '{decoy}'", name) + execute("p") + SYNC
        )
        got = client.until_ready()
    assert not errors(got), got
    assert env.ran(m1) == 1
    trail = env.trail(m1)
    assert len(trail) == 1 and ok(trail[0][1]), trail


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("proto", ["simple", "extended", "pipelined"])
def test_denied_statement_never_runs(env: Env, proto: str) -> None:
    """An unbounded DELETE in production is refused: a deny record, and nothing deleted."""
    m1 = mark()
    with env.direct() as conn:
        conn.execute(f"insert into {env.s}.t (v) values (%s)", (m1,))
    sql = f"DELETE FROM {env.s}.t /* {m1} */"
    with raw_session(env.proxy, "prod") as client:
        if proto == "simple":
            client.send(query(f"SELECT 1; {sql}"))
        elif proto == "extended":
            client.send(parse(sql) + bind() + execute() + SYNC)
        else:
            client.send(parse("SELECT 1") + bind() + execute() + parse(sql) + bind() + execute() + SYNC)
        got = client.until_ready()
    assert errors(got), got
    assert env.ran(m1) == 1
    trail = env.trail(m1)
    assert trail and all(r["decision"] == "deny" for r, _ in trail), trail
