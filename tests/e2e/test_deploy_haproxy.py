"""The three-node recipe of docs/deployment.md, run as written: three ``dbsentry serve``
nodes configured by deploy/dbsentry.yaml (loopback ports, their own state directories, one
PostgreSQL audit index), HAProxy running deploy/haproxy.cfg in front of them, and pgbench
through HAProxy while one node is killed with ``kill -9``."""

from __future__ import annotations

import json
import re
import shutil
import ssl
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pymysql
import pytest
import yaml

from support.deploy import (
    HAProxy,
    Node,
    haproxy_binary,
    haproxy_env,
    make_node,
    same_token_on_every_node,
    start_haproxy,
    stop_process,
    wait_until,
)
from support.pg import PgServer
from support.pgbench import ENV as PGBENCH_ENV
from support.proxy import dbsentry_cli

HAPROXY = haproxy_binary()
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        HAPROXY is None,
        reason="haproxy is not installed (Debian package haproxy; scripts/test installs it): "
        "the deployment recipe's test runs it",
    ),
    pytest.mark.skipif(shutil.which("pgbench") is None, reason="pgbench is not installed (postgresql-contrib)"),
]

IDENTITY = "bench@example.com"
CLIENTS = 6


@pytest.fixture
def audit_dsn(pg_server: PgServer) -> Iterator[str]:
    """A database of its own for the nodes' shared audit index, dropped after."""
    name = f"dbsentry_deploy_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_server.dsn(dbname="postgres"), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    yield pg_server.dsn(dbname=name)
    with psycopg.connect(pg_server.dsn(dbname="postgres"), autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def table(pg_server: PgServer) -> Iterator[str]:
    name = f"deploy_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_server.dsn(), autocommit=True) as direct:
        direct.execute(f"CREATE TABLE {name} (k bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())")
    yield name
    with psycopg.connect(pg_server.dsn(), autocommit=True) as direct:
        direct.execute(f"DROP TABLE IF EXISTS {name}")


@pytest.fixture
def cluster(pg_server: PgServer, audit_dsn: str, tmp_path: Path) -> Iterator[tuple[list[Node], HAProxy, str]]:
    """Three nodes and HAProxy, all ready; the token every node accepts."""
    assert HAPROXY is not None
    nodes = [make_node(tmp_path / f"node{i}", f"node{i}", pg_server, audit_dsn=audit_dsn) for i in (1, 2, 3)]
    token = same_token_on_every_node(nodes, IDENTITY, ("eng",))
    lb: HAProxy | None = None
    try:
        for node in nodes:
            node.start()
        for node in nodes:
            node.wait_ready()
        lb = start_haproxy(HAPROXY, haproxy_env(nodes, tmp_path), tmp_path)
        backends = ("dbsentry_postgres", "dbsentry_mysql") if nodes[0].mysql is not None else ("dbsentry_postgres",)
        wait_until(
            lambda: lb is not None and all(set(lb.status(b).values()) == {"UP"} for b in backends),
            "every node UP in HAProxy",
            15,
        )
        yield nodes, lb, token
    finally:
        if lb is not None:
            stop_process(lb.process)
        for node in nodes:
            node.stop()


@pytest.fixture
def pgbench() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Starts pgbench through HAProxy; a run still going when the test ends (it failed
    early) is killed and reaped, so nothing outlives the test."""
    runs: list[subprocess.Popen[str]] = []

    def start(lb: HAProxy, token: str, script: Path, *args: str) -> subprocess.Popen[str]:
        env = {**PGBENCH_ENV, "PGPASSWORD": token, "PGSSLMODE": "require", "PGCONNECT_TIMEOUT": "10"}
        run = subprocess.Popen(
            ["pgbench", "-h", "127.0.0.1", "-p", str(lb.postgres), "-U", IDENTITY, "-n", "-f", str(script), *args, "prod"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        runs.append(run)
        return run

    yield start
    for run in runs:
        if run.poll() is None:
            run.kill()
        run.communicate()


def _live_checks(lb: HAProxy) -> dict[str, tuple[str, str]]:
    """Each server's last finished health check: (status, HTTP code). HAProxy marks a check
    in progress with ``* `` and shows no code for it yet."""
    return {n: (r["check_status"], r["check_code"]) for n, r in lb.servers("dbsentry_postgres").items()}


def _processed(out: str) -> int:
    m = re.search(r"number of transactions actually processed: (\d+)", out)
    assert m is not None, out
    return int(m.group(1))


def _sessions(lb: HAProxy, field: str) -> dict[str, int]:
    return {name: int(row[field] or 0) for name, row in lb.servers("dbsentry_postgres").items()}


def _audited_keys(node: Node, table: str) -> dict[int, str]:
    """k -> the id of the audit record of ``INSERT ... VALUES (k)``, from the shared index."""
    out = dbsentry_cli(
        "audit", "search", "--text", table, "--limit", "0", "--json", config=node.config, env=node.env
    ).stdout
    found: dict[int, str] = {}
    for line in out.splitlines():
        rec = json.loads(line)
        m = re.search(rf"insert into {table} \(k\) values \((\d+)\)", rec.get("statement") or "")
        if m and rec.get("decision") == "allow":
            found[int(m.group(1))] = str(rec["id"])
    return found


def test_pgbench_through_haproxy_survives_a_node_killed_with_kill_9(
    cluster: tuple[list[Node], HAProxy, str],
    table: str,
    pg_server: PgServer,
    audit_dsn: str,
    tmp_path: Path,
    pgbench: Callable[..., subprocess.Popen[str]],
) -> None:
    nodes, lb, token = cluster
    victim = nodes[0]
    if nodes[0].mysql is not None:  # MySQL clients go through HAProxy's other frontend
        with pymysql.connect(
            host="127.0.0.1", port=lb.mysql, user=IDENTITY, password=token, database="shop",
            ssl={"check_hostname": False, "verify_mode": ssl.CERT_NONE}, connect_timeout=10,
        ) as my, my.cursor() as cur:  # fmt: skip
            cur.execute("SELECT 1 + 1")
            assert cur.fetchone() == (2,)
    script = tmp_path / "insert.sql"
    script.write_text(f"\\set k random(1, 1000000000000)\ninsert into {table} (k) values (:k);\n")
    run = pgbench(lb, token, script, "-C", "-c", str(CLIENTS), "-j", "2", "-T", "8")

    # Load on every node, then the victim dies with kill -9.
    wait_until(lambda: min(_sessions(lb, "stot").values()) >= 5, "sessions on every node", 20)
    # (started first: a session that starts between the two readings is then counted twice,
    # which the bound below tolerates, not missed: pgbench -C connects for every transaction)
    started_before = _sessions(lb, "stot")
    current_before = _sessions(lb, "scur")[victim.name]
    redispatched_before = _sessions(lb, "wredis")[victim.name]
    victim.kill9()
    with psycopg.connect(pg_server.dsn(), autocommit=True) as direct:
        kill_time = direct.execute("select clock_timestamp()").fetchone()

    # HAProxy's /readyz check takes the dead node out of the rotation.
    wait_until(lambda: lb.status("dbsentry_postgres")[victim.name].startswith("DOWN"), "the dead node DOWN (two failed checks a second apart)", 10)
    assert lb.status("dbsentry_postgres") == {"node1": "DOWN", "node2": "UP", "node3": "UP"}
    # The live ones pass an HTTP check (/readyz answered 200), not a mere TCP connect.
    # (A check in progress shows as "* L7OK" with no code: wait for it to finish.)
    ok = ("L7OK", "200")
    deadline = time.monotonic() + 5
    while ((checks := _live_checks(lb))["node2"] != ok or checks["node3"] != ok) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert checks["node2"] == checks["node3"] == ok, checks
    down_started = _sessions(lb, "stot")

    out, err = run.communicate(timeout=60)
    aborted = re.findall(r"client \d+ aborted", err)
    # Only the clients whose transaction was on the dead node fail: at most those it held
    # at the kill, each by a lost connection. (A connect HAProxy tried on the dead node
    # before marking it down was redispatched to another node: the client saw nothing.)
    redispatched = _sessions(lb, "wredis")[victim.name]
    on_victim = current_before + (down_started[victim.name] - started_before[victim.name]) - (
        redispatched - redispatched_before
    )
    assert len(aborted) <= on_victim < CLIENTS, (aborted, on_victim, err)
    lost = re.compile(
        r"pgbench: error: (client \d+ aborted (in command \d+ \(SQL\) of script 0; perhaps the backend died"
        r"|while establishing connection)|connection to server .* failed: (server closed the connection"
        r" unexpectedly|SSL SYSCALL error: EOF detected)|Run was aborted; the above results are incomplete\.)"
    )
    errors = [line for line in err.splitlines() if line.startswith("pgbench:")]
    assert all(lost.match(line) for line in errors), err
    processed = _processed(out)

    # The others went on: transactions after the kill, all through nodes 2 and 3.
    after = _sessions(lb, "stot")
    assert after[victim.name] == down_started[victim.name]
    assert after["node2"] > down_started["node2"] and after["node3"] > down_started["node3"]
    with psycopg.connect(pg_server.dsn(), autocommit=True) as direct:
        rows = {k for (k,) in direct.execute(f"select k from {table}")}
        later = direct.execute(f"select count(*) from {table} where at > %s", kill_time).fetchone()
    assert later is not None and later[0] > 10
    assert len(rows) >= processed  # every transaction pgbench saw committed is there

    # A client that connects now reaches the two live nodes, without a failure.
    fresh = pgbench(lb, token, script, "-C", "-c", "2", "-j", "2", "-t", "10")
    out2, err2 = fresh.communicate(timeout=60)
    assert fresh.returncode == 0 and "number of failed transactions: 0 " in out2, out2 + err2

    # The node comes back (as systemd's Restart= starts it): HAProxy puts it back.
    victim.start()
    victim.wait_ready()
    wait_until(lambda: lb.status("dbsentry_postgres")[victim.name] == "UP", "node1 UP again", 10)

    # Every committed row has its audit record, whichever node served it.
    with psycopg.connect(pg_server.dsn(), autocommit=True) as direct:
        rows = {k for (k,) in direct.execute(f"select k from {table}")}
    audited = wait_until(
        lambda: (found := _audited_keys(nodes[1], table)) and rows <= set(found) and found,
        "an audit record for every committed row",
        20,
    )
    assert rows <= set(audited), f"{len(rows - set(audited))} committed rows without an audit record"
    with psycopg.connect(audit_dsn, autocommit=True) as index:
        served = index.execute(
            "select distinct node from dbsentry_audit.records where id = any(%s)", ([audited[k] for k in rows],)
        ).fetchall()
    assert {node.rpartition("-w")[0] for (node,) in served} == {"node1", "node2", "node3"}  # all served

    # audit verify covers every node: stop them (final checkpoints), gather the three logs
    # under one directory, as the recipe does on the verifying machine.
    for node in nodes:
        node.stop()
    gathered = tmp_path / "verify" / "audit-log"
    for node in nodes:
        for chain in (node.state_dir / "audit-log").iterdir():
            shutil.copytree(chain, gathered / chain.name)
    verifier = tmp_path / "verify" / "dbsentry.yaml"
    data = yaml.safe_load(nodes[1].config.read_text())
    data["audit"]["log_dir"] = str(gathered)
    verifier.write_text(yaml.safe_dump(data))
    keys = [a for i, n in enumerate(nodes, 1) for a in ("--node-key", f"node{i}={n.state_dir / 'audit_signing.pub'}")]
    done = dbsentry_cli("audit", "verify", "--json", *keys, config=verifier, env=nodes[1].env, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert result["first_problem"] is None
    chains = {c["node"]: c for c in result["nodes"]}  # one chain per worker: node1-w0, ...
    assert {name.rpartition("-w")[0] for name in chains} == {"node1", "node2", "node3"}, chains.keys()
    indexed = dict.fromkeys(("node1", "node2", "node3"), 0)
    for name, chain in chains.items():
        assert chain["index"]["rows"] == chain["index"]["agree"], chain
        indexed[name.rpartition("-w")[0]] += chain["index"]["agree"]
    assert all(indexed.values()), indexed
