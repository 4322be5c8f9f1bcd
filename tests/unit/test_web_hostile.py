"""The API against hostile input: bodies before authentication, oversized and deep bodies,
agents managing tokens, out-of-range numbers and times, foreign Host headers, redirects,
crashes; and every one of those requests leaves its own audit record."""

# ruff: noqa: F811  (the env fixture is imported from test_web_api)
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from test_web_api import Env, env, make_config  # type: ignore[import-not-found]  # noqa: F401

from dbsentry.audit.sqlite_store import SQLiteStore
from dbsentry.identity import Authenticator, TokenStore
from dbsentry.web import WebConfig, WebContext, create_app
from dbsentry.web.gate import MAX_JSON_DEPTH, host_allowed, json_depth


def auth(env: Env, role: str = "admin") -> dict[str, str]:
    return {"Authorization": f"Bearer {env.tokens[role]}"}


def refusals(env: Env) -> list[dict[str, Any]]:
    return [e for e in env.api_events() if "status" in e]


# --- bodies ------------------------------------------------------------------------------


def test_body_is_not_read_before_the_token_is_checked(env: Env) -> None:
    got: list[int] = []

    def body() -> Iterator[bytes]:
        for _ in range(64):
            got.append(1)
            yield b"x" * 65536

    r = env.client.post(
        "/api/v1/policy/check", content=body(), headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 401
    assert r.headers["connection"] == "close"
    assert len(got) <= 2  # the test client hands over a chunk or two; the app read none


def test_deep_json_without_a_token_is_401_with_one_is_422(env: Env) -> None:
    deep = b"[" * 200_000 + b"]" * 200_000
    headers = {"Content-Type": "application/json"}
    assert env.client.post("/api/v1/policy/check", content=deep, headers=headers).status_code == 401
    r = env.client.post(
        "/api/v1/policy/explain", content=deep, headers={**headers, **auth(env)}
    )
    assert r.status_code == 422
    assert r.json()["detail"] == f"the JSON body nests deeper than {MAX_JSON_DEPTH} levels"


def test_body_size_limits(env: Env) -> None:
    big = b'{"text": "' + b"a" * 70_000 + b'"}'
    r = env.client.post("/api/v1/tokens", content=big, headers=auth(env))
    assert r.status_code == 413
    assert "65536 bytes" in r.json()["detail"]
    # policy texts may be larger
    r = env.client.post(
        "/api/v1/policy/check",
        content=big,
        headers={**auth(env), "Content-Type": "application/json"},
    )
    assert r.status_code == 200
    huge = {"Content-Length": str(2**40), **auth(env)}
    r = env.client.post("/api/v1/policy/check", content=b"{}", headers=huge)
    assert r.status_code == 413


def test_json_depth_ignores_brackets_in_strings() -> None:
    assert json_depth(b'{"a": [1, {"b": "[[[[{{{{"}]}') == 3
    assert json_depth(b'"\\"[[["') == 0
    assert json_depth(b"[" * 50 + b"]" * 50) == 50


# --- agents and tokens ---------------------------------------------------------------------


def test_agents_never_manage_tokens_whatever_their_groups(env: Env) -> None:
    store = TokenStore(env.config.state_dir)
    agent, _ = store.create("bot", ["dbsentry-admins"], "agent", None)
    store.close()
    admin_id = env.get("/api/v1/me").json()["token_id"]
    hdr = {"Authorization": f"Bearer {agent}"}
    r = env.client.delete(f"/api/v1/tokens/{admin_id}", headers=hdr)
    assert r.status_code == 403
    assert "agents never" in r.json()["detail"]
    assert env.client.get("/api/v1/tokens", headers=hdr).status_code == 403
    assert env.client.post("/api/v1/tokens", json={"identity": "x"}, headers=hdr).status_code == 403
    assert env.client.post("/api/v1/approvals/ap-1/approve", json={}, headers=hdr).status_code == 403
    assert env.client.get("/api/v1/statements", headers=hdr).status_code == 200  # reads: yes
    assert env.get("/api/v1/me").status_code == 200  # the admin is not locked out


# --- numbers and times -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "/api/v1/statements?cursor=18446744073709551617",
        "/api/v1/statements?cursor=-1",
        "/api/v1/sessions/s-alice/statements?cursor=99999999999999999999999",
        "/api/v1/stream?after=18446744073709551616",
        "/api/v1/stream?after=-5",
        "/api/v1/statements?since=nan",
        "/api/v1/statements?since=inf",
        "/api/v1/statements?since=-inf",
        "/api/v1/statements?since=1e20",
        "/api/v1/statements?until=-1",
        "/api/v1/statements?since=99999999999999w",
        "/api/v1/statements?since=99999-01-01",
        "/api/v1/data-access?since=nan",
        "/api/v1/agents?until=1e300",
        "/api/v1/statements?limit=0",
        "/api/v1/statements?limit=100000000000000000000",
    ],
)
def test_out_of_range_is_422_and_audited(env: Env, url: str) -> None:
    r = env.get(url)
    assert r.status_code == 422, r.text
    body = r.json()
    assert isinstance(body["detail"], str) and body["detail"]
    (event,) = [e for e in refusals(env) if e["status"] == 422]
    assert event["identity"] == "root@example.com"
    assert event["reason"] == body["detail"]


