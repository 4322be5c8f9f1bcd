"""SIGHUP reloads the configuration's connections in every worker (``workers: 2``), end to
end: real clients through a running dbsentry to real PostgreSQL servers (and MariaDB, for
the MySQL listener; one process).

A connection's upstream demands a password (the ``auth_cluster`` fixture); the others are
the trust-auth test server.  Each test changes the configuration file, signals the
supervisor, and puts the file back.
"""

from __future__ import annotations

import json
import os
import re
import signal
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from support.deploy import get_json, wait_until
from support.mysql import pymysql_connect, run_mysql_proxy, server_reason
from support.pg import AuthCluster, PgServer, free_port
from support.proxy import RunningProxy, run_proxy, write_config

pytestmark = pytest.mark.e2e

ROLE = f"reload_{uuid.uuid4().hex[:10]}"
PASSWORD_A = "reload-A-S3cret"
PASSWORD_B = "reload-B-S3cret"
APPLIED = "configuration reloaded: connections applied to new sessions"
REJECTED = "configuration reload rejected; nothing changed"
SESSIONS = 12  # held open at once: both workers get some (2**-11 to miss one)


@pytest.fixture(scope="module")
def reloading(
    pg_server: PgServer, auth_cluster: AuthCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RunningProxy, str]]:
    auth_cluster.create_role(ROLE, PASSWORD_A)
    directory = tmp_path_factory.mktemp("reload")
    rotating = {
        "host": auth_cluster.host,
        "port": auth_cluster.port,
        "database": "postgres",
        "user": ROLE,
        "password": PASSWORD_A,
        "environment": "staging",
    }
    path = write_config(directory, pg_server, connections={"rotating": rotating})
    data = yaml.safe_load(path.read_text())
    http = f"127.0.0.1:{free_port()}"
    data["listen"]["http"] = http
    data["workers"] = 2
    path.write_text(yaml.safe_dump(data))
    with run_proxy(path) as running:
        wait_until(lambda: running.log_text().count("dbsentry ready") >= 2, "both workers ready")
        wait_until(lambda: get_json(f"http://{http}/healthz", timeout=1)[0] == 200, "the HTTP listener")
        # made now: the CLI that makes tokens reads the configuration file, which the
        # tests make invalid at times
        running.token("alice@example.com", ("eng",))
        running.token("auditor@example.com", ("security",))
        yield running, f"http://{http}"


@contextmanager
def _edited(proxy: RunningProxy) -> Iterator[dict[str, Any]]:
    """The configuration file's data, to change: written on leaving the block (the
    ``restore`` fixture puts the file back after the test)."""
    data = yaml.safe_load(proxy.config_path.read_text())
    yield data
    proxy.config_path.write_text(yaml.safe_dump(data))


@pytest.fixture
def restore(reloading: tuple[RunningProxy, str]) -> Iterator[None]:
    proxy, _ = reloading
    original = proxy.config_path.read_text()
    yield
    if proxy.config_path.read_text() != original:
        proxy.config_path.write_text(original)
        _hup(proxy)


def _hup(proxy: RunningProxy, expect: str = "configuration reload") -> None:
    """SIGHUP to the supervisor; returns once both workers logged ``expect`` once more."""
    before = proxy.log_text().count(expect)
    os.kill(proxy.process.pid, signal.SIGHUP)
    wait_until(lambda: proxy.log_text().count(expect) >= before + 2, f"both workers: {expect}", timeout=10)


def _sessions(proxy: RunningProxy, base: str, dbname: str, tag: str) -> list[str]:
    """New sessions of ``dbname`` held open at once (``SESSIONS``, and as many again, twice
    at most, until both workers served some), each asked for its upstream role; asserts that
    both workers served some.  The kernel picks the worker of each connection by a hash, and
    a busy worker may not answer the console's question in time: one batch can miss one."""
    conns: list[psycopg.Connection[Any]] = []
    try:
        for _ in range(3):
            batch = len(conns)
            conns += [
                psycopg.connect(proxy.dsn(dbname=dbname, application_name=f"{tag}-{batch + i}"), autocommit=True)
                for i in range(SESSIONS)
            ]
            users = [str(c.execute("select current_user::text").fetchone()[0]) for c in conns]  # type: ignore[index]
            auditor = proxy.token("auditor@example.com", ("security",))
            req = urllib.request.Request(base + "/api/v1/sessions", headers={"Authorization": f"Bearer {auditor}"})
            with urllib.request.urlopen(req, timeout=10) as r:
                rows = json.loads(r.read())["live"]
            served = {row["worker"] for row in rows if str(row.get("application_name", "")).startswith(f"{tag}-")}
            if served == {0, 1}:
                return users
        raise AssertionError(f"one worker served all of {len(conns)} sessions: {rows}")
    finally:
        for c in conns:
            c.close()


