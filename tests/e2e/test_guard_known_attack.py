"""Attacks on the row guard's "known tables" (commits 190f242, 3235790, 67161f3): the
reading before a statement covers the system catalogs, the locked tables and the tables
the last bracket saw (K) while nothing unmeasured but "quiet" statements (plain reads,
transaction control, settings) went upstream; rows added to catalogs other than those a
new table fills are refused.

The counting claim held in every sequence tried (the tests of the first part pass): K only
decides which tables the reading before looks at, every value is read fresh, and a table
a statement changed is locked (or a catalog) when the reading after runs.  What fails:

- a function can DEALLOCATE the guard's own prepared statistics statements (their names
  are in pg_prepared_statements) and PREPARE, under the same names, queries that return
  no rows: every later reading is empty, and a wipe or DDL run by a function commits
  (prepared statements are not transactional: a refused statement's DEALLOCATE stays).
  862f013 has the same hole;
- DDL that only ADDS rows to the catalogs a new table fills (pg_class, pg_index,
  pg_constraint, pg_inherits, pg_namespace ...) still runs inside a function without an
  approval, though the same DDL sent directly needs one (old code 862f013: the same);
- ordinary functions that build temporary objects are refused (a text column's TOAST
  table updates pg_class; a serial updates pg_attribute/pg_sequence; DROP then CREATE of a
  temporary table deletes catalog rows): all refused by 862f013 too, except a temporary
  enum type (pg_enum), refused only since 3235790.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from support.guard_clients import SchemaEnv, any_refused, run, scalar, schema_and_proxy, shown
from support.pg import PgServer

pytestmark = pytest.mark.e2e

BIG = 1500  # above max_rows_changed (1000)
SMALL = 40


Env = SchemaEnv


def _objects(s: str) -> str:
    return f"""
    create schema {s};
    create table {s}.big (id int primary key, note text);
    create table {s}.small (id int primary key, note text);
    create table {s}.trig (id int);
    create table {s}.log (id int);
    create function {s}.wipe_big() returns int language plpgsql as
      $$ begin delete from {s}.big where id > 0; return 1; end $$;
    create function {s}.trg_wipe_big() returns trigger language plpgsql as
      $$ begin delete from {s}.big where id > 0; return null; end $$;
    create function {s}.ddl(q text) returns int language plpgsql as $$ begin execute q; return 1; end $$;
    create domain {s}.dom as text;
    create table {s}.usesdom (id int, d {s}.dom);
    create table {s}.par (id int);
    create table {s}.par_c1 () inherits ({s}.par);
    """


@pytest.fixture(scope="module")
def env(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with schema_and_proxy(pg_server, tmp_path_factory.mktemp("guard_known"), "gk", _objects, ("drop schema if exists {s}_x cascade",)) as e:
        yield e


@pytest.fixture
def filled(env: Env) -> Env:
    s = env.s
    with env.direct() as c:
        c.execute(
            f"""drop trigger if exists t_late on {s}.trig;
            truncate {s}.big, {s}.small, {s}.trig, {s}.log;
            insert into {s}.big select g, 'b' from generate_series(1, {BIG}) g;
            insert into {s}.small select g, 'n' from generate_series(1, {SMALL}) g;"""
        )
    return env


def _count(env: Env, sql: str) -> int:
    return scalar(env.direct, sql)


def _big(env: Env) -> int:
    return _count(env, f"select count(*) from {env.s}.big where note = 'b'")


# ================================================================ wipes after quiet statements (hold)


# Each starts by leaving counts in big (700 rows, under the limits) so that K knows big,
# then quiet statements (which keep K), then a wipe: the wipe must be refused.
QUIET: list[tuple[str, list[str]]] = [
    ("set-reset", ["set application_name = 'x'", "reset all", "delete from {s}.big where id > 0"]),
    ("begin-savepoint-rollback-to", ["begin", "savepoint a", "update {s}.big set note = note where id <= 700", "rollback to a", "delete from {s}.big where id > 0", "commit"]),
    ("commit-then-block", ["begin", "update {s}.small set note = note where id = 1", "commit", "begin", "select 1", "delete from {s}.big where id > 0", "commit"]),
    ("plain-reads", ["select count(*) from {s}.big", "show search_path", "values (1)", "delete from {s}.big where id > 700"]),
    ("set-constraints", ["begin", "set constraints all immediate", "update {s}.small set note = note where id = 1", "delete from {s}.big where id > 0", "commit"]),
    ("commit-and-chain", ["begin", "update {s}.small set note = note where id = 1", "commit and chain", "delete from {s}.big where id > 0", "commit"]),
    ("in-block-baseline", ["begin", "update {s}.big set note = note where id <= 100", "select 1", "update {s}.big set note = note where id > 100", "commit"]),
]


@pytest.mark.parametrize("mode", ["psycopg", "asyncpg", "psycopg-pipeline"])
@pytest.mark.parametrize("steps", [q[1] for q in QUIET], ids=[q[0] for q in QUIET])
def test_wipe_after_quiet_statements_is_refused(filled: Env, mode: str, steps: list[str]) -> None:
    s = filled.s
    out = run(mode, filled.proxy, [f"update {s}.big set note = note where id <= 700", *(st.format(s=s) for st in steps)])
    assert any_refused(out), shown(out)
    assert _big(filled) == BIG, "wiped: " + shown(out)


CURSORS: list[tuple[str, list[str]]] = [
    ("declare-fetch", ["begin", "declare c cursor for select {s}.wipe_big()", "fetch all from c", "commit"]),
    ("declare-fetch-after-guarded", ["begin", "update {s}.small set note = note where id = 1", "declare c cursor for select {s}.wipe_big()", "fetch all from c", "commit"]),
    ("declare-hold-commit", ["begin", "declare c cursor with hold for select {s}.wipe_big()", "commit", "close c"]),
    ("declare-move", ["begin", "declare c cursor for select {s}.wipe_big()", "move all in c", "commit"]),
]


@pytest.mark.parametrize("mode", ["psycopg", "asyncpg"])
@pytest.mark.parametrize("steps", [c[1] for c in CURSORS], ids=[c[0] for c in CURSORS])
def test_cursor_of_a_writing_function(filled: Env, mode: str, steps: list[str]) -> None:
    """The function runs at FETCH/MOVE (or at COMMIT for WITH HOLD): unguarded statements."""
    out = run(mode, filled.proxy, [st.format(s=filled.s) for st in steps])
    assert _big(filled) == BIG, "wiped: " + shown(out)


@pytest.mark.parametrize("block", [False, True], ids=["autocommit", "block"])
def test_trigger_created_directly_after_the_session_knew_its_tables(filled: Env, block: bool) -> None:
    """K is set from measured statements; a trigger is then added by a direct connection;
    an INSERT through the proxy runs it (measured: refused)."""
    s = filled.s
    with filled.through() as c:
        c.execute(f"update {s}.small set note = note where id = 1")
        c.execute(f"insert into {s}.trig values (0)")
        with filled.direct() as d:
            d.execute(f"create trigger t_late after insert on {s}.trig for each statement execute function {s}.trg_wipe_big()")
        if block:
            c.execute("begin")
            c.execute(f"update {s}.small set note = note where id = 2")
        with pytest.raises(psycopg.Error, match="dbsentry"):
            c.execute(f"insert into {s}.trig values (1)")
        if block:
            c.execute("rollback")
    assert _big(filled) == BIG


def test_copy_from_stdin_then_wipe(filled: Env) -> None:
    """COPY FROM STDIN is not measured and not quiet: the reading before the next statement
    reads every table."""
    s = filled.s
    with filled.through() as c:
        c.execute(f"update {s}.big set note = note where id <= 10")
        with c.cursor().copy(f"copy {s}.log (id) from stdin") as cp:
            for i in range(900):
                cp.write_row((i,))
        with pytest.raises(psycopg.Error, match="dbsentry"):
            c.execute(f"delete from {s}.big where id > 0")
    assert _big(filled) == BIG


# ================================================================ ordinary workloads (must pass)


@pytest.mark.parametrize("mode", ["psycopg", "asyncpg", "psycopg-pipeline"])
def test_autocommit_stream_of_small_changes_is_not_refused(filled: Env, mode: str) -> None:
    """Lingering counts of earlier transactions (big: 600 + 600 + 600 updated, log: rows
    inserted and deleted) must not be taken for the next statement's."""
    s = filled.s
    steps: list[str] = []
    for i in range(3):
        steps += [
            f"insert into {s}.log select g from generate_series(1, 300) g",
            f"update {s}.big set note = note where id <= 600",
            f"delete from {s}.log where id <= 100",
            f"set application_name = 'app{i}'",
            f"update {s}.small set note = note where id <= 15",
        ]
    out = run(mode, filled.proxy, steps)
    bad = [o for o in out if not o.ok]
    assert not bad, shown(bad)


