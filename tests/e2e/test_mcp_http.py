"""The MCP server over streamable HTTP at /mcp on the proxy's HTTP listener: the ``mcp``
SDK's client with a bearer token, the protected-resource metadata, 401s; and the MCP
Inspector's CLI as an independent client (from npm, pinned in tests/mcp-inspector/)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import jwt
import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from support.audit import search
from support.mcp import AGENT, DBA, RUN_META_KEY, McpSetup, mcp_proxy, structured
from support.pg import PgServer

pytestmark = pytest.mark.e2e

INSPECTOR_DIR = Path(__file__).resolve().parents[1] / "mcp-inspector"


ISSUER = "https://idp.example.com"
AUDIENCE = "dbsentry"
OIDC_KEY = ec.generate_private_key(ec.SECP256R1())


def oidc_token(subject: str, *, agent: bool = True, lifetime: float = 300) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "email": subject, "groups": ["agents"], "iat": now, "exp": now + int(lifetime)}
    if agent:
        claims["dbsentry_kind"] = "agent"
    return jwt.encode(claims, OIDC_KEY, algorithm="ES256", headers={"kid": "k1"})


@pytest.fixture(scope="module")
def setup(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[McpSetup]:
    directory = tmp_path_factory.mktemp("mcp-http")
    jwk = ECAlgorithm.to_jwk(OIDC_KEY.public_key(), as_dict=True)
    (directory / "jwks.json").write_text(json.dumps({"keys": [{**jwk, "kid": "k1", "alg": "ES256", "use": "sig"}]}))
    oidc = {"issuer": ISSUER, "audience": AUDIENCE, "jwks_file": str(directory / "jwks.json")}
    with mcp_proxy(pg_server, directory, extra={"identity": {"oidc": oidc}}) as s:
        yield s


def test_http_with_an_oidc_jwt(setup: McpSetup) -> None:
    token = oidc_token("oidc-bot@example.com")

    async def main() -> dict[str, Any]:
        http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
        async with http, Client(streamable_http_client(setup.http_url, http_client=http)) as client:
            result = await client.call_tool("query", {"connection": "prod", "sql": f"SELECT email FROM {setup.schema}.customers WHERE id = 1"})
            assert not result.is_error, result
            return structured(result)

    data = anyio.run(main)
    assert data["rows"] == [["****@example.com"]] and data["audit"]["decision"] == "mask"
    with httpx2.Client(timeout=10) as http:
        doc = http.get(setup.http_url.removesuffix("/mcp") + "/.well-known/oauth-protected-resource/mcp").json()
        assert doc["authorization_servers"] == [ISSUER]
        expired = oidc_token("oidc-bot@example.com", lifetime=-600)
        got = http.post(setup.http_url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                        headers={"Authorization": f"Bearer {expired}", "Accept": "application/json, text/event-stream"})
        assert got.status_code == 401 and 'error="invalid_token"' in got.headers["www-authenticate"]


def test_http_tools_with_bearer_token(setup: McpSetup) -> None:
    token = setup.agent_token()
    sql = f"SELECT id, email FROM {setup.schema}.customers ORDER BY id"
    run = "run-http-" + str(int(time.time()))

    async def main() -> dict[str, Any]:
        http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
        async with http, Client(streamable_http_client(setup.http_url, http_client=http), mode="legacy") as client:
            names = {t.name for t in (await client.list_tools()).tools}
            assert "query" in names and "request_approval" in names
            result = await client.call_tool("query", {"connection": "prod", "sql": sql}, meta={RUN_META_KEY: run})
            assert not result.is_error, result
            data = structured(result)
            result = await client.call_tool("query", {"connection": "prod", "sql": f"DROP TABLE {setup.schema}.customers"})
            assert result.is_error and structured(result)["sqlstate"] == "42501"
            # without a run id of its own, the call belongs to the MCP session
            result = await client.call_tool("query", {"connection": "prod", "sql": "SELECT 1"})
            assert not result.is_error
            return data

    data = anyio.run(main)
    assert [r[1] for r in data["rows"]] == ["****@example.com", "****@example.org", "****@example.net"]
    deadline = time.monotonic() + 10
    while not (rows := search(setup.config, "--run", run)) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert len(rows) == 1 and rows[0]["identity"] == AGENT and rows[0]["correlation"]["run_id"] == run
    assert rows[0]["correlation"].get("mcp_session")  # the HTTP session id rides along
    # the console's filter: the API's run= parameter
    auditor = setup.proxy.token("sec@example.com", ("security",))
    with httpx2.Client(timeout=10) as http:
        got = http.get(setup.http_url.removesuffix("/mcp") + "/api/v1/statements", params={"run": run}, headers={"Authorization": f"Bearer {auditor}"})
    assert got.status_code == 200, got.text
    assert [i["id"] for i in got.json()["items"]] == [rows[0]["id"]]


def test_http_approval_granted_through_the_console_api(setup: McpSetup, pg_server: PgServer) -> None:
    token = setup.agent_token()
    sql = f"DELETE FROM {setup.schema}.mcp_orders WHERE id = 4"
    base = setup.http_url.removesuffix("/mcp")
    dba = setup.proxy.token(*DBA)

    async def main() -> None:
        http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
        async with http, Client(streamable_http_client(setup.http_url, http_client=http)) as client:
            req = structured(await client.call_tool("request_approval", {"connection": "staging", "sql": sql, "reason": "OPS-7"}))
            rid = req["request_id"]
            async with httpx2.AsyncClient(timeout=10) as api:  # what the console's Approve button sends
                got = await api.post(f"{base}/api/v1/approvals/{rid}/approve", json={"comment": "ok"}, headers={"Authorization": f"Bearer {dba}"})
                assert got.status_code == 200, got.text
            deadline = time.monotonic() + 10
            while (st := structured(await client.call_tool("approval_status", {"request_id": rid})))["status"] != "approved":
                assert time.monotonic() < deadline, st
                await anyio.sleep(0.2)
            done = await client.call_tool("query", {"connection": "staging", "sql": sql})
            assert not done.is_error and structured(done)["audit"]["approval_id"] == rid
            again = await client.call_tool("query", {"connection": "staging", "sql": sql})
            assert again.is_error and structured(again)["approval_request_id"] != rid

    anyio.run(main)
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        assert conn.execute(f"SELECT count(*) FROM {setup.schema}.mcp_orders WHERE id = 4").fetchall() == [(0,)]


def test_http_refuses_bad_tokens_with_www_authenticate(setup: McpSetup) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    with httpx2.Client(timeout=10) as http:
        for auth in (None, "Bearer dbs_forged_abcdefabcdefabcdef", "Basic YWxhZGRpbjpvcGVu", "Bearer " + "x" * 2000):
            h = {**headers, **({"Authorization": auth} if auth else {})}
            got = http.post(setup.http_url, json=body, headers=h)
            assert got.status_code == 401, (auth, got.status_code, got.text)
            challenge = got.headers["www-authenticate"]
            assert challenge.startswith("Bearer ") and 'resource_metadata="http://127.0.0.1:' in challenge
            if auth and auth.startswith("Bearer dbs_"):
                assert 'error="invalid_token"' in challenge
        meta_url = challenge.split('resource_metadata="')[1].split('"')[0]
        doc = http.get(meta_url).json()
        assert doc["resource"] == setup.http_url and doc["bearer_methods_supported"] == ["header"]
        # a person's token is not an agent's
        person = setup.proxy.token("alice@example.com", ("eng",))
        got = http.post(setup.http_url, json=body, headers={**headers, "Authorization": f"Bearer {person}"})
        assert got.status_code == 403 and "not an agent" in got.json()["detail"]


def _inspector() -> list[str] | None:
    if shutil.which("npm") is None:
        return None
    binary = INSPECTOR_DIR / "node_modules" / ".bin" / "mcp-inspector"
    if not binary.exists():  # scripts/test installs it; a bare pytest run does it here
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--silent"], cwd=INSPECTOR_DIR, check=True, timeout=600, capture_output=True)
    return [str(binary), "--cli"]


def test_inspector_cli_as_an_independent_client(setup: McpSetup, tmp_path: Path) -> None:
    cli = _inspector()
    if cli is None:
        pytest.skip("npm is not installed: the MCP Inspector CLI (tests/mcp-inspector/package.json) cannot run")
    token = setup.agent_token()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["MCP_CATALOG_PATH"] = str(tmp_path / "inspector-catalog.json")
    run = "run-inspector-" + str(int(time.time()))

    def inspect(*args: str, transport: str = "http") -> dict[str, Any]:
        if transport == "stdio":
            cmd, cargs = setup.stdio_command()
            argv = [*cli, "-e", f"DBSENTRY_TOKEN={token}", "--metadata", f"{RUN_META_KEY}={run}", *args, "--", cmd, *cargs]
        else:
            argv = [*cli, setup.http_url, "--transport", "http", "--header", f"Authorization: Bearer {token}",
                    "--metadata", f"{RUN_META_KEY}={run}", *args]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
        # 5: the tool answered with isError (printed like any result)
        assert done.returncode in (0, 5), done.stderr + done.stdout
        return json.loads(done.stdout)  # type: ignore[no-any-return]

    tools = inspect("--method", "tools/list")
    assert {t["name"] for t in tools["tools"]} >= {"list_tables", "query", "approval_status"}
    q = inspect("--method", "tools/call", "--tool-name", "query", "--tool-arg", "connection=prod",
                "--tool-arg", f"sql=SELECT ssn FROM {setup.schema}.customers ORDER BY id", "--tool-arg", "max_rows=2")
    assert q["structuredContent"]["rows"] == [["***-**-1120"], ["***-**-9999"]] and q["structuredContent"]["truncated"] is True
    drop = inspect("--method", "tools/call", "--tool-name", "query", "--tool-arg", "connection=prod",
                   "--tool-arg", f"sql=DROP TABLE {setup.schema}.customers", transport="stdio")
    assert drop["isError"] is True and "baseline.prod.drop" in drop["content"][0]["text"]
    deadline = time.monotonic() + 10
    while len(rows := search(setup.config, "--run", run)) < 2 and time.monotonic() < deadline:
        time.sleep(0.3)
    # one run over both transports: the masked read (HTTP) and the refused DROP (stdio)
    assert [(r["identity"], r["decision"]) for r in rows] == [(AGENT, "mask"), (AGENT, "deny")]
    assert "ssn" in rows[0]["statement"] and "DROP TABLE" in rows[1]["statement"]
