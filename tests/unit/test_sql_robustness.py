"""Deep, large and malformed input: analyze() answers with facts or a SQLParseError
subclass, quickly, and never with anything else."""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pglast import parser

from dbsentry.engines.postgres.sql import facts as F
from dbsentry.engines.postgres.sql import nodes as N
from dbsentry.engines.postgres.sql.facts import (
    SQLAnalysisError,
    SQLParseError,
    SQLTooComplex,
    SQLUnsupported,
    StatementFacts,
    analyze,
    split_statement_spans,
)

SECOND = 1.0


def timed(sql: str) -> list[StatementFacts] | SQLParseError:
    """Analyse ``sql``: it must take under a second of this process's CPU time (the
    machine's load, e.g. other test processes, does not count). The cyclic collector is
    paused meanwhile: its full passes walk every object the test session has kept alive,
    thousands of tests' worth, which is the session's cost, not the analysis's (a serving
    proxy freezes its start-up heap for the same reason)."""
    gc.disable()
    start = time.process_time()
    try:
        result: list[StatementFacts] | SQLParseError = analyze(sql)
    except SQLParseError as err:
        result = err
    finally:
        elapsed = time.process_time() - start
        gc.enable()
    assert elapsed < SECOND, f"{elapsed:.2f}s of CPU"
    return result


DEEP = {
    "2001 NOTs": "delete from t where " + "not " * 2001 + "true",
    "10000 parentheses": "select " + "(" * 10000 + "1" + ")" * 10000,
    "100k ANDs": "delete from t where " + " and ".join(["a = 1"] * 100_000),
    "100k ORs": "delete from t where " + " or ".join(["1 = 1"] * 100_000),
    "300 subqueries": "select " + "(select " * 300 + "1" + ")" * 300,
    "10k pluses": "select " + " + ".join(["1"] * 10_000),
    "100k unary minus": "select " + "- " * 100_000 + "1",
    "3000 CASEs": "select " + "case when true then " * 3000 + "1" + " end" * 3000,
    "1000 nested CTEs": "with a as (" * 1000 + "select 1" + ") select 1" * 1000,
    "3000 nested arrays": "select " + "array[" * 3000 + "1" + "]" * 3000,
    "huge IN list": "select * from t where id in (" + ",".join(["1"] * 300_000) + ")",
}


@pytest.mark.serial
@pytest.mark.parametrize("sql", DEEP.values(), ids=DEEP.keys())
def test_too_deep_or_too_large_is_refused_quickly(sql: str) -> None:
    result = timed(sql)
    assert isinstance(result, SQLTooComplex), result
    assert str(result).startswith("statement too complex to analyse (")
    assert result.sqlstate == "54001"


@pytest.mark.serial
@pytest.mark.parametrize(
    "sql",
    [
        "select " + "lower(" * 300 + "'a'" + ")" * 300,
        "delete from t where " + "not (" * 300 + "true" + ")" * 300,
        "select " + "(" * 1000 + "1" + ")" * 1000,
        "select " + "(select " * 60 + "1" + ")" * 60,
        "with " + ", ".join(f"c{i} as (select {i})" for i in range(500)) + " select 1",
        "delete from t where " + " and ".join(["a = 1"] * 20_000),
        "insert into t values " + ",".join(f"({i}, 'n{i}', {i}.5)" for i in range(10_000)),
        "delete from t where 300 = " + " + ".join(["1"] * 300),
    ],
    ids=["300 lower", "300 NOT", "1000 parentheses", "60 subqueries", "500 CTEs", "20k ANDs", "10k rows", "300 pluses"],
)
def test_deep_but_reasonable_is_analysed_or_refused_quickly(sql: str) -> None:
    result = timed(sql)
    assert isinstance(result, (list, SQLTooComplex)), result


def test_folding_stays_sound_on_long_chains() -> None:
    (f,) = analyze("delete from t where " + " or ".join(["a = 1"] * 20_000) + " or true")
    assert "always_true_where" in f.flags
    (f,) = analyze("delete from t where 300 = " + " + ".join(["1"] * 300))
    assert "always_true_where" in f.flags


