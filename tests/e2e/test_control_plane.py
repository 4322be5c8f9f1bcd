"""Several nodes on one control plane (``control_plane: {postgres: ...}``), on loopback.

Two ``dbsentry serve`` processes (node A with one worker, node B with two), each with its
own ports and state directory, share a control-plane database made for this module (and
dropped after).  The control plane is reached through a TCP relay that the last test cuts
and restores.  The approvals poll is set to 30 s, so what reaches the other node within a
second came by LISTEN/NOTIFY (or a direct read), not by polling.

Clients reach the nodes through a second relay as through a load balancer: the test chooses
which node it forwards new connections to, so a cancel (a new connection) lands on the
other node than the session it names.  Both nodes serve MySQL too (``listen.mysql``, a
connection ``my`` to the test MariaDB): a ``KILL`` sent to one node reaches the other's
session.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import re
import socket
import ssl
import struct
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
import yaml

from support.console import CHROMIUM, launch_chromium
from support.guard_clients import collect_client_leaks
from support.mysql import SleepingQuery, pymysql_connect, server_reason
from support.pg import PgServer, free_port
from support.proxy import RunningProxy, dbsentry_cli, run_proxy, write_config
from support.tcpproxy import TcpForwarder

APR = re.compile(r"\bapr_[0-9abcdefghjkmnpqrstvwxyz]{10}\b")
ALICE = ("alice@example.com", ("eng",))
BOB_DBA = ("bob@example.com", ("dba",))
CAROL = ("carol@example.com", ("eng",))
POLICY = (
    "version: 1\n"
    "rules:\n"
    "  - name: cp-updates-need-dba\n"
    "    match: {commands: [UPDATE], tables: [cp_acct_*], environments: [production]}\n"
    "    action: require_approval\n"
    "    approvers: [dba]\n"
    "    message: account updates need a DBA\n"
)


# Chosen by the ``nodes`` fixture just before the nodes start: a port chosen when the module
# is imported can be handed out as an ephemeral port (a node's own listener took one) by the
# time this module runs, minutes later under xdist.
HTTP = [""]
MYSQL: dict[str, int] = {}  # each node's MySQL listener
MYSQL_REASON = server_reason()
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "control-plane"


def _http(path: str, token: str | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(f"http://{HTTP[0]}{path}", headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.fixture(scope="module")
def control_db(pg_server: PgServer) -> Iterator[str]:
    name = f"dbs_cp_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server.dsn(dbname="postgres"), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield name
    finally:
        with psycopg.connect(pg_server.dsn(dbname="postgres"), autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="module")
def relay(pg_server: PgServer) -> Iterator[TcpForwarder]:
    """The control plane's database behind a relay the tests can cut (``down``) and
    restore (``up``)."""
    with TcpForwarder(pg_server.host, pg_server.port) as r:
        yield r


@pytest.fixture(scope="module")
def nodes(
    pg_server: PgServer, control_db: str, relay: TcpForwarder, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RunningProxy, RunningProxy]]:
    base = tmp_path_factory.mktemp("cp")
    (base / "policy.yaml").write_text(POLICY)
    HTTP[0] = f"127.0.0.1:{free_port()}"
    MYSQL.update(a=free_port(), b=free_port())
    with contextlib.ExitStack() as stack:
        running = []
        for name, workers in (("a", 1), ("b", 2)):
            path = _node_config(base, name, workers, pg_server, control_db, relay)
            if name == "a":  # node A serves the console and API
                data = yaml.safe_load(path.read_text())
                data["listen"]["http"] = HTTP[0]
                path.write_text(yaml.safe_dump(data))
            running.append(stack.enter_context(_start(path, workers)))
        yield running[0], running[1]


def _node_config(base: Path, name: str, workers: int, pg_server: PgServer, control_db: str, relay: TcpForwarder) -> Path:
    directory = base / name
    directory.mkdir()
    extra = {
        "policy": str(base / "policy.yaml"),
        "workers": workers,
        "control_plane": {
            "postgres": {"dsn": pg_server.dsn(host="127.0.0.1", port=relay.port, dbname=control_db)},
            "heartbeat_seconds": 0.5,
            "node_ttl_seconds": 3,
        },
        "approvals": {"poll_interval_seconds": 30, "access": {"approvers": ["dba"]}},
    }
    if name not in MYSQL:
        return write_config(directory, pg_server, extra=extra)
    my = {"engine": "mysql", "host": "127.0.0.1", "port": 3306, "database": "test", "user": "root", "environment": "development"}
    path = write_config(directory, pg_server, extra=extra, connections={"my": my})
    data = yaml.safe_load(path.read_text())
    data["listen"]["mysql"] = f"127.0.0.1:{MYSQL[name]}"
    path.write_text(yaml.safe_dump(data))
    return path


@contextlib.contextmanager
def _start(path: Path, workers: int) -> Iterator[RunningProxy]:
    with run_proxy(path) as proxy:
        _wait(lambda: proxy.log_text().count("dbsentry ready") >= workers, f"{path.parent.name} ready")
        yield proxy


def _wait(check: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _token(node: RunningProxy, who: tuple[str, tuple[str, ...]]) -> str:
    return node.token(who[0], who[1])


def _connect(node: RunningProxy, who: tuple[str, tuple[str, ...]], token: str, **kw: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(node.dsn(who[0], token=token, **kw), autocommit=True)


def _within_a_second(check: Any) -> float:
    """How long until ``check()`` holds (it must within a second)."""
    start = time.monotonic()
    while True:
        try:
            if check():
                return time.monotonic() - start
        except psycopg.Error:
            pass
        if time.monotonic() - start > 1.0:
            raise AssertionError("not within a second")
        time.sleep(0.02)


@pytest.fixture
def acct(pg_server: PgServer) -> Iterator[str]:
    name = f"cp_acct_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_server.dsn(), autocommit=True) as direct:
        direct.execute(f"create table {name} (id int primary key, balance int)")
        direct.execute(f"insert into {name} values (1, 100)")
        yield name
        direct.execute(f"drop table if exists {name}")


def _balance(pg_server: PgServer, table: str) -> int:
    with psycopg.connect(pg_server.dsn(), autocommit=True) as direct:
        row = direct.execute(f"select balance from {table} where id = 1").fetchone()
    assert row is not None
    return int(row[0])


def _approve(node: RunningProxy, rid: str) -> None:
    done = dbsentry_cli("approvals", "approve", rid, "--token", _token(node, BOB_DBA), "--reason", "ok", config=node.config_path, check=False)
    assert done.returncode == 0, done.stderr


def test_nodes_register_and_the_console_lists_them(nodes: tuple[RunningProxy, RunningProxy]) -> None:
    a, _ = nodes
    status, body = _http("/api/v1/nodes", a.token("auditor@example.com", ("security",)))
    assert status == 200, body
    rows = body["nodes"]
    assert len(rows) == 3, rows  # node A's worker and node B's two
    slots = {r["node"]: r["slot"] for r in rows}
    assert len(slots) == 2 and len(set(slots.values())) == 2  # one slot per node, shared by its workers
    assert len({r["address"] for r in rows}) == 3
    assert all(r["heartbeat_age_seconds"] < 3 for r in rows)
    status, ready = _http("/readyz")
    assert status == 200 and ready["checks"]["control_plane"] is True


def _live(token: str, app: str) -> list[dict[str, Any]]:
    """The live sessions that node A's API lists with application_name ``app``."""
    status, body = _http("/api/v1/sessions?limit=1", token)
    assert status == 200, body
    return [s for s in body["live"] if s.get("application_name") == app]


