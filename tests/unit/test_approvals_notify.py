"""Webhooks: signed generic posts received by a real local HTTP server, Slack message shape."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from dbsentry.approvals.config import ApprovalsConfig
from dbsentry.approvals.model import ApprovalRequest, access_request, statement_request
from dbsentry.approvals.notify import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Notifier,
    sign,
    slack_payload,
    verify_signature,
)
from dbsentry.approvals.rules import apply_review
from dbsentry.engines.postgres.sql.parse import tokens
from dbsentry.identity.model import Identity

SECRET = "s3cret-for-tests"
ALICE = Identity("alice@example.com", frozenset({"dev"}), "human", "t", "token")
BOB = Identity("bob@example.com", frozenset({"dba"}), "human", "t", "token")


def a_request(sql: str = "DELETE FROM orders WHERE id = $1") -> ApprovalRequest:
    return statement_request(
        identity=ALICE,
        connection="prod",
        environment="production",
        sql=sql,
        params=["42"],
        approvers=["dba"],
        min_approvals=1,
        now=time.time(),
        ttl_seconds=3600,
        validity_seconds=600,
        rules=["deletes-need-a-dba"],
        message="deletes in production need a DBA",
        lex=tokens,
    )


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    url: str
    received: list[Received] = field(default_factory=list)
    # statuses to answer, in order; 200 once they run out
    statuses: list[int] = field(default_factory=list)
    arrived: threading.Event = field(default_factory=threading.Event)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver(url="")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            state.received.append(Received(self.path, dict(self.headers.items()), body))
            status = state.statuses.pop(0) if state.statuses else 200
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()
            state.arrived.set()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/dbsentry"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def config(receiver: Receiver, **hook: Any) -> ApprovalsConfig:
    return ApprovalsConfig.model_validate(
        {
            "console_url": "https://dbsentry.example/",
            "webhooks": [{"url": receiver.url, "secret": SECRET, "retries": 2, **hook}],
        }
    )


def test_generic_webhook_is_signed_and_verifiable(receiver: Receiver) -> None:
    request = a_request()
    notifier = Notifier(config(receiver))
    assert notifier.notify("requested", request) == 1
    notifier.close(timeout=10)
    assert notifier.sent == 1 and notifier.failed == 0
    [got] = receiver.received
    assert got.path == "/hooks/dbsentry"
    ts = got.headers[TIMESTAMP_HEADER]
    signature = got.headers[SIGNATURE_HEADER]
    assert signature.startswith("sha256=")
    assert abs(int(ts) - time.time()) < 60
    assert verify_signature(SECRET, got.body, ts, signature)
    # what the docs tell receivers to compute
    import hashlib
    import hmac

    expected = hmac.new(SECRET.encode(), ts.encode() + b"." + got.body, hashlib.sha256).hexdigest()
    assert signature == "sha256=" + expected
    # tampering, a wrong secret, a replay with a new timestamp, an old timestamp: all refused
    assert not verify_signature(SECRET, got.body + b" ", ts, signature)
    assert not verify_signature("other", got.body, ts, signature)
    assert not verify_signature(SECRET, got.body, str(int(ts) + 1), signature)
    assert not verify_signature(SECRET, got.body, ts, signature, now=int(ts) + 301)
    assert not verify_signature(SECRET, got.body, "yesterday", signature)

    data = json.loads(got.body)
    assert data["event"] == "requested"
    assert data["id"] == request.id
    assert data["link"] == f"https://dbsentry.example/approvals/{request.id}"
    assert data["statement"] == request.statement
    assert data["params"] == ["42"]
    assert data["approvers"] == ["dba"] and data["min_approvals"] == 1
    assert data["requester"] == ALICE.name and data["connection"] == "prod"
    assert got.headers["Content-Type"] == "application/json"


def test_retries_then_delivers(receiver: Receiver) -> None:
    receiver.statuses = [500, 503]
    notifier = Notifier(config(receiver), retry_delay=0.01)
    notifier.notify("approved", apply_review(a_request(), BOB, True, "ok", time.time()).request)
    notifier.close(timeout=10)
    assert len(receiver.received) == 3
    assert notifier.sent == 1
    # each attempt is signed afresh
    for got in receiver.received:
        assert verify_signature(
            SECRET, got.body, got.headers[TIMESTAMP_HEADER], got.headers[SIGNATURE_HEADER]
        )


def test_gives_up_quietly(receiver: Receiver) -> None:
    receiver.statuses = [400]
    notifier = Notifier(config(receiver), retry_delay=0.01)
    notifier.notify("requested", a_request())
    notifier.close(timeout=10)
    assert len(receiver.received) == 1  # a 400 is not retried
    assert notifier.failed == 1


@pytest.mark.serial
def test_unreachable_receiver_never_raises() -> None:
    cfg = ApprovalsConfig.model_validate(
        {
            "webhooks": [
                {"url": "http://127.0.0.1:9/x", "secret": "s", "retries": 1, "timeout_seconds": 1}
            ]
        }
    )
    notifier = Notifier(cfg, retry_delay=0.01)
    started = time.monotonic()
    assert notifier.notify("requested", a_request()) == 1
    assert time.monotonic() - started < 0.5  # queued, not sent inline
    notifier.close(timeout=10)
    assert notifier.failed == 1


def test_events_and_approver_groups_route_webhooks(receiver: Receiver) -> None:
    cfg = ApprovalsConfig.model_validate(
        {
            "webhooks": [
                {"url": receiver.url + "?team=dba", "secret": "s", "approver_groups": ["dba"]},
                {"url": receiver.url + "?team=hr", "secret": "s", "approver_groups": ["hr"]},
                {
                    "url": receiver.url + "?decisions",
                    "secret": "s",
                    "events": ["approved", "denied"],
                },
            ]
        }
    )
    notifier = Notifier(cfg)
    assert notifier.notify("requested", a_request()) == 1
    assert notifier.notify("denied", a_request()) == 2
    notifier.close(timeout=10)
    assert sorted(r.path.split("?")[1] for r in receiver.received) == [
        "decisions",
        "team=dba",
        "team=dba",
    ]


def test_secret_from_environment(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DBSENTRY_TEST_HOOK_SECRET", "from-env")
    cfg = ApprovalsConfig.model_validate(
        {"webhooks": [{"url": receiver.url, "secret_env": "DBSENTRY_TEST_HOOK_SECRET"}]}
    )
    notifier = Notifier(cfg)
    notifier.notify("expired", a_request())
    notifier.close(timeout=10)
    [got] = receiver.received
    assert verify_signature(
        "from-env", got.body, got.headers[TIMESTAMP_HEADER], got.headers[SIGNATURE_HEADER]
    )


def test_slack_message_shape(receiver: Receiver) -> None:
    sql = "DELETE FROM orders\nWHERE id = $1 AND note <> '```' AND a < b"
    request = a_request(sql)
    payload = slack_payload(
        "requested", request, f"https://dbsentry.example/approvals/{request.id}"
    )
    assert isinstance(payload["text"], str) and request.id in payload["text"]
    blocks = payload["blocks"]
    types = [b["type"] for b in blocks]
    assert types[0] == "header" and "actions" in types
    code_blocks = [
        b["text"]["text"]
        for b in blocks
        if b["type"] == "section" and b["text"]["text"].startswith("```")
    ]
    assert code_blocks, "the statement is in a code block"
    stmt = code_blocks[0]
    assert stmt.endswith("```") and stmt.count("```") == 2  # a ``` in the SQL cannot close it
    assert "&lt; b" in stmt and "&lt;&gt;" in stmt  # Slack's escaping
    params = [
        b["text"]["text"]
        for b in blocks
        if b["type"] == "section" and "Parameters" in b["text"]["text"]
    ]
    assert params and "'42'" in params[0]
    [actions] = [b for b in blocks if b["type"] == "actions"]
    assert actions["elements"][0]["url"].endswith(f"/approvals/{request.id}")
    json.dumps(payload)  # serialisable
    for b in blocks:
        text = b.get("text", {}).get("text", "")
        assert len(text) <= 3000

    # posted as-is, no signature needed
    cfg = ApprovalsConfig.model_validate({"webhooks": [{"url": receiver.url, "format": "slack"}]})
    notifier = Notifier(cfg)
    notifier.notify("requested", request)
    notifier.close(timeout=10)
    [got] = receiver.received
    assert SIGNATURE_HEADER not in got.headers
    assert json.loads(got.body)["blocks"][0]["type"] == "header"


def test_slack_messages_for_decisions_and_access() -> None:
    long_sql = "UPDATE t SET x = 1 WHERE id IN (" + ",".join(str(i) for i in range(3000)) + ")"
    denied = apply_review(a_request(long_sql), BOB, False, "too broad", time.time()).request
    p = slack_payload("denied", denied, "https://x/approvals/" + denied.id)
    texts = json.dumps(p)
    assert "Denied by bob@example.com: too broad" in texts
    assert all(len(b.get("text", {}).get("text", "")) <= 3000 for b in p["blocks"])
    acc = access_request(
        identity=ALICE,
        group="dba",
        connection=None,
        duration_seconds=7200,
        reason="incident <42>",
        approvers=["dba"],
        min_approvals=1,
        now=time.time(),
        ttl_seconds=60,
    )
    p = slack_payload("requested", acc, "https://x/approvals/" + acc.id)
    texts = json.dumps(p)
    assert "access to group dba for 2h" in texts
    assert "incident &lt;42&gt;" in texts


def test_sign_is_over_timestamp_and_body() -> None:
    assert sign("k", "1", b"{}") != sign("k", "2", b"{}")
    assert sign("k", "1", b"{}") != sign("k", "1", b"{ }")
    r = replace(a_request(), params=None)
    assert r.params is None
