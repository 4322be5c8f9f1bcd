"""MySQL masking against a real MariaDB/MySQL server: the catalog and value samples read
from ``information_schema`` (engines/mysql/catalog.py), classified; real SELECTs run over
PyMySQL's connection as raw packets, read with the engines/mysql/wire codec, their text
and binary (COM_STMT_PREPARE/EXECUTE) rows masked by engines/mysql/masking; no PII value
survives, and every column nothing masks comes back byte for byte.

Needs the server on 127.0.0.1:3306 (root, empty password); skipped with the reason when
it is not there.  Works in a database of its own, dropped afterwards.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from dbsentry.engines.mysql.catalog import fetch_catalog, fetch_samples
from dbsentry.engines.mysql.masking import MysqlMaskPlan, MysqlRowMasker, Refusal, plan_for
from dbsentry.engines.mysql.wire import results as res
from dbsentry.masking.catalog import Catalog, ClassMap, SourceColumn, classify_catalog
from dbsentry.masking.classes import DataClass

HOST, PORT = "127.0.0.1", 3306
DB = f"dbsentry_masking_e2e_{os.getpid()}"  # its own, so that runs side by side do not meet


def _server_reason() -> str | None:
    try:
        with socket.create_connection((HOST, PORT), timeout=2) as s:
            s.settimeout(2)
            first = s.recv(4)
    except OSError as exc:
        return f"no MariaDB/MySQL server on {HOST}:{PORT} ({exc}); the masking e2e test needs one (root, empty password)"
    if len(first) < 4:
        return f"the server on {HOST}:{PORT} sent no MySQL greeting"
    return None


_REASON = _server_reason()
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]

pymysql = pytest.importorskip("pymysql")
from pymysql.constants import COMMAND  # noqa: E402

PEOPLE = [
    (1, "ada@example.com", "123-45-6789", "+44 20 7946 0958", "ada@example.com", "Ada Lovelace", "London", 4539148803436467),
    (2, "bob@example.org", "234-56-7890", "+1 415 555 0132", "bob@example.org", "Bob Smith", "Paris", 4111111111111111),
    (3, "cy@example.net", "345-67-8901", "+33 1 23 45 67 89", "cy@example.net", "Cy Young", "Rome", 5500000000000004),
]
PII = [v for row in PEOPLE for v in (row[1], row[2], row[3], row[5], str(row[7]))]

SETUP = [
    f"DROP DATABASE IF EXISTS {DB}",
    f"CREATE DATABASE {DB} CHARACTER SET utf8mb4",
    f"""CREATE TABLE {DB}.people (
        id INT PRIMARY KEY, email VARCHAR(100), ssn CHAR(11), phone VARCHAR(30),
        contact VARCHAR(100), notes VARCHAR(100) COMMENT 'pii:person_name', city VARCHAR(50),
        card BIGINT, born DATE, verified TINYINT(1)) COMMENT 'customers'""",
    f"""CREATE TABLE {DB}.orders (id INT PRIMARY KEY, person_id INT, total DECIMAL(10,2),
        memo TEXT)""",
    f"""CREATE VIEW {DB}.contacts AS SELECT id, UPPER(contact) AS c, CONCAT(email, '!') AS e,
        city FROM {DB}.people""",
]


def _sql_rows() -> list[str]:
    out = []
    for i, e, ssn, ph, contact, notes, city, card in PEOPLE:
        out.append(
            f"INSERT INTO {DB}.people VALUES ({i}, '{e}', '{ssn}', '{ph}', '{contact}', '{notes}',"
            f" '{city}', {card}, '1980-0{i}-1{i}', {i % 2})"
        )
        memo = f"order {i} of {city}" if i != 2 else f"order {i}, call {e} back"
        out.append(f"INSERT INTO {DB}.orders VALUES ({i}, {i}, {i}0.50, '{memo}')")
    return out


@pytest.fixture(scope="module")
def conn() -> Iterator[Any]:
    c = pymysql.connect(host=HOST, port=PORT, user="root", password="", autocommit=True)
    cur = c.cursor()
    for s in [*SETUP, *_sql_rows()]:
        cur.execute(s)
    cur.execute(f"USE {DB}")
    try:
        yield c
    finally:
        cur.execute(f"DROP DATABASE IF EXISTS {DB}")
        c.close()


@pytest.fixture(scope="module")
def classified(conn: Any) -> tuple[Catalog, ClassMap]:
    cur = conn.cursor()

    async def run(sql: str) -> Sequence[Sequence[Any]]:
        cur.execute(sql)
        return list(cur.fetchall())

    async def read() -> tuple[Catalog, ClassMap]:
        catalog = await fetch_catalog(run)
        report = await fetch_samples(run, catalog)
        assert not {o for o in report.skipped if catalog.relations[o].schema == DB}
        return catalog, classify_catalog(catalog, values=report.findings)

    return asyncio.run(read())


def _text_result(conn: Any, sql: str) -> tuple[list[res.ColumnDefinition], list[bytes]]:
    conn._execute_command(COMMAND.COM_QUERY, sql)
    reader = res.ResultReader(conn.client_flag, decode_rows=False)
    rows: list[bytes] = []
    while not reader.done:
        ev = reader.feed(conn._read_packet()._data)
        if isinstance(ev, bytes):
            rows.append(ev)
    return reader.columns, rows


def _binary_result(conn: Any, sql: str) -> tuple[list[res.ColumnDefinition], list[bytes]]:
    conn._execute_command(COMMAND.COM_STMT_PREPARE, sql)
    prep = res.PrepareReader(conn.client_flag)
    while not prep.done:
        prep.feed(conn._read_packet()._data)
    assert prep.ok is not None
    conn._execute_command(COMMAND.COM_STMT_EXECUTE, struct.pack("<IBI", prep.ok.statement_id, 0, 1))
    reader = res.ResultReader(conn.client_flag, binary=True, decode_rows=False)
    rows: list[bytes] = []
    while not reader.done:
        ev = reader.feed(conn._read_packet()._data)
        if isinstance(ev, bytes):
            rows.append(ev)
    conn._execute_command(COMMAND.COM_STMT_CLOSE, struct.pack("<I", prep.ok.statement_id))
    return reader.columns, rows


def test_catalog_classifies_by_name_comment_and_value(classified: tuple[Catalog, ClassMap]) -> None:
    catalog, classmap = classified
    cls = {s.column: c.data_class for s, c in classmap.columns.items() if s.schema == DB}
    assert cls["email"] is DataClass.EMAIL  # the name
    assert cls["ssn"] is DataClass.NATIONAL_ID
    assert cls["phone"] is DataClass.PHONE
    assert cls["notes"] is DataClass.PERSON_NAME  # the comment
    assert cls["contact"] is DataClass.EMAIL  # the values
    assert cls["card"] is DataClass.PAYMENT_CARD  # the values, a BIGINT
    assert "city" not in cls and "verified" not in cls and "total" not in cls
    view = catalog.relation(DB, "contacts")
    assert view is not None and view.kind == "v" and view.definition
    assert classmap.columns[SourceColumn("mysql", "user", "Password")].data_class is DataClass.SECRET


QUERIES = [
    "SELECT * FROM people ORDER BY id",
    "SELECT p.*, o.total FROM people p JOIN orders o ON o.person_id = p.id ORDER BY p.id",
    "SELECT id, LOWER(email) AS m, SUBSTRING(ssn, 1, 7) s, CONCAT(notes, ' <', phone, '>') x, card + 0 FROM people",
    "SELECT c, e, city FROM contacts",
    "SELECT id, (SELECT email FROM people q WHERE q.id = p.id) FROM people p",
    "WITH t AS (SELECT contact AS z, card FROM people) SELECT z, card FROM t UNION ALL SELECT memo, id FROM orders",
    "SELECT COALESCE(NULL, contact), CASE WHEN id > 1 THEN notes ELSE city END, CAST(card AS CHAR) FROM people",
    "SELECT GROUP_CONCAT(email), MAX(ssn), COUNT(*) FROM people",
    "SELECT memo FROM orders",
    "SELECT UPPER(memo), id FROM orders ORDER BY id",
]


@pytest.mark.parametrize("sql", QUERIES)
@pytest.mark.parametrize("protocol", ["text", "binary"])
def test_no_pii_survives(conn: Any, classified: tuple[Catalog, ClassMap], sql: str, protocol: str) -> None:
    catalog, classmap = classified
    (plan,) = plan_for(sql, catalog, classmap, database=DB)
    assert isinstance(plan, MysqlMaskPlan), plan
    columns, rows = (_text_result if protocol == "text" else _binary_result)(conn, sql)
    assert rows
    masker = MysqlRowMasker(plan, columns, key=b"k" * 32, classmap=classmap, safety_net=True)
    types = res.column_types(columns)
    for raw in rows:
        if protocol == "text":
            before = res.decode_text_row(raw, len(columns)).values
            masked = res.decode_text_row(masker.text_row(raw), len(columns)).values
        else:
            before = res.decode_binary_row(raw, types).values  # type: ignore[assignment]
            masked = res.decode_binary_row(masker.binary_row(raw), types).values  # type: ignore[assignment]
        assert len(masked) == len(columns)
        text = " ".join(repr(v) for v in masked)
        for secret in PII:
            assert secret not in text, (sql, protocol, secret, masked)
            assert secret.split("@")[0] + "@" not in text if "@" in secret else True
        for i, (a, b) in enumerate(zip(before, masked, strict=True)):
            if masker.masks[i] is None:
                assert a == b


def test_show_processlist_texts_are_redacted(conn: Any, classified: tuple[Catalog, ClassMap]) -> None:
    """Another session's statement text, with an email in it, as SHOW FULL PROCESSLIST
    shows it: redacted whole (a name in it is nothing a value scan would find)."""
    catalog, classmap = classified
    other = pymysql.connect(host=HOST, port=PORT, user="root", password="", autocommit=True)
    worker = threading.Thread(target=lambda: other.cursor().execute("SELECT SLEEP(1), 'ada@example.com'"))
    worker.start()
    try:
        (plan,) = plan_for("SHOW FULL PROCESSLIST", catalog, classmap, database=DB)
        assert isinstance(plan, MysqlMaskPlan)
        deadline = time.monotonic() + 0.9
        while True:
            columns, rows = _text_result(conn, "SHOW FULL PROCESSLIST")
            raw = b"".join(rows)
            if b"ada@example.com" in raw or time.monotonic() > deadline:
                break
        assert b"ada@example.com" in raw
        masker = MysqlRowMasker(plan, columns)
        masked = b"".join(masker.text_row(r) for r in rows)
        assert b"ada@example.com" not in masked and b"<secret>" in masked and b"Sleep" in masked
    finally:
        worker.join()
        other.close()


def test_predicates_and_copies_are_refused(classified: tuple[Catalog, ClassMap]) -> None:
    catalog, classmap = classified
    (r,) = plan_for("SELECT id FROM people WHERE ssn LIKE '5%'", catalog, classmap, database=DB, predicates="equality")
    assert isinstance(r, Refusal) and "ssn" in r.message and "WHERE" in r.message
    (ok,) = plan_for("SELECT id FROM people WHERE email = 'ada@example.com'", catalog, classmap, database=DB, predicates="equality")
    assert isinstance(ok, MysqlMaskPlan)
    (r,) = plan_for("SELECT name_of FROM (SELECT notes AS name_of FROM people) d ORDER BY 1", catalog, classmap, database=DB, predicates="equality")
    assert isinstance(r, Refusal) and "ORDER BY" in r.message
    (r,) = plan_for("SELECT notes INTO @n FROM people LIMIT 1", catalog, classmap, database=DB)
    assert isinstance(r, Refusal) and r.rule == "masking.copy_out"
