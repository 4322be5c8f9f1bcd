"""Approvals in the embedded audit database (one SQLite file, WAL mode).

Several processes may open it (the proxy and the CLI, or two stores in tests): every write
transaction starts with ``BEGIN IMMEDIATE``, which takes SQLite's write lock before reading,
so a read-check-write cannot interleave with another writer's.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dbsentry.approvals.store import ApprovalStore, ApprovalStoreError, DuplicatePending

_SCHEMA = """
CREATE TABLE IF NOT EXISTS approval_requests (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    requester TEXT NOT NULL,
    connection TEXT,
    request_key TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    decided_at REAL,
    approved_until REAL,
    used_at REAL,
    data TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS approval_requests_pending
    ON approval_requests (request_key) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS approval_requests_key ON approval_requests (request_key, status);
CREATE INDEX IF NOT EXISTS approval_requests_status ON approval_requests (status, created_at);
CREATE TABLE IF NOT EXISTS approval_reviews (
    request_id TEXT NOT NULL REFERENCES approval_requests (id),
    reviewer TEXT NOT NULL,
    reviewer_kind TEXT NOT NULL,
    approve INTEGER NOT NULL,
    reason TEXT,
    time REAL NOT NULL,
    PRIMARY KEY (request_id, reviewer)
);
CREATE TABLE IF NOT EXISTS grants (
    id TEXT PRIMARY KEY,
    identity TEXT NOT NULL,
    grp TEXT,
    connection TEXT,
    granted_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    approval_id TEXT NOT NULL UNIQUE
);
CREATE INDEX IF NOT EXISTS grants_identity ON grants (identity, expires_at);
CREATE TABLE IF NOT EXISTS approval_meta (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL,
    schema_version INTEGER NOT NULL
);
INSERT OR IGNORE INTO approval_meta VALUES (1, 0, 1);
"""


class _SQLiteTx:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[Sequence[Any]]:
        return list(self._conn.execute(sql.replace("@T", ""), params).fetchall())

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._conn.execute(sql.replace("@T", ""), params).rowcount


class SQLiteApprovalStore(ApprovalStore):
    """Approvals in ``path`` (the audit database).  Thread-safe: one connection, one lock."""

    def __init__(
        self,
        path: Path,
        *,
        busy_timeout_ms: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(clock=clock)
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._conn = sqlite3.connect(
                self.path,
                timeout=busy_timeout_ms / 1000,
                isolation_level=None,
                check_same_thread=False,
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            self._conn.executescript("BEGIN IMMEDIATE;" + _SCHEMA + "COMMIT;")
        except sqlite3.Error as err:
            raise ApprovalStoreError(f"cannot open approvals in {self.path}: {err}") from err

    def describe(self) -> str:
        return f"sqlite:{self.path}"

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[_SQLiteTx]:
        with self._lock:
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    yield _SQLiteTx(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.IntegrityError as err:
                if "approval_requests" in str(err) and "request_key" in str(err):
                    raise DuplicatePending() from err
                raise ApprovalStoreError(f"approvals ({self.describe()}): {err}") from err
            except sqlite3.Error as err:
                raise ApprovalStoreError(f"approvals ({self.describe()}): {err}") from err