def _refusal(proxy: RunningProxy, dbname: str) -> str:
    with pytest.raises(psycopg.OperationalError) as err, psycopg.connect(proxy.dsn(dbname=dbname), autocommit=True) as conn:
        conn.execute("select 1")
    return str(err.value)


def test_a_rotated_upstream_password_applies_to_new_sessions_after_sighup(
    reloading: tuple[RunningProxy, str], auth_cluster: AuthCluster, restore: None
) -> None:
    proxy, base = reloading
    early = psycopg.connect(proxy.dsn(dbname="rotating", application_name="early"), autocommit=True)
    try:
        assert early.execute("select current_user::text").fetchone() == (ROLE,)
        with auth_cluster.admin_connect() as admin:
            admin.execute(auth_cluster._alter_password_sql(ROLE, PASSWORD_B))
        with _edited(proxy) as data:
            data["connections"]["rotating"]["password"] = PASSWORD_B
        for _ in range(4):  # the file says B, the workers still log in with A
            assert 'the upstream of connection "rotating" rejected the proxy\'s credentials' in _refusal(proxy, "rotating")
        _hup(proxy, APPLIED)
        assert re.search(r"configuration reloaded: connections applied to new sessions .*changed=\['rotating'\]", proxy.log_text())
        assert set(_sessions(proxy, base, "rotating", "rotated")) == {ROLE}
        assert early.execute("select current_user::text").fetchone() == (ROLE,)  # its upstream went on
    finally:
        early.close()
    assert PASSWORD_A not in proxy.log_text() and PASSWORD_B not in proxy.log_text()


def test_an_added_connection_is_usable_and_a_removed_one_refuses_new_sessions(
    reloading: tuple[RunningProxy, str], restore: None
) -> None:
    proxy, base = reloading
    missing = 'connection "added" does not exist'
    assert missing in _refusal(proxy, "added")
    with _edited(proxy) as data:
        data["connections"]["added"] = {**data["connections"]["staging"]}
        # logs in upstream as the test server's superuser, as "prod" does
        data["connections"]["added_prod"] = {**data["connections"]["prod"]}
    _hup(proxy, APPLIED)
    # the start-up check of production upstream roles, for the added one only
    warning = "production connection {!r} logs in upstream as"
    wait_until(lambda: proxy.log_text().count(warning.format("added_prod")) >= 2, "both workers' role check")
    assert proxy.log_text().count(warning.format("prod")) == 2  # at start, not again
    # a worker started again after the reload serves the reloaded connections too
    pid = max(int(p) for p in re.findall(r"worker started worker=1 pid=(\d+)", proxy.log_text()))
    ready = proxy.log_text().count("dbsentry ready")
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: proxy.log_text().count("dbsentry ready") > ready, "worker 1 started again")
    assert len(_sessions(proxy, base, "added", "added")) >= SESSIONS
    # its catalog (masking) was read at its first use, in each worker
    assert len(re.findall(r"catalog loaded connection=added\b", proxy.log_text())) >= 2
    opened = psycopg.connect(proxy.dsn(dbname="added", application_name="opened"), autocommit=True)
    # logged in, its upstream not opened yet (limits.lazy_upstream): at its first statement
    greeted = psycopg.connect(proxy.dsn(dbname="added", application_name="greeted"), autocommit=True)
    try:
        assert opened.execute("select 1").fetchone() == (1,)
        with _edited(proxy) as data:
            del data["connections"]["added"]
        _hup(proxy, APPLIED)
        for _ in range(4):
            assert missing in _refusal(proxy, "added")
        # sessions already open go on, with the connection as it was when they started
        assert opened.execute("select 2").fetchone() == (2,)
        assert greeted.execute("select 3").fetchone() == (3,)
        # DDL through a removed connection asks for its catalog again: nothing to read
        table = f"public.{ROLE}_ddl"
        opened.execute(f"create table {table} (id int)")
        opened.execute(f"drop table {table}")
        assert greeted.execute("select 4").fetchone() == (4,)
        assert "background task" not in proxy.log_text() and "catalog refresh failed" not in proxy.log_text()
    finally:
        opened.close()
        greeted.close()


