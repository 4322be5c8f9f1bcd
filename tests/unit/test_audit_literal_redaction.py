"""The literal finder (masking/literals.py) and the audit redactor (audit/redaction.py)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from pglast import parser

from dbsentry.audit import StatementRecord
from dbsentry.audit.config import AuditConfig
from dbsentry.audit.redaction import (
    TOKEN_RE,
    LiteralRedactor,
    load_or_create_redaction_key,
    redactor_from_config,
)
from dbsentry.audit.store import SearchFilter, filter_clauses
from dbsentry.engines.postgres.masking.literals import POSTGRES_LITERALS, find_literal_meets
from dbsentry.masking import Catalog, classify_catalog
from dbsentry.masking.classes import DataClass
from support.leaks import Secrets

# A comment's pii:none no longer declassifies a column; only the policy's overrides do.
_OVERRIDES = {"customers.full_name": "none"}
KEY = b"k" * 32


def _catalog() -> Catalog:
    # (oid, schema, name, kind, attnum, column, type oid, type name, typmod, comment)
    rows = []
    cols = [
        ("id", 23, "integer", None),
        ("email", 25, "text", None),
        ("card_number", 25, "text", None),
        ("ssn", 25, "text", None),
        ("nickname", 25, "text", "pii:person_name"),
        ("status", 25, "text", None),
        ("c1", 25, "text", None),
        ("full_name", 25, "text", "pii:none"),
    ]
    for i, (name, toid, tname, comment) in enumerate(cols, 1):
        rows.append((1000, "public", "customers", "r", i, name, toid, tname, -1, comment))
    return Catalog.from_rows(rows, [])


def _meets(sql: str) -> dict[str, DataClass | None]:
    cat = _catalog()
    m = find_literal_meets(sql, cat, classify_catalog(cat, _OVERRIDES), ("public",))
    out: dict[str, DataClass | None] = {}
    for pos, cls in m.literals.items():
        out[m.values[pos]] = cls
    for n, cls in m.params.items():
        out[f"${n}"] = cls
    return out


def test_catalog_fixture() -> None:
    cm = classify_catalog(_catalog(), _OVERRIDES)
    assert {s.column for s in cm.columns} == {"email", "card_number", "ssn", "nickname"}


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        (
            "SELECT id FROM customers WHERE email = 'a@b.io' AND id = 42 AND status = 'open'",
            {"a@b.io": DataClass.EMAIL},
        ),
        (
            "SELECT id FROM customers c WHERE c.email IN ('x', $2) OR lower(c.ssn) LIKE $1",
            {"x": DataClass.EMAIL, "$2": DataClass.EMAIL, "$1": DataClass.NATIONAL_ID},
        ),
        (
            "INSERT INTO customers (email, card_number, status) VALUES ($1, $2, $3), ('q', 'w', 'e')",
            {"$1": DataClass.EMAIL, "$2": DataClass.PAYMENT_CARD, "q": DataClass.EMAIL, "w": DataClass.PAYMENT_CARD},
        ),
        (  # no column list: the catalog's order
            "INSERT INTO customers VALUES (1, 'e', 'c', 's', 'n', 'x', 'open', 'f')",
            {"e": DataClass.EMAIL, "c": DataClass.PAYMENT_CARD, "s": DataClass.NATIONAL_ID, "n": DataClass.PERSON_NAME},
        ),
        (
            "UPDATE customers SET ssn = '1', nickname = upper($1), status = 'x' WHERE id = 1",
            {"1": DataClass.NATIONAL_ID, "$1": DataClass.PERSON_NAME},
        ),
        (
            "UPDATE customers SET (status, email) = ('open', 'z@z.io')",
            {"z@z.io": DataClass.EMAIL},
        ),
        (
            "INSERT INTO customers (email) SELECT 'u' UNION ALL SELECT $4 "
            "ON CONFLICT (id) DO UPDATE SET card_number = '9'",
            {"u": DataClass.EMAIL, "$4": DataClass.EMAIL, "9": DataClass.PAYMENT_CARD},
        ),
        (
            "MERGE INTO customers c USING (SELECT 1 AS id) s ON c.id = s.id "
            "WHEN MATCHED THEN UPDATE SET email = 'm' "
            "WHEN NOT MATCHED THEN INSERT (id, ssn) VALUES (5, 'n')",
            {"m": DataClass.EMAIL, "n": DataClass.NATIONAL_ID},
        ),
        (  # the policy says it is not sensitive: full_name stays
            "SELECT 1 FROM customers WHERE full_name = 'Ada' AND nickname = 'Grace'",
            {"Grace": DataClass.PERSON_NAME},
        ),
        (  # not in the catalog: the column's name decides
            "WITH x AS (SELECT 1) SELECT 1 FROM other_table WHERE phone = '12' AND kind = 'k'",
            {"12": DataClass.PHONE},
        ),
        ("SELECT 1 FROM customers WHERE email IN (SELECT 'sub')", {"sub": DataClass.EMAIL}),
        ("SELECT CASE email WHEN 'w' THEN 1 END FROM customers", {"w": DataClass.EMAIL}),
        ("SELECT strpos(email, 'needle'), substr(ssn, 1, 3) FROM customers", {"needle": DataClass.EMAIL}),
        ("SELECT 1 FROM customers WHERE email = -7", {"-7": DataClass.EMAIL}),
        ("EXECUTE q('a', 42)", {"a": None, "42": None}),
        (  # an INSERT in a CTE, no column list: the catalog's order, as at the top
            "WITH x AS (INSERT INTO customers VALUES (1, 'e', 'c') RETURNING id) SELECT 1 FROM x",
            {"e": DataClass.EMAIL, "c": DataClass.PAYMENT_CARD},
        ),
        (  # a column list naming nothing sensitive, beside one without a list
            "WITH x AS (INSERT INTO customers (status) VALUES ('s') RETURNING id) INSERT INTO customers VALUES (2, 'e2')",
            {"e2": DataClass.EMAIL},
        ),
        ("INSERT INTO customers (id, status) VALUES (7, 'open')", {}),
        ("SELECT status FROM customers WHERE id = 42 AND status = 'open'", {}),
    ],
)
def test_literal_meets(sql: str, expected: dict[str, DataClass | None]) -> None:
    assert _meets(sql) == expected


def test_an_insert_that_names_its_columns_is_redacted_by_its_values_alone() -> None:
    """pgbench's INSERT: no column it names is sensitive, so each constant is redacted by
    its value alone (a shape's texts then need no walk of their own); without a column list
    the table's columns count, which the text does not name."""
    from dbsentry.engines.postgres.masking.literals import meets_values_only

    cm = classify_catalog(_catalog(), _OVERRIDES)
    assert meets_values_only("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (5, 1, 4, -3, CURRENT_TIMESTAMP)", cm)
    assert meets_values_only("INSERT INTO customers (id, status) VALUES (7, 'open')", cm)
    assert not meets_values_only("INSERT INTO customers (id, email) VALUES (7, 'x')", cm)
    assert not meets_values_only("INSERT INTO customers VALUES (7, 'x')", cm)
    assert not meets_values_only("WITH x AS (INSERT INTO customers VALUES (1, 'e') RETURNING id) SELECT 1 FROM x", cm)


def test_values_that_meet_a_column_through_a_whole_row_or_a_cte() -> None:
    """An attacker's literals reached the audit in clear: a JSON document compared with a
    whole row, and a CTE's VALUES compared with a classified column through its name."""
    assert set(_meets("SELECT id FROM customers c WHERE to_jsonb(c) @> '{\"email\": \"j@k.io\"}'")) == {
        '{"email": "j@k.io"}'
    }
    assert set(_meets("SELECT id FROM customers c WHERE c.* = ROW(1, 'x')")) == {"1", "x"}
    assert _meets("WITH v(n) AS (VALUES ('y@z.io')) SELECT id FROM customers c, v WHERE c.email = v.n") == {
        "y@z.io": DataClass.EMAIL
    }
    assert _meets("SELECT c.id FROM customers c, (VALUES ($1)) v(n) WHERE v.n = c.ssn") == {
        "$1": DataClass.NATIONAL_ID
    }
    assert set(_meets(  # through a chain of CTEs, and an unqualified column (coarsely)
        "WITH a AS (VALUES ('q@r.io')), b AS (SELECT * FROM a) SELECT 1 FROM customers c, b WHERE email = column1"
    )) == {"q@r.io"}
    # a CTE of a classified column compared by its own name
    assert _meets("WITH v(m) AS (SELECT email FROM customers) SELECT 1 FROM v WHERE m = 'w@x.io'") == {
        "w@x.io": DataClass.EMAIL
    }
    # stored into one through a CTE or a subquery in FROM
    assert _meets("WITH v(n) AS (VALUES ('i@j.io')) INSERT INTO customers (email) SELECT n FROM v") == {
        "i@j.io": DataClass.EMAIL
    }
    assert _meets("UPDATE customers c SET ssn = v.n FROM (VALUES ('u')) v(n) WHERE c.id = 1") == {
        "u": DataClass.NATIONAL_ID
    }
    # a scalar or ARRAY subquery that selects the value
    assert _meets("SELECT id FROM customers WHERE email = (SELECT (SELECT 'a@b.io'))") == {"a@b.io": DataClass.EMAIL}
    assert _meets("SELECT id FROM customers WHERE ssn = (VALUES ($3))") == {"$3": DataClass.NATIONAL_ID}
    assert _meets("SELECT id FROM customers WHERE email = ANY(ARRAY(SELECT 'c@d.io'))") == {"c@d.io": DataClass.EMAIL}
    # what meets no classified column stays
    assert _meets("WITH v(n) AS (VALUES ('open')) SELECT id FROM customers c, v WHERE c.status = v.n") == {}
    assert _meets("SELECT c.id FROM customers c WHERE c.id = 4") == {}


def test_many_ctes_and_comparisons_are_followed_once_each() -> None:
    """Each derived relation is judged and marked once per statement: 300 CTEs that each
    select every column of the ones before, compared 300 times, would otherwise take
    exponential time."""
    ctes = ", ".join(
        f"a{i} AS (SELECT * FROM a0, a1, a2, a3)" if i > 3 else f"a{i} AS (VALUES ('v{i}'))" for i in range(300)
    )
    sql = f"WITH {ctes} SELECT 1 FROM customers c, a299 WHERE " + " AND ".join(
        f"c.email = a{i}.column1" for i in range(300)
    )
    assert set(_meets(sql)) == {"v0", "v1", "v2", "v3"}


def test_offsets_are_characters_and_unparsable_is_unknown() -> None:
    sql = "SELECT 'é' FROM customers WHERE email = 'ä@b.io'"
    m = find_literal_meets(sql, _catalog(), classify_catalog(_catalog(), _OVERRIDES))
    (pos,) = m.literals
    assert sql[pos:].startswith("'ä@b.io'")
    assert not find_literal_meets("SELEC 1").parsed


# -- tokens --------------------------------------------------------------------------------


def _redactor() -> LiteralRedactor:
    cat = _catalog()
    cm = classify_catalog(cat, _OVERRIDES)

    class View:
        catalog = cat
        classmap = cm
        version = 1

    return LiteralRedactor(KEY, views=lambda _c: View(), literals=POSTGRES_LITERALS)


def test_tokens_are_keyed_and_deterministic() -> None:
    r = _redactor()
    t = r.token("ada@example.com", DataClass.EMAIL)
    m = TOKEN_RE.fullmatch(t)
    assert m and m.group(1) == "email"
    assert t == r.token("ada@example.com", DataClass.EMAIL)
    assert r.digest("ada@example.com") != LiteralRedactor(b"j" * 32).digest("ada@example.com")
    assert r.digest("ada@example.com") != r.digest("ada@example.co")
    assert r.token("x", None).startswith("<value:hmac:")


def test_statement_and_params() -> None:
    r = _redactor()
    out = r.redact(
        "SELECT * FROM customers WHERE email = 'ada@example.com' AND id = 42 AND status = 'open'",
        connection="prod",
    )
    digest = r.digest("ada@example.com")
    assert out.text == (
        f"SELECT * FROM customers WHERE email = '<email:hmac:{digest}>' AND id = 42 AND status = 'open'"
    )
    assert out.changed
    parser.parse_sql(out.text)
    binary_email = "\\x" + b"ada@example.com".hex()
    binary_card = "\\x" + (4111111111111111).to_bytes(8, "big").hex()
    shown = r.redact(
        "INSERT INTO customers (email, card_number, status, c1) VALUES ($1, $2, $3, $4)",
        ["ada@example.com", "4111111111111111", "open", None],
        "prod",
    )
    assert shown.params == (
        f"<email:hmac:{digest}>",
        f"<payment_card:hmac:{r.digest('4111111111111111')}>",
        "open",
        None,
    )
    binary = r.redact("SELECT $1, $2, $3", [binary_email, binary_card, "\\x0000002a"], "prod")
    assert binary.params == (
        f"<email:hmac:{digest}>",
        f"<payment_card:hmac:{r.digest('4111111111111111')}>",
        "\\x0000002a",
    )


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT c1 FROM customers WHERE c1 = 4111111111111111",
        "SELECT c1 FROM customers WHERE c1 = -4111111111111111",
        "SELECT c1 FROM customers WHERE c1 = E'4111111111111111'",
        "SELECT c1 FROM customers WHERE c1 = $q$4111111111111111$q$",
        "SELECT c1 FROM customers WHERE c1 = U&'4111111111111111'",
        "SELECT 'card 4111111111111111 and ada@example.com in text'",
        "SELECT 1 /* ada@example.com */ -- 4111111111111111\n",
        "UPDATE customers SET nickname = 'Ada'\n' Lovelace'",
        "SELEC * FROM customers WHERE nickname = 'Ada Lovelace'",
        "SELECT 'é', 'ada@example.com' FROM customers WHERE ssn = '536-22-8726'",
        'SELECT 1 AS "ada@example.com", 2 AS "x""4111111111111111"',
    ],
)
def test_no_value_survives(sql: str) -> None:
    out = _redactor().redact(sql, connection="prod")
    Secrets(["4111111111111111", "ada@example.com", "Ada Lovelace", "536-22-8726"]).assert_no_leak(out.text)
    assert out.changed
    if not sql.startswith("SELEC "):
        parser.parse_sql(out.text)


