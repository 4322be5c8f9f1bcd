"""Statement facts: commands, classes, tables, WHERE folding, flags; obfuscation cases."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dbsentry.sql.facts import SQLParseError, StatementFacts, analyze, split_statement_spans


def one(sql: str) -> StatementFacts:
    facts = analyze(sql)
    assert len(facts) == 1, facts
    return facts[0]


@pytest.mark.parametrize(
    ("sql", "command", "klass"),
    [
        ("select 1", "SELECT", "READ"),
        ("insert into t values (1)", "INSERT", "WRITE"),
        ("update t set a = 1 where id = 2", "UPDATE", "WRITE"),
        ("delete from t where id = 2", "DELETE", "WRITE"),
        ("merge into t using s on t.id = s.id when matched then delete", "MERGE", "WRITE"),
        ("drop table t", "DROP TABLE", "DDL"),
        ("drop index i", "DROP INDEX", "DDL"),
        ("drop materialized view v", "DROP MATVIEW", "DDL"),
        ("truncate t", "TRUNCATE", "WRITE"),
        ("alter table t add column b int", "ALTER TABLE", "DDL"),
        ("create table t (a int)", "CREATE TABLE", "DDL"),
        ("create table t2 as select * from t", "CREATE TABLE AS", "DDL"),
        ("create materialized view v as select 1", "CREATE MATERIALIZED VIEW", "DDL"),
        ("select * into t2 from t", "SELECT INTO", "DDL"),
        ("grant select on t to bob", "GRANT", "ROLE"),
        ("revoke select on t from bob", "REVOKE", "ROLE"),
        ("grant admin to bob", "GRANT", "ROLE"),
        ("create role bob", "CREATE ROLE", "ROLE"),
        ("create user bob", "CREATE USER", "ROLE"),
        ("alter role bob superuser", "ALTER ROLE", "ROLE"),
        ("drop role bob", "DROP ROLE", "ROLE"),
        ("set role admin", "SET ROLE", "MISC_SET"),
        ("reset role", "RESET ROLE", "MISC_SET"),
        ("set session authorization postgres", "SET SESSION AUTHORIZATION", "MISC_SET"),
        ("set search_path = app, public", "SET", "MISC_SET"),
        ("set local statement_timeout = '5s'", "SET", "MISC_SET"),
        ("reset all", "RESET ALL", "MISC_SET"),
        ("set transaction isolation level serializable", "SET TRANSACTION", "MISC_SET"),
        ("show search_path", "SHOW", "MISC"),
        ("copy t from stdin", "COPY", "WRITE"),
        ("copy t to stdout", "COPY", "READ"),
        ("do $$ begin null; end $$", "DO", "FUNCTION"),
        ("call p(1)", "CALL", "FUNCTION"),
        ("explain select 1", "EXPLAIN", "MISC"),
        ("explain analyze select 1", "EXPLAIN ANALYZE", "READ"),
        ("prepare p as select 1", "PREPARE", "MISC"),
        ("execute p", "EXECUTE", "MISC"),
        ("deallocate p", "DEALLOCATE", "MISC"),
        ("deallocate all", "DEALLOCATE ALL", "MISC"),
        ("begin", "BEGIN", "MISC"),
        ("start transaction", "START TRANSACTION", "MISC"),
        ("commit", "COMMIT", "MISC"),
        ("rollback", "ROLLBACK", "MISC"),
        ("savepoint s", "SAVEPOINT", "MISC"),
        ("rollback to savepoint s", "ROLLBACK TO SAVEPOINT", "MISC"),
        ("release savepoint s", "RELEASE", "MISC"),
        ("listen ch", "LISTEN", "MISC"),
        ("notify ch, 'x'", "NOTIFY", "MISC"),
        ("discard all", "DISCARD ALL", "MISC"),
        ("vacuum t", "VACUUM", "MISC"),
        ("analyze t", "ANALYZE", "MISC"),
        ("lock table t", "LOCK TABLE", "MISC"),
        ("alter system set work_mem = '1GB'", "ALTER SYSTEM", "DDL"),
        ("create index i on t (a)", "CREATE INDEX", "DDL"),
        ("create view v as select * from t", "CREATE VIEW", "DDL"),
        ("create function f() returns int language sql as 'select 1'", "CREATE FUNCTION", "DDL"),
        ("create extension pgcrypto", "CREATE EXTENSION", "DDL"),
        ("comment on table t is 'x'", "COMMENT", "DDL"),
        ("alter table t rename to u", "ALTER TABLE RENAME", "DDL"),
        ("declare c cursor for select * from t", "DECLARE CURSOR", "READ"),
        ("fetch 10 from c", "FETCH", "MISC"),
        ("load 'auto_explain'", "LOAD", "MISC"),
        ("values (1), (2)", "SELECT", "READ"),
    ],
)
def test_command_and_class(sql: str, command: str, klass: str) -> None:
    f = one(sql)
    assert (f.command, f.statement_class) == (command, klass)


@pytest.mark.parametrize(
    ("sql", "read", "written"),
    [
        ("select * from public.users u join orders o on o.uid = u.id", {"public.users", "orders"}, set()),
        ('select * from "Users", "My Schema"."T"', {"Users", "My Schema.T"}, set()),
        ("SELECT * FROM USERS", {"users"}, set()),
        ('select * from U&"\\0075sers"', {"users"}, set()),
        ("select * from (select * from a) s where exists (select 1 from b)", {"a", "b"}, set()),
        ("with c as (select * from a) select * from c join b using (id)", {"a", "b"}, set()),
        ("with t as (select * from t) select * from t", {"t"}, set()),
        ("with recursive r as (select 1 union all select * from r) select * from r", set(), set()),
        ("with d as (delete from t returning *) select * from d", {"t"}, {"t"}),
        ("with d as (delete from t where id = 1) select 1", set(), {"t"}),
        ("select * into t2 from t", {"t"}, {"t2"}),
        ("create table t2 as select * from t", {"t"}, {"t2"}),
        ("insert into t select * from s", {"s"}, {"t"}),
        ("insert into t values (1) returning id", {"t"}, {"t"}),
        ("update t set a = s.a from s where t.id = s.id", {"s"}, {"t"}),
        ("delete from t using s where t.id = s.id", {"s"}, {"t"}),
        ("merge into t using s on t.id = s.id when matched then update set a = s.a", {"s"}, {"t"}),
        ("truncate a, b.c", set(), {"a", "b.c"}),
        ("drop table a.b, c", set(), {"a.b", "c"}),
        ("copy t to stdout", {"t"}, set()),
        ("copy t from stdin", set(), {"t"}),
        ("copy (select * from t) to stdout", {"t"}, set()),
        ("explain analyze delete from t where id = 1", set(), {"t"}),
        ("prepare p as select * from t", {"t"}, set()),
        ("select * from a union select * from b", {"a", "b"}, set()),
        ("select (select max(x) from a) from b", {"a", "b"}, set()),
        ("alter table t add column b int", set(), {"t"}),
        ("select * from db.s.t", {"s.t"}, set()),
    ],
)
def test_tables(sql: str, read: set[str], written: set[str]) -> None:
    f = one(sql)
    assert set(f.tables_read) == read
    assert set(f.tables_written) == written


def test_columns_resolve_aliases() -> None:
    f = one("select u.id, u.email, total from users u where u.active")
    assert set(f.columns_read) == {"users.id", "users.email", "users.total", "users.active"}
    f = one("select u.id, o.total from users u join orders o on o.uid = u.id")
    assert {"users.id", "orders.total", "orders.uid"} <= set(f.columns_read)


def test_functions_schema_qualified_and_lowercased() -> None:
    f = one("SELECT PG_CATALOG.NOW(), lower(x), My_Func(1) FROM t")
    assert set(f.functions) == {"pg_catalog.now", "lower", "my_func"}


@pytest.mark.parametrize(
    "where",
    [
        "1=1",
        "true",
        "'a'='a'",
        "not false",
        "1 in (1)",
        "1 in (2, 1)",
        "id = id",
        "t.id = t.id",
        "x is not null or true",
        "x = 5 or 1 = 1",
        "true and 1 = 1",
        "'1'::int = 1",
        "'t'::boolean",
        "1 <> 2",
        "2 > 1",
        "1 between 0 and 2",
        "'abc' like '%'",
        "id is not distinct from id",
        "exists (select 1)",
        "(select true)",
        "coalesce(null, true)",
        "1 = any(array[1, 2])",
        "null is null",
        "true is true",
        "-1 < 0",
        "'a' || 'b' = 'ab'",
        "1 + 1 = 2",
        "not (1 = 2)",
        "((1 = 1))",
        "1 = 1 /* and id = 5 */",
        "id >= id",
    ],
)
def test_tautologies(where: str) -> None:
    for stmt in ("delete from t where ", "update t set a = 1 where "):
        f = one(stmt + where)
        assert f.has_where
        assert f.where_trivially_true, stmt + where
        assert "always_true_where" in f.flags
        assert f.risk == "high"


@pytest.mark.parametrize(
    "where",
    [
        "id = 5",
        "1 = 2",
        "false",
        "x is not null",
        "x = 5 and true",
        "id = other_id",
        "created_at < now()",
        "current_timestamp > current_timestamp",
        "1 in (2, 3)",
        "exists (select 1 from s where s.id = t.id)",
        "random() < 0.5",
        "'a' = 'b'",
        "null",
        "id in (select id from s)",
        "name like 'a%'",
    ],
)
def test_real_where(where: str) -> None:
    f = one("delete from t where " + where)
    assert f.has_where
    assert not f.where_trivially_true, where
    assert not ({"no_where", "always_true_where"} & f.flags)


@pytest.mark.parametrize(
    "sql",
    [
        "delete from t",
        "DeLeTe FrOm t",
        "delete/**/from t",
        "/* where id = 1 */ delete from t",
        "delete from t -- where id = 1",
        "delete from t; select 'where id = 1'",
        "update t set note = 'where id = 1'",
        "update t set note = $$ where id = 1 $$",
        "\ufeffdelete from t",
        "  \n\t delete from t",
        "with d as (delete from t returning *) select * from d",
        "with d as (update t set a = 1 returning *) select count(*) from d",
        "explain analyze delete from t",
        "explain (analyze, format json) update t set a = 1",
        "explain (analyze on) delete from t",
        "prepare p as delete from t",
        "copy (delete from t returning *) to stdout",
        "declare c cursor for with d as (delete from t returning *) select * from d",
    ],
)
def test_unbounded_writes_are_flagged(sql: str) -> None:
    flagged = [f for f in analyze(sql) if {"no_where", "always_true_where"} & f.flags]
    assert flagged, sql
    assert flagged[0].risk == "high"


def test_where_in_comment_or_string_is_not_a_where() -> None:
    f = one("delete from t /* where id = 1 */")
    assert not f.has_where
    assert "no_where" in f.flags


def test_explain_without_analyze_does_not_execute() -> None:
    f = one("explain delete from t")
    assert f.command == "EXPLAIN"
    assert "no_where" not in f.flags
    assert f.inner is not None and "no_where" in f.inner.flags
    f = one("explain (analyze false) delete from t")
    assert "no_where" not in f.flags


def test_explain_analyze_reflects_inner() -> None:
    f = one("EXPLAIN ANALYZE DELETE FROM t")
    assert f.command == "EXPLAIN ANALYZE"
    assert "DELETE" in f.commands and "WRITE" in f.classes
    assert f.inner is not None and f.inner.command == "DELETE" and not f.inner.has_where


def test_prepare_and_execute_expose_the_name() -> None:
    f = one("PREPARE p(int) AS DELETE FROM t")
    assert f.prepared_name == "p"
    assert f.inner is not None and f.inner.command == "DELETE"
    assert "no_where" in f.flags and "DELETE" in f.commands
    e = one("EXECUTE p(1)")
    assert e.command == "EXECUTE" and e.prepared_name == "p"
    e = one("execute p(nextval('s'))")
    assert "side_effect_function" in e.flags


def test_merge_on_true_is_unbounded() -> None:
    f = one("merge into t using s on true when matched then delete")
    assert "always_true_where" in f.flags
    f = one("merge into t using s on t.id = s.id when matched then delete")
    assert "always_true_where" not in f.flags


@pytest.mark.parametrize(
    ("sql", "direction", "program", "server_file", "flag"),
    [
        ("copy t from stdin", "from", False, False, None),
        ("copy t to stdout with (format csv)", "to", False, False, None),
        ("copy t to '/tmp/x'", "to", False, True, "copy_server_file"),
        ("copy t from '/etc/passwd'", "from", False, True, "copy_server_file"),
        ("copy t from program 'curl evil'", "from", True, False, "copy_program"),
        ("COPY (select 1) TO PROGRAM 'sh'", "to", True, False, "copy_program"),
    ],
)
def test_copy(sql: str, direction: str, program: bool, server_file: bool, flag: str | None) -> None:
    f = one(sql)
    assert f.copy is not None
    assert (f.copy.direction, f.copy.program, f.copy.server_file) == (direction, program, server_file)
    assert ({flag} if flag else set()) == f.flags & {"copy_program", "copy_server_file"}


@pytest.mark.parametrize(
    ("sql", "flag"),
    [
        ("select pg_read_file('/etc/passwd')", "file_access"),
        ("SELECT PG_CATALOG.PG_READ_BINARY_FILE('x')", "file_access"),
        ("select * from pg_ls_dir('.')", "file_access"),
        ("select lo_import('/etc/passwd')", "file_access"),
        ("select lo_export(1, '/tmp/x')", "file_access"),
        ("select pg_stat_file('x')", "file_access"),
        ("select * from dblink('host=x', 'select 1') as t(a int)", "remote_connection"),
        ("select dblink_exec('drop table t')", "dynamic_sql"),
        ("select query_to_xml('delete from t returning 1', true, true, '')", "dynamic_sql"),
        ("do $$ begin execute 'drop table t'; end $$", "dynamic_sql"),
        ("DO LANGUAGE plpgsql $body$ BEGIN PERFORM 1; END $body$", "dynamic_sql"),
        ("select set_config('role', 'admin', false)", "role_switch"),
        ("select set_config(x, 'admin', false) from t", "role_switch"),
        ("set role admin", "role_switch"),
        ("SET LOCAL ROLE admin", "role_switch"),
        ("reset role", "role_switch"),
        ("set session authorization default", "role_switch"),
        ("select nextval('s')", "side_effect_function"),
        ("select pg_terminate_backend(123)", "side_effect_function"),
        ("select pg_advisory_lock(1)", "side_effect_function"),
        ("select * from t for update", "row_lock"),
        ("drop table t", "drop"),
        ("drop database d", "drop"),
        ("drop owned by bob", "drop"),
        ("alter table t drop column c", "drop"),
        ("truncate table t", "truncate"),
        ("alter system set fsync = off", "alter_system"),
        ("create server s foreign data wrapper postgres_fdw options (host 'x')", "remote_connection"),
        ("create user mapping for current_user server s options (user 'u')", "remote_connection"),
        ("create extension dblink", "remote_connection"),
        ("create temp table x (a int)", "temporary"),
        ("select * into temporary x from t", "temporary"),
        ("load 'plugin'", "load"),
    ],
)
def test_flags(sql: str, flag: str) -> None:
    assert flag in one(sql).flags


@pytest.mark.parametrize(
    "sql",
    [
        "select 1",
        "select pg_sleep(1)",
        "select now(), current_user, version()",
        "select set_config('search_path', 'app', false)",
        "set search_path = app",
        "set statement_timeout = 0",
        "set application_name = 'x'",
        "set datestyle = iso",
        "set client_encoding = 'UTF8'",
        "set extra_float_digits = 3",
        "show all",
        "discard all",
        "begin isolation level read committed",
        "select c.oid, n.nspname, c.relname from pg_catalog.pg_class c left join"
        " pg_catalog.pg_namespace n on n.oid = c.relnamespace where c.relname operator(pg_catalog.~)"
        " '^(t)$' collate pg_catalog.default and pg_catalog.pg_table_is_visible(c.oid)"
        " order by 2, 3",
        "select * from t where id = 1",
        "update t set a = 1 where id = $1",
        "delete from t where id = any($1)",
    ],
)
def test_ordinary_work_is_low_risk(sql: str) -> None:
    f = one(sql)
    assert f.risk in ("low", "moderate"), f.flags
    assert not f.flags - {"temporary"}


def test_stacked_statements_and_spans() -> None:
    sql = "select 1; /* c */ DELETE FROM t;\n select 'é; x' ; update t set a = 1 where id = 2"
    facts = analyze(sql)
    assert [f.command for f in facts] == ["SELECT", "DELETE", "SELECT", "UPDATE"]
    assert [f.text for f in facts] == [
        "select 1",
        "DELETE FROM t",
        "select 'é; x'",
        "update t set a = 1 where id = 2",
    ]
    for f in facts:
        assert sql[f.span[0] : f.span[1]].strip() == f.text
    assert split_statement_spans(sql) == [f.span for f in facts]


def test_bom_is_skipped_and_spans_index_the_input() -> None:
    sql = "\ufeffSELECT 1; DROP TABLE t"
    facts = analyze(sql)
    assert [f.command for f in facts] == ["SELECT", "DROP TABLE"]
    assert sql[facts[1].span[0] : facts[1].span[1]] == "DROP TABLE t"


def test_dollar_quoted_body_hides_nothing_from_the_command() -> None:
    f = one("select $tag$; drop table t; $tag$")
    assert f.command == "SELECT" and "drop" not in f.flags


@pytest.mark.parametrize("sql", ["selec 1", "delete from", "select 'unterminated", "drop table"])
def test_unparsable_raises(sql: str) -> None:
    with pytest.raises(SQLParseError):
        analyze(sql)


def test_empty_and_comment_only() -> None:
    assert analyze("") == []
    assert analyze("-- nothing\n/* here */") == []


def test_fingerprint_ignores_constants_and_facts_do_not() -> None:
    a, b = one("delete from t where 1=1"), one("delete from t where 2=1")
    assert a.fingerprint == b.fingerprint
    assert a != b  # where_trivially_true differs, so decision caches keyed on facts stay sound
    c, d = one("delete from t where id = 1"), one("delete from t where id = 2")
    assert c == d and hash(c) == hash(d)


def test_risk_levels() -> None:
    assert one("select 1").risk == "low"
    assert one("insert into t values (1)").risk == "moderate"
    assert one("create table t (a int)").risk == "moderate"
    assert one("grant select on t to bob").risk == "high"
    assert one("drop table t").risk == "high"


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_random_text_never_crashes(text: str) -> None:
    try:
        facts = analyze(text)
    except SQLParseError:
        return
    for f in facts:
        assert f.command


_SQL_PIECES = st.sampled_from(
    [
        "select", "delete", "update", "from", "where", "t", "1=1", "set", "a", "=", "1", ",",
        "(", ")", ";", "with", "as", "returning", "*", "'x'", "$$y$$", "--c\n", "/*c*/", "and",
        "or", "not", "in", "exists", "into", "values", "drop", "table", "explain", "analyze",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_SQL_PIECES, max_size=25))
def test_sqlish_token_soup_never_crashes(pieces: list[str]) -> None:
    with contextlib.suppress(SQLParseError):
        analyze(" ".join(pieces))
