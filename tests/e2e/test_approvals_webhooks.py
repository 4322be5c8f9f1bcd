"""Approval notifications end to end: a receiver in the test gets the proxy's and the CLI's
posts, checks the generic webhook's HMAC signature the way the docs tell receivers to, and
reads the Slack-format message."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors

from support.pg import PgServer
from support.proxy import RunningProxy, dbsentry_cli, run_proxy, write_config

pytestmark = pytest.mark.e2e

ALICE = ("alice@example.com", ("eng",))
BOB_DBA = ("bob@example.com", ("dba",))
SECRET = "s3cret"
APR = re.compile(r"\bapr_[0-9abcdefghjkmnpqrstvwxyz]{10}\b")


@dataclass
class Post:
    path: str
    headers: dict[str, str]
    body: bytes
    received: float

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """A tiny HTTP server on 127.0.0.1 that keeps every POST."""

    def __init__(self) -> None:
        self.posts: list[Post] = []
        self.cond = threading.Condition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with outer.cond:
                    outer.posts.append(
                        Post(
                            self.path,
                            {k.lower(): v for k, v in self.headers.items()},
                            body,
                            time.time(),
                        )
                    )
                    outer.cond.notify_all()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wait(self, pred: Any, timeout: float = 15) -> Post:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                found = [p for p in self.posts if pred(p)]
                if found:
                    return found[0]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"no such post; got {[(p.path, p.body[:200]) for p in self.posts]}"
                    )
                self.cond.wait(left)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.thread.start()
    yield r
    r.server.shutdown()
    r.server.server_close()


@pytest.fixture
def proxy(pg_server: PgServer, tmp_path: Path, receiver: Receiver) -> Iterator[RunningProxy]:
    extra = {
        "approvals": {
            "poll_interval_seconds": 0.2,
            "console_url": "https://dbsentry.example.com",
            "webhooks": [
                {"url": receiver.url("/hook"), "secret": SECRET, "format": "generic"},
                {"url": receiver.url("/slack"), "format": "slack"},
                # routed: only requests the "privacy" group reviews; none here
                {"url": receiver.url("/privacy"), "secret": SECRET, "approver_groups": ["privacy"]},
            ],
        }
    }
    with run_proxy(write_config(tmp_path, pg_server, extra=extra)) as running:
        yield running


@pytest.fixture
def table(pg_server: PgServer) -> Iterator[str]:
    name = f"hook_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server.dsn(), autocommit=True) as direct:
        direct.execute(f"create table {name} (id int)")
        yield name
        direct.execute(f"drop table if exists {name}")


def signature_ok(post: Post, secret: str, tolerance: float = 300) -> bool:
    """The receiver's check from docs/approvals.md, written independently of dbsentry."""
    ts = post.headers.get("x-dbsentry-timestamp", "")
    sig = post.headers.get("x-dbsentry-signature", "")
    if not ts.isdigit() or abs(time.time() - int(ts)) > tolerance:
        return False
    expected = hmac.new(secret.encode(), ts.encode() + b"." + post.body, hashlib.sha256).hexdigest()
    return hmac.compare_digest("sha256=" + expected, sig)


def test_generic_and_slack_webhooks(proxy: RunningProxy, receiver: Receiver, table: str) -> None:
    sql = f"CREATE INDEX {table}_idx ON {table} (id)"
    started = time.time()
    with (
        psycopg.connect(proxy.dsn(ALICE[0], groups=ALICE[1]), autocommit=True) as conn,
        pytest.raises(errors.InsufficientPrivilege) as refused,
    ):
        conn.execute(sql)
    (rid,) = set(APR.findall(refused.value.diag.message_primary or ""))

    def generic(event: str) -> Post:
        return receiver.wait(
            lambda p: (
                p.path == "/hook" and p.json().get("id") == rid and p.json().get("event") == event
            )
        )

    requested = generic("requested")
    assert requested.headers["content-type"] == "application/json"
    assert signature_ok(requested, SECRET)
    assert not signature_ok(requested, "wrong-secret")
    tampered = Post(
        requested.path,
        requested.headers,
        requested.body.replace(b"alice", b"mallory"),
        requested.received,
    )
    assert not signature_ok(tampered, SECRET)
    assert abs(int(requested.headers["x-dbsentry-timestamp"]) - started) < 30
    body = requested.json()
    assert body["requester"] == ALICE[0] and body["requester_kind"] == "human"
    assert body["statement"] == sql and body["params"] is None
    assert (body["kind"], body["status"], body["connection"], body["environment"]) == (
        "statement",
        "pending",
        "prod",
        "production",
    )
    assert body["approvers"] == ["dba"] and body["min_approvals"] == 1
    assert body["rules"] == ["baseline.prod.ddl-approval"]
    assert body["link"] == f"https://dbsentry.example.com/approvals/{rid}"
    assert body["approvals"] == [] and body["denial"] is None

    slack = receiver.wait(lambda p: p.path == "/slack" and rid in p.json().get("text", ""))
    msg = slack.json()
    assert msg["text"].startswith(f"Approval requested: {rid}: {ALICE[0]}")
    assert isinstance(msg["blocks"], list) and msg["blocks"]
    block_text = json.dumps(msg["blocks"])
    assert f"```{sql}```" in block_text
    assert f"https://dbsentry.example.com/approvals/{rid}" in block_text
    assert ALICE[0] in block_text

    # The review, from the CLI process: announced too, signed the same way.
    done = dbsentry_cli(
        "approvals",
        "approve",
        rid,
        "--token",
        proxy.token(*BOB_DBA),
        "--reason",
        "ticket 4711",
        config=proxy.config_path,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    approved = generic("approved")
    assert signature_ok(approved, SECRET)
    a = approved.json()
    assert a["status"] == "approved"
    assert [(r["reviewer"], r["reason"]) for r in a["approvals"]] == [(BOB_DBA[0], "ticket 4711")]
    assert a["approved_until"] is not None
    slack_ok = receiver.wait(
        lambda p: p.path == "/slack" and p.json().get("text", "").startswith(f"Approved: {rid}")
    )
    assert f"Approved by {BOB_DBA[0]}: ticket 4711" in json.dumps(slack_ok.json()["blocks"])

    # Routed webhook: never told about a request for dba.
    time.sleep(0.5)
    assert [p for p in receiver.posts if p.path == "/privacy"] == []
    # Every generic post is signed.
    assert all(signature_ok(p, SECRET) for p in receiver.posts if p.path == "/hook")
