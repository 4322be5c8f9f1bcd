"""The row guard on the MySQL listener, against the real MariaDB through a running dbsentry.

In production a statement that changes rows runs inside a bracket of the proxy's own
(``START TRANSACTION`` or a ``SAVEPOINT``); what it changed is measured with the server's
own counters and it is rolled back and refused when that is over
``guardrails.max_rows_changed`` (20 here) or ``max_fraction_changed`` (half a table).
Every refusal is checked directly on the server: nothing changed.
"""

from __future__ import annotations

import os
import ssl
import time
from collections.abc import Iterator
from typing import Any

import pytest

from support.mysql import MySQLProxy, audit_rows, connector_connect, run_mysql_proxy, server_reason

_REASON = server_reason()
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]
pymysql = pytest.importorskip("pymysql")

ALICE = "alice@example.com"
_NO_VERIFY = {"check_hostname": False, "verify_mode": ssl.CERT_NONE}
P = f"dbs_rg_{os.getpid()}"  # table name prefix: runs side by side do not meet
BIG = f"{P}_big"  # 60 rows
HALF = f"{P}_half"  # 30 rows
TRIG = f"{P}_trig"  # a delete trigger wipes 25 rows of LOG per row
LOG = f"{P}_log"
PARENT = f"{P}_parent"  # ON DELETE CASCADE to 25 rows of CHILD
CHILD = f"{P}_child"
MYISAM = f"{P}_myisam"
AUTO = f"{P}_auto"
TABLES = [CHILD, PARENT, TRIG, LOG, BIG, HALF, MYISAM, AUTO]


def direct() -> Any:
    return pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", database="test", autocommit=True)


def reset() -> None:
    with direct() as conn, conn.cursor() as cur:
        for t in TABLES:
            cur.execute(f"DROP TABLE IF EXISTS {t}")
        cur.execute(f"CREATE TABLE {BIG} (id INT PRIMARY KEY, v INT) ENGINE=InnoDB")
        cur.execute(f"INSERT INTO {BIG} SELECT seq, 0 FROM seq_1_to_60")
        cur.execute(f"CREATE TABLE {HALF} (id INT PRIMARY KEY, v INT) ENGINE=InnoDB")
        cur.execute(f"INSERT INTO {HALF} SELECT seq, 0 FROM seq_1_to_30")
        cur.execute(f"CREATE TABLE {LOG} (id INT PRIMARY KEY, k INT) ENGINE=InnoDB")
        cur.execute(f"INSERT INTO {LOG} SELECT seq, 1 FROM seq_1_to_25")
        cur.execute(f"CREATE TABLE {TRIG} (id INT PRIMARY KEY) ENGINE=InnoDB")
        cur.execute(f"INSERT INTO {TRIG} VALUES (1), (2)")
        cur.execute(f"CREATE TRIGGER {TRIG}_d AFTER DELETE ON {TRIG} FOR EACH ROW DELETE FROM {LOG} WHERE k = OLD.id")
        cur.execute(f"CREATE TABLE {PARENT} (id INT PRIMARY KEY) ENGINE=InnoDB")
        cur.execute(f"INSERT INTO {PARENT} VALUES (1), (2)")
        cur.execute(
            f"CREATE TABLE {CHILD} (id INT PRIMARY KEY, p INT, FOREIGN KEY (p) REFERENCES {PARENT} (id) ON DELETE CASCADE) ENGINE=InnoDB"
        )
        cur.execute(f"INSERT INTO {CHILD} SELECT seq, 1 FROM seq_1_to_25")
        cur.execute(f"CREATE TABLE {AUTO} (id INT AUTO_INCREMENT PRIMARY KEY, v INT) ENGINE=InnoDB")


