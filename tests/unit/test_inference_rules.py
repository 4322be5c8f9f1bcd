"""Where lineage finds masked columns used other than as output values, how
``masking.predicates`` judges those uses, and the data classes a statement reads and writes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from test_masking_lineage import CATALOG, CLASSMAP  # type: ignore[import-not-found]

from dbsentry.config import MaskingConfig
from dbsentry.engines.postgres.masking.inference import (
    StatementClasses,
    permitted,
    refusal_message,
    statement_classes,
    violation,
)
from dbsentry.engines.postgres.masking.lineage import PredicateUse, analyze_lineage
from dbsentry.engines.postgres.sql.facts import analyze
from dbsentry.identity.model import Identity
from dbsentry.policy import EvalContext, evaluate, parse_policy


def uses(sql: str) -> set[tuple[str, str, str]]:
    """(column, clause, shape) of the sensitive and harmless columns used."""
    out = set()
    for lin in analyze_lineage(sql, CATALOG):
        for u in lin.predicates:
            out.add((f"{u.column.table}.{u.column.column}", u.clause, u.shape))
    return out


def verdict(sql: str, mode: str) -> str | None:
    use = violation(analyze_lineage(sql, CATALOG), CLASSMAP, mode)  # type: ignore[arg-type]
    return None if use is None else f"{use.column.column} in {use.clause}"


# -- point lookups ------------------------------------------------------------------------

LOOKUPS = [
    "SELECT id FROM customers WHERE email = 'a@b.c'",
    "SELECT id FROM customers WHERE 'a@b.c' = email",
    "SELECT id FROM customers WHERE email = $1",
    "SELECT id FROM customers WHERE email = $1::text",
    "SELECT id FROM customers WHERE email = CAST($1 AS varchar)",
    "SELECT id FROM customers WHERE email IN ('a', 'b', $1)",
    "SELECT id FROM customers WHERE email NOT IN ('a', 'b')",
    "SELECT id FROM customers WHERE email <> 'a' AND email != 'b'",
    "SELECT id FROM customers WHERE email = ANY($1)",
    "SELECT id FROM customers WHERE email = ANY(ARRAY['a', $2])",
    "SELECT id FROM customers WHERE email = ANY('{a,b}'::text[])",
    "SELECT id FROM customers WHERE email <> ALL($1)",
    "SELECT id FROM customers WHERE email IS NOT DISTINCT FROM $1",
    "SELECT id FROM customers WHERE email IS DISTINCT FROM $1",
    "SELECT id FROM customers WHERE NOT (email = 'a') OR (ssn = '1' AND phone = '2')",
    "SELECT id FROM customers WHERE email IS NULL",
    "SELECT id FROM customers WHERE email IS NOT NULL AND ssn IS NULL",
    "SELECT id FROM customers c WHERE c.email = 'x'",
    "SELECT id FROM public.customers WHERE public.customers.email = 'x'",
    "SELECT c.id FROM customers c JOIN orders o ON o.customer_id = c.id AND c.email = 'x'",
    "SELECT id FROM (SELECT id, email FROM customers) s WHERE s.email = 'x'",
    "WITH s AS (SELECT id, email AS e FROM customers) SELECT id FROM s WHERE e = $1",
    "SELECT id FROM customers WHERE id IN (SELECT id FROM customers WHERE email = 'x')",
    "SELECT count(*) FILTER (WHERE email = 'x') FROM customers",
    "SELECT count(email) FROM customers",
    "SELECT count(*) FROM customers WHERE ssn IS NULL",
    "UPDATE customers SET notes = 'x' WHERE email = $1",
    "UPDATE customers SET email = $2 WHERE email = $1",
    "DELETE FROM customers WHERE ssn = $1 RETURNING id, ssn",
    "SELECT id, email, ssn FROM customers WHERE id = 1 ORDER BY id",
    "SELECT mail FROM v_contacts WHERE mail = 'x'",
    "SELECT id FROM customers WHERE notes LIKE '%x%' ORDER BY notes",
    "SELECT email FROM customers UNION ALL SELECT 'x'",
    "SELECT ssn IS NULL, num_nulls(phone), email = 'x', upper(email) FROM customers",
    "SELECT EXISTS (SELECT * FROM customers c WHERE c.id = 1)",
    "SELECT o.id FROM orders o WHERE EXISTS (SELECT * FROM customers c WHERE c.id = o.customer_id)",
    "SELECT o.id FROM orders o WHERE EXISTS (SELECT c.ssn FROM customers c WHERE c.id = o.customer_id)",
    "SELECT email FROM customers WHERE email = 'x' ORDER BY id LIMIT 10",
    "PREPARE q(text) AS SELECT id FROM customers WHERE email = $1",
    "DECLARE c CURSOR FOR SELECT email FROM customers WHERE ssn = '1'",
    "INSERT INTO customers (id, email) VALUES (1, 'x') ON CONFLICT (email) DO NOTHING",
    "SELECT id, row_number() OVER (ORDER BY id) FROM customers WHERE email = 'x'",
    "SELECT first_value(email) OVER (PARTITION BY id) FROM customers",
    # expanding a stored value reveals its size, like count()
    "SELECT e FROM customers c, unnest(ARRAY[c.id]) e",
    "SELECT k FROM customers c, json_each_text(c.email) k",
    "SELECT unnest(email) FROM customers",
    # NULL exactly when equal to a constant: a lookup
    "SELECT nullif(email, '') FROM customers",
    "SELECT nullif('', ssn) FROM customers",
]


@pytest.mark.parametrize("sql", LOOKUPS)
def test_point_lookups_pass_equality(sql: str) -> None:
    assert verdict(sql, "equality") is None
    assert verdict(sql, "allow") is None


# -- everything else ------------------------------------------------------------------------

PROBES = [
    ("SELECT id FROM customers WHERE ssn LIKE '5%'", "ssn in WHERE"),
    ("SELECT id FROM customers WHERE ssn ILIKE '5%'", "ssn in WHERE"),
    ("SELECT id FROM customers WHERE ssn ~ '^5'", "ssn in WHERE"),
    ("SELECT id FROM customers WHERE ssn SIMILAR TO '5%'", "ssn in WHERE"),
    ("SELECT id FROM customers WHERE ssn > '5'", "ssn in WHERE"),
    ("SELECT id FROM customers WHERE ssn BETWEEN '5' AND '6'", "ssn in WHERE"),
    ("SELECT id FROM customers WHERE lower(email) = 'x'", "email in WHERE"),
    ("SELECT id FROM customers WHERE email::text LIKE 'a%'", "email in WHERE"),
    ("SELECT id FROM customers WHERE email::text = 'x'", "email in WHERE"),
    ("SELECT id FROM customers WHERE ssn::char(1) = '5'", "ssn in WHERE"),
    ("SELECT id FROM customers WHERE substr(email, 1, 1) = 'a'", "email in WHERE"),
    ("SELECT id FROM customers WHERE left(ssn, 3) IN ('536', '537')", "ssn in WHERE"),
    ("SELECT id FROM customers WHERE coalesce(ssn, '') = 'x'", "ssn in WHERE"),
    ("SELECT id FROM customers WHERE email COLLATE \"C\" = 'x'", "email in WHERE"),
    ("SELECT id FROM customers WHERE email = lower($1)", "email in WHERE"),
    ("SELECT id FROM customers WHERE (email = 'x') = true", "email in WHERE"),
    ("SELECT id FROM customers WHERE email = ssn", "email in WHERE"),
    ("SELECT id FROM customers WHERE (email, id) = ('x', 1)", "email in WHERE"),
    ("SELECT id FROM customers WHERE email IN (SELECT notes FROM customers)", "email in WHERE"),
    ("SELECT id FROM customers WHERE 'x' IN (SELECT email FROM customers)", "email in WHERE"),
    (
        "SELECT id FROM customers WHERE email = (SELECT email FROM customers WHERE id = 2)",
        "email in WHERE",
    ),
    ("SELECT id FROM customers WHERE position('5' in ssn) = 1", "ssn in WHERE"),
    ("SELECT id FROM customers WHERE nullif(substr(ssn, 1, 1), '5') IS NULL", "ssn in WHERE"),
    ("SELECT id FROM customers WHERE length(email) > 10", "email in WHERE"),
    ("SELECT id FROM customers WHERE CASE WHEN ssn LIKE '5%' THEN true END", "ssn in WHERE"),
    ("SELECT id FROM customers ORDER BY ssn", "ssn in ORDER BY"),
    ("SELECT id FROM customers ORDER BY ssn DESC NULLS LAST", "ssn in ORDER BY"),
    ("SELECT id, ssn FROM customers ORDER BY 2", "ssn in ORDER BY"),
    ("SELECT id, ssn AS s FROM customers ORDER BY s", "ssn in ORDER BY"),
    ("SELECT id FROM customers ORDER BY substr(email, 3, 1)", "email in ORDER BY"),
    ("SELECT email FROM customers UNION SELECT 'x' ORDER BY 1", "email in UNION"),
    ("SELECT id FROM customers GROUP BY ssn", "ssn in GROUP BY"),
    ("SELECT substr(email, 1, 1), count(*) FROM customers GROUP BY 1", "email in GROUP BY"),
    ("SELECT count(*) FROM customers GROUP BY substr(email, 1, 1)", "email in GROUP BY"),
    ("SELECT count(*) FROM customers GROUP BY ROLLUP (substr(email, 1, 1))", "email in GROUP BY"),
    ("SELECT count(*) FROM customers GROUP BY GROUPING SETS ((ssn), ())", "ssn in GROUP BY"),
    ("SELECT count(DISTINCT ssn) FROM customers", "ssn in an aggregate"),
    ("SELECT min(ssn), max(ssn) FROM customers", "ssn in an aggregate"),
    ("SELECT string_agg(email, ',') FROM customers", "email in an aggregate"),
    ("SELECT string_agg(notes, ',' ORDER BY ssn) FROM customers", "ssn in ORDER BY"),
    ("SELECT rank('5') WITHIN GROUP (ORDER BY ssn) FROM customers", "ssn in ORDER BY"),
    ("SELECT sum(ascii(ssn)) FROM customers", "ssn in an aggregate"),
    ("SELECT bool_or(ssn LIKE '5%') FROM customers", "ssn in an aggregate"),
    ("SELECT count(*) FILTER (WHERE ssn LIKE '5%') FROM customers", "ssn in FILTER"),
    ("SELECT count(CASE WHEN ssn LIKE '5%' THEN 1 END) FROM customers", "ssn in an aggregate"),
    ("SELECT CASE WHEN ssn LIKE '5%' THEN 'a' END FROM customers", "ssn in CASE"),
    ("SELECT CASE substr(ssn, 1, 1) WHEN '5' THEN 1 END FROM customers", "ssn in CASE"),
    ("SELECT row_number() OVER (PARTITION BY ssn) FROM customers", "ssn in OVER (PARTITION BY)"),
    ("SELECT row_number() OVER (ORDER BY email) FROM customers", "email in OVER (ORDER BY)"),
    (
        "SELECT row_number() OVER w FROM customers WINDOW w AS (PARTITION BY substr(ssn, 1, 2))",
        "ssn in OVER (PARTITION BY)",
    ),
    ("SELECT lag(id) OVER (ORDER BY ssn) FROM customers", "ssn in OVER (ORDER BY)"),
    ("SELECT DISTINCT email FROM customers", "email in DISTINCT"),
    ("SELECT DISTINCT ON (ssn) id FROM customers", "ssn in DISTINCT ON"),
    ("SELECT DISTINCT ON (2) id, ssn FROM customers", "ssn in DISTINCT ON"),
    ("SELECT email FROM customers INTERSECT SELECT 'x'", "email in INTERSECT"),
    ("SELECT email FROM customers EXCEPT ALL SELECT 'x'", "email in EXCEPT"),
    ("SELECT id FROM customers GROUP BY id HAVING max(ssn) > '5'", "ssn in HAVING"),
    ("SELECT c.id FROM customers c JOIN customers g ON c.ssn = g.notes", "ssn in JOIN ... ON"),
    (
        "SELECT c.id FROM customers c JOIN (VALUES ('1')) g(ssn) USING (ssn)",
        "ssn in JOIN ... USING",
    ),
    (
        "SELECT 1 FROM (SELECT ssn FROM customers) a NATURAL JOIN (SELECT '1' AS ssn) b",
        "ssn in JOIN ... USING",
    ),
    ("SELECT id FROM customers c, LATERAL (SELECT 1 WHERE c.ssn LIKE '5%') x", "ssn in WHERE"),
    ("SELECT id FROM customers c, regexp_matches(c.ssn, '^5') m", "ssn in a function in FROM"),
    ("SELECT k FROM customers c, jsonb_object_keys(c.email::jsonb) k", "email in a function in FROM"),
    ("SELECT e FROM customers c, unnest(string_to_array(c.ssn, '5')) e", "ssn in a function in FROM"),
    (
        "SELECT id FROM customers c, generate_series(1, length(c.email)) g",
        "email in a function in FROM",
    ),
    (
        "SELECT id FROM customers LIMIT (SELECT ascii(ssn) FROM customers LIMIT 1)",
        "ssn in LIMIT/OFFSET",
    ),
    (
        "SELECT id FROM customers OFFSET (SELECT length(email) FROM customers LIMIT 1)",
        "email in LIMIT/OFFSET",
    ),
    ("SELECT pg_column_size(email) FROM customers", "email in pg_column_size()"),
    # values that derive from nothing are not masked: only a column's presence may go in
    ("SELECT nullif(substr(ssn, 1, 1), '5') IS NULL FROM customers", "ssn in IS NULL"),
    ("SELECT num_nulls(nullif(substr(ssn, 1, 1), '5')) FROM customers", "ssn in num_nulls()"),
    ("SELECT (ssn LIKE '5%') IS TRUE FROM customers", "ssn in IS TRUE / IS FALSE"),
    ("WITH x AS (SELECT nullif(ssn, '1') s FROM customers) SELECT s IS NULL FROM x", "ssn in IS NULL"),
    # the argument chosen shows in the masked value's shape (greatest(ssn, '5') is '*' when
    # the SSN sorts first, '***-**-1234' otherwise): an order question, among output values too
    ("SELECT greatest(ssn, '5') FROM customers", "ssn in GREATEST"),
    ("SELECT least(email, 'm'), id FROM customers", "email in LEAST"),
    ("SELECT greatest(upper(ssn), notes) FROM customers", "ssn in GREATEST"),
    ("SELECT id FROM customers WHERE greatest(ssn, '5') = '5'", "ssn in WHERE"),
    # NULL when equal: anything but a stored value against a constant is a question
    ("SELECT nullif(ssn, notes) FROM customers", "ssn in NULLIF"),
    ("SELECT nullif(substr(ssn, 1, 1), '5') FROM customers", "ssn in NULLIF"),
    # a set-returning function among output values filters rows
    ("SELECT regexp_matches(ssn, '^5') FROM customers", "ssn in a set-returning function"),
    ("SELECT id, unnest(string_to_array(email, '@')) FROM customers", "email in a set-returning function"),
    ("SELECT (SELECT count(*) FROM customers c WHERE c.ssn LIKE '5%')", "ssn in WHERE"),
    (
        "SELECT o.id FROM orders o WHERE EXISTS (SELECT 1 FROM customers c WHERE c.ssn LIKE '5%' AND c.id = o.customer_id)",
        "ssn in WHERE",
    ),
    (
        "SELECT o.id FROM orders o WHERE o.customer_id IN (SELECT c.id FROM customers c WHERE c.email LIKE 'a%')",
        "email in WHERE",
    ),
    (
        "WITH x AS (SELECT id, ssn AS s FROM customers) SELECT id FROM x WHERE s LIKE '5%'",
        "ssn in WHERE",
    ),
    (
        "WITH x AS (SELECT substr(ssn, 1, 1) AS s FROM customers) SELECT 1 FROM x WHERE s = '5'",
        "ssn in WHERE",
    ),
    (
        "WITH x AS (SELECT ssn::varchar(1) AS s FROM customers) SELECT 1 FROM x WHERE s = '5'",
        "ssn in WHERE",
    ),
    (
        "WITH x AS (SELECT count(DISTINCT email) n FROM customers) SELECT n FROM x",
        "email in an aggregate",
    ),
    (
        "WITH RECURSIVE r(s) AS (SELECT ssn FROM customers UNION ALL SELECT s FROM r WHERE false) SELECT 1 FROM r WHERE s LIKE '5%'",
        "ssn in WHERE",
    ),
    ("SELECT mail FROM v_contacts WHERE mail LIKE 'a%'", "email in WHERE"),
    ("SELECT x FROM v_nested WHERE x = 'A'", "email in WHERE"),
    ("UPDATE customers SET notes = 'x' WHERE ssn LIKE '5%'", "ssn in WHERE"),
    ("UPDATE customers SET email = lower(email) WHERE email LIKE '%@X'", "email in WHERE"),
    (
        "UPDATE customers c SET notes = 'x' FROM orders o WHERE o.customer_id = c.id AND c.ssn > '5'",
        "ssn in WHERE",
    ),
    ("DELETE FROM customers WHERE email LIKE 'a%' RETURNING id", "email in WHERE"),
    ("DELETE FROM customers USING orders o WHERE substr(ssn, 1, 1) = '5'", "ssn in WHERE"),
    (
        "WITH d AS (DELETE FROM customers WHERE ssn LIKE '5%' RETURNING id) SELECT count(*) FROM d",
        "ssn in WHERE",
    ),
    ("INSERT INTO orders (id) SELECT id FROM customers WHERE ssn LIKE '5%'", "ssn in WHERE"),
    (
        "MERGE INTO customers c USING orders o ON c.ssn LIKE '5%' WHEN MATCHED THEN DO NOTHING",
        "ssn in MERGE ... ON",
    ),
    ("COPY (SELECT id FROM customers WHERE ssn LIKE '5%') TO STDOUT", "ssn in WHERE"),
    ("CREATE TABLE t AS SELECT id FROM customers WHERE ssn LIKE '5%'", "ssn in WHERE"),
    ("EXPLAIN ANALYZE SELECT * FROM customers WHERE ssn LIKE '5%'", "ssn in WHERE"),
    ("PREPARE p AS SELECT id FROM customers ORDER BY ssn", "ssn in ORDER BY"),
    ("DECLARE c CURSOR FOR SELECT id FROM customers WHERE email LIKE 'a%'", "email in WHERE"),
    ("SELECT id FROM customers WHERE get_email(id) LIKE 'a%'", "email in WHERE"),
    ("SELECT id FROM orders ORDER BY ret_email()", "email in ORDER BY"),
    ("SELECT id FROM all_customers() a WHERE a.email > 'm'", "email in WHERE"),
]


@pytest.mark.parametrize(("sql", "expected"), PROBES)
def test_inference_is_refused(sql: str, expected: str) -> None:
    assert verdict(sql, "equality") == expected
    assert verdict(sql, "deny") is not None
    assert verdict(sql, "allow") is None


def test_deny_refuses_even_lookups_and_presence() -> None:
    assert verdict("SELECT id FROM customers WHERE email = 'x'", "deny") == "email in WHERE"
    assert verdict("SELECT id FROM customers WHERE ssn IS NULL", "deny") == "ssn in WHERE"
    assert verdict("SELECT count(ssn) FROM customers", "deny") == "ssn in an aggregate"
    assert verdict("SELECT ssn IS NULL FROM customers", "deny") == "ssn in IS NULL"
    assert verdict("SELECT nullif(ssn, '1') FROM customers", "deny") == "ssn in NULLIF"
    # output values, masked, are always fine
    assert verdict("SELECT id, email, upper(ssn), ssn = 'x' FROM customers", "deny") is None
    assert verdict("SELECT id FROM customers WHERE id = 1 AND notes LIKE 'x%'", "deny") is None
    assert verdict("SELECT count(*) FROM customers", "deny") is None


def test_shapes_are_recorded() -> None:
    assert uses(
        "SELECT id FROM customers WHERE email = $1 AND ssn LIKE 'x' AND phone IS NULL AND id > 3"
    ) == {
        ("customers.email", "WHERE", "equality"),
        ("customers.ssn", "WHERE", "other"),
        ("customers.phone", "WHERE", "presence"),
        ("customers.id", "WHERE", "other"),
    }
    # a view's own predicates are its owner's business; its masked outputs are not
    assert uses("SELECT who FROM v_contacts") == set()
    assert uses("SELECT get_email(1)") == set()
    # a SQL function's argument used in a predicate counts where it is used
    assert ("customers.email", "WHERE", "other") in uses(
        "SELECT id FROM customers WHERE plus_one(length(email)) > 3"
    )


def test_messages() -> None:
    (lin,) = analyze_lineage("SELECT id FROM customers ORDER BY ssn", CATALOG)
    use = violation([lin], CLASSMAP, "equality")
    assert use is not None
    assert refusal_message(use, "equality") == (
        "masked column public.customers.ssn may not be used in ORDER BY (masking.predicates = equality)"
    )
    assert permitted(PredicateUse(use.column, "WHERE", "equality"), "equality")
    assert not permitted(PredicateUse(use.column, "ORDER BY", "equality"), "equality")
    assert permitted(PredicateUse(use.column, "OVER (ORDER BY)", "presence"), "equality")


# -- the setting ---------------------------------------------------------------------------


def test_modes_by_kind_group_and_environment() -> None:
    default = MaskingConfig().predicates
    assert default.mode_for("human", [], "production", True) == "equality"
    assert default.mode_for("agent", [], "production", True) == "deny"
    assert default.mode_for("human", [], "staging", False) == "allow"
    assert default.mode_for("agent", [], "development", False) == "allow"
    one = MaskingConfig.model_validate({"predicates": "deny"}).predicates
    assert one.mode_for("human", [], "staging", False) == "deny"
    custom = MaskingConfig.model_validate(
        {
            "predicates": {
                "agent": "equality",
                "groups": {"support": "allow", "auditors": "deny"},
                "environments": ["prod*", "staging"],
            }
        }
    ).predicates
    assert custom.mode_for("agent", [], "production", True) == "equality"
    assert custom.mode_for("human", ["auditors"], "staging", False) == "deny"
    assert custom.mode_for("human", ["auditors", "support"], "staging", False) == "allow"
    assert custom.mode_for("human", [], "development", False) == "allow"
    with pytest.raises(ValueError):
        MaskingConfig.model_validate({"predicates": "sometimes"})


# -- data classes for the policy -----------------------------------------------------------


def classes(sql: str) -> list[StatementClasses]:
    facts = analyze(sql)
    return list(
        statement_classes(
            sql, [(f.tables_read, f.tables_written) for f in facts], CATALOG, CLASSMAP
        )
    )


def test_data_classes_read_and_written() -> None:
    assert classes("SELECT id, email FROM customers") == [StatementClasses(frozenset({"email"}))]
    assert classes("SELECT id FROM customers WHERE ssn = '1'") == [
        StatementClasses(frozenset({"national_id"}))
    ]
    assert classes("SELECT id, notes FROM customers") == [StatementClasses()]
    assert classes("COPY (SELECT card_number FROM customers) TO STDOUT")[0].reads == {
        "payment_card"
    }
    assert classes("COPY customers TO STDOUT")[0].reads >= {"payment_card", "national_id", "email"}
    assert classes("UPDATE customers SET email = $1 WHERE id = 1") == [
        StatementClasses(frozenset(), frozenset({"email"}))
    ]
    assert classes("INSERT INTO customers (id, ssn) VALUES (1, $1)")[0].writes == {"national_id"}
    assert classes("DELETE FROM customers WHERE id = 1")[0].writes >= {
        "national_id",
        "payment_card",
    }
    assert classes("COPY customers (id, card_number) FROM STDIN")[0].writes == {"payment_card"}
    assert classes("INSERT INTO orders (id) SELECT length(ssn) FROM customers")[0].reads == {
        "national_id"
    }
    assert classes("SELECT mail FROM v_contacts")[0].reads == {"email"}
    one, two = classes("SELECT 1; SELECT ssn FROM customers")
    assert one == StatementClasses() and two.reads == {"national_id"}
    # PL/pgSQL may read anything
    assert "payment_card" in classes("SELECT plpg(1)")[0].reads


POLICY = """
version: 1
rules:
  - name: agents-no-national-ids
    match: {kind: agent, data_classes: [national_id]}
    action: deny
  - name: card-exports
    match: {commands: [COPY], data_classes: [payment_card]}
    action: require_approval
    approvers: [dpo]
  - name: no-card-writes
    match: {writes_data_classes: [payment_card]}
    unless: {groups: [billing]}
    action: deny
  - name: emails-only
    match: {groups: [marketing], data_classes: [email]}
    action: allow
