"""What the HTTP side tells a new user: readiness names the upstream that does not answer,
/me says which groups give which console role, and data-access views leave catalog
queries out."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from dbsentry.audit.sqlite_store import SQLiteStore
from dbsentry.config import parse_config
from dbsentry.identity import Authenticator, TokenStore
from dbsentry.server.upstream_health import UpstreamStatus
from dbsentry.web import WebContext, create_app
from dbsentry.web.views import DataAccess, agent_summary, is_catalog_table


def _client(tmp_path: Path, **kw: object) -> tuple[TestClient, TokenStore]:
    config = parse_config(
        {
            "state_dir": str(tmp_path / "state"),
            "connections": {"prod": {"database": "app", "user": "app"}},
        },
        tmp_path,
    )
    tokens = TokenStore(config.state_dir)
    ctx = WebContext(
        config=config,
        authenticator=Authenticator(config, tokens=tokens),
        audit_store=lambda: SQLiteStore(tmp_path / "audit.db"),
        **kw,  # type: ignore[arg-type]
    )
    return TestClient(create_app(ctx), base_url="http://localhost"), tokens


def test_readyz_names_the_upstream_that_does_not_answer(tmp_path: Path) -> None:
    status = {
        "prod": UpstreamStatus("prod", "10.0.0.5:5432", False, "Connection refused", 1.0),
        "staging": UpstreamStatus("staging", "10.0.0.6:5432", True, None, 1.0),
    }
    client, tokens = _client(tmp_path, upstreams=lambda: status)
    with client:
        r = client.get("/readyz")
        assert r.status_code == 503
        body = r.json()
        assert body["checks"]["upstream:prod"] is False
        assert body["checks"]["upstream:staging"] is True
        assert body["upstreams"]["prod"] == {
            "address": "10.0.0.5:5432",
            "reachable": False,
            "error": "Connection refused",
            "checked_at": 1.0,
        }
        assert client.get("/healthz").status_code == 200
        status["prod"] = UpstreamStatus("prod", "10.0.0.5:5432", True, None, 2.0)
        assert client.get("/readyz").status_code == 200
    tokens.close()


def test_me_says_which_groups_give_which_role(tmp_path: Path) -> None:
    client, tokens = _client(tmp_path)
    token, _ = tokens.create("nora@example.com", ["analysts"], "human", 3600)
    with client:
        me = client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}).json()
    assert me["roles"] == []
    assert me["role_groups"] == {
        "admin": ["dbsentry-admins"],
        "reviewer": ["dba"],
        "auditor": ["security"],
    }
    tokens.close()


CATALOG_ROW = {
    "identity": "bot",
    "identity_kind": "agent",
    "decision": "allow",
    "connection": "prod",
    "session_id": "s1",
    "time": "2026-01-01T00:00:00Z",
    "tables": ["pg_catalog.pg_class", "pg_catalog.pg_namespace"],
    "columns_read": ["pg_catalog.pg_class.relname"],
}
DATA_ROW = {
    **CATALOG_ROW,
    "tables": ["customers", "pg_type"],
    "columns_read": ["customers.email", "pg_type.typname"],
    "data_classes": ["email"],
}


def test_catalog_tables() -> None:
    assert is_catalog_table("pg_catalog.pg_class")
    assert is_catalog_table('"information_schema"."columns"')
    assert is_catalog_table("pg_attribute")
    assert not is_catalog_table("public.customers")
    assert not is_catalog_table("app.pg_notes")  # a schema of one's own
    assert not is_catalog_table("pg_pipeline")  # no such relation in pg_catalog: a user's table


def test_data_access_and_agents_leave_catalog_queries_out_unless_asked() -> None:
    agg = DataAccess()
    agg.add(CATALOG_ROW)
    agg.add(DATA_ROW)
    out = agg.result()
    assert out["statements"] == 1 and out["catalog_statements"] == 1
    (ident,) = out["identities"]
    tables = [t["table"] for c in ident["connections"] for t in c["tables"]]
    assert tables == ["customers"]

    full = DataAccess(include_catalog=True)
    full.add(CATALOG_ROW)
    full.add(DATA_ROW)
    assert full.result()["statements"] == 2

    (bot,) = agent_summary([CATALOG_ROW, DATA_ROW])
    assert bot["statements"] == 1 and bot["catalog_statements"] == 1
    assert list(bot["tables"]) == ["customers"] and bot["sessions"] == 1
    (everything,) = agent_summary([CATALOG_ROW, DATA_ROW], include_catalog=True)
    assert "pg_catalog.pg_class" in everything["tables"]
