"""The allow-list of parse-tree nodes: complete, consistent with pglast, and enforced
wherever a node stands."""

from __future__ import annotations

import copy
import inspect
from typing import Any

import orjson
import pglast.ast
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pglast import parser

from dbsentry.engines.postgres.sql import facts as F
from dbsentry.engines.postgres.sql import nodes as N
from dbsentry.engines.postgres.sql.facts import SQLUnsupported, analyze

PGLAST_NODES = sorted(
    name
    for name, cls in inspect.getmembers(pglast.ast, inspect.isclass)
    if issubclass(cls, pglast.ast.Node) and cls is not pglast.ast.Node
)


@pytest.mark.parametrize("tag", PGLAST_NODES)
def test_every_pglast_node_is_classified_exactly_once(tag: str) -> None:
    tables = [t for t in (N.STATEMENTS, N.CLAUSES, N.REFUSED) if tag in t]
    assert len(tables) == 1, tag
    assert (tag in N.ALLOWED) == (tag not in N.REFUSED)


def test_tables_are_disjoint_and_hold_only_known_tags() -> None:
    assert not set(N.STATEMENTS) & set(N.CLAUSES)
    assert not N.ALLOWED & set(N.REFUSED)
    # List is a tag in the JSON although pglast has no class for it
    assert set(N.STATEMENTS) | set(N.CLAUSES) | set(N.REFUSED) == {*PGLAST_NODES, "List"}


def test_every_statement_kind_is_listed_with_a_command() -> None:
    stmts = [t for t in PGLAST_NODES if t.endswith("Stmt")]
    for tag in stmts:
        if tag in N.STATEMENTS:
            command, klass = N.STATEMENTS[tag]
            assert command and klass in ("READ", "WRITE", "FUNCTION", "ROLE", "DDL", "MISC", "MISC_SET")
        else:  # not statements of their own
            assert tag in ("RawStmt", "ReturnStmt", "ReplicaIdentityStmt", "PLAssignStmt", "SetOperationStmt")


def _slot_type(t: Any) -> str:
    return t if isinstance(t, str) else str(t.c_type)


def _struct_fields_from_pglast() -> dict[tuple[str, str], str]:
    out = {}
    for name in PGLAST_NODES:
        if name in N.REFUSED or name == "A_Const":  # A_Const's value is written as ival/sval...
            continue
        slots = getattr(pglast.ast, name).__slots__
        for fname, t in (slots.items() if isinstance(slots, dict) else ()):
            base = _slot_type(t).removesuffix("*")
            if base in PGLAST_NODES and base not in ("Node", "Expr") and base not in N.REFUSED:
                out[(name, fname)] = base
    return out


def test_struct_fields_match_pglast() -> None:
    assert _struct_fields_from_pglast() == N.STRUCT_FIELDS


def test_every_relation_field_has_a_place() -> None:
    rangevar_fields = {k for k, v in N.STRUCT_FIELDS.items() if v == "RangeVar"}
    assert rangevar_fields <= set(N.RANGEVAR_PLACES)


