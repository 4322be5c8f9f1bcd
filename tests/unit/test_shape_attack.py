"""Attacks on statements judged by their shape (dbsentry.engines.postgres.sql.shape).

A session that has seen other texts of a statement's shape must treat the statement as a
fresh session judging its text alone does: the same messages upstream and to the client,
the same audit records (constants redacted alike), the same refusals.  Each attack warms a
shape with harmless texts, then sends a text of the same shape chosen to differ: values
that make a WHERE always true or read a position, negative and boundary numbers, strings
that look masked or sensitive, and the grammar around the constants.

Also: statements the text path itself gets wrong, found while attacking shapes (a position
read inside ``GROUP BY ROLLUP (...)``); those tests fail until that is fixed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from test_sql_shape import CATALOG, CLASSMAP, by_text_only, new_session
from test_sql_shape import exchange as _exchange

from dbsentry.audit.config import AuditConfig
from dbsentry.config import parse_config
from dbsentry.engines.postgres.session.governance import Governor
from dbsentry.engines.postgres.session.masking import MaskingService
from dbsentry.engines.postgres.session.pg import ClientInfo, Session
from dbsentry.engines.postgres.sql import shape
from dbsentry.engines.postgres.sql.facts import analyze
from dbsentry.identity.model import Identity
from support.login import logged_in

# -- sessions ------------------------------------------------------------------------------

# Production with the default guardrails: an agent's session (read-only upstream, no row
# guard, masking.predicates = deny).  A person's session there runs writes under the row
# guard, whose exchange with the server this harness does not play: the guard's side is
# attacked end to end (tests/e2e/test_shape_attack.py).
GUARDED = parse_config(
    {
        "tls": {"require_client_tls": False},
        "connections": {"app": {"database": "app", "user": "postgres", "environment": "production"}},
    },
    Path("."),
)
AGENT = Identity("agent-7", frozenset(), "agent", "t", "token")


def production_session(redact: bool | str = "sensitive", identity: Identity = AGENT) -> Session:
    service = MaskingService(GUARDED.masking, b"k" * 32)
    service.install("app", CATALOG, CLASSMAP)
    session = Session(
        GUARDED,
        ClientInfo("127.0.0.1:5000"),
        1,
        b"1234",
        governor=Governor.from_path(None),
        audit_config=AuditConfig(redact_literals=redact),  # type: ignore[arg-type]
    )
    session.masking_service = session.catalog_service = service
    return logged_in(session, identity, "app")


_GUARD_NAMES = re.compile(r"dbsentry_guard_[0-9a-f]+")


def exchange(session: Session, sql: str) -> dict[str, Any]:
    """test_sql_shape.exchange, with the row guard's per-session statement names alike."""
    got = _exchange(session, sql)
    for side in ("upstream", "client"):
        got[side] = [(t, _GUARD_NAMES.sub("G", body)) for t, body in got[side]]
    return got


def _plain(redact: Any) -> Session:
    return new_session(redact)


def _agent(redact: Any) -> Session:
    return production_session(redact)


SESSIONS = {"plain": _plain, "agent": _agent}


def assert_judged_alike(make: Any, warm: list[str], target: str, redact: Any = "sensitive") -> dict[str, Any]:
    """``target`` after ``warm`` in one session is answered as in a fresh session and as
    in a session with the same history that judges every text by itself."""
    long_lived, by_text = make(redact), by_text_only(make(redact))
    for sql in warm:
        assert exchange(long_lived, sql) == exchange(by_text, sql), sql
    got = exchange(long_lived, target)
    assert got == exchange(by_text, target), target
    if long_lived.masking is None or not len(long_lived.masking.touched):
        assert got == exchange(make(redact), target), target
    return got


def _refused(got: dict[str, Any], needle: str = "") -> bool:
    errors = [body for t, body in got["client"] if t == ord("E")]
    return any("dbsentry" in e and needle in e for e in errors)


# -- 1. the WHERE of a write: the always-true question -----------------------------------