def test_split_statement_spans_is_guarded_too() -> None:
    with pytest.raises(SQLTooComplex):
        split_statement_spans("select " + "not " * 2001 + "true")


def _depth() -> int:
    frame, n = sys._getframe(), 0
    while frame is not None:
        frame, n = frame.f_back, n + 1
    return n


@contextmanager
def shallow_stack(room: int) -> Iterator[None]:
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(_depth() + room)
    try:
        yield
    finally:
        sys.setrecursionlimit(old)


@pytest.mark.parametrize(
    "sql",
    [
        "delete from t where " + "not (" * 200 + "true" + ")" * 200,  # fold: truth()
        "delete from t where 1 = " + "coalesce(" * 200 + "1" + ")" * 200,  # fold: const()
        "select " + "(select " * 100 + "1" + ")" * 100,  # the walk
        "create table t (a int default " + "(" * 10 + "lower(" * 200 + "'a'" + ")" * 210 + ")",  # DDL walk
    ],
)
def test_recursion_errors_become_too_complex(sql: str) -> None:
    with shallow_stack(120), pytest.raises(SQLTooComplex):
        analyze(sql)


def test_where_true_with_fails_closed_on_recursion() -> None:
    (f,) = analyze("delete from t where " + "not (" * 200 + "$1" + ")" * 200)
    assert f.where_params
    with shallow_stack(60):
        assert F.where_true_with(f, ("t",)) is True


# -- random SQL --------------------------------------------------------------------------------

_LEAVES = ["1", "a", "t.a", "$1", "'x'", "true", "null", "current_user", "-1.5", "$$y$$"]
_UNSUPPORTED = "(select count(*) from json_table('[1]', '$[*]' columns (a int path '$')) j)"
# Ways to combine an expression (e) with a leaf (x): applied in sequence they nest.
_OPS = [
    "not ({e})",
    "({e} and {x})",
    "({x} or {e})",
    "({e} = {x})",
    "({e} || {x})",
    "lower({e})",
    "(select {e})",
    "exists (select {x} from t where {e})",
    "case when {e} then {x} else {e} end",
    "({e})::int",
    "coalesce({e}, {x})",
    "array[{e}]",
    "({e}) is null",
    "json_object('k': {e})",
    "xmlelement(name x, {e})",
    "row({e}, {x})",
    "set_config('work_mem', {e}, false)",
    "{e} in (select a from t tablesample system (1))",
    "(select {e} from (select {x}) s)",
    "{x} = any(array[{e}])",
    _UNSUPPORTED + " = {e}",
]
EXPRS = st.tuples(
    st.sampled_from(_LEAVES),
    st.lists(st.tuples(st.integers(0, len(_OPS) - 1), st.sampled_from(_LEAVES)), max_size=25),
).map(lambda p: _build(*p))


def _build(leaf: str, ops: list[tuple[int, str]]) -> str:
    expr = leaf
    for op, x in ops:
        expr = _OPS[op].format(e=expr, x=x)
    return expr


_STATEMENTS = [
    "select {e}",
    "select {e} from t where {e}",
    "delete from t where {e}",
    "update t set a = {e} where {e}",
    "with c as (select {e}) select * from c",
    "with d as (delete from t where {e} returning *) select * from d",
    "explain analyze delete from t where {e}",
    "prepare p as select {e}",
    "merge into t using s on {e} when matched then delete",
    "insert into t select {e} on conflict do nothing",
    "create view v as select {e}",
    "create table x (a int default {e})",
    "execute p({e})",
    "copy (select {e}) to stdout",
]


@pytest.mark.serial
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(_STATEMENTS), EXPRS, st.integers(0, 400), st.sampled_from(["not ", "lower(", "(select ", "-", "(", "array["]))
def test_random_nested_sql(template: str, expr: str, depth: int, wrapper: str) -> None:
    close = {"not ": "", "lower(": ")", "(select ": ")", "-": "", "(": ")", "array[": "]"}[wrapper]
    deep = wrapper * depth + expr + close * depth
    result = timed(template.format(e=deep))
    if isinstance(result, list):
        for f in result:
            assert f.command
            hash(f)
    if _UNSUPPORTED in expr and isinstance(result, SQLUnsupported):
        assert result.construct == "JsonTable"