@pytest.mark.parametrize("mode", ["psycopg", "asyncpg", "psycopg-pipeline"])
def test_orm_savepoints_and_copy_then_update_are_not_refused(filled: Env, mode: str) -> None:
    """An ORM wraps each statement in a savepoint, rolls one back on a conflict and retries."""
    s = filled.s
    steps: list[str] = []
    for _ in range(2):
        steps += [
            "begin",
            "savepoint s1",
            f"update {s}.big set note = note where id <= 600",
            "release savepoint s1",
            "savepoint s2",
            f"update {s}.small set note = note where id <= 15",
            "rollback to savepoint s2",
            "savepoint s3",
            f"update {s}.small set note = note where id <= 15",
            "release savepoint s3",
            "commit",
        ]
    out = run(mode, filled.proxy, steps)
    bad = [o for o in out if not o.ok]
    assert not bad, shown(bad)


def test_copy_then_update_is_not_refused(filled: Env) -> None:
    s = filled.s
    with filled.through() as c:
        with c.cursor().copy(f"copy {s}.small (id, note) from stdin") as cp:
            for i in range(100, 400):
                cp.write_row((i, "c"))
        c.execute(f"update {s}.small set note = 'u' where id >= 100 and id < 250")
        c.execute(f"delete from {s}.small where id >= 250 and id < 400")