# (warm texts, the text that differs): each pair is one shape.
WHERE_ATTACKS = [
    # comparisons with a column whose constants make the condition hold for every row
    (["delete from orders where id between 1 and 2"], "delete from orders where id between -2147483647 and 2147483647"),
    (["delete from orders where id not between 1 and 2"], "delete from orders where id not between 9 and 1"),
    (["delete from orders where id not in (1, 2)"], "delete from orders where id not in (-1, -2)"),
    (["delete from orders where id in (1)"], "delete from orders where id in (-0)"),
    (["delete from orders where id > 39", "delete from orders where id > 38"], "delete from orders where id > -1"),
    (["delete from orders where id <> 5"], "delete from orders where id <> -2147483647"),
    (["delete from orders where 5 < id"], "delete from orders where -5 < id"),
    (["delete from orders where not id = 1"], "delete from orders where not id = -1"),
    (["delete from orders where total > 1.5"], "delete from orders where total > -99999999999999999999.0"),
    (["delete from orders where total > 1.5"], "delete from orders where total > 2147483648"),
    (["update orders set total = 1 where id = 1 or id = 2"], "update orders set total = 1 where id = -1 or id = -2"),
    (["update customers set notes = 'a' where email = 'b'"], "update customers set notes = '' where email = ''"),
    (["update customers set notes = 'a' where email = 'b'"], "update customers set notes = 'a' where email = 'a'"),
    (["update customers set notes = 'a' where email <> 'b'"], "update customers set notes = 't' where email <> 'it''s'"),
    # constants that are not compared with a column: the text decides every time
    (["update orders set total = 1 where id = 1 or 1 = 2"], "update orders set total = 1 where id = 1 or 1 = 1"),
    (["update orders set total = 1 where id = 1 or -1 = -2"], "update orders set total = 1 where id = 1 or -1 = -1"),
    (["delete from orders where id = 1 and 'a' = 'b'"], "delete from orders where id = 1 or 'a' = 'a'"),
    (["delete from orders where id in (1, 2) or 1 in (2)"], "delete from orders where id in (1, 2) or 1 in (1)"),
    (["delete from orders where id = 1 or 2 between 3 and 4"], "delete from orders where id = 1 or 2 between 1 and 4"),
    (["delete from orders where id = 1 or 'ab' like 'x%'"], "delete from orders where id = 1 or 'ab' like 'a%'"),
    (["delete from orders where id = 1 or '0'::boolean"], "delete from orders where id = 1 or '1'::boolean"),
    (["delete from orders where id = 1 or 'off'"], "delete from orders where id = 1 or 'on'"),
    (["delete from orders where id = 1 or id = 1 + 2"], "delete from orders where id = 1 or 1 = 1 + 0"),
    (["delete from orders where id = 1 or 2 is null"], "delete from orders where id = 1 or 2 is not null"),
    (["delete from orders where (id = 1) or (1 = 2)"], "delete from orders where (id = 1) or (2 = 2)"),
    (["delete from orders where id = 1 or not 1 = 1"], "delete from orders where id = 1 or not 1 = 2"),
    (["delete from orders where id in (select 1 where 1 = 2)"], "delete from orders where id in (select 1 where 1 = 1)"),
    (["delete from orders where exists (select 1 where 1 = 2)"], "delete from orders where exists (select 1 where 1 = 1)"),
    (["delete from orders where id = any(array[1, 2])"], "delete from orders where 1 = any(array[1, 2])"),
    # the WHERE of a sub-select in the FROM, USING or SET of a write
    (
        ["update orders set total = 1 from customers c where c.id = orders.customer_id and c.id = 1"],
        "update orders set total = 1 from customers c where c.id = orders.customer_id and c.id = -1",
    ),
    (
        ["delete from orders o using customers c where o.customer_id = c.id and c.email = 'a'"],
        "delete from orders o using customers c where o.customer_id = c.id and c.email = '****@example.com'",
    ),
    (
        ["delete from orders o using (select id from customers where id = 1) c where o.customer_id = c.id"],
        "delete from orders o using (select id from customers where id = 2) c where o.customer_id = c.id",
    ),
    (
        ["update orders set total = (select max(total) from orders where id = 2) where id = 1"],
        "update orders set total = (select max(total) from orders where id = -2) where id = -1",
    ),
    (
        ["delete from orders where customer_id in (select id from customers where email = 'a')"],
        "delete from orders where customer_id in (select id from customers where email = 'ann@example.com')",
    ),
    # RETURNING, INSERT ... SELECT ... WHERE, ON CONFLICT ... WHERE
    (["delete from orders where id = 1 returning id"], "delete from orders where id = -1 returning id"),
    (["insert into orders select id, 1, 1.5 from orders where id = 1"], "insert into orders select id, 1, 1.5 from orders where id = -1"),
    (["insert into orders select 1, 1, 1.5 where 1 = 2"], "insert into orders select 1, 1, 1.5 where 1 = 1"),
    (
        ["insert into orders values (1, 1, 1.5) on conflict (id) where total > 1.5 do nothing"],
        "insert into orders values (1, 1, 1.5) on conflict (id) where total > -1.5 do nothing",
    ),
    (
        ["insert into orders values (1, 1, 1.5) on conflict (id) do update set total = 2.5 where orders.id = 1"],
        "insert into orders values (1, 1, 1.5) on conflict (id) do update set total = 2.5 where orders.id = -1",
    ),
]


