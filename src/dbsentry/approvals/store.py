"""Where approvals live: in the audit trail's database, so every proxy node sees the same ones.

SQLite: the audit database file (``audit.path``, default ``<state_dir>/audit.db``).
PostgreSQL: the audit DSN, in the audit schema (``audit.pg_schema``).  Either way the tables
are ``approval_requests``, ``approval_reviews``, ``grants`` and ``approval_meta`` (a change
counter that waiting sessions poll), created on first use.

Every change runs in one transaction that first locks the request's row (PostgreSQL
``SELECT ... FOR UPDATE``; SQLite ``BEGIN IMMEDIATE``), then applies :mod:`.rules` to what it
read, so two reviewers, or two nodes consuming one approval, cannot both win.

The methods block; call them from a thread (``loop.run_in_executor``) in asyncio code.
"""

from __future__ import annotations

import abc
import builtins
import time as _time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from dbsentry.approvals import rules
from dbsentry.approvals.model import ApprovalRequest, Grant, Review, Reviewed, Status
from dbsentry.identity.model import Identity

if TYPE_CHECKING:
    from dbsentry.audit.config import AuditConfig
    from dbsentry.config import ControlPlaneConfig


class ApprovalStoreError(Exception):
    """The store could not do what was asked (database down, locked, I/O error)."""


class DuplicatePending(Exception):
    """Another node inserted the same pending request first (the caller retries)."""


# Columns that change after creation; everything else lives in ``data`` (JSON) and never does.
_STATE = ("status", "decided_at", "approved_until", "used_at")
_REQUEST_COLUMNS = "id, data, status, decided_at, approved_until, used_at"
_GRANT_COLUMNS = "id, identity, grp, connection, granted_at, expires_at, approval_id"


class _Tx(Protocol):
    """One open transaction: SQL with ``?`` placeholders and ``@T`` for the table prefix."""

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[Sequence[Any]]: ...

    def run(self, sql: str, params: Sequence[Any] = ()) -> int: ...


def _request_data(request: ApprovalRequest) -> str:
    data = request.to_dict()
    for name in (*_STATE, "reviews"):
        data.pop(name, None)
    return orjson.dumps(data).decode()


def _grant(row: Sequence[Any]) -> Grant:
    return Grant(
        id=str(row[0]),
        identity=str(row[1]),
        group=row[2],
        connection=row[3],
        granted_at=float(row[4]),
        expires_at=float(row[5]),
        approval_id=str(row[6]),
    )


