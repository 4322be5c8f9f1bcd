"""The rules of review and use, the request key, and the configuration: pure, table-tested."""

from __future__ import annotations

from dataclasses import replace

import pytest
from pydantic import ValidationError

from dbsentry.approvals.config import ApprovalsConfig, WebhookConfig
from dbsentry.approvals.model import (
    ID_RE,
    ApprovalRequest,
    Grant,
    access_request,
    granted_connections,
    new_request_id,
    normalize_statement,
    statement_key,
    statement_request,
    summarize_facts,
    with_grants,
)
from dbsentry.approvals.rules import (
    ReviewRefused,
    apply_review,
    can_consume,
    consume,
    expire,
    expiry_due,
    review_refusal,
    withdraw,
)
from dbsentry.engines.postgres.sql.facts import analyze
from dbsentry.engines.postgres.sql.parse import tokens
from dbsentry.identity.model import Identity

T0 = 1_700_000_000.0


def person(name: str, *groups: str, agent: bool = False) -> Identity:
    return Identity(name, frozenset(groups), "agent" if agent else "human", "tok", "token")


ALICE = person("alice@example.com", "dev")
BOB = person("bob@example.com", "dba")
CAROL = person("carol@example.com", "dba", "dev")
DAVE = person("dave@example.com", "dev")
BOT = person("deploy-bot", "dba", agent=True)


def request(min_approvals: int = 1, **kw: object) -> ApprovalRequest:
    r = statement_request(
        identity=ALICE,
        connection="prod",
        environment="production",
        sql="DELETE FROM orders WHERE id = 1",
        params=None,
        approvers=["dba"],
        min_approvals=min_approvals,
        now=T0,
        ttl_seconds=3600,
        validity_seconds=600,
        rules=["deletes-need-a-dba"],
        lex=tokens,
    )
    return replace(r, **kw)  # type: ignore[arg-type]


# --- ids and keys --------------------------------------------------------------------------------


def test_request_ids_are_short_and_distinct() -> None:
    ids = {new_request_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(ID_RE.match(i) and len(i) == 14 for i in ids)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("DELETE FROM t WHERE id = 1", "DELETE  FROM t\n\tWHERE id = 1"),
        ("DELETE FROM t WHERE id = 1", "DELETE FROM t WHERE id = 1;"),
        ("DELETE FROM t WHERE id = 1", "  DELETE FROM t WHERE id = 1 ; ;  "),
        ("DELETE FROM t WHERE id = 1", "DELETE /* cleanup */ FROM t WHERE id = 1 -- ticket 7"),
        ("select 'x'", "select 'x'  ;"),
    ],
)
def test_layout_and_comments_do_not_change_the_key(a: str, b: str) -> None:
    assert normalize_statement(a, tokens) == normalize_statement(b, tokens)
    assert statement_key("alice", "prod", a, None, tokens) == statement_key("alice", "prod", b, None, tokens)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("DELETE FROM t WHERE id = 1", "DELETE FROM t WHERE id = 2"),  # constants count
        ("UPDATE t SET note = 'a  b'", "UPDATE t SET note = 'a b'"),  # whitespace in literals
        ("UPDATE t SET note = $$x  y$$", "UPDATE t SET note = $$x y$$"),
        ("DELETE FROM t WHERE id = 1", "DELETE FROM u WHERE id = 1"),
        ("select 1; drop table t", "select 1"),
    ],
)
def test_different_statements_have_different_keys(a: str, b: str) -> None:
    assert statement_key("alice", "prod", a, None, tokens) != statement_key("alice", "prod", b, None, tokens)


def test_key_binds_identity_connection_and_parameters() -> None:
    sql = "DELETE FROM t WHERE id = $1"
    base = statement_key("alice", "prod", sql, ["1"], tokens)
    assert base == statement_key("alice", "prod", sql, ("1",), tokens)
    assert base != statement_key("alice", "prod", sql, ["2"], tokens)
    assert base != statement_key("alice", "prod", sql, [None], tokens)
    assert base != statement_key("alice", "prod", sql, None, tokens)
    assert base != statement_key("bob", "prod", sql, ["1"], tokens)
    assert base != statement_key("alice", "staging", sql, ["1"], tokens)


def test_unscannable_text_falls_back_to_collapsed_whitespace() -> None:
    assert normalize_statement("select  'open \n ;", tokens) == "select 'open"


def test_facts_summary() -> None:
    facts = analyze("DELETE FROM orders WHERE id = 1; UPDATE users SET a = 1 WHERE id = 2")
    s = summarize_facts(facts)
    assert s.command == "DELETE, UPDATE"
    assert set(s.tables) == {"orders", "users"}
    assert s.risk is not None


def test_request_round_trips_through_json() -> None:
    r = apply_review(request(min_approvals=2), BOB, True, "ok", T0 + 1).request
    assert ApprovalRequest.from_dict(r.to_dict()) == r


