"""Attack round on the outcome of PostgreSQL statements in the audit trail (commit 3d78d54).

The promise (docs/audit.md, "Implicit transactions"): a statement sent while no block is
open runs in an implicit transaction with the rest of its Query string (or of the
extended-protocol messages up to the Sync); when that transaction fails, every write of it
that had succeeded is recorded with the failure's sqlstate and ``its implicit transaction
was rolled back (the statement ran): ...``; a read is recorded as it ran; a cycle that also
ran transaction control, CALL or DO keeps what each CommandComplete said; in an explicit
block each completion is what the server answered it.

Each probe writes a unique marker through the proxy, reads directly what PostgreSQL
committed, and compares that with the completion records.  The trail lies when a write that
committed is recorded as rolled back or failed, a write that was rolled back is recorded
ok, or a completion is another statement's.

Probes that found a hole were ``xfail(strict=True)`` asserting the secure behaviour until
fixed; each is marked ``FINDING, fixed`` now.  The promise above is as the first version had
it: the round found writes classed as reads, failed transaction control, CALL and DO in Query
strings, blocks ended inside a string and the proxy's own refusals all leaving rolled-back
writes recorded ok (docs/audit.md has the rules that hold now).
"""

from __future__ import annotations

import socket
import struct
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from test_audit_completeness_attack import (  # type: ignore[import-not-found]
    FLUSH,
    Env,
    errors,
    mark,
    ok,
    records,
    rolled_back,
)
from test_effect_freeze_attack import (  # type: ignore[import-not-found]
    SYNC,
    Raw,
    bind,
    describe,
    execute,
    msg,
    parse,
    query,
    raw_session,
    types,
)

from support.pg import PgServer
from support.proxy import run_proxy, write_config

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def env(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    s = f"outcome_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        conn.execute(
            f"""
            create schema {s};
            create table {s}.t (id serial primary key, v text);
            create table {s}.d (id int primary key, v text,
              constraint d_v unique (v) deferrable initially deferred);
            create function {s}.ins(v text) returns int language sql volatile as
              $$ insert into {s}.t (v) values (v) returning 1 $$;
            create procedure {s}.p_commit(v text) language plpgsql as
              $$ begin insert into {s}.t (v) values (v); commit; end $$;
            create procedure {s}.p_fail(v text) language plpgsql as
              $$ begin insert into {s}.t (v) values (v); raise exception 'p_fail boom'; end $$;
            create procedure {s}.p_ins(v text) language plpgsql as
              $$ begin insert into {s}.t (v) values (v); end $$;
            """
        )
    directory = tmp_path_factory.mktemp("outcome_attack_pg")
    config = write_config(
        directory, pg_server, extra={"audit": {"durability": "effect", "redact_literals": False}}
    )
    try:
        with run_proxy(config) as proxy:
            yield Env(proxy, pg_server, s)
    finally:
        with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
            conn.execute(f"drop schema if exists {s} cascade")


def ins(env: Env, m: str) -> str:
    return f"INSERT INTO {env.s}.t (v) VALUES ('{m}')"


def one_outcome(env: Env, m: str, timeout: float = 5) -> list[dict[str, Any]]:
    """The completions of the one allowed statement naming ``m`` (in its text, not in a comment
    or a transaction name)."""
    trail = [
        (r, c)
        for r, c in env.trail(m, timeout=timeout)
        if r["decision"] != "deny"
        and not r["statement"].startswith(("PREPARE TRANSACTION", "COMMIT"))
    ]
    assert len(trail) == 1, trail
    return trail[0][1]


def truthful(env: Env, m: str, timeout: float = 5) -> tuple[bool, int, list[dict[str, Any]]]:
    """Whether the completion of the write naming ``m`` says what PostgreSQL did: ok when its
    row committed, an error when it did not."""
    ran = env.ran(m)
    comp = one_outcome(env, m, timeout)
    return (ok(comp) == bool(ran)), ran, comp


def until_closed(client: Raw) -> list[tuple[bytes, bytes]]:
    """Every message until the proxy closes the connection."""
    got = []
    try:
        while True:
            got.append(client.read(5))
    except (ConnectionError, OSError):
        return got


