"""Zero-config masking for MySQL clients, through a running dbsentry to the real MariaDB:
PyMySQL (text protocol) and mysql-connector-python with a prepared cursor (binary
protocol). Columns classified by name, by comment and by sampled values, a view over
them; an exempt identity (``pii-readers``) sees real values; the predicate oracle as
PostgreSQL refuses it; ``SELECT ... INTO @v`` refused; a column added through the proxy
masked after the catalog refresh; audit records with masked classes and redacted
literals. One proxy for the module."""

from __future__ import annotations

import json
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from support.mysql import (
    MySQLProxy,
    audit_rows,
    root_connect,
    run_mysql_proxy,
    server_reason,
)

_REASON = server_reason()
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]
pymysql = pytest.importorskip("pymysql")

PERSON = ("eve@example.com", ("eng",), False)
AGENT = ("bot@example.com", ("eng",), True)
READER = ("rita@example.com", ("eng", "pii-readers"), False)
_NO_VERIFY = {"check_hostname": False, "verify_mode": ssl.CERT_NONE}

ROWS = [
    (i, f"user{i}.real@example.com", f"5{i:02d}-22-87{i:02d}", f"+1 415 555 {1000 + i}", "4539 1488 0343 6467",
     f"Nick{i}", f"contact.{i}@corp.example.org", f"City{i}")
    for i in range(1, 13)
]
SECRETS = {v for r in ROWS for v in (r[1], r[2], r[3], r[4], r[5], r[6])}


@dataclass(frozen=True)
class Env:
    mp: MySQLProxy
    t: str
    v: str


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    s = uuid.uuid4().hex[:8]
    t, v = f"mcust_{s}", f"mcust_v_{s}"
    with root_connect() as conn, conn.cursor() as cur:
        cur.execute(
            f"CREATE TABLE {t} (id INT PRIMARY KEY, email VARCHAR(80), ssn VARCHAR(20), phone VARCHAR(30),"
            " card_number VARCHAR(30), nickname VARCHAR(40) COMMENT 'pii:person_name', label VARCHAR(80), city VARCHAR(40))"
        )
        cur.executemany(f"INSERT INTO {t} VALUES (%s, %s, %s, %s, %s, %s, %s, %s)", ROWS)
        cur.execute(f"CREATE VIEW {v} AS SELECT id, email AS mail, label, city FROM {t}")
    directory = tmp_path_factory.mktemp("mysql-masking")
    try:
        with run_mysql_proxy(directory, extra={"masking": {"sample_budget_seconds": 5}}) as mp:
            yield Env(mp, t, v)
    finally:
        with root_connect() as conn, conn.cursor() as cur:
            cur.execute(f"DROP VIEW IF EXISTS {v}")
            cur.execute(f"DROP TABLE IF EXISTS {t}")


def connect(mp: MySQLProxy, who: tuple[str, tuple[str, ...], bool], database: str = "dev") -> Any:
    name, groups, agent = who
    return pymysql.connect(
        host="127.0.0.1", port=mp.port, user=name, password=mp.token(name, groups, agent), database=database,
        ssl=_NO_VERIFY, connect_timeout=10, autocommit=True,
    )


def _no_secret(rows: Any) -> None:
    text = repr(rows)
    leaked = [s for s in SECRETS if s in text]
    assert not leaked, (leaked, rows)


@pytest.mark.parametrize("who", [PERSON, AGENT], ids=["person", "agent"])
def test_text_protocol_masks_classified_columns(env: Env, who: Any) -> None:
    with connect(env.mp, who) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT id, email, ssn, phone, card_number, nickname, label, city FROM {env.t} ORDER BY id")
        rows = cur.fetchall()
        assert len(rows) == len(ROWS)
        _no_secret(rows)
        assert [(r[0], r[7]) for r in rows] == [(r[0], r[7]) for r in ROWS]  # unclassified: unchanged
        cur.execute(f"SELECT * FROM {env.t} ORDER BY id")
        _no_secret(cur.fetchall())
        cur.execute(f"SELECT mail, label, city FROM {env.v} ORDER BY id")
        rows = cur.fetchall()
        _no_secret(rows)
        assert [r[2] for r in rows] == [r[7] for r in ROWS]