class ApprovalStore(abc.ABC):
    """Approval requests, reviews and grants, shared by every node that uses the same database."""

    FOR_UPDATE = ""

    def __init__(self, *, clock: Callable[[], float] = _time.time) -> None:
        self._clock = clock

    # --- what implementations provide ------------------------------------------------------

    @abc.abstractmethod
    def _transaction(self, *, write: bool) -> AbstractContextManager[_Tx]:
        """A transaction; ``write`` ones are serialised against other writers."""

    @abc.abstractmethod
    def close(self) -> None: ...

    @abc.abstractmethod
    def describe(self) -> str:
        """Where the store is, for messages (no secrets)."""

    # --- reading -------------------------------------------------------------------------------

    def _now(self, now: float | None) -> float:
        return self._clock() if now is None else now

    def _load(self, tx: _Tx, rows: Sequence[Sequence[Any]]) -> builtins.list[ApprovalRequest]:
        if not rows:
            return []
        ids = [str(r[0]) for r in rows]
        marks = ",".join("?" * len(ids))
        reviews: dict[str, builtins.list[Review]] = {}
        for rid, reviewer, kind, approve, reason, when in tx.rows(
            f"SELECT request_id, reviewer, reviewer_kind, approve, reason, time "
            f"FROM @Tapproval_reviews WHERE request_id IN ({marks}) ORDER BY time, reviewer",
            ids,
        ):
            reviews.setdefault(str(rid), []).append(
                Review(str(reviewer), str(kind), bool(approve), reason, float(when))
            )
        out = []
        for rid, data, status, decided_at, approved_until, used_at in rows:
            base = ApprovalRequest.from_dict(orjson.loads(data))
            status_value: Status = status
            out.append(
                replace(
                    base,
                    status=status_value,
                    decided_at=None if decided_at is None else float(decided_at),
                    approved_until=None if approved_until is None else float(approved_until),
                    used_at=None if used_at is None else float(used_at),
                    reviews=tuple(reviews.get(str(rid), ())),
                )
            )
        return out

    def _select(
        self,
        tx: _Tx,
        where: str,
        params: Sequence[Any],
        *,
        lock: bool = False,
        order: str = "created_at",
        limit: int | None = None,
    ) -> builtins.list[ApprovalRequest]:
        sql = f"SELECT {_REQUEST_COLUMNS} FROM @Tapproval_requests WHERE {where} ORDER BY {order}"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        if lock:
            sql += self.FOR_UPDATE
        return self._load(tx, tx.rows(sql, params))

    def get(self, request_id: str) -> ApprovalRequest | None:
        with self._transaction(write=False) as tx:
            found = self._select(tx, "id = ?", (request_id,))
        return found[0] if found else None

    def list(
        self,
        *,
        status: Status | None = None,
        kind: str | None = None,
        requester: str | None = None,
        limit: int = 100,
    ) -> builtins.list[ApprovalRequest]:
        """Requests, newest first."""
        where: builtins.list[str] = ["1 = 1"]
        params: builtins.list[Any] = []
        for column, value in (("status", status), ("kind", kind), ("requester", requester)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        with self._transaction(write=False) as tx:
            return self._select(
                tx, " AND ".join(where), params, order="created_at DESC, id", limit=limit
            )

    def version(self) -> int:
        """A counter that grows with every change: poll it to learn that something was decided."""
        with self._transaction(write=False) as tx:
            rows = tx.rows("SELECT version FROM @Tapproval_meta WHERE id = 1")
        return int(rows[0][0]) if rows else 0

    def active_grants(self, identity: str, now: float | None = None) -> builtins.list[Grant]:
        at = self._now(now)
        with self._transaction(write=False) as tx:
            rows = tx.rows(
                f"SELECT {_GRANT_COLUMNS} FROM @Tgrants WHERE identity = ? AND granted_at <= ? "
                "AND expires_at > ? ORDER BY granted_at, id",
                (identity, at, at),
            )
        return [_grant(r) for r in rows]

    def grants(
        self, *, identity: str | None = None, active_at: float | None = None, limit: int = 100
    ) -> builtins.list[Grant]:
        """Grants, newest first; only those active at ``active_at`` if given."""
        where: builtins.list[str] = ["1 = 1"]
        params: builtins.list[Any] = []
        if identity is not None:
            where.append("identity = ?")
            params.append(identity)
        if active_at is not None:
            where.append("granted_at <= ? AND expires_at > ?")
            params += [active_at, active_at]
        with self._transaction(write=False) as tx:
            rows = tx.rows(
                f"SELECT {_GRANT_COLUMNS} FROM @Tgrants WHERE {' AND '.join(where)} "
                f"ORDER BY granted_at DESC, id LIMIT {int(limit)}",
                params,
            )
        return [_grant(r) for r in rows]

    # --- writing -------------------------------------------------------------------------------

    def _bump(self, tx: _Tx) -> None:
        tx.run("UPDATE @Tapproval_meta SET version = version + 1 WHERE id = 1")

    @staticmethod
    def _save_state(tx: _Tx, request: ApprovalRequest) -> None:
        tx.run(
            "UPDATE @Tapproval_requests SET status = ?, decided_at = ?, approved_until = ?, "
            "used_at = ? WHERE id = ?",
            (
                request.status,
                request.decided_at,
                request.approved_until,
                request.used_at,
                request.id,
            ),
        )

    def create_or_get_pending(
        self, request: ApprovalRequest, now: float | None = None
    ) -> tuple[ApprovalRequest, bool]:
        """Store a new pending request, or return the pending one with the same key.

        Returns (request, created).  Re-sending a statement while its request is pending thus
        names the same request; once that one is decided or expired, a new one is made.
        """
        at = self._now(now)
        for _ in range(3):
            try:
                return self._create_or_get(request, at)
            except DuplicatePending:
                continue  # another node inserted it between our look and our insert
        raise ApprovalStoreError(f"could not store approval request {request.id}")

    def _create_or_get(self, request: ApprovalRequest, now: float) -> tuple[ApprovalRequest, bool]:
        with self._transaction(write=True) as tx:
            for existing in self._select(
                tx, "request_key = ? AND status = 'pending'", (request.request_key,), lock=True
            ):
                if not rules.expiry_due(existing, now):
                    return existing, False
                self._save_state(tx, rules.expire(existing, now))
            tx.run(
                "INSERT INTO @Tapproval_requests (id, kind, status, requester, connection, "
                "request_key, created_at, expires_at, decided_at, approved_until, used_at, data) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    request.id,
                    request.kind,
                    request.status,
                    request.requester,
                    request.connection,
                    request.request_key,
                    request.created_at,
                    request.expires_at,
                    request.decided_at,
                    request.approved_until,
                    request.used_at,
                    _request_data(request),
                ),
            )
            self._bump(tx)
        return request, True

    def review(
        self,
        request_id: str,
        reviewer: Identity,
        approve: bool,
        reason: str | None = None,
        now: float | None = None,
    ) -> Reviewed:
        """Record an approval or denial by ``reviewer``; raises ``rules.ReviewRefused``.

        A request found past its deadline is marked expired (and the review refused).
        """
        at = self._now(now)
        refusal: rules.ReviewRefused | None = None
        result: Reviewed | None = None
        with self._transaction(write=True) as tx:
            found = self._select(tx, "id = ?", (request_id,), lock=True)
            if not found:
                raise rules.ReviewRefused("not_found", f"no approval request {request_id}")
            request = found[0]
            if rules.expiry_due(request, at) and request.status == "pending":
                self._save_state(tx, rules.expire(request, at))
                self._bump(tx)
                refusal = rules.ReviewRefused(
                    "expired", f"request {request_id} expired before it was reviewed"
                )
            else:
                result = rules.apply_review(request, reviewer, approve, reason, at)
                review = result.review
                assert review is not None
                tx.run(
                    "INSERT INTO @Tapproval_reviews (request_id, reviewer, reviewer_kind, approve, "
                    "reason, time) VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        request_id,
                        review.reviewer,
                        review.reviewer_kind,
                        int(review.approve),
                        review.reason,
                        review.time,
                    ),
                )
                self._save_state(tx, result.request)
                if result.grant is not None:
                    g = result.grant
                    tx.run(
                        f"INSERT INTO @Tgrants ({_GRANT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (
                            g.id,
                            g.identity,
                            g.group,
                            g.connection,
                            g.granted_at,
                            g.expires_at,
                            g.approval_id,
                        ),
                    )
                self._bump(tx)
        if refusal is not None:
            raise refusal
        assert result is not None
        return result

    def consume(
        self, identity: str, connection: str, key: str, now: float | None = None
    ) -> ApprovalRequest | None:
        """Use an approval for this exact statement: the request, now ``used``, or None.

        Exactly once: of several sessions or nodes trying at the same time, one gets it.
        """
        used = self.consume_all(identity, connection, (key,), now)
        return used[0] if used else None

    def consume_all(
        self, identity: str, connection: str, keys: Sequence[str], now: float | None = None
    ) -> builtins.list[ApprovalRequest] | None:
        """Use one approval per key, all or none (in one transaction): a string of
        statements runs only when each has its approval, and none is used up otherwise."""
        at = self._now(now)
        with self._transaction(write=True) as tx:
            found: builtins.list[ApprovalRequest] = []
            for key in keys:
                request = self._usable(tx, identity, connection, key, at, lock=True, skip={r.id for r in found})
                if request is None:
                    return None
                found.append(request)
            used = [rules.consume(r, at) for r in found]
            for r in used:
                self._save_state(tx, r)
            if used:
                self._bump(tx)
            return used

    def find_approved(
        self, identity: str, connection: str, key: str, now: float | None = None
    ) -> ApprovalRequest | None:
        """An approval that :meth:`consume` would use now, without using it."""
        at = self._now(now)
        with self._transaction(write=False) as tx:
            return self._usable(tx, identity, connection, key, at, lock=False, skip=set())

    def _usable(
        self, tx: _Tx, identity: str, connection: str, key: str, at: float, *, lock: bool, skip: set[str]
    ) -> ApprovalRequest | None:
        candidates = self._select(
            tx,
            "request_key = ? AND status = 'approved' AND kind = 'statement' "
            "AND requester = ? AND connection = ? AND approved_until > ?",
            (key, identity, connection, at),
            lock=lock,
            order="decided_at, id",
        )
        for request in candidates:
            if request.id not in skip and rules.can_consume(request, identity, connection, key, at):
                return request
        return None

    def withdraw(
        self, request_id: str, *, requester: str | None = None, now: float | None = None
    ) -> ApprovalRequest | None:
        """Withdraw a pending request (its waiting client gave up); None if it is not pending.

        With ``requester``, only that identity's request is withdrawn (``ReviewRefused`` else).
        """
        at = self._now(now)
        with self._transaction(write=True) as tx:
            found = self._select(tx, "id = ?", (request_id,), lock=True)
            if not found or found[0].status != "pending":
                return None
            withdrawn = rules.withdraw(found[0], at, requester)
            self._save_state(tx, withdrawn)
            self._bump(tx)
        return withdrawn

    def expire_due(self, now: float | None = None) -> builtins.list[ApprovalRequest]:
        """Mark expired every pending request past its deadline and every unused statement
        approval past its validity; returns them (each is returned by one caller only)."""
        at = self._now(now)
        with self._transaction(write=True) as tx:
            due = self._select(
                tx,
                "(status = 'pending' AND expires_at <= ?) OR "
                "(status = 'approved' AND kind = 'statement' AND approved_until <= ?)",
                (at, at),
                lock=True,
            )
            expired = [rules.expire(r, at) for r in due if rules.expiry_due(r, at)]
            for r in expired:
                self._save_state(tx, r)
            if expired:
                self._bump(tx)
        return expired


def open_approval_store(
    audit: AuditConfig, state_dir: Path, control_plane: ControlPlaneConfig | None = None
) -> ApprovalStore:
    """The approval store in the shared control plane when there is one (``control_plane``),
    else in the same database as the audit trail ``audit`` describes."""
    if control_plane is not None:
        from dbsentry.controlplane import ControlPlane

        try:
            return ControlPlane(control_plane).approval_store()
        except Exception as err:  # the control plane unreachable, its DSN unset
            raise ApprovalStoreError(f"approvals in the control plane: {err}") from err
    if audit.store == "postgres":
        from dbsentry.approvals.pg_store import PostgresApprovalStore

        return PostgresApprovalStore(audit.resolve_dsn(), schema=audit.pg_schema)
    from dbsentry.approvals.sqlite_store import SQLiteApprovalStore

    return SQLiteApprovalStore(audit.sqlite_path(state_dir))