def run(env: Env, dbname: str, data: bytes, count: int = 1) -> list[tuple[bytes, bytes]]:
    with raw_session(env.proxy, dbname) as client:
        client.send(data)
        return client.until_ready(count=count)


# --------------------------------------------------------------------------- reads that write


# FINDING, fixed: a data-modifying CTE under a SELECT has class READ: completed at once ok, though
# the implicit transaction was rolled back by a later error of its string
def test_writable_cte_then_error(env: Env) -> None:
    m = mark()
    got = run(
        env, "staging", query(f"WITH x AS ({ins(env, m)} RETURNING v) SELECT * FROM x; SELECT 1/0")
    )
    assert errors(got)
    good, ran, comp = truthful(env, m)
    assert ran == 0 and good, comp


# FINDING, fixed: SELECT of a function that writes has class READ: completed ok at once, though
# rolled back
def test_select_of_writing_function_then_error(env: Env) -> None:
    m = mark()
    got = run(env, "staging", query(f"SELECT {env.s}.ins('{m}'); SELECT 1/0"))
    assert errors(got)
    good, ran, comp = truthful(env, m)
    assert ran == 0 and good, comp


# FINDING, fixed: extended protocol, same as above: Execute of a writable CTE then a failing
# Execute before the Sync
def test_writable_cte_then_error_extended(env: Env) -> None:
    m = mark()
    data = parse(f"WITH x AS ({ins(env, m)} RETURNING v) SELECT * FROM x") + bind() + execute()
    data += parse("SELECT 1/0") + bind() + execute() + SYNC
    got = run(env, "staging", data)
    assert errors(got)
    good, ran, comp = truthful(env, m)
    assert ran == 0 and good, comp


# --------------------------------------------------------------------------- failed transaction control


# FINDING, fixed: a transaction-control statement that FAILED (SAVEPOINT / RELEASE / ROLLBACK TO
# outside a block, 25P01) marks the cycle as controlling its transaction: the INSERT rolled back
# is recorded ok
@pytest.mark.parametrize(
    "control", ["SAVEPOINT sp", "RELEASE SAVEPOINT sp", "ROLLBACK TO SAVEPOINT sp"]
)
def test_failed_savepoint_command_after_insert(env: Env, control: str) -> None:
    m = mark()
    got = run(env, "staging", query(f"{ins(env, m)}; {control}"))
    assert errors(got), got
    good, ran, comp = truthful(env, m)
    assert ran == 0 and good, comp


# FINDING, fixed: a CALL that fails (unknown procedure, or one that raises) after an INSERT of its
# string: in a multi-statement string a procedure cannot commit, yet the rolled-back INSERT is
# recorded ok
@pytest.mark.parametrize("call", ["CALL {s}.nosuch_proc()", "CALL {s}.p_fail('x')"])
def test_failing_call_after_insert_in_one_string(env: Env, call: str) -> None:
    m = mark()
    got = run(env, "staging", query(f"{ins(env, m)}; {call.format(s=env.s)}"))
    assert errors(got), got
    good, ran, comp = truthful(env, m)
    assert ran == 0 and good, comp


# FINDING, fixed: a DO block in a multi-statement string cannot commit; one that raises (or a
# later error) still leaves the rolled-back writes of the string recorded ok
@pytest.mark.parametrize(
    "tail",
    [
        "DO $$BEGIN RAISE EXCEPTION 'boom'; END$$",
        "DO $$BEGIN PERFORM 1; END$$; SELECT 1/0",
    ],
    ids=["do-raises", "do-then-error"],
)
def test_do_block_after_insert_in_one_string(env: Env, tail: str) -> None:
    m = mark()
    got = run(env, "staging", query(f"{ins(env, m)}; {tail}"))
    assert errors(got), got
    good, ran, comp = truthful(env, m)
    assert ran == 0 and good, comp


# FINDING, fixed: a DO block that writes, then an error of its string: the DO's own write was
# rolled back, recorded ok (DO counts as transaction control)
def test_do_block_that_writes_then_error(env: Env) -> None:
    m = mark()
    got = run(env, "staging", query(f"DO $$BEGIN {ins(env, m)}; END$$; SELECT 1/0"))
    assert errors(got) and types(got).count(b"C") == 1, got
    good, ran, comp = truthful(env, m)
    assert ran == 0 and good, comp


