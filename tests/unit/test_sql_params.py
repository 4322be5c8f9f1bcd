"""WHERE clauses with parameters: where_params, where_true_with, execute_params."""

from __future__ import annotations

import pytest

from dbsentry.engines.postgres.sql import UNKNOWN_PARAM, StatementFacts, analyze, where_true_with


def one(sql: str) -> StatementFacts:
    (f,) = analyze(sql)
    return f


@pytest.mark.parametrize(
    ("sql", "params", "expected"),
    [
        ("delete from t where $1 = $2", ("1", "1"), True),
        ("delete from t where $1 = $2", ("1", "2"), False),
        ("delete from t where $1 = $2", ("a", "a"), True),
        ("delete from t where $1 = $2", ("1", "01"), False),  # equal as numbers, not as text
        ("delete from t where $1 = $2", (None, None), False),  # NULL = NULL is NULL
        ("delete from t where $1 = $2", ("1", UNKNOWN_PARAM), False),
        ("delete from t where $1 = $2", ("1",), False),  # $2 not bound
        ("delete from t where $1::int = $2::int", ("1", "01"), True),
        ("delete from t where $1::int = $2::int", ("1", "2"), False),
        ("delete from t where $1::int = $2::int", ("x", "x"), False),  # not an integer: error
        ("delete from t where $1::boolean", ("yes",), True),
        ("delete from t where $1", ("t",), True),
        ("delete from t where $1", ("off",), False),
        ("delete from t where $1 is null", (None,), True),
        ("delete from t where $1 is null", ("x",), False),
        ("delete from t where $1 is not distinct from $2", (None, None), True),
        ("delete from t where id = $1 or $2 = 'all'", ("5", "all"), True),
        ("delete from t where id = $1 or $2 = 'all'", ("5", "some"), False),
        ("delete from t where id = $1 and $2 = 'all'", ("5", "all"), False),
        ("delete from t where $1 = 1", ("1",), True),  # typed by the other side
        ("delete from t where $1 + 1 = 2", ("1",), True),
        ("delete from t where $1 in ('a', 'b')", ("b",), True),
        ("delete from t where $1 like 'a%'", ("abc",), True),
        ("delete from t where $1 between 1 and 10", ("5",), True),
        ("delete from t where exists (select 1 where $1 = $2)", ("a", "a"), True),
        ("delete from t where id > $1", ("1",), False),
        ("DELETE /* c */ FROM t WHERE $1 = $2", ("x", "x"), True),
        ("update t set a = $3 where $1 = $2", ("1", "1", "z"), True),
        ("with d as (delete from t where $1 = $2 returning 1) select * from d", ("x", "x"), True),
        ("prepare p as delete from t where $1 = $2", ("x", "x"), True),
        ("prepare p (int, int) as delete from t where $1 = $2", ("7", "7"), True),
        ("explain analyze delete from t where $1 = $2", ("x", "x"), True),
        ("merge into t using s on t.id = $1 when matched then delete", ("1",), False),
        ("merge into t using s on $1 = $2 when matched then delete", ("1", "1"), True),
        ("merge into t using s on $1 = $2 when not matched by source then delete", ("1", "2"), True),
        ("merge into t using s on $1 = $2 when not matched by source then delete", ("1", "1"), False),
        ("merge into t using s on true when matched and $1 then delete", ("true",), True),
        ("merge into t using s on t.id = s.id when matched and $1 then delete", ("true",), False),
    ],
)
def test_where_true_with(sql: str, params: tuple[object, ...], expected: bool) -> None:
    f = one(sql)
    assert f.where_params
    assert where_true_with(f, params) is expected


@pytest.mark.parametrize(
    "sql",
    [
        "delete from t where id = 1",
        "delete from t where true",  # already always true: flagged, nothing to bind
        "delete from t where $1 = $1 or true",
        "delete from t",
        "select * from t where $1 = $2",
        "insert into t values ($1)",
        "update t set a = $1 where id = 3",
        "explain delete from t where $1 = $2",  # not run
        "merge into t using s on t.id = s.id when not matched and $1 then insert values (1)",
    ],
)
def test_no_where_params(sql: str) -> None:
    f = one(sql)
    assert not f.where_params
    assert not where_true_with(f, ("1", "1"))


def test_where_params_in_inner_facts() -> None:
    f = one("explain delete from t where $1 = $2")
    assert not f.where_params and f.inner is not None and f.inner.where_params
    assert where_true_with(f.inner, ("1", "1"))


def test_predicates_do_not_change_equality() -> None:
    a, b = one("delete from t where $1 = $2"), one("delete from t where $2 = $1")
    assert a == b and hash(a) == hash(b)
    assert a.where_predicates != b.where_predicates


def test_deep_predicate_fails_closed() -> None:
    f = one("delete from t where " + "(" * 150 + "$1 = $2" + ")" * 150 + " and " + "not " * 150 + "$3")
    assert f.where_params
    assert isinstance(where_true_with(f, ("1", "1", "f")), bool)


@pytest.mark.parametrize(
    ("sql", "params"),
    [
        ("execute d(1, 1)", ("1", "1")),
        ("EXECUTE d ('a', NULL)", ("a", None)),
        ("execute d(1.50, -2, true, false)", ("1.50", "-2", "true", "false")),
        ("execute d('5'::int, 2 + 3, 'a' || 'b')", ("5", "5", "ab")),
        ("execute d(now(), $1, x)", (UNKNOWN_PARAM, UNKNOWN_PARAM, UNKNOWN_PARAM)),
        ("execute d($$x$$, E'\\x41', U&'\\0042')", ("x", "A", "B")),
        ("execute d", ()),
    ],
)
def test_execute_params(sql: str, params: tuple[object, ...]) -> None:
    f = one(sql)
    assert f.command == "EXECUTE" and f.prepared_name == "d"
    assert f.execute_params == params


def test_execute_params_only_on_execute() -> None:
    assert one("select 1").execute_params is None
    assert one("execute d(1)") != one("execute d(2)")  # the arguments are facts


def test_prepare_then_execute_round_trip() -> None:
    prepared = one("PREPARE d(int, int) AS DELETE FROM t WHERE $1 = $2")
    assert where_true_with(prepared, one("EXECUTE d(1, 1)").execute_params or ())
    assert not where_true_with(prepared, one("EXECUTE d(1, 2)").execute_params or ())
    assert not where_true_with(prepared, one("EXECUTE d(1, now())").execute_params or ())