# --- who may review ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reviewer", "code"),
    [
        (ALICE, "self_review"),
        (person("ALICE@example.com", "dba"), "self_review"),  # also when in an approver group
        (DAVE, "not_approver"),
        (BOT, "agent"),
        (person("eve@example.com"), "not_approver"),
        (BOB, None),
        (CAROL, None),
    ],
)
def test_who_may_review(reviewer: Identity, code: str | None) -> None:
    refusal = review_refusal(request(), reviewer, T0 + 10)
    assert (refusal.code if refusal else None) == code


def test_requester_in_approver_group_still_cannot_approve_own_request() -> None:
    r = statement_request(
        identity=CAROL,
        connection="prod",
        environment=None,
        sql="drop table x",
        params=None,
        approvers=["dba"],
        min_approvals=1,
        now=T0,
        ttl_seconds=60,
        validity_seconds=60,
        lex=tokens,
    )
    with pytest.raises(ReviewRefused) as err:
        apply_review(r, CAROL, True, None, T0 + 1)
    assert err.value.code == "self_review"


def test_one_approval_approves() -> None:
    out = apply_review(request(), BOB, True, "looks fine", T0 + 5)
    assert out.event == "approved"
    assert out.request.status == "approved"
    assert out.request.approved_until == T0 + 5 + 600
    assert out.request.approvals[0].reviewer == BOB.name
    assert out.grant is None


def test_two_distinct_approvals_needed() -> None:
    first = apply_review(request(min_approvals=2), BOB, True, None, T0 + 1)
    assert first.event == "recorded"
    assert first.request.status == "pending"
    with pytest.raises(ReviewRefused) as err:
        apply_review(first.request, BOB, True, None, T0 + 2)
    assert err.value.code == "already_reviewed"
    second = apply_review(first.request, CAROL, True, None, T0 + 3)
    assert second.event == "approved"
    assert [r.reviewer for r in second.request.approvals] == [BOB.name, CAROL.name]


def test_one_denial_denies_even_after_an_approval() -> None:
    first = apply_review(request(min_approvals=2), BOB, True, None, T0 + 1)
    out = apply_review(first.request, CAROL, False, "not during the sale", T0 + 2)
    assert out.event == "denied"
    assert out.request.status == "denied"
    assert out.request.denial is not None
    assert out.request.denial.reason == "not during the sale"


@pytest.mark.parametrize("status", ["approved", "denied", "expired", "withdrawn", "used"])
def test_only_pending_requests_are_reviewed(status: str) -> None:
    with pytest.raises(ReviewRefused) as err:
        apply_review(request(status=status), BOB, True, None, T0 + 1)
    assert err.value.code == "not_pending"
    assert status in str(err.value)


def test_expired_request_cannot_be_reviewed() -> None:
    r = request()
    assert not expiry_due(r, T0 + 3599)
    assert expiry_due(r, T0 + 3600)
    with pytest.raises(ReviewRefused) as err:
        apply_review(r, BOB, True, None, T0 + 3600)
    assert err.value.code == "expired"
    assert expire(r, T0 + 3600).status == "expired"
    assert expire(r, T0 + 10) is r


def test_unused_approval_expires_after_its_validity() -> None:
    approved = apply_review(request(), BOB, True, None, T0 + 5).request
    assert not expiry_due(approved, T0 + 604)
    assert expire(approved, T0 + 605).status == "expired"


# --- using an approval ---------------------------------------------------------------------------


def test_consume_exactly_once_same_identity_connection_and_key() -> None:
    approved = apply_review(request(), BOB, True, None, T0 + 5).request
    key = approved.request_key
    assert can_consume(approved, ALICE.name, "prod", key, T0 + 6)
    assert not can_consume(approved, BOB.name, "prod", key, T0 + 6)
    assert not can_consume(approved, ALICE.name, "staging", key, T0 + 6)
    other = statement_key(ALICE.name, "prod", "DELETE FROM orders WHERE id = 2", None, tokens)
    assert not can_consume(approved, ALICE.name, "prod", other, T0 + 6)
    assert not can_consume(approved, ALICE.name, "prod", key, T0 + 5 + 600)
    used = consume(approved, T0 + 6)
    assert used.status == "used"
    assert used.used_at == T0 + 6
    assert not can_consume(used, ALICE.name, "prod", key, T0 + 7)


def test_changed_parameters_are_not_approved() -> None:
    sql = "DELETE FROM orders WHERE id = $1"
    r = statement_request(
        identity=ALICE,
        connection="prod",
        environment=None,
        sql=sql,
        params=["1"],
        approvers=["dba"],
        min_approvals=1,
        now=T0,
        ttl_seconds=60,
        validity_seconds=60,
        lex=tokens,
    )
    approved = apply_review(r, BOB, True, None, T0 + 1).request
    assert can_consume(
        approved, ALICE.name, "prod", statement_key(ALICE.name, "prod", sql, ["1"], tokens), T0 + 2
    )
    assert not can_consume(
        approved, ALICE.name, "prod", statement_key(ALICE.name, "prod", sql, ["2"], tokens), T0 + 2
    )


