"""A huge result through a one-worker dbsentry: the worker's other sessions keep answering,
and a client that leaves in the middle of it has its statement stopped at once.

uvloop reads a busy socket up to 32 times (256 KiB each) before it runs anything else.
Relayed and checked by the production safety net (hex values are looked at closely), 8 MiB
of rows took the proxy 12-15 s on a loaded test machine: that long, nothing else in the
worker ran, and a client that had left was still being sent rows.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from support.pg import PgServer
from support.proxy import RunningProxy, run_proxy, write_config

# Both bound a duration (a few seconds): run alone after the others (docs/testing.md).
pytestmark = [pytest.mark.e2e, pytest.mark.serial]

# Rows as fast as the server makes them (a set-returning function in the select list
# streams; in FROM it is materialized first).
HUGE = "copy (select g, md5(g::text) from (select generate_series(1, 50000000) g) s) to stdout"


@pytest.fixture
def one_worker(pg_server: PgServer, tmp_path: Path) -> Iterator[RunningProxy]:
    """dbsentry with one worker (all sessions share one event loop), default settings."""
    with run_proxy(write_config(tmp_path, pg_server, extra={"workers": 1})) as running:
        yield running


def _direct(pg: PgServer) -> psycopg.Connection[Any]:
    return psycopg.connect(host=pg.host, port=pg.port, dbname=pg.dbname, user=pg.user, password=pg.password or None, autocommit=True)


def _huge_running(direct: psycopg.Connection[Any]) -> int:
    row = direct.execute(
        "select count(*) from pg_stat_activity where state = 'active' and pid <> pg_backend_pid()"
        " and query like '%generate_series(1, 50000000)%'"
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_other_sessions_answer_while_a_huge_result_streams(one_worker: RunningProxy) -> None:
    """A client reads a huge production result (masked, checked by the safety net) for a
    few seconds; meanwhile another client's ``select 1`` on the same worker answers."""
    other = psycopg.connect(one_worker.dsn(), autocommit=True)
    reader = psycopg.connect(one_worker.dsn(), autocommit=True)
    started = threading.Event()
    read = [0]

    def stream() -> None:
        # Reads until the test closes the connection under it.
        with contextlib.suppress(psycopg.Error, OSError), reader.cursor().copy(HUGE) as copy:
            for block in copy:
                read[0] += len(block)
                started.set()

    thread = threading.Thread(target=stream, daemon=True)
    try:
        other.execute("select 1")
        thread.start()
        assert started.wait(30), "no rows came"
        worst = 0.0
        until = time.monotonic() + 4
        while time.monotonic() < until:
            began = time.monotonic()
            assert other.execute("select 1").fetchone() == (1,)
            worst = max(worst, time.monotonic() - began)
            time.sleep(0.05)
        assert read[0] > 0
        # Before: 15 s and 48 s (one or more bursts of 8 MiB). Now one read of 256 KiB at a
        # time: at this rate about 0.5 s each, and a statement waits for a few turns.
        assert worst < 5, f"select 1 took {worst:.1f} s while another session streamed a huge result"
    finally:
        other.close()
        reader.pgconn.finish()  # (the streaming thread ends with an error, or has ended)
        thread.join(60)


def test_a_client_that_leaves_mid_result_has_its_statement_stopped_at_once(one_worker: RunningProxy, pg_server: PgServer) -> None:
    """The client reads a little of a huge result and closes its socket: the statement stops
    on the server promptly, instead of the proxy relaying and masking the rest for nobody."""
    with _direct(pg_server) as direct:
        reader = psycopg.connect(one_worker.dsn(), autocommit=True)
        with reader.cursor().copy(HUGE) as copy:
            for block in copy:
                assert block
                time.sleep(0.5)  # meanwhile the server fills the proxy's socket
                break
            assert _huge_running(direct) == 1
            reader.pgconn.finish()  # gone, with rows unread
            left = time.monotonic()
            with pytest.raises(psycopg.OperationalError):
                next(iter(copy))
        while _huge_running(direct):
            took = time.monotonic() - left
            assert took < 4, f"the statement still runs {took:.1f} s after its client left"
            time.sleep(0.05)
        assert one_worker.alive()
