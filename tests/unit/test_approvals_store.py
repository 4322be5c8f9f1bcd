"""The approval store's contract, run here against SQLite.

``StoreContract`` is reused by tests/e2e/test_approvals_store_pg.py against PostgreSQL: a
subclass provides the ``make_store`` fixture (a function returning a new store object on the
same database each time it is called, as separate proxy nodes would have).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dbsentry.approvals.model import (
    ApprovalRequest,
    access_request,
    statement_key,
    statement_request,
)
from dbsentry.approvals.rules import ReviewRefused
from dbsentry.approvals.sqlite_store import SQLiteApprovalStore
from dbsentry.approvals.store import ApprovalStore
from dbsentry.audit.config import AuditConfig
from dbsentry.audit.records import StatementRecord
from dbsentry.audit.sqlite_store import SQLiteStore
from dbsentry.audit.store import encode
from dbsentry.engines.postgres.sql.parse import tokens
from dbsentry.identity.model import Identity

T0 = 1_700_000_000.0
MakeStore = Callable[[], ApprovalStore]


def person(name: str, *groups: str, agent: bool = False) -> Identity:
    return Identity(name, frozenset(groups), "agent" if agent else "human", "tok", "token")


ALICE = person("alice@example.com", "dev")
BOB = person("bob@example.com", "dba")
CAROL = person("carol@example.com", "dba")
BOT = person("deploy-bot", "dba", agent=True)
SQL = "DELETE FROM orders WHERE id = $1"


def new_request(
    params: list[str | None] | None = None, min_approvals: int = 1, now: float = T0
) -> ApprovalRequest:
    return statement_request(
        identity=ALICE,
        connection="prod",
        environment="production",
        sql=SQL,
        params=["1"] if params is None else params,
        approvers=["dba"],
        min_approvals=min_approvals,
        now=now,
        ttl_seconds=3600,
        validity_seconds=600,
        rules=["deletes-need-a-dba"],
        lex=tokens,
    )


def key(params: list[str | None] | None = None, who: str = ALICE.name, conn: str = "prod") -> str:
    return statement_key(who, conn, SQL, ["1"] if params is None else params, tokens)


class StoreContract:
    @pytest.fixture
    def store(self, make_store: MakeStore) -> Iterator[ApprovalStore]:
        s = make_store()
        yield s
        s.close()

    def test_pending_request_is_idempotent(self, store: ApprovalStore) -> None:
        v0 = store.version()
        first, created = store.create_or_get_pending(new_request(), T0)
        assert created
        again, created_again = store.create_or_get_pending(new_request(now=T0 + 5), T0 + 5)
        assert not created_again
        assert again.id == first.id
        assert store.version() > v0
        other, created_other = store.create_or_get_pending(new_request(["2"]), T0 + 5)
        assert created_other and other.id != first.id
        got = store.get(first.id)
        assert got == first
        assert store.get("apr_0000000000") is None
        assert {r.id for r in store.list(status="pending")} == {first.id, other.id}

    def test_new_request_after_the_pending_one_expired(self, store: ApprovalStore) -> None:
        first, _ = store.create_or_get_pending(new_request(), T0)
        second, created = store.create_or_get_pending(new_request(now=T0 + 4000), T0 + 4000)
        assert created and second.id != first.id
        old = store.get(first.id)
        assert old is not None and old.status == "expired"

    def test_review_approve_consume_once(self, store: ApprovalStore) -> None:
        r, _ = store.create_or_get_pending(new_request(), T0)
        assert store.consume(ALICE.name, "prod", key(), T0 + 1) is None  # not approved yet
        out = store.review(r.id, BOB, True, "ok", T0 + 2)
        assert out.event == "approved"
        stored = store.get(r.id)
        assert stored is not None and stored.status == "approved"
        assert stored.reviews[0].reviewer == BOB.name and stored.reviews[0].reason == "ok"
        assert store.consume(ALICE.name, "prod", key(["2"]), T0 + 3) is None  # changed params
        assert store.consume(BOB.name, "prod", key(who=BOB.name), T0 + 3) is None
        assert store.consume(ALICE.name, "staging", key(conn="staging"), T0 + 3) is None
        used = store.consume(ALICE.name, "prod", key(), T0 + 3)
        assert used is not None and used.id == r.id and used.status == "used"
        assert store.consume(ALICE.name, "prod", key(), T0 + 4) is None  # exactly once
        final = store.get(r.id)
        assert final is not None and final.status == "used" and final.used_at == T0 + 3
        # the next re-send needs a new approval
        again, created = store.create_or_get_pending(new_request(now=T0 + 5), T0 + 5)
        assert created and again.id != r.id

    def test_approval_is_not_usable_after_its_validity(self, store: ApprovalStore) -> None:
        r, _ = store.create_or_get_pending(new_request(), T0)
        store.review(r.id, BOB, True, None, T0 + 10)
        assert store.consume(ALICE.name, "prod", key(), T0 + 610) is None
        expired = store.expire_due(T0 + 610)
        assert [e.id for e in expired] == [r.id]
        assert store.expire_due(T0 + 611) == []

    @pytest.mark.parametrize(
        ("reviewer", "code"),
        [(ALICE, "self_review"), (person("dave", "dev"), "not_approver"), (BOT, "agent")],
    )
    def test_refused_reviews_change_nothing(
        self, store: ApprovalStore, reviewer: Identity, code: str
    ) -> None:
        r, _ = store.create_or_get_pending(new_request(), T0)
        v = store.version()
        with pytest.raises(ReviewRefused) as err:
            store.review(r.id, reviewer, True, None, T0 + 1)
        assert err.value.code == code
        after = store.get(r.id)
        assert after is not None and after.status == "pending" and after.reviews == ()
        assert store.version() == v

    def test_unknown_request(self, store: ApprovalStore) -> None:
        with pytest.raises(ReviewRefused) as err:
            store.review("apr_nope", BOB, True, None, T0)
        assert err.value.code == "not_found"

    def test_two_approvals_then_not_pending(self, store: ApprovalStore) -> None:
        r, _ = store.create_or_get_pending(new_request(min_approvals=2), T0)
        assert store.review(r.id, BOB, True, None, T0 + 1).event == "recorded"
        with pytest.raises(ReviewRefused) as err:
            store.review(r.id, BOB, True, None, T0 + 2)
        assert err.value.code == "already_reviewed"
        assert store.review(r.id, CAROL, True, None, T0 + 3).event == "approved"
        with pytest.raises(ReviewRefused) as err:
            store.review(r.id, person("erin", "dba"), False, None, T0 + 4)
        assert err.value.code == "not_pending"

    def test_denial(self, store: ApprovalStore) -> None:
        r, _ = store.create_or_get_pending(new_request(), T0)
        out = store.review(r.id, BOB, False, "no", T0 + 1)
        assert out.event == "denied" and out.request.status == "denied"
        assert store.consume(ALICE.name, "prod", key(), T0 + 2) is None
        assert [x.id for x in store.list(status="denied")] == [r.id]

    def test_review_of_expired_request_marks_it_expired(self, store: ApprovalStore) -> None:
        r, _ = store.create_or_get_pending(new_request(), T0)
        with pytest.raises(ReviewRefused) as err:
            store.review(r.id, BOB, True, None, T0 + 3600)
        assert err.value.code == "expired"
        got = store.get(r.id)
        assert got is not None and got.status == "expired"

    def test_expire_due_and_withdraw(self, store: ApprovalStore) -> None:
        a, _ = store.create_or_get_pending(new_request(), T0)
        b, _ = store.create_or_get_pending(new_request(["2"], now=T0 + 100), T0 + 100)
        with pytest.raises(ReviewRefused):
            store.withdraw(b.id, requester=BOB.name, now=T0 + 101)
        w = store.withdraw(b.id, requester=ALICE.name, now=T0 + 101)
        assert w is not None and w.status == "withdrawn"
        assert store.withdraw(b.id, now=T0 + 102) is None
        assert store.expire_due(T0 + 3599) == []
        assert [r.id for r in store.expire_due(T0 + 3600)] == [a.id]

    def test_access_grant(self, store: ApprovalStore) -> None:
        req = access_request(
            identity=ALICE,
            group="dba",
            connection=None,
            duration_seconds=7200,
            reason="incident 42",
            approvers=["dba"],
            min_approvals=1,
            now=T0,
            ttl_seconds=3600,
        )
        r, _ = store.create_or_get_pending(req, T0)
        assert store.active_grants(ALICE.name, T0 + 1) == []
        out = store.review(r.id, BOB, True, None, T0 + 10)
        assert out.grant is not None
        assert store.active_grants(ALICE.name, T0 + 11) == [out.grant]
        assert store.active_grants(ALICE.name, T0 + 10 + 7200) == []
        assert store.grants(identity=ALICE.name) == [out.grant]
        assert store.grants(active_at=T0 + 8000) == []
        assert [x.id for x in store.list(kind="access", status="approved")] == [r.id]
        assert store.consume(ALICE.name, "prod", r.request_key, T0 + 20) is None

    def test_concurrent_consumers_exactly_one_wins(self, make_store: MakeStore) -> None:
        setup = make_store()
        r, _ = setup.create_or_get_pending(new_request(), T0)
        setup.review(r.id, BOB, True, None, T0 + 1)
        stores = [make_store() for _ in range(6)]
        barrier = threading.Barrier(len(stores))
        wins: list[ApprovalRequest | None] = []
        errors: list[BaseException] = []
        lock = threading.Lock()

        def worker(s: ApprovalStore) -> None:
            try:
                barrier.wait()
                got = s.consume(ALICE.name, "prod", key(), T0 + 2)
                with lock:
                    wins.append(got)
            except BaseException as err:  # reported below
                errors.append(err)

        threads = [threading.Thread(target=worker, args=(s,)) for s in stores]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        for s in [setup, *stores]:
            s.close()
        assert not errors
        assert len(wins) == len(stores)
        assert sum(w is not None for w in wins) == 1

    def test_concurrent_requests_for_one_statement_make_one_request(
        self, make_store: MakeStore
    ) -> None:
        stores = [make_store() for _ in range(5)]
        barrier = threading.Barrier(len(stores))
        results: list[tuple[str, bool]] = []

        def worker(s: ApprovalStore) -> None:
            barrier.wait()
            r, created = s.create_or_get_pending(new_request(), T0)
            results.append((r.id, created))

        threads = [threading.Thread(target=worker, args=(s,)) for s in stores]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        pending = stores[0].list(status="pending")
        for s in stores:
            s.close()
        assert len(results) == len(stores)
        assert len({rid for rid, _ in results}) == 1
        assert sum(created for _, created in results) == 1
        assert len(pending) == 1

    def test_concurrent_reviewers_are_not_lost(self, make_store: MakeStore) -> None:
        setup = make_store()
        r, _ = setup.create_or_get_pending(new_request(min_approvals=2), T0)
        a, b = make_store(), make_store()
        barrier = threading.Barrier(2)
        results: list[str] = []

        def worker(s: ApprovalStore, who: Identity) -> None:
            barrier.wait()
            results.append(s.review(r.id, who, True, None, T0 + 1).event)

        threads = [
            threading.Thread(target=worker, args=(a, BOB)),
            threading.Thread(target=worker, args=(b, CAROL)),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        final = setup.get(r.id)
        for s in (setup, a, b):
            s.close()
        assert sorted(results) == ["approved", "recorded"]
        assert final is not None and final.status == "approved" and len(final.approvals) == 2


class TestSQLiteStore(StoreContract):
    @pytest.fixture
    def make_store(self, tmp_path: Path) -> MakeStore:
        return lambda: SQLiteApprovalStore(tmp_path / "audit.db")


def test_shares_the_audit_database_without_disturbing_it(tmp_path: Path) -> None:
    audit_cfg = AuditConfig()
    path = audit_cfg.sqlite_path(tmp_path)
    audit = SQLiteStore(path)
    audit.append_batch(
        [
            encode(
                StatementRecord(
                    session_id="s",
                    identity="a",
                    identity_kind="human",
                    statement="x",
                    decision="allow",
                )
            )
        ]
    )
    approvals = SQLiteApprovalStore(path)
    r, _ = approvals.create_or_get_pending(new_request(), T0)
    audit.append_batch(
        [
            encode(
                StatementRecord(
                    session_id="s",
                    identity="a",
                    identity_kind="human",
                    statement="y",
                    decision="allow",
                )
            )
        ]
    )
    assert audit.head().seq == 2
    assert approvals.get(r.id) is not None
    approvals.close()
    audit.close()
    # opening again (tables exist) is fine
    again = SQLiteApprovalStore(path)
    assert again.get(r.id) is not None
    again.close()
