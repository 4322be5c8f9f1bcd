"""Lazy upstream connections: a logged-in client holds no PostgreSQL backend until its
first statement, so many more clients can idle than the server has connections."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import struct
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from support.pg import PgServer
from support.proxy import RunningProxy, run_proxy, write_config
from support.tcpproxy import TcpForwarder

pytestmark = pytest.mark.e2e

_ENV = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
# What a client is told at login, compared with what PostgreSQL itself tells it.
REPORTED = (
    "application_name",
    "client_encoding",
    "DateStyle",
    "integer_datetimes",
    "IntervalStyle",
    "is_superuser",
    "server_encoding",
    "server_version",
    "session_authorization",
    "standard_conforming_strings",
    "TimeZone",
)


def backends(pg: PgServer, application_name: str) -> int:
    """PostgreSQL backends whose application_name matches (a LIKE pattern)."""
    with psycopg.connect(pg.dsn()) as direct:
        row = direct.execute(
            "select count(*) from pg_stat_activity where application_name like %s", (application_name,)
        ).fetchone()
    assert row is not None
    return int(row[0])


def app_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def connect(proxy: RunningProxy, **kw: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(proxy.dsn(dbname="staging", **kw), autocommit=True)


def test_the_first_client_logs_in_upstream_at_once(fresh_proxy: RunningProxy, pg_server: PgServer) -> None:
    name = app_name("lazy-first")
    with connect(fresh_proxy, application_name=name) as conn:
        # Nothing was known about this connection's server: it was asked, as always.
        assert backends(pg_server, name) == 1
        assert conn.execute("select current_setting('application_name')").fetchone() == (name,)


def test_a_logged_in_client_has_no_backend_until_its_first_query(
    fresh_proxy: RunningProxy, pg_server: PgServer
) -> None:
    with connect(fresh_proxy) as first:
        first.execute("select 1")
    name = app_name("lazy-psycopg")
    with connect(fresh_proxy, application_name=name) as conn:
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert backends(pg_server, name) == 0
        # A cancel request for a session with nothing running (and no backend) is harmless.
        conn.cancel_safe()
        assert backends(pg_server, name) == 0
        row = conn.execute("select current_setting('application_name'), 40 + 2").fetchone()
        assert row == (name, 42)
        assert backends(pg_server, name) == 1
        with conn.transaction():
            conn.execute("create temporary table lazy_t (id int)")
            conn.execute("insert into lazy_t values (1), (2)")
        assert conn.execute("select count(*) from lazy_t").fetchone() == (2,)
    assert fresh_proxy.alive()


def _psql_env() -> dict[str, str]:
    return {**_ENV, "LC_ALL": "C"}


def test_psql_gets_its_backend_at_its_first_query(fresh_proxy: RunningProxy, pg_server: PgServer) -> None:
    dsn = fresh_proxy.dsn(dbname="staging", application_name="lazy-psql-warmup")
    # The first psql teaches the proxy how the server answers psql's settings.
    warm = subprocess.run(
        ["psql", dsn, "-X", "-q", "-A", "-t", "-c", "select 1"],
        capture_output=True,
        text=True,
        env=_psql_env(),
        timeout=30,
    )
    assert warm.returncode == 0, warm.stderr
    name = app_name("lazy-psql")
    proc = subprocess.Popen(
        ["psql", fresh_proxy.dsn(dbname="staging", application_name=name), "-X", "-q", "-A", "-t"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_psql_env(),
    )
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write("\\echo logged-in\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "logged-in\n"
        assert backends(pg_server, name) == 0
        proc.stdin.write("select 40 + 2, current_setting('application_name');\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == f"42|{name}\n"
        assert backends(pg_server, name) == 1
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert err == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_parameter_status_reflects_the_clients_settings(fresh_proxy: RunningProxy, pg_server: PgServer) -> None:
    settings = {"client_encoding": "latin1", "options": "-c DateStyle=German -c TimeZone=Europe/Paris"}
    with connect(fresh_proxy, application_name="lazy-settings-warmup", **settings) as first:
        first.execute("select 1")
    name = app_name("lazy-settings")
    with psycopg.connect(pg_server.dsn(application_name=name, **settings)) as direct:
        expected = {p: direct.info.parameter_status(p) for p in REPORTED}
    assert expected["client_encoding"] == "LATIN1"
    assert expected["DateStyle"] == "German, DMY"
    with connect(fresh_proxy, application_name=name, **settings) as conn:
        assert backends(pg_server, name) == 0
        assert {p: conn.info.parameter_status(p) for p in REPORTED} == expected
        assert conn.execute("show client_encoding").fetchone() == ("LATIN1",)
        assert conn.execute("show datestyle").fetchone() == ("German, DMY",)
        assert {p: conn.info.parameter_status(p) for p in REPORTED} == expected


def test_parameter_status_without_settings_matches_the_server(fresh_proxy: RunningProxy, pg_server: PgServer) -> None:
    with connect(fresh_proxy) as first:
        first.execute("select 1")
    with psycopg.connect(pg_server.dsn()) as direct:
        expected = {p: direct.info.parameter_status(p) for p in REPORTED}
    with connect(fresh_proxy) as conn:
        assert {p: conn.info.parameter_status(p) for p in REPORTED} == expected


# ---------------------------------------------------------------------------------------
# many idle clients


def _frame(t: bytes, body: bytes = b"") -> bytes:
    return t + struct.pack("!I", len(body) + 4) + body


class RawClient:
    """A client speaking the protocol itself, over TLS: logs in with a token, then idles."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def login(cls, proxy: RunningProxy, token: str, application_name: str, database: str = "staging") -> RawClient:
        reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
        writer.write(struct.pack("!II", 8, 80877103))
        assert await reader.readexactly(1) == b"S"
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        await writer.start_tls(ctx)
        params = {"user": "alice@example.com", "database": database, "application_name": application_name}
        body = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items()) + b"\0"
        writer.write(struct.pack("!II", len(body) + 8, 196608) + body)
        client = cls(reader, writer)
        ((_, auth),) = await client.until(b"R")
        assert struct.unpack("!i", auth[:4])[0] == 3
        writer.write(_frame(b"p", token.encode() + b"\0"))
        got = await client.until(b"Z")
        assert got[0][0] == b"R" and got[-1] == (b"Z", b"I")
        return client

    async def until(self, last: bytes) -> list[tuple[bytes, bytes]]:
        got = []
        while True:
            head = await self.reader.readexactly(5)
            body = await self.reader.readexactly(struct.unpack("!I", head[1:])[0] - 4)
            assert head[:1] != b"E", body
            got.append((head[:1], body))
            if head[:1] == last:
                return got

    async def select_1(self) -> bytes:
        self.writer.write(_frame(b"Q", b"SELECT 1\0"))
        rows = [body for t, body in await self.until(b"Z") if t == b"D"]
        assert len(rows) == 1
        return rows[0][6:]

    async def close(self) -> None:
        self.writer.write(_frame(b"X"))
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()