# FINDING, fixed: INSERT; PREPARE TRANSACTION (disabled, 55000) in one string: the INSERT was
# rolled back, recorded ok (the failed PREPARE TRANSACTION counts as transaction control)
def test_prepare_transaction_in_implicit_transaction(env: Env) -> None:
    """PREPARE TRANSACTION after an INSERT of the same string (prepared transactions are
    normally disabled): whatever happens, the INSERT's completion says whether it committed."""
    m = mark()
    got = run(env, "staging", query(f"{ins(env, m)}; PREPARE TRANSACTION 'x_{m}'"))
    with env.direct() as conn:
        conn.execute(f"select 1 from pg_prepared_xacts where gid = 'x_{m}'")
    good, ran, comp = truthful(env, m)
    assert good, (got, ran, comp)


def test_procedure_that_commits_keeps_the_insert_ok(env: Env) -> None:
    """Extended protocol: an INSERT, then a CALL of a procedure that COMMITs (non-atomic at
    top level), then an error, before one Sync: the INSERT is committed and recorded ok."""
    m, m2 = mark(), mark()
    data = parse(ins(env, m)) + bind() + execute()
    data += parse(f"CALL {env.s}.p_commit('{m2}')") + bind() + execute()
    data += parse("SELECT 1/0") + bind() + execute() + SYNC
    got = run(env, "staging", data)
    assert errors(got), got
    good, ran, comp = truthful(env, m)
    assert ran == 1 and good, comp


# --------------------------------------------------------------------------- where the cycle began


# FINDING, fixed: a string that began in an explicit block and ends it (COMMIT/ROLLBACK) runs its
# next statements in an implicit transaction: a later error rolls them back, but they were
# recorded ok at once
@pytest.mark.parametrize("ender", ["COMMIT", "ROLLBACK", "END", "ABORT"])
def test_block_ended_inside_the_string_then_insert_then_error(env: Env, ender: str) -> None:
    m = mark()
    undone_by_the_last(env, m, query("BEGIN"), query(f"{ender}; {ins(env, m)}; SELECT 1/0"))


def undone_by_the_last(env: Env, m: str, *requests: bytes) -> None:
    """Send each request and wait for its answer: the last one fails, and the write of
    ``m`` was rolled back with it; the trail must say so."""
    got: list[tuple[bytes, bytes]] = []
    with raw_session(env.proxy, "staging") as client:
        for request in requests:
            client.send(request)
            got = client.until_ready()
    assert errors(got), got
    good, ran, comp = truthful(env, m)
    assert ran == 0 and good, comp


# FINDING, fixed: same from a failed block (status E): ROLLBACK; INSERT; error
def test_failed_block_rolled_back_inside_the_string_then_insert_then_error(env: Env) -> None:
    m = mark()
    undone_by_the_last(env, m, query("BEGIN"), query("SELECT 1/0"), query(f"ROLLBACK; {ins(env, m)}; SELECT 1/0"))


# FINDING, fixed: extended protocol: Execute COMMIT (block open), Execute INSERT, failing Execute,
# Sync: the INSERT ran in an implicit transaction that was rolled back, recorded ok
def test_commit_execute_then_insert_then_error_extended(env: Env) -> None:
    m = mark()
    data = parse("COMMIT") + bind() + execute() + parse(ins(env, m)) + bind() + execute()
    undone_by_the_last(env, m, query("BEGIN"), data + parse("SELECT 1/0") + bind() + execute() + SYNC)


def test_begin_inside_the_string_keeps_block_semantics(env: Env) -> None:
    """Idle, ``INSERT a; BEGIN; INSERT b; SELECT 1/0``: the implicit transaction becomes a
    block that fails (E); the client then ROLLBACKs: nothing committed.  The trail keeps each
    CommandComplete (documented), so it must at least not say the failure was someone else's."""
    m1, m2 = mark(), mark()
    with raw_session(env.proxy, "staging") as client:
        client.send(query(f"{ins(env, m1)}; BEGIN; {ins(env, m2)}; SELECT 1/0"))
        got = client.until_ready()
        client.send(query("ROLLBACK"))
        client.until_ready()
    assert got[-1][1] == b"E", got
    assert env.ran(m1) == 0 and env.ran(m2) == 0