@pytest.mark.parametrize("who", [PERSON, AGENT], ids=["person", "agent"])
def test_binary_protocol_prepared_cursor_masks(env: Env, who: Any) -> None:
    connector = pytest.importorskip("mysql.connector")
    name, groups, agent = who
    conn = connector.connect(
        host="127.0.0.1", port=env.mp.port, user=name, password=env.mp.token(name, groups, agent), database="dev",
        use_pure=True, ssl_verify_cert=False, connection_timeout=10,
    )
    try:
        cur = conn.cursor(prepared=True)
        cur.execute(f"SELECT id, email, ssn, phone, card_number, nickname, label, city FROM {env.t} WHERE id > ? ORDER BY id", (0,))
        rows = cur.fetchall()
        assert len(rows) == len(ROWS)
        _no_secret(rows)
        assert [(r[0], r[7]) for r in rows] == [(r[0], r[7]) for r in ROWS]
        cur.execute(f"SELECT mail, city FROM {env.v} WHERE id = ?", (3,))
        rows = cur.fetchall()
        _no_secret(rows)
        assert rows[0][1] == "City3"
    finally:
        conn.close()


def test_exempt_identity_sees_real_values(env: Env) -> None:
    with connect(env.mp, READER) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT id, email, ssn, nickname, label FROM {env.t} ORDER BY id")
        assert cur.fetchall() == tuple((r[0], r[1], r[2], r[5], r[6]) for r in ROWS)


def test_predicate_oracle_is_refused_in_production(env: Env) -> None:
    with connect(env.mp, PERSON, "prod") as conn, conn.cursor() as cur:
        with pytest.raises(pymysql.err.OperationalError) as err:
            cur.execute(f"SELECT id FROM {env.t} WHERE ssn LIKE '501%'")
        code, message = err.value.args
        assert code == 1142 and message.startswith("dbsentry:"), message
        assert "ssn" in message and "masking.predicates = equality" in message
        cur.execute(f"SELECT id FROM {env.t} WHERE ssn = %s", ("123-45-6789",))  # a point lookup: allowed
        assert cur.fetchall() == ()
        # the argument GREATEST picks shows in the masked value's shape ('*' or '***-**-6789')
        with pytest.raises(pymysql.err.OperationalError) as err:
            cur.execute(f"SELECT id, GREATEST(ssn, '5') FROM {env.t}")
        assert err.value.args[0] == 1142 and "used in GREATEST" in err.value.args[1]
    with connect(env.mp, AGENT, "prod") as conn, conn.cursor() as cur:
        with pytest.raises(pymysql.err.OperationalError) as err:
            cur.execute(f"SELECT id FROM {env.t} WHERE ssn = '123-45-6789'")
        assert err.value.args[0] == 1142 and "masking.predicates = deny" in err.value.args[1]
    with connect(env.mp, READER, "prod") as conn, conn.cursor() as cur:
        cur.execute(f"SELECT id FROM {env.t} WHERE ssn LIKE '501%'")
        assert cur.fetchall() == ((1,),)


def test_select_into_variable_is_refused(env: Env) -> None:
    with connect(env.mp, PERSON) as conn, conn.cursor() as cur:
        with pytest.raises(pymysql.err.OperationalError) as err:
            cur.execute(f"SELECT ssn INTO @v FROM {env.t} WHERE id = 1")
        assert err.value.args[0] == 1142 and "masking.copy_out" in err.value.args[1]
        cur.execute("SELECT 1")
        assert cur.fetchall() == ((1,),)


def test_sql_prepare_and_execute_keep_the_plan(env: Env) -> None:
    with connect(env.mp, PERSON) as conn, conn.cursor() as cur:
        cur.execute(f"PREPARE s1 FROM 'SELECT email, label, city FROM {env.t} WHERE id = ?'")
        cur.execute("SET @i = 2")
        cur.execute("EXECUTE s1 USING @i")
        rows = cur.fetchall()
        _no_secret(rows)
        assert rows[0][2] == "City2"
        with pytest.raises(pymysql.err.OperationalError) as err:
            cur.execute(f"PREPARE s2 FROM 'SELECT ssn INTO @x FROM {env.t} WHERE id = 1'")
        assert err.value.args[0] == 1142