def test_pending_and_denied_requests_are_not_consumable() -> None:
    r = request()
    assert not can_consume(r, ALICE.name, "prod", r.request_key, T0 + 1)
    denied = apply_review(r, BOB, False, None, T0 + 1).request
    assert not can_consume(denied, ALICE.name, "prod", r.request_key, T0 + 2)


def test_withdraw() -> None:
    r = request()
    assert withdraw(r, T0 + 1, ALICE.name).status == "withdrawn"
    with pytest.raises(ReviewRefused) as err:
        withdraw(r, T0 + 1, BOB.name)
    assert err.value.code == "not_requester"
    with pytest.raises(ReviewRefused):
        withdraw(request(status="approved"), T0 + 1)


# --- access and grants ---------------------------------------------------------------------------


def access(group: str | None = "dba", connection: str | None = None) -> ApprovalRequest:
    return access_request(
        identity=ALICE,
        group=group,
        connection=connection,
        duration_seconds=7200,
        reason="incident 42",
        approvers=["dba"],
        min_approvals=1,
        now=T0,
        ttl_seconds=3600,
    )


def test_approved_access_request_becomes_a_grant() -> None:
    out = apply_review(access(), BOB, True, None, T0 + 10)
    g = out.grant
    assert g is not None
    assert (g.identity, g.group, g.connection) == (ALICE.name, "dba", None)
    assert (g.granted_at, g.expires_at) == (T0 + 10, T0 + 10 + 7200)
    assert g.approval_id == out.request.id
    assert not expiry_due(out.request, T0 + 10_000)  # the grant expires, not the request
    conn = apply_review(access(None, "prod"), BOB, True, None, T0 + 10).grant
    assert conn is not None
    assert (conn.group, conn.connection) == (None, "prod")


def test_access_request_needs_exactly_one_target() -> None:
    with pytest.raises(ValueError):
        access(None, None)
    with pytest.raises(ValueError):
        access("dba", "prod")


def test_grants_feed_groups_and_connections_while_active() -> None:
    grants = [
        Grant("grt_1", ALICE.name, "dba", None, T0, T0 + 100, "apr_1"),
        Grant("grt_2", ALICE.name, None, "prod", T0, T0 + 50, "apr_2"),
        Grant("grt_3", BOB.name, "hr", None, T0, T0 + 100, "apr_3"),
    ]
    assert with_grants(ALICE, grants, T0 + 1).groups == {"dev", "dba"}
    assert with_grants(ALICE, grants, T0 + 100) is ALICE
    assert with_grants(ALICE, grants, T0 - 1) is ALICE
    assert granted_connections(ALICE.name, grants, T0 + 1) == {"prod"}
    assert granted_connections(ALICE.name, grants, T0 + 50) == frozenset()


# --- configuration -------------------------------------------------------------------------------


def test_mode_resolution() -> None:
    cfg = ApprovalsConfig.model_validate(
        {
            "modes": [
                {"connections": ["prod-*"], "identities": ["*-bot"], "mode": "wait"},
                {"connections": ["staging"], "mode": "wait"},
            ]
        }
    )
    assert cfg.default_mode == "fail"
    assert cfg.mode_for("deploy-bot", "prod-eu") == "wait"
    assert cfg.mode_for("alice", "prod-eu") == "fail"
    assert cfg.mode_for("alice", "staging") == "wait"
    assert cfg.mode_for("alice", "staging", "fail") == "fail"  # the client's choice wins
    assert cfg.mode_for("alice", "dev", "wait") == "wait"
    assert cfg.mode_for("alice", "dev", "bogus") == "fail"
    assert cfg.console_link("apr_x") == "http://127.0.0.1:8080/approvals/apr_x"


def test_access_routes() -> None:
    cfg = ApprovalsConfig.model_validate(
        {
            "access": {
                "approvers": ["dba"],
                "routes": [
                    {"groups": ["pii-*"], "approvers": ["privacy"], "min_approvals": 2},
                    {"connections": ["prod*"], "approvers": ["sre"]},
                ],
            }
        }
    ).access
    assert cfg.route("pii-readers", None) == (("privacy",), 2)
    assert cfg.route(None, "prod-eu") == (("sre",), 1)
    assert cfg.route("dba", None) == (("dba",), 1)


@pytest.mark.parametrize(
    "hook",
    [
        {"url": "ftp://x"},
        {"url": "https://x"},  # generic needs a secret
        {"url": "https://x", "secret": "a", "secret_env": "B"},
        {"url": "https://x", "secret": "a", "events": ["used"]},
        {"url": "https://x", "secret": "a", "colour": "red"},
    ],
)
def test_invalid_webhooks(hook: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        WebhookConfig.model_validate(hook)


def test_slack_webhook_needs_no_secret() -> None:
    hook = WebhookConfig.model_validate({"url": "https://hooks.example/x", "format": "slack"})
    assert hook.resolve_secret() is None
