"""Statement facts: commands, classes, tables, WHERE folding, flags; obfuscation cases."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dbsentry.engines.postgres.sql.facts import (
    FLAGS,
    SQLParseError,
    StatementFacts,
    analyze,
    split_statement_spans,
)


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


# -- TABLESAMPLE, XMLTABLE: reads, not writes ------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "select * from t tablesample system(100)",
        "SELECT * FROM T TABLESAMPLE BERNOULLI (50) REPEATABLE (1)",
        'select * from "t" as x tablesample system (1) where x.a > 0',
        "select * from (select * from t tablesample system(10)) s",
        "with c as (select * from t tablesample system(10)) select * from c",
        "select * from u join t tablesample system(10) on true",
    ],
)
def test_tablesample_reads_its_relation(sql: str) -> None:
    f = one(sql)
    assert "t" in f.tables_read
    assert f.tables_written == ()
    assert f.statement_class == "READ"


def test_tablesample_arguments_are_walked() -> None:
    f = one("select * from t tablesample bernoulli (nextval('s')) repeatable (setseed(1))")
    assert "side_effect_function" in f.flags
    assert {"nextval", "setseed"} <= set(f.functions)


def test_xmltable_reads_its_document() -> None:
    f = one("select x.* from docs d, xmltable('/a' passing d.body columns x int path 'b') x")
    assert f.tables_read == ("docs",) and f.tables_written == ()
    assert "docs.body" in f.columns_read


# -- settings --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "settings"),
    [
        ("set search_path = app, public", ("search_path",)),
        ("SET LOCAL Work_Mem TO '1MB'", ("work_mem",)),
        ('set "Work_Mem" = 1', ("work_mem",)),
        ("set /* timeout */ session statement_timeout = 0", ("statement_timeout",)),
        ('set U&"\\0077ork_mem" = 1', ("work_mem",)),
        ("set my.custom to default", ("my.custom",)),
        ("reset work_mem", ("work_mem",)),
        ("RESET ALL", ()),
        ("discard all", ()),
        ("set time zone 'UTC'", ("timezone",)),
        ("set time zone local", ("timezone",)),
        ("set names 'utf8'", ("client_encoding",)),
        ("set schema 'app'", ("search_path",)),
        ("set xml option document", ("xmloption",)),
        ("set role admin", ("role",)),
        ("reset role", ("role",)),
        ("set session authorization bob", ("session_authorization",)),
        ("set transaction isolation level serializable, read only", ("transaction_isolation", "transaction_read_only")),
        ("set transaction deferrable", ("transaction_deferrable",)),
        ("set transaction snapshot '00000003-0000001B-1'", ("transaction_snapshot",)),
        ("set session characteristics as transaction isolation level read committed", ("default_transaction_isolation",)),
        ("set session characteristics as transaction read only, not deferrable", ("default_transaction_deferrable", "default_transaction_read_only")),
        ("select set_config('work_mem', '1MB', false)", ("work_mem",)),
        ("SELECT PG_CATALOG.SET_CONFIG('Search_Path', 'x', true)", ("search_path",)),
        ("select set_config($$statement_timeout$$, '0', false)", ("statement_timeout",)),
        ("select set_config($q$statement_timeout$q$, '0', false)", ("statement_timeout",)),
        ("select set_config('work' || '_mem', '1', false)", ("work_mem",)),
        ("select set_config(E'\\x77ork_mem', '1', false)", ("work_mem",)),
        ("select set_config(U&'\\0077ork_mem', '1', false)", ("work_mem",)),
        ("select set_config('work_mem'::text, '1', false)", ("work_mem",)),
        ("select set_config(new_value => '1', is_local => false, setting_name => 'work_mem')", ("work_mem",)),
        ("select set_config(name, '1', false) from t", ("?",)),
        ("select set_config(lower('WORK_MEM'), '1', false)", ("?",)),
        ("select set_config($1, $2, false)", ("?",)),
        ("select * from set_config('work_mem', '1', false)", ("work_mem",)),
        ("with c as (select set_config('work_mem', '1', false)) select * from c", ("work_mem",)),
        ("select 1 where set_config('work_mem', '1', false) is not null", ("work_mem",)),
        ("explain analyze select set_config('work_mem', '1', false)", ("work_mem",)),
        ("explain select set_config('work_mem', '1', false)", ()),  # not run
        ("prepare p as select set_config('work_mem', '1', false)", ("work_mem",)),
        ("declare c cursor for select set_config('work_mem', '1', false)", ("work_mem",)),
        ("copy (select set_config('work_mem', '1', false)) to stdout", ("work_mem",)),
        ("execute p(set_config('work_mem', '1', false))", ("work_mem",)),
        ("update pg_settings set setting = '1' where name = 'work_mem'", ("?",)),
        ("select set_config('a', '1', false), set_config('b', '2', false)", ("a", "b")),
        ("select current_setting('work_mem')", ()),
        ("show work_mem", ()),
        ("alter role bob set work_mem = '1MB'", ()),  # stored for later sessions, not run now
        ("select 1", ()),
    ],
)  # fmt: skip
def test_settings(sql: str, settings: tuple[str, ...]) -> None:
    assert one(sql).settings == settings


def test_settings_are_part_of_equality() -> None:
    a, b = one("set work_mem = 1"), one("set search_path = a")
    assert a.command == b.command and a != b
    assert one("set work_mem = 1") == one("SET WORK_MEM = 2")


def test_role_switch_still_flags_with_the_setting() -> None:
    for sql in ("set role admin", "select set_config('ROLE', 'admin', false)", "reset session authorization"):
        f = one(sql)
        assert "role_switch" in f.flags, sql
        assert {"role", "session_authorization"} & set(f.settings), sql


# -- new flags -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "insert into pg_catalog.pg_class values (1)",
        "UPDATE PG_CATALOG.PG_AUTHID SET rolsuper = true WHERE rolname = 'me'",
        'delete from "pg_catalog"."pg_proc" where oid = 1',
        "delete from pg_depend where objid = 1",
        'update U&"\\0070g_class" set relname = \'x\' where oid = 2',
        "delete /* pg_catalog */ from information_schema.sql_features where true",
        "merge into pg_catalog.pg_class c using s on c.oid = s.oid when matched then delete",
        "truncate pg_toast.pg_toast_123",
        "truncate table ok, pg_catalog.pg_statistic",
        "copy pg_catalog.pg_class from stdin",
        "COPY pg_statistic FROM '/tmp/x'",
        "with d as (delete from pg_catalog.pg_class where oid = 1 returning 1) select * from d",
        "explain analyze update pg_class set relname = 'x' where oid = 1",
        "prepare p as delete from pg_shdepend where objid = $1",
        "insert into pg_toast_temp_1.x values (1)",
        "update pg_settings set setting = 'x' where name = 'work_mem'",
        "insert into PG_AUTH_MEMBERS values (1, 2, 3)",
        "delete from pg_largeobject",
        "truncate pg_statistic_ext_data",
        "copy pg_db_role_setting from stdin",
        "update pg_stat_io set reads = 0",  # a relation of a newer release counts as well
    ],
)
def test_catalog_write(sql: str) -> None:
    f = analyze(sql)[-1]
    assert "catalog_write" in f.flags
    assert f.statement_class == "DDL" and "DDL" in f.classes
    assert f.risk == "high"


@pytest.mark.parametrize(
    "sql",
    [
        "select * from pg_catalog.pg_class",
        "insert into pg_temp.t values (1)",
        "insert into mypg_table values (1)",
        "update public.pg_things set a = 1 where id = 2",
        "explain update pg_class set relname = 'x' where oid = 1",
        "copy pg_class to stdout",
        "insert into t select * from pg_catalog.pg_class",
        "lock pg_class in access share mode",
        # pg_catalog has no relation of these names, so they are the user's own tables
        "insert into pg_pipeline values (1)",
        "delete from pg_things where id = 1",
        "copy pg_results from stdin",
        "truncate pg_staging",
    ],
)
def test_not_a_catalog_write(sql: str) -> None:
    assert "catalog_write" not in one(sql).flags


@pytest.mark.parametrize(
    "sql",
    [
        "begin read write",
        "BEGIN ISOLATION LEVEL SERIALIZABLE, READ WRITE",
        "start transaction read write",
        "set transaction read write",
        "SET LOCAL TRANSACTION ISOLATION LEVEL READ COMMITTED READ WRITE",
        "set session characteristics as transaction read write",
        "set transaction_read_only = off",
        "set transaction_read_only to false",
        "SET transaction_read_only = 0",
        "set transaction_read_only = 'no'",
        "set transaction_read_only = 'OF'",
        "set transaction_read_only = ' off '",
        "set transaction_read_only = on, off",
        "set default_transaction_read_only = off",
        'set "default_transaction_read_only" = FALSE',
        "set /* x */ session default_transaction_read_only to 'f'",
        'set U&"default_transaction_read_\\006Fnly" = off',
        "set default_transaction_read_only to default",
        "reset default_transaction_read_only",
        "reset transaction_read_only",
        "select set_config('transaction_read_only', 'off', false)",
        "select set_config('default_transaction_read_only', 'false', true)",
        "select set_config('DEFAULT_TRANSACTION_READ_ONLY', $$of$$, false)",
        "select set_config('transaction_read_only', null, false)",
        "select set_config('transaction_read_only', x, false) from t",
        "select set_config('transaction_read_only', '2', false)",
        "select set_config(x, 'on', false) from t",
        "select set_config('default_' || 'transaction_read_only', 'off', false)",
        "with c as (select set_config('transaction_read_only', 'off', true)) select 1",
        "explain analyze select set_config('transaction_read_only', 'off', true)",
        "prepare p as select set_config('transaction_read_only', 'off', true)",
        "alter role r set default_transaction_read_only = off",
        "alter database d set default_transaction_read_only to false",
        "alter system set default_transaction_read_only = off",
        "alter role r reset default_transaction_read_only",
        "alter role r reset all",
        "alter role r in database d reset all",
        "alter database d reset all",
        "alter system reset all",
        "update pg_settings set setting = 'off' where name = 'transaction_read_only'",
    ],
)
def test_read_write_transaction(sql: str) -> None:
    assert "read_write_transaction" in one(sql).flags


@pytest.mark.parametrize(
    "sql",
    [
        "begin",
        "begin read only",
        "begin isolation level read committed",
        "start transaction isolation level serializable, read only, deferrable",
        "set transaction read only",
        "set session characteristics as transaction read only",
        "set transaction_read_only = on",
        "set transaction_read_only = true",
        "set default_transaction_read_only = 'yes'",
        "set default_transaction_read_only to 1",
        "select set_config('transaction_read_only', 'on', false)",
        "select set_config('default_transaction_read_only', 'true', false)",
        "select set_config('work_mem', '1MB', false)",
        "set work_mem = 0",
        "explain select set_config('transaction_read_only', 'off', true)",
        "commit",
        "discard all",
        "reset all",
        "alter role r reset work_mem",
    ],
)
def test_not_read_write_transaction(sql: str) -> None:
    assert "read_write_transaction" not in one(sql).flags


@pytest.mark.parametrize(
    "sql",
    [
        "lock t",
        "LOCK TABLE t IN ACCESS EXCLUSIVE MODE",
        "lock table only t, u nowait",
        "vacuum full t",
        "VACUUM (FULL) t",
        "vacuum (full true, verbose)",
        "vacuum (full 1) t",
        "vacuum (full 'yes') t",
        "cluster t",
        "cluster",
        "cluster t using i",
        "reindex database d",
        "reindex system",
        "REINDEX (VERBOSE) DATABASE",
    ],
)
def test_disruptive_maintenance(sql: str) -> None:
    f = one(sql)
    assert "disruptive_maintenance" in f.flags
    assert f.risk in ("moderate", "high")


@pytest.mark.parametrize(
    "sql",
    [
        "lock t in share mode",
        "lock t in row exclusive mode",
        "lock t in share row exclusive mode",
        "vacuum t",
        "vacuum (full false) t",
        "vacuum (full off, analyze) t",
        "vacuum analyze t",
        "analyze t",
        "reindex table t",
        "reindex index i",
        "reindex schema s",
    ],
)
def test_not_disruptive_maintenance(sql: str) -> None:
    assert "disruptive_maintenance" not in one(sql).flags


def test_maintenance_targets_are_recorded() -> None:
    assert one("vacuum full hr.salaries").tables_written == ("hr.salaries",)
    assert one("cluster hr.salaries using i").tables_written == ("hr.salaries",)
    assert one("lock hr.salaries").tables_read == ("hr.salaries",)


def test_flags_have_descriptions() -> None:
    for flag in ("catalog_write", "read_write_transaction", "disruptive_maintenance"):
        assert FLAGS[flag]


# -- commands --------------------------------------------------------------------------------


def test_on_conflict_do_update_is_also_an_update() -> None:
    f = one("insert into t values (1) on conflict (a) do update set b = excluded.b")
    assert f.command == "INSERT" and set(f.commands) == {"INSERT", "UPDATE"}
    f = one("insert into t values (1) on conflict do nothing")
    assert f.commands == ("INSERT",)
    f = one("with i as (insert into t values (1) on conflict (a) do update set b = 1 returning *) select * from i")
    assert {"SELECT", "INSERT", "UPDATE"} == set(f.commands)


@pytest.mark.parametrize(
    ("sql", "command", "klass"),
    [
        ("alter operator family f using btree add operator 1 < (int, int)", "ALTER OPERATOR FAMILY", "DDL"),
        ("create operator family f using btree", "CREATE OPERATOR FAMILY", "DDL"),
        ("alter foreign data wrapper w options (add x '1')", "ALTER FOREIGN DATA WRAPPER", "DDL"),
        ("alter event trigger et disable", "ALTER EVENT TRIGGER", "DDL"),
        ("alter text search dictionary d (x = 1)", "ALTER TEXT SEARCH DICTIONARY", "DDL"),
        ("alter statistics s set statistics 1", "ALTER STATISTICS", "DDL"),
        ("alter tablespace ts set (seq_page_cost = 1)", "ALTER TABLESPACE", "DDL"),
        ("alter index all in tablespace a set tablespace b", "ALTER INDEX", "DDL"),
        ("alter function f() depends on extension e", "ALTER FUNCTION DEPENDS ON EXTENSION", "DDL"),
        ("create schema s create table t (a int) create view v as select 1", "CREATE SCHEMA", "DDL"),
        ("alter default privileges grant select on tables to bob", "ALTER DEFAULT PRIVILEGES", "ROLE"),
        ("create foreign table ft (a int) server s", "CREATE FOREIGN TABLE", "DDL"),
    ],
)
def test_every_statement_kind_has_a_real_command(sql: str, command: str, klass: str) -> None:
    f = one(sql)
    assert (f.command, f.statement_class) == (command, klass)


def test_create_schema_elements_count_as_part_of_it() -> None:
    f = one("create schema s create table t (a int) grant select on t to bob")
    assert {"CREATE SCHEMA", "CREATE TABLE", "GRANT"} <= set(f.commands)
    assert "ROLE" in f.classes and f.risk == "high"
    f = one("create schema s create temp view v as select 1")
    assert "temporary" not in f.flags  # the schema is not temporary


def test_function_bodies_are_defined_not_run() -> None:
    f = one("create function f() returns int begin atomic delete from t; select nextval('s'); end")
    assert f.commands == ("CREATE FUNCTION",)
    assert not f.flags


@pytest.mark.parametrize(
    "sql",
    [
        "merge into t using s on false when not matched by source then delete",
        "merge into t using s on 1 = 2 when not matched by source then update set a = 1",
        "merge into t using s on null when not matched by source then delete",
        "merge into t using s on true when matched and true then delete",
        "merge into t using s on t.id = t.id when matched then update set a = 1",
    ],
)
def test_merge_unbounded(sql: str) -> None:
    assert "always_true_where" in one(sql).flags


@pytest.mark.parametrize(
    "sql",
    [
        "merge into t using s on t.id = s.id when not matched by source then delete",
        "merge into t using s on false when not matched by source and t.keep then delete",
        "merge into t using s on true when matched and s.x then delete",
        "merge into t using s on false when not matched then insert values (1)",
    ],
)
def test_merge_bounded(sql: str) -> None:
    assert "always_true_where" not in one(sql).flags


@pytest.mark.parametrize(
    "where",
    ["'1' = 1", "1 = '1'", "'t'", "'true'", "' yes '", "'on'", "true = 't'", "'1'::int = '01'::int", "'a' || 'b' = 'ab'", "not 'f'", "'t' is true"],
)  # fmt: skip
def test_untyped_literals_fold_like_postgresql(where: str) -> None:
    assert "always_true_where" in one("delete from t where " + where).flags


@pytest.mark.parametrize("where", ["'1' = '01'", "'abc' = 1", "'x'", "'1'::text = '01'"])
def test_untyped_literals_that_are_not_true(where: str) -> None:
    assert "always_true_where" not in one("delete from t where " + where).flags


@pytest.mark.serial
def test_like_is_linear() -> None:
    import time

    start = time.perf_counter()
    f = one("delete from t where '" + "a" * 3000 + "' like '" + "%a" * 300 + "%b'")
    assert time.perf_counter() - start < 1
    assert "always_true_where" not in f.flags