def test_column_added_through_the_proxy_is_masked_after_refresh(env: Env) -> None:
    with connect(env.mp, READER) as conn, conn.cursor() as cur:
        cur.execute(f"ALTER TABLE {env.t} ADD COLUMN email2 VARCHAR(80)")
        cur.execute(f"UPDATE {env.t} SET email2 = 'second.real@example.com' WHERE id = 1")
    deadline = time.monotonic() + 15
    rows: Any = None
    while time.monotonic() < deadline:
        with connect(env.mp, PERSON) as conn, conn.cursor() as cur:
            cur.execute(f"SELECT id, email2 FROM {env.t} WHERE id = 1")
            rows = cur.fetchall()
        if "second.real@example.com" not in repr(rows):
            break
        time.sleep(0.3)
    assert rows is not None and "second.real@example.com" not in repr(rows), rows


def _records(env: Env, marker: str, want: int) -> list[dict[str, Any]]:
    return audit_rows(env.mp, marker, lambda rows: len(rows) >= want)


def test_audit_records_masked_classes_and_redact_literals(env: Env) -> None:
    marker = f"m{uuid.uuid4().hex[:10]}"
    with connect(env.mp, PERSON) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT email, ssn, city /* {marker} */ FROM {env.t} WHERE ssn = '123-45-6789'")
        cur.fetchall()
        # no value detection knows 'Nick7': the catalog (a column comment) says what it meets
        cur.execute(f"SELECT id /* {marker}-2 */ FROM {env.t} WHERE nickname = 'Nick7' AND city = 'City7'")
        assert cur.fetchall() == ((7,),)
    rows = [r for r in _records(env, marker, 2) if r.get("statement")]
    assert len(rows) >= 2, rows
    rec = next(r for r in rows if f"{marker}-2" not in r["statement"])
    by_comment = next(r for r in rows if f"{marker}-2" in r["statement"])
    assert "Nick7" not in by_comment["statement"] and "<person_name:hmac:" in by_comment["statement"], by_comment
    assert "'City7'" in by_comment["statement"]
    assert rec["decision"] == "mask", rec
    assert set(rec["masked_classes"]) == {"email", "national_id"}, rec
    assert any(c.endswith(".ssn") for c in rec["masked_columns"]), rec
    assert "123-45-6789" not in json.dumps(rows)
    assert "<national_id:hmac:" in rec["statement"], rec["statement"]


def test_server_errors_and_warnings_do_not_quote_masked_values(env: Env) -> None:
    """The server quotes the values a statement read in its errors ("Incorrect integer
    value: 'Nick1'") and warnings ("Truncated incorrect INTEGER value: 'Nick1'"): for a
    masked identity the error's text is withheld and SHOW WARNINGS after such a statement
    is refused; an exempt reader sees both (the channel is real)."""
    update = f"UPDATE {env.t} SET id = nickname WHERE id = 1"  # strict mode: an error naming the value
    cast = f"SELECT CAST(nickname AS SIGNED) AS n FROM {env.t} WHERE id = 1"  # a warning naming it
    with connect(env.mp, READER) as conn, conn.cursor() as cur:
        with pytest.raises(pymysql.MySQLError) as real:
            cur.execute(update)
        assert "Nick1" in str(real.value.args[1])
        cur.execute(cast)
        cur.execute("SHOW WARNINGS")
        assert "Nick1" in repr(cur.fetchall())
    with connect(env.mp, PERSON) as conn, conn.cursor() as cur:
        with pytest.raises(pymysql.MySQLError) as masked:
            cur.execute(update)
        code, message = masked.value.args[0], str(masked.value.args[1])
        assert code == real.value.args[0] and "Nick1" not in message, message
        assert message.startswith("dbsentry: the server's message") and "withheld" in message, message
        cur.execute(cast)
        cur.fetchall()
        for show in ("SHOW WARNINGS", "show /* c */ errors"):
            with pytest.raises(pymysql.MySQLError) as refused:
                cur.execute(show)
            assert "warnings of the previous statement are withheld" in str(refused.value.args[1]), show
        cur.execute("SELECT 1")  # uses no table: the server keeps the warnings, and so the refusal
        cur.fetchall()
        with pytest.raises(pymysql.MySQLError):
            cur.execute("SHOW WARNINGS")
        # a statement that uses a table with nothing classified: the warnings are its own
        cur.execute("SELECT COUNT(*) FROM information_schema.CHARACTER_SETS")
        cur.fetchall()
        cur.execute("SHOW WARNINGS")
        assert "Nick1" not in repr(cur.fetchall())
    with root_connect() as conn, conn.cursor() as cur:
        cur.execute(f"SELECT id FROM {env.t} WHERE id = 1")
        assert cur.fetchone() == (1,)  # neither UPDATE changed anything