def test_last_event_id_and_ttl_are_range_checked(env: Env) -> None:
    r = env.client.get("/api/v1/stream", headers={"Last-Event-ID": "9" * 40, **auth(env)})
    assert r.status_code == 422
    r = env.post("/api/v1/tokens", json={"identity": "x", "ttl": "9999999d"})
    assert r.status_code == 422 and "ten years" in r.json()["detail"]


# --- every refusal is audited ------------------------------------------------------------------


def test_refusals_are_audited(env: Env) -> None:
    assert env.client.get("/api/v1/tokens").status_code == 401
    assert env.get("/api/v1/tokens", "auditor").status_code == 403
    assert env.get("/api/v1/nothing-here").status_code == 404
    assert env.delete("/api/v1/tokens/no-such-token").status_code == 404
    big = {"Content-Length": str(2**30), **auth(env)}
    assert env.client.post("/api/v1/tokens", content=b"{}", headers=big).status_code == 413
    events = {(e["status"], e["action"]): e for e in refusals(env)}
    anonymous = events[(401, "GET /api/v1/tokens")]
    assert anonymous["identity"] is None and anonymous["client_addr"] == "127.0.0.1"
    assert events[(403, "GET /api/v1/tokens")]["identity"] == "sec@example.com"
    unknown = events[(404, "GET unknown path")]
    assert unknown["path"] == "/api/v1/nothing-here"
    assert events[(404, "tokens.revoke")]["reason"] == "no active token 'no-such-token'"
    assert (413, "POST /api/v1/tokens") in events


def test_a_crash_is_a_500_and_audited(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*a: Any, **kw: Any) -> Any:
        raise RuntimeError("the store exploded")

    monkeypatch.setattr(SQLiteStore, "search_statements", broken)
    with TestClient(env.client.app, base_url="http://localhost", raise_server_exceptions=False) as c:
        r = c.get("/api/v1/statements", headers=auth(env))
    assert r.status_code == 500
    assert r.json() == {"detail": "internal error; the proxy's log says more"}
    assert "exploded" not in r.text
    assert any(e["status"] == 500 for e in refusals(env))


# --- Host and redirects -------------------------------------------------------------------------


def test_foreign_host_is_400_by_default(env: Env) -> None:
    for host in ("evil.example", "rebind.attacker.test:8080"):
        r = env.client.get("/metrics", headers={"Host": host})
        assert r.status_code == 400 and "allowed_hosts" in r.json()["detail"]
    for host in ("localhost", "127.0.0.1:8080", "[::1]:8080", "10.1.2.3"):
        assert env.client.get("/healthz", headers={"Host": host}).status_code == 200


def test_host_allowed() -> None:
    assert host_allowed("db.example.com:443", ["db.example.com"], None)
    assert not host_allowed("db.example.com.evil", ["db.example.com"], None)
    assert host_allowed("anything", ["*"], None)
    assert not host_allowed("127.0.0.1", ["db.example.com"], None)  # configured: only those
    assert host_allowed("console.corp", None, "https://console.corp/x")
    assert not host_allowed("console.corp.evil", None, "https://console.corp/x")


def test_allowed_hosts_configured(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    ctx = WebContext(
        config=config,
        authenticator=Authenticator(config),
        audit_store=lambda: SQLiteStore(tmp_path / "a.db"),
        web=WebConfig(allowed_hosts=["dbsentry.example.com"]),
    )
    with TestClient(create_app(ctx), base_url="http://dbsentry.example.com") as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/healthz", headers={"Host": "localhost"}).status_code == 400


def test_no_redirect_reflects_the_host(env: Env) -> None:
    for path in ("/static", "/api/v1/me/"):
        r = env.client.get(path, headers={"Host": "127.0.0.1", **auth(env)}, follow_redirects=False)
        assert r.status_code == 404
        assert "location" not in r.headers
    assert env.client.get("/static/app.css").status_code == 200
