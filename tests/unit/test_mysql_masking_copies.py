"""What MySQL writes copy from classified columns: the columns they store the values in
inherit the class (engines/mysql/masking/copies.py, lineage_of_write)."""

from __future__ import annotations

import pytest
from tests.unit.test_mysql_masking_lineage import CATALOG, CLASSMAP

from dbsentry.engines.mysql.masking import copies_of
from dbsentry.engines.mysql.masking.lineage import LineageError, lineage_of_write
from dbsentry.engines.mysql.sql.facts import parse_writes
from dbsentry.masking.catalog import SourceColumn
from dbsentry.masking.classes import DataClass


def S(table: str, column: str, schema: str = "app") -> SourceColumn:
    return SourceColumn(schema, table, column)


def copies(sql: str, database: str | None = "app") -> dict[SourceColumn, DataClass]:
    found = copies_of(sql, CATALOG, CLASSMAP, database)
    assert found is not None and len(found) == 1 and found[0] is not None
    return {k: v.data_class for k, v in found[0].items()}


NAME, EMAIL, NID, SECRET = DataClass.PERSON_NAME, DataClass.EMAIL, DataClass.NATIONAL_ID, DataClass.SECRET

COPIES = [
    # CREATE TABLE ... AS SELECT: a new table, each query column by its name; notes is a
    # person name by its comment only (no value detection would find the copy)
    ("CREATE TABLE staff AS SELECT id, notes AS who, city FROM people", {S("staff", "who"): NAME}),
    ("CREATE TABLE other.t SELECT p.email FROM people p", {S("t", "email", "other"): EMAIL}),
    ("CREATE TABLE t (x INT) SELECT ssn FROM people WHERE id = 1", {S("t", "ssn"): NID}),
    ("CREATE TEMPORARY TABLE t AS SELECT ssn FROM people", {}),  # the session's own
    # INSERT / REPLACE ... SELECT: by the column list, else the table's columns in order
    ("INSERT INTO orders SELECT id, id, ssn FROM people", {S("orders", "total"): NID}),
    ("REPLACE INTO orders (TOTAL, id) SELECT notes, id FROM people", {S("orders", "total"): NAME}),
    ("INSERT INTO hr.people (phone) SELECT email FROM app.people", {S("people", "phone", "hr"): EMAIL}),
    ("INSERT INTO orders (total) SELECT COUNT(ssn) FROM people", {}),
    # VALUES rows and the SET form, with subqueries
    ("INSERT INTO orders (id, total) VALUES (1, 2), (2, (SELECT ssn FROM people LIMIT 1))", {S("orders", "total"): NID}),
    ("INSERT INTO orders SET total = (SELECT email FROM people LIMIT 1), id = 3", {S("orders", "total"): EMAIL}),
    ("INSERT INTO orders (id, total) VALUES (1, 2)", {}),
    # a composite, or a value the lineage cannot follow: redacted like a secret
    ("INSERT INTO orders (total) SELECT CONCAT(email, ssn) FROM people", {S("orders", "total"): SECRET}),
    ("INSERT INTO orders (total) SELECT my_func(id) FROM people", {S("orders", "total"): SECRET}),
    # UPDATE: the same table, a joined one, a subquery; a column keeping its value is no copy
    ("UPDATE people SET city = ssn WHERE id = 1", {S("people", "city"): NID}),
    ("UPDATE orders o JOIN people p ON p.id = o.person_id SET o.total = p.notes", {S("orders", "total"): NAME}),
    ("UPDATE orders SET total = (SELECT email FROM people WHERE people.id = orders.person_id)", {S("orders", "total"): EMAIL}),
    ("UPDATE people SET ssn = ssn, city = 'x'", {}),
    # ON DUPLICATE KEY UPDATE: VALUES(col) and the new row's alias are the inserted values
    ("INSERT INTO orders (id, total) SELECT id, 0 FROM people ON DUPLICATE KEY UPDATE total = CONCAT(total, '')", {}),
    (
        "INSERT INTO people (id, city) SELECT id, ssn FROM people ON DUPLICATE KEY UPDATE notes = VALUES(city)",
        {S("people", "city"): NID, S("people", "notes"): NID},
    ),
    (
        "INSERT INTO orders (id) VALUES (1) AS new ON DUPLICATE KEY UPDATE total = (SELECT ssn FROM people LIMIT 1)",
        {S("orders", "total"): NID},
    ),
]


@pytest.mark.parametrize(("sql", "expected"), COPIES)
def test_what_each_write_copies(sql: str, expected: dict[SourceColumn, DataClass]) -> None:
    assert copies(sql) == expected


def test_multi_statements_each_their_own() -> None:
    found = copies_of("SELECT 1; CREATE TABLE t1 AS SELECT ssn FROM people; UPDATE orders SET total = 1", CATALOG, CLASSMAP, "app")
    assert found is not None
    assert [{k: v.data_class for k, v in (f or {}).items()} for f in found] == [
        {},
        {S("t1", "ssn"): DataClass.NATIONAL_ID},
        {},
    ]


def test_what_cannot_be_analysed() -> None:
    # a new table without a column list: its columns are not known
    (p,) = parse_writes("INSERT INTO nowhere SELECT ssn FROM people")
    assert p is not None
    with pytest.raises(LineageError):
        lineage_of_write(p, CATALOG, "app")
    assert copies_of("INSERT INTO nowhere SELECT ssn FROM people", CATALOG, CLASSMAP, "app") == (None,)
    # the database of a new table unknown
    (p,) = parse_writes("CREATE TABLE t AS SELECT ssn FROM app.people")
    assert p is not None
    with pytest.raises(LineageError):
        lineage_of_write(p, CATALOG, None)
