"""The MCP tools' MySQL driver without a server: what it refuses before anything is sent,
the EXPLAIN it builds, how ``?`` params are bound, how values become text."""

from __future__ import annotations

from typing import Any

import pytest

from dbsentry.agents.errors import ToolRefused
from dbsentry.agents.mysql import MySQLDriver, _text, bind

DRIVER = MySQLDriver()


@pytest.mark.parametrize(
    ("sql", "says"),
    [
        ("SELECT 1; DROP TABLE t", "one statement per call"),
        ("SELECT 1; -- x\nSELECT 2", "one statement per call"),
        ("START TRANSACTION", "transaction of its own"),
        ("begin", "transaction of its own"),
        ("SET autocommit = 0", "transaction of its own"),
        ("LOCK TABLES t READ", "transaction of its own"),
        ("LOAD DATA LOCAL INFILE '/etc/passwd' INTO TABLE t", "LOAD DATA"),
        ("SELECT /*!50000 1 */", "does not parse"),
        ("DELIMITER //", "does not parse"),
        ("  ", "no statement"),
        ("SELECT '\x00'", "NUL"),
        (42, "must be a string"),
    ],
)
def test_refused_before_anything_is_sent(sql: object, says: str) -> None:
    with pytest.raises(ToolRefused) as refused:
        DRIVER.one_statement(sql, 1000)
    assert says in refused.value.message


def test_one_statement_taken_as_is() -> None:
    assert DRIVER.one_statement("/* c */ SELECT 1;", 1000) == "/* c */ SELECT 1;"
    with pytest.raises(ToolRefused, match=r"mcp\.max_sql_bytes"):
        DRIVER.one_statement("SELECT " + "1" * 2000, 1000)


def test_explain_builds_one_explain_format_json() -> None:
    assert DRIVER.explain_text("SELECT * FROM t WHERE id = 1;") == "EXPLAIN FORMAT=JSON SELECT * FROM t WHERE id = 1"
    assert DRIVER.explain_text("delete from t where id = 2").startswith("EXPLAIN FORMAT=JSON delete")
    for sql in ("DROP TABLE t", "SHOW TABLES", "ANALYZE SELECT 1", "EXPLAIN ANALYZE SELECT 1"):
        with pytest.raises(ToolRefused, match="explain shows plans"):
            DRIVER.explain_text(sql)


class _Escaper:
    def escape(self, value: str) -> str:
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def test_params_fill_only_real_placeholders() -> None:
    conn: Any = _Escaper()
    sql = "SELECT ?, '?', `?`, /* ? */ ? -- ?\n"
    assert bind(conn, sql, ["it's", None]) == "SELECT 'it\\'s', '?', `?`, /* ? */ NULL -- ?\n"
    assert bind(conn, "SELECT 1", None) == "SELECT 1"
    with pytest.raises(ToolRefused, match="1 \\? placeholders and params has 2"):
        bind(conn, "SELECT ?", ["a", "b"])


def test_values_as_text() -> None:
    assert _text(None) is None and _text("x") == "x" and _text(b"abc") == "abc"
    assert _text(b"\xff\x00") == "0xff00"
