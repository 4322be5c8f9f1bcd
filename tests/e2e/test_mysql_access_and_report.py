"""Just-in-time access and the compliance report on the MySQL listener, as on PostgreSQL.

Carol is in ``eng``; the ``restricted`` MySQL connection admits only ``dba``. Her login is
refused until a DBA approves her request for the connection; then she logs in (the grant
is read at login), until it expires. The report names MySQL statements' engine.
"""

from __future__ import annotations

import csv
import re
import ssl
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymysql
import pytest

from support.mysql import MySQLProxy, audit_rows, run_mysql_proxy, server_reason
from support.proxy import dbsentry_cli

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(server_reason() is not None, reason=server_reason() or "")]

CAROL = ("carol@example.com", ("eng",))
BOB_DBA = ("bob@example.com", ("dba",))
APR = re.compile(r"^apr_[0-9a-z]{10}$")
GRANT_SECONDS = 5
_NO_VERIFY = {"check_hostname": False, "verify_mode": ssl.CERT_NONE}


@pytest.fixture
def mp(tmp_path: Path) -> Iterator[MySQLProxy]:
    extra = {"approvals": {"poll_interval_seconds": 0.2, "access": {"approvers": ["dba"]}}}
    with run_mysql_proxy(tmp_path, extra=extra) as running:
        yield running


def connect(mp: MySQLProxy, who: tuple[str, tuple[str, ...]], database: str) -> Any:
    name, groups = who
    return pymysql.connect(
        host="127.0.0.1", port=mp.port, user=name, password=mp.token(name, groups), database=database,
        ssl=_NO_VERIFY, connect_timeout=10, autocommit=True,
    )  # fmt: skip


def test_a_grant_opens_a_mysql_connection_until_it_expires(mp: MySQLProxy) -> None:
    cfg = mp.proxy.config_path
    with pytest.raises(pymysql.err.OperationalError) as refused:
        connect(mp, CAROL, "restricted")
    assert refused.value.args[0] == 1044
    assert "is not allowed to use connection 'restricted'" in refused.value.args[1]

    done = dbsentry_cli(
        "access", "request", "--token", mp.token(*CAROL), "--connection", "restricted",
        "--for", f"{GRANT_SECONDS}s", "--reason", "incident 4711", config=cfg, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rid = done.stdout.strip()
    assert APR.match(rid), done.stdout
    with pytest.raises(pymysql.err.OperationalError):
        connect(mp, CAROL, "restricted")  # requested is not granted
    ok = dbsentry_cli(
        "approvals", "approve", rid, "--token", mp.token(*BOB_DBA), "--reason", "ok", config=cfg, check=False
    )
    assert ok.returncode == 0, ok.stderr

    marker = f"jit_{uuid.uuid4().hex[:8]}"
    with connect(mp, CAROL, "restricted") as conn, conn.cursor() as cur:
        cur.execute(f"SELECT '{marker}' AS m")
        assert cur.fetchall() == ((marker,),)
    rows = audit_rows(mp, marker)
    assert rows and rows[0]["identity"] == CAROL[0] and rows[0]["connection"] == "restricted"
    assert rows[0]["engine"] == "mysql"

    time.sleep(GRANT_SECONDS + 0.5)
    with pytest.raises(pymysql.err.OperationalError) as expired:
        connect(mp, CAROL, "restricted")
    assert expired.value.args[0] == 1044


def test_the_report_names_the_engine_of_mysql_statements(mp: MySQLProxy, tmp_path: Path) -> None:
    cfg = mp.proxy.config_path
    table = f"rep_{uuid.uuid4().hex[:8]}"
    with connect(mp, CAROL, "dev") as conn, conn.cursor() as cur:
        cur.execute(f"CREATE TABLE {table} (id INT PRIMARY KEY)")
        cur.execute(f"INSERT INTO {table} VALUES (1)")
    try:
        with connect(mp, CAROL, "prod") as conn, conn.cursor() as cur:
            with pytest.raises(pymysql.err.OperationalError) as denied:
                cur.execute(f"DROP TABLE {table}")
            assert denied.value.args[0] == 1227
        assert audit_rows(mp, f"DROP TABLE {table}")
        out = tmp_path / "report"
        dbsentry_cli("report", "--since", "1d", "--out", str(out), config=cfg)
        with open(out / "denied.csv", newline="", encoding="utf-8") as f:
            denied_rows = [r for r in csv.DictReader(f) if table in r["statement"]]
        assert denied_rows and denied_rows[0]["engine"] == "mysql", denied_rows
        assert denied_rows[0]["connection"] == "prod" and denied_rows[0]["identity"] == CAROL[0]
        with open(out / "summary.csv", newline="", encoding="utf-8") as f:
            summary = dict(csv.reader(f))
        assert re.search(r"\bmysql \d+", summary["statements_by_engine"]), summary
        html = (out / "report.html").read_text(encoding="utf-8")
        assert "statements_by_engine" in html or "mysql" in html
    finally:
        with connect(mp, BOB_DBA, "dev") as conn, conn.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {table}")