def test_comment_keeps_its_shape() -> None:
    out = _redactor().redact("SELECT 1 /* for ada@example.com */", connection="prod")
    assert out.text.endswith("*/") and "<email:hmac:" in out.text
    parser.parse_sql(out.text)


def test_modes() -> None:
    r = _redactor()
    sql = "SELECT * FROM customers WHERE email = 'ada@example.com' AND id = 42"
    assert r.redact(sql, ["x"], mode="off").text == sql
    everything = r.redact(sql, ["x", None], mode="all")
    assert everything.text == "SELECT * FROM customers WHERE email = ? AND id = ?"
    assert everything.params == ("?", None)
    assert r.redact("SELECT 'unterminated", mode="sensitive").text.startswith("<statement redacted")


def test_free_text_and_correlation() -> None:
    r = _redactor()
    err = r.text('invalid input syntax for type integer: "4111111111111111"')
    assert "4111111111111111" not in err and "<payment_card:hmac:" in err
    corr = r.correlation({"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01", "user": "ada@example.com"})
    assert corr["traceparent"].startswith("00-aaaa") and corr["user"].startswith("<email:hmac:")


def test_statement_record_default_is_sensitive() -> None:
    r = _redactor()
    rec = StatementRecord.create(
        sql="SELECT * FROM customers WHERE email = $1 /* traceparent='00-" + "a" * 32 + "-" + "b" * 16 + "-01' */",
        params=["ada@example.com"],
        redact=AuditConfig().redact_literals,
        redactor=r,
        session_id="s",
        identity="alice",
        identity_kind="human",
        decision="allow",
        connection="prod",
    )
    assert rec.params == (f"<email:hmac:{r.digest('ada@example.com')}>",)
    assert rec.statement_redacted
    assert rec.correlation["trace_id"] == "a" * 32
    plain = StatementRecord.create(
        sql="SELECT 1 WHERE 'open' = $1", params=["open"], redact="sensitive", redactor=r,
        session_id="s", identity="alice", identity_kind="human", decision="allow",
    )  # fmt: skip
    assert plain.statement == "SELECT 1 WHERE 'open' = $1" and plain.params == ("open",)
    assert not plain.statement_redacted