# -- random trees ------------------------------------------------------------------------------

_EXAMPLE_SQL = [
    "select a, b from t join u using (id) where a = 1 order by 2 limit 3",
    "delete from t where id = $1 returning *",
    "update t set a = (select max(b) from u) where $1 = $2",
    "insert into t (a) values (1) on conflict (a) do update set a = excluded.a",
    "merge into t using s on t.id = s.id when matched then delete",
    "with recursive r as (select 1 union all select 1 from r) select * from r",
    "create table t (a int references u (id), b text default lower('x'))",
    "alter table t add column c int, inherit p",
    "grant select on t to bob",
    "set transaction read write",
    "select set_config('role', 'x', false)",
    "copy t from stdin",
    "explain analyze select * from t tablesample system (1)",
    "execute p(1, 'a')",
    "create schema s create view v as select 1",
    "vacuum full t",
]
_TREES = [orjson.loads(parser.parse_sql_json(s))["stmts"][0]["stmt"] for s in _EXAMPLE_SQL]
_TAGS = sorted({*N.ALLOWED, *N.REFUSED, "Bogus", "List"})
_FIELDS = ["relation", "relname", "fields", "args", "funcname", "whereClause", "targetList", "fromClause",
           "val", "name", "kind", "lexpr", "rexpr", "items", "sval", "ival", "options", "arg", "query",
           "defname", "subselect", "boolop", "cmds", "def", "objects", "withClause", "ctes", "larg"]  # fmt: skip

_NODES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.text(max_size=4), st.sampled_from(_FIELDS)),
    lambda c: st.one_of(
        st.lists(c, max_size=3),
        st.dictionaries(st.sampled_from(_FIELDS), c, max_size=3),
        st.builds(lambda tag, body: {tag: body}, st.sampled_from(_TAGS), st.dictionaries(st.sampled_from(_FIELDS), c, max_size=4)),
    ),
    max_leaves=12,
)


def _positions(node: Any, out: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    if isinstance(node, dict):
        for k, v in node.items():
            out.append((node, k))
            _positions(v, out)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.append((node, i))
            _positions(v, out)
    return out


@pytest.mark.serial
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, len(_TREES) - 1), st.lists(st.tuples(st.integers(0, 10_000), _NODES), min_size=1, max_size=4))
def test_random_tree_mutations(which: int, mutations: list[tuple[int, Any]]) -> None:
    tree = orjson.loads(orjson.dumps(_TREES[which]))
    for index, node in mutations:
        positions = _positions(tree, [])
        container, key = positions[index % len(positions)]
        container[key] = node
    tree_json = orjson.dumps({"version": 180000, "stmts": [{"stmt": tree}]}).decode()
    start = time.process_time()
    try:
        facts = F._analyze_tree("x", "x", 0, tree_json)
    except SQLParseError as err:
        assert isinstance(err, (SQLUnsupported, SQLAnalysisError, SQLTooComplex)), err
    else:
        for f in facts:
            hash(f)
    assert time.process_time() - start < SECOND


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(sorted({*N.ALLOWED, *N.REFUSED, "Bogus"})), min_size=1, max_size=6))
def test_random_tag_mixtures(tags: list[str]) -> None:
    node: Any = {"A_Const": {"ival": {"ival": 1}}}
    for tag in tags:
        node = {tag: {"arg": node, "args": [node]}}
    tree = {"SelectStmt": {"targetList": [{"ResTarget": {"val": node}}]}}
    tree_json = orjson.dumps({"stmts": [{"stmt": tree}]}).decode()
    bad = [t for t in tags if t not in N.ALLOWED]
    try:
        F._analyze_tree("x", "x", 0, tree_json)
    except SQLUnsupported as err:
        if bad:
            assert err.construct in [*bad, "RangeVar", *N.STATEMENTS, *F._FROM_ITEMS]
    except SQLParseError:
        pass
    else:
        assert not bad
