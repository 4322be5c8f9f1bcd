"""The hooks a proxy session calls: gate, wait, consume, grants; audited and announced."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from dbsentry.approvals.config import ApprovalsConfig
from dbsentry.approvals.model import access_request, statement_key
from dbsentry.approvals.notify import Notifier
from dbsentry.approvals.rules import ReviewRefused
from dbsentry.approvals.service import Approvals, Gate
from dbsentry.approvals.sqlite_store import SQLiteApprovalStore
from dbsentry.audit.records import ApprovalRecord
from dbsentry.engines.postgres.sql.facts import analyze
from dbsentry.engines.postgres.sql.parse import tokens
from dbsentry.identity.model import Identity
from dbsentry.policy.engine import Decision

ALICE = Identity("alice@example.com", frozenset({"dev"}), "human", "t", "token")
BOB = Identity("bob@example.com", frozenset({"dba"}), "human", "t", "token")
CAROL = Identity("carol@example.com", frozenset({"dba"}), "human", "t", "token")
DECISION = Decision(
    "require_approval", ("deletes-need-a-dba",), "deletes in production need a DBA", ("dba",), 1
)
SQL = "DELETE FROM orders WHERE id = 7"


class Harness:
    def __init__(self, tmp_path: Path, **cfg: object) -> None:
        self.records: list[ApprovalRecord] = []
        self.posts: list[tuple[str, bytes]] = []
        self.config = ApprovalsConfig.model_validate(
            {
                "poll_interval_seconds": 0.02,
                "webhooks": [{"url": "https://hooks.example/x", "secret": "k"}],
                **cfg,
            }
        )

        def send(req: urllib.request.Request, timeout: float) -> int:
            data = req.data
            assert isinstance(data, bytes)
            self.posts.append((req.full_url, data))
            return 204

        self.notifier = Notifier(self.config, send=send)
        self.store = SQLiteApprovalStore(tmp_path / "audit.db")
        self.svc = Approvals(
            self.config, self.store, notifier=self.notifier, audit=self.records.append
        )

    def gate(
        self, sql: str = SQL, params: list[str | None] | None = None, mode: str | None = None
    ) -> Gate:
        return self.svc.statement_gate(
            identity=ALICE,
            connection="prod",
            environment="production",
            sql=sql,
            params=params,
            decision=DECISION,
            facts=analyze(sql),
            session_id="sess-1",
            client_mode=mode,
            key=statement_key(ALICE.name, "prod", sql, params, tokens),
        )

    def events(self) -> list[str]:
        self.notifier.close(timeout=5)
        return [json.loads(body)["event"] for _, body in self.posts]


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path)
    yield harness
    harness.svc.close()
    harness.store.close()


def test_fail_mode_refuses_then_runs_once_approved(h: Harness) -> None:
    first = h.gate()
    assert first.outcome == "refuse" and first.created
    r = first.request
    assert r.id in first.message and f"http://127.0.0.1:8080/approvals/{r.id}" in first.message
    assert "deletes-need-a-dba" in first.message
    assert (r.command, r.tables, r.session_id) == ("DELETE", ("orders",), "sess-1")
    again = h.gate("DELETE  FROM orders\n WHERE id = 7;")  # re-sent while pending
    assert again.outcome == "refuse" and not again.created and again.request.id == r.id
    h.svc.review(r.id, BOB, True, "fine")
    run = h.gate()
    assert run.outcome == "run" and run.request.id == r.id and run.request.status == "used"
    later = h.gate()  # a second re-send needs a new approval
    assert later.outcome == "refuse" and later.created and later.request.id != r.id
    assert [(x.event, x.decision) for x in h.records] == [
        ("requested", None),
        ("approved", "approved"),
        ("requested", None),
    ]
    assert h.records[1].reviewer == BOB.name and h.records[1].review_comment == "fine"
    assert h.events() == ["requested", "approved", "requested"]


def test_changed_statement_is_not_covered(h: Harness) -> None:
    r = h.gate(params=["1"]).request
    h.svc.review(r.id, BOB, True)
    assert h.gate(params=["2"]).outcome == "refuse"
    assert h.gate("DELETE FROM orders WHERE id = 8", params=["1"]).outcome == "refuse"
    assert h.gate(params=["1"]).outcome == "run"


def test_wait_mode_resolves_when_decided(h: Harness) -> None:
    h.svc.start()
    gate = h.gate(mode="wait")
    assert gate.outcome == "wait" and gate.request.id in gate.message
    fut = h.svc.watch(gate.request.id)
    time.sleep(0.1)
    assert not fut.done()
    h.svc.review(gate.request.id, BOB, True)
    decided = fut.result(timeout=5)
    assert decided.status == "approved"
    assert decided.connection is not None
    used = h.svc.consume_all(decided.requester, decided.connection, [decided.request_key])
    assert used is not None and [u.status for u in used] == ["used"]
    assert h.svc.consume_all(decided.requester, decided.connection, [decided.request_key]) is None


def test_consume_all_is_all_or_none(h: Harness) -> None:
    a = h.gate()
    b = h.gate(sql="update t set x = 2 where id = 2")
    h.svc.review(a.request.id, BOB, True)
    assert a.request.connection is not None
    keys = [a.request.request_key, b.request.request_key]
    assert h.svc.consume_all(a.request.requester, a.request.connection, keys) is None
    # the approved one was not used up by the failed attempt
    again = h.store.get(a.request.id)
    assert again is not None and again.status == "approved"
    h.svc.review(b.request.id, BOB, True)
    used = h.svc.consume_all(a.request.requester, a.request.connection, keys)
    assert used is not None and [u.id for u in used] == [a.request.id, b.request.id]


def test_wait_mode_denied_and_withdrawn(h: Harness) -> None:
    h.svc.start()
    a = h.gate(mode="wait").request
    fut = h.svc.watch(a.id)
    h.svc.review(a.id, BOB, False, "not now")
    decided = fut.result(timeout=5)
    assert decided.status == "denied"
    assert "denied by bob@example.com: not now" in h.svc.outcome_message(decided)
    b = h.gate("DELETE FROM orders WHERE id = 9", mode="wait").request
    fut_b = h.svc.watch(b.id)
    withdrawn = h.svc.withdraw(b.id, ALICE.name)  # the client gave up waiting
    assert withdrawn is not None and withdrawn.status == "withdrawn"
    assert fut_b.result(timeout=5).status == "withdrawn"
    assert h.records[-1].event == "revoked"
    with pytest.raises(ReviewRefused):
        h.svc.review(b.id, BOB, True)


def test_unwatch_and_close_cancel(h: Harness) -> None:
    h.svc.start()
    r = h.gate(mode="wait").request
    fut = h.svc.watch(r.id)
    h.svc.unwatch(r.id, fut)
    assert fut.cancelled()
    fut2 = h.svc.watch(r.id)
    h.svc.close()
    assert fut2.cancelled()


def test_expiry_is_audited_and_announced(tmp_path: Path) -> None:
    h = Harness(tmp_path, request_ttl_seconds=10)
    now = [time.time()]
    h.svc._clock = lambda: now[0]
    r = h.gate().request
    assert h.svc.expire_due() == []
    now[0] += 11
    assert [x.id for x in h.svc.expire_due()] == [r.id]
    assert h.records[-1].event == "expired" and h.records[-1].decision == "expired"
    assert h.events() == ["requested", "expired"]
    h.svc.close()
    h.store.close()


def test_default_approvers_when_the_rule_names_none(h: Harness) -> None:
    gate = h.svc.statement_gate(
        identity=ALICE,
        connection="prod",
        environment=None,
        sql=SQL,
        params=None,
        decision=Decision("require_approval", ("baseline.prod.ddl-approval",)),
        key=statement_key(ALICE.name, "prod", SQL, None, tokens),
    )
    assert gate.request.approvers == ("dba",) and gate.request.required_approvals == 1


def test_grants_feed_identity_and_connections(h: Harness) -> None:
    h.svc.start()
    assert h.svc.load_grants(ALICE.name) == []
    assert h.svc.effective_identity(ALICE) is ALICE
    now = time.time()
    for group, connection in (("dba", None), (None, "prod")):
        req = access_request(
            identity=ALICE,
            group=group,
            connection=connection,
            duration_seconds=3600,
            reason="incident",
            approvers=["dba"],
            min_approvals=1,
            now=now,
            ttl_seconds=600,
        )
        stored, _ = h.store.create_or_get_pending(req, now)
        h.svc.request_created(stored)
        h.svc.review(stored.id, CAROL, True)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not (
        "dba" in h.svc.effective_identity(ALICE).groups
        and h.svc.connection_granted(ALICE.name, "prod")
    ):
        time.sleep(0.02)  # the background thread picks the grants up
    assert h.svc.effective_identity(ALICE).groups == {"dev", "dba"}
    assert h.svc.connection_granted(ALICE.name, "prod")
    assert not h.svc.connection_granted(ALICE.name, "staging")
    h.svc.release_grants(ALICE.name)
    assert h.svc.effective_identity(ALICE) is ALICE
    assert [r.statement for r in h.records if r.event == "requested"] == [
        "ACCESS group dba FOR 3600s",
        "ACCESS connection prod FOR 3600s",
    ]