def test_more_idle_clients_than_the_server_has_connections(fresh_proxy: RunningProxy, pg_server: PgServer) -> None:
    with psycopg.connect(pg_server.dsn()) as direct:
        row = direct.execute("show max_connections").fetchone()
    assert row is not None
    n = max(300, int(row[0]) + 50)
    prefix = app_name("lazy-idle")
    token = fresh_proxy.token("alice@example.com", ("eng",))
    with connect(fresh_proxy) as first:
        first.execute("select 1")

    async def main() -> None:
        sem = asyncio.Semaphore(50)

        async def one(i: int) -> RawClient:
            async with sem:
                return await RawClient.login(fresh_proxy, token, f"{prefix}-{i}")

        clients = await asyncio.gather(*(one(i) for i in range(n)))
        try:
            assert len(clients) == n  # every one of them is logged in
            assert await asyncio.to_thread(backends, pg_server, f"{prefix}-%") == 0
            sample = clients[:: n // 20][:20]
            assert await asyncio.gather(*(c.select_1() for c in sample)) == [b"1"] * len(sample)
            assert await asyncio.to_thread(backends, pg_server, f"{prefix}-%") == len(sample)
            # The others are still there, and still work.
            assert await clients[1].select_1() == b"1"
        finally:
            await asyncio.gather(*(c.close() for c in clients))

    asyncio.run(main())
    assert fresh_proxy.alive()


# ---------------------------------------------------------------------------------------
# a burst of clients before anything is known about the server


@pytest.fixture
def limited(pg_server: PgServer, tmp_path: Path) -> Iterator[tuple[RunningProxy, str]]:
    """A fresh proxy whose connection "limited" logs in as a role allowed 5 connections."""
    role = f"flight_{uuid.uuid4().hex[:10]}"
    password = uuid.uuid4().hex
    with psycopg.connect(pg_server.dsn(), autocommit=True) as admin:
        admin.execute(
            sql.SQL("create role {} login connection limit 5 password {}").format(
                sql.Identifier(role), sql.Literal(password)
            )
        )
    try:
        conn = {
            "host": pg_server.host,
            "port": pg_server.port,
            "database": pg_server.dbname,
            "user": role,
            "password": password,
            "environment": "staging",
        }
        # A hundred TLS handshakes at once on a loaded 2-CPU machine can take longer than the
        # default 10 s startup timeout, which is not what this test is about.
        config = write_config(tmp_path, pg_server, connections={"limited": conn}, extra={"limits": {"startup_timeout_seconds": 60}})
        with run_proxy(config) as proxy:
            yield proxy, role
    finally:
        with psycopg.connect(pg_server.dsn(), autocommit=True) as admin:
            admin.execute("select pg_terminate_backend(pid) from pg_stat_activity where usename = %s", (role,))
            admin.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(role)))