def test_an_invalid_file_is_rejected_and_logged_and_nothing_changes(
    reloading: tuple[RunningProxy, str], restore: None
) -> None:
    proxy, base = reloading
    with _edited(proxy) as data:
        data["connections"]["rotating"]["port"] = "not-a-port"
        data["connections"]["staging"]["host"] = "192.0.2.1"  # would break staging if applied
    _hup(proxy, REJECTED)
    assert re.search(r"configuration reload rejected; nothing changed .*connections\.rotating\.port", proxy.log_text())
    assert len(_sessions(proxy, base, "staging", "invalid")) >= SESSIONS
    proxy.config_path.write_text("connections: [unclosed\n")
    _hup(proxy, REJECTED)
    assert "not valid YAML" in proxy.log_text()
    assert len(_sessions(proxy, base, "staging", "invalid-yaml")) >= SESSIONS


def test_a_changed_listen_section_logs_that_it_needs_a_restart(
    reloading: tuple[RunningProxy, str], restore: None
) -> None:
    proxy, base = reloading
    warning = "config section listen changed: takes effect after a restart"
    with _edited(proxy) as data:
        data["listen"]["postgres"] = f"127.0.0.1:{free_port()}"
    before = proxy.log_text().count(warning)
    _hup(proxy, "configuration reloaded: connections unchanged")
    assert proxy.log_text().count(warning) >= before + 2
    assert len(_sessions(proxy, base, "staging", "listen")) >= SESSIONS  # still on the old port


def test_one_process_started_without_connections_takes_them_up_and_probes_them(
    pg_server: PgServer, tmp_path: Path
) -> None:
    path = write_config(tmp_path, pg_server)
    data = yaml.safe_load(path.read_text())
    staging = data["connections"]["staging"]
    http = f"127.0.0.1:{free_port()}"
    data["listen"]["http"] = http
    data["connections"] = {}
    path.write_text(yaml.safe_dump(data))
    with run_proxy(path) as proxy:
        proxy.token("alice@example.com", ("eng",))
        wait_until(lambda: get_json(f"http://{http}/readyz", timeout=1)[0] == 200, "ready")
        assert get_json(f"http://{http}/readyz")[1]["upstreams"] == {}
        data["connections"] = {"late": staging}
        path.write_text(yaml.safe_dump(data))
        before = proxy.log_text().count(APPLIED)
        os.kill(proxy.process.pid, signal.SIGHUP)
        wait_until(lambda: proxy.log_text().count(APPLIED) > before, "the reload")
        with psycopg.connect(proxy.dsn(dbname="late"), autocommit=True) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
        wait_until(
            lambda: get_json(f"http://{http}/readyz")[1]["upstreams"].get("late", {}).get("reachable") is True,
            "the readiness probe of the added connection",
        )


def test_the_mysql_listener_takes_up_added_and_removed_connections(tmp_path: Path) -> None:
    if (reason := server_reason()) is not None:
        pytest.skip(reason)
    pymysql = pytest.importorskip("pymysql")

    with run_mysql_proxy(tmp_path, extra={"workers": 1}) as mp:
        path = mp.proxy.config_path
        data = yaml.safe_load(path.read_text())
        token = mp.token()

        def hup() -> None:
            path.write_text(yaml.safe_dump(data))
            before = mp.proxy.log_text().count(APPLIED)
            os.kill(mp.proxy.process.pid, signal.SIGHUP)
            wait_until(lambda: mp.proxy.log_text().count(APPLIED) > before, "the reload")

        with pytest.raises(pymysql.err.OperationalError, match="'dev2' does not exist"):
            pymysql_connect(mp.port, "alice@example.com", token, "dev2")
        data["connections"]["dev2"] = data["connections"]["dev"]
        hup()
        opened = pymysql_connect(mp.port, "alice@example.com", token, "dev2", autocommit=True)
        try:
            with opened.cursor() as cur:
                cur.execute("select 1")
                assert cur.fetchone() == (1,)
            del data["connections"]["dev2"]
            hup()
            with pytest.raises(pymysql.err.OperationalError, match="'dev2' does not exist"):
                pymysql_connect(mp.port, "alice@example.com", token, "dev2")
            with opened.cursor() as cur:  # the open session goes on
                cur.execute("select 2")
                assert cur.fetchone() == (2,)
        finally:
            opened.close()