@pytest.mark.parametrize("kind", ["plain", "agent"])
@pytest.mark.parametrize(("warm", "target"), WHERE_ATTACKS)
def test_a_warmed_write_shape_is_judged_as_its_text(kind: str, warm: list[str], target: str) -> None:
    assert_judged_alike(SESSIONS[kind], warm, target)


def test_an_always_true_where_after_its_shape_is_still_refused() -> None:
    """The always-true WHERE the folding knows, after texts of its shape that are not."""
    for warm, target in [
        ("update orders set total = 1 where id = 1 or 1 = 2", "update orders set total = 1 where id = 1 or 1 = 1"),
        ("delete from orders where id = 1 or -1 = -2", "delete from orders where id = 1 or -1 = -1"),
        ("delete from orders where id = 1 or 'off'", "delete from orders where id = 1 or 'yes'"),
    ]:
        session = new_session()
        assert not _refused(exchange(session, warm))
        assert _refused(exchange(session, target)), target


# -- 2. lexical tricks: text the shape must not cut the way PostgreSQL does not -----------

LEXICAL_ATTACKS = [
    (["select id from orders where id = 1"], "select id from orders where id = 1e5"),
    (["select id from orders where id = 1"], "select id from orders where id = .5"),
    (["select id from orders where id = 1"], "select id from orders where id = 1."),
    (["select id from orders where id = 1"], "select id from orders where id = 0x1F"),
    (["select id from orders where id = 1"], "select id from orders where id = 1_000"),
    (["select id from orders where id = 1"], "select id from orders where id = 2147483648"),
    (["select id from orders where id = 1"], "select id from orders where id = 0000000000002"),
    (["select id from orders where id = 2147483647"], "select id from orders where id = 02147483648"),
    (["select id from orders where id = -1"], "select id from orders where id = -2147483648"),
    (["select id from orders where id = -1"], "select id from orders where id = - 1"),
    (["select id from orders where id = -1"], "select id from orders where id = --1"),
    (["select id from orders where id =-1"], "select id from orders where id =-2147483647"),
    (["select id from orders where id @-1 = 1"], "select id from orders where id @-2 = 1"),
    (["select id from orders where id = +1"], "select id from orders where id = +2"),
    (["delete from orders where id = 1"], "delete from orders where id = 1 -- or 1 = 1"),
    (["delete from orders where id = 1"], "delete from orders where id = 1 /* */ or 1 = 1"),
    (["delete from orders where id = 1"], "delete from orders where id = 1 or 1=1--"),
    (["select id from customers where email = 'a'"], "select id from customers where email = e'a'"),
    (["select id from customers where email = 'a'"], "select id from customers where email = E'\\x41'"),
    (["select id from customers where email = 'a'"], "select id from customers where email = U&'\\0041'"),
    (["select id from customers where email = 'a'"], "select id from customers where email = 'a''b'"),
    (["select id from customers where email = 'a'"], "select id from customers where email = 'a'\n'b'"),
    (["select id from customers where email = 'a'"], "select id from customers where email = $$a$$"),
    (["select id from customers where email = 'a'"], "select id from customers where email = 'a\\'"),
    (["select id from customers where email = 'a'"], "select id from customers where email = '--'"),
    (["select id from customers where email = 'a'"], "select id from customers where email = '/*'"),
    (["select id from customers where email = 'a'"], "select id from customers where email = '\"x\"'"),
    (["delete from orders where id = 1; "], "delete from orders where id = 1; delete from orders"),
    (["select 1"], "select 1; delete from orders"),
]


