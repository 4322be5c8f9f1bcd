"""psycopg 3 through a running dbsentry: the protocol features a Python application uses."""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg import errors
from psycopg.pq import TransactionStatus

from support.pg import PgServer
from support.proxy import RunningProxy

pytestmark = pytest.mark.e2e


@pytest.fixture
def conn(proxy: RunningProxy) -> Iterator[psycopg.Connection[Any]]:
    # staging: the tests that write use tables of their own, which production's baseline
    # policy would hold for approval.
    with psycopg.connect(proxy.dsn(dbname="staging"), autocommit=True) as c:
        yield c


@pytest.fixture
def table(proxy: RunningProxy) -> Iterator[str]:
    name = f"t_pg3_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(proxy.dsn(dbname="staging"), autocommit=True) as c:
        c.execute(
            f"create table {name} (id int primary key, note text, amount numeric, at timestamptz)"
        )
        yield name
        c.execute(f"drop table {name}")


def upstream_pid(c: psycopg.Connection[Any]) -> int:
    row = c.execute("select pg_backend_pid()").fetchone()
    assert row is not None
    return int(row[0])


SAMPLE = "select 42::int4, 'héllo'::text, 1.5::numeric, '2024-02-29 12:34:56+00'::timestamptz, '\\x00ff'::bytea, array[1,2,3]::int[], null::text"
EXPECTED = (
    42,
    "héllo",
    Decimal("1.5"),
    dt.datetime(2024, 2, 29, 12, 34, 56, tzinfo=dt.UTC),
    b"\x00\xff",
    [1, 2, 3],
    None,
)


@pytest.mark.parametrize("binary", [False, True])
def test_text_and_binary_results(conn: psycopg.Connection[Any], binary: bool) -> None:
    conn.execute("set timezone = 'UTC'")
    cur = conn.cursor(binary=binary)
    cur.execute(SAMPLE)
    assert cur.fetchone() == EXPECTED
    assert cur.pgresult is not None
    assert {cur.pgresult.fformat(i) for i in range(cur.pgresult.nfields)} == {1 if binary else 0}


def test_server_side_parameters(conn: psycopg.Connection[Any]) -> None:
    row = conn.execute(
        "select %s::int + %s::int, %s::text || '!', %s::uuid, %b::bytea, %s::jsonb ->> 'k'",
        (40, 2, "hi", uuid.UUID(int=7), b"\x00\x01", psycopg.types.json.Jsonb({"k": "v"})),
    ).fetchone()
    assert row == (42, "hi!", uuid.UUID(int=7), b"\x00\x01", "v")
    # A parameter is data, never SQL.
    assert conn.execute("select %s", ("'; drop table x; --",)).fetchone() == (
        "'; drop table x; --",
    )


def test_prepared_statements(conn: psycopg.Connection[Any]) -> None:
    query = "select %s::int * 2 /* prepared-test */"
    for i in range(20):
        assert conn.execute(query, (i,), prepare=True).fetchone() == (i * 2,)
    rows = conn.execute(
        "select name from pg_prepared_statements where statement like %s and name like '_pg3_%%'",
        ("%prepared-test%",),
    ).fetchall()
    assert len(rows) == 1


def test_pipeline_mode(conn: psycopg.Connection[Any], table: str) -> None:
    with conn.pipeline() as p:
        cur1 = conn.execute("select 1")
        conn.cursor().executemany(
            f"insert into {table} (id, note) values (%s, %s)", [(i, f"n{i}") for i in range(50)]
        )
        cur2 = conn.execute(f"select count(*), min(note) from {table}")
        cur3 = conn.execute("select %s::text", ("pipelined",))
        p.sync()
        assert cur1.fetchone() == (1,)
        assert cur2.fetchone() == (50, "n0")
        assert cur3.fetchone() == ("pipelined",)
    assert conn.info.transaction_status == TransactionStatus.IDLE


