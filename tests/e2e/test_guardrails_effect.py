"""Limits on real effect (the row guard), attacked end to end.

In production a statement that updates or deletes more than ``guardrails.max_rows_changed``
rows (default 1000), or at least 10 rows and at least ``max_fraction_changed`` (default
half) of a table, is rolled back, whatever the syntax that got it there: predicates no
parser can judge, functions, CTEs, EXPLAIN ANALYZE, PREPARE/EXECUTE, upserts, CALL.  The
client sees exactly what PostgreSQL would show for an error (``I`` outside a block; a failed
block inside one), and the refusal names the approval request it filed.

Every test checks the database directly, not only what the client was told.  The victim is
a 40-row table, so the fraction limit is the one that catches a wipe; a 1,500-row table
tests the absolute limit.  The schema objects (functions, triggers, views, operators...)
exist before the proxy starts, as they would in a real database, so the proxy's catalog
knows them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from support.guard_clients import (
    EXTENDED_MODES,
    MODES,
    PARAM_MODES,
    Login,
    failed_block_answer,
    idle,
    in_failed_block,
    refused,
    row_guard_refused,
    run,
    run_one,
)
from support.pg import PgServer, ensure_postgres_fdw
from support.proxy import RunningProxy, dbsentry_cli, run_proxy, write_config

pytestmark = pytest.mark.e2e

VICTIM_ROWS = 40
BIG_ROWS = 1500


@dataclass(frozen=True)
class Env:
    proxy: RunningProxy
    pg: PgServer
    s: str  # the module's schema
    fdw: bool  # {s}.remote is a postgres_fdw foreign table

    @property
    def v(self) -> str:
        return f"{self.s}.victim"

    def direct(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.pg.dsn(), autocommit=True)


def _objects(s: str) -> str:
    v = f"{s}.victim"
    return f"""
    create schema {s};
    create table {v} (id int primary key, note text);
    create table {s}.big (id int primary key, note text);
    create table {s}.small (id int primary key, note text);
    create table {s}.scratch (id int);
    create sequence {s}.seq;

    create function {s}.wipe() returns int language plpgsql as
      $$ begin delete from {v}; return 1; end $$;
    create function {s}.wipe_sql() returns bigint language sql as
      $$ with d as (delete from {v} returning 1) select count(*) from d $$;
    create function {s}.touch_all() returns int language plpgsql as
      $$ begin update {v} set note = 'touched'; return 1; end $$;
    create function {s}.trunc() returns int language plpgsql as
      $$ begin truncate {v}; return 1; end $$;
    create function {s}.drop_scratch() returns int language plpgsql as
      $$ begin drop table {s}.scratch; return 1; end $$;
    create function {s}.alter_scratch() returns int language plpgsql as
      $$ begin alter table {s}.scratch add column extra int; return 1; end $$;
    create function {s}.add_rows(n int) returns int language plpgsql as
      $$ begin insert into {v} select 1000 + g, 'added' from generate_series(1, n) g; return n; end $$;
    create function {s}.wipe_setof() returns setof int language sql as
      $$ delete from {v} returning id $$;

    -- A STABLE or IMMUTABLE function runs its own statements read-only, but may call a
    -- VOLATILE one, which may change data.
    create function {s}.stable_wrap() returns int language plpgsql stable as
      $$ begin return {s}.wipe(); end $$;
    create function {s}.immutable_wrap() returns int language plpgsql immutable as
      $$ begin perform {s}.wipe(); return 1; end $$;
    create function {s}.atomic_wrap() returns int stable language sql
      begin atomic select {s}.wipe(); end;

    -- Functions PostgreSQL calls without a function call in the statement's text.
    create function {s}.agg_step(int, int) returns int language plpgsql as
      $$ begin delete from {v}; return 1; end $$;
    create aggregate {s}.evil_agg(int) (sfunc = {s}.agg_step, stype = int, initcond = '0');
    create function {s}.op_fn(int, int) returns boolean language plpgsql as
      $$ begin delete from {v}; return true; end $$;
    create operator {s}.### (leftarg = int, rightarg = int, function = {s}.op_fn);
    create domain {s}.evil_dom as int check ({s}.op_fn(value, 1));
    create view {s}.wipe_view as select {s}.wipe() as w;
    create table {s}.with_default (id int, w int default {s}.wipe());
    create function {s}.trg_wipe() returns trigger language plpgsql as
      $$ begin delete from {v}; return new; end $$;
    create table {s}.log (id serial primary key, msg text);
    create trigger log_wipe after insert on {s}.log for each row execute function {s}.trg_wipe();

    -- A trigger on a partition only: its partitioned parent has none.
    create table {s}.events (id int, kind text) partition by list (kind);
    create table {s}.events_audit partition of {s}.events for values in ('audit');
    create trigger events_wipe after insert on {s}.events_audit for each row execute function {s}.trg_wipe();
    -- A CHECK constraint may call any function.
    create table {s}.checked (id int check ({s}.op_fn(id, 1)));

    create procedure {s}.wipe_proc(x int) language plpgsql as
      $$ begin delete from {v} where id > x; end $$;
    create procedure {s}.wipe_commit(x int) language plpgsql as
      $$ begin delete from {v} where id > x; commit; end $$;

    -- Many small partitions: each loses fewer than 10 rows, the table loses all of them.
    create table {s}.parted (id int, note text) partition by range (id);
    {"".join(f"create table {s}.parted_{i} partition of {s}.parted for values from ({i * 9}) to ({(i + 1) * 9});" for i in range(10))}
    insert into {s}.parted select g, 'p' from generate_series(0, 89) g;
    -- Inheritance: counting the parent counts its children too.
    create table {s}.parent (id int, note text);
    create table {s}.child () inherits ({s}.parent);
    insert into {s}.parent select g, 'p' from generate_series(1, 40) g;
    insert into {s}.child select g, 'c' from generate_series(100, 1099) g;
    -- Foreign key cascades count.
    create table {s}.fk_parent (id int primary key);
    create table {s}.fk_child (id int primary key, p int references {s}.fk_parent on delete cascade);
    insert into {s}.fk_parent values (1), (2);
    insert into {s}.fk_child select g, 1 from generate_series(1, 40) g;
    """


@pytest.fixture(scope="module")
def env(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    s = f"ge_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_server.dsn(), autocommit=True) as c:
        c.execute(_objects(s))
        c.execute(f"insert into {s}.big select g, 'b' from generate_series(1, {BIG_ROWS}) g")
        fdw = _foreign_table(c, s, pg_server)
    base = {
        "host": pg_server.host,
        "port": pg_server.port,
        "database": pg_server.dbname,
        "user": pg_server.user,
    }
    if pg_server.password:
        base["password"] = pg_server.password
    # "tight": a connection with its own limits, and a group that may change more on it.
    tight = {
        **base,
        "environment": "production",
        "guardrails": {
            "max_rows_changed": 3,
            "max_fraction_changed": None,
            "groups": {"ops": {"max_rows_changed": 20}},
        },
    }
    config = write_config(
        tmp_path_factory.mktemp("guard_effect"),
        pg_server,
        connections={"noenv": dict(base), "tight": tight},
        extra={"approvals": {"poll_interval_seconds": 0.2}},
    )
    try:
        with run_proxy(config) as proxy:
            yield Env(proxy, pg_server, s, fdw)
    finally:
        with psycopg.connect(pg_server.dsn(), autocommit=True) as c:
            c.execute(f"drop server if exists {s}_loop cascade")
            c.execute(f"drop schema if exists {s} cascade")


def _foreign_table(c: psycopg.Connection[Any], s: str, pg: PgServer) -> bool:
    """A postgres_fdw foreign table {s}.remote over {s}.remote_rows, through a loopback
    server; False when postgres_fdw is not installed with this PostgreSQL."""
    if not ensure_postgres_fdw(c, pg):
        return False
    opts = f"host '{pg.host}', port '{pg.port}', dbname '{pg.dbname}'"
    c.execute(f"create server {s}_loop foreign data wrapper postgres_fdw options ({opts})")
    password = f", password '{pg.password}'" if pg.password else ""
    c.execute(
        f"create user mapping for current_user server {s}_loop options (user '{pg.user}'{password})"
    )
    c.execute(f"create table {s}.remote_rows (id int primary key, note text)")
    c.execute(
        f"create foreign table {s}.remote (id int, note text) server {s}_loop "
        f"options (schema_name '{s}', table_name 'remote_rows')"
    )
    return True


def _fill(c: psycopg.Connection[Any], table: str, n: int) -> None:
    c.execute(f"truncate {table}")
    c.execute(f"insert into {table} select g, 'n' || g from generate_series(1, {n}) g")


@pytest.fixture
def victim(env: Env) -> str:
    """The 40-row victim table, fresh."""
    with env.direct() as c:
        _fill(c, env.v, VICTIM_ROWS)
    return env.v


def snapshot(env: Env, table: str | None = None) -> list[tuple[Any, ...]]:
    with env.direct() as c:
        return c.execute(f"select id, note from {table or env.v} order by id").fetchall()


def intact(env: Env, table: str | None = None, n: int = VICTIM_ROWS) -> None:
    """The table holds exactly its original rows."""
    assert snapshot(env, table) == [(i, f"n{i}") for i in range(1, n + 1)]


# ================================================================ the fraction limit


# Statements that update or delete every row of the victim ({v}), each a way of saying
# "all rows" that a syntactic check cannot see, or can see only in part.
WIPES: list[tuple[str, str]] = [
    ("is-not-null", "delete from {v} where id is not null"),
    ("gt-minus-one", "delete from {v} where id > -1"),
    ("any-subquery", "delete from {v} where id = any(select id from {v})"),
    ("exists-self-join", "delete from {v} t where exists (select 1 from {v} u where u.id = t.id)"),
    ("like-percent", "delete from {v} where note like '%%'"),
    ("random", "delete from {v} where random() < 2"),
    ("using", "delete from {v} t using {v} u where t.id = u.id"),
    ("update-from", "update {v} t set note = 'x' from {v} u where t.id = u.id"),
    ("merge-delete", "merge into {v} t using {v} u on t.id = u.id when matched then delete"),
    (
        "merge-update",
        "merge into {v} t using (select id from {v}) u on t.id = u.id when matched then update set note = 'm'",
    ),
    ("coalesce", "delete from {v} where coalesce(id, 0) >= -1"),
    ("regex-empty", "delete from {v} where id::text ~ ''"),
    ("not-lt", "delete from {v} where not (id < -5)"),
    ("in-subquery", "update {v} set note = 'x' where id in (select id from {v})"),
    ("select-true", "delete from {v} where (select true)"),
    ("between", "delete from {v} where id between -1 and 1000000"),
    ("length", "update {v} set note = upper(note) where length(note) > 0"),
    ("or-tautology", "update {v} set note = 'x' where id = 1 or id <> 1"),
    ("returning", "delete from {v} where id > 0 returning *"),
    ("cte-delete", "with d as (delete from {v} where id > 0 returning id) select count(*) from d"),
    (
        "cte-update",
        "with u as (update {v} set note = 'x' where id > 0 returning 1) select count(*) from u",
    ),
    (
        "nested-cte",
        "with a as (select 1), d as (delete from {v} where id in (select id from {v}) returning id) select * from d",
    ),
    ("explain-analyze", "explain analyze delete from {v} where id > 0"),
    (
        "explain-analyze-json",
        "explain (analyze, costs off, format json) update {v} set note = 'x' where id > 0",
    ),
    ("copy-returning", "copy (delete from {v} where id > 0 returning id) to stdout"),
    (
        "copy-cte",
        "copy (with d as (delete from {v} where id > 0 returning id) select * from d) to stdout",
    ),
    (
        "upsert",
        "insert into {v} select id, 'x' from {v} on conflict (id) do update set note = excluded.note",
    ),
    (
        "upsert-constraint",
        "insert into {v} select id, 'x' from {v} on conflict on constraint victim_pkey do update set note = 'y'",
    ),
    (
        "upsert-in-cte",
        "with i as (insert into {v} select id, 'x' from {v} on conflict (id) do update set note = 'z' returning 1) select count(*) from i",
    ),
    ("call", "call {s}.wipe_proc(-1)"),
    ("fn-select-list", "select {s}.wipe()"),
    ("fn-sql", "select {s}.wipe_sql()"),
    ("fn-update", "select {s}.touch_all()"),
    ("fn-where", "select * from {v} where id = {s}.wipe()"),
    ("fn-from", "select * from {s}.wipe()"),
    ("fn-setof-from", "select count(*) from {s}.wipe_setof()"),
    ("fn-values", "values ({s}.wipe())"),
    ("fn-in-cte", "with x as (select {s}.wipe()) select * from x"),
    ("fn-nested-subquery", "select (select (select {s}.wipe()))"),
    ("fn-in-case", "select case when id = 1 then {s}.wipe() end from {v}"),
    ("fn-explain-analyze", "explain analyze select {s}.wipe()"),
    ("fn-copy", "copy (select {s}.wipe()) to stdout"),
    ("fn-lateral", "select * from {v} t, lateral (select {s}.wipe()) x where t.id = 1"),
    ("fn-stable-sql-atomic", "select {s}.atomic_wrap()"),
]
WIPE_IDS = [w[0] for w in WIPES]


def _sql(env: Env, template: str, *, params: bool = False) -> str:
    text = template.format(v=env.v, s=env.s)
    return text if params else text.replace("%%", "%")


@pytest.mark.parametrize("template", [w[1] for w in WIPES], ids=WIPE_IDS)
@pytest.mark.parametrize("mode", ["psycopg", "asyncpg"])
def test_wipe_is_rolled_back(env: Env, victim: str, mode: str, template: str) -> None:
    """The corpus through the simple protocol (psycopg, no parameters) and the extended
    protocol (asyncpg): refused, rolled back, nothing returned, the session idle."""
    sql = _sql(env, template)
    first, after = run(mode, env.proxy, [sql, "select 'still usable'"])
    refused(first)
    assert first.rows == [], f"rows of a refused statement reached the client: {first.rows}"
    idle(first)
    assert after.ok and after.rows == [("still usable",)], str(after)
    intact(env)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "template",
    [
        "delete from {v} where id > -1",
        "update {v} set note = 'x' where note is not null",
        "select {s}.wipe()",
        "with d as (delete from {v} where id > 0 returning id) select count(*) from d",
    ],
    ids=["delete", "update", "function", "cte"],
)
def test_wipe_message_and_state_in_every_client(
    env: Env, victim: str, mode: str, template: str
) -> None:
    o = run_one(mode, env.proxy, template.format(v=env.v, s=env.s))
    row_guard_refused(o, VICTIM_ROWS)
    assert "guardrails.max_fraction_changed" in o.message, str(o)
    assert f"of the {VICTIM_ROWS} rows of {env.v}" in o.message, str(o)
    assert len(o.request_ids) == 1, f"the refusal should name the approval request it filed: {o}"
    idle(o)
    intact(env)


@pytest.mark.parametrize("mode", PARAM_MODES)
def test_wipe_with_bound_parameters(env: Env, victim: str, mode: str) -> None:
    """Parameters the parser never sees: the database's count decides."""
    outcomes = run(
        mode,
        env.proxy,
        [
            (f"delete from {env.v} where id > %s", (-1,)),
            (f"update {env.v} set note = %s where note <> %s", ("x", "never")),
            (f"select {env.s}.wipe() where %s::int = 1", (1,)),
            (f"call {env.s}.wipe_proc(%s)", (0,)),
        ],
    )
    *statements, call = outcomes
    for o in statements:
        row_guard_refused(o, VICTIM_ROWS)
        idle(o)
    # Outside a block a procedure may COMMIT by itself, which nothing could undo: on the
    # extended protocol CALL is refused before it runs (the simple protocol runs it in the
    # guard's own block, where it cannot commit).
    refused(call, "CALL")
    assert "BEGIN ... COMMIT" in call.message, str(call)
    idle(call)
    intact(env)


