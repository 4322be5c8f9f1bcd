"""Backpressure, never loss: bulk pipelines of INSERTs through the governed proxy.

Three psycopg connections each pipeline N INSERTs (the extended protocol, one Sync per
pipeline) at once.  Every statement must run (no 58000: the proxy slows the clients down
instead of refusing), and every one must have its statement record, with its parameters,
in the audit trail (counted).  N is ``DBSENTRY_PIPELINE_ROWS`` (default 3,000 per
connection; the acceptance run of issue 17 uses 50,000).
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from support.audit import search
from support.pg import PgServer
from support.proxy import run_proxy, write_config

pytestmark = pytest.mark.e2e

ROWS = int(os.environ.get("DBSENTRY_PIPELINE_ROWS", "3000"))
CONNECTIONS = 3


@pytest.fixture
def table(pg_server: PgServer) -> Iterator[str]:
    name = f"audit_pipe_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_server.dsn(), autocommit=True) as direct:
        direct.execute(f"create table {name} (id bigint primary key, worker int not null, note text)")
    yield name
    with psycopg.connect(pg_server.dsn(), autocommit=True) as direct:
        direct.execute(f"drop table if exists {name}")


@pytest.mark.timeout(3600)
def test_pipelined_inserts_all_run_and_all_are_recorded(pg_server: PgServer, tmp_path: Path, table: str) -> None:
    config = write_config(tmp_path, pg_server)
    errors: list[BaseException] = []

    def worker(w: int, dsn: str) -> None:
        try:
            with psycopg.connect(dsn, autocommit=True) as conn, conn.pipeline(), conn.cursor() as cur:
                for n in range(ROWS):
                    cur.execute(
                        f"insert into {table} (id, worker, note) values (%s, %s, %s)",
                        (w * 10_000_000 + n, w, f"row {n} of worker {w}"),
                    )
        except BaseException as err:
            errors.append(err)

    with run_proxy(config) as proxy:
        dsn = proxy.dsn(dbname="staging")
        threads = [threading.Thread(target=worker, args=(w, dsn)) for w in range(CONNECTIONS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        assert not any(t.is_alive() for t in threads)
        log = proxy.log_text()
    assert not errors, errors[:3]
    assert "58000" not in log and "dropped" not in log
    with psycopg.connect(pg_server.dsn()) as direct:
        (count,) = direct.execute(f"select count(*) from {table}").fetchone()  # type: ignore[misc]
    assert count == CONNECTIONS * ROWS
    rows = search(config, "--table", table)
    # psycopg sends ints in binary: the trail shows their bytes as \\x hex
    ids = {int(r["params"][0][2:], 16) for r in rows if r["rows"] == 1}
    assert len(rows) == CONNECTIONS * ROWS
    assert ids == {w * 10_000_000 + n for w in range(CONNECTIONS) for n in range(ROWS)}
