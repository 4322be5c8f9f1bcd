"""Approvals for several proxy nodes: tables in the audit schema of the audit PostgreSQL.

Each change is one transaction that locks the rows it decides on with ``SELECT ... FOR
UPDATE``.  Under READ COMMITTED a transaction that waited for such a lock re-checks the row
against its ``WHERE`` once the lock is free, so when two nodes consume one approval the
second finds it ``used`` and gets nothing.  The tables are created on first use, under an
advisory lock so nodes starting together do not race.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg

from dbsentry import pgconn
from dbsentry.approvals.store import ApprovalStore, ApprovalStoreError, DuplicatePending

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

_DDL = [
    "CREATE SCHEMA IF NOT EXISTS @S",
    """CREATE TABLE IF NOT EXISTS @S.approval_requests (
        id text PRIMARY KEY,
        kind text NOT NULL,
        status text NOT NULL,
        requester text NOT NULL,
        connection text,
        request_key text NOT NULL,
        created_at double precision NOT NULL,
        expires_at double precision NOT NULL,
        decided_at double precision,
        approved_until double precision,
        used_at double precision,
        data text NOT NULL)""",
    """CREATE UNIQUE INDEX IF NOT EXISTS approval_requests_pending
        ON @S.approval_requests (request_key) WHERE status = 'pending'""",
    "CREATE INDEX IF NOT EXISTS approval_requests_key ON @S.approval_requests (request_key, status)",
    "CREATE INDEX IF NOT EXISTS approval_requests_status ON @S.approval_requests (status, created_at)",
    """CREATE TABLE IF NOT EXISTS @S.approval_reviews (
        request_id text NOT NULL REFERENCES @S.approval_requests (id),
        reviewer text NOT NULL,
        reviewer_kind text NOT NULL,
        approve integer NOT NULL,
        reason text,
        time double precision NOT NULL,
        PRIMARY KEY (request_id, reviewer))""",
    """CREATE TABLE IF NOT EXISTS @S.grants (
        id text PRIMARY KEY,
        identity text NOT NULL,
        grp text,
        connection text,
        granted_at double precision NOT NULL,
        expires_at double precision NOT NULL,
        approval_id text NOT NULL UNIQUE)""",
    "CREATE INDEX IF NOT EXISTS grants_identity ON @S.grants (identity, expires_at)",
    """CREATE TABLE IF NOT EXISTS @S.approval_meta (
        id integer PRIMARY KEY CHECK (id = 1),
        version bigint NOT NULL,
        schema_version integer NOT NULL)""",
    "INSERT INTO @S.approval_meta VALUES (1, 0, 1) ON CONFLICT (id) DO NOTHING",
]


class _PgTx:
    def __init__(self, cur: psycopg.Cursor[Any], schema: str) -> None:
        self._cur = cur
        self._prefix = schema + "."

    def _sql(self, sql: str) -> str:
        # Our statements contain no other '?' or '%'.
        return sql.replace("@T", self._prefix).replace("?", "%s")

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[Sequence[Any]]:
        self._cur.execute(self._sql(sql), params)
        return list(self._cur.fetchall())

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        self._cur.execute(self._sql(sql), params)
        return self._cur.rowcount


class PostgresApprovalStore(ApprovalStore):
    """Approvals in ``schema`` (the audit schema) of the database at ``dsn``."""

    FOR_UPDATE = " FOR UPDATE"

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "dbsentry_audit",
        connect_timeout: int = 5,
        statement_timeout_ms: int = 10_000,
        clock: Callable[[], float] = time.time,
        notify_channel: str | None = None,
    ) -> None:
        """``notify_channel``: every change is announced there (``NOTIFY``, at commit), so
        that other nodes look at once instead of at their next poll (the control plane)."""
        super().__init__(clock=clock)
        if not _SCHEMA_NAME.match(schema):
            raise ValueError("the schema must be a lower-case SQL identifier")
        self._dsn = dsn
        self.schema = schema
        self._connect_timeout = connect_timeout
        self._statement_timeout_ms = statement_timeout_ms
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        self._migrated = False
        if notify_channel is not None and not _SCHEMA_NAME.match(notify_channel):
            raise ValueError("the notification channel must be a lower-case SQL identifier")
        self._notify_channel = notify_channel

    def _bump(self, tx: Any) -> None:
        super()._bump(tx)
        if self._notify_channel is not None:
            tx.run("SELECT pg_notify(?, 'approvals')", (self._notify_channel,))

    def describe(self) -> str:
        return pgconn.describe(self._dsn, self.schema)

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            conn = pgconn.connect(
                self._dsn,
                "dbsentry-approvals",
                connect_timeout=self._connect_timeout,
                statement_timeout_ms=self._statement_timeout_ms,
            )
            if not self._migrated:
                try:
                    self._migrate(conn)
                except BaseException:
                    conn.close()
                    raise
                self._migrated = True
            self._conn = conn
        return self._conn

    def _migrate(self, conn: psycopg.Connection[Any]) -> None:
        lock_key = zlib.crc32(f"dbsentry.approvals.migrate:{self.schema}".encode())
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key,))
            for stmt in _DDL:
                conn.execute(stmt.replace("@S", self.schema))

    def migrate(self) -> None:
        """Create the tables now (it is done on first use otherwise)."""
        with self._transaction(write=False):
            pass

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    def close(self) -> None:
        with self._lock:
            self._drop()

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[_PgTx]:
        with self._lock:
            try:
                conn = self._connection()
                with conn.transaction(), conn.cursor() as cur:
                    yield _PgTx(cur, self.schema)
            except psycopg.errors.UniqueViolation as err:
                if "approval_requests_pending" in str(err):
                    raise DuplicatePending() from err
                raise ApprovalStoreError(f"approvals ({self.describe()}): {err}") from err
            except (psycopg.Error, OSError) as err:
                self._drop()
                raise ApprovalStoreError(f"approvals ({self.describe()}): {err}") from err
