"""pgbench through a running dbsentry: many concurrent sessions, every query protocol,
and a new connection per transaction."""

from __future__ import annotations

import os
import re
import subprocess

import psycopg
import pytest

from support.pg import PgServer
from support.proxy import RunningProxy

pytestmark = pytest.mark.e2e

_ENV = {k: v for k, v in os.environ.items() if not k.startswith("PG")}


@pytest.fixture(scope="module")
def pgbench_data(pg_server: PgServer) -> None:
    """pgbench's tables at scale 1 in the test database, made directly (not through the proxy)."""
    with psycopg.connect(pg_server.dsn()) as direct:
        ready = direct.execute(
            "select to_regclass('public.pgbench_accounts') is not null"
            " and to_regclass('public.pgbench_branches') is not null"
            " and to_regclass('public.pgbench_tellers') is not null"
            " and to_regclass('public.pgbench_history') is not null"
        ).fetchone()
        if ready == (True,):
            count = direct.execute("select count(*) from pgbench_branches").fetchone()
            if count == (1,):
                return
    done = subprocess.run(
        [
            "pgbench",
            "-i",
            "-q",
            "-s",
            "1",
            "-h",
            pg_server.host,
            "-p",
            str(pg_server.port),
            "-U",
            pg_server.user,
            pg_server.dbname,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**_ENV, **({"PGPASSWORD": pg_server.password} if pg_server.password else {})},
    )
    assert done.returncode == 0, done.stderr


def pgbench(
    proxy: RunningProxy, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    identity = "bench@example.com"
    env = {
        **_ENV,
        "PGPASSWORD": proxy.token(identity, ("eng",)),
        "PGSSLMODE": "require",
        "PGCONNECT_TIMEOUT": "10",
    }
    return subprocess.run(
        ["pgbench", "-h", proxy.host, "-p", str(proxy.port), "-U", identity, *args, "prod"],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def check_run(done: subprocess.CompletedProcess[str]) -> tuple[int, float]:
    """Transactions processed and tps, after checking the run had no failures."""
    out = done.stdout
    assert done.returncode == 0, f"{out}\n{done.stderr}"
    assert "number of failed transactions: 0 (0.000%)" in out, out
    processed = re.search(r"number of transactions actually processed: (\d+)", out)
    tps = re.search(
        r"tps = ([\d.]+) \((?:without initial connection time|including reconnection times)\)", out
    )
    assert processed is not None and tps is not None, out
    assert "error" not in done.stderr.lower(), done.stderr
    return int(processed.group(1)), float(tps.group(1))


@pytest.mark.usefixtures("pgbench_data")
@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_select_only(proxy: RunningProxy, mode: str) -> None:
    done = pgbench(proxy, "-n", "-S", "-c", "4", "-j", "2", "-T", "3", "-M", mode)
    processed, tps = check_run(done)
    assert f"query mode: {mode}" in done.stdout
    assert "number of clients: 4" in done.stdout
    assert processed > 100
    assert tps > 0


@pytest.mark.usefixtures("pgbench_data")
def test_tpcb_writes(proxy: RunningProxy) -> None:
    # The default TPC-B-like script: BEGIN, UPDATEs, INSERT, END with prepared statements.
    done = pgbench(proxy, "-n", "-c", "2", "-j", "2", "-T", "1", "-M", "prepared")
    processed, tps = check_run(done)
    assert processed > 10 and tps > 0


@pytest.mark.usefixtures("pgbench_data")
def test_connection_per_transaction(proxy: RunningProxy) -> None:
    done = pgbench(proxy, "-n", "-S", "-C", "-c", "2", "-j", "2", "-T", "2")
    processed, tps = check_run(done)
    assert processed > 20  # each one a fresh TLS handshake, token check and upstream login
    assert tps > 0
