"""The MySQL listener with ``workers: 2``: every worker serves it (SO_REUSEPORT), the
connection ids name the worker, and a ``KILL`` that lands on the other worker than the
session it names is forwarded there, checked and answered as on one worker. PyMySQL
through a running dbsentry to the real MariaDB; one proxy for the module."""

from __future__ import annotations

import json
import shutil
import signal
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from support.deploy import get_json, wait_until
from support.mysql import (
    MySQLProxy,
    SleepingQuery,
    mariadb_cli,
    pymysql_connect,
    run_mysql_proxy,
    server_reason,
)
from support.pg import free_port

_REASON = server_reason()
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]
pymysql = pytest.importorskip("pymysql")

ALICE = "alice@example.com"
BOB = "bob@example.com"
WORKER_BITS = 6  # the low bits of a connection id name its worker (docs/deployment.md)


def worker_of(conn: Any) -> int:
    return int(conn.thread_id()) & ((1 << WORKER_BITS) - 1)


@pytest.fixture(scope="module")
def mp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MySQLProxy, str]]:
    directory = tmp_path_factory.mktemp("mysql-workers")
    port, http = free_port(), f"127.0.0.1:{free_port()}"
    listen = {"postgres": f"127.0.0.1:{free_port()}", "http": http, "mysql": f"127.0.0.1:{port}"}
    extra = {"workers": 2, "listen": listen, "limits": {"upstream_check_seconds": 0, "drain_seconds": 3}}
    with run_mysql_proxy(directory, port=port, extra=extra) as running:
        wait_until(lambda: running.proxy.log_text().count("dbsentry ready") >= 2, "both workers ready")
        wait_until(lambda: get_json(f"http://{http}/healthz")[0] == 200, "the HTTP listener")
        yield running, f"http://{http}"


def connect(mp: MySQLProxy, user: str = ALICE, database: str | None = "dev") -> Any:
    return pymysql_connect(mp.port, user, mp.token(user), database, autocommit=True)


def on_each_worker(mp: MySQLProxy, user: str = ALICE, database: str | None = "dev") -> tuple[dict[int, Any], list[Any]]:
    """A connection of ``user`` on each worker, and the others opened to find them."""
    found: dict[int, Any] = {}
    spare: list[Any] = []
    for _ in range(40):  # the kernel spreads them: 2**-39 to find one worker only
        conn = connect(mp, user, database)
        if worker_of(conn) in found:
            spare.append(conn)
        else:
            found[worker_of(conn)] = conn
        if len(found) == 2:
            return found, spare
    raise AssertionError(f"every connection landed on worker {set(found)}")


def close_all(*conns: Any) -> None:
    for conn in conns:
        conn.close()


