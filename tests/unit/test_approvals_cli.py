"""``dbsentry approvals ...`` and ``dbsentry access ...`` through click's CliRunner, with real tokens."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from dbsentry.approvals.cli import access, approvals
from dbsentry.approvals.model import ApprovalRequest, statement_request
from dbsentry.approvals.sqlite_store import SQLiteApprovalStore
from dbsentry.audit.config import AuditConfig
from dbsentry.audit.index import catch_up_all
from dbsentry.audit.log import LogTailer
from dbsentry.audit.sqlite_store import SQLiteStore
from dbsentry.engines.postgres.sql.parse import tokens
from dbsentry.identity import Identity, TokenStore

CONFIG = """
state_dir: state
connections:
  prod:
    database: app
    user: app
    environment: production
"""


@dataclass
class Env:
    config: Path
    state: Path
    tokens: dict[str, str]

    def store(self) -> SQLiteApprovalStore:
        return SQLiteApprovalStore(AuditConfig().sqlite_path(self.state))

    def pending(
        self, sql: str = "DELETE FROM orders WHERE id = 1", min_approvals: int = 1
    ) -> ApprovalRequest:
        alice = Identity("alice@example.com", frozenset({"dev"}), "human", "t", "token")
        r = statement_request(
            identity=alice,
            connection="prod",
            environment="production",
            sql=sql,
            params=None,
            approvers=["dba"],
            min_approvals=min_approvals,
            now=time.time(),
            ttl_seconds=3600,
            validity_seconds=3600,
            rules=["deletes-need-a-dba"],
            lex=tokens,
        )
        s = self.store()
        try:
            stored, _ = s.create_or_get_pending(r)
        finally:
            s.close()
        return stored

    def approval_records(self) -> list[dict[str, object]]:
        audit = SQLiteStore(AuditConfig().sqlite_path(self.state))
        try:
            catch_up_all(audit, AuditConfig().log_path(self.state))  # what a search does first
            return [r.data() for r in audit.iter_records(types=["approval"])]
        finally:
            audit.close()


@pytest.fixture
def env(tmp_path: Path) -> Env:
    cfg = tmp_path / "dbsentry.yaml"
    cfg.write_text(CONFIG)
    state = tmp_path / "state"
    people = {
        "alice": ("alice@example.com", ["dev"], "human"),
        "bob": ("bob@example.com", ["dba"], "human"),
        "carol": ("carol@example.com", ["dba"], "human"),
        "dave": ("dave@example.com", ["dev"], "human"),
        "bot": ("deploy-bot", ["dba"], "agent"),
    }
    tokens = {}
    with TokenStore(state) as ts:
        for key, (name, groups, kind) in people.items():
            tokens[key], _ = ts.create(name, groups, kind, 3600)  # type: ignore[arg-type]
    return Env(cfg, state, tokens)


def run(group: object, *args: str, env_vars: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(group, list(args), env=env_vars, catch_exceptions=False)  # type: ignore[arg-type]


def test_list_and_show(env: Env) -> None:
    r = env.pending()
    out = run(approvals, "list", "-c", str(env.config))
    assert out.exit_code == 0, out.output
    assert r.id in out.output and "alice@example.com" in out.output and "0/1" in out.output
    out = run(approvals, "list", "-c", str(env.config), "--json")
    [row] = [json.loads(line) for line in out.output.splitlines()]
    assert row["id"] == r.id and row["status"] == "pending"
    out = run(approvals, "list", "-c", str(env.config), "--status", "approved")
    assert r.id not in out.output
    out = run(approvals, "show", "-c", str(env.config), r.id)
    assert out.exit_code == 0
    assert "DELETE FROM orders WHERE id = 1" in out.output
    assert f"http://127.0.0.1:8080/approvals/{r.id}" in out.output
    out = run(approvals, "show", "-c", str(env.config), "apr_0000000000")
    assert out.exit_code == 1 and "no approval request" in out.output


@pytest.mark.parametrize(
    ("who", "why"),
    [
        ("alice", "cannot review"),  # her own request
        ("dave", "not in an approver group"),
        ("bot", "agent"),
    ],
)
def test_refused_reviews_exit_1(env: Env, who: str, why: str) -> None:
    r = env.pending()
    out = run(approvals, "approve", "-c", str(env.config), r.id, "--token", env.tokens[who])
    assert out.exit_code == 1
    assert why in out.output
    s = env.store()
    got = s.get(r.id)
    s.close()
    assert got is not None and got.status == "pending"
    assert env.approval_records() == []


def test_approve_writes_the_audit_trail(env: Env) -> None:
    r = env.pending(min_approvals=2)
    out = run(
        approvals,
        "approve",
        "-c",
        str(env.config),
        r.id,
        "--reason",
        "checked the ticket",
        env_vars={"DBSENTRY_TOKEN": env.tokens["bob"]},
    )
    assert out.exit_code == 0, out.output
    assert "1 of 2 approvals" in out.output
    out = run(approvals, "approve", "-c", str(env.config), r.id, "--token", env.tokens["bob"])
    assert out.exit_code == 1 and "already reviewed" in out.output
    out = run(approvals, "approve", "-c", str(env.config), r.id, "--token", env.tokens["carol"])
    assert out.exit_code == 0 and "approved" in out.output
    out = run(approvals, "deny", "-c", str(env.config), r.id, "--token", env.tokens["carol"])
    assert out.exit_code == 1 and "not pending" in out.output
    records = env.approval_records()
    assert [(x["event"], x["reviewer"], x["decision"]) for x in records] == [
        ("approved", "bob@example.com", None),
        ("approved", "carol@example.com", "approved"),
    ]
    assert records[0]["review_comment"] == "checked the ticket"
    assert records[0]["approval_id"] == r.id and records[0]["requester"] == "alice@example.com"
    # the records are in the tools' own log, chained, each one durable when approve returned
    logs = [p for p in AuditConfig().log_path(env.state).iterdir() if p.name.endswith("-tools")]
    assert len(logs) == 1
    assert [r.seq for r in LogTailer(logs[0]).read(0)] == [1, 2]


def test_deny(env: Env) -> None:
    r = env.pending()
    out = run(
        approvals,
        "deny",
        "-c",
        str(env.config),
        r.id,
        "--token",
        env.tokens["bob"],
        "--reason",
        "no",
    )
    assert out.exit_code == 0 and "denied" in out.output
    [rec] = env.approval_records()
    assert (
        rec["event"] == "denied" and rec["decision"] == "denied" and rec["review_comment"] == "no"
    )


def test_bad_tokens_and_usage(env: Env) -> None:
    r = env.pending()
    out = run(approvals, "approve", "-c", str(env.config), r.id, "--token", "dbs_nope")
    assert out.exit_code == 1 and "token is not valid" in out.output
    with TokenStore(env.state) as ts:
        [info] = [t for t in ts.list() if t.identity == "bob@example.com"]
        ts.revoke(info.id)
    out = run(approvals, "approve", "-c", str(env.config), r.id, "--token", env.tokens["bob"])
    assert out.exit_code == 1
    out = run(approvals, "approve", "-c", str(env.config), r.id)  # no token at all
    assert out.exit_code == 2
    out = run(approvals, "list", "-c", str(env.config), "--status", "bogus")
    assert out.exit_code == 2
    bad = env.config.parent / "bad.yaml"
    bad.write_text("connections: 5\n")
    out = run(approvals, "list", "-c", str(bad))
    assert out.exit_code == 2 and "invalid configuration" in out.output


def test_access_request_review_and_grants(env: Env) -> None:
    base = ["-c", str(env.config), "--token", env.tokens["alice"]]
    out = run(access, "request", *base, "--group", "dba", "--for", "2h", "--reason", "incident 42")
    assert out.exit_code == 0, out.output
    request_id = out.stdout.strip()
    assert request_id.startswith("apr_")
    again = run(access, "request", *base, "--group", "dba", "--for", "2h", "--reason", "again")
    assert again.stdout.strip() == request_id  # still pending: the same request
    out = run(access, "list", "-c", str(env.config))
    assert request_id in out.output and "access to group dba for 2h" in out.output
    out = run(access, "grants", "-c", str(env.config))
    assert out.exit_code == 0 and "grt_" not in out.output
    out = run(
        approvals, "approve", "-c", str(env.config), request_id, "--token", env.tokens["alice"]
    )
    assert out.exit_code == 1  # nobody approves their own request
    out = run(approvals, "approve", "-c", str(env.config), request_id, "--token", env.tokens["bob"])
    assert out.exit_code == 0 and "has group dba until" in out.output
    out = run(access, "grants", "-c", str(env.config), "--json")
    [grant] = [json.loads(line) for line in out.output.splitlines()]
    assert grant["identity"] == "alice@example.com" and grant["group"] == "dba"
    assert grant["approval_id"] == request_id
    assert 7100 < grant["expires_at"] - grant["granted_at"] <= 7200
    events = [(x["event"], x["statement"]) for x in env.approval_records()]
    assert events == [
        ("requested", "ACCESS group dba FOR 7200s"),
        ("approved", "ACCESS group dba FOR 7200s"),
    ]


@pytest.mark.parametrize(
    ("args", "code", "text"),
    [
        (["--group", "dba", "--connection", "prod"], 2, "exactly one"),
        ([], 2, "exactly one"),
        (["--connection", "nope"], 2, "no connection"),
        (["--group", "dba", "--for", "3d"], 2, "at most"),
        (["--group", "dba", "--for", "soon"], 2, "invalid duration"),
        (["--group", "dev"], 1, "already in group"),
    ],
)
def test_access_request_refusals(env: Env, args: list[str], code: int, text: str) -> None:
    if "--for" not in args:
        args = [*args, "--for", "1h"]
    out = run(
        access,
        "request",
        "-c",
        str(env.config),
        "--token",
        env.tokens["alice"],
        *args,
        "--reason",
        "why",
    )
    assert out.exit_code == code, out.output
    assert text in out.output


def test_access_to_a_connection(env: Env) -> None:
    out = run(
        access,
        "request",
        "-c",
        str(env.config),
        "--token",
        env.tokens["dave"],
        "--connection",
        "prod",
        "--for",
        "30m",
        "--reason",
        "debugging",
    )
    assert out.exit_code == 0
    rid = out.stdout.strip()
    out = run(approvals, "approve", "-c", str(env.config), rid, "--token", env.tokens["carol"])
    assert out.exit_code == 0
    out = run(access, "grants", "-c", str(env.config), "--identity", "dave@example.com")
    assert "connection prod" in out.output


def test_a_granted_group_counts_for_reviewing(env: Env) -> None:
    r = env.pending()
    refused = run(approvals, "approve", "-c", str(env.config), r.id, "--token", env.tokens["dave"])
    assert refused.exit_code == 1
    out = run(
        access,
        "request",
        "-c",
        str(env.config),
        "--token",
        env.tokens["dave"],
        "--group",
        "dba",
        "--for",
        "1h",
        "--reason",
        "on call",
    )
    grant_request = out.stdout.strip()
    assert (
        run(
            approvals, "approve", "-c", str(env.config), grant_request, "--token", env.tokens["bob"]
        ).exit_code
        == 0
    )
    out = run(approvals, "approve", "-c", str(env.config), r.id, "--token", env.tokens["dave"])
    assert out.exit_code == 0, out.output