@pytest.mark.parametrize(("warm", "target"), LEXICAL_ATTACKS)
def test_lexical_tricks_are_judged_as_their_text(warm: list[str], target: str) -> None:
    assert_judged_alike(_plain, warm, target)


@pytest.mark.parametrize(
    "sql",
    [
        "select id from orders where id = 1e5",
        "select id from orders where id = .5",
        "select id from orders where id = 1.",
        "select id from orders where id = 0x1F",
        "select id from orders where id = 0o17",
        "select id from orders where id = 0b101",
        "select id from orders where id = 1_000",
        "select id from orders where id = - 1",
        "select id from orders where id = - -1",
        "select id from customers where email = e'a'",
        "select id from customers where email = 'a'\n'b'",
        "select id from customers where email = 'a'\r'b'",
        "select id from customers where email = 'a' 'b'",
        "delete from orders where id = 1 -- c",
        "delete from orders where id = 1 /* c */",
        "select float(10) '1'",
        "select current_timestamp(3)",
        "select interval '1' day",
        "select email from customers order by (1)",
        "select email from customers order by -1",
    ],
)
def test_text_outside_the_subset_or_read_by_position_is_not_shaped(sql: str) -> None:
    try:
        facts = tuple(analyze(sql))
    except Exception:
        return  # refused by the parser: judged (refused) by its text
    assert shape.shape_of(sql, facts) is None, sql


# -- 3. masking: written-back values, copies, results, predicates ------------------------