def role_backends(pg: PgServer, role: str) -> list[str]:
    """The application_name of each backend of ``role``."""
    with psycopg.connect(pg.dsn()) as direct:
        rows = direct.execute(
            "select application_name from pg_stat_activity where usename = %s and backend_type = 'client backend'",
            (role,),
        ).fetchall()
    return [str(r[0]) for r in rows]


def test_a_burst_of_first_clients_waits_for_one_login(
    limited: tuple[RunningProxy, str], pg_server: PgServer
) -> None:
    proxy, role = limited
    token = proxy.token("alice@example.com", ("eng",))
    prefix = app_name("flight")
    n = 100

    async def main() -> None:
        async with asyncio.timeout(60):
            # All at once, right after the proxy started: nothing is known of the server yet.
            clients = await asyncio.gather(
                *(RawClient.login(proxy, token, f"{prefix}-{i}", database="limited") for i in range(n))
            )
        try:
            assert len(clients) == n  # every one logged in, with a role allowed 5 connections
            # One of them logged in upstream; the others waited for it and were greeted.
            (first,) = await asyncio.to_thread(role_backends, pg_server, role)
            leader = int(first.rsplit("-", 1)[1])
            sample = [clients[leader], *(c for i, c in enumerate(clients) if i != leader)][:5]
            async with asyncio.timeout(30):
                assert await asyncio.gather(*(c.select_1() for c in sample)) == [b"1"] * 5
            assert len(await asyncio.to_thread(role_backends, pg_server, role)) == 5
        finally:
            await asyncio.gather(*(c.close() for c in clients))

    asyncio.run(main())
    assert proxy.alive()
    log = proxy.log_text()
    assert "session.waiting_for_login" in log
    assert "session.login_wait_timed_out" not in log


@pytest.fixture
def silent(pg_server: PgServer, tmp_path: Path) -> Iterator[RunningProxy]:
    """A fresh proxy whose connection "silent" reaches a server that accepts connections
    and never answers, with a connect timeout of 1 s."""
    with socket.create_server(("127.0.0.1", 0), backlog=64) as listener:
        conn = {
            "host": "127.0.0.1",
            "port": listener.getsockname()[1],
            "database": "nothing",
            "user": "nobody",
            "connect_timeout_seconds": 1,
        }
        with run_proxy(write_config(tmp_path, pg_server, connections={"silent": conn})) as proxy:
            yield proxy


def test_clients_waiting_for_a_login_that_hangs_give_up_after_the_connect_timeout(silent: RunningProxy) -> None:
    async def one() -> str:
        with pytest.raises(psycopg.OperationalError) as err:
            await psycopg.AsyncConnection.connect(silent.dsn(dbname="silent"))
        return str(err.value)

    async def main() -> list[str]:
        async with asyncio.timeout(8):  # 1 s waiting at most, then 1 s for a login of its own
            return await asyncio.gather(*(one() for _ in range(10)))

    for message in asyncio.run(main()):
        assert 'dbsentry: the upstream of connection "silent" did not complete login within 1s' in message
    log = silent.log_text()
    assert "session.waiting_for_login" in log
    assert "session.login_wait_timed_out" in log
    assert silent.alive()


# ---------------------------------------------------------------------------------------
# an upstream that went away


@pytest.fixture
def flaky(pg_server: PgServer, tmp_path: Path) -> Iterator[tuple[RunningProxy, TcpForwarder]]:
    """A proxy whose connection "flaky" reaches PostgreSQL through a forwarder a test can stop."""
    with TcpForwarder(pg_server.host, pg_server.port) as forwarder:
        flaky_conn = {
            "host": forwarder.host,
            "port": forwarder.port,
            "database": pg_server.dbname,
            "user": pg_server.user,
            "environment": "staging",
            "connect_timeout_seconds": 5,
            **({"password": pg_server.password} if pg_server.password else {}),
        }
        config = write_config(tmp_path, pg_server, connections={"flaky": flaky_conn})
        with run_proxy(config) as proxy:
            yield proxy, forwarder


def test_an_upstream_down_at_the_first_query_fails_it_clearly(flaky: tuple[RunningProxy, TcpForwarder]) -> None:
    proxy, forwarder = flaky
    with psycopg.connect(proxy.dsn(dbname="flaky"), autocommit=True) as first:
        first.execute("select 1")
    forwarder.down()
    # Logged in from what the proxy knows of the server...
    with psycopg.connect(proxy.dsn(dbname="flaky"), autocommit=True) as conn:
        # ... and told at its first query that the database cannot be reached.
        with pytest.raises(psycopg.OperationalError) as err:
            conn.execute("select 1")
        assert err.value.sqlstate == "08001"
        assert 'dbsentry: could not connect to the upstream of connection "flaky"' in str(err.value)
        assert conn.closed
    forwarder.up()
    with psycopg.connect(proxy.dsn(dbname="flaky"), autocommit=True) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
    assert proxy.alive()
