"""Masking against a real catalog: classify and lineage on a schema created for the test,
and masked values of real result rows (text and binary) read back with psycopg's loaders.

Uses DBSENTRY_TEST_PG_DSN (default: the suite's PostgreSQL, see tests/support/pg.py); the
test schema is dropped afterwards.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

psycopg = pytest.importorskip("psycopg")

from click.testing import CliRunner  # noqa: E402
from psycopg.adapt import Transformer  # noqa: E402
from psycopg.conninfo import conninfo_to_dict  # noqa: E402
from psycopg.pq import Format  # noqa: E402

from dbsentry.engines.postgres.catalog import fetch_catalog  # noqa: E402
from dbsentry.engines.postgres.masking.lineage import analyze_lineage, plan_masks  # noqa: E402
from dbsentry.engines.postgres.masking.rows import (  # noqa: E402
    Field,
    compile_row_masker,
    decode_data_row,
    encode_data_row,
    mask_data_row,
)
from dbsentry.masking.catalog import Catalog, SourceColumn, classify_catalog  # noqa: E402
from dbsentry.masking.classes import DataClass  # noqa: E402
from dbsentry.masking.cli import classify  # noqa: E402

# The suite's PostgreSQL: the machine's on 127.0.0.1:5432, or an embedded one (tests/support/pg.py).
from support.pg import find_postgres  # noqa: E402

DSN = os.environ.get("DBSENTRY_TEST_PG_DSN") or find_postgres().dsn()
D = DataClass


def _reachable() -> str | None:
    try:
        with psycopg.connect(DSN, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as err:
        return str(err).strip()
    return None


_why = _reachable()
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(_why is not None, reason=f"PostgreSQL not reachable at {DSN!r}: {_why}"),
]

SCHEMA_SQL = """
CREATE SCHEMA {s};
CREATE DOMAIN {s}.email_address AS text;
CREATE TABLE {s}.customers (
    id serial PRIMARY KEY,
    full_name text,
    email text,
    contact {s}.email_address,
    phone varchar(32),
    ssn char(11),
    card_number text,
    notes text,
    signup_ip inet,
    email_verified boolean,
    created_at timestamptz DEFAULT now()
);
COMMENT ON COLUMN {s}.customers.notes IS 'pii:email';
CREATE TABLE {s}.orders (id serial PRIMARY KEY, customer_id int, total numeric);
INSERT INTO {s}.customers (full_name, email, contact, phone, ssn, card_number, notes, signup_ip, email_verified)
VALUES ('Ada Lovelace', 'ada@example.com', 'ada@example.org', '+1 (415) 555-0132', '123-45-6789',
        '4242 4242 4242 4242', 'reach me at ada@example.net', '192.168.1.10', true);
INSERT INTO {s}.orders (customer_id, total) VALUES (1, 10);
CREATE VIEW {s}.contacts AS SELECT id, upper(email) AS mail, phone FROM {s}.customers;
CREATE VIEW {s}.contacts2 AS SELECT mail AS m FROM {s}.contacts;
CREATE FUNCTION {s}.email_of(cid int) RETURNS text LANGUAGE sql STABLE
    AS 'SELECT email FROM {s}.customers WHERE id = cid';
CREATE FUNCTION {s}.ssn_of(cid int) RETURNS text LANGUAGE sql STABLE
    BEGIN ATOMIC SELECT ssn FROM {s}.customers WHERE id = cid; END;
CREATE FUNCTION {s}.opaque(cid int) RETURNS text LANGUAGE plpgsql STABLE
    AS $$ BEGIN RETURN (SELECT email FROM {s}.customers WHERE id = cid); END $$;