def test_other_sessions_statement_texts_are_redacted(env: Env) -> None:
    """SHOW PROCESSLIST shows the text of every session the upstream account can see,
    literals included (a name is nothing a value scan finds): redacted whole for a masked
    identity, as information_schema.PROCESSLIST.INFO is; an exempt reader sees it."""
    marker = "Zebediah Quarrington-Fotheringay"

    def sleeper() -> None:
        with root_connect() as conn, conn.cursor() as cur:
            cur.execute(f"SELECT SLEEP(4), '{marker}'")

    t = threading.Thread(target=sleeper)
    t.start()
    try:
        seen_by_reader = ""
        deadline = time.monotonic() + 3
        while marker not in seen_by_reader and time.monotonic() < deadline:
            with connect(env.mp, READER) as conn, conn.cursor() as cur:
                cur.execute("SHOW FULL PROCESSLIST")
                seen_by_reader = repr(cur.fetchall())
        assert marker in seen_by_reader  # the channel is real
        with connect(env.mp, PERSON) as conn, conn.cursor() as cur:
            for sql in (
                "SHOW PROCESSLIST",
                "SHOW FULL PROCESSLIST",
                "SELECT * FROM information_schema.PROCESSLIST",  # INFO and INFO_BINARY
                "SELECT * FROM sys.session",
                "SELECT p.* FROM information_schema.PROCESSLIST p JOIN sys.processlist s ON s.conn_id = p.ID",
            ):
                cur.execute(sql)
                rows = cur.fetchall()
                assert marker not in repr(rows), (sql, rows)
                assert rows or "sys." in sql, sql  # (sys views are empty without performance_schema)
            cur.execute("SHOW FULL PROCESSLIST")
            rows = cur.fetchall()
            # the rest stays readable: ids, commands; the texts are redacted, not dropped
            assert all(isinstance(r[0], int) for r in rows) and "Query" in {r[4] for r in rows}
            assert any(r[7] is not None and "secret" in r[7] for r in rows), rows
    finally:
        t.join()


def test_truncating_casts_are_redacted_not_partially_masked(env: Env) -> None:
    """A partial mask shows the last characters of the value it is given: of
    CAST(ssn AS CHAR(8)) those are the SSN's 5th to 8th, of CAST(card AS CHAR(n)) the
    card four digits at a time.  A cast that may cut the value is redacted."""
    with connect(env.mp, PERSON) as conn, conn.cursor() as cur:
        cur.execute(
            f"SELECT CAST(ssn AS CHAR(8)), CONVERT(card_number, CHAR(12)), CAST(ssn AS BINARY(6)),"
            f" CAST(card_number AS NCHAR(9)) FROM {env.t} WHERE id = 1"
        )
        row = cur.fetchall()[0]
        assert not any(ch.isdigit() for v in row for ch in (v.decode() if isinstance(v, bytes) else v)), row
        cur.execute(f"SELECT ssn, CAST(ssn AS CHAR) FROM {env.t} WHERE id = 1")
        whole = cur.fetchall()[0]
        assert whole[0] == whole[1] and whole[0].endswith("8701"), whole  # partial, as before