MASKING_ATTACKS = [
    (["update customers set notes = 'plain' where id = 1"], "update customers set notes = '****@example.com' where id = 2"),
    (["update customers set email = 'a@b.co' where id = 1"], "update customers set email = '****@example.com' where id = 2"),
    (["update customers set notes = 'plain' where id = 1"], "update customers set notes = '***-**-6789' where id = 2"),
    (["update customers set notes = 'plain' where id = 1"], "update customers set notes = '<email:hmac:0123456789ab>' where id = 2"),
    (["update customers set notes = 'plain' where id = 1"], "update customers set notes = 'x@example.invalid' where id = 2"),
    (["insert into customers (id, notes) values (1, 'a')"], "insert into customers (id, notes) values (2, '****@example.com')"),
    (["insert into customers (id, email) values (1, 'a')"], "insert into customers (id, email) values (2, '****@example.com')"),
    (["insert into orders values (1, 1, 1.5), (2, 2, 2.5)"], "insert into orders values (1, 1, 1.5), (2, 2, -2.5)"),
    (["insert into orders values (default, 1, 1.5)"], "insert into orders values (default, -1, 4111111111111111.0)"),
    (["update customers set notes = 'a' || notes where id = 1"], "update customers set notes = '****@example.com' || notes where id = 1"),
    (["update customers set notes = lower('a') where id = 1"], "update customers set notes = lower('****@example.com') where id = 1"),
    # copying classified columns: never kept for the shape, the same refusal every time
    (["insert into customers (notes) select email from customers where id = 1"], "insert into customers (notes) select email from customers where id = 2"),
    (["update customers set notes = email where id = 1"], "update customers set notes = email where id = 2"),
    (["update customers set notes = substr(email, 1, 3) where id = 1"], "update customers set notes = substr(email, 2, 99) where id = 2"),
    # results: the plan of the first text masks every later one alike
    (["select email from customers where id = 1"], "select email from customers where id = 2"),
    (["select substr(email, 1, 1) from customers"], "select substr(email, 1, 99) from customers"),
    (["select email::varchar(3) from customers"], "select email::varchar(300) from customers"),
    (["select left(email, 2) from customers"], "select left(email, -2) from customers"),
    (["select split_part(email, '@', 1) from customers"], "select split_part(email, '@', 2) from customers"),
    (["select case when id = 1 then email else 'x' end from customers"], "select case when id = 2 then 'y' else email end from customers"),
    (["select 'a' as email"], "select '****@example.com' as email"),
    (["select email from customers limit 1"], "select email from customers limit 0"),
    (["select email from customers offset 1"], "select email from customers offset 0"),
    (["select email from customers fetch first 1 rows only"], "select email from customers fetch first 9 rows only"),
    (["select id from customers where email = 'a'"], "select id from customers where email = 'ann@example.com'"),
    (["select id from customers where email like 'a'"], "select id from customers where email like '%'"),
    (["select id from customers where id = 1 or email = 'a'"], "select id from customers where id = 1 or email = 'a%'"),
    (["select nextval('a')"], "select nextval('customers_id_seq')"),
    (["select current_setting('a')"], "select current_setting('role')"),
    (["select to_char(1.5, '999')"], "select to_char(1.5, '9999999999')"),
    (["select jsonb_build_object('a', email) from customers"], "select jsonb_build_object('email', email) from customers"),
]


@pytest.mark.parametrize("kind", ["plain", "agent"])
@pytest.mark.parametrize(("warm", "target"), MASKING_ATTACKS)
def test_masking_of_a_warmed_shape_is_that_of_its_text(kind: str, warm: list[str], target: str) -> None:
    assert_judged_alike(SESSIONS[kind], warm, target)


def test_a_masked_value_written_back_after_its_shape_is_refused() -> None:
    session = new_session()
    for i, note in enumerate(["plain", "again"], 1):
        assert not _refused(exchange(session, f"update customers set notes = '{note}' where id = {i}"))
    got = exchange(session, "update customers set notes = '****@example.com' where id = 3")
    assert _refused(got, "masked value"), got["client"]


# -- 4. the audit trail: constants redacted as the text alone redacts them -----------------

AUDIT_ATTACKS = [
    (["select id from orders where id = 1"], "select id from orders where id = 4111111111111111"),
    (["select id from orders where id = -1"], "select id from orders where id = -4111111111111111"),
    (["select id from orders where total = 1.5"], "select id from orders where total = 4111111111111111.0"),
    (["select id from orders where total = -1.5"], "select id from orders where total = -4111111111111111.0"),
    (["update orders set total = total -1 where id = 1"], "update orders set total = total -4111111111111111 where id = 2"),
    (["update orders set total = total*-1 where id = 1"], "update orders set total = total*-4111111111111111 where id = 2"),
    (["update orders set total = 1 where id =-1"], "update orders set total = 1 where id =-4111111111111111"),
    (["select 'x' from orders where id = 1"], "select '4111 1111 1111 1111' from orders where id = 1"),
    (["select 'x' from orders where id = 1"], "select 'ssn 123-45-6789 and ann@example.com' from orders where id = 1"),
    (["select 'x' from orders where id = 1"], "select 'it''s ann@example.com' from orders where id = 1"),
    (["select 'x' from orders where id = 1"], "select '+1 (415) 555-0100' from orders where id = 1"),
    (["select 'x' from orders where id = 1"], "select 'DE89370400440532013000' from orders where id = 1"),
    (["select 'x', 1 from orders"], "select '4111111111111111', 4111111111111111 from orders"),
    (["insert into orders values (1, 1, 1.5)"], "insert into orders values (1, 1, 4111111111111111.0)"),
    (["insert into orders values (1, -1, 1.5)"], "insert into orders values (1, -411111111, 4111111111111111)"),
    (["insert into orders (id, total) values (1, 1.5)"], "insert into orders (id, total) values (4111111111111111, 1.5)"),
    (["insert into customers (id, email) values (1, 'a')"], "insert into customers (id, email) values (2, 'ann@example.com')"),
    (["insert into customers (id, notes) values (1, 'a')"], "insert into customers (id, notes) values (2, 'ann@example.com')"),
    (["update customers set notes = 'a' where id = 1"], "update customers set notes = '123-45-6789' where id = 2"),
    (["delete from customers where email = 'a'"], "delete from customers where email = 'ann@example.com'"),
    (["delete from orders where id = 1"], "delete from orders where id = 0004111111111111111"),
    (["select id from customers c where c.id = 1"], "select id from customers c where c.id = 123456789"),
]


