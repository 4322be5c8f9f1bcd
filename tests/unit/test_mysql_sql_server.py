"""The MySQL analysis against a real server: where it can be checked, MariaDB agrees.

MariaDB on 127.0.0.1:3306 (root, empty password, database ``test``); the tests skip with
the reason when it is not reachable.

- statements the analysis calls read-only (READ/MISC, no writes, no side effects) run
  under ``START TRANSACTION READ ONLY`` and are rolled back;
- a constant WHERE the server finds true is flagged always-true by the analysis, for a
  fixed corpus and for a few hundred random constant expressions (differential: the
  analysis may be stricter than the server, never looser);
- statements the analysis refuses as not valid MySQL (``42601``) are refused by the
  server too.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest

from dbsentry.engines.mysql.sql.facts import analyze
from dbsentry.governance.facts import AnalysisRefused

pymysql = pytest.importorskip(
    "pymysql", reason="PyMySQL is not installed (pip install -e '.[test]')"
)


@pytest.fixture(scope="module")
def server() -> Iterator[Any]:
    try:
        conn = pymysql.connect(
            host="127.0.0.1",
            port=3306,
            user="root",
            password="",
            database="test",
            connect_timeout=3,
            autocommit=True,
        )
    except Exception as err:  # any failure to connect means: skip
        pytest.skip(
            f"no MariaDB/MySQL on 127.0.0.1:3306 (root, empty password, database test): {err}"
        )
    cur = conn.cursor()
    cur.execute("DROP TABLE IF EXISTS dbsentry_facts_t")
    cur.execute("DROP TABLE IF EXISTS dbsentry_facts_u")
    cur.execute("CREATE TABLE dbsentry_facts_t (id INT PRIMARY KEY, a INT, name VARCHAR(20))")
    cur.execute("CREATE TABLE dbsentry_facts_u (id INT PRIMARY KEY, a INT)")
    cur.execute("INSERT INTO dbsentry_facts_t VALUES (1, 1, 'x'), (2, NULL, 'y')")
    try:
        yield conn
    finally:
        cur.execute("DROP TABLE IF EXISTS dbsentry_facts_t")
        cur.execute("DROP TABLE IF EXISTS dbsentry_facts_u")
        conn.close()


READ_ONLY = [
    "SELECT * FROM dbsentry_facts_t WHERE id = 1",
    "SELECT a, COUNT(*) FROM dbsentry_facts_t GROUP BY a",
    "SELECT * FROM dbsentry_facts_t t JOIN dbsentry_facts_u u ON t.id = u.id",
    "WITH c AS (SELECT id FROM dbsentry_facts_t) SELECT * FROM c",
    "SELECT id FROM dbsentry_facts_t UNION SELECT id FROM dbsentry_facts_u",
    "SELECT NOW(), VERSION(), DATABASE(), CONCAT('a', 'b'), IFNULL(NULL, 1)",
    "SELECT 'a\\'b', x'41', 0x41, b'01', N'n', _utf8mb4'u'",
    "SELECT @a := 1",
    "SELECT @@version",
    "SHOW TABLES",
    "SHOW VARIABLES LIKE 'sql_mode'",
    "DESCRIBE dbsentry_facts_t",
    "EXPLAIN SELECT * FROM dbsentry_facts_t WHERE id = 1",
    "DO 1",
    "SELECT 1 -- c",
    "SELECT 1 # c",
    "SELECT /* c */ 1",
    "SET @x = 5",
    "SET NAMES utf8mb4",
    "SELECT SLEEP(0)",
]


def test_read_only_statements_run_in_a_read_only_transaction(server: Any) -> None:
    cur = server.cursor()
    for sql in READ_ONLY:
        (facts,) = analyze(sql)
        assert facts.statement_class in ("READ", "MISC", "MISC_SET"), sql
        assert not facts.tables_written, sql
        assert not facts.flags & {
            "side_effect_function",
            "volatile_function",
            "copy_server_file",
        }, sql
        cur.execute("START TRANSACTION READ ONLY")
        try:
            cur.execute(sql)
            cur.fetchall()
        finally:
            cur.execute("ROLLBACK")


def test_writes_fail_in_a_read_only_transaction(server: Any) -> None:
    # the other side of the coin: what the analysis calls a write, the server refuses read-only
    cur = server.cursor()
    for sql in (
        "INSERT INTO dbsentry_facts_u VALUES (9, 9)",
        "UPDATE dbsentry_facts_t SET a = 2 WHERE id = 1",
        "DELETE FROM dbsentry_facts_t WHERE id = 2",
        "REPLACE INTO dbsentry_facts_u VALUES (9, 9)",
    ):
        (facts,) = analyze(sql)
        assert facts.statement_class == "WRITE" and facts.tables_written, sql
        cur.execute("START TRANSACTION READ ONLY")
        try:
            with pytest.raises(pymysql.MySQLError):
                cur.execute(sql)
        finally:
            cur.execute("ROLLBACK")


def _server_true(cur: Any, expr: str) -> bool | None:
    try:
        cur.execute(f"SELECT ({expr}) IS TRUE")
        return bool(cur.fetchall()[0][0])
    except pymysql.MySQLError:
        return None


def _flagged(expr: str) -> bool | None:
    try:
        (facts,) = analyze(f"DELETE FROM t WHERE {expr}")
    except AnalysisRefused:
        return None
    return "always_true_where" in facts.flags


CONSTANT_WHERES = [
    "1=1",
    "1",
    "TRUE",
    "NOT 0",
    "!0",
    "'1abc'",
    "'abc' = 0",
    "'a' = 'A'",
    "'a ' = 'a'",
    "x'41' = 'A'",
    "0x41 = 65",
    "1/3 = 0.3333",
    "0.1 + 0.2 = 0.3",
    "'0.1' + '0.2' = 0.30000000000000004",
    "1 || 0",
    "1 XOR 0",
    "1 IN (1, 2)",
    "'1' IN ('1.0', 5)",
    "1 BETWEEN 0 AND 2",
    "'a' BETWEEN 0 AND '1'",
    "NULL IS NULL",
    "1 IS TRUE",
    "IFNULL(NULL, 1)",
    "'a' <> IFNULL(0, 'a')",
    "~0",
    "-1",
    "0.5",
    "EXISTS (SELECT 1)",
    "(SELECT 1)",
    "'abc' LIKE '%'",
    "1 & 1",
    "2 > 1 = 1",
    "1 = 1 < 2",
    "NOT 5 BETWEEN 0 AND 10 = 0",
    "CASE WHEN 1 THEN 'a' END",
    "IF(1, 1, 'x')",
    "1e0",
    "0.1e0 = 0.1",
]


@pytest.mark.parametrize("expr", CONSTANT_WHERES)
def test_constant_wheres_the_server_finds_true_are_flagged(server: Any, expr: str) -> None:
    truth = _server_true(server.cursor(), expr)
    flagged = _flagged(expr)
    if truth and flagged is not None:
        assert flagged, f"the server finds WHERE {expr} true, the analysis does not"


_ATOMS = [
    "0",
    "1",
    "2",
    "-1",
    "0.5",
    "'1'",
    "'a'",
    "'A'",
    "'abc'",
    "'1abc'",
    "NULL",
    "TRUE",
    "FALSE",
    "x'41'",
    "0x41",
    "b'1'",
    "'a '",
    "''",
    "1e0",
]
_BINARY = [
    "=",
    "<>",
    "<",
    ">=",
    "<=>",
    "AND",
    "OR",
    "XOR",
    "&&",
    "||",
    "+",
    "-",
    "*",
    "/",
    "DIV",
    "%",
    "&",
    "|",
    "^",
    "<<",
    "LIKE",
]


def _expression(rng: random.Random, depth: int) -> str:
    r = rng.random()
    if depth <= 0 or r < 0.3:
        return rng.choice(_ATOMS)
    if r < 0.4:
        return rng.choice(["NOT ", "!", "-", "~"]) + _expression(rng, depth - 1)
    if r < 0.45:
        return f"{_expression(rng, depth - 1)} IS {rng.choice(['', 'NOT '])}{rng.choice(['NULL', 'TRUE', 'FALSE'])}"
    if r < 0.5:
        return f"{_expression(rng, depth - 1)} BETWEEN {_expression(rng, depth - 1)} AND {_expression(rng, depth - 1)}"
    if r < 0.55:
        return f"{_expression(rng, depth - 1)} IN ({_expression(rng, depth - 1)}, {_expression(rng, depth - 1)})"
    if r < 0.6:
        return f"({_expression(rng, depth - 1)})"
    if r < 0.62:
        return f"CAST({_expression(rng, depth - 1)} AS {rng.choice(['SIGNED', 'UNSIGNED', 'CHAR', 'DECIMAL(5,2)'])})"
    if r < 0.65:
        fn = rng.choice(["IF", "COALESCE", "IFNULL", "NULLIF"])
        args = [_expression(rng, depth - 1) for _ in range(3 if fn == "IF" else 2)]
        return f"{fn}({', '.join(args)})"
    return f"{_expression(rng, depth - 1)} {rng.choice(_BINARY)} {_expression(rng, depth - 1)}"


def test_random_constant_wheres_never_looser_than_the_server(server: Any) -> None:
    rng = random.Random(20261206)
    cur = server.cursor()
    looser = []
    checked = 0
    for _ in range(400):
        expr = _expression(rng, 3)
        truth = _server_true(cur, expr)
        flagged = _flagged(expr)
        if truth is None or flagged is None:
            continue
        checked += 1
        if truth and not flagged:
            looser.append(expr)
    assert checked > 200
    assert looser == []


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 'unterminated",
        "SELECT 1 /* unterminated",
        "SELECT x'414'",
        "SELECT b'012'",
        "DR/**/OP TABLE dbsentry_facts_t",
        "DELETE FROM dbsentry_facts_t WHERE",
        "SELECT * FROM",
    ],
)
def test_what_the_analysis_cannot_read_the_server_refuses_too(server: Any, sql: str) -> None:
    with pytest.raises(AnalysisRefused):
        analyze(sql)
    cur = server.cursor()
    cur.execute("START TRANSACTION READ ONLY")
    try:
        with pytest.raises(pymysql.MySQLError):
            cur.execute(sql)
    finally:
        cur.execute("ROLLBACK")


def test_executable_comments_do_run_on_the_server(server: Any) -> None:
    # why they are refused: the server runs their text
    cur = server.cursor()
    cur.execute("SELECT 1 /*! + 1 */")
    assert cur.fetchall()[0][0] == 2
    cur.execute("SELECT 1 /*M! + 1 */")
    assert cur.fetchall()[0][0] == 2
    cur.execute("SELECT 1--1")
    assert cur.fetchall()[0][0] == 2  # minus minus one, not a comment
    for sql in ("SELECT 1 /*! + 1 */", "SELECT 1 /*M! + 1 */", "SELECT 1--1"):
        with pytest.raises(AnalysisRefused):
            analyze(sql)


def test_backslash_escapes_as_the_server_reads_them(server: Any) -> None:
    cur = server.cursor()
    cur.execute("SELECT 'a\\'b', 'c''d', \"e\\\"f\"")
    assert cur.fetchall()[0] == ("a'b", "c'd", 'e"f')
    assert len(analyze("SELECT 'a\\'b', 'c''d', \"e\\\"f\"")) == 1


_LITS = [
    "'a;b'",
    "'a\\';b'",
    "'a'';b'",
    '"c;d"',
    '"c\\";d"',
    "(SELECT 1 AS `e;f`)",
    "'\\\\'",
    "x'41'",
    "N'x;'",
    "_utf8mb4'y;'",
    "1",
    "'#'",
    "'--'",
    "'/*'",
    "'*/'",
]
_SEPS = [" ", "/* ; */", "/* ' */", "# ;'\n", "-- ;'\n", "-- \n", "#\n", "/**/", "\n"]


def test_statement_boundaries_are_the_servers(server: Any) -> None:
    # random multi-statement texts with quotes, escapes and comments holding ';': as many
    # statements for the analysis as result sets from the server
    from pymysql.constants import CLIENT

    conn = pymysql.connect(
        host="127.0.0.1",
        user="root",
        password="",
        database="test",
        client_flag=CLIENT.MULTI_STATEMENTS,
    )
    cur = conn.cursor()
    rng = random.Random(7)
    checked = 0
    try:
        for _ in range(300):
            parts = [
                "SELECT "
                + ", ".join(rng.choice(_LITS) for _ in range(rng.randint(1, 3)))
                + rng.choice(_SEPS)
                for _ in range(rng.randint(1, 3))
            ]
            sql = ";".join(parts)
            try:
                mine = len(analyze(sql))
            except AnalysisRefused:
                continue
            cur.execute(sql)
            count = 1
            while cur.nextset():
                count += 1
            assert count == mine, sql
            checked += 1
    finally:
        conn.close()
    assert checked > 200


@pytest.mark.parametrize(
    "lit",
    [
        "'a\\'b'",
        "'a''b'",
        "'\\\\n'",
        "'\\n\\t\\0x'",
        "'\\%\\_'",
        '"q\\"q"',
        "N'n'",
        "_utf8mb4'u\\''",
    ],
)
def test_string_values_are_the_servers(server: Any, lit: str) -> None:
    # PREPARE ... FROM 'text' analyses the text the server will prepare
    from dbsentry.engines.mysql.sql.facts import _string_value
    from dbsentry.engines.mysql.sql.lexing import SqlMode

    cur = server.cursor()
    cur.execute(f"SELECT {lit}")
    assert cur.fetchall()[0][0] == _string_value(lit, SqlMode())