def _by_node(token: str) -> dict[str, dict[str, Any]]:
    status, body = _http("/api/v1/nodes", token)
    assert status == 200, body
    return {n["node"]: n for n in body["by_node"]}


def test_every_nodes_sessions_are_listed_by_the_console_of_one(nodes: tuple[RunningProxy, RunningProxy]) -> None:
    a, b = nodes
    auditor = a.token("auditor@example.com", ("security",))
    app = f"cp-where-{uuid.uuid4().hex[:8]}"
    on_b = [_connect(b, ALICE, _token(b, ALICE), application_name=app) for _ in range(3)]  # spread over B's workers
    on_a = _connect(a, CAROL, _token(a, CAROL), application_name=app)
    try:
        found = _live(auditor, app)
        here = [s for s in found if s["identity"] == CAROL[0]]
        there = [s for s in found if s["identity"] == ALICE[0]]
        assert len(here) == 1 and len(there) == 3, found
        summary = _by_node(auditor)
        (node_a,) = [n for n, v in summary.items() if v["this_node"]]
        (node_b,) = [n for n, v in summary.items() if not v["this_node"]]
        assert here[0]["node"] == node_a and here[0]["worker"] == 0
        assert {s["node"] for s in there} == {node_b} and {s["worker"] for s in there} <= {0, 1}
        # and one of them, found by its id through node A
        status, one = _http(f"/api/v1/sessions/{there[0]['session_id']}", auditor)
        assert status == 200 and one["live"] is True and one["node"] == node_b
        assert summary[node_b]["workers"] == [0, 1] and len(summary[node_b]["addresses"]) == 2
        assert summary[node_b]["ready"] is True and summary[node_b]["sessions"] >= 3
        assert summary[node_a]["workers"] == [0] and summary[node_a]["ready"] is True and summary[node_a]["sessions"] >= 1
        assert all(0 <= v["heartbeat_age_seconds"] < 3 for v in summary.values())
    finally:
        for conn in [*on_b, on_a]:
            conn.close()
    _wait(lambda: not _live(auditor, app), "the closed sessions to leave the list", timeout=5)