def test_pipeline_error_then_recovery(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(errors.DivisionByZero), conn.pipeline():
        conn.execute("select 1")
        conn.execute("select 1/0")
        conn.execute("select 2")
    assert conn.execute("select 'after'").fetchone() == ("after",)


def test_copy_from_stdin_and_to_stdout(conn: psycopg.Connection[Any], table: str) -> None:
    at = dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    rows = [(i, f"row {i}\twith tab", Decimal(i) / 4, at) for i in range(1000)]
    with conn.cursor().copy(f"copy {table} (id, note, amount, at) from stdin") as copy:
        for r in rows:
            copy.write_row(r)
    assert conn.execute(f"select count(*), sum(amount) from {table}").fetchone() == (
        1000,
        Decimal(999 * 1000 // 2) / 4,
    )

    cur = conn.cursor()
    with cur.copy(f"copy (select id, note, amount, at from {table} order by id) to stdout") as copy:
        copy.set_types(["int4", "text", "numeric", "timestamptz"])
        got = list(copy.rows())
    assert got == rows

    with cur.copy(
        f"copy (select id, note from {table} order by id limit 3) to stdout (format binary)"
    ) as copy:
        copy.set_types(["int4", "text"])
        assert list(copy.rows()) == [(i, f"row {i}\twith tab") for i in range(3)]
    # In step after COPY.
    assert conn.execute("select 'ok'").fetchone() == ("ok",)


def test_listen_notify_between_sessions(proxy: RunningProxy) -> None:
    with (
        psycopg.connect(proxy.dsn(), autocommit=True) as listener,
        psycopg.connect(proxy.dsn("bob@example.com"), autocommit=True) as sender,
    ):
        listener.execute("LISTEN dbs_events")
        sender.execute("NOTIFY dbs_events, 'payload-1'")
        got = list(listener.notifies(timeout=5, stop_after=1))
        # The sender is named by the pid its client was given (BackendKeyData), not by
        # its upstream backend's, so a client can tell which session notified it.
        assert [(n.channel, n.payload, n.pid) for n in got] == [
            ("dbs_events", "payload-1", sender.info.backend_pid)
        ]
        assert sender.info.backend_pid != upstream_pid(sender)


@pytest.mark.serial
@pytest.mark.parametrize("how", ["cancel", "cancel_safe"])
def test_cancel_from_another_thread(proxy: RunningProxy, how: str) -> None:
    with psycopg.connect(proxy.dsn(), autocommit=True) as c:
        canceller: Callable[[], None] = getattr(c, how)
        timer = threading.Timer(0.3, canceller)
        start = time.monotonic()
        timer.start()
        try:
            with pytest.raises(
                errors.QueryCanceled, match="canceling statement due to user request"
            ):
                c.execute("select pg_sleep(30)")
        finally:
            timer.join()
        assert time.monotonic() - start < 1.3
        assert c.execute("select 'usable'").fetchone() == ("usable",)


def test_a_cancel_returns_once_delivered_so_it_never_hits_the_next_statement(proxy: RunningProxy) -> None:
    """libpq's cancel returns when the server closes the cancel connection, after it has
    signalled the backend: a cancel sent while nothing runs cancels nothing. The proxy closes
    the client's cancel connection only once the upstream has the request, or a late cancel
    would stop the statement the client sends next."""
    with psycopg.connect(proxy.dsn(), autocommit=True) as c:
        for attempt in range(8):
            c.cancel_safe(timeout=10)
            assert c.execute("select pg_sleep(0.2), 'ran'").fetchone() == ("", "ran"), attempt


def test_transaction_status_after_error(proxy: RunningProxy) -> None:
    with psycopg.connect(proxy.dsn()) as c:
        assert c.info.transaction_status == TransactionStatus.IDLE
        c.execute("select 1")
        assert c.info.transaction_status == TransactionStatus.INTRANS
        with pytest.raises(errors.DivisionByZero):
            c.execute("select 1/0")
        assert c.info.transaction_status == TransactionStatus.INERROR
        with pytest.raises(errors.InFailedSqlTransaction):
            c.execute("select 1")
        c.rollback()
        assert c.info.transaction_status == TransactionStatus.IDLE
        assert c.execute("select 2").fetchone() == (2,)


def test_parameter_status(proxy: RunningProxy, pg_server: PgServer) -> None:
    with psycopg.connect(proxy.dsn(application_name="dbs-startup"), autocommit=True) as c:
        assert c.info.parameter_status("application_name") == "dbs-startup"
        with psycopg.connect(pg_server.dsn()) as direct:
            assert c.info.parameter_status("server_version") == direct.info.parameter_status(
                "server_version"
            )
        c.execute("set application_name = 'dbs-changed'")
        assert c.info.parameter_status("application_name") == "dbs-changed"
        c.execute("set timezone = 'Asia/Tokyo'")
        assert c.info.parameter_status("TimeZone") == "Asia/Tokyo"
        assert c.execute("select current_setting('application_name')").fetchone() == (
            "dbs-changed",
        )


def test_options_dbsentry_settings_consumed(proxy: RunningProxy) -> None:
    with psycopg.connect(
        proxy.dsn(options="-c dbsentry.approval=wait -c search_path=myschema"), autocommit=True
    ) as c:
        assert c.execute("show search_path").fetchone() == ("myschema",)
        # dbsentry.* settings are the proxy's; the upstream never saw them.
        assert c.execute("select current_setting('dbsentry.approval', true)").fetchone() in (
            (None,),
            ("",),
        )


def test_options_with_escaped_space(proxy: RunningProxy) -> None:
    opts = r"-c dbsentry.reason=ticket\ 42 -c application_name=two\ words"
    with psycopg.connect(proxy.dsn(options=opts), autocommit=True) as c:
        assert c.execute("show application_name").fetchone() == ("two words",)


def test_backend_pid_is_the_proxys_own(proxy: RunningProxy) -> None:
    with psycopg.connect(proxy.dsn(), autocommit=True) as c:
        reported = c.info.backend_pid
        real = upstream_pid(c)
        assert reported != real
        assert reported > 0
        # Cancel with the proxy's key still reaches the real backend.
        timer = threading.Timer(0.3, c.cancel_safe)
        timer.start()
        try:
            with pytest.raises(errors.QueryCanceled):
                c.execute("select pg_sleep(30)")
        finally:
            timer.join()
        assert upstream_pid(c) == real
