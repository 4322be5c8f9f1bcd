"""The MCP tools on a MySQL connection, end to end: the ``mcp`` SDK's client over HTTP to a
running dbsentry with ``listen.mysql``, whose tools log in to its own MySQL listener as the
agent (PyMySQL over TLS) in front of the real MariaDB. Masked rows, the production baseline
(DROP refused with its rule, an agent's write refused), approvals (the request id, a
reviewer's approval, the statement run once), result caps, the statement timeout (KILL QUERY
through the proxy), the catalog tools (information_schema), EXPLAIN FORMAT=JSON, the audit
(engine mysql, the agent's identity, the run). Also two other MySQL clients through the same
listener: asyncmy (token over TLS) and the mariadb command-line client's ``source``."""

from __future__ import annotations

import re
import shutil
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

from support.audit import search
from support.mysql import (
    DATABASE,
    PORT,
    MySQLProxy,
    root_connect,
    run_mysql_proxy,
    server_reason,
)
from support.pg import free_port
from support.proxy import dbsentry_cli

_REASON = server_reason()
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]
pymysql = pytest.importorskip("pymysql")

from mcp.client.client import Client  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402
from mcp.shared._httpx_utils import create_mcp_http_client  # noqa: E402

AGENT = ("mysql-bot@example.com", ("agents",), True)
DBA = ("dora@example.com", ("dba",), False)
PERSON = ("alice@example.com", ("eng",), False)
RUN_META_KEY = "io.dbsentry/run_id"
EMAILS = [f"person{i}.real@example.com" for i in range(1, 13)]


@dataclass(frozen=True)
class Env:
    mp: MySQLProxy
    url: str
    t: str
    orders: str

    @property
    def config(self) -> Path:
        return self.mp.proxy.config_path


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    s = uuid.uuid4().hex[:8]
    t, orders = f"mmcp_{s}", f"mmcp_orders_{s}"
    with root_connect() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE TABLE {t} (id INT PRIMARY KEY, email VARCHAR(80) NOT NULL, note VARCHAR(80), KEY email_idx (email))")
        cur.executemany(f"INSERT INTO {t} VALUES (%s, %s, %s)", [(i, e, f"note {i}") for i, e in enumerate(EMAILS, 1)])
        cur.execute(f"CREATE TABLE {orders} (id INT PRIMARY KEY, item VARCHAR(40))")
        cur.executemany(f"INSERT INTO {orders} VALUES (%s, %s)", [(i, f"item {i}") for i in range(1, 6)])
    directory = tmp_path_factory.mktemp("mysql-mcp")
    policy = directory / "policy.yaml"
    policy.write_text(
        "version: 1\n"
        "rules:\n"
        "  - name: order-deletes-need-dba\n"
        f"    match: {{commands: [DELETE], tables: [{orders}], environments: [development]}}\n"
        "    action: require_approval\n"
        "    approvers: [dba]\n"
        "    message: order deletes need a DBA\n"
    )
    extra = {"policy": str(policy), "approvals": {"poll_interval_seconds": 0.2}}
    try:
        with _serving(directory, t, orders, extra) as served:
            yield served
    finally:
        with root_connect() as conn, conn.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {t}")
            cur.execute(f"DROP TABLE IF EXISTS {orders}")


@contextmanager
def _serving(directory: Path, t: str, orders: str, extra: dict[str, Any]) -> Iterator[Env]:
    """dbsentry with the MCP endpoint and ``listen.mysql`` (``extra``: more settings)."""
    port, http = free_port(), free_port()
    settings = {
        "listen": {"postgres": f"127.0.0.1:{free_port()}", "http": f"127.0.0.1:{http}", "mysql": f"127.0.0.1:{port}"},
        "mcp": {"max_rows": 20, "statement_timeout_seconds": 4},  # room for a loaded machine
        "masking": {"sample_budget_seconds": 5},
        **extra,
    }
    with run_mysql_proxy(directory, port=port, extra=settings) as mp:
        yield Env(mp, f"http://127.0.0.1:{http}/mcp", t, orders)