def test_commit_and_chain(env: Env) -> None:
    """``BEGIN; INSERT a; COMMIT AND CHAIN; INSERT b; SELECT 1/0`` then ROLLBACK: a committed
    (recorded ok), b in the chained block (its completion as the server said; the block's
    ROLLBACK is recorded)."""
    m1, m2 = mark(), mark()
    with raw_session(env.proxy, "staging") as client:
        client.send(query(f"BEGIN; {ins(env, m1)}; COMMIT AND CHAIN; {ins(env, m2)}; SELECT 1/0"))
        client.until_ready()
        client.send(query("ROLLBACK"))
        client.until_ready()
    good, ran, comp = truthful(env, m1)
    assert ran == 1 and good, comp
    assert env.ran(m2) == 0


# --------------------------------------------------------------------------- pipelines


def test_pipeline_of_three_syncs_middle_fails(env: Env) -> None:
    m1, m2, m3 = mark(), mark(), mark()
    data = parse(ins(env, m1)) + bind() + execute() + SYNC
    data += (
        parse(ins(env, m2))
        + bind()
        + execute()
        + FLUSH
        + parse("SELECT 1/0")
        + bind()
        + execute()
        + SYNC
    )
    data += parse(ins(env, m3)) + bind() + execute() + SYNC
    got = run(env, "staging", data, count=3)
    assert types(got).count(b"E") == 1, got
    for m in (m1, m2, m3):
        good, ran, comp = truthful(env, m)
        assert good, (m, ran, comp)
    assert env.ran(m2) == 0 and rolled_back(one_outcome(env, m2))


def test_execute_then_simple_query_share_the_transaction(env: Env) -> None:
    """An Execute without Sync, then a Query: they run in one transaction that the Query ends
    (committed when it succeeds, rolled back when it fails)."""
    m1, m2 = mark(), mark()
    got = run(
        env, "staging", parse(ins(env, m1)) + bind() + execute() + FLUSH + query("SELECT 1/0")
    )
    assert errors(got), got
    got = run(env, "staging", parse(ins(env, m2)) + bind() + execute() + query("SELECT 1"))
    assert not errors(got), got
    good1, ran1, comp1 = truthful(env, m1)
    good2, ran2, comp2 = truthful(env, m2)
    assert (ran1, ran2) == (0, 1) and good1 and good2, (comp1, comp2)


def test_describe_error_after_execute_in_one_cycle(env: Env) -> None:
    m = mark()
    got = run(
        env,
        "staging",
        parse(ins(env, m)) + bind() + execute() + describe(b"S", f"nosuch_{m}") + SYNC,
    )
    assert errors(got), got
    good, ran, comp = truthful(env, m)
    assert ran == 0 and good, comp


def test_upstream_bind_error_after_execute_in_one_cycle(env: Env) -> None:
    """A Bind the server refuses (wrong parameter count) after the INSERT's Execute."""
    m = mark()
    data = (
        parse(ins(env, m))
        + bind()
        + execute()
        + parse("SELECT $1::int", "x1")
        + bind("", "x1", ("nope",))
        + SYNC
    )
    got = run(env, "staging", data)
    assert errors(got), got
    good, ran, comp = truthful(env, m)
    assert ran == 0 and good, comp


# FINDING, fixed: an error the proxy injects (its refusal: a Bind of an unknown statement, a
# denied statement) fails the implicit transaction upstream, but is not counted as the cycle's
# error: the rolled-back INSERT before it is recorded ok
def test_refused_bind_after_execute_in_one_cycle(env: Env) -> None:
    m = mark()
    data = parse(ins(env, m)) + bind() + execute() + bind("", f"nosuch_{m[:6]}") + execute() + SYNC
    got = run(env, "staging", data)
    assert errors(got), got
    good, ran, comp = truthful(env, m)
    assert ran == 0 and good, comp


# FINDING, fixed: a statement the proxy denies (unbounded DELETE in production) after an allowed
# INSERT in one extended cycle: upstream the marker fails and rolls the INSERT back, the trail
# says ok
def test_denied_statement_after_insert_extended(env: Env) -> None:
    m = mark()
    data = (
        parse(ins(env, m))
        + bind()
        + execute()
        + parse(f"DELETE FROM {env.s}.t")
        + bind()
        + execute()
        + SYNC
    )
    got = run(env, "prod", data)
    assert errors(got), got
    good, ran, comp = truthful(env, m)
    assert ran == 0 and good, comp