@pytest.mark.parametrize("mode", MODES)
def test_sql_prepare_execute_is_guarded(env: Env, victim: str, mode: str) -> None:
    prepare, execute, again = run(
        mode,
        env.proxy,
        [
            f"prepare wipe_it(int) as delete from {env.v} where id > $1",
            "execute wipe_it(-1)",
            "execute wipe_it(0)",
        ],
    )
    assert prepare.ok, str(prepare)
    row_guard_refused(execute, VICTIM_ROWS)
    row_guard_refused(again, VICTIM_ROWS)
    intact(env)


def test_sql_prepare_in_one_protocol_execute_in_the_other(env: Env, victim: str) -> None:
    """Protocol-level and SQL prepared statements share one namespace upstream: a PREPARE
    sent with the extended protocol is run by an EXECUTE sent with the simple one, and the
    other way round."""
    with psycopg.connect(env.proxy.dsn(), autocommit=True) as conn:
        conn.cursor(binary=True).execute(f"prepare wipe_x as delete from {env.v} where id > -1")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("execute wipe_x")
        conn.execute(f"prepare wipe_y as update {env.v} set note = 'y' where id > -1")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.cursor(binary=True).execute("execute wipe_y")
        assert conn.execute("select 1").fetchone() == (1,)
    intact(env)