@pytest.fixture(scope="module")
def one_worker(env: Env, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """The same tables behind a dbsentry with one worker: the MCP tools and the proxy
    sessions they log in to share one event loop."""
    with _serving(tmp_path_factory.mktemp("mysql-mcp-one"), env.t, env.orders, {"workers": 1}) as served:
        yield served


def call(env: Env, *calls: tuple[str, dict[str, Any]], meta: dict[str, Any] | None = None) -> list[tuple[bool, dict[str, Any]]]:
    """Each tool call in one MCP session of the agent: (is_error, structured content)."""
    token = env.mp.token(*AGENT)

    async def main() -> list[tuple[bool, dict[str, Any]]]:
        out = []
        http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
        async with http, Client(streamable_http_client(env.url, http_client=http)) as client:
            for name, args in calls:
                result = await client.call_tool(name, args, meta=meta)
                assert isinstance(result.structured_content, dict), result
                out.append((bool(result.is_error), result.structured_content))
        return out

    return anyio.run(main)


def test_list_connections_names_the_engine(env: Env) -> None:
    [(err, data)] = call(env, ("list_connections", {}))
    assert not err
    engines = {c["name"]: (c["engine"], c["production"]) for c in data["connections"]}
    assert engines["prod"] == ("mysql", True) and engines["dev"] == ("mysql", False)
    assert "restricted" not in engines


def test_masked_rows_caps_and_audit(env: Env) -> None:
    run = "run-mysql-mcp-" + uuid.uuid4().hex[:8]
    sql = f"SELECT id, email, note FROM {env.t} ORDER BY id"
    (err, data), (err2, capped), (err3, tiny) = call(
        env,
        ("query", {"connection": "prod", "sql": sql}),
        ("query", {"connection": "prod", "sql": sql, "max_rows": 5}),
        ("query", {"connection": "prod", "sql": f"SELECT id, ? AS greeting FROM {env.t} WHERE id = ?", "params": ["it's", 3]}),
        meta={RUN_META_KEY: run},
    )
    assert not err and not err2 and not err3, (data, capped, tiny)
    assert [c["name"] for c in data["columns"]] == ["id", "email", "note"] and data["columns"][0]["type"] == "long"
    assert data["row_count"] == 12 and not data["truncated"]
    assert [r[0] for r in data["rows"]] == [str(i) for i in range(1, 13)]  # values as the server's text
    emails = [r[1] for r in data["rows"]]
    assert not set(emails) & set(EMAILS) and all("@" in e and "*" in e for e in emails), emails
    assert data["rows"][0][2] == "note 1"
    assert data["decision"] and data["decision"]["action"] == "mask", data["audit"]
    assert capped["truncated"] and capped["truncated_by"] == "max_rows" and len(capped["rows"]) == 5
    assert tiny["rows"] == [["3", "it's"]]  # ? bound as a quoted literal
    deadline = time.monotonic() + 10
    while len(rows := search(env.config, "--run", run)) < 3 and time.monotonic() < deadline:
        time.sleep(0.3)
    assert len(rows) == 3, rows
    assert {r["engine"] for r in rows} == {"mysql"} and {r["identity"] for r in rows} == {AGENT[0]}
    assert all(r["connection"] == "prod" and r["correlation"]["run_id"] == run for r in rows)


def test_production_refuses_drop_and_agent_writes(env: Env) -> None:
    (e1, drop), (e2, write), (e3, after) = call(
        env,
        ("query", {"connection": "prod", "sql": f"DROP TABLE {env.t}"}),
        ("query", {"connection": "prod", "sql": f"UPDATE {env.t} SET note = 'x' WHERE id = 1"}),
        ("query", {"connection": "prod", "sql": f"SELECT note FROM {env.t} WHERE id = 1"}),
    )
    assert e1 and drop["sqlstate"] == "42000" and drop["error_code"] == 1227
    assert drop["database_message"].startswith("dbsentry:") and "baseline.prod.drop" in drop["database_message"]
    assert drop["audit"]["decision"] == "deny"
    assert e2 and write["sqlstate"] == "42000" and "dbsentry:" in write["database_message"], write
    assert not e3 and after["rows"] == [["note 1"]]  # the session goes on; nothing changed
    with root_connect() as conn, conn.cursor() as cur:
        cur.execute(f"SELECT COUNT(*) FROM {env.t}")
        assert cur.fetchone()[0] == 12


def test_one_statement_and_no_transaction_control(env: Env) -> None:
    results = call(
        env,
        ("query", {"connection": "dev", "sql": f"SELECT 1; DROP TABLE {env.t}"}),
        ("query", {"connection": "dev", "sql": "START TRANSACTION"}),
        ("query", {"connection": "dev", "sql": "SELECT /*!50000 1 */"}),
    )
    assert [e for e, _ in results] == [True, True, True]
    assert "one statement per call" in results[0][1]["error"]
    assert "transaction of its own" in results[1][1]["error"]
    assert "does not parse" in results[2][1]["error"] and "sqlstate" not in results[2][1]  # nothing sent


def test_approval_request_id_then_approved_runs_once(env: Env) -> None:
    sql = f"DELETE FROM {env.orders} WHERE id = 4"
    [(err, refused)] = call(env, ("query", {"connection": "dev", "sql": sql}))
    assert err and refused["approval_request_id"].startswith("apr_"), refused
    assert "approval_status" in refused["error"]
    rid = refused["approval_request_id"]
    [(err, status)] = call(env, ("approval_status", {"request_id": rid}))
    assert not err and status["status"] == "pending" and status["approvers"] == ["dba"]
    done = dbsentry_cli("approvals", "approve", rid, "--token", env.mp.token(*DBA), "--comment", "ok", config=env.config)
    assert "approved" in done.stdout, done.stdout + done.stderr
    (e1, ran), (e2, again) = call(env, ("query", {"connection": "dev", "sql": sql}), ("query", {"connection": "dev", "sql": sql}))
    assert not e1 and ran["row_count"] == 1 and ran["audit"]["approval_id"] == rid, ran
    assert e2 and again["approval_request_id"] != rid  # used up: a new request
    with root_connect() as conn, conn.cursor() as cur:
        cur.execute(f"SELECT id FROM {env.orders} ORDER BY id")
        ids = {r[0] for r in cur.fetchall()}
        assert 4 not in ids and {1, 2, 3} <= ids  # deleted once, nothing else


def test_request_approval_waits_for_the_reviewer_then_runs_once(env: Env) -> None:
    """Wait mode as on PostgreSQL: a client that takes progress notifications is held by
    request_approval (the proxy made the request, inside a read-only transaction) until a
    reviewer decides; then the same sql runs once with query."""
    sql = f"DELETE FROM {env.orders} WHERE id = 5"
    seen: list[str] = []
    decided: list[str] = []

    def approve(rid: str) -> None:
        time.sleep(0.5)
        done = dbsentry_cli("approvals", "approve", rid, "--token", env.mp.token(*DBA), "--comment", "ok", config=env.config)
        decided.append(done.stdout + done.stderr)

    async def progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(message or "")
        if len(seen) == 1 and message and (m := re.search(r"apr_[a-z0-9]+", message)):
            threading.Thread(target=approve, args=(m.group(0),), daemon=True).start()

    async def main() -> tuple[dict[str, Any], dict[str, Any]]:
        http = create_mcp_http_client(headers={"Authorization": f"Bearer {env.mp.token(*AGENT)}"})
        async with http, Client(streamable_http_client(env.url, http_client=http)) as client:
            asked = await client.call_tool(
                "request_approval", {"connection": "dev", "sql": sql, "reason": "cleanup"}, progress_callback=progress
            )
            ran = await client.call_tool("query", {"connection": "dev", "sql": sql})
            assert isinstance(asked.structured_content, dict) and isinstance(ran.structured_content, dict)
            return asked.structured_content, ran.structured_content

    asked, ran = anyio.run(main)
    assert asked["status"] == "approved" and asked["waited_seconds"] > 0.2, (asked, seen, decided)
    assert ran["row_count"] == 1 and ran["audit"]["approval_id"] == asked["request_id"], ran
    with root_connect() as conn, conn.cursor() as cur:
        cur.execute(f"SELECT id FROM {env.orders} ORDER BY id")
        ids = {r[0] for r in cur.fetchall()}
        assert 5 not in ids and {1, 2, 3} <= ids


def test_statement_timeout_kills_the_query_and_the_session_goes_on(env: Env) -> None:
    started = time.monotonic()
    [(e1, slow)] = call(env, ("query", {"connection": "dev", "sql": "SELECT SLEEP(20) AS mmcp_sleeper"}))
    assert e1 and "statement timeout" in slow["error"], slow
    assert time.monotonic() - started < 15
    with root_connect() as conn, conn.cursor() as cur:  # the KILL QUERY reached the server: nothing sleeps on
        cur.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE '%SLEEP(20) AS mmcp_sleeper%' AND INFO NOT LIKE '%PROCESSLIST%'")
        assert cur.fetchone()[0] == 0
    [(e2, after)] = call(env, ("query", {"connection": "dev", "sql": "SELECT 41 + 1"}))
    assert not e2 and after["rows"] == [["42"]]


def test_catalog_tools_and_explain(env: Env) -> None:
    (e1, tables), (e2, desc), (e3, plan), (e4, missing) = call(
        env,
        ("list_tables", {"connection": "dev"}),
        ("describe_table", {"connection": "dev", "table": env.t}),
        ("explain", {"connection": "dev", "sql": f"SELECT email FROM {env.t} WHERE id = 2"}),
        ("describe_table", {"connection": "dev", "table": "no_such_table_here"}),
    )
    assert not e1 and not e2 and not e3, (tables, desc, plan)
    mine = [t for t in tables["tables"] if t["name"] == env.t]
    assert len(mine) == 1 and mine[0]["schema"] == DATABASE and mine[0]["kind"] == "table"
    assert [c["name"] for c in mine[0]["columns"]] == ["id", "email", "note"]
    email = next(c for c in mine[0]["columns"] if c["name"] == "email")
    assert email["type"] == "varchar(80)" and email["not_null"] and email["data_class"] == "email" and email["masked"]
    assert desc["kind"] == "table" and [k["type"] for k in desc["keys"]] == ["primary key"]
    assert {i["name"]: i["unique"] for i in desc["indexes"]} == {"PRIMARY": True, "email_idx": False}
    assert plan["decision"]["action"] in ("allow", "mask") and isinstance(plan["plan"], dict), plan
    assert "query_block" in plan["plan"]
    assert e4 and "no table or view" in missing["error"]


def test_asyncmy_through_the_listener(env: Env) -> None:
    asyncmy = pytest.importorskip("asyncmy")
    from asyncmy.errors import OperationalError

    name, groups, agent = PERSON
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE

    async def main() -> tuple[list[Any], Any]:
        conn = await asyncmy.connect(
            host="127.0.0.1", port=env.mp.port, user=name, password=env.mp.token(name, groups, agent), db="prod", ssl=ctx, autocommit=True
        )
        try:
            async with conn.cursor() as cur:
                await cur.execute(f"SELECT id, email FROM {env.t} WHERE id <= 3 ORDER BY id")
                rows = list(await cur.fetchall())
                with pytest.raises(OperationalError) as refused:
                    await cur.execute(f"DROP TABLE {env.t}")
                await cur.execute("SELECT 1")  # the session goes on
                assert (await cur.fetchone()) == (1,)
            return rows, refused.value
        finally:
            await conn.ensure_closed()

    rows, refused = anyio.run(main)
    assert [r[0] for r in rows] == [1, 2, 3]
    assert not {r[1] for r in rows} & set(EMAILS) and all("@" in r[1] for r in rows)
    code, message = refused.args[:2]
    assert code == 1227 and message.startswith("dbsentry:") and "baseline.prod.drop" in message
    assert getattr(refused, "sqlstate", "42000") == "42000"  # asyncmy 0.2.18+ keeps the ERR packet's SQLSTATE


@pytest.mark.skipif(shutil.which("mariadb") is None, reason="the mariadb command-line client is not installed")
def test_mariadb_cli_source_file(env: Env, tmp_path: Path) -> None:
    script = tmp_path / "script.sql"
    script.write_text(f"SELECT id, email FROM {env.t} WHERE id = 1;\nSELECT COUNT(*) AS n FROM {env.t};\nDROP TABLE {env.t};\nSELECT 'still here' AS after;\n")
    name, groups, agent = PERSON
    cmd = [
        "mariadb", "-h", "127.0.0.1", "-P", str(env.mp.port), "-u", name, f"-p{env.mp.token(name, groups, agent)}",
        "--ssl", "--ssl-verify-server-cert=0", "-D", "prod", "-e", f"source {script}",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    lines = out.stdout.splitlines()
    assert lines[0] == "id\temail" and lines[1].startswith("1\t") and EMAILS[0] not in out.stdout
    assert "ERROR 1227 (42000) at line 3 in file" in out.stderr and "baseline.prod.drop" in out.stderr, out.stderr
    assert lines[2:] == ["n", "12", "after", "still here"]  # the client goes on with the file, the session with it


def test_the_tools_do_not_log_in_without_tls() -> None:
    """A listener that offers no TLS (here the test MariaDB itself) never gets the token."""
    from dbsentry.agents.errors import ToolRefused
    from dbsentry.agents.mysql import MySQLDriver
    from dbsentry.agents.wire import Login, ProxyAddress

    login = Login(ProxyAddress("127.0.0.1", 1, "require", PORT), "root", "dbs_not_a_token", "test", "dbsentry-mcp", 1.5, 5)
    with pytest.raises(ToolRefused) as refused:
        anyio.run(MySQLDriver().connect, login)
    assert "TLS" in refused.value.message


def test_explain_in_production(env: Env) -> None:
    """The plan runs inside START TRANSACTION READ ONLY on the agent's read-only production session."""
    (e1, plan), (e2, dropped) = call(
        env,
        ("explain", {"connection": "prod", "sql": f"SELECT note FROM {env.t} WHERE id = 2"}),
        ("explain", {"connection": "prod", "sql": f"DROP TABLE {env.t}"}),
    )
    assert not e1 and isinstance(plan["plan"], dict) and "query_block" in plan["plan"], plan
    assert not e2 and dropped["decision"]["action"] == "deny" and "baseline.prod.drop" in dropped["decision"]["rules"], dropped
    assert dropped["plan"] is None and "nothing was sent" in dropped["plan_note"]


def test_a_result_cut_at_its_cap_is_not_read_to_the_end(env: Env) -> None:
    """A hundred million rows, capped at 5: the rows come back at once; the rest is not read
    (the tools leave the connection, the proxy kills the statement); the next call goes on."""
    started = time.monotonic()
    (e1, cut), (e2, after) = call(
        env,
        ("query", {"connection": "dev", "sql": "SELECT seq AS mmcp_many FROM seq_1_to_100000000", "max_rows": 5}),
        ("query", {"connection": "dev", "sql": "SELECT 6 * 7"}),
    )
    assert not e1 and cut["rows"] == [["1"], ["2"], ["3"], ["4"], ["5"]] and cut["truncated_by"] == "max_rows", cut
    assert time.monotonic() - started < 10
    assert not e2 and after["rows"] == [["42"]]
    deadline = time.monotonic() + 10
    while True:  # the server stops the rest (not at once: the proxy notices the client left)
        with root_connect() as conn, conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE '%AS mmcp_many FROM%' AND INFO NOT LIKE '%PROCESSLIST%'")
            if cur.fetchone()[0] == 0:
                break
        assert time.monotonic() < deadline, "the capped statement still runs on the server"
        time.sleep(0.2)
    assert "Exception ignored" not in Path(env.mp.proxy.log_path).read_text()  # the dropped result is not read when collected


@pytest.mark.serial  # bounds each call to 2.5 s: run alone after the others
def test_five_rows_of_a_huge_result_come_back_at_once_whatever_came_before(one_worker: Env) -> None:
    """An explain, then 5 rows of a hundred million, on the one worker that also runs the
    tools: the rows come back at once, every time. The proxy relays the upstream one read
    per turn of the event loop and stops at the first write to a client that has left,
    instead of masking megabytes of rows for nobody while the tool call (its rows read
    long ago) waits for the loop, and runs past its statement timeout."""
    explain = ("explain", {"connection": "dev", "sql": f"SELECT email FROM {one_worker.t} WHERE id = 2"})
    cut = ("query", {"connection": "dev", "sql": "SELECT seq AS mmcp_many FROM seq_1_to_100000000", "max_rows": 5})
    for _ in range(3):
        [(e1, plan)] = call(one_worker, explain)
        assert not e1, plan
        started = time.monotonic()
        [(e2, rows)] = call(one_worker, cut)
        took = time.monotonic() - started
        assert not e2 and rows["rows"] == [["1"], ["2"], ["3"], ["4"], ["5"]], rows
        assert took < 2.5, f"5 rows took {took:.1f} s"
