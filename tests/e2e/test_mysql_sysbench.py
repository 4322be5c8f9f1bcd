"""sysbench's OLTP workloads through the governed MySQL listener to the real MariaDB:
no errors but the server's own deadlocks (retried by sysbench, as directly), no reconnects,
and every statement sysbench sent has its audit record.

sysbench prepares its tables directly on the server; then ``oltp_read_only`` and
``oltp_read_write`` (prepared statements, the binary protocol, transactions, point and
range selects, UPDATE/DELETE/INSERT by primary key) run through dbsentry in production as
a human identity, over TLS with a token as the password."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from dbsentry.server.tls import write_self_signed
from support.mysql import HOST, PORT, MySQLProxy, run_mysql_proxy, server_reason
from support.proxy import dbsentry_cli

_REASON = server_reason()
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(_REASON is not None, reason=_REASON or ""),
    pytest.mark.skipif(shutil.which("sysbench") is None, reason="sysbench is not installed (Debian: apt-get install sysbench)"),
]
pymysql = pytest.importorskip("pymysql")

DATABASE = "dbsentry_sysbench_e2e"
IDENTITY = "alice@example.com"
TABLES, ROWS = 2, 10_000


def _sysbench(workload: str, *args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sysbench", workload, "--db-driver=mysql", f"--tables={TABLES}", f"--table-size={ROWS}", *args],
        capture_output=True, text=True, timeout=timeout, cwd=cwd,
    )  # fmt: skip


@pytest.fixture(scope="module")
def sb_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MySQLProxy, Path]]:
    directory = tmp_path_factory.mktemp("sysbench")
    with pymysql.connect(host=HOST, port=PORT, user="root") as conn, conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {DATABASE}")
        cur.execute(f"CREATE DATABASE {DATABASE}")
    direct = (f"--mysql-host={HOST}", f"--mysql-port={PORT}", "--mysql-user=root", f"--mysql-db={DATABASE}")
    prepared = _sysbench("oltp_read_write", *direct, "prepare")
    assert prepared.returncode == 0, prepared.stderr
    connection = {"engine": "mysql", "host": HOST, "port": PORT, "database": DATABASE, "user": "root", "environment": "production"}
    try:
        with run_mysql_proxy(directory, connections={"sb": connection}) as running:
            # sysbench's --mysql-ssl=on reads these three files from its working directory
            # (names built into it): the proxy's certificate as the CA, and a client pair
            # the proxy never asks for.
            tls = directory / "sysbench-tls"
            tls.mkdir()
            (tls / "cacert.pem").write_bytes((directory / "state" / "tls" / "server.crt").read_bytes())
            write_self_signed(tls / "client-cert.pem", tls / "client-key.pem", "localhost", days=1)
            yield running, tls
    finally:
        with pymysql.connect(host=HOST, port=PORT, user="root") as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {DATABASE}")


def _run(sb: tuple[MySQLProxy, Path], workload: str) -> dict[str, int]:
    proxy, tls = sb
    done = _sysbench(
        workload,
        f"--mysql-host={HOST}", f"--mysql-port={proxy.port}", f"--mysql-user={IDENTITY}",
        f"--mysql-password={proxy.token(IDENTITY)}", "--mysql-db=sb", "--mysql-ssl=on",
        # Only the server's own deadlocks and lock timeouts (retried by sysbench, as against
        # the server directly) are let through; any other error ends the run with FATAL.
        "--mysql-ignore-errors=1213,1205", "--threads=4", "--time=3", "--report-interval=0", "run",
        cwd=tls,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    out = done.stdout

    def number(label: str) -> int:
        found = re.search(rf"{label}:\s+(\d+)", out)
        assert found is not None, out
        return int(found.group(1))

    return {
        "transactions": number("transactions"),
        "queries": number("queries"),
        "errors": number("ignored errors"),
        "reconnects": number("reconnects"),
    }


def _audited(proxy: MySQLProxy) -> list[dict[str, object]]:
    out = dbsentry_cli("audit", "search", "--connection", "sb", "--limit", "0", "--json", config=proxy.proxy.config_path)
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def test_oltp_read_only_and_read_write_run_without_errors_and_every_statement_is_audited(
    sb_proxy: tuple[MySQLProxy, Path],
) -> None:
    proxy = sb_proxy[0]
    before = len(_audited(proxy))
    read_only = _run(sb_proxy, "oltp_read_only")
    read_write = _run(sb_proxy, "oltp_read_write")
    assert read_only["errors"] == 0, read_only  # reads take no locks: no error at all
    for result in (read_only, read_write):
        assert result["transactions"] > 0 and result["reconnects"] == 0, result
        assert result["errors"] <= result["transactions"] // 20, result  # deadlocks: rare, and the server's
    records = _audited(proxy)[: len(_audited(proxy)) - before]  # newest first
    sent = read_only["queries"] + read_write["queries"]
    # Every statement sysbench counts (BEGIN and COMMIT included) has its record, allowed,
    # with its outcome; the prepared statements' PREPAREs come on top.
    executed = [r for r in records if r.get("command") != "PREPARE"]
    assert sent > 500 and len(executed) >= sent, (len(executed), sent)
    assert {r["decision"] for r in records} == {"allow"}, {r["decision"] for r in records}
    assert all(r["engine"] == "mysql" and r["identity"] == IDENTITY for r in records)
    commands = {str(r.get("command")) for r in records}
    assert {"SELECT", "UPDATE", "DELETE", "INSERT"} <= commands, commands
