"""``kill -9`` of the proxy under concurrent writes loses no audit record (effect, sync
and write durability: each writes a record to the OS before its statement runs).

Eight sessions insert rows with unique ids as fast as they can, half with literal SQL
(simple protocol), half with parameters (extended protocol); half commit each INSERT by
itself, half two INSERTs at a time in an explicit transaction block.  The proxy is killed with
SIGKILL in the middle.  Every row the database committed must have its statement record
in the log the proxy left behind, and the log must verify.
"""

from __future__ import annotations

import re
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from support.audit import search, verify
from support.pg import PgServer
from support.proxy import run_proxy, write_config

pytestmark = pytest.mark.e2e

WORKERS = 8
LOAD_SECONDS = 1.5  # of load before the kill; the whole run is about 3 s


@pytest.fixture
def table(pg_server: PgServer) -> Iterator[str]:
    name = f"audit_kill9_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_server.dsn(), autocommit=True) as direct:
        direct.execute(f"create table {name} (id bigint primary key, worker int not null)")
    yield name
    with psycopg.connect(pg_server.dsn(), autocommit=True) as direct:
        direct.execute(f"drop table if exists {name}")


@pytest.mark.parametrize("durability", ["effect", "sync", "write"])
def test_kill9_under_load_loses_no_statement_record(
    pg_server: PgServer, tmp_path: Path, table: str, durability: str
) -> None:
    config = write_config(tmp_path, pg_server, extra={"audit": {"durability": durability}})
    stop = threading.Event()
    sent = [0] * WORKERS
    ended_by: list[BaseException | None] = [None] * WORKERS

    def worker(w: int, dsn: str) -> None:
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:

                def insert() -> None:
                    sent[w] += 1
                    row_id = w * 10_000_000 + sent[w]
                    if w % 2:
                        conn.execute(
                            f"insert into {table} (id, worker) values (%t, %t)", (row_id, w)
                        )
                    else:
                        conn.execute(f"insert into {table} (id, worker) values ({row_id}, {w})")

                while not stop.is_set():
                    if w < WORKERS // 2:
                        insert()  # autocommit: each INSERT commits by itself
                    else:
                        # In a block, an INSERT goes once its record is written (its COMMIT
                        # waits for durability under effect).
                        with conn.transaction():
                            insert()
                            insert()
        except psycopg.Error as err:
            ended_by[w] = err

    with run_proxy(config) as proxy:
        dsn = proxy.dsn()
        threads = [threading.Thread(target=worker, args=(w, dsn)) for w in range(WORKERS)]
        for t in threads:
            t.start()
        time.sleep(LOAD_SECONDS)
        assert all(t.is_alive() for t in threads), f"a worker stopped before the kill: {ended_by}"
        proxy.process.send_signal(signal.SIGKILL)
        assert proxy.process.wait(10) == -signal.SIGKILL
        killed_at = time.monotonic()
        for t in threads:
            t.join(10)
        stop.set()
        assert not any(t.is_alive() for t in threads)
        assert time.monotonic() - killed_at < 10
    # Every session was cut off by the kill, in the middle of its loop.
    assert all(isinstance(e, psycopg.OperationalError) for e in ended_by), ended_by

    with psycopg.connect(pg_server.dsn()) as direct:
        committed = {r[0] for r in direct.execute(f"select id from {table}")}
    assert len(committed) >= 50, f"too little load to mean anything: {len(committed)} rows"
    assert {i // 10_000_000 for i in committed} == set(range(WORKERS))

    audited: set[int] = set()
    literal = re.compile(rf"^insert into {table} \(id, worker\) values \((\d+), \d+\)$")
    for row in search(config, "--table", table):
        assert row["identity"] == "alice@example.com" and row["decision"] == "allow"
        m = literal.match(row["statement"])
        if m:
            assert row["params"] is None
            audited.add(int(m.group(1)))
        else:
            assert row["statement"] == f"insert into {table} (id, worker) values ($1, $2)", row
            audited.add(int(row["params"][0]))
    missing = sorted(committed - audited)
    assert not missing, f"{len(missing)} committed rows have no audit record, e.g. {missing[:10]}"
    # Nothing was audited that was never sent.
    assert all(i % 10_000_000 <= sent[i // 10_000_000] for i in audited)

    done = verify(config)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "chain: INTACT" in done.stdout