def test_denied_statement_after_insert_simple(env: Env) -> None:
    m = mark()
    got = run(env, "prod", query(f"{ins(env, m)}; DELETE FROM {env.s}.t"))
    assert errors(got), got
    ran = env.ran(m)
    trail = [(r, c) for r, c in env.trail(m, timeout=3) if r["decision"] != "deny"]
    assert ran == 0
    assert all(not ok(c) for _, c in trail), trail


def test_portal_suspended_then_error(env: Env) -> None:
    """An INSERT ... RETURNING executed with a row limit (PortalSuspended), then an error
    before the Sync: the INSERT is rolled back."""
    m = mark()
    data = parse(
        f"INSERT INTO {env.s}.t (v) SELECT '{m}' FROM generate_series(1, 3) RETURNING id"
    ) + bind("p")
    data += execute("p", 1) + parse("SELECT 1/0") + bind() + execute() + SYNC
    got = run(env, "staging", data)
    assert b"s" in types(got) and errors(got), got
    assert env.ran(m) == 0
    assert rolled_back(one_outcome(env, m))


def test_portal_suspended_then_sync_commits(env: Env) -> None:
    m = mark()
    data = parse(
        f"INSERT INTO {env.s}.t (v) SELECT '{m}' FROM generate_series(1, 3) RETURNING id"
    ) + bind("p")
    data += execute("p", 1) + SYNC
    got = run(env, "staging", data)
    assert b"s" in types(got) and not errors(got), got
    good, ran, comp = truthful(env, m)
    assert ran == 3 and good, comp


def test_sql_execute_of_prepared_insert_then_error(env: Env) -> None:
    m = mark()
    name = f"pi_{m}"
    got = run(env, "staging", query(f"PREPARE {name} AS {ins(env, m)}; EXECUTE {name}; SELECT 1/0"))
    assert errors(got), got
    assert env.ran(m) == 0
    trail = env.trail(m, want=2)
    execs = [c for r, c in trail if r["statement"].startswith("EXECUTE")] or [
        c for r, c in env.trail(f"EXECUTE {name}") if r["statement"].startswith("EXECUTE")
    ]
    assert execs and all(rolled_back(c) for c in execs), trail


def test_statement_timeout_rolls_back(env: Env) -> None:
    m = mark()
    got = run(
        env,
        "staging",
        query(
            f"SET statement_timeout = 300; {ins(env, m)}; SELECT pg_sleep(3); RESET statement_timeout"
        ),
    )
    assert errors(got), got
    assert env.ran(m) == 0
    assert rolled_back(one_outcome(env, m))


def test_cancel_request_rolls_back(env: Env) -> None:
    m = mark()
    with raw_session(env.proxy, "staging") as client:
        client.send(query(f"{ins(env, m)}; SELECT pg_sleep(5)"))
        time.sleep(0.5)
        with socket.create_connection((env.proxy.host, env.proxy.port), timeout=5) as cancel:
            cancel.sendall(struct.pack("!III", 16, 80877102, client.pid) + client.secret)
            cancel.settimeout(5)
            cancel.recv(1)
        got = client.until_ready()
    assert errors(got), got
    assert env.ran(m) == 0
    assert rolled_back(one_outcome(env, m))


# --------------------------------------------------------------------------- COPY


def test_insert_then_copy_fail_in_one_string(env: Env) -> None:
    m1, m2 = mark(), mark()
    with raw_session(env.proxy, "staging") as client:
        client.send(query(f"{ins(env, m1)}; COPY {env.s}.t (v) FROM STDIN /* {m2} */"))
        while client.read(10)[0] != b"G":
            pass
        client.send(msg(b"d", f"{m2}\n".encode()) + msg(b"f", b"client gave up\x00"))
        got = client.until_ready()
    assert errors(got), got
    for m in (m1, m2):
        good, ran, comp = truthful(env, m)
        assert ran == 0 and good, (m, comp)


