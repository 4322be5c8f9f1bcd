"""Waiting for a reviewer inside the approval tools (docs/mcp.md, "Approvals"): a client that
asks for progress notifications gets ``request_approval`` / ``approval_status`` held open
until a reviewer (another person, another process) decides, or ``mcp.approval_wait_seconds``
pass; a client that does not gets the answer at once and polls."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterator

import anyio
import httpx2
import psycopg
import pytest
from mcp.client.client import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from support.mcp import DBA, McpSetup, mcp_proxy, structured
from support.pg import PgServer
from support.proxy import dbsentry_cli

pytestmark = pytest.mark.e2e

MAX_WAIT = 6.0
REQUEST_ID = re.compile(r"apr_[0-9a-z]+")


@pytest.fixture(scope="module")
def setup(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[McpSetup]:
    with mcp_proxy(pg_server, tmp_path_factory.mktemp("mcp-wait"), approval_wait_seconds=MAX_WAIT) as s:
        yield s


def stdio(setup: McpSetup, scenario: Callable[[Client], Awaitable[None]]) -> None:
    cmd, args = setup.stdio_command()

    async def main() -> None:
        async with Client(StdioServerParameters(command=cmd, args=args, env=setup.stdio_env(setup.agent_token()))) as client:
            await scenario(client)

    anyio.run(main)


def http(setup: McpSetup, scenario: Callable[[Client], Awaitable[None]], *, legacy: bool = False) -> None:
    async def main() -> None:
        h = create_mcp_http_client(headers={"Authorization": f"Bearer {setup.agent_token()}"})
        transport = streamable_http_client(setup.http_url, http_client=h)
        async with h, (Client(transport, mode="legacy") if legacy else Client(transport)) as client:
            await scenario(client)

    anyio.run(main)


class Reviewer:
    """Another person: decides the request named in the first progress notification, from
    another thread (and, with the CLI, another process), after ``delay`` seconds."""

    def __init__(self, decide: Callable[[str], None], delay: float = 1.0) -> None:
        self.decide, self.delay = decide, delay
        self.messages: list[str] = []
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None

    async def progress(self, progress: float, total: float | None, message: str | None) -> None:
        self.messages.append(message or "")
        if self.thread is None and message and (m := REQUEST_ID.search(message)):
            self.thread = threading.Thread(target=self._run, args=(m.group(0),), daemon=True)
            self.thread.start()

    def _run(self, request_id: str) -> None:
        time.sleep(self.delay)
        try:
            self.decide(request_id)
        except BaseException as err:
            self.error = err

    def join(self) -> None:
        assert self.thread is not None, f"no progress notification named a request: {self.messages}"
        self.thread.join(30)
        if self.error is not None:
            raise self.error


def count(pg: PgServer, sql: str) -> int:
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        got = conn.execute(sql).fetchone()
        assert got is not None
        return int(got[0])


def test_stdio_request_approval_waits_until_approved_then_runs_once(setup: McpSetup, pg_server: PgServer) -> None:
    sql = f"DELETE FROM {setup.schema}.mcp_orders WHERE id = 1"

    def approve(rid: str) -> None:
        done = dbsentry_cli("approvals", "approve", rid, "--token", setup.proxy.token(*DBA), "--comment", "ok", config=setup.config)
        assert "approved" in done.stdout, done.stdout + done.stderr

    reviewer = Reviewer(approve)

    async def scenario(client: Client) -> None:
        started = time.monotonic()
        result = await client.call_tool(
            "request_approval", {"connection": "staging", "sql": sql, "reason": "OPS-9"}, progress_callback=reviewer.progress
        )
        took = time.monotonic() - started
        reviewer.join()
        data = structured(result)
        assert not result.is_error and data["status"] == "approved", data
        assert "query" in data["next"] and data["request_id"].startswith("apr_")
        assert took < MAX_WAIT and 0.5 < data["waited_seconds"] < MAX_WAIT, (took, data)
        assert count(pg_server, f"SELECT count(*) FROM {setup.schema}.mcp_orders WHERE id = 1") == 1
        done = await client.call_tool("query", {"connection": "staging", "sql": sql})
        assert not done.is_error and structured(done)["row_count"] == 1 and structured(done)["audit"]["approval_id"] == data["request_id"]
        again = await client.call_tool("query", {"connection": "staging", "sql": sql})
        assert again.is_error and structured(again)["approval_request_id"] != data["request_id"]

    stdio(setup, scenario)
    assert count(pg_server, f"SELECT count(*) FROM {setup.schema}.mcp_orders WHERE id = 1") == 0


@pytest.mark.serial
def test_http_approval_status_wait_ends_with_a_denial(setup: McpSetup, pg_server: PgServer) -> None:
    sql = f"DELETE FROM {setup.schema}.mcp_orders WHERE id = 2"
    base = setup.http_url.removesuffix("/mcp")

    def deny(rid: str) -> None:  # what the console's Deny button sends
        got = httpx2.post(
            f"{base}/api/v1/approvals/{rid}/deny", json={"comment": "not today"}, headers={"Authorization": f"Bearer {setup.proxy.token(*DBA)}"}, timeout=10
        )
        assert got.status_code == 200, got.text

    reviewer = Reviewer(deny)

    async def scenario(client: Client) -> None:
        # no progress asked for: the answer comes at once (the client polls)
        started = time.monotonic()
        req = structured(await client.call_tool("request_approval", {"connection": "staging", "sql": sql, "reason": "OPS-10"}))
        assert req["status"] == "pending" and "waited_seconds" not in req and time.monotonic() - started < MAX_WAIT / 2, req
        started = time.monotonic()
        result = await client.call_tool("approval_status", {"request_id": req["request_id"]}, progress_callback=reviewer.progress)
        took = time.monotonic() - started
        reviewer.join()
        data = structured(result)
        assert not result.is_error and data["status"] == "denied", data
        assert data["denied_by"] == DBA[0] and data["denial_comment"] == "not today"
        assert took < MAX_WAIT, took
        assert any(req["request_id"] in m for m in reviewer.messages)

    http(setup, scenario)
    assert count(pg_server, f"SELECT count(*) FROM {setup.schema}.mcp_orders WHERE id = 2") == 1


def test_http_legacy_handshake_waits_too(setup: McpSetup) -> None:
    """The 2025-11-25 initialize handshake (what most clients speak today), not 2026-07-28."""
    sql = f"DELETE FROM {setup.schema}.mcp_orders WHERE id = 4"
    base = setup.http_url.removesuffix("/mcp")

    def approve(rid: str) -> None:  # what the console's Approve button sends
        got = httpx2.post(
            f"{base}/api/v1/approvals/{rid}/approve", json={"comment": "ok"}, headers={"Authorization": f"Bearer {setup.proxy.token(*DBA)}"}, timeout=10
        )
        assert got.status_code == 200, got.text

    reviewer = Reviewer(approve, delay=0.5)

    async def scenario(client: Client) -> None:
        assert client.protocol_version == "2025-11-25", client.protocol_version
        result = await client.call_tool(
            "request_approval", {"connection": "staging", "sql": sql, "reason": "OPS-13"}, progress_callback=reviewer.progress
        )
        reviewer.join()
        data = structured(result)
        assert not result.is_error and data["status"] == "approved" and data["waited_seconds"] < MAX_WAIT, data

    http(setup, scenario, legacy=True)


def test_the_wait_is_bounded_and_returns_pending(setup: McpSetup) -> None:
    sql = f"DELETE FROM {setup.schema}.mcp_orders WHERE id = 3"
    ticks: list[tuple[float, float | None]] = []

    async def progress(progress: float, total: float | None, message: str | None) -> None:
        ticks.append((progress, total))

    async def scenario(client: Client) -> None:
        started = time.monotonic()
        result = await client.call_tool(
            "request_approval", {"connection": "staging", "sql": sql, "reason": "OPS-11"}, progress_callback=progress
        )
        took = time.monotonic() - started
        data = structured(result)
        assert not result.is_error and data["status"] == "pending" and data["request_id"].startswith("apr_"), data
        assert "still pending" in data["next"] and "approval_status" in data["next"]
        assert MAX_WAIT - 0.5 <= took < MAX_WAIT + 10 and data["waited_seconds"] >= MAX_WAIT - 0.5, (took, data)
        assert len(ticks) >= 2 and all(total == MAX_WAIT for _, total in ticks), ticks

    http(setup, scenario)


@pytest.mark.serial
def test_a_client_without_progress_polls(setup: McpSetup) -> None:
    sql = f"DELETE FROM {setup.schema}.mcp_orders WHERE id = 5"

    async def scenario(client: Client) -> None:
        req = structured(await client.call_tool("request_approval", {"connection": "staging", "sql": sql, "reason": "OPS-12"}))
        rid = req["request_id"]
        started = time.monotonic()
        st = structured(await client.call_tool("approval_status", {"request_id": rid}))
        assert st["status"] == "pending" and "waited_seconds" not in st and time.monotonic() - started < MAX_WAIT / 2, st
        done = dbsentry_cli("approvals", "approve", rid, "--token", setup.proxy.token(*DBA), config=setup.config)
        assert "approved" in done.stdout, done.stdout + done.stderr
        deadline = time.monotonic() + 10
        while (st := structured(await client.call_tool("approval_status", {"request_id": rid})))["status"] != "approved":
            assert time.monotonic() < deadline, st
            await anyio.sleep(0.2)

    stdio(setup, scenario)


def test_tool_schemas_unchanged(setup: McpSetup) -> None:
    async def scenario(client: Client) -> None:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert set(tools["request_approval"].input_schema["properties"]) == {"connection", "sql", "reason"}
        assert set(tools["approval_status"].input_schema["properties"]) == {"request_id"}

    stdio(setup, scenario)