def count(table: str, where: str = "1") -> int:
    with direct() as conn, conn.cursor() as cur:
        cur.execute(f"SELECT COUNT(*) FROM {table} WHERE {where}")
        return int(cur.fetchone()[0])


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MySQLProxy]:
    directory = tmp_path_factory.mktemp("mysql-row-guard")
    extra = {"guardrails": {"max_rows_changed": 20, "max_fraction_changed": 0.5}}
    try:
        with run_mysql_proxy(directory, extra=extra) as running:
            yield running
    finally:
        with direct() as conn, conn.cursor() as cur:
            for t in TABLES:
                cur.execute(f"DROP TABLE IF EXISTS {t}")


@pytest.fixture
def fresh(proxy: MySQLProxy) -> MySQLProxy:
    reset()
    return proxy


def connect(mp: MySQLProxy, database: str = "prod", **kw: Any) -> Any:
    return pymysql.connect(
        host="127.0.0.1", port=mp.port, user=ALICE, password=mp.token(), database=database, ssl=_NO_VERIFY, connect_timeout=10, **kw
    )


def refused(cur: Any, sql: str, args: Any = None) -> str:
    with pytest.raises(pymysql.err.OperationalError) as err:
        cur.execute(sql, args)
    code, message = err.value.args
    assert code == 1227 and message.startswith("dbsentry:"), err.value.args
    return str(message)


def test_tautology_over_the_limit_is_rolled_back(fresh: MySQLProxy) -> None:
    """``WHERE id > -1`` passes the parser's check; the count catches it."""
    with connect(fresh, autocommit=True) as conn, conn.cursor() as cur:
        message = refused(cur, f"UPDATE {BIG} SET v = 1 WHERE id > -1")
        assert "would have changed 60 rows (limit 20, guardrails.max_rows_changed); it was rolled back" in message
        assert not conn.server_status & 1  # not left in the guard's transaction
        message = refused(cur, f"DELETE FROM {BIG} WHERE id > -1")
        assert "would have changed 60 rows" in message
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)
    assert count(BIG) == 60 and count(BIG, "v = 1") == 0