# One statement for every statement kind and nearly every clause.
EXAMPLES = [
    "alter collation c refresh version",
    "alter database d refresh collation version",
    "alter database d set work_mem = '1MB'",
    "alter database d connection limit 5",
    "alter default privileges in schema s grant select on tables to bob",
    "alter domain dom set not null",
    "alter type e add value 'x'",
    "alter event trigger et disable",
    "alter extension e add function f(int)",
    "alter extension e update",
    "alter foreign data wrapper w options (add x '1')",
    "alter server s options (set host 'x')",
    "alter function f(int) immutable",
    "alter function f(int) depends on extension e",
    "alter table t set schema s",
    "alter operator family f using btree add operator 1 < (int, int)",
    "alter operator + (int, int) set (restrict = eqsel)",
    "alter function f(int) owner to bob",
    "alter policy p on t using (true)",
    "alter publication p add table t",
    "alter role r set work_mem = '1MB'",
    "alter role r superuser",
    "alter sequence s restart",
    "alter statistics st set statistics 10",
    "alter subscription sub disable",
    "alter system set work_mem = '1MB'",
    "alter text search configuration c drop mapping for word",
    "alter text search dictionary d (x = 1)",
    "alter table all in tablespace a set tablespace b",
    "alter tablespace ts set (seq_page_cost = 1.5)",
    "alter table t add column c int default 1 check (c > 0), alter constraint k deferrable,"
    " replica identity full, inherit p",
    "alter type ty set (send = none)",
    "alter user mapping for bob server s options (set user 'x')",
    "call p(1, b => 2)",
    "checkpoint",
    "close c",
    "cluster t using i",
    "comment on table t is 'x'",
    "create type ct as (a int)",
    "set constraints s.c deferred",
    "copy t (a) from stdin with (format csv)",
    "create access method am type table handler h",
    "create cast (int as text) with function f(int)",
    "create conversion cv for 'LATIN1' to 'UTF8' from f",
    "create domain dom as int check (value > 0)",
    "create type e as enum ('a')",
    "create event trigger et on ddl_command_start execute function f()",
    "create extension pgcrypto",
    "create foreign data wrapper w",
    "create server s foreign data wrapper w",
    "create foreign table ft (a int) server s",
    "create function f(a int default 1) returns int language sql begin atomic select a; end",
    "create function g() returns int return 1",
    "create function h(a int) returns int language sql set search_path = a as 'select 1'",
    "create operator class oc for type int using btree as operator 1 <, function 1 f(int, int)",
    "create operator family of using btree",
    "create language pl handler h",
    "create policy p on t using (a = current_user) with check (a is not null)",
    "create publication p for table t (a) where (a > 1), tables in schema s",
    "create type r as range (subtype = int)",
    "create role bob",
    "create schema s create table t (a int)",
    "create sequence s",
    "create statistics st on a, (b + 1) from t",
    "create table t (a int primary key, b int references u (id), like v including all) inherits (w)",
    "create table p (a int) partition by range (a)",
    "create table c partition of p for values from (minvalue) to (10)",
    "alter table p attach partition c for values from (1) to (2)",
    "create subscription sub connection 'x' publication p",
    "create table t2 as select * from t",
    "create tablespace ts location '/x'",
    "create transform for int language plpython3u"
    " (from sql with function f(internal), to sql with function g(internal))",
    "create trigger tr after insert on t referencing new table as nt for each statement"
    " when (true) execute function f()",
    "create user mapping for bob server s",
    "create database d",
    "deallocate p",
    "declare c cursor for select * from t",
    "create aggregate ag (int) (sfunc = f, stype = int)",
    "delete from t where current of c",
    "discard all",
    "do $$ begin end $$",
    "drop owned by bob",
    "drop role bob",
    "drop table t",
    "drop subscription sub",
    "drop tablespace ts",
    "drop user mapping for bob server s",
    "drop database d",
    "execute p(1)",
    "explain (analyze, format json) select 1",
    "fetch 1 from c",
    "grant admin to bob",
    "grant select (a) on t to bob",
    "import foreign schema r limit to (t1) from server s into l",
    "create index i on t (a, (lower(b)) desc) include (c) where a > 0",
    "insert into t (a, b[1]) values (default, 1) on conflict (a) where a > 0"
    " do update set (a, b) = (select 1, 2) returning *",
    "listen ch",
    "load 'x'",
    "lock table t in share mode",
    "merge into t using s on t.id = s.id when matched and s.x then update set a = 1"
    " when not matched then insert values (1) returning merge_action()",
    "notify ch, 'x'",
    "prepare p (int) as select $1",
    "reassign owned by bob to alice",
    "refresh materialized view mv",
    "reindex table t",
    "alter table t rename to u",
    "create rule r as on insert to t do also notify ch",
    "security label on table t is 'x'",
    "select a, count(*) filter (where b) over (partition by c order by d rows between 1 preceding"
    " and current row) from t group by rollup (a), cube (b) having grouping(a) = 0 and true"
    " window w as (partition by a) order by 1 nulls last limit 1 for update",
    "begin read only",
    "truncate t",
    "unlisten ch",
    "update t set a = 1 from u where t.id = u.id",
    "vacuum (analyze) t (a)",
    "set search_path = a",
    "show search_path",
    "create view v as select 1",
    "delete from t returning with (old as o) o.*",
    "select array[1, 2], (a)[1:2], (r).f, row(1, 2), coalesce(a, 1), greatest(a, 1), a is null,"
    " a is true, a collate \"C\", current_date, $1, -1.5, b'101', a::int,"
    " case when a then 1 else 2 end, a in (select 1), f(x => 1) from t",
    "select xmlelement(name a, xmlattributes(1 as b), 'x'), xmlserialize(content '<a/>' as text)",
    "select json_object('a': 1 returning jsonb), json_array(1, 2), json_array(select 1),"
    " '1' is json, json_value('1', '$.a' passing 1 as a default 1 on error), json_query('1', '$'),"
    " json_exists('1', '$'), json_objectagg(k: v), json_arrayagg(v order by v), json('1'),"
    " json_scalar(1), json_serialize('1' returning text)",
    "with recursive r(n) as (select 1 union all select n + 1 from r) search depth first by n"
    " set ord cycle n set is_cycle using path select * from r",
    "select * from t tablesample system (10) repeatable (1), lateral (select 1) s,"
    " generate_series(1, 2) with ordinality g, xmltable('/a' passing '<a/>' columns x int"
    " path 'b' default 1) x join u using (id)",
    "select 1 into temp t2",
]
# Allowed tags pglast only ever writes without their tag (typed fields), or never at all.
NEVER_TAGGED = {
    "Alias", "BitString", "CTECycleClause", "CTESearchClause", "InferClause", "IntoClause",
    "JsonAggConstructor", "JsonBehavior", "JsonFormat", "JsonOutput", "JsonReturning",
    "OnConflictClause", "PartitionBoundSpec", "PartitionSpec", "PublicationTable", "RawStmt",
    "ReturningClause", "WithClause",
}  # fmt: skip