# ================================================================ the absolute limit


@pytest.fixture
def big(env: Env) -> str:
    table = f"{env.s}.big"
    with env.direct() as c:
        _fill(c, table, BIG_ROWS)
    return table


@pytest.mark.parametrize("mode", MODES)
def test_over_max_rows_changed(env: Env, big: str, mode: str) -> None:
    o = run_one(mode, env.proxy, f"update {big} set note = 'x' where id > 0")
    row_guard_refused(o, BIG_ROWS)
    assert "limit 1000" in o.message and "guardrails.max_rows_changed" in o.message, str(o)
    idle(o)
    intact(env, big, BIG_ROWS)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("between", ["select 1", "select count(*) from {big}", "savepoint s", "select now()"])
def test_each_statement_of_a_block_is_measured_alone(env: Env, big: str, mode: str, between: str) -> None:
    """Inside one block the guard reads the counters once between two statements when only
    plain reads ran between them (anything else: it reads them again): 700, 500 and 600
    rows pass one by one (1,800 in the transaction, each under half the table), 1,500 by
    one statement does not."""
    out = run(
        mode,
        env.proxy,
        [
            "begin",
            f"update {big} set note = 'a' where id <= 700",
            between.format(big=big),
            f"update {big} set note = 'b' where id > 700 and id <= 1200",
            f"update {big} set note = 'c' where id > 900",
            f"update {big} set note = 'd' where id > 0",
            "rollback",
        ],
    )
    assert all(o.ok for o in out[:5]), [str(o) for o in out]
    assert [o.tag for o in (out[1], out[3], out[4])] == ["UPDATE 700", "UPDATE 500", "UPDATE 600"], [str(o) for o in out]
    row_guard_refused(out[5], BIG_ROWS)
    in_failed_block(out[5])
    assert out[6].ok and out[6].tag == "ROLLBACK", str(out[6])
    intact(env, big, BIG_ROWS)