def test_the_console_shows_the_nodes_and_where_each_session_runs(nodes: tuple[RunningProxy, RunningProxy]) -> None:
    """Node A's console in a real browser (Debian's Chromium, as tests/e2e/test_web_console.py):
    the Nodes page lists both nodes, ready; the Sessions page shows a session held by node B
    with B's name."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists():
        pytest.skip("needs Debian's chromium: apt-get install -y chromium")
    a, b = nodes
    auditor = a.token("auditor@example.com", ("security",))
    app = f"cp-page-{uuid.uuid4().hex[:8]}"
    summary = _by_node(auditor)
    (node_b,) = [n for n, v in summary.items() if not v["this_node"]]
    with _connect(b, ALICE, _token(b, ALICE), application_name=app), sync_api.sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            problems: list[str] = []
            page.on("pageerror", lambda e: problems.append(str(e)))
            expect = sync_api.expect
            page.goto(f"http://{HTTP[0]}/")
            page.fill("#token-input", auditor)
            page.click("#login-form button[type=submit]")
            expect(page.locator("#who-name")).to_have_text("auditor@example.com")
            page.click("#nav a[data-route=nodes]")
            rows = page.locator("#nodes-table tbody tr")
            expect(rows).to_have_count(2)
            expect(page.locator("#nodes-table tbody tr", has_text="this node")).to_have_count(1)
            row_b = page.locator(f'#nodes-table tbody tr[data-node="{node_b}"]')
            expect(row_b).to_contain_text("ready")
            expect(row_b.locator("td").nth(2)).to_contain_text("w0 w1")
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "nodes.png"))
            page.click("#nav a[data-route=sessions]")
            mine = page.locator("tr", has_text=app)
            expect(mine).to_have_count(1)
            expect(mine).to_contain_text(node_b)
            page.screenshot(path=str(ARTIFACTS / "sessions-of-every-node.png"))
            assert not problems, problems
        finally:
            browser.close()


def test_a_killed_node_leaves_the_list_within_seconds(
    nodes: tuple[RunningProxy, RunningProxy], pg_server: PgServer, control_db: str, relay: TcpForwarder,
    tmp_path: Path,
) -> None:
    a, _ = nodes
    auditor = a.token("auditor@example.com", ("security",))
    app = f"cp-doomed-{uuid.uuid4().hex[:8]}"
    (tmp_path / "policy.yaml").write_text(POLICY)
    with _start(_node_config(tmp_path, "c", 1, pg_server, control_db, relay), 1) as c:
        # node A reads the registry at each of its heartbeats
        _wait(lambda: len(_http("/api/v1/nodes", auditor)[1]["nodes"]) == 4, "node C listed", timeout=5)
        on_c = _connect(c, ALICE, _token(c, ALICE), application_name=app)
        (row,) = _live(auditor, app)
        summary = _by_node(auditor)
        assert len(summary) == 3 and summary[row["node"]]["sessions"] == 1 and summary[row["node"]]["ready"] is True
        c.process.kill()  # kill -9: no goodbye
        c.process.wait()
        killed = time.monotonic()
        # its sessions go at once: a node that does not answer shows none, and is named
        _wait(lambda: not _live(auditor, app), "the dead node's session to leave the list", timeout=3)
        body = _http("/api/v1/sessions?limit=1", auditor)[1]
        summary = _by_node(auditor)
        # its last heartbeat was at most 0.5 s before the kill: it stays registered 2.5 s more
        assert time.monotonic() - killed < 2.0, "too slow to see the dead node still registered"
        assert [m["node"] for m in body["unanswered"]] == [row["node"]], body["unanswered"]
        assert summary[row["node"]]["ready"] is False and summary[row["node"]]["sessions"] is None
        _wait(lambda: len(_http("/api/v1/nodes", auditor)[1]["nodes"]) == 3, "the dead node to expire", timeout=10)
        assert time.monotonic() - killed < 3 + 1.5  # node_ttl_seconds, and a heartbeat of A's
        assert len(_by_node(auditor)) == 2 and _http("/api/v1/sessions?limit=1", auditor)[1]["unanswered"] == []
        with contextlib.suppress(psycopg.Error):
            on_c.close()


def test_token_revoked_through_one_node_is_refused_at_the_other(nodes: tuple[RunningProxy, RunningProxy]) -> None:
    a, b = nodes
    token = a.token("revoked@example.com", ("eng",), ttl="2h")  # made through node A's CLI
    with _connect(b, ("revoked@example.com", ()), token) as conn:  # valid on node B
        assert conn.execute("select 1").fetchone() == (1,)
    token_id = token.split("_")[1]
    listed = dbsentry_cli("token", "list", "--json", config=b.config_path).stdout
    assert token_id in listed  # B's CLI lists A's token: one store
    dbsentry_cli("token", "revoke", token_id, config=a.config_path)

    def refused() -> bool:
        try:
            _connect(b, ("revoked@example.com", ()), token).close()
        except psycopg.OperationalError as err:
            assert "password authentication failed" in str(err)
            return True
        return False

    _within_a_second(refused)


def test_failed_logins_count_over_every_node(nodes: tuple[RunningProxy, RunningProxy]) -> None:
    a, b = nodes
    who = (f"guesser-{uuid.uuid4().hex[:6]}@example.com", ("eng",))
    good = a.token(who[0], who[1])
    bad = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    for node in (a, b, a, b, a):  # identity.max_failures (5), spread over both nodes
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            _connect(node, who, bad).close()
    with pytest.raises(psycopg.OperationalError, match="too many failed logins"):
        _connect(b, who, good).close()  # even the right token, unchecked


def test_approval_granted_through_b_is_usable_on_a_fail_mode(
    nodes: tuple[RunningProxy, RunningProxy], acct: str, pg_server: PgServer
) -> None:
    a, b = nodes
    sql = f"update {acct} set balance = balance + 1 where id = 1"
    with _connect(a, ALICE, _token(a, ALICE)) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as refused:
            conn.execute(sql)
        (rid,) = set(APR.findall(str(refused.value)))
        _approve(b, rid)  # through node B
        _within_a_second(lambda: conn.execute(sql) is not None)
    assert _balance(pg_server, acct) == 101


def test_wait_mode_statement_on_a_runs_when_approved_through_b(
    nodes: tuple[RunningProxy, RunningProxy], acct: str, pg_server: PgServer
) -> None:
    a, b = nodes
    sql = f"update {acct} set balance = balance + 10 where id = 1"
    notices: list[str] = []
    done: dict[str, float] = {}
    with _connect(a, ALICE, _token(a, ALICE), options="-c dbsentry.approval=wait") as conn:
        conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))

        def run() -> None:
            conn.execute(sql)
            done["at"] = time.monotonic()

        worker = threading.Thread(target=run)
        worker.start()
        _wait(lambda: any(APR.search(n) for n in notices), "the wait notice")
        (rid,) = {m for n in notices for m in APR.findall(n)}
        _approve(b, rid)
        approved = time.monotonic()
        worker.join(10)
        assert "at" in done, "the statement did not run"
        # the approvals poll is 30 s: only the notification can wake node A this soon
        assert done["at"] - approved < 1.0
    assert _balance(pg_server, acct) == 110


def test_jit_grant_through_b_is_visible_on_a(nodes: tuple[RunningProxy, RunningProxy]) -> None:
    a, b = nodes
    carol = _token(a, CAROL)
    with pytest.raises(psycopg.OperationalError):
        _connect(a, CAROL, carol, dbname="restricted").close()
    asked = dbsentry_cli(
        "access", "request", "--token", carol, "--connection", "restricted", "--for", "10m", "--reason", "incident",
        config=a.config_path, check=False,
    )  # fmt: skip
    assert asked.returncode == 0, asked.stderr
    rid = asked.stdout.strip()
    _approve(b, rid)

    def usable() -> bool:
        with _connect(a, CAROL, carol, dbname="restricted") as conn:
            return conn.execute("select 1").fetchone() == (1,)

    _within_a_second(usable)


def test_cancel_sent_to_b_cancels_a_statement_on_a(nodes: tuple[RunningProxy, RunningProxy], pg_server: PgServer) -> None:
    a, b = nodes
    with TcpForwarder(a.host, a.port) as lb:  # a load balancer: this session goes to node A
        token = _token(a, ALICE)
        dsn = psycopg.conninfo.make_conninfo(a.dsn(ALICE[0], token=token), host="127.0.0.1", port=lb.port)
        with psycopg.connect(dsn, autocommit=True) as conn:
            lb.target = (b.host, b.port)  # the cancel's new connection lands on node B
            forwarded = b.log_text().count("cancel request forwarded to another node")
            # cancel_safe waits without holding the GIL (the relay is a thread of this process)
            timer = threading.Timer(0.5, conn.cancel_safe, kwargs={"timeout": 5})
            timer.start()
            start = time.monotonic()
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute("select pg_sleep(30)")
            assert time.monotonic() - start < 1.5  # sent at 0.5 s, done within a second
            timer.join()
            assert b.log_text().count("cancel request forwarded to another node") > forwarded
            assert conn.execute("select 1").fetchone() == (1,)
            # Through node B while nothing runs: delivered before the cancel returns, so
            # it never stops the next statement.
            for attempt in range(3):
                conn.cancel_safe(timeout=10)
                assert conn.execute("select pg_sleep(0.2), 'ran'").fetchone() == ("", "ran"), attempt


def test_forged_cancel_between_nodes_is_ignored_and_logged(nodes: tuple[RunningProxy, RunningProxy]) -> None:
    a, _ = nodes
    listed = _http("/api/v1/nodes", a.token("auditor@example.com", ("security",)))[1]["nodes"]
    rows = [(n["address"],) for n in listed]  # every live worker of both nodes
    with _connect(a, ALICE, _token(a, ALICE)) as conn:
        pid = conn.info.backend_pid
        payload = json.dumps({"op": "cancel", "pid": pid, "secret": "00000000", "ts": time.time()}).encode()
        frame = hmac.new(b"not the cluster secret", payload, hashlib.sha256).digest() + payload

        def forge() -> None:
            time.sleep(0.3)
            for (address,) in rows:
                host, _, port = address.rpartition(":")
                with socket.create_connection((host, int(port)), timeout=2) as s:
                    s.sendall(struct.pack(">I", len(frame)) + frame)

        forger = threading.Thread(target=forge)
        forger.start()
        start = time.monotonic()
        conn.execute("select pg_sleep(1.5)")  # runs to its end, uncancelled
        forger.join()
        assert time.monotonic() - start >= 1.5
    _wait(lambda: "forged or stale message from another node ignored" in a.log_text(), "the forged cancel logged")


@pytest.mark.skipif(MYSQL_REASON is not None, reason=MYSQL_REASON or "")
def test_mysql_kill_sent_to_b_kills_a_statement_on_a(nodes: tuple[RunningProxy, RunningProxy]) -> None:
    pymysql = pytest.importorskip("pymysql")
    a, b = nodes
    token = _token(a, ALICE)
    victim = pymysql_connect(MYSQL["a"], ALICE[0], token, "my", autocommit=True)
    killer = pymysql_connect(MYSQL["b"], ALICE[0], token, None, autocommit=True)  # a session for KILL only
    carol = pymysql_connect(MYSQL["b"], CAROL[0], _token(b, CAROL), None, autocommit=True)
    try:
        sleeping = SleepingQuery(victim)
        target = victim.thread_id()
        # A forged KILL between nodes (not under the cluster secret) is ignored and logged.
        listed = _http("/api/v1/nodes", a.token("auditor@example.com", ("security",)))[1]["nodes"]
        payload = json.dumps({"op": "mysql-kill", "target": target, "query_only": True, "identity": ALICE[0], "reviewer": True, "ts": time.time()}).encode()
        frame = hmac.new(b"not the cluster secret", payload, hashlib.sha256).digest() + payload
        forged = a.log_text().count("forged or stale message from another node ignored")
        for address in [n["address"] for n in listed]:  # every live worker of both nodes
            host, _, port = address.rpartition(":")
            with socket.create_connection((host, int(port)), timeout=2) as s:
                s.sendall(struct.pack(">I", len(frame)) + frame)
                assert s.recv(1) == b""  # no answer: closed
        _wait(lambda: a.log_text().count("forged or stale message from another node ignored") > forged, "the forged KILL logged")
        assert sleeping.ended is None  # still sleeping
        # Another identity's KILL through node B: refused as on one node.
        with pytest.raises(pymysql.err.OperationalError) as err, carol.cursor() as cur:
            cur.execute(f"KILL QUERY {target}")
        assert err.value.args == (1095, f"dbsentry: you are not owner of thread {target} (KILL works on your own sessions)")
        forwarded = b.log_text().count("KILL forwarded to another node")
        with killer.cursor() as cur:
            killed_at = time.monotonic()
            cur.execute(f"KILL QUERY {target}")
        sleeping.join(10)
        assert sleeping.ended is not None and sleeping.ended - killed_at < 5.0
        assert sleeping.interrupted, (sleeping.rows, sleeping.error)
        assert b.log_text().count("KILL forwarded to another node") > forwarded
        assert "KILL from another node" in a.log_text()
        with victim.cursor() as cur:  # KILL QUERY leaves the session
            cur.execute("SELECT 5")
            assert cur.fetchone() == (5,)
    finally:
        for conn in (victim, killer, carol):
            conn.close()


def test_control_plane_down_fails_closed_and_recovers(
    nodes: tuple[RunningProxy, RunningProxy], relay: TcpForwarder, acct: str, pg_server: PgServer
) -> None:
    a, _ = nodes
    token = _token(a, ALICE)
    held = _connect(a, ALICE, token)
    try:
        assert held.execute("select 1").fetchone() == (1,)
        relay.down()
        try:
            # a session that needs nothing new goes on
            assert held.execute("select 2").fetchone() == (2,)
            # a statement that needs an approval fails closed
            with pytest.raises(psycopg.Error) as failed:
                held.execute(f"update {acct} set balance = 0 where id = 1")
            assert failed.value.sqlstate == "58000"
            assert "control plane" in str(failed.value)
            # a login fails closed, saying why
            with pytest.raises(psycopg.OperationalError) as refused:
                _connect(a, ALICE, token).close()
            assert "dbsentry: the control plane is unavailable" in str(refused.value)
            # with cannot_connect_now (psycopg keeps no SQLSTATE for a failed connection; asyncpg does)
            with pytest.raises(asyncpg.exceptions.CannotConnectNowError) as not_now:
                asyncio.run(_asyncpg_login(a, ALICE[0], token))
            assert not_now.value.sqlstate == "57P03" and "the control plane is unavailable" in str(not_now.value)
            del not_now  # its traceback holds the refused login's transport:
            collect_client_leaks()  # collected now, not during a later test
            if MYSQL_REASON is None:  # and the MySQL listener with the server's "cannot serve now"
                code, message = _mysql_login_error(token)
                assert code == 1053 and message.startswith("dbsentry: the control plane is unavailable"), (code, message)
            _wait(lambda: _http("/readyz")[0] == 503, "readyz to say the control plane is down", timeout=5)
            assert _http("/readyz")[1]["checks"]["control_plane"] is False
        finally:
            relay.up()
        _wait(lambda: _logs_in(a, token), "logins after the control plane is back", timeout=15)
        assert held.execute("select 3").fetchone() == (3,)
        _wait(lambda: "control plane reachable again" in a.log_text(), "the listener back", timeout=15)
        assert _http("/readyz")[0] == 200
    finally:
        held.close()
    assert _balance(pg_server, acct) == 100


def _mysql_login_error(token: str) -> tuple[int, str]:
    pymysql = pytest.importorskip("pymysql")
    try:
        pymysql.connect(
            host="127.0.0.1", port=MYSQL["a"], user=ALICE[0], password=token, database="my",
            ssl={"check_hostname": False, "verify_mode": ssl.CERT_NONE}, connect_timeout=10,
        ).close()  # fmt: skip
    except pymysql.err.MySQLError as err:
        return int(err.args[0]), str(err.args[1])
    raise AssertionError("a MySQL login went through while the control plane was down")


async def _asyncpg_login(node: RunningProxy, user: str, token: str) -> None:
    tls = ssl.create_default_context()
    tls.check_hostname, tls.verify_mode = False, ssl.CERT_NONE  # the proxy's certificate is self-signed
    conn = await asyncpg.connect(host=node.host, port=node.port, user=user, password=token, database="prod", ssl=tls, timeout=10)
    await conn.close()


def _logs_in(node: RunningProxy, token: str) -> bool:
    try:
        _connect(node, ALICE, token).close()
    except psycopg.OperationalError:
        return False
    return True


def test_ddl_through_one_node_reaches_the_masking_of_the_other(
    nodes: tuple[RunningProxy, RunningProxy], pg_server: PgServer
) -> None:
    """A column classified through node A (a comment that says "person's name"): node B
    reads its catalog again at once (the announcement), so ``select *`` in a session open
    there since before masks it as soon as the catalog is read (no value scan finds a name,
    and nothing in the result's shape changed), not after masking.refresh_seconds."""
    a, b = nodes

    def both_log_in() -> bool:  # (a test before this one may have cut the control plane)
        try:
            return _logs_in(a, _token(a, ALICE)) and _logs_in(b, _token(b, ALICE))
        except Exception:
            return False

    _wait(both_log_in, "logins on both nodes", timeout=20)
    table = f"cp_people_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_server.dsn(), autocommit=True) as direct:
        direct.execute(f"create table {table} (id int primary key, nick text)")
        direct.execute(f"insert into {table} values (1, 'Zebediah Quarrington')")
    try:
        with _connect(b, CAROL, _token(b, CAROL), dbname="staging") as open_on_b:

            def on_b() -> str:
                row = open_on_b.execute(f"select * from {table}").fetchone()
                assert row is not None
                return str(row[1])

            _wait(lambda: on_b() == "Zebediah Quarrington", "node B to know the table")  # nothing to mask yet
            with _connect(a, CAROL, _token(a, CAROL), dbname="staging") as conn:
                conn.execute(f"comment on column {table}.nick is 'pii:person_name'")
            # at once: the announcement; then the time a catalog read takes (not 300 s)
            _wait(lambda: "Zebediah" not in on_b(), "node B to mask the newly classified column", timeout=10)
    finally:
        with psycopg.connect(pg_server.dsn(), autocommit=True) as direct:
            direct.execute(f"drop table if exists {table}")