@pytest.mark.parametrize("sql", EXAMPLES)
def test_ordinary_statements_of_every_kind_are_analysed(sql: str) -> None:
    assert analyze(sql)


def test_examples_cover_the_allow_list() -> None:
    seen: set[str] = set()
    for sql in EXAMPLES:
        seen |= N.tags_of(parser.parse_sql_json(sql))
    assert seen <= N.ALLOWED
    assert N.ALLOWED - seen <= NEVER_TAGGED, sorted(N.ALLOWED - seen)
    typed = set(N.STRUCT_FIELDS.values())
    assert NEVER_TAGGED - {"RawStmt", "BitString"} <= typed


def _tags_by_walking(node: Any, out: set[str]) -> set[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            if len(node) == 1 and k[:1].isupper():
                out.add(k)
            _tags_by_walking(v, out)
    elif isinstance(node, list):
        for v in node:
            _tags_by_walking(v, out)
    return out


_TRICKY_TEXT = [
    "select '{\"Var\":{}}'",
    'select 1 as "{""Var"":"',
    "select $${\"JsonTable\":$$, E'\\\\{\"Query\":', U&'\\007B\"Var\":'",
    'select * from "{""Var"":" as "Var"',
    "comment on table t is '\"},{\"Var\":{'",
]


@pytest.mark.parametrize("sql", [*EXAMPLES, *_TRICKY_TEXT])
def test_tag_scan_finds_exactly_the_tags_of_the_tree(sql: str) -> None:
    tree_json = parser.parse_sql_json(sql)
    assert N.tags_of(tree_json) == _tags_by_walking(orjson.loads(tree_json), set())


@pytest.mark.parametrize("sql", _TRICKY_TEXT)
def test_tag_names_in_strings_and_identifiers_are_not_tags(sql: str) -> None:
    assert analyze(sql)


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet='{}":,[]\\ VarQueryJsonTable\'$', max_size=60))
def test_tag_scan_is_exact_for_any_string_constant(text: str) -> None:
    sql = "select " + "$q$" + text.replace("$q$", "") + "$q$"
    tree_json = parser.parse_sql_json(sql)
    assert N.tags_of(tree_json) == _tags_by_walking(orjson.loads(tree_json), set())


# -- refusals --------------------------------------------------------------------------------

JSON_TABLE = "json_table('[1]', '$[*]' columns (a int path '$'))"


@pytest.mark.parametrize(
    "sql",
    [
        f"select * from {JSON_TABLE} jt",
        "SELECT * FROM /* x */ JSON_TABLE('[1]', '$[*]' COLUMNS (a int PATH '$')) AS jt",
        f"select (select count(*) from {JSON_TABLE} jt)",
        f"with c as (select * from {JSON_TABLE} jt) select * from c",
        f"explain select * from {JSON_TABLE} jt",
        f"prepare p as select * from {JSON_TABLE} jt",
        f"create view v as select * from {JSON_TABLE} jt",
        f"create function f() returns bigint begin atomic select count(*) from {JSON_TABLE} jt; end",
        f"delete from t where exists (select 1 from {JSON_TABLE} jt)",
        f"select 1; select * from {JSON_TABLE} jt",
    ],
)
def test_json_table_is_refused_wherever_it_stands(sql: str) -> None:
    with pytest.raises(SQLUnsupported) as caught:
        analyze(sql)
    assert caught.value.construct == "JsonTable"
    assert str(caught.value) == "dbsentry cannot analyse JSON_TABLE (JsonTable)"