# ================================================================ the guard's own prepared statements


_HIJACK = """create or replace function {s}.hijack() returns int language plpgsql as $$
declare r record; n int := 0;
begin
  for r in select name, parameter_types from pg_catalog.pg_prepared_statements where name like 'dbsentry%' loop
    execute format('deallocate %I', r.name);
    if coalesce(array_length(r.parameter_types, 1), 0) = 1 then
      execute format('prepare %I(oid[]) as select 1 where false', r.name);
    else
      execute format('prepare %I as select 1 where false', r.name);
    end if;
    n := n + 1;
  end loop;
  return n;
end $$"""


@pytest.mark.parametrize("then", ["wipe", "ddl"])
@pytest.mark.parametrize("block", [False, True], ids=["autocommit", "block"])
@pytest.mark.parametrize("mode", ["psycopg", "asyncpg"])
def test_guard_statistics_statements_replaced_by_a_function(filled: Env, mode: str, block: bool, then: str) -> None:
    """``select hijack()`` changes no row (it passes); every reading after it is empty."""
    s = filled.s
    with filled.direct() as c:
        c.execute(_HIJACK.format(s=s))
    act = f"select {s}.wipe_big()" if then == "wipe" else f"select {s}.ddl('alter table {s}.small drop column note')"
    steps = [f"update {s}.small set note = note where id = 1", f"select {s}.hijack()", act]
    if block:
        steps = ["begin", *steps, "commit"]
    out = run(mode, filled.proxy, steps)
    column = _count(filled, f"select count(*) from pg_attribute where attrelid = '{s}.small'::regclass and attname = 'note'")
    if not column:
        with filled.direct() as c:
            c.execute(f"alter table {s}.small add column note text")
    assert _big(filled) == BIG, "wiped: " + shown(out)
    assert column == 1, "column dropped: " + shown(out)
    assert any_refused(out), shown(out)


_DROP_THEM = """create or replace function {s}.drop_them() returns int language plpgsql as $$
declare r record;
begin
  for r in select name from pg_catalog.pg_prepared_statements where name like 'dbsentry%' loop
    execute format('deallocate %I', r.name);
  end loop;
  return 1;
end $$"""


@pytest.mark.parametrize("mode", ["psycopg", "asyncpg"])
def test_guard_statistics_statements_dropped_by_a_function(filled: Env, mode: str) -> None:
    """``select drop_them()`` deallocates the guard's readings while it runs: it is refused
    (not measured), and the session's next writes are measured again, not all refused."""
    s = filled.s
    with filled.direct() as c:
        c.execute(_DROP_THEM.format(s=s))
    steps = [
        f"update {s}.small set note = note where id = 1",
        f"select {s}.drop_them()",
        f"update {s}.small set note = note where id = 2",
        f"select {s}.wipe_big()",
    ]
    out = run(mode, filled.proxy, steps)
    assert out[0].ok and not out[1].ok and "could not be measured" in str(out[1]), shown(out)
    assert out[2].ok, shown(out)
    assert not out[3].ok and _big(filled) == BIG, shown(out)


