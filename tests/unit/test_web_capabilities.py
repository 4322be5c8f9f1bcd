"""Every route of the OpenAPI document, called by every kind of caller, answers as the
tables in docs/console.md ("Who may do what" and "The API") say: 401 or 403 where the
capability is missing, and never where it is present."""

# ruff: noqa: F811  (the env fixture is imported from test_web_api)
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from test_web_api import Env, env  # type: ignore[import-not-found]  # noqa: F401

from dbsentry.identity import TokenStore
from dbsentry.web.access import Capability, Require
from dbsentry.web.gate import Gate

DOCS = Path(__file__).resolve().parents[2] / "docs" / "console.md"

#: The callers of the table's columns: (identity kind, groups); None is no token at all.
CALLERS: dict[str, tuple[str, list[str]] | None] = {
    "anonymous": None,
    "no role": ("human", ["analysts"]),
    "auditor": ("human", ["security"]),
    "reviewer": ("human", ["dba"]),
    "admin": ("human", ["dbsentry-admins"]),
    "agent auditor": ("agent", ["security"]),
    "agent reviewer": ("agent", ["dba"]),
    "agent admin": ("agent", ["dbsentry-admins"]),
}


def _rows(text: str, header: str) -> list[list[str]]:
    """The rows of the markdown table whose header line starts with ``header``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def documented() -> tuple[dict[str, dict[str, bool]], dict[tuple[str, str], str]]:
    text = DOCS.read_text(encoding="utf-8")
    header_line = next(line for line in text.splitlines() if line.startswith("| Capability |"))
    head = [c.strip() for c in header_line.strip("|").split("|")][1:]
    table = {
        row[0]: {who: cell == "yes" for who, cell in zip(head, row[1:], strict=True)}
        for row in _rows(text, "| Capability |")
    }
    routes = {}
    for row in _rows(text, "| Method and path | Capability |"):
        method, path = re.fullmatch(r"`(\w+) (\S+)`", row[0]).groups()  # type: ignore[union-attr]
        routes[(method, "/api/v1" + path)] = row[1]
    return table, routes


@pytest.fixture
def world(env: Env) -> tuple[TestClient, dict[str, str | None]]:
    """test_web_api's app and its callers, and agents with each role."""
    store = TokenStore(env.config.state_dir)
    tokens: dict[str, str | None] = {
        "anonymous": None,
        "no role": env.tokens["nobody"],
        **{role: env.tokens[role] for role in ("auditor", "reviewer", "admin")},
    }
    for name, caller in CALLERS.items():
        if name.startswith("agent") and caller is not None:
            tokens[name] = store.create(name.replace(" ", "-"), caller[1], "agent", None)[0]
    store.close()
    env.client.app.state.web_services.stopping.set()  # type: ignore[attr-defined]  # feeds end
    return env.client, tokens


def test_every_route_declares_exactly_one_capability(
    world: tuple[TestClient, dict[str, str | None]],
) -> None:
    client, _ = world
    table, routes = documented()
    assert set(table) == {c.value for c in Capability}
    api_routes = 0
    gate = Gate(client.app, svc=client.app.state.web_services, routes=client.app.state.routes)  # type: ignore[attr-defined]
    for route in client.app.state.routes():  # type: ignore[attr-defined]
        if isinstance(route, APIRoute):
            api_routes += route.path.startswith("/api/")
            declared = [d.call for d in route.dependant.dependencies if isinstance(d.call, Require)]
            assert len(declared) == 1, route.path
            for method in route.methods:
                url = re.sub(r"\{[^}]+\}", "x", route.path)
                scope = {"type": "http", "path": url, "method": method, "root_path": ""}
                assert gate.requirement(scope)[0] == declared[0], route.path  # before the body
                if route.path.startswith("/api/"):
                    assert routes[(method, route.path)] == declared[0].capability.value, route.path
    assert api_routes == len(routes)


def test_every_route_for_every_caller(world: tuple[TestClient, dict[str, str | None]]) -> None:
    client, tokens = world
    table, routes = documented()
    spec = client.get("/api/v1/openapi.json").json()
    seen = set()
    for path, ops in spec["paths"].items():
        for method, _ in ops.items():
            key = (method.upper(), path)
            capability = routes.get(key, "public" if not path.startswith("/api/") else None)
            assert capability is not None, f"{key} is not in docs/console.md"
            seen.add(key)
            url = re.sub(r"\{[^}]+\}", "no-such-thing", path)
            for caller, token in tokens.items():
                headers = {"Authorization": f"Bearer {token}"} if token else {}
                kw: dict[str, Any] = {"headers": headers}
                if method in ("post", "put", "patch"):
                    kw["json"] = {}
                status = client.request(method.upper(), url, **kw).status_code
                if table[capability][caller]:
                    assert status not in (401, 403), (key, caller, status)
                else:
                    assert status == (401 if token is None else 403), (key, caller, status)
    assert {k for k in routes if k not in seen} == set(), "documented routes that do not exist"