"""


@pytest.fixture(scope="module")
def schema() -> Iterator[str]:
    name = f"dbsentry_mask_t{uuid.uuid4().hex[:10]}"
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(SCHEMA_SQL.format(s=name))
    try:
        yield name
    finally:
        with psycopg.connect(DSN, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {name} CASCADE")


async def _fetch() -> Catalog:
    async with await psycopg.AsyncConnection.connect(DSN) as conn:
        return await fetch_catalog(conn)


@pytest.fixture(scope="module")
def catalog(schema: str) -> Catalog:
    return asyncio.run(_fetch())


def _src(schema: str, table: str, column: str) -> SourceColumn:
    return SourceColumn(schema, table, column)


def test_classify_against_the_catalog(schema: str, catalog: Catalog) -> None:
    cm = classify_catalog(catalog)
    got = {
        s.column: c.data_class
        for s, c in cm.columns.items()
        if s.schema == schema and s.table == "customers"
    }
    assert got == {
        "full_name": D.PERSON_NAME,
        "email": D.EMAIL,
        "contact": D.EMAIL,
        "phone": D.PHONE,
        "ssn": D.NATIONAL_ID,
        "card_number": D.PAYMENT_CARD,
        "notes": D.EMAIL,
        "signup_ip": D.IP_ADDRESS,
    }
    assert cm.columns[_src(schema, "customers", "notes")].source == "schema-comment"
    assert cm.columns[_src(schema, "customers", "contact")].source in ("schema-name", "schema-type")
    # the credential catalogs are classified too
    assert cm.columns[SourceColumn("pg_catalog", "pg_authid", "rolpassword")].data_class is D.SECRET
    overridden = classify_catalog(catalog, {f"{schema}.customers.notes": "none"})
    assert _src(schema, "customers", "notes") not in overridden.columns


def test_catalog_shape(schema: str, catalog: Catalog) -> None:
    rel = catalog.relation(schema, "customers")
    assert rel is not None and rel.kind == "r"
    by_name = {c.name: c for c in rel.columns}
    assert by_name["contact"].type_oid == 25  # the domain's base type, as RowDescription says
    assert by_name["contact"].type_name.endswith("email_address")
    assert by_name["ssn"].type_name == "character(11)" and by_name["ssn"].typmod == 15
    view = catalog.relation(schema, "contacts")
    assert view is not None and view.is_view and view.definition and "upper" in view.definition
    (fn,) = catalog.functions_named(schema, "email_of")
    assert fn.language == "sql" and fn.body and "email" in fn.body and fn.in_names == ("cid",)
    (atomic,) = catalog.functions_named(schema, "ssn_of")
    assert atomic.body and "ssn" in atomic.body
    (opaque,) = catalog.functions_named(schema, "opaque")
    assert opaque.language == "plpgsql" and opaque.body is None


BYPASSES = [
    ("SELECT email AS e FROM customers", [D.EMAIL]),
    ("SELECT c.email::varchar(5) FROM customers c", [D.EMAIL]),
    ("SELECT upper(email) || '!' FROM customers", [D.EMAIL]),
    ("SELECT md5(ssn) FROM customers", [D.NATIONAL_ID]),
    ("SELECT row_to_json(c) FROM customers c", [D.NATIONAL_ID]),
    ("SELECT to_jsonb(c.*) FROM customers c", [D.NATIONAL_ID]),
    ("SELECT json_agg(c) FROM customers c", [D.NATIONAL_ID]),
    ("SELECT string_agg(phone, ',') FROM customers", [D.PHONE]),
    ("SELECT array_agg(card_number) FROM customers", [D.PAYMENT_CARD]),
    ("SELECT id FROM orders UNION SELECT 1 ORDER BY 1", [None]),
    ("SELECT 'x' UNION SELECT email FROM customers", [D.EMAIL]),
    ("SELECT x FROM (SELECT ssn AS x FROM customers) s", [D.NATIONAL_ID]),
    ("WITH t AS (SELECT card_number FROM customers) SELECT * FROM t", [D.PAYMENT_CARD]),
    ("SELECT mail, phone FROM contacts", [D.EMAIL, D.PHONE]),
    ("SELECT m FROM contacts2", [D.EMAIL]),
    ("SELECT email_of(1)", [D.EMAIL]),
    ("SELECT ssn_of(1)", [D.NATIONAL_ID]),
    (
        "SELECT o.total, (SELECT email FROM customers c WHERE c.id = o.customer_id) FROM orders o",
        [None, D.EMAIL],
    ),
]


@pytest.mark.parametrize(("sql", "expected"), BYPASSES)
def test_lineage_against_the_catalog(
    schema: str, catalog: Catalog, sql: str, expected: list[DataClass | None]
) -> None:
    cm = classify_catalog(catalog)
    (lin,) = analyze_lineage(sql, catalog, search_path=(schema,))
    plan = plan_masks(lin, cm)
    assert [m.data_class if m else None for m in plan.columns] == expected
    # the statement really runs, with as many columns as lineage says
    with psycopg.connect(DSN) as conn:
        conn.execute(f"SET search_path = {schema}")
        cur = conn.execute(sql)
        assert cur.description is not None and len(cur.description) == len(lin.columns)


def test_star_matches_the_server(schema: str, catalog: Catalog) -> None:
    sql = "SELECT * FROM customers c JOIN orders o ON o.customer_id = c.id"
    (lin,) = analyze_lineage(sql, catalog, search_path=(schema,))
    with psycopg.connect(DSN) as conn:
        conn.execute(f"SET search_path = {schema}")
        cur = conn.execute(sql)
        assert cur.description is not None
        assert [d.name for d in cur.description] == [c.name for c in lin.columns]


def test_opaque_function_is_unresolved(schema: str, catalog: Catalog) -> None:
    (lin,) = analyze_lineage("SELECT opaque(1)", catalog, search_path=(schema,))
    plan = plan_masks(lin, classify_catalog(catalog))
    assert plan.columns[0] is not None and plan.columns[0].strategy == "detect"


@pytest.mark.parametrize("binary", [False, True])
def test_masking_real_rows(schema: str, catalog: Catalog, binary: bool) -> None:
    """Masks rows as the server sends them and loads them back as a client would."""
    sql = "SELECT id, email, ssn, row_to_json(c)::jsonb AS j, c.card_number::bytea AS b, signup_ip, notes, opaque(id) FROM customers c"
    cm = classify_catalog(catalog)
    (lin,) = analyze_lineage(sql, catalog, search_path=(schema,))
    plan = plan_masks(lin, cm)
    with psycopg.connect(DSN) as conn:
        conn.execute(f"SET search_path = {schema}")
        cur = conn.cursor(binary=binary)
        cur.execute(sql)
        res = cur.pgresult
        assert res is not None
        fields = [
            Field(
                res.fname(i).decode(),
                res.ftable(i),
                res.ftablecol(i),
                res.ftype(i),
                res.fsize(i),
                res.fmod(i),
                res.fformat(i),
            )
            for i in range(res.nfields)
        ]
        raw = [res.get_value(0, i) for i in range(res.nfields)]
    masker = compile_row_masker(plan, fields, key=b"k", classmap=cm)
    assert masker is not None
    masked = decode_data_row(mask_data_row(encode_data_row(raw), masker))
    tx = Transformer()
    fmt = Format.BINARY if binary else Format.TEXT
    values = [
        None if v is None else tx.get_loader(f.type_oid, fmt).load(v)
        for v, f in zip(masked, fields, strict=True)
    ]
    id_, email, ssn, j, b, ip, notes, opaque = values
    assert id_ == 1
    assert email == "****@example.com"
    assert ssn == "***-**-6789" and len(ssn) == 11  # char(11) keeps its length
    assert j == "<national_id>"
    assert isinstance(b, bytes) and b"4242" not in b
    assert str(ip) == "192.168.0.0"  # inet: the network half (partial), in both formats
    assert notes == "<email>" or (isinstance(notes, str) and "ada@" not in notes)
    assert opaque == "****@example.com"  # value detection on the unresolved column
    assert orjson.dumps(j)


def test_cli_classify(schema: str, tmp_path: Path) -> None:
    params = conninfo_to_dict(DSN)
    config = tmp_path / "dbsentry.yaml"
    config.write_text(
        "connections:\n"
        "  main:\n"
        f"    host: {params.get('host', '127.0.0.1')}\n"
        f"    port: {params.get('port', 5432)}\n"
        f"    database: {params.get('dbname', 'test')}\n"
        f"    user: {params.get('user', 'postgres')}\n"
    )
    runner = CliRunner()
    result = runner.invoke(classify, ["-c", str(config), "--connection", "main", "--json"])
    assert result.exit_code == 0, result.output
    rows = [orjson.loads(line) for line in result.output.splitlines()]
    mine = {(r["column"], r["class"]) for r in rows if r["table"] == f"{schema}.customers"}
    assert ("email", "email") in mine and ("ssn", "national_id") in mine
    table = runner.invoke(classify, ["-c", str(config), "--connection", "main"])
    assert (
        table.exit_code == 0
        and "EVIDENCE" in table.output
        and f"{schema}.customers" in table.output
    )
    missing = runner.invoke(classify, ["-c", str(config), "--connection", "nope"])
    assert missing.exit_code == 2 and "no connection named" in missing.output