def test_insert_then_copy_done_in_one_string(env: Env) -> None:
    m1, m2 = mark(), mark()
    with raw_session(env.proxy, "staging") as client:
        client.send(query(f"{ins(env, m1)}; COPY {env.s}.t (v) FROM STDIN /* {m2} */"))
        while client.read(10)[0] != b"G":
            pass
        client.send(msg(b"d", f"{m2}\n".encode()) + msg(b"c"))
        got = client.until_ready()
    assert not errors(got), got
    for m in (m1, m2):
        good, ran, comp = truthful(env, m)
        assert ran == 1 and good, (m, comp)


# --------------------------------------------------------------------------- explicit blocks


def test_deferred_constraint_in_explicit_block_fails_at_commit(env: Env) -> None:
    """The COMMIT's completion carries the failure (the block's fate); it is not the
    INSERT's nor the next statement's."""
    m1, m2 = mark(), mark()
    key = abs(hash(m1)) % 10**8
    with env.direct() as conn:
        conn.execute(f"insert into {env.s}.d values (%s, %s)", (key, m1))
    with raw_session(env.proxy, "staging") as client:
        client.send(query(f"BEGIN; INSERT INTO {env.s}.d VALUES ({key + 1}, '{m1}')"))
        client.until_ready()
        client.send(query(f"COMMIT /* {m2} */"))
        got = client.until_ready()
        client.send(query(f"{ins(env, m2)}"))
        client.until_ready()
    assert errors(got), got
    commit = [(r, c) for r, c in env.trail(m2, want=2) if r["statement"].startswith("COMMIT")]
    assert len(commit) == 1 and commit[0][1] and commit[0][1][0]["sqlstate"] == "23505", commit
    good, ran, comp = truthful(env, m2)
    assert ran == 1 and good, comp


# --------------------------------------------------------------------------- the row guard (production)


def test_row_guard_insert_then_error_simple(env: Env) -> None:
    m = mark()
    got = run(env, "prod", query(f"{ins(env, m)}; SELECT 1/0"))
    assert errors(got), got
    good, ran, comp = truthful(env, m)
    assert good, (ran, comp)


def test_row_guard_insert_then_error_extended(env: Env) -> None:
    m = mark()
    data = parse(ins(env, m)) + bind() + execute() + parse("SELECT 1/0") + bind() + execute() + SYNC
    got = run(env, "prod", data)
    assert errors(got), got
    good, ran, comp = truthful(env, m)
    assert good, (ran, comp)


def test_row_guard_update_then_error_extended(env: Env) -> None:
    m = mark()
    with env.direct() as conn:
        conn.execute(f"insert into {env.s}.t (v) values (%s)", (m,))
    n = mark()
    data = parse(f"UPDATE {env.s}.t SET v = '{n}' WHERE v = '{m}'") + bind() + execute()
    data += parse("SELECT 1/0") + bind() + execute() + SYNC
    got = run(env, "prod", data)
    assert errors(got), got
    good, ran, comp = truthful(env, n)
    assert good, (ran, comp)


def test_row_guard_update_then_error_simple(env: Env) -> None:
    m = mark()
    with env.direct() as conn:
        conn.execute(f"insert into {env.s}.t (v) values (%s)", (m,))
    n = mark()
    got = run(env, "prod", query(f"UPDATE {env.s}.t SET v = '{n}' WHERE v = '{m}'; SELECT 1/0"))
    assert errors(got), got
    good, ran, comp = truthful(env, n)
    assert good, (ran, comp)


def test_row_guard_call_then_error_extended(env: Env) -> None:
    m = mark()
    data = (
        parse(f"CALL {env.s}.p_ins('{m}')")
        + bind()
        + execute()
        + parse("SELECT 1/0")
        + bind()
        + execute()
        + SYNC
    )
    got = run(env, "prod", data)
    assert errors(got), got
    good, ran, comp = truthful(env, m)
    assert good, (ran, comp)


def test_no_record_without_completion(env: Env) -> None:
    """Sweep: every statement record of this module's session(s) so far has a completion."""
    time.sleep(1)
    recs = records(env)
    ids = {r.get("statement_id") for r in recs if r.get("type") == "completion"}
    missing = [
        r["statement"][:80]
        for r in recs
        if r.get("type") == "statement"
        and r.get("decision") != "deny"
        and env.s in (r.get("statement") or "")
        and r["id"] not in ids
    ]
    assert not missing, missing
