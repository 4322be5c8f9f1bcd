"""The HTTP API over a temporary SQLite audit store: auth, roles, search, pagination, actions."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from dbsentry import metrics
from dbsentry.audit import SessionEvent, StatementRecord
from dbsentry.audit.appender import AuditLog
from dbsentry.audit.keys import Signer
from dbsentry.audit.records import CompletionRecord
from dbsentry.audit.sqlite_store import SQLiteStore
from dbsentry.audit.store import encode
from dbsentry.config import Config, parse_config
from dbsentry.engines.postgres.session.governance import Governor
from dbsentry.identity import Authenticator, Identity, TokenStore
from dbsentry.policy import parse_policy
from dbsentry.web import WebConfig, WebContext, create_app
from support.auditlog import fresh_store, open_log

T0 = time.time() - 3600

POLICY = """
version: 1
rules:
  - name: no-drop-in-prod
    description: nobody drops tables in production
    match: {environments: [production], commands: [DROP TABLE]}
    action: deny
"""


def statement(n: int, **kw: Any) -> StatementRecord:
    base: dict[str, Any] = {
        "time": T0 + n,
        "session_id": "s-alice",
        "identity": "alice@example.com",
        "identity_kind": "human",
        "connection": "prod",
        "environment": "production",
        "statement": f"SELECT {n}",
        "command": "SELECT",
        "statement_class": "read",
        "decision": "allow",
    }
    base.update(kw)
    return StatementRecord(**base)


def populate(store: SQLiteStore) -> list[StatementRecord]:
    records: list[StatementRecord] = []
    records.append(
        statement(
            1,
            statement="SELECT email, name FROM public.users WHERE id = 1",
            tables=("public.users",),
            columns_read=("public.users.email", "public.users.name"),
            data_classes=("email", "person_name"),
            masked_columns=("public.users.email",),
            masked_classes=("email",),
            decision="mask",
            rules=("mask-pii",),
        )
    )
    records.append(
        statement(
            2,
            statement="DROP TABLE orders",
            command="DROP TABLE",
            statement_class="ddl",
            tables=("public.orders",),
            decision="deny",
            rules=("no-drop-in-prod",),
        )
    )
    for n in range(3, 9):
        records.append(statement(n, tables=("orders",), columns_read=("orders.total",)))
    records.append(
        statement(
            9,
            session_id="s-agent",
            identity="agent-7",
            identity_kind="agent",
            connection="staging",
            environment="staging",
            statement="select card_number from payments",
            tables=("payments",),
            columns_read=("card_number",),
            data_classes=("payment_card",),
            masked_columns=("payments.card_number",),
            masked_classes=("payment_card",),
            decision="mask",
        )
    )
    batch = [
        encode(
            SessionEvent(
                event="opened",
                session_id="s-alice",
                identity="alice@example.com",
                identity_kind="human",
                connection="prod",
                environment="production",
                client_addr="10.0.0.5",
                time=T0,
            )
        ),
        *(encode(r) for r in records),
        encode(
            CompletionRecord(
                statement_id=records[0].id, session_id="s-alice", rows=1, duration_ms=1.5
            )
        ),
        encode(
            SessionEvent(
                event="closed",
                session_id="s-alice",
                identity="alice@example.com",
                identity_kind="human",
                duration_ms=12.0,
                end_reason="client_terminate",
                time=T0 + 20,
            )
        ),
    ]
    store.append_batch(batch)
    return records


@dataclass
class FakeApprovals:
    """The shape the console expects from the approvals store."""

    requests: dict[str, dict[str, Any]] = field(default_factory=dict)
    reviews: list[tuple[str, str, bool, str | None]] = field(default_factory=list)

    def list(self, status: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        return [r for r in self.requests.values() if status is None or r["status"] == status][
            :limit
        ]

    def get(self, approval_id: str) -> dict[str, Any] | None:
        return self.requests.get(approval_id)

    def review(
        self, approval_id: str, reviewer: Identity, approve: bool, comment: str | None = None
    ) -> dict[str, Any]:
        req = self.requests[approval_id]
        if req["status"] != "pending":
            raise ValueError("the request is not pending")
        req["status"] = "approved" if approve else "denied"
        req["reviewer"] = reviewer.name
        self.reviews.append((approval_id, reviewer.name, approve, comment))
        return req


@dataclass
class Env:
    client: TestClient
    config: Config
    tokens: dict[str, str]
    store_path: Path
    writer: AuditLog
    records: list[StatementRecord]
    approvals: FakeApprovals
    live: list[Any]

    def get(self, path: str, role: str = "admin", **kw: Any) -> Any:
        return self.client.get(path, headers={"Authorization": f"Bearer {self.tokens[role]}"}, **kw)

    def post(self, path: str, role: str = "admin", **kw: Any) -> Any:
        return self.client.post(
            path, headers={"Authorization": f"Bearer {self.tokens[role]}"}, **kw
        )

    def delete(self, path: str, role: str = "admin") -> Any:
        return self.client.delete(path, headers={"Authorization": f"Bearer {self.tokens[role]}"})

    def api_events(self) -> list[dict[str, Any]]:
        assert self.writer.flush(5)
        store = fresh_store(self.store_path, self.config.state_dir)
        try:
            return [
                r.data()["detail"]
                for r in store.iter_records(types=["system"])
                if r.data()["event"] == "api"
            ]
        finally:
            store.close()


def make_config(tmp_path: Path) -> Config:
    return parse_config(
        {
            "state_dir": str(tmp_path / "state"),
            "connections": {
                "prod": {"database": "app", "user": "app", "environment": "production"},
                "staging": {"database": "app", "user": "app", "environment": "staging"},
            },
        },
        tmp_path,
    )


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    config = make_config(tmp_path)
    store_path = tmp_path / "audit.db"
    seed = SQLiteStore(store_path)
    records = populate(seed)
    # the writer of the store's own chain signed it when it stopped (verify requires a checkpoint)
    seed.add_checkpoint(Signer.from_path(config.audit.signing_key_path(config.state_dir)), "close")
    seed.close()
    token_store = TokenStore(config.state_dir)
    tokens = {
        "admin": token_store.create("root@example.com", ["dbsentry-admins"], "human", None)[0],
        "auditor": token_store.create("sec@example.com", ["security"], "human", None)[0],
        "reviewer": token_store.create("dba@example.com", ["dba"], "human", None)[0],
        "alice": token_store.create("alice@example.com", ["dba"], "human", None)[0],
        "nobody": token_store.create("bob@example.com", ["analysts"], "human", None)[0],
    }
    writer = open_log(config.state_dir)
    approvals = FakeApprovals(
        {
            "ap-1": {
                "id": "ap-1",
                "status": "pending",
                "requester": "alice@example.com",
                "connection": "prod",
                "environment": "production",
                "statement": "DELETE FROM orders WHERE id = 5",
                "reason": "ticket 42",
            },
            "ap-2": {"id": "ap-2", "status": "approved", "requester": "dba@example.com"},
        }
    )
    live: list[Any] = []
    ctx = WebContext(
        config=config,
        authenticator=Authenticator(config, tokens=token_store),
        audit_store=lambda: fresh_store(store_path, config.state_dir),
        governor=Governor(parse_policy(POLICY, "policy.yaml")),
        audit_writer=writer,
        approvals=approvals,
        live_sessions=lambda: live,
        web=WebConfig(),
    )
    with TestClient(
        create_app(ctx), base_url="http://localhost", client=("127.0.0.1", 50000)
    ) as client:
        yield Env(client, config, tokens, store_path, writer, records, approvals, live)
    writer.close()
    token_store.close()


# --- authentication and roles ------------------------------------------------------------------


def test_no_token_is_401_with_challenge(env: Env) -> None:
    r = env.client.get("/api/v1/statements")
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert env.client.get("/api/v1/me", headers={"Authorization": "Basic abc"}).status_code == 401


def test_bad_token_is_401(env: Env) -> None:
    fake = "dbs_000000000000_" + "A" * 43
    r = env.client.get("/api/v1/me", headers={"Authorization": f"Bearer {fake}"})
    assert r.status_code == 401
    assert "invalid" in r.json()["detail"]


def test_repeated_failures_are_rate_limited(env: Env) -> None:
    admin = env.tokens["admin"]
    token_id = admin.split("_")[1]
    forged = f"dbs_{token_id}_" + "A" * 43  # guessing the secret of the admin's token
    for _ in range(5):
        r = env.client.get("/api/v1/me", headers={"Authorization": f"Bearer {forged}"})
        assert r.status_code == 401
    r = env.client.get("/api/v1/me", headers={"Authorization": f"Bearer {admin}"})
    assert r.status_code == 429
    assert r.json()["detail"] == "too many failed logins from this address; retry in 60 s"
    assert r.headers["retry-after"] == "60"
    # someone else behind the same address still gets in, and their success resets nothing
    assert env.get("/api/v1/me", "auditor").status_code == 200
    r = env.client.get("/api/v1/me", headers={"Authorization": f"Bearer {admin}"})
    assert r.status_code == 429


def test_me_reports_roles_and_features(env: Env) -> None:
    me = env.get("/api/v1/me", "reviewer").json()
    assert me["identity"] == "dba@example.com"
    assert me["roles"] == ["reviewer"]
    assert me["features"]["approvals"] and me["features"]["review"]
    assert me["features"]["classification"] is False
    assert {c["name"] for c in me["connections"]} == {"prod", "staging"}
    assert env.get("/api/v1/me", "nobody").json()["roles"] == []


@pytest.mark.parametrize(
    ("role", "method", "path", "status"),
    [
        ("nobody", "GET", "/api/v1/statements", 403),
        ("nobody", "GET", "/api/v1/sessions", 403),
        ("reviewer", "GET", "/api/v1/data-access", 403),
        ("reviewer", "GET", "/api/v1/audit/verify", 403),
        ("reviewer", "GET", "/api/v1/tokens", 403),
        ("auditor", "GET", "/api/v1/tokens", 403),
        ("auditor", "POST", "/api/v1/approvals/ap-1/approve", 403),
        ("auditor", "GET", "/api/v1/data-access", 200),
        ("reviewer", "GET", "/api/v1/statements", 200),
        ("reviewer", "GET", "/api/v1/approvals", 200),
    ],
)
def test_roles(env: Env, role: str, method: str, path: str, status: int) -> None:
    r = env.get(path, role) if method == "GET" else env.post(path, role, json={})
    assert r.status_code == status, r.text


def test_security_headers(env: Env) -> None:
    r = env.get("/api/v1/me")
    assert r.headers["cache-control"] == "no-store"
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["x-frame-options"] == "DENY"


# --- statements ----------------------------------------------------------------------------------


def test_search_filters(env: Env) -> None:
    def ids(**params: Any) -> list[str]:
        r = env.get("/api/v1/statements", "auditor", params=params)
        assert r.status_code == 200, r.text
        return [row["statement"] for row in r.json()["items"]]

    assert ids(decision="deny") == ["DROP TABLE orders"]
    assert ids(kind="agent") == ["select card_number from payments"]
    assert ids(identity="agent-7", connection="staging") == ["select card_number from payments"]
    assert ids(environment="production", table="users") == [
        "SELECT email, name FROM public.users WHERE id = 1"
    ]
    assert ids(text="DROP") == ["DROP TABLE orders"]
    assert len(ids(table="orders")) == 7
    assert ids(since=str(T0 + 8.5)) == ["select card_number from payments"]
    assert ids(until=str(T0 + 1.5)) == ["SELECT email, name FROM public.users WHERE id = 1"]
    assert env.get("/api/v1/statements", params={"since": "yesterday-ish"}).status_code == 422


def test_search_row_has_completion_and_classes(env: Env) -> None:
    row = env.get(
        "/api/v1/statements", params={"decision": "mask", "identity": "alice@example.com"}
    ).json()["items"][0]
    assert row["rows"] == 1 and row["duration_ms"] == 1.5
    assert row["masked_classes"] == ["email"]
    assert row["time"].endswith("Z")


@pytest.mark.parametrize("order", ["newest", "oldest"])
def test_cursor_pagination_walks_everything_once(env: Env, order: str) -> None:
    seen: list[int] = []
    cursor: int | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 4, "order": order}
        if cursor is not None:
            params["cursor"] = cursor
        page = env.get("/api/v1/statements", params=params).json()
        seen += [row["seq"] for row in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert len(seen) == len(set(seen)) == len(env.records)
    assert seen == sorted(seen, reverse=order == "newest")


def test_session_statements_in_order(env: Env) -> None:
    r = env.get("/api/v1/sessions/s-alice/statements", "reviewer", params={"limit": 3})
    page = r.json()
    assert [row["statement"] for row in page["items"]][:2] == [
        "SELECT email, name FROM public.users WHERE id = 1",
        "DROP TABLE orders",
    ]
    rest = env.get(
        "/api/v1/sessions/s-alice/statements", params={"cursor": page["next_cursor"], "limit": 100}
    ).json()
    assert rest["next_cursor"] is None
    assert len(page["items"]) + len(rest["items"]) == 8


def test_sessions_live_and_recent(env: Env) -> None:
    @dataclass
    class Client:
        address: str = "10.1.1.1"
        tls: bool = True
        tls_version: str | None = "TLSv1.3"

    @dataclass
    class State:
        value: str = "ready"

    @dataclass
    class Session:
        session_id: str = "s-live"
        identity: Identity | None = field(
            default_factory=lambda: Identity("agent-7", frozenset({"bots"}), "agent", "t1", "token")
        )
        connection_name: str | None = "staging"
        client: Client = field(default_factory=Client)
        txn_status: str = "T"
        state: State = field(default_factory=State)

    @dataclass
    class Conn:
        session: Session

    env.live.append(Conn(Session()))
    env.live.append(Conn(Session(session_id="s-auth", identity=None)))  # still authenticating
    data = env.get("/api/v1/sessions").json()
    assert [s["session_id"] for s in data["live"]] == ["s-live"]
    live = data["live"][0]
    assert live["identity_kind"] == "agent" and live["txn_status"] == "in_transaction"
    assert live["tls_version"] == "TLSv1.3"
    recent = {s["session_id"]: s for s in data["recent"]}
    assert recent["s-alice"]["end_reason"] == "client_terminate"
    assert recent["s-alice"]["client_addr"] == "10.0.0.5"
    assert env.get("/api/v1/sessions/s-alice").json()["connection"] == "prod"
    assert env.get("/api/v1/sessions/s-live").json()["live"] is True
    assert env.get("/api/v1/sessions/nope").status_code == 404


# --- approvals --------------------------------------------------------------------------------


def test_approvals_list_and_approve(env: Env) -> None:
    items = env.get("/api/v1/approvals", "reviewer").json()["items"]
    assert [i["id"] for i in items] == ["ap-1"]
    assert len(env.get("/api/v1/approvals", params={"status": ""}).json()["items"]) == 2
    r = env.post("/api/v1/approvals/ap-1/approve", "reviewer", json={"comment": "ok, ticket 42"})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "approved"
    assert env.approvals.reviews == [("ap-1", "dba@example.com", True, "ok, ticket 42")]
    again = env.post("/api/v1/approvals/ap-1/deny", "reviewer")
    assert again.status_code == 409
    events = env.api_events()
    assert any(
        e["action"] == "approvals.approve" and e["comment"] == "ok, ticket 42" for e in events
    )


def test_cannot_review_own_request(env: Env) -> None:
    r = env.post("/api/v1/approvals/ap-1/deny", "alice")
    assert r.status_code == 403
    assert env.approvals.reviews == []
    assert env.post("/api/v1/approvals/missing/deny", "reviewer").status_code == 404


def test_approvals_absent(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    tokens = TokenStore(config.state_dir)
    token = tokens.create("root", ["dbsentry-admins"], "human", None)[0]
    ctx = WebContext(
        config=config,
        authenticator=Authenticator(config, tokens=tokens),
        audit_store=lambda: SQLiteStore(tmp_path / "a.db"),
    )
    with TestClient(create_app(ctx), base_url="http://localhost") as client:
        h = {"Authorization": f"Bearer {token}"}
        assert client.get("/api/v1/me", headers=h).json()["features"]["approvals"] is False
        assert client.get("/api/v1/approvals", headers=h).status_code == 404
        assert client.get("/api/v1/policy", headers=h).status_code == 404  # passthrough
        assert client.get("/api/v1/classification", headers=h).status_code == 404
    tokens.close()


# --- identities and tokens -------------------------------------------------------------------


def test_token_lifecycle(env: Env) -> None:
    r = env.post(
        "/api/v1/tokens",
        json={"identity": "ci-bot", "groups": ["security"], "kind": "agent", "ttl": "1h"},
    )
    assert r.status_code == 201, r.text
    new = r.json()
    assert new["token"].startswith("dbs_") and new["info"]["kind"] == "agent"
    h = {"Authorization": f"Bearer {new['token']}"}
    assert env.client.get("/api/v1/me", headers=h).json()["identity"] == "ci-bot"
    listed = env.get("/api/v1/tokens").json()["items"]
    assert any(t["id"] == new["info"]["id"] for t in listed)
    assert "secret" not in orjson.dumps(listed).decode()
    assert env.delete(f"/api/v1/tokens/{new['info']['id']}").status_code == 200
    assert env.client.get("/api/v1/me", headers=h).status_code == 401
    assert env.delete(f"/api/v1/tokens/{new['info']['id']}").status_code == 404
    assert env.post("/api/v1/tokens", json={"identity": "x", "ttl": "forever"}).status_code == 422
    actions = [e["action"] for e in env.api_events()]
    assert "tokens.create" in actions and "tokens.revoke" in actions


def test_identities(env: Env) -> None:
    items = env.get("/api/v1/identities", "auditor").json()["items"]
    alice = next(i for i in items if i["identity"] == "alice@example.com")
    assert alice["groups"] == ["dba"] and alice["active_tokens"] == 1


# --- policy --------------------------------------------------------------------------------------


def test_policy_view_check_explain(env: Env) -> None:
    pol = env.get("/api/v1/policy", "reviewer").json()
    assert any(r["name"] == "no-drop-in-prod" and not r["baseline"] for r in pol["rules"])
    assert pol["default"] == "allow"
    ok = env.post("/api/v1/policy/check", json={"text": POLICY}).json()
    assert ok["ok"] is True and ok["rules"] == 1
    bad = env.post(
        "/api/v1/policy/check", json={"text": "rules:\n  - name: x\n    action: explode\n"}
    ).json()
    assert bad["ok"] is False and bad["line"] == 3
    explained = env.post(
        "/api/v1/policy/explain",
        json={"sql": "DROP TABLE orders", "identity": "alice", "connection": "prod"},
    ).json()
    assert explained["decision"]["action"] == "deny"
    assert "no-drop-in-prod" in explained["decision"]["rules"]
    assert explained["statements"][0]["facts"]["command"] == "DROP TABLE"
    staging = env.post(
        "/api/v1/policy/explain",
        json={"sql": "DROP TABLE orders", "identity": "alice", "connection": "staging"},
    ).json()
    assert (
        staging["decision"]["action"] != "deny"
        or "no-drop-in-prod" not in staging["decision"]["rules"]
    )
    assert (
        env.post(
            "/api/v1/policy/explain",
            json={"sql": "select 1", "identity": "a", "connection": "nope"},
        ).status_code
        == 422
    )


# --- data access and agents ----------------------------------------------------------------------


def test_data_access_summary(env: Env) -> None:
    d = env.get("/api/v1/data-access", "auditor", params={"since": "2h"}).json()
    assert d["statements"] == len(env.records)
    by_id = {i["identity"]: i for i in d["identities"]}
    alice = by_id["alice@example.com"]
    assert alice["classes"] == {"email": 1, "person_name": 1}
    prod = {t["table"]: t for t in alice["connections"][0]["tables"]}
    email = next(c for c in prod["public.users"]["columns"] if c["column"] == "email")
    assert email == {"column": "email", "reads": 1, "masked": 1, "classes": ["email"]}
    agent = by_id["agent-7"]
    card = agent["connections"][0]["tables"][0]["columns"][0]
    assert card["column"] == "card_number" and card["classes"] == ["payment_card"]
    links = {(x["identity"], x["class"]): x for x in d["links"]}
    assert links[("agent-7", "payment_card")]["masked"] == 1
    assert {c["class"] for c in d["classes"]} == {"email", "person_name", "payment_card"}
    only_agents = env.get("/api/v1/data-access", params={"since": "2h", "kind": "agent"}).json()
    assert [i["identity"] for i in only_agents["identities"]] == ["agent-7"]


def test_agents(env: Env) -> None:
    items = env.get("/api/v1/agents", "auditor", params={"since": "1d"}).json()["items"]
    assert [a["identity"] for a in items] == ["agent-7"]
    assert items[0]["statements"] == 1 and items[0]["classes"] == {"payment_card": 1}


# --- audit chain, health, metrics, OpenAPI --------------------------------------------------------


def test_audit_status_and_verify(env: Env) -> None:
    status = env.get("/api/v1/audit/status", "auditor").json()
    assert status["head"]["seq"] >= len(env.records) and status["writer"]["healthy"] is True
    v = env.get("/api/v1/audit/verify", "auditor", params={"fresh": True}).json()
    assert v["ok"] is True and v["records"] >= len(env.records), v
    assert v["chains"][0]["name"] == "store (before the log)"


def test_health_and_readiness(env: Env, tmp_path: Path) -> None:
    assert env.client.get("/healthz").json() == {"status": "ok"}
    r = env.client.get("/readyz")
    assert r.status_code == 200 and r.json()["checks"] == {"audit_writer": True}
    config = make_config(tmp_path / "other")
    tokens = TokenStore(config.state_dir)
    ctx = WebContext(
        config=config,
        authenticator=Authenticator(config, tokens=tokens),
        audit_store=lambda: SQLiteStore(tmp_path / "b.db"),
        listener_up=lambda: False,
    )
    with TestClient(create_app(ctx), base_url="http://localhost") as client:
        r = client.get("/readyz")
        assert r.status_code == 503
        assert r.json()["checks"] == {"audit_store": True, "listener": False}
    tokens.close()


def test_metrics_exposed(env: Env) -> None:
    metrics.statement("deny", "ddl", "prod")
    metrics.session_opened("prod")
    metrics.audit_commit(0.003, 5)
    r = env.client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'dbsentry_statements_total{class="ddl",connection="prod",decision="deny"}' in text
    assert "dbsentry_sessions_active" in text
    assert "dbsentry_audit_commit_seconds_bucket" in text
    assert "dbsentry_pending_approvals 1.0" in text  # ap-1 is pending
    assert "dbsentry_audit_healthy 1.0" in text


def test_openapi_served(env: Env) -> None:
    r = env.client.get("/api/v1/openapi.json")
    assert r.status_code == 200
    spec = r.json()
    paths = spec["paths"]
    for p in (
        "/api/v1/statements",
        "/api/v1/sessions/{session_id}/statements",
        "/api/v1/approvals/{approval_id}/approve",
        "/api/v1/tokens",
        "/api/v1/policy/explain",
        "/api/v1/data-access",
        "/api/v1/stream",
    ):
        assert p in paths
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert paths["/api/v1/statements"]["get"]["security"] == [{"bearer": []}]


def test_console_served(env: Env) -> None:
    r = env.client.get("/")
    assert r.status_code == 200 and "dbsentry" in r.text
    assert env.client.get("/static/app.js").status_code == 200
    assert env.client.get("/static/app.css").status_code == 200


def test_reads_are_audited_once_per_minute(env: Env) -> None:
    for _ in range(3):
        env.get("/api/v1/statements", "auditor", params={"decision": "deny"})
    env.get("/api/v1/statements", "auditor", params={"decision": "mask"})
    searches = [e for e in env.api_events() if e["action"] == "statements.search"]
    assert [s["filter"] for s in searches] == [{"decision": "deny"}, {"decision": "mask"}]
    assert searches[0]["identity"] == "sec@example.com"
    assert searches[0]["client_addr"] == "127.0.0.1"


def test_changes_refused_while_audit_is_down(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(AuditLog, "healthy", property(lambda self: False))
    r = env.post("/api/v1/tokens", json={"identity": "x", "ttl": "1h"})
    assert r.status_code == 503
    assert env.client.get("/readyz").status_code == 503
    assert not [t for t in env.get("/api/v1/tokens").json()["items"] if t["identity"] == "x"]


# --- the live stream -------------------------------------------------------------------------------


def test_stream_sends_new_records(env: Env) -> None:
    store = SQLiteStore(env.store_path)
    head = store.head().seq
    svc = env.client.app.state.web_services  # type: ignore[attr-defined]
    got: list[tuple[str, dict[str, Any]]] = []
    with env.client.stream(
        "GET",
        "/api/v1/stream",
        params={"after": head},
        headers={"Authorization": f"Bearer {env.tokens['auditor']}"},
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        store.append_batch([encode(statement(50, statement="SELECT 'live'"))])
        event = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event is not None:
                got.append((event, orjson.loads(line[6:])))
                if event == "statement":
                    break
        svc.stopping.set()
    store.close()
    assert got[-1][0] == "statement"
    assert got[-1][1]["statement"] == "SELECT 'live'" and got[-1][1]["seq"] > head


def test_with_the_approvals_store(tmp_path: Path) -> None:
    approvals = pytest.importorskip("dbsentry.approvals")
    config = make_config(tmp_path)
    tokens = TokenStore(config.state_dir)
    reviewer = tokens.create("dba@example.com", ["dba"], "human", None)[0]
    store = approvals.open_approval_store(config.audit, config.state_dir)
    now = time.time()
    alice = Identity("alice@example.com", frozenset({"dev"}), "human", "t", "token")
    req = approvals.statement_request(
        identity=alice,
        connection="prod",
        environment="production",
        sql="DELETE FROM orders WHERE id = 5",
        params=None,
        approvers=["dba"],
        min_approvals=1,
        now=now,
        ttl_seconds=3600,
        validity_seconds=3600,
        lex=tokens,
    )
    store.create_or_get_pending(req)
    access = approvals.access_request(
        identity=alice,
        group="dba",
        connection=None,
        duration_seconds=3600,
        reason="incident 7",
        approvers=["dba"],
        min_approvals=1,
        now=now,
        ttl_seconds=3600,
    )
    store.create_or_get_pending(access)
    ctx = WebContext(
        config=config,
        authenticator=Authenticator(config, tokens=tokens),
        audit_store=lambda: SQLiteStore(config.audit.sqlite_path(config.state_dir)),
        approvals=store,
    )
    with TestClient(create_app(ctx), base_url="http://localhost") as client:
        h = {"Authorization": f"Bearer {reviewer}"}
        features = client.get("/api/v1/me", headers=h).json()["features"]
        assert features["approvals"] and features["review"] and features["access_requests"]
        items = client.get("/api/v1/approvals", headers=h).json()["items"]
        assert [i["id"] for i in items] == [req.id]
        assert items[0]["statement"] == "DELETE FROM orders WHERE id = 5"
        acc = client.get("/api/v1/access-requests", headers=h).json()["items"]
        assert [i["id"] for i in acc] == [access.id]
        r = client.post(f"/api/v1/approvals/{req.id}/approve", headers=h, json={"comment": "ok"})
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "approved"
        assert client.post(f"/api/v1/approvals/{req.id}/deny", headers=h).status_code == 409
        assert client.post("/api/v1/approvals/apr_nope/deny", headers=h).status_code == 404
        r = client.post(f"/api/v1/approvals/{access.id}/approve", headers=h)
        assert r.status_code == 200, r.text
        grants = client.get("/api/v1/grants", headers=h).json()["items"]
        assert grants and grants[0]["identity"] == "alice@example.com"
        assert "dbsentry_pending_approvals 0.0" in client.get("/metrics").text
    store.close()
    tokens.close()