# ================================================================ the catalog rule


def _ddl_state(env: Env) -> tuple[Any, ...]:
    s = env.s
    with env.direct() as c:
        row = c.execute(
            f"""select (select count(*) from pg_index where indrelid = '{s}.big'::regclass),
                (select count(*) from pg_constraint where contypid = '{s}.dom'::regtype),
                (select count(*) from pg_inherits where inhparent = '{s}.par'::regclass),
                (select count(*) from pg_namespace where nspname = '{s}_x'),
                (select count(*) from pg_class where relnamespace = '{s}'::regnamespace and relname = 'made')"""
        ).fetchone()
    assert row is not None
    return tuple(row)


def _undo_ddl(env: Env) -> None:
    s = env.s
    with env.direct() as c:
        c.execute(
            f"""drop index if exists {s}.gk_ui; drop index if exists {s}.gk_ix;
            alter domain {s}.dom drop constraint if exists gk_c;
            drop table if exists {s}.par_c2; drop schema if exists {s}_x cascade; drop table if exists {s}.made"""
        )


# DDL that only adds catalog rows of the kinds a new table fills (pg_class, pg_index,
# pg_constraint, pg_inherits, pg_namespace, pg_depend): the same statement sent directly
# through the proxy is refused by baseline.prod.ddl-approval.
INSERT_ONLY_DDL: list[tuple[str, str]] = [
    # a unique index: every later insert into big of an id above 1500 but the first fails
    ("unique-index", "create unique index gk_ui on {s}.big ((1)) where id > 1500"),
    ("index", "create index gk_ix on {s}.big (note)"),
    # every later write of a value of the domain fails (NOT VALID: existing rows pass);
    # a CHECK may also call a writing function: code on every write, like a trigger
    ("domain-check", "alter domain {s}.dom add constraint gk_c check (false) not valid"),
    # rows of a new child appear in every read, update and delete of the parent
    ("inherit-existing-parent", "create table {s}.par_c2 () inherits ({s}.par)"),
    ("create-schema", "create schema {s}_x"),
    ("create-table", "create table {s}.made (id int)"),
]


@pytest.mark.parametrize("ddl", [d[1] for d in INSERT_ONLY_DDL], ids=[d[0] for d in INSERT_ONLY_DDL])
def test_insert_only_ddl_inside_a_function_is_refused(filled: Env, ddl: str) -> None:
    s = filled.s
    _undo_ddl(filled)
    state = _ddl_state(filled)
    q = ddl.format(s=s).replace("'", "''")
    direct = run("psycopg", filled.proxy, [ddl.format(s=s)])
    out = run("psycopg", filled.proxy, [f"select {s}.ddl('{q}')"])
    after = _ddl_state(filled)
    _undo_ddl(filled)
    assert any_refused(direct), "sent directly it needs an approval: " + shown(direct)
    assert after == state, "the DDL was committed: " + shown(out)
    assert any_refused(out), shown(out)


# Functions that build scratch objects: DDL run inside a statement, which needs an approval
# in production whatever it creates (a temporary table adds the same catalog rows as a
# table; these were mostly refused before too: a text column or a serial updates catalogs).
# (body, calls in one session)
TEMP_OBJECTS: list[tuple[str, str, int]] = [
    ("temp-table-int-columns", "create temp table if not exists gk_t0 (id int, n int)", 1),
    ("temp-table-text-column", "create temp table if not exists gk_t1 (id int, name text)", 1),
    ("temp-table-serial", "create temp table if not exists gk_t2 (id serial, n int)", 1),
    ("drop-and-create-temp-table", "drop table if exists gk_t3; create temp table gk_t3 (id int)", 2),
    ("temp-enum-type", "create type pg_temp.gk_e as enum ('a', 'b')", 1),
]


@pytest.mark.parametrize(("body", "calls"), [t[1:] for t in TEMP_OBJECTS], ids=[t[0] for t in TEMP_OBJECTS])
def test_function_building_temporary_objects_needs_an_approval(filled: Env, body: str, calls: int) -> None:
    s = filled.s
    name = f"scratch_{uuid.uuid4().hex[:6]}"
    with filled.direct() as c:
        c.execute(f"create function {s}.{name}() returns int language plpgsql as $$ begin {body}; return 1; end $$")
    out = run("psycopg", filled.proxy, [f"select {s}.{name}()"] * calls)
    assert out[0].sqlstate == "42501" and "guardrails.catalog_changes" in str(out[0]), shown(out)
