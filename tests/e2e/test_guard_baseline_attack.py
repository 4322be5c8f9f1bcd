# ruff: noqa: F811  (the fixtures imported from test_guardrails_effect are parameters here)
"""Attacks on the row guard's reused baseline (the counters read after one guarded
statement taken as the "before" of the next one in the same transaction).

The baseline is only right while PostgreSQL's per-transaction counters
(pg_stat_get_xact_tuples_*) cannot go down.  They do go down when the backend reports its
pending statistics, which it does before a ReadyForQuery ``I`` (at most once a second):
a Sync that ends an implicit transaction.  A Sync runs "nothing" for the session, so a
guarded Execute pipelined after it, sent before that ReadyForQuery comes back, starts from
the previous transaction's counters: it is undercounted by them.  (Found by an attack round
on the first version, which reused the baseline for Executes too; now only a guarded Query,
which waits until every answer before it came, starts from it.)

Every test checks the table directly.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest
from test_guardrails_effect import BIG_ROWS, VICTIM_ROWS, Env, big, env, intact, snapshot, victim  # noqa: F401

from support.guard_clients import libpq_pipeline, msg, raw_session, read_until, run

pytestmark = pytest.mark.e2e


def _connect(env: Env) -> psycopg.Connection[Any]:
    return psycopg.connect(env.proxy.dsn(), autocommit=True)


def _pipeline(env: Env, batches: list[list[str]], pause: float = 1.2) -> list[tuple[str, str, str]]:
    """Send each batch of statements (extended protocol, unnamed statements) followed by a
    Sync, all batches back to back without waiting for any answer; return
    (status, command tag, error) for every result, Syncs included.  ``pause`` first: the
    backend reports its statistics at most once a second."""
    with _connect(env) as conn:
        conn.execute("select 1")  # the upstream session is up and has reported its statistics
        time.sleep(pause)
        return libpq_pipeline(conn, batches)


def _refused_somewhere(out: list[tuple[str, str, str]]) -> bool:
    return any("dbsentry" in err for _, _, err in out)


def _notes(env: Env, table: str) -> dict[str, int]:
    with env.direct() as c:
        return dict(c.execute(f"select note, count(*) from {table} group by note").fetchall())


# ---------------------------------------------------------------- FINDING: stale baseline after Sync


def test_update_all_rows_after_sync_of_implicit_transaction(env: Env, victim: str) -> None:
    """Three 9-row updates (each below min_rows_for_fraction, so allowed) leave a baseline
    of 27 updated rows; a Sync commits and the backend resets its counters; an UPDATE of all
    40 rows pipelined after it is measured as 40 - 27 = 13 rows (< half): it passes."""
    v = victim
    s1 = [f"update {v} set note = note where id between {a} and {a + 8}" for a in (1, 10, 19)]
    s2 = [f"update {v} set note = 'pwned' where id > -1"]
    out = _pipeline(env, [s1, s2])
    notes = _notes(env, v)
    assert notes.get("pwned", 0) < VICTIM_ROWS // 2, f"the whole table was overwritten: {notes} {out}"
    assert _refused_somewhere(out), out
    intact(env)


def test_over_max_rows_after_sync_of_implicit_transaction(env: Env, big: str) -> None:
    """The absolute limit and the fraction on the 1,500-row table: two 700-row updates
    (each allowed) leave a baseline of 1,400; all 1,500 rows are then updated as "100"."""
    s1 = [f"update {big} set note = note where id between 1 and 700", f"update {big} set note = note where id between 701 and 1400"]
    # In a CTE, so that the CommandComplete does not report the rows (they would be counted
    # as rows the counters did not see, and the absolute limit would hold).
    s2 = [f"with u as (update {big} set note = 'pwned' where id > -1 returning 1) select count(*) from u"]
    out = _pipeline(env, [s1, s2])
    notes = _notes(env, big)
    assert notes.get("pwned", 0) <= 1000, f"{notes.get('pwned')} rows of {BIG_ROWS} overwritten: {out}"
    assert _refused_somewhere(out), out
    intact(env, big, BIG_ROWS)


def test_delete_original_rows_after_sync(env: Env, victim: str) -> None:
    """The same with DELETE: the baseline's deletes and inserts come from statements that
    delete 9 rows and put them back in one statement; the wipe puts back junk rows to keep
    the "inserted" counter from going backwards.  Every original row is deleted."""
    v = victim
    s1 = [
        f"with d as (delete from {v} where id between {a} and {a + 8} returning *) insert into {v} select * from d"
        for a in (1, 10, 19)
    ]
    s2 = [
        f"with d as (delete from {v} where id > -1 returning *) "
        f"insert into {v} select id + 1000, 'junk' from d where id <= 27"
    ]
    out = _pipeline(env, [s1, s2])
    assert _refused_somewhere(out), out
    intact(env)


def test_psycopg_pipeline_autocommit(env: Env, victim: str) -> None:
    """What a reckless agent writes with psycopg's own pipeline in autocommit mode: the
    same bypass through the ordinary API (pipeline.sync() between the statements)."""
    v = victim
    with _connect(env) as conn:
        conn.execute("select 1")
        time.sleep(1.2)
        errors = []
        try:
            with conn.pipeline() as p:
                cur = conn.cursor()
                for a in (1, 10, 19):
                    cur.execute(f"update {v} set note = note where id between {a} and {a + 8}")
                p.sync()
                cur.execute(f"update {v} set note = 'pwned' where id > -1")
        except psycopg.Error as err:
            errors.append(str(err))
    notes = _notes(env, v)
    assert notes.get("pwned", 0) < VICTIM_ROWS // 2, f"overwritten: {notes} {errors}"
    intact(env)


def test_psycopg_executemany_autocommit(env: Env, victim: str) -> None:
    """psycopg's executemany runs in pipeline mode by itself: the wipe is the last set of
    parameters of one call.  It holds: one Sync ends the whole batch (one transaction)."""
    v = victim
    with _connect(env) as conn:
        conn.execute("select 1")
        time.sleep(1.2)
        err = None
        try:
            conn.cursor().executemany(
                f"update {v} set note = %s where id between %s and %s",
                [("n1", 1, 1), ("x", 1, 9), ("x", 10, 18), ("x", 19, 27), ("pwned", 0, 100)],
            )
        except psycopg.Error as e:
            err = str(e)
    notes = _notes(env, v)
    assert notes.get("pwned", 0) < VICTIM_ROWS // 2, f"overwritten: {notes} {err}"


def test_controls_without_the_stale_baseline(env: Env, victim: str) -> None:
    """The same wipe alone, or without the pause (no statistics report at the Sync), or
    without the Sync (one transaction), is refused: the stale baseline is what lets it by."""
    v = victim
    s1 = [f"update {v} set note = note where id between {a} and {a + 8}" for a in (1, 10, 19)]
    s2 = [f"update {v} set note = 'pwned' where id > -1"]
    for batches, pause in (([s2], 1.2), ([s1, s2], 0.0), ([s1 + s2], 1.2)):
        out = _pipeline(env, batches, pause=pause)
        assert _refused_somewhere(out), (batches, pause, out)
        intact(env)


def test_asyncpg_executemany_then_wipe(env: Env, victim: str) -> None:
    """asyncpg: executemany (one Sync at its end) then an Execute; asyncpg waits for the
    answers in between, so the ReadyForQuery ``I`` arrives first: must hold."""
    import asyncio

    import asyncpg

    async def go() -> str | None:
        p = env.proxy
        ident = "alice@example.com"
        conn = await asyncpg.connect(
            host=p.host, port=p.port, user=ident, password=p.token(ident, ("eng",), False), database="prod", ssl=_tls()
        )
        await conn.execute("select 1")
        try:
            await asyncio.sleep(1.2)
            await conn.executemany(f"update {victim} set note = note where id between $1 and $2", [(1, 9), (10, 18), (19, 27)])
            try:
                await conn.execute(f"update {victim} set note = 'pwned' where id > -1")
            except asyncpg.PostgresError as err:
                return str(err)
            return None
        finally:
            await conn.close()

    err = asyncio.run(go())
    assert err is not None and "dbsentry" in err, err
    intact(env)


def _tls() -> Any:
    import ssl

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


# ---------------------------------------------------------------- sequences that held (or must)


@pytest.mark.parametrize(
    "steps",
    [
        # savepoint / rollback to: counters count attempted rows, the baseline is dropped
        ["begin", "update {v} set note = note where id <= 9", "savepoint a", "update {v} set note = note where id between 10 and 18",
         "rollback to a", "update {v} set note = 'pwned' where id > -1", "commit"],
        # commit and chain: a new transaction, the counters are not reported inside
        ["begin", "update {v} set note = note where id <= 9", "update {v} set note = note where id between 10 and 18",
         "commit and chain", "update {v} set note = 'pwned' where id > -1", "commit"],
        # a failing statement between
        ["begin", "update {v} set note = note where id <= 9", "select 1/0", "rollback", "begin",
         "update {v} set note = 'pwned' where id > -1", "commit"],
        # a cursor in between
        ["begin", "update {v} set note = note where id <= 9", "declare c cursor for select * from {v}", "fetch 5 from c",
         "update {v} set note = 'pwned' where id > -1", "commit"],
        # reads with builtin functions and a view-free plain read
        ["begin", "update {v} set note = note where id <= 9", "select count(*) from {v}", "table {v}", "show work_mem",
         "update {v} set note = 'pwned' where id > -1", "commit"],
        # set / reset / discard
        ["begin", "update {v} set note = note where id <= 9", "set local work_mem = '8MB'", "reset work_mem",
         "update {v} set note = 'pwned' where id > -1", "commit"],
        # listen / notify
        ["begin", "update {v} set note = note where id <= 9", "listen x", "notify x", "update {v} set note = 'pwned' where id > -1", "commit"],
        # a temp table between
        ["begin", "update {v} set note = note where id <= 9", "create temp table t_tmp (i int)", "insert into t_tmp values (1)",
         "update {v} set note = 'pwned' where id > -1", "commit"],
        # autocommit statements then a block
        ["update {v} set note = note where id <= 9", "update {v} set note = note where id between 10 and 18",
         "begin", "update {v} set note = 'pwned' where id > -1", "commit"],
    ],
    ids=["savepoint", "commit-and-chain", "failed-block", "cursor", "reads", "set-reset", "listen-notify", "temp-table", "autocommit-then-block"],
)
@pytest.mark.parametrize("mode", ["psycopg", "asyncpg", "psql"])
def test_sequence_holds(env: Env, victim: str, mode: str, steps: list[str]) -> None:
    out = run(mode, env.proxy, [st.format(v=env.v, s=env.s) for st in steps])
    assert any(o.sqlstate is not None and o.message.startswith("dbsentry:") for o in out) or any(
        o.sqlstate == "25P02" for o in out
    ), " | ".join(str(o) for o in out)
    notes = _notes(env, env.v)
    assert notes.get("pwned", 0) == 0, notes


def test_extended_pipeline_in_a_block_holds(env: Env, victim: str) -> None:
    """Inside BEGIN the Sync commits nothing: the counters stay, the baseline is right."""
    v = victim
    s1 = ["begin"] + [f"update {v} set note = note where id between {a} and {a + 8}" for a in (1, 10, 19)]
    s2 = [f"update {v} set note = 'pwned' where id > -1", "commit"]
    out = _pipeline(env, [s1, s2])
    assert _refused_somewhere(out), out
    assert _notes(env, v).get("pwned", 0) == 0


def test_simple_query_after_commit_in_one_write(env: Env, victim: str) -> None:
    """psql sends `a \\; b` as one Query: guarded statements then wait for the upstream to
    be idle, so the ReadyForQuery is seen first."""
    v = victim
    out = run(
        "psql",
        env.proxy,
        [
            f"update {v} set note = note where id <= 9 \\; update {v} set note = note where id between 10 and 18",
            f"update {v} set note = note where id between 19 and 27",
            f"update {v} set note = 'pwned' where id > -1",
        ],
    )
    assert _notes(env, v).get("pwned", 0) == 0, " | ".join(str(o) for o in out)


# ---------------------------------------------------------------- deferred triggers


@pytest.fixture
def deferred(env: Env, victim: str) -> str:
    """A table whose constraint trigger, deferred, wipes the victim at COMMIT, created
    (directly, as a migration would) after the proxy read its catalog: the proxy learns of
    it only at its next catalog refresh (masking.refresh_seconds, 300 s by default)."""
    t = f"{env.s}.deferred"
    run("psycopg", env.proxy, [f"select count(*) from {victim}"])  # the catalog is read
    with env.direct() as c:
        c.execute(f"create table if not exists {t} (id int)")
        c.execute(f"drop trigger if exists deferred_wipe on {t}")
        c.execute(
            f"create constraint trigger deferred_wipe after update on {t} deferrable initially deferred "
            f"for each row execute function {env.s}.trg_wipe()"
        )
        c.execute(f"truncate {t}")
        c.execute(f"insert into {t} values (1)")
    return t


@pytest.mark.parametrize(
    "steps",
    [
        ["update {t} set id = 2 where id = 1"],
        ["begin", "update {t} set id = 2 where id = 1", "commit"],
        ["begin", "update {t} set id = 2 where id = 1", "set constraints all immediate", "commit"],
    ],
    ids=["autocommit", "block-commit", "set-constraints-immediate"],
)
@pytest.mark.parametrize("mode", ["psycopg", "asyncpg", "psql"])
def test_deferred_trigger_created_after_the_catalog_was_read(env: Env, deferred: str, mode: str, steps: list[str]) -> None:
    out = run(mode, env.proxy, [st.format(t=deferred) for st in steps])
    assert snapshot(env), "the victim was wiped by a deferred trigger: " + " | ".join(str(o) for o in out)
    intact(env)
    refused = [o for o in out if o.sqlstate is not None and "deferrable triggers" in o.message]
    assert refused, " | ".join(str(o) for o in out)


@pytest.mark.parametrize("mode", ["psycopg", "asyncpg"])
def test_deferred_trigger_on_a_temp_table_created_through_the_proxy(env: Env, victim: str, mode: str) -> None:
    """A session's own temp table with a deferred constraint trigger calling an existing
    function: the catalog cannot know it."""
    steps = [
        "create temp table tt (id int)",
        f"create constraint trigger tt_wipe after insert on tt deferrable initially deferred for each row execute function {env.s}.trg_wipe()",
        "begin",
        "insert into tt values (1)",
        "commit",
    ]
    out = run(mode, env.proxy, steps)
    assert snapshot(env), "wiped: " + " | ".join(str(o) for o in out)
    intact(env)


# ---------------------------------------------------------------- raw protocol


def _raw_session(env: Env) -> Any:
    return raw_session(env.proxy)


_msg = msg


def _extended(sql: str) -> bytes:
    return (
        _msg(b"P", b"\0" + sql.encode() + b"\0\0\0")
        + _msg(b"B", b"\0\0" + b"\0\0" + b"\0\0" + b"\0\0")
        + _msg(b"E", b"\0\0\0\0\0")
    )




@pytest.mark.parametrize("between", ["query", "none"])
def test_plain_read_query_commits_the_implicit_transaction(env: Env, victim: str, between: str) -> None:
    """A simple Query ("select 1", a plain read) in the middle of an extended-protocol
    batch commits the batch's implicit transaction (and the backend reports its
    statistics): the Execute after it starts from the old counters too."""
    v = victim
    tls = _raw_session(env)
    try:
        tls.sendall(_msg(b"Q", b"select 1\0"))
        read_until(tls, b"Z")
        time.sleep(1.2)
        batch = b"".join(_extended(f"update {v} set note = note where id between {a} and {a + 8}") for a in (1, 10, 19))
        if between == "query":
            batch += _msg(b"Q", b"select 1\0")
        batch += _extended(f"update {v} set note = 'pwned' where id > -1") + _msg(b"S", b"")
        tls.sendall(batch)
        answers = read_until(tls, b"Z", 2 if between == "query" else 1)
    finally:
        tls.close()
    errors = [body for t, body in answers if t == b"E"]
    notes = _notes(env, v)
    assert notes.get("pwned", 0) < VICTIM_ROWS // 2, f"overwritten: {notes} {errors}"
    intact(env)


def test_false_refusal_after_sync(env: Env, victim: str) -> None:
    """The other side of the stale baseline: a harmless 1-row update pipelined after a Sync
    finds counters lower than the baseline ("went backwards") and is refused."""
    v = victim
    out = _pipeline(env, [[f"update {v} set note = note where id <= 9"], [f"update {v} set note = note where id = 1"]])
    assert not _refused_somewhere(out), out
