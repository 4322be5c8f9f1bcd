"""Same decisions everywhere: the guardrail corpus and a masking corpus, run as the same
agent through the MCP ``query`` tool and through psycopg connected to the proxy, give the
same refusals (SQLSTATE and message) and the same masked rows, value for value.

The MCP layer may refuse more (several statements in one call), never less: statements it
refuses itself are counted, and none of them may be one psycopg runs."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest
import yaml
from mcp.client.client import Client
from mcp.client.stdio import StdioServerParameters
from psycopg.postgres import types as pg_types
from psycopg.types.string import TextLoader

from support.mcp import AGENT, McpSetup, mcp_proxy, structured
from support.pg import PgServer

pytestmark = pytest.mark.e2e

CASES = Path(__file__).parent / "policy_cases" / "guardrails_baseline.yaml"
APR = re.compile(r"apr_[0-9a-z]+")


def masking_corpus(schema: str) -> list[str]:
    c = f"{schema}.customers"
    return [
        f"SELECT * FROM {c} ORDER BY id",
        f"SELECT upper(email) || '!' AS e, md5(ssn), row_to_json(x) FROM {c} x ORDER BY id",
        f"SELECT email::varchar(50), substr(ssn, 1, 3) FROM {c} ORDER BY id",
        f"SELECT json_agg(x ORDER BY id) FROM {c} x",
        f"SELECT string_agg(full_name, ',' ORDER BY id) FROM {c}",
        f"SELECT email FROM {c} WHERE email LIKE 'a%'",
        f"SELECT id FROM {c} ORDER BY ssn",
        f"SELECT (SELECT ssn FROM {c} WHERE id = 2), note FROM {c} ORDER BY id",
        f"WITH t AS (SELECT email AS e FROM {c}) SELECT e FROM t ORDER BY e",
        f"SELECT email::int FROM {c}",
        f"SELECT note FROM {c} ORDER BY id",
        f"SELECT * FROM {schema}.wipe()",
        f"WITH d AS (DELETE FROM {c} WHERE id = 1 RETURNING id) SELECT * FROM d",
        f"UPDATE {c} SET note = 'x' WHERE id = 1",
        "SELECT set_config('statement_timeout', '0', false)",
        "SELECT pg_read_file('/etc/passwd')",
    ]


def guardrail_corpus() -> list[str]:
    cases = yaml.safe_load(CASES.read_text())["cases"]
    return [str(case["sql"]) for case in cases]


@pytest.fixture(scope="module")
def setup(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[McpSetup]:
    with mcp_proxy(pg_server, tmp_path_factory.mktemp("mcp-same"), max_rows=500) as s:
        yield s


def outcome_of_error(state: str | None, message: str) -> tuple[str, ...]:
    return ("error", state or "?", APR.sub("apr_*", message.strip()))


def through_psycopg(setup: McpSetup, connection: str, sqls: list[str]) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    with psycopg.connect(setup.proxy.dsn(AGENT, token=setup.agent_token(), dbname=connection), autocommit=True) as conn:
        for info in pg_types:  # values as PostgreSQL's text, as the MCP tools read them
            conn.adapters.register_loader(info.oid, TextLoader)
            if info.array_oid:
                conn.adapters.register_loader(info.array_oid, TextLoader)
        for sql in sqls:
            cur = psycopg.RawCursor(conn)
            try:
                cur.execute(sql)
                rows = [list(r) for r in cur.fetchall()] if cur.description is not None else []
                out.append(("ok", rows))
            except psycopg.Error as err:
                out.append(outcome_of_error(err.diag.sqlstate, err.diag.message_primary or str(err)))
    return out


def through_mcp(setup: McpSetup, connection: str, sqls: list[str]) -> list[tuple[Any, ...] | None]:
    cmd, args = setup.stdio_command()
    out: list[tuple[Any, ...] | None] = []

    async def main() -> None:
        async with Client(StdioServerParameters(command=cmd, args=args, env=setup.stdio_env(setup.agent_token()))) as client:
            for sql in sqls:
                data = structured(await client.call_tool("query", {"connection": connection, "sql": sql}))
                if "sqlstate" in data:
                    out.append(outcome_of_error(data["sqlstate"], data["database_message"]))
                elif "error" in data:
                    out.append(None)  # refused by the MCP layer itself: nothing was sent
                else:
                    assert data["truncated"] is False, sql
                    out.append(("ok", data["rows"]))

    anyio.run(main)
    return out


@pytest.mark.parametrize("connection", ["prod", "staging"])
def test_guardrail_and_masking_corpora_decide_alike(setup: McpSetup, connection: str) -> None:
    sqls = masking_corpus(setup.schema) + guardrail_corpus()
    if connection == "staging":  # nothing that writes where agents may write
        sqls = [s for s in masking_corpus(setup.schema) if not s.startswith(("UPDATE", "WITH d")) and "wipe" not in s]
    wire = through_psycopg(setup, connection, sqls)
    mcp = through_mcp(setup, connection, sqls)
    compared = 0
    for sql, a, b in zip(sqls, wire, mcp, strict=True):
        if b is None:
            assert a[0] == "error", f"the MCP layer refused what psycopg ran: {sql}"
            continue
        assert a == b, sql
        compared += 1
    assert compared >= len(sqls) - 3
    if connection == "prod":
        assert sum(1 for a in wire if a[0] == "error") >= 10  # the corpus does get refused
        assert any(a[0] == "ok" and "****@example.com" in str(a[1]) for a in wire)  # and masked