@pytest.mark.parametrize("redact", ["sensitive", True, False])
@pytest.mark.parametrize(("warm", "target"), AUDIT_ATTACKS)
def test_a_warmed_shape_is_recorded_as_its_text(redact: Any, warm: list[str], target: str) -> None:
    got = assert_judged_alike(_plain, warm, target, redact)
    if redact is not False:
        # and a value that is sensitive as written never shows (a card number written as
        # a decimal, 4111111111111111.0, or with leading zeros included: found by this
        # round, redacted since)
        shown = " ".join(str(r.get("statement")) for r in got["records"])
        for secret in ("4111111111111111", "123-45-6789", "ann@example.com", "DE89370400440532013000"):
            if secret in target:
                assert secret not in shown, shown


# -- 5. positions read from constants: GROUP BY ROLLUP / CUBE / GROUPING SETS --------------
#
# PostgreSQL reads an integer constant directly inside ROLLUP (...), CUBE (...) and
# GROUPING SETS (...) as a position in the select list, exactly like GROUP BY 2.  The
# analysis sees a constant: the masked column grouped on is not a predicate use (a text
# that groups on it by name is refused under masking.predicates), and the shape is kept
# for every text (rule 2 of shape.py excludes GROUP BY 2, not ROLLUP (2)).  These tests
# fail until that is fixed.

GROUPING_BY_POSITION = [
    "select id, email, count(*) from customers group by rollup (2)",
    "select email, count(*) from customers group by rollup (1)",
    "select email, count(*) from customers group by cube (1)",
    "select email, count(*) from customers group by grouping sets ((1))",
    "select email, count(*) from customers group by grouping sets (1, ())",
    "select email, count(*) from customers group by rollup ((1))",
]


@pytest.mark.parametrize("sql", GROUPING_BY_POSITION)
def test_a_masked_column_grouped_on_by_position_in_a_grouping_set_is_refused(sql: str) -> None:
    """Refused as ``group by email`` and ``group by 1`` are (masking.predicates)."""
    by_name = exchange(new_session(), "select email, count(*) from customers group by email")
    assert _refused(by_name, "GROUP BY")
    got = exchange(new_session(), sql)
    assert _refused(got, "GROUP BY"), (sql, got["client"])


@pytest.mark.parametrize("sql", GROUPING_BY_POSITION)
def test_a_position_in_a_grouping_set_keeps_the_statement_to_its_text(sql: str) -> None:
    assert shape.shape_of(sql, tuple(analyze(sql))) is None, sql


def test_a_shape_grouping_by_a_harmless_position_does_not_cover_a_masked_one() -> None:
    """``rollup (1)`` groups on ``id``; ``rollup (2)``, the same shape, on ``email``."""
    session = new_session()
    first = exchange(session, "select id, email, count(*) from customers group by rollup (1)")
    assert not _refused(first)
    got = exchange(session, "select id, email, count(*) from customers group by rollup (2)")
    assert _refused(got, "GROUP BY"), got["client"]
