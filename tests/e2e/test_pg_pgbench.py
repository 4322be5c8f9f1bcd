"""pgbench through a running dbsentry: many concurrent sessions, every query protocol,
and a new connection per transaction."""

from __future__ import annotations

import re
import subprocess

import pytest

from support.pg import PgServer
from support.pgbench import ENV as _ENV
from support.pgbench import ensure_pgbench_tables
from support.proxy import RunningProxy

pytestmark = pytest.mark.e2e



@pytest.fixture(scope="module")
def pgbench_data(pg_server: PgServer) -> None:
    """pgbench's tables at scale 1 in the test database, made directly (not through the proxy)."""
    ensure_pgbench_tables(pg_server)


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
