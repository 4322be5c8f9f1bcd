"""Attacks on the row guard's "counters known to be zero" (commit 4c172b7): from
PostgreSQL 15 the check after each reading calls pg_stat_force_next_flush(); after the
next ReadyForQuery "I" that is the last frame of its read with nothing outstanding
(Guard.idle_ready), the next guarded statement gets no reading before it (before = {}).

Security (a wipe or DDL committed): the claim "a wrong zero can only count too much" held
in every sequence tried around the new mechanism (the first part's tests pass): pipelines
of Syncs and Queries, "COMMIT; BEGIN; ..." in one string, COMMIT AND CHAIN, savepoints,
cursors WITH HOLD, functions calling pg_stat_force_next_flush() / pg_stat_clear_snapshot(),
stats_fetch_consistency, DISCARD ALL, DEALLOCATE ALL, a failed statement or a guard
refusal before the wipe, extended protocol with and without Sync, a Query sent while a
guarded Execute runs.  (PREPARE TRANSACTION is disabled on the test server.)  effect =
after - before, and before = {} subtracts nothing; the reading after does not depend on
the zero.

What failed (findings), all passing since the fixes after this round:

SECURITY (not caused by the zero; the old code had them too):

- test_function_that_turns_track_counts_off_in_its_definition: a function created with
  ``SET track_counts = off`` deletes all 1,500 rows; PostgreSQL does not count rows of
  relations opened while track_counts is off, the reading after saw nothing, and
  ``SELECT fn()`` reports "SELECT 1": COMMITTED.  Fixed: a statement calling a function
  (or writing a table whose triggers or defaults call one) whose SET clause sets
  track_counts is refused (FunctionSafety.unguardable; such a function created since the
  catalog was read, or called from inside another function, is a documented limit:
  docs/security.md).
- test_dynamic_sql_function_turns_track_counts_off_for_the_session: a generic "execute
  this text" function runs ``select set_config('track_counts', 'off', false)``: it changed
  no row and passed; the setting stayed for the session and every later wipe hidden in a
  function committed.  Fixed by construction: the check after every reading also reads
  track_counts; off, the statement is rolled back (guardrails.measurement, no approval).

FALSE REFUSALS (caused by the zero: a stale "flush asked" flag):

The guard set ``_flush_asked`` when a check ran and cleared it only when it could use it.
PostgreSQL consumes the flush request at its FIRST idle moment after the check.  When the
client pipelines several Sync-terminated segments, the ReadyForQuery "I" of the first Sync
arrives while the next segment is outstanding: PostgreSQL has flushed (and consumed the
request), but the flag stayed set.  If a later segment then left counts that no check
follows (a statement that changed rows and then failed; or an unguarded statement that
writes catalogs: ANALYZE, CREATE TEMP TABLE), the final "I" took the stale flag as "every
counter is zero", and the next guarded statement was counted with those counts:

- test_pipelined_failed_statement_then_update_is_not_refused: 700 rows updated, then a
  pipelined UPDATE that fails on a CHECK after 699 rows; the next UPDATE of 700 rows was
  refused as 1,399 rows (max_rows_changed).
- test_pipelined_catalog_writer_then_update_is_not_refused[analyze / create-temp-table]:
  the next 700-row UPDATE was refused for "changed the system catalogs".

Fixed: every idle moment spends the request (Guard.idle_ready(last)); only one that is the
last answer with nothing outstanding makes the counters zero.

Only the over-counting direction was found for the zero: false refusals, no undercount.
Checked against the parent commit (4c172b7~1's src on PYTHONPATH): the three false
refusals pass there (they are regressions of 4c172b7); the two track_counts holes fail
there too (they are older).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator
from typing import Any

import asyncpg
import psycopg
import pytest

from support.guard_clients import (
    SchemaEnv,
    any_refused,
    libpq_pipeline,
    msg,
    raw_session,
    read_until,
    run,
    scalar,
    schema_and_proxy,
    shown,
)
from support.pg import PgServer

pytestmark = pytest.mark.e2e

BIG = 1500  # above max_rows_changed (1000)
SMALL = 40


Env = SchemaEnv


def _objects(s: str) -> str:
    return f"""
    create schema {s};
    create table {s}.big (id int primary key, note text, constraint ck check (note <> 'bad'));
    create table {s}.small (id int primary key, note text);
    create table {s}.log (id int);
    create function {s}.wipe_big() returns int language plpgsql as
      $$ begin delete from {s}.big where id > 0; return 1; end $$;
    create function {s}.ddl(q text) returns int language plpgsql as $$ begin execute q; return 1; end $$;
    create function {s}.quiet_wipe() returns int language plpgsql set track_counts = off as
      $$ begin delete from {s}.big where id > 0; return 1; end $$;
    """


@pytest.fixture(scope="module")
def env(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with schema_and_proxy(pg_server, tmp_path_factory.mktemp("guard_zero"), "gz", _objects) as e:
        yield e


@pytest.fixture
def filled(env: Env) -> Env:
    s = env.s
    with env.direct() as c:
        c.execute(
            f"""alter table {s}.small add column if not exists note text;
            truncate {s}.big, {s}.small, {s}.log;
            insert into {s}.big select g, 'b' from generate_series(1, {BIG}) g;
            insert into {s}.small select g, 'n' from generate_series(1, {SMALL}) g;"""
        )
    return env


def _big(env: Env) -> int:
    """Rows of big still there with their original note."""
    return scalar(env.direct, f"select count(*) from {env.s}.big where note = 'b'")


def _rows(env: Env) -> int:
    return scalar(env.direct, f"select count(*) from {env.s}.big")


def _small_has_note(env: Env) -> bool:
    return bool(
        scalar(
            env.direct,
            f"select count(*) from pg_attribute where attrelid = '{env.s}.small'::regclass"
            " and attname = 'note' and not attisdropped",
        )
    )


def _upd(s: str, lo: int, hi: int, note: str = "u") -> str:
    return f"update {s}.big set note = '{note}' where id > {lo} and id <= {hi}"


# ================================================================ security: sequences that must not wipe


WIPE = "delete from {s}.big where id > 0"
FAIL_AFTER_699 = "update {s}.big set note = case when id = 1400 then 'bad' else 'f' end where id > 700 and id <= 1400"

SEQUENCES: list[tuple[str, list[str]]] = [
    ("after-idle", ["update {s}.big set note = note where id <= 700", WIPE]),
    ("commit-begin-one-string", ["begin", "update {s}.small set note = 'a' where id = 1", "commit; begin; " + WIPE + "; commit"]),
    ("begin-wipe-commit-one-string", ["update {s}.small set note = 'a' where id = 1", "begin; " + WIPE + "; commit"]),
    ("commit-and-chain", ["begin", "update {s}.small set note = 'a' where id = 1", "commit and chain", WIPE, "commit"]),
    ("savepoint-rollback-to", ["begin", "savepoint a", "delete from {s}.big where id <= 900", "rollback to a", WIPE, "commit"]),
    ("cursor-with-hold", ["update {s}.small set note = 'a' where id = 1", "begin", "declare c cursor with hold for select {s}.wipe_big()", "commit", "fetch all from c", "close c"]),
    ("cursor-fetch", ["update {s}.small set note = 'a' where id = 1", "begin", "declare c cursor for select {s}.wipe_big()", "fetch all from c", "commit"]),
    ("force-flush-by-client", ["select pg_stat_force_next_flush()", "update {s}.big set note = note where id <= 700", "select pg_stat_force_next_flush()", WIPE]),
    ("clear-snapshot", ["update {s}.big set note = note where id <= 700", "select pg_stat_clear_snapshot()", WIPE]),
    ("stats-fetch-consistency", ["set stats_fetch_consistency = snapshot", "update {s}.big set note = note where id <= 700", "select {s}.wipe_big()"]),
    ("discard-all", ["update {s}.big set note = note where id <= 700", "discard all", "select {s}.wipe_big()"]),
    ("deallocate-all", ["update {s}.big set note = note where id <= 700", "deallocate all", "select {s}.wipe_big()"]),
    ("failed-then-wipe", ["update {s}.big set note = note where id <= 700", FAIL_AFTER_699, WIPE]),
    ("refused-then-wipe-by-function", [WIPE, "select {s}.wipe_big()"]),
    ("block-after-idle", ["update {s}.small set note = 'a' where id = 1", "begin", "select 1", "select {s}.wipe_big()", "commit"]),
    ("cte", ["update {s}.small set note = 'a' where id = 1", "with d as (delete from {s}.big where id > 0 returning 1) select count(*) from d"]),
    ("update-from", ["update {s}.small set note = 'a' where id = 1", "update {s}.big b set note = 'q' from {s}.small x where x.id = 1"]),
    ("explain-analyze", ["update {s}.small set note = 'a' where id = 1", "explain analyze " + WIPE]),
    ("prepare-execute", ["update {s}.small set note = 'a' where id = 1", "prepare w as " + WIPE, "execute w"]),
    ("ddl-in-function-after-idle", ["update {s}.small set note = 'a' where id = 1", "select {s}.ddl('alter table {s}.small drop column note')"]),
    ("rollback-then-wipe", ["begin", "update {s}.big set note = note where id <= 700", "rollback", "select {s}.wipe_big()"]),
]


@pytest.mark.parametrize("mode", ["psycopg", "asyncpg", "psycopg-pipeline"])
@pytest.mark.parametrize("steps", [q[1] for q in SEQUENCES], ids=[q[0] for q in SEQUENCES])
def test_wipe_around_the_zero_is_refused(filled: Env, mode: str, steps: list[str]) -> None:
    s = filled.s
    out = run(mode, filled.proxy, [st.format(s=s) for st in steps])
    note = _small_has_note(filled)
    assert _rows(filled) == BIG, "wiped: " + shown(out)
    assert note, "DDL committed: " + shown(out)


def test_psql_script_around_the_zero(filled: Env) -> None:
    s = filled.s
    steps = [
        _upd(s, 0, 700),
        "begin",
        _upd(s, 700, 1400),
        "commit",
        FAIL_AFTER_699.format(s=s),
        "select pg_stat_force_next_flush()",
        WIPE.format(s=s),
        f"select {s}.wipe_big()",
        f"commit \\; begin \\; select {s}.wipe_big() \\; commit",
    ]
    out = run("psql", filled.proxy, steps)
    assert _rows(filled) == BIG, "wiped: " + shown(out)
    assert any_refused(out), shown(out)


# ---------------------------------------------------------------- libpq pipelines


def _pipeline(conn: psycopg.Connection[Any], batches: list[list[str]]) -> list[tuple[str, str, str]]:
    """Every batch (extended protocol) ends with a Sync; all are sent before any answer is
    read.  Returns (status, tag, error) per statement."""
    return [r for r in libpq_pipeline(conn, batches) if r[0] != "PIPELINE_SYNC"]


PIPELINES: list[tuple[str, list[list[str]]]] = [
    ("sync-then-wipe", [[_upd("{s}", 0, 700)], [WIPE]]),
    ("failed-segment-then-wipe", [[_upd("{s}", 0, 700)], [FAIL_AFTER_699], [WIPE]]),
    ("failed-segment-then-function-wipe", [[_upd("{s}", 0, 700)], [FAIL_AFTER_699], ["select {s}.wipe_big()"]]),
    ("analyze-then-wipe", [[_upd("{s}", 0, 700)], ["analyze {s}.big"], ["select {s}.wipe_big()"]]),
    ("one-segment-many", [[_upd("{s}", 0, 400), _upd("{s}", 400, 800), WIPE]]),
    ("refused-segment-then-wipe", [[WIPE], [_upd("{s}", 0, 10)], ["select {s}.wipe_big()"]]),
]


@pytest.mark.parametrize("batches", [p[1] for p in PIPELINES], ids=[p[0] for p in PIPELINES])
def test_libpq_pipeline_wipe_is_refused(filled: Env, batches: list[list[str]]) -> None:
    s = filled.s
    with filled.through() as c:
        c.execute("select 1")
        out = _pipeline(c, [[st.format(s=s) for st in b] for b in batches])
    assert _rows(filled) == BIG, f"wiped: {out}"
    assert any("dbsentry" in err for _, _, err in out), out


# ---------------------------------------------------------------- raw protocol


def _raw_session(env: Env) -> ssl.SSLSocket:
    return raw_session(env.proxy)


_msg = msg


def _q(sql: str) -> bytes:
    return _msg(b"Q", sql.encode() + b"\0")


def _ext(sql: str) -> bytes:
    return (
        _msg(b"P", b"\0" + sql.encode() + b"\0\0\0")
        + _msg(b"B", b"\0\0" + b"\0\0" + b"\0\0" + b"\0\0")
        + _msg(b"E", b"\0\0\0\0\0")
    )


SYNC = _msg(b"S")
FLUSH = _msg(b"H")




# (first write, ReadyForQuery count to wait for, second write or b"", its ReadyForQuery count)
def _raw_cases(s: str) -> list[tuple[str, bytes, int, bytes, int]]:
    wipe = WIPE.format(s=s)
    fn = f"select {s}.wipe_big()"
    up = _upd(s, 0, 700)
    return [
        ("queries-back-to-back", _q(up) + _q(wipe) + _q(fn), 3, b"", 0),
        ("query-commit-begin", _q(up) + _q(f"commit; begin; {wipe}; commit") + _q(f"begin; {fn}; commit"), 3, b"", 0),
        ("execute-then-query-in-flight", _ext(up) + _q(wipe) + _ext(fn) + SYNC, 2, b"", 0),
        ("execute-then-commit-query", _ext(up) + _q("commit") + _ext(fn) + SYNC, 2, b"", 0),
        ("execute-flush-then-sync-wipe", _ext(up) + FLUSH, 0, _ext(fn) + SYNC, 1),
        ("sync-between", _ext(up) + SYNC + _ext(fn) + SYNC + _q(wipe), 3, b"", 0),
        ("failed-execute-then-sync-wipe", _ext(up) + SYNC + _ext(FAIL_AFTER_699.format(s=s)) + SYNC + _ext(fn) + SYNC, 3, b"", 0),
        ("begin-execute-commit-execute", _q("begin") + _ext(up) + _ext("commit") + _ext(fn) + SYNC, 2, b"", 0),
        ("commit-and-chain-ext", _q("begin") + _ext(up) + _ext("commit and chain") + _ext(fn) + _ext("commit") + SYNC, 2, b"", 0),
    ]


_RAW_IDS = [c[0] for c in _raw_cases("x")]


@pytest.mark.parametrize("case", range(len(_RAW_IDS)), ids=_RAW_IDS)
def test_raw_protocol_wipe_is_refused(filled: Env, case: int) -> None:
    s = filled.s
    _, first, n1, second, n2 = _raw_cases(s)[case]
    tls = _raw_session(filled)
    try:
        tls.sendall(_q("select 1"))
        read_until(tls, b"Z")
        tls.sendall(first)
        answers = read_until(tls, b"Z", n1) if n1 else read_until(tls, b"C")
        if second:
            tls.sendall(second)
            answers += read_until(tls, b"Z", n2)
    finally:
        tls.close()
    errors = [body for t, body in answers if t == b"E"]
    assert _rows(filled) == BIG, f"wiped: {errors}"
    assert any(b"C42501\0Mdbsentry:" in e for e in errors), errors


# ================================================================ security findings: track_counts


@pytest.mark.parametrize("mode", ["psycopg", "asyncpg"])
def test_function_that_turns_track_counts_off_in_its_definition(filled: Env, mode: str) -> None:
    """FINDING: a function with ``SET track_counts = off`` wipes the table unseen."""
    s = filled.s
    out = run(mode, filled.proxy, [f"select {s}.quiet_wipe()"])
    assert _rows(filled) == BIG, "wiped: " + shown(out)


@pytest.mark.parametrize("mode", ["psycopg", "asyncpg"])
def test_dynamic_sql_function_turns_track_counts_off_for_the_session(filled: Env, mode: str) -> None:
    """FINDING: set_config('track_counts', 'off') through dynamic SQL passes, and blinds the
    guard for the session: a wipe inside a function then commits."""
    s = filled.s
    out = run(
        mode,
        filled.proxy,
        [f"select {s}.ddl($$select set_config('track_counts', 'off', false)$$)", f"select {s}.wipe_big()"],
    )
    assert _rows(filled) == BIG, "wiped: " + shown(out)


def test_set_track_counts_directly_is_refused(filled: Env) -> None:
    """Control: sent directly, both are refused."""
    out = run("psycopg", filled.proxy, ["set track_counts = off", "select set_config('track_counts', 'off', false)"])
    assert all(o.sqlstate == "42501" for o in out), shown(out)


# ================================================================ false refusals


@pytest.mark.parametrize("mode", ["psql", "psycopg", "psycopg-binary", "psycopg-pipeline", "asyncpg"])
def test_consecutive_transactions_under_the_limits_pass(filled: Env, mode: str) -> None:
    """700 of 1,500 rows in each of several consecutive transactions: autocommit, blocks,
    a refused statement and a failed one in between."""
    s = filled.s
    steps = [
        _upd(s, 0, 700, "a"),
        _upd(s, 700, 1400, "b"),
        "begin",
        _upd(s, 100, 800, "c"),
        "commit",
        _upd(s, 800, 1500, "d"),
        WIPE.format(s=s),  # refused
        _upd(s, 0, 700, "e"),
        FAIL_AFTER_699.format(s=s),  # fails by itself after 699 rows
        _upd(s, 700, 1400, "f"),
        "begin",
        _upd(s, 0, 700, "g"),
        "rollback",
        _upd(s, 0, 700, "h"),
    ]
    out = run(mode, filled.proxy, steps)
    bad = [o for i, o in enumerate(out) if not o.ok and i not in (6, 8)]
    assert not bad, shown(out)
    assert not out[6].ok and out[8].sqlstate == "23514", shown(out)


def test_asyncpg_executemany_then_updates_pass(filled: Env) -> None:
    s = filled.s

    async def go() -> list[str]:
        p = filled.proxy
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        conn = await asyncpg.connect(
            host=p.host, port=p.port, user="alice@example.com", password=p.token("alice@example.com", ("eng",), False),
            database="prod", ssl=ctx, statement_cache_size=0,
        )  # fmt: skip
        tags = []
        try:
            await conn.executemany(f"update {s}.big set note = $1 where id > $2 and id <= $3", [("a", 0, 400), ("b", 400, 800), ("c", 800, 1200)])
            tags.append(await conn.execute(_upd(s, 0, 700, "d")))
            tags.append(await conn.execute(f"update {s}.big set note = $1 where id > 700 and id <= 1400", "e"))
            async with conn.transaction():
                tags.append(await conn.execute(_upd(s, 100, 800, "f")))
            tags.append(await conn.execute(_upd(s, 800, 1500, "g")))
        finally:
            await conn.close()
        return tags

    assert asyncio.run(go()) == ["UPDATE 700"] * 4


def test_pipelined_statements_one_by_one_pass(filled: Env) -> None:
    """Control for the findings below: the same statements, each waiting for its answer."""
    s = filled.s
    with filled.through() as c:
        c.execute(_upd(s, 0, 700))
        with pytest.raises(psycopg.errors.CheckViolation):
            c.execute(FAIL_AFTER_699.format(s=s))
        c.execute(_upd(s, 700, 1400, "z"))
        c.execute(f"analyze {s}.big")
        c.execute(_upd(s, 0, 700, "y"))
        c.execute("create temp table gz_tmp (id int)")
        c.execute(_upd(s, 700, 1400, "x"))


def test_pipelined_failed_statement_then_update_is_not_refused(filled: Env) -> None:
    """FINDING (false refusal): [700-row UPDATE] Sync [UPDATE failing after 699 rows] Sync,
    then a 700-row UPDATE: refused as 1,399 rows."""
    s = filled.s
    with filled.through() as c:
        c.execute("select 1")
        out = _pipeline(c, [[_upd(s, 0, 700)], [FAIL_AFTER_699.format(s=s)]])
        assert out[0][1] == "UPDATE 700" and "ck" in out[1][2], out
        try:
            c.execute(_upd(s, 700, 1400, "z"))
        except psycopg.Error as err:
            pytest.fail(f"a 700-row UPDATE was refused after the pipeline {out}: {err}")


@pytest.mark.parametrize(
    "second", ["analyze {s}.big", "create temp table gz_tmp (id int)"], ids=["analyze", "create-temp-table"]
)
def test_pipelined_catalog_writer_then_update_is_not_refused(filled: Env, second: str) -> None:
    """FINDING (false refusal): [700-row UPDATE] Sync [ANALYZE or CREATE TEMP TABLE] Sync,
    then a 700-row UPDATE: refused for changing the system catalogs."""
    s = filled.s
    with filled.through() as c:
        c.execute("select 1")
        out = _pipeline(c, [[_upd(s, 0, 700)], [second.format(s=s)]])
        assert out[0][1] == "UPDATE 700" and not out[1][2], out
        try:
            c.execute(_upd(s, 700, 1400, "z"))
        except psycopg.Error as err:
            pytest.fail(f"a 700-row UPDATE was refused after the pipeline {out}: {err}")