@pytest.mark.parametrize("mode", MODES)
def test_after_a_transaction_the_next_one_is_measured_from_zero_with_one_reading(env: Env, big: str, mode: str) -> None:
    """From PostgreSQL 15 the guard's check asks the backend to report its counters at its
    next idle moment (pg_stat_force_next_flush()), which comes before the ReadyForQuery
    that ends the transaction: after it every counter is zero, and the next statement needs
    only the reading after it.  Three 700-row UPDATEs of a 1,500-row table, each in its own
    transaction (autocommit; a block), pass one by one: counted with what the transaction
    before left, the second would be 1,400 rows and refused.  The guard's statistics
    statement ran once per statement (pg_prepared_statements counts its runs); before
    PostgreSQL 15, twice but for the first."""
    runs = (
        "select coalesce(sum(generic_plans + custom_plans), 0)::int from pg_prepared_statements"
        " where name like 'dbsentry%_stats_'"
    )
    with env.direct() as c:
        version = c.execute("select current_setting('server_version_num')::int").fetchone()
    assert version is not None
    out = run(
        mode,
        env.proxy,
        [
            f"update {big} set note = 'a' where id <= 700",
            f"update {big} set note = 'b' where id > 700 and id <= 1400",
            "begin",
            f"update {big} set note = 'c' where id > 100 and id <= 800",
            "commit",
            runs,
            f"delete from {big} where id > 0",
        ],
    )
    assert [o.tag for o in out[:5]] == ["UPDATE 700", "UPDATE 700", "BEGIN", "UPDATE 700", "COMMIT"], [str(o) for o in out]
    assert [str(r[0]) for r in out[5].rows] == ["3" if version[0] >= 150000 else "5"], [str(o) for o in out]
    row_guard_refused(out[6], BIG_ROWS)
    assert len(snapshot(env, big)) == BIG_ROWS


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("between", [[], ["select 1"]], ids=["next", "read-between"])
def test_a_transaction_that_ended_leaves_no_counters_to_start_from(
    env: Env, mode: str, between: list[str]
) -> None:
    """Each statement in a transaction of its own (autocommit, and the extended protocol's
    implicit transaction ended by Sync): 900 rows, then 1,800 of a 4,000-row table. The
    counters restart with each transaction; measured from the first one's reading, the
    second would count 900 and pass."""
    table = f"{env.s}.huge"
    with env.direct() as c:
        c.execute(f"create table if not exists {table} (id int primary key, note text)")
        _fill(c, table, 4000)
        c.execute(f"analyze {table}")
    out = run(
        mode,
        env.proxy,
        [f"update {table} set note = 'a' where id <= 900", *between, f"update {table} set note = 'b' where id <= 1800"],
    )
    assert out[0].ok and out[0].tag == "UPDATE 900", str(out[0])
    row_guard_refused(out[-1], 1800)
    assert "limit 1000" in out[-1].message, str(out[-1])
    with env.direct() as c:
        notes = dict(c.execute(f"select note, count(*) from {table} group by note").fetchall())
    assert notes.get("b") is None and notes.get("a") == 900, notes


def test_absolute_limit_counts_every_table_of_a_statement(env: Env, big: str, victim: str) -> None:
    """600 rows of one table and 600 of another: 1,200 rows by one statement."""
    sql = (
        f"with a as (update {big} set note = 'a' where id <= 600 returning 1), "
        f"b as (update {big} set note = 'b' where id > 900 returning 1) "
        "select (select count(*) from a) + (select count(*) from b)"
    )
    o = run_one("psycopg", env.proxy, sql)
    row_guard_refused(o, 1200)
    intact(env, big, BIG_ROWS)


def test_foreign_key_cascade_counts(env: Env) -> None:
    """Deleting one parent row deletes its 40 children: the children's table is wiped."""
    o = run_one("psycopg", env.proxy, f"delete from {env.s}.fk_parent where id = 1")
    row_guard_refused(o)
    assert f"{env.s}.fk_child" in o.message, str(o)
    with env.direct() as c:
        assert c.execute(f"select count(*) from {env.s}.fk_child").fetchone() == (40,)
        assert c.execute(f"select count(*) from {env.s}.fk_parent").fetchone() == (2,)


# ================================================================ transaction state