"""


def _decide(sql: str, kind: str = "human", groups: tuple[str, ...] = ("eng",)) -> str:
    pol = parse_policy(POLICY)
    ident = Identity(name="x", groups=frozenset(groups), kind=kind, token_id="t", source="token")  # type: ignore[arg-type]
    (facts,) = analyze(sql)
    (c,) = classes(sql)
    ctx = EvalContext(ident, "prod", "staging", datetime.now(UTC), c.reads, c.writes)
    return evaluate(pol, facts, ctx).action


def test_policy_matches_data_classes() -> None:
    assert _decide("SELECT ssn FROM customers", "agent") == "deny"
    assert _decide("SELECT id FROM customers WHERE ssn = '1'", "agent") == "deny"
    assert _decide("SELECT email FROM customers", "agent") == "allow"
    assert _decide("SELECT ssn FROM customers") == "allow"
    assert _decide("COPY (SELECT card_number FROM customers) TO STDOUT") == "require_approval"
    assert _decide("COPY (SELECT id FROM customers) TO STDOUT") == "allow"
    assert _decide("SELECT card_number FROM customers") == "allow"
    assert _decide("UPDATE customers SET card_number = $1 WHERE id = 1") == "deny"
    assert (
        _decide("UPDATE customers SET card_number = $1 WHERE id = 1", groups=("billing",))
        == "allow"
    )
    assert parse_policy(POLICY).uses_data_classes


def test_unknown_data_class_names_are_errors() -> None:
    with pytest.raises(Exception, match="data_classes"):
        parse_policy("rules:\n  - name: a\n    action: deny\n    match: {data_classes: [ssn]}\n")