def test_key_file_and_config(tmp_path: Path) -> None:
    path = tmp_path / "state" / "audit_redaction.key"
    key = load_or_create_redaction_key(path)
    assert len(key) == 32 and load_or_create_redaction_key(path) == key
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    cfg = AuditConfig()
    assert cfg.redact_literals == "sensitive"
    r = redactor_from_config(cfg, tmp_path / "state")
    assert r.mode == "sensitive" and r.digest("x") == LiteralRedactor(key).digest("x")
    assert redactor_from_config(AuditConfig(redact_literals=True), tmp_path / "state").mode == "all"
    assert AuditConfig(redact_literals=False).redact_literals is False
    with pytest.raises(ValueError):
        AuditConfig(redact_literals="maybe")  # type: ignore[arg-type]


def test_search_filter_by_digest() -> None:
    where, params = filter_clauses(SearchFilter(digests=("0123456789ab",)), "?")
    assert where[-1] == "(s.payload LIKE ?)" and params == ["%:hmac:0123456789ab>%"]
    r = _redactor()
    assert r.search_digests(" x ") == (r.digest(" x "), r.digest("x"))


def test_a_tree_too_deep_to_read_redacts_every_constant() -> None:
    """2,001 NOTs parse, but their JSON tree is nested too deep to load: the finder does
    not raise, and says it could not read the statement (every constant is then redacted)."""
    meets = find_literal_meets("select " + "not " * 2001 + "true and 'ada@example.com' = 'x'")
    assert not meets.parsed


@pytest.mark.parametrize(
    "written",
    ["4111111111111111.0", "04111111111111111", "4111111111111111.000", "4.111111111111111e15", "-0004111111111111111.0"],
)
def test_a_card_number_written_as_another_number_is_still_a_card(written: str) -> None:
    """Found by an attack round: the value detection saw the text of a number, so a card
    number written with a zero fraction, leading zeros or an exponent went into the audit
    trail in clear."""
    from dbsentry.audit.redaction import detect_constant

    assert detect_constant(written) == DataClass.PAYMENT_CARD
    assert detect_constant("4111111111111111.5") is None  # not the same integer
    assert detect_constant("1234567.0") is None