def test_clients_land_on_both_workers_and_the_console_lists_them(mp: tuple[MySQLProxy, str]) -> None:
    proxy, base = mp
    conns = [connect(proxy) for _ in range(12)]
    try:
        workers = {"{}:{}".format(*conn._sock.getsockname()[:2]): worker_of(conn) for conn in conns}  # by client address
        assert set(workers.values()) == {0, 1}, workers  # 2**-11 to fail
        for conn in conns:
            assert 0 < conn.thread_id() < 2**31  # fits the handshake's 4 bytes, as a signed id too
            with conn.cursor() as cur:
                cur.execute("SELECT CONNECTION_ID()")  # the server's own id stays upstream
                (upstream_id,) = cur.fetchone()
                assert upstream_id != conn.thread_id()
        # The sessions API (worker 0's HTTP listener) lists every worker's MySQL sessions.
        auditor = proxy.token("sec@example.com", ("security",))
        req = urllib.request.Request(f"{base}/api/v1/sessions", headers={"Authorization": f"Bearer {auditor}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            live = json.loads(r.read())["live"]
        listed = {row["client_addr"]: row for row in live if row["client_addr"] in workers}
        assert {addr: row["worker"] for addr, row in listed.items()} == workers
        assert {row["engine"] for row in listed.values()} == {"mysql"}
        # /readyz counts both workers' MySQL listeners.
        status, body = get_json(f"{base}/readyz")
        assert status == 200 and body["checks"]["listener:mysql"] is True, body
        assert body["workers_listening"]["mysql"] == {"workers": 2, "listening": 2}, body
    finally:
        close_all(*conns)


def test_kill_query_from_the_other_worker_cancels_within_seconds(mp: tuple[MySQLProxy, str]) -> None:
    proxy, _ = mp
    alice, spare = on_each_worker(proxy)
    bobs, bob_spare = on_each_worker(proxy, BOB, None)
    killers, killer_spare = on_each_worker(proxy, ALICE, None)  # a session for KILL only
    try:
        victim = alice[0]
        sleeping = SleepingQuery(victim)
        target = victim.thread_id()
        # Another identity's KILL, from the other worker: refused as on one worker.
        with pytest.raises(pymysql.err.OperationalError) as err, bobs[1].cursor() as cur:
            cur.execute(f"KILL QUERY {target}")
        assert err.value.args == (1095, f"dbsentry: you are not owner of thread {target} (KILL works on your own sessions)")
        assert sleeping.ended is None  # still sleeping
        forwarded = proxy.proxy.log_text().count("KILL from another worker")
        with killers[1].cursor() as cur:
            killed_at = time.monotonic()
            cur.execute(f"KILL QUERY {target}")
            sleeping.join(10)
            assert sleeping.ended is not None and sleeping.ended - killed_at < 5.0, sleeping.error
            assert sleeping.interrupted, (sleeping.rows, sleeping.error)
            assert proxy.proxy.log_text().count("KILL from another worker") > forwarded  # worker 0 did it
            # An id of worker 0 that no session has: unknown, as on one worker.
            unknown = ((target >> WORKER_BITS) ^ 1) << WORKER_BITS
            with pytest.raises(pymysql.err.OperationalError) as err:
                cur.execute(f"KILL QUERY {unknown}")
            assert err.value.args == (1094, f"dbsentry: unknown thread id: {unknown}")
        with victim.cursor() as cur:  # KILL QUERY leaves the session
            cur.execute("SELECT 3")
            assert cur.fetchone() == (3,)
    finally:
        close_all(*alice.values(), *spare, *bobs.values(), *bob_spare, *killers.values(), *killer_spare)


def test_kill_connection_from_the_other_worker(mp: tuple[MySQLProxy, str]) -> None:
    proxy, _ = mp
    alice, spare = on_each_worker(proxy)
    try:
        victim, killer = alice[1], alice[0]
        sleeping = SleepingQuery(victim)
        with killer.cursor() as cur:
            killed_at = time.monotonic()
            cur.execute(f"KILL CONNECTION {victim.thread_id()}")
        sleeping.join(10)
        assert sleeping.ended is not None and sleeping.ended - killed_at < 5.0
        assert sleeping.error is not None, sleeping.rows  # the connection is gone, not a result
        with pytest.raises(pymysql.err.MySQLError), victim.cursor() as cur:
            cur.execute("SELECT 1")
        with killer.cursor() as cur:  # the killer goes on
            cur.execute("SELECT 4")
            assert cur.fetchone() == (4,)
    finally:
        close_all(*alice.values(), *spare)


@pytest.mark.skipif(shutil.which("mariadb") is None, reason="the mariadb command-line client is not installed")
def test_ctrl_c_in_the_mariadb_client_kills_wherever_its_kill_lands(mp: tuple[MySQLProxy, str]) -> None:
    """The client's Ctrl-C sends ``KILL QUERY`` on a new connection, which the kernel gives
    either worker: both ways end the statement."""
    proxy, _ = mp
    log = proxy.proxy.log_text
    with mariadb_cli(proxy.port, ALICE, proxy.token(ALICE), "dev") as cli:
        before = log().count("KILL from another worker")
        for attempt in range(16):  # each KILL lands on the other worker with odds 1/2
            seconds, out = cli.ctrl_c_a_sleep()
            assert seconds < 5.0, out
            assert b"query killed" in out and b"ERROR 1317" in out, out
            forwarded = log().count("KILL from another worker") - before
            if attempt >= 1 and 0 < forwarded < attempt + 1:
                break  # some went to the other worker, some not: both paths work
        else:
            raise AssertionError("every Ctrl-C's KILL landed on the same side")


def test_sigterm_drains_the_mysql_sessions_then_stops(mp: tuple[MySQLProxy, str]) -> None:
    """Last: it stops the module's proxy. A statement running when SIGTERM comes finishes
    (the drain), the session ends by itself, and the node stops without waiting out the
    drain; a new client is refused meanwhile."""
    proxy, _ = mp
    conn = connect(proxy)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
        with ThreadPoolExecutor(1) as pool:

            def run() -> Any:
                with conn.cursor() as cur:
                    cur.execute("SELECT SLEEP(1.5), 42")
                    return cur.fetchone()

            running = pool.submit(run)
            time.sleep(0.4)
            proxy.proxy.process.send_signal(signal.SIGTERM)
            wait_until(lambda: "draining MySQL sessions" in proxy.proxy.log_text(), "the drain to start", timeout=5)


            def refused() -> bool:
                try:
                    connect(proxy).close()
                except pymysql.err.OperationalError:
                    return True
                return False

            # no new client while draining (once every worker has had its SIGTERM)
            wait_until(refused, "new clients refused", timeout=1)
            assert not running.done()  # while the statement still runs
            assert running.result(timeout=10) == (0, 42)  # the running statement finished
    finally:
        conn.close()  # the session ends: its worker may exit now
    proxy.proxy.process.wait(15)
    assert proxy.proxy.process.returncode == 0
    assert "MySQL sessions still open after the drain" not in proxy.proxy.log_text()