@pytest.mark.parametrize("mode", MODES)
def test_refusal_inside_a_block_fails_it_like_postgres(env: Env, victim: str, mode: str) -> None:
    out = run(
        mode,
        env.proxy,
        [
            "begin",
            f"insert into {env.v} values (100, 'in the block')",
            f"delete from {env.v} where id > -100",
            "select 1",
            "commit",
            "select 'after'",
        ],
    )
    begin, insert, wipe, select, commit, after = out
    assert begin.ok and insert.ok, [str(o) for o in out]
    row_guard_refused(wipe, VICTIM_ROWS + 1)
    in_failed_block(wipe)
    failed_block_answer(select)
    assert commit.ok and commit.tag == "ROLLBACK", str(commit)
    idle(commit)
    assert after.ok and after.rows == [("after",)], str(after)
    intact(env)


@pytest.mark.parametrize("mode", MODES)
def test_rollback_to_an_earlier_savepoint_recovers(env: Env, victim: str, mode: str) -> None:
    out = run(
        mode,
        env.proxy,
        [
            "begin",
            f"insert into {env.v} values (101, 'before the savepoint')",
            "savepoint s1",
            f"insert into {env.v} values (102, 'after the savepoint')",
            f"select {env.s}.wipe()",
            "rollback to savepoint s1",
            f"insert into {env.v} values (103, 'after rollback to')",
            "commit",
        ],
    )
    wipe = out[4]
    row_guard_refused(wipe)
    in_failed_block(wipe)
    assert all(o.ok for i, o in enumerate(out) if i != 4), [str(o) for o in out]
    assert out[-1].status in ("I", None)
    rows = snapshot(env)
    assert rows == [(i, f"n{i}") for i in range(1, VICTIM_ROWS + 1)] + [
        (101, "before the savepoint"),
        (103, "after rollback to"),
    ]


@pytest.mark.parametrize("mode", EXTENDED_MODES)
def test_block_in_extended_protocol_with_parameters(env: Env, victim: str, mode: str) -> None:
    out = run(
        mode,
        env.proxy,
        [
            "begin",
            (f"insert into {env.v} values (%s, %s)", (104, "param")),
            (f"update {env.v} set note = %s where id >= %s", ("all", 0)),
            ("select %s::int", (1,)),
            "rollback",
            ("select %s::text", ("usable",)),
        ],
    )
    row_guard_refused(out[2])
    failed_block_answer(out[3])
    assert out[4].ok and out[5].rows == [("usable",)], [str(o) for o in out]
    intact(env)