def test_under_the_limit_commits_with_the_statements_own_answer(fresh: MySQLProxy) -> None:
    with connect(fresh, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(f"UPDATE {BIG} SET v = 7 WHERE id <= 5")
        assert cur.rowcount == 5
        assert not conn.server_status & 1 and conn.server_status & 2  # not in a transaction, autocommit
        cur.execute(f"INSERT INTO {AUTO} (v) VALUES (1)")
        cur.execute(f"INSERT INTO {AUTO} (v) VALUES (2)")
        assert cur.lastrowid == 2 and cur.rowcount == 1
        cur.execute(f"UPDATE {BIG} SET v = v WHERE id > -1")  # sets nothing: changes nothing
        assert cur.rowcount == 0
    assert count(BIG, "v = 7") == 5 and count(AUTO) == 2


def test_fraction_of_a_table(fresh: MySQLProxy) -> None:
    with connect(fresh, autocommit=True) as conn, conn.cursor() as cur:
        message = refused(cur, f"DELETE FROM {HALF} WHERE id > 14")
        assert "would have changed 16 rows, 53% of the 30 rows of test." + HALF in message
        assert "guardrails.max_fraction_changed" in message
        cur.execute(f"DELETE FROM {HALF} WHERE id > 20")  # 10 rows, a third
        assert cur.rowcount == 10
    assert count(HALF) == 20


def test_inside_a_transaction_its_earlier_work_survives(fresh: MySQLProxy) -> None:
    with connect(fresh) as conn, conn.cursor() as cur:  # PyMySQL: autocommit off
        cur.execute("BEGIN")
        cur.execute(f"INSERT INTO {AUTO} (v) VALUES (42)")
        cur.execute(f"UPDATE {BIG} SET v = 2 WHERE id <= 3")
        refused(cur, f"UPDATE {BIG} SET v = 3 WHERE id > -1")
        assert conn.server_status & 1  # still in the client's transaction, as the server would be
        cur.execute(f"SELECT COUNT(*) FROM {BIG} WHERE v = 2")
        assert cur.fetchone() == (3,)
        conn.commit()
    assert count(AUTO, "v = 42") == 1 and count(BIG, "v = 2") == 3 and count(BIG, "v = 3") == 0


def test_autocommit_off_keeps_the_change_for_the_clients_rollback(fresh: MySQLProxy) -> None:
    with connect(fresh) as conn, conn.cursor() as cur:
        cur.execute(f"UPDATE {BIG} SET v = 9 WHERE id <= 2")
        assert conn.server_status & 1
        conn.rollback()
    assert count(BIG, "v = 9") == 0


def test_prepared_binary_execute_is_guarded(fresh: MySQLProxy) -> None:
    connector = pytest.importorskip("mysql.connector")
    conn = connector_connect(fresh, database="prod")
    try:
        cur = conn.cursor(prepared=True)
        with pytest.raises(connector.Error) as err:
            cur.execute(f"UPDATE {BIG} SET v = ? WHERE id > ?", (5, -1))
        assert err.value.errno == 1227 and "would have changed 60 rows" in str(err.value.msg)
        cur.execute(f"UPDATE {BIG} SET v = ? WHERE id < ?", (5, 3))
        assert cur.rowcount == 2
    finally:
        conn.close()
    assert count(BIG, "v = 5") == 2


def test_trigger_amplified_delete_is_counted(fresh: MySQLProxy) -> None:
    with connect(fresh, autocommit=True) as conn, conn.cursor() as cur:
        message = refused(cur, f"DELETE FROM {TRIG} WHERE id = 1")
        assert "would have changed 26 rows" in message
    assert count(TRIG) == 2 and count(LOG) == 25


def test_foreign_key_cascade_is_counted(fresh: MySQLProxy) -> None:
    with connect(fresh, autocommit=True) as conn, conn.cursor() as cur:
        message = refused(cur, f"DELETE FROM {PARENT} WHERE id = 1")
        assert "would have changed 26 rows" in message
        cur.execute(f"DELETE FROM {PARENT} WHERE id = 2")  # no children
        assert cur.rowcount == 1
    assert count(PARENT) == 1 and count(CHILD) == 25


def test_what_cannot_be_held_is_refused_before_it_runs(fresh: MySQLProxy) -> None:
    from pymysql.constants import CLIENT

    with direct() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE TABLE {MYISAM} (id INT PRIMARY KEY, v INT) ENGINE=MyISAM")
        cur.execute(f"INSERT INTO {MYISAM} SELECT seq, 0 FROM seq_1_to_5")
    with connect(fresh, autocommit=True, client_flag=CLIENT.MULTI_STATEMENTS) as conn, conn.cursor() as cur:
        message = refused(cur, f"UPDATE {MYISAM} SET v = 1 WHERE id = 1")
        assert "engine without transactions" in message and "guardrails.max_rows_changed" in message
        # code (a trigger) on a server holding such a table: what it changes could not be undone
        message = refused(cur, f"DELETE FROM {TRIG} WHERE id = 2")
        assert "runs code" in message and MYISAM in message
        message = refused(cur, f"UPDATE {BIG} SET v = 1 WHERE id = 1; SELECT 1")
        assert "one at a time" in message
        message = refused(cur, "CALL dbs_no_such_procedure()")
        assert "CALL" in message
    assert count(MYISAM, "v = 1") == 0 and count(BIG, "v = 1") == 0 and count(TRIG) == 2
    with direct() as conn, conn.cursor() as cur:
        cur.execute(f"DROP TABLE {MYISAM}")


def test_refusal_is_audited_as_deny_with_the_rule(fresh: MySQLProxy) -> None:
    marker = f"rg_marker_{time.time_ns()}"
    with connect(fresh, autocommit=True) as conn, conn.cursor() as cur:
        refused(cur, f"UPDATE {BIG} SET v = 1 WHERE id > -1 /* {marker} */")
    rows = audit_rows(fresh, marker, lambda rows: any(r["decision"] == "deny" for r in rows), "--connection", "prod")
    denied = [r for r in rows if r["decision"] == "deny"]
    assert denied and denied[0]["rules"] == ["guardrails.max_rows_changed"], rows
    assert denied[0]["engine"] == "mysql"

