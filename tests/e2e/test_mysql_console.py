"""MySQL sessions in the console: a session open on the MySQL listener is listed among the
live sessions of the HTTP API, like a PostgreSQL one, with its engine, connection,
environment and transaction state."""

from __future__ import annotations

import ssl
import time
from pathlib import Path

import httpx2
import pytest
import yaml

from support.mysql import DATABASE, HOST, PORT, server_reason
from support.pg import free_port
from support.proxy import run_proxy, wait_port

_REASON = server_reason()
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]
pymysql = pytest.importorskip("pymysql")


def test_a_mysql_session_is_live_in_the_console(tmp_path: Path) -> None:
    mysql_port, http_port = free_port(), free_port()
    config = {
        "state_dir": str(tmp_path / "state"),
        "listen": {"postgres": f"127.0.0.1:{free_port()}", "http": f"127.0.0.1:{http_port}", "mysql": f"127.0.0.1:{mysql_port}"},
        "connections": {
            "shop": {"engine": "mysql", "host": HOST, "port": PORT, "database": DATABASE, "user": "root", "environment": "staging"}
        },
        "limits": {"upstream_check_seconds": 0},
    }
    path = tmp_path / "dbsentry.yaml"
    path.write_text(yaml.safe_dump(config))
    with run_proxy(path) as proxy:
        wait_port("127.0.0.1", mysql_port, proxy.process, proxy.log_path)
        wait_port("127.0.0.1", http_port, proxy.process, proxy.log_path)
        auditor = proxy.token("sec@example.com", ("security",))
        conn = pymysql.connect(
            host="127.0.0.1", port=mysql_port, user="alice@example.com", password=proxy.token("alice@example.com", ("eng",)),
            database="shop", ssl={"check_hostname": False, "verify_mode": ssl.CERT_NONE}, connect_timeout=10,
        )  # fmt: skip
        with conn, conn.cursor() as cur, httpx2.Client(timeout=10) as http:
            cur.execute("BEGIN")
            cur.execute("SELECT 1")

            def live() -> list[dict[str, object]]:
                got = http.get(f"http://127.0.0.1:{http_port}/api/v1/sessions", headers={"Authorization": f"Bearer {auditor}"})
                assert got.status_code == 200, got.text
                return [s for s in got.json()["live"] if s["identity"] == "alice@example.com"]

            deadline = time.monotonic() + 5
            while not (rows := live()) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert len(rows) == 1, rows
            row = rows[0]
            assert (row["engine"], row["connection"], row["environment"], row["database"]) == ("mysql", "shop", "staging", DATABASE)
            assert row["tls"] is True and row["txn_status"] == "in_transaction", row
            cur.execute("COMMIT")
            assert live()[0]["txn_status"] == "idle"
        deadline = time.monotonic() + 5
        while live_after := [s for s in _live(http_port, auditor) if s["identity"] == "alice@example.com"]:
            assert time.monotonic() < deadline, live_after
            time.sleep(0.2)


def _live(http_port: int, token: str) -> list[dict[str, object]]:
    with httpx2.Client(timeout=10) as http:
        got = http.get(f"http://127.0.0.1:{http_port}/api/v1/sessions", headers={"Authorization": f"Bearer {token}"})
    assert got.status_code == 200, got.text
    live: list[dict[str, object]] = got.json()["live"]
    return live