def test_pipeline_with_a_wipe_in_the_middle(env: Env, victim: str) -> None:
    """psycopg pipeline, several statements before one Sync: the wipe fails the whole
    implicit transaction, so the point updates before it are rolled back too."""
    with psycopg.connect(env.proxy.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as caught, conn.pipeline():
            conn.execute(f"update {env.v} set note = %s where id = %s", ("first", 1))
            conn.execute(f"delete from {env.v} where id > %s", (-1,))
            conn.execute(f"update {env.v} set note = %s where id = %s", ("third", 3))
        assert "rolled back" in (caught.value.diag.message_primary or "")
        assert conn.execute("select 1").fetchone() == (1,)
    intact(env)


def test_psql_script_with_a_block(env: Env, victim: str) -> None:
    """psql with ON_ERROR_STOP off, as people paste scripts: the block is lost, not half-kept."""
    out = run(
        "psql",
        env.proxy,
        [
            "begin",
            f"update {env.v} set note = 'partial' where id = 1",
            f"update {env.v} set note = 'all' where id > 0",
            f"update {env.v} set note = 'partial' where id = 2",
            "commit",
        ],
    )
    row_guard_refused(out[2])
    failed_block_answer(out[3])
    assert out[4].tag == "ROLLBACK", str(out[4])
    intact(env)


def test_refusal_reports_this_statements_count(env: Env, victim: str) -> None:
    """The same text twice, with a different effect: each refusal tells what that run would
    have changed (an approval filed for the first must not describe the second)."""
    sql = f"delete from {env.v} where id > -3"
    first = run_one("psycopg", env.proxy, sql)
    row_guard_refused(first, VICTIM_ROWS)
    with env.direct() as c:
        c.execute(
            f"insert into {env.v} select g, 'n' || g from generate_series({VICTIM_ROWS + 1}, 60) g"
        )
    second = run_one("psycopg", env.proxy, sql)
    row_guard_refused(second, 60)
    intact(env, n=60)


# ================================================================ DDL inside functions


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fn", ["trunc", "drop_scratch", "alter_scratch"])
def test_ddl_inside_a_function_is_refused(env: Env, victim: str, mode: str, fn: str) -> None:
    o = run_one(mode, env.proxy, f"select {env.s}.{fn}()")
    refused(o, "guardrails.catalog_changes", "rolled back")
    idle(o)
    intact(env)
    with env.direct() as c:
        cols = c.execute(
            "select count(*) from information_schema.columns where table_schema = %s and table_name = 'scratch'",
            (env.s,),
        ).fetchone()
    assert cols == (1,), "the scratch table was dropped or altered"


# ================================================================ always-true with parameters


@pytest.fixture
def small(env: Env) -> str:
    """Five rows: under min_rows_for_fraction, so only the syntactic check can catch a wipe."""
    table = f"{env.s}.small"
    with env.direct() as c:
        _fill(c, table, 5)
    return table


@pytest.mark.parametrize("mode", PARAM_MODES)
def test_always_true_with_bound_parameters(env: Env, small: str, mode: str) -> None:
    out = run(
        mode,
        env.proxy,
        [
            (f"delete from {small} where %s = %s", ("1", "1")),
            (f"update {small} set note = 'x' where %s::text = %s::text", ("a", "a")),
            (f"delete from {small} where id = %s or %s::int = %s::int", (1, 7, 7)),
        ],
    )
    for o in out:
        refused(o, "baseline.prod.unbounded-write")
    intact(env, small, 5)


@pytest.mark.parametrize("mode", MODES)
def test_always_true_with_sql_prepare_execute(env: Env, small: str, mode: str) -> None:
    out = run(
        mode,
        env.proxy,
        [
            f"prepare d(int, int) as delete from {small} where $1 = $2",
            "execute d(1, 1)",
            "execute d(1, 2)",
        ],
    )
    refused(out[1], "baseline.prod.unbounded-write")
    assert out[2].ok, f"$1 = $2 bound to (1, 2) deletes nothing and is fine: {out[2]}"
    intact(env, small, 5)


# ================================================================ approvals


def test_refusal_files_an_approval_request(env: Env, victim: str) -> None:
    sql = f"update {env.v} set note = 'approval please' where id > 0"
    o = run_one("psycopg", env.proxy, sql)
    row_guard_refused(o, VICTIM_ROWS)
    (request_id,) = o.request_ids
    listed = dbsentry_cli(
        "approvals", "list", "--status", "all", "--json", config=env.proxy.config_path
    ).stdout
    assert request_id in listed and "pending" in listed, listed
    intact(env)


def _approve(env: Env, request_id: str) -> None:
    token = env.proxy.token("dana@example.com", ("dba",), False)
    done = dbsentry_cli(
        "approvals", "approve", request_id, "--token", token, "--reason", "ticket 12",
        config=env.proxy.config_path, check=False,
    )
    assert done.returncode == 0 and f"{request_id}: approved" in done.stdout, done.stderr


@pytest.mark.parametrize("mode", ["psql", "psycopg", "asyncpg"])
def test_approved_effect_commits_once(env: Env, victim: str, mode: str) -> None:
    """Refused, approved by a DBA, the same statement commits once; an approval of one
    effect does not cover a larger one, and is not reused."""
    sql = f"update {env.v} set note = 'approved' where id > 0"
    first = run_one(mode, env.proxy, sql)
    row_guard_refused(first, VICTIM_ROWS)
    (request_id,) = first.request_ids
    _approve(env, request_id)

    # The table grew: the same text would now change 60 rows, which nobody approved.
    with env.direct() as c:
        c.execute(f"insert into {env.v} select g, 'n' || g from generate_series(41, 60) g")
    larger = run_one(mode, env.proxy, sql)
    row_guard_refused(larger, 60)
    assert request_id not in larger.request_ids, str(larger)
    with env.direct() as c:
        c.execute(f"delete from {env.v} where id > {VICTIM_ROWS}")
    intact(env)

    approved = run_one(mode, env.proxy, sql)
    assert approved.ok, str(approved)
    assert snapshot(env) == [(i, "approved") for i in range(1, VICTIM_ROWS + 1)]

    with env.direct() as c:
        _fill(c, env.v, VICTIM_ROWS)
    again = run_one(mode, env.proxy, sql)
    row_guard_refused(again, VICTIM_ROWS)
    intact(env)


# ================================================================ limits per connection and group


@pytest.mark.parametrize("mode", MODES)
def test_connection_and_group_limits(env: Env, victim: str, mode: str) -> None:
    """The connection's own limit (3 rows, no share limit) holds for everybody on it; a
    group's entry raises it for its members only; other connections keep the defaults."""
    five = f"update {env.v} set note = 'five' where id <= 5"
    fifteen = f"update {env.v} set note = 'fifteen' where id <= 15"
    thirty = f"update {env.v} set note = 'thirty' where id <= 30"
    plain = Login(dbname="tight")
    ops = Login("olga@example.com", ("eng", "ops"), dbname="tight")

    row_guard_refused(run_one(mode, env.proxy, five, plain), 5)
    intact(env)
    o = run_one(mode, env.proxy, five)  # prod: 5 rows is under every default limit
    assert o.ok, str(o)
    with env.direct() as c:
        _fill(c, env.v, VICTIM_ROWS)

    o = run_one(mode, env.proxy, fifteen, ops)
    assert o.ok, str(o)
    with env.direct() as c:
        assert c.execute(f"select count(*) from {env.v} where note = 'fifteen'").fetchone() == (15,)
        _fill(c, env.v, VICTIM_ROWS)
    # 30 of 40 rows: over the group's 20, and no share limit on this connection either way.
    row_guard_refused(run_one(mode, env.proxy, thirty, ops), 30)
    intact(env)


# ================================================================ connections without an environment


@pytest.mark.parametrize("mode", MODES)
def test_connection_without_environment_is_production(env: Env, victim: str, mode: str) -> None:
    login = Login(dbname="noenv")
    wipe, bare = run(
        mode, env.proxy, [f"delete from {env.v} where id > -1", f"delete from {env.v}"], login
    )
    row_guard_refused(wipe, VICTIM_ROWS)
    refused(bare, "baseline.prod.unbounded-write")
    intact(env)


# ================================================================ bypasses found by attacking


# Routes around the guard found while attacking it.  Each must be refused (any dbsentry
# refusal) and must leave the victim whole.
BYPASSES: list[tuple[str, list[str]]] = [
    # A STABLE/IMMUTABLE PL/pgSQL function is judged read-only, but calls a VOLATILE one.
    ("stable-plpgsql-wrapper", ["select {s}.stable_wrap()"]),
    ("immutable-plpgsql-wrapper", ["select {s}.immutable_wrap()"]),
    # Functions run by PostgreSQL without a call in the statement text.
    ("aggregate-state-function", ["select {s}.evil_agg(1)"]),
    ("operator-function", ["select 1 operator({s}.###) 1"]),
    ("domain-check", ["select 1::{s}.evil_dom"]),
    ("view", ["select * from {s}.wipe_view"]),
    ("column-default", ["insert into {s}.with_default (id) values (1)"]),
    ("insert-trigger", ["insert into {s}.log (msg) values ('hello')"]),
    ("partition-trigger", ["insert into {s}.events values (1, 'audit')"]),
    ("check-constraint", ["insert into {s}.checked values (1)"]),
    # A temporary view hides the function call from the next statement.
    (
        "temp-view",
        ["create temp view laundered as select {s}.wipe() as w", "select * from laundered"],
    ),
    # Temporary CREATE TABLE AS / SELECT INTO are not guarded, but their query may delete.
    (
        "ctas-temp-dml-cte",
        [
            "create temp table loot as with d as (delete from {v} where id > -1 returning *) select * from d"
        ],
    ),
    (
        "select-into-temp-dml-cte",
        [
            "with d as (update {v} set note = 'x' where id > -1 returning *) select * into temp loot from d"
        ],
    ),
    # EXECUTE is looked up only at the top level.
    (
        "explain-analyze-execute",
        ["prepare p as delete from {v} where id > -1", "explain analyze execute p"],
    ),
    ("ctas-execute", ["prepare p as select {s}.wipe()", "create temp table loot as execute p"]),
    # The proxy's idea of what a prepared statement is drifts from PostgreSQL's when a
    # PREPARE or DEALLOCATE fails upstream (a duplicate name, a failed block).
    (
        "duplicate-prepare",
        ["prepare p as delete from {v} where id > -1", "prepare p as select 1", "execute p"],
    ),
    (
        "deallocate-in-failed-block",
        [
            "prepare p as delete from {v} where id > -1",
            "begin",
            "select 1/0",
            "deallocate p",
            "rollback",
            "execute p",
        ],
    ),
    (
        "prepare-in-failed-block",
        [
            "prepare p as update {v} set note = 'x' where id > -1",
            "begin",
            "select 1/0",
            "prepare p as select 1",
            "rollback",
            "execute p",
        ],
    ),
    # The cursor's query runs at FETCH (or, WITH HOLD, at the commit after the guard measured).
    (
        "cursor-fetch",
        ["begin", "declare c cursor for select {s}.wipe()", "fetch all from c", "commit"],
    ),
    ("cursor-with-hold", ["declare c cursor with hold for select {s}.wipe()", "close c"]),
]


@pytest.mark.parametrize("steps", [b[1] for b in BYPASSES], ids=[b[0] for b in BYPASSES])
@pytest.mark.parametrize("mode", ["psycopg", "asyncpg"])
def test_guard_bypass_attempt(env: Env, victim: str, mode: str, steps: list[str]) -> None:
    out = run(mode, env.proxy, [st.format(v=env.v, s=env.s) for st in steps])
    assert any(o.sqlstate is not None and o.message.startswith("dbsentry:") for o in out), (
        "no step was refused: " + " | ".join(str(o) for o in out)
    )
    intact(env)


@pytest.mark.parametrize("steps", [b[1] for b in BYPASSES] + [[w[1]] for w in WIPES], ids=[b[0] for b in BYPASSES] + [w[0] for w in WIPES])
@pytest.mark.parametrize("mode", ["psycopg", "asyncpg"])
def test_guard_bypass_attempt_after_a_measured_statement(env: Env, victim: str, mode: str, steps: list[str]) -> None:
    """The same attempts inside a block whose last statement the guard measured (the next
    one may start from that reading): still refused, the table intact."""
    first = ["begin", f"update {env.v} set note = note where id = 1", "select 1"]
    out = run(mode, env.proxy, [*first, *(st.format(v=env.v, s=env.s) for st in steps), "rollback"])
    assert out[1].ok and out[1].tag == "UPDATE 1", str(out[1])
    # refused by the proxy, or never run (an earlier step of the attempt failed the block)
    assert any(
        o.sqlstate is not None and (o.message.startswith("dbsentry:") or o.sqlstate == "25P02") for o in out[3:]
    ), "no step was refused: " + " | ".join(str(o) for o in out)
    intact(env)


@pytest.mark.parametrize("mode", ["psql", "psycopg"])
@pytest.mark.parametrize("end", ["rollback", "commit", "abort"])
def test_wipe_after_ending_a_failed_block_in_one_query(
    env: Env, victim: str, mode: str, end: str
) -> None:
    """From a failed block, one query string ends it and wipes the table: the wipe runs
    outside any block, so it must be guarded as any other."""
    sep = " \\; " if mode == "psql" else "; "  # psql sends "a \\; b" as one query
    out = run(
        mode,
        env.proxy,
        ["begin", "select 1/0", f"{end}{sep}delete from {env.v} where id > -1", "rollback", "select 'after'"],
    )
    assert out[1].sqlstate == "22012", str(out[1])
    # Refused as a whole string (nothing of it runs, its ROLLBACK neither): the block is
    # still the failed one, and a ROLLBACK of its own ends it.
    refused(out[2])
    assert out[3].ok, str(out[3])
    assert out[4].rows == [("after",)], str(out[4])
    intact(env)


@pytest.mark.parametrize("mode", EXTENDED_MODES)
def test_procedure_that_commits_in_the_extended_protocol(env: Env, victim: str, mode: str) -> None:
    """CALL outside a block in the extended protocol may COMMIT inside the procedure: what it
    changed must not survive a refusal that says it was rolled back."""
    o = run_one(mode, env.proxy, (f"call {env.s}.wipe_commit(%s)", (-1,)))
    assert o.sqlstate is not None, f"a procedure wiping the table ran: {o}"
    intact(env)


def test_procedure_that_commits_in_psql(env: Env, victim: str) -> None:
    o = run_one("psql", env.proxy, f"call {env.s}.wipe_commit(-1)")
    assert o.sqlstate is not None, str(o)
    intact(env)


@pytest.mark.parametrize("mode", ["psql", "asyncpg"])
def test_many_small_partitions(env: Env, mode: str) -> None:
    """90 rows in 10 partitions of 9: each partition is under min_rows_for_fraction, the
    partitioned table loses every row."""
    table = f"{env.s}.parted"
    with env.direct() as c:
        c.execute(f"truncate {table}")
        c.execute(f"insert into {table} select g, 'p' from generate_series(0, 89) g")
    o = run_one(mode, env.proxy, f"delete from {table} where id > -1")
    refused(o, "rolled back")
    with env.direct() as c:
        assert c.execute(f"select count(*) from {table}").fetchone() == (90,)


@pytest.mark.parametrize("mode", ["psycopg", "asyncpg"])
def test_inheritance_parent_wiped(env: Env, mode: str) -> None:
    """``count(*)`` of a parent counts its children: 40 own rows look like 4% of 1,040."""
    with env.direct() as c:
        c.execute(f"delete from only {env.s}.parent")
        c.execute(f"insert into {env.s}.parent select g, 'p' from generate_series(1, 40) g")
    o = run_one(mode, env.proxy, f"delete from only {env.s}.parent where id > -1")
    refused(o, "rolled back")
    with env.direct() as c:
        assert c.execute(f"select count(*) from only {env.s}.parent").fetchone() == (40,)


def test_inflated_statistics_hide_a_wipe(env: Env) -> None:
    """A table over exact_count_max_bytes is judged by its statistics, which a client can
    inflate: insert many rows, ANALYZE, roll back, then wipe the real 900 rows."""
    table = f"{env.s}.stats_victim"
    with env.direct() as c:
        c.execute(f"drop table if exists {table}")
        c.execute(f"create table {table} (id int primary key, note text)")
        c.execute(f"insert into {table} select g, 'n' || g from generate_series(1, 900) g")
        c.execute(f"analyze {table}")
    out = run(
        "psycopg",
        env.proxy,
        [
            "begin",
            f"insert into {table} select g, repeat('x', 60) from generate_series(100000, 300000) g",
            f"analyze {table}",
            "rollback",
            f"delete from {table} where id > -1",
        ],
    )
    assert out[-1].sqlstate is not None, f"900 of 900 rows deleted: {out[-1]}"
    with env.direct() as c:
        assert c.execute(f"select count(*) from {table}").fetchone() == (900,)


@pytest.mark.parametrize("mode", ["psycopg", "asyncpg"])
def test_foreign_table_wiped(env: Env, mode: str) -> None:
    """Rows deleted through postgres_fdw are deleted by another backend: this session's
    row counters never see them."""
    if not env.fdw:
        pytest.skip("postgres_fdw is not available with this PostgreSQL")
    table = f"{env.s}.remote_rows"
    with env.direct() as c:
        _fill(c, table, VICTIM_ROWS)
    o = run_one(mode, env.proxy, f"delete from {env.s}.remote where id > -1")
    assert o.sqlstate is not None, f"a foreign table was wiped: {o}"
    intact(env, table)


@pytest.mark.parametrize("mode", ["psycopg-binary", "asyncpg"])
def test_executes_in_an_open_block_read_the_counters_once_between_them(env: Env, big: str, mode: str) -> None:
    """pgbench -M prepared's TPC-B: parameterised UPDATEs in an explicit block, each sent
    when the last one's answers came.  The block is known open, nothing is in flight, and a
    Sync cannot end an explicit block: each Execute starts from the last one's reading.
    Three UPDATEs with a read between: 3 readings, not 6 (the guard's statistics statement
    as pg_prepared_statements counts its runs: the session's backend is its own and new, so
    the first is measured from zero); and each is still measured alone."""
    stats_runs = "select coalesce(sum(generic_plans + custom_plans), 0)::int from pg_prepared_statements where name like 'dbsentry%_stats_'"
    out = run(
        mode,
        env.proxy,
        [
            "begin",
            (f"update {big} set note = %s where id <= %s", ("a", 700)),
            ("select %s::int", (1,)),
            (f"update {big} set note = %s where id > %s and id <= %s", ("b", 700, 1200)),
            (f"update {big} set note = %s where id > %s", ("c", 900)),
            stats_runs,
            (f"update {big} set note = %s where id > %s", ("d", 0)),
            "rollback",
        ],
    )
    assert [o.tag for o in (out[1], out[3], out[4])] == ["UPDATE 700", "UPDATE 500", "UPDATE 600"], [str(o) for o in out]
    assert [str(r[0]) for r in out[5].rows] == ["3"], [str(o) for o in out]
    row_guard_refused(out[6], BIG_ROWS)
    intact(env, big, BIG_ROWS)


@pytest.mark.parametrize("mode", ["psql", "psycopg", "asyncpg"])
def test_the_session_reads_every_table_only_when_it_does_not_know_which_have_counts(env: Env, big: str, mode: str) -> None:
    """Before a guarded statement the counters of every table with counts are read: only
    those of the tables the last reading saw and the locked ones (the session's backend is
    its own, new: no table had counts at first), while nothing but plain reads,
    transaction control and measured statements that ran no code of the client's went
    upstream; otherwise of every table (a scan of pg_class, milliseconds on a large
    database).  Counted through pg_prepared_statements: the guard's statements end in
    _stats0 (every table) and _stats1.  Each statement is still measured alone, and a
    statement the session did not measure (here a function call) makes it read every table
    again."""
    every = "select coalesce(sum(generic_plans + custom_plans), 0)::int from pg_prepared_statements where name like 'dbsentry%_stats0'"
    steps = [
        f"update {big} set note = 'a' where id <= 700",
        f"update {big} set note = 'b' where id > 700 and id <= 1300",
        "begin",
        f"update {big} set note = 'c' where id <= 100",
        "savepoint s",
        f"update {big} set note = 'd' where id <= 200",
        "rollback to savepoint s",
        "commit",
        f"select note from {big} where id = 1",
        f"update {big} set note = 'e' where id <= 5",
        f"delete from {big} where id > 0",  # over the limit after all: refused
        every,
        f"update {big} set note = 'f' where id <= 5",  # after the count's sum(): every table
        every,
    ]
    out = run(mode, env.proxy, steps)
    tags = [o.tag for o in out[:8]]
    assert tags == ["UPDATE 700", "UPDATE 600", "BEGIN", "UPDATE 100", "SAVEPOINT", "UPDATE 200", "ROLLBACK", "COMMIT"], [
        str(o) for o in out
    ]
    assert out[9].tag == "UPDATE 5", [str(o) for o in out]
    row_guard_refused(out[10], BIG_ROWS)
    assert [str(r[0]) for r in out[11].rows] == ["0"], [str(o) for o in out]
    assert [str(r[0]) for r in out[13].rows] == ["1"], [str(o) for o in out]
    assert len(snapshot(env, big)) == BIG_ROWS  # the DELETE was rolled back