def _inject(sql: str, path: list[Any], node: Any) -> str:
    tree = orjson.loads(parser.parse_sql_json(sql))
    target = tree["stmts"][0]["stmt"]
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = node
    return orjson.dumps(tree).decode()


# (sql, path to a node inside the statement): places the walk reads and places it skips
_PLACES = [
    ("select 1 + 2", ["SelectStmt", "targetList", 0, "ResTarget", "val", "A_Expr", "rexpr"]),
    ("select 1::varchar(10)", ["SelectStmt", "targetList", 0, "ResTarget", "val", "TypeCast", "typeName", "typmods", 0]),
    ("select * from t for update of t", ["SelectStmt", "lockingClause", 0, "LockingClause", "lockedRels", 0]),
    ("select * from t as x(a)", ["SelectStmt", "fromClause", 0, "RangeVar", "alias", "colnames", 0]),
    ("create table t (a int default 1)", ["CreateStmt", "tableElts", 0, "ColumnDef", "constraints", 0, "Constraint", "raw_expr"]),
    ("create function f() returns int return 1", ["CreateFunctionStmt", "sql_body", "ReturnStmt", "returnval"]),
    ("delete from t where id = 1", ["DeleteStmt", "whereClause", "A_Expr", "rexpr"]),
    ("set search_path = a", ["VariableSetStmt", "args", 0]),
]  # fmt: skip


@pytest.mark.parametrize("tag", [*sorted(N.REFUSED), "SomeFutureNode"])
@pytest.mark.parametrize(("sql", "path"), _PLACES)
def test_refused_and_unknown_nodes_raise_wherever_they_stand(tag: str, sql: str, path: list[Any]) -> None:
    tree_json = _inject(sql, path, {tag: {"location": 0}})
    with pytest.raises(SQLUnsupported) as caught:
        F._analyze_tree(sql, sql, 0, tree_json)
    assert caught.value.construct == tag
    assert f"({tag})" in str(caught.value)


def test_refusal_names() -> None:
    assert str(SQLUnsupported("Var")) == "dbsentry cannot analyse a planner node (Var)"
    assert str(SQLUnsupported("Foo")) == "dbsentry cannot analyse an unknown construct (Foo)"


@pytest.mark.parametrize(
    ("sql", "path"),
    [
        ("select 1 + 2", ["SelectStmt", "targetList", 0, "ResTarget", "val", "A_Expr", "rexpr"]),
        ("create table t (a int default 1)", ["CreateStmt", "tableElts", 0, "ColumnDef", "constraints", 0, "Constraint", "raw_expr"]),
        ("create statistics s on a from t", ["CreateStatsStmt", "exprs", 0, "StatsElem", "expr"]),
    ],
)  # fmt: skip
def test_a_table_reference_out_of_place_is_refused_not_guessed(sql: str, path: list[Any]) -> None:
    tree_json = _inject(sql, path, {"RangeVar": {"relname": "secrets", "inh": True}})
    with pytest.raises(SQLUnsupported) as caught:
        F._analyze_tree(sql, sql, 0, tree_json)
    assert caught.value.construct == "RangeVar"
    assert "table reference" in str(caught.value)


def test_a_statement_inside_an_expression_is_refused() -> None:
    sql = "select 1 + 2"
    tree_json = _inject(
        sql,
        ["SelectStmt", "targetList", 0, "ResTarget", "val", "A_Expr", "rexpr"],
        {"VariableSetStmt": {"kind": "VAR_SET_VALUE", "name": "role"}},
    )
    with pytest.raises(SQLUnsupported):
        F._analyze_tree(sql, sql, 0, tree_json)


def test_injection_helper_builds_valid_trees() -> None:
    # sanity: the same path with an allowed node analyses
    sql = "select 1 + 2"
    path = ["SelectStmt", "targetList", 0, "ResTarget", "val", "A_Expr", "rexpr"]
    tree_json = _inject(sql, path, copy.deepcopy({"A_Const": {"ival": {"ival": 3}}}))
    assert F._analyze_tree(sql, sql, 0, tree_json)[0].command == "SELECT"
