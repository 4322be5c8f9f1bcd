"""The allow-list of sqlglot expression types, over the whole universe of sqlglot's types:
every type is either walked (and then its arguments are), handled, or refused."""

from __future__ import annotations

import pytest
from sqlglot import exp

from dbsentry.engines.mysql.sql import facts as F
from dbsentry.governance.facts import AnalysisRefused


def _all_types() -> list[type[exp.Expression]]:
    seen: set[type[exp.Expression]] = set()
    todo: list[type[exp.Expression]] = [exp.Expression]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub not in seen:
                seen.add(sub)
                todo.append(sub)
    return sorted(seen, key=lambda c: c.__name__)


HANDLED = (
    exp.Column,
    exp.Subquery,
    exp.Select,
    exp.Union,
    exp.Intersect,
    exp.Except,
    exp.Exists,
    exp.Placeholder,
)


def _walk() -> F._Walk:
    return F._Walk(F._Facts("SELECT", "READ"))


def test_the_universe_is_large() -> None:
    assert len(_all_types()) > 500


@pytest.mark.parametrize(
    "cls",
    [c for c in _all_types() if not issubclass(c, (exp.Func, *F._PLAIN, *HANDLED))],
    ids=lambda c: c.__name__,
)
def test_every_other_type_is_refused_in_an_expression(cls: type[exp.Expression]) -> None:
    with pytest.raises(AnalysisRefused):
        _walk().expr(cls())


@pytest.mark.parametrize(
    "cls",
    [
        exp.Table,
        exp.Command,
        exp.Into,
        exp.Values,
        exp.Lateral,
        exp.Insert,
        exp.Delete,
        exp.Update,
        exp.Drop,
        exp.Create,
        exp.Set,
    ],
)
def test_tables_and_statements_inside_expressions_are_refused(cls: type[exp.Expression]) -> None:
    with pytest.raises(AnalysisRefused):
        _walk().expr(exp.Paren(this=cls()))


def test_a_table_inside_a_function_is_refused() -> None:
    node = exp.Anonymous(this="f", expressions=[exp.Table(this=exp.to_identifier("t"))])
    with pytest.raises(AnalysisRefused):
        _walk().expr(node)


def test_ddl_parts_outside_the_list_are_refused() -> None:
    w = _walk()
    with pytest.raises(AnalysisRefused):
        F._ddl_walk(exp.Command(this="x"), w.f, w)
    with pytest.raises(AnalysisRefused):
        F._ddl_walk(exp.Property(this=exp.var("CONNECTION"), value=exp.Literal.string("x")), w.f, w)
