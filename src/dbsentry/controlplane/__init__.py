"""The shared control plane: what several dbsentry nodes keep in one PostgreSQL database
(``control_plane: {postgres: ...}``, docs/deployment.md "Several nodes").

Tokens and revocations, approvals and JIT grants, the failed-login limiter, the node
registry and the secret that authenticates messages between nodes live in one schema
(``dbsentry_control`` by default), made and migrated here under an advisory lock.  Writes
that others cache (approvals, grants) are announced with ``NOTIFY`` on :attr:`ControlPlane.channel`;
:mod:`.registry` listens, heartbeats and keeps the list of live nodes.

Without ``control_plane`` every store stays the embedded SQLite of ``state_dir``:
:func:`token_store`, :func:`login_limiter` and ``approvals.open_approval_store`` choose.
"""

from __future__ import annotations

import secrets
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dbsentry.identity.ratelimit import ControlPlaneUnavailable, Limits
from dbsentry.identity.tokens import TokenStoreBase

if TYPE_CHECKING:
    from dbsentry import pgconn
    from dbsentry.approvals.store import ApprovalStore
    from dbsentry.config import Config, ControlPlaneConfig, IdentityConfig

__all__ = ["ControlPlane", "ControlPlaneUnavailable", "login_limiter", "token_store"]

SCHEMA_VERSION = 1
_SECRET_BYTES = 32

_DDL = [
    "CREATE SCHEMA IF NOT EXISTS @S",
    """CREATE TABLE IF NOT EXISTS @S.cluster (
        id integer PRIMARY KEY CHECK (id = 1),
        schema_version integer NOT NULL,
        secret bytea NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS @S.tokens (
        id text PRIMARY KEY,
        secret_hash bytea NOT NULL,
        identity text NOT NULL,
        groups_json text NOT NULL,
        kind text NOT NULL CHECK (kind IN ('human', 'agent')),
        created_at double precision NOT NULL,
        expires_at double precision,
        revoked_at double precision,
        last_used_at double precision)""",
    """CREATE TABLE IF NOT EXISTS @S.login_pairs (
        address text NOT NULL, identity text NOT NULL,
        failures integer NOT NULL, last double precision NOT NULL, until double precision NOT NULL,
        PRIMARY KEY (address, identity))""",
    "CREATE TABLE IF NOT EXISTS @S.login_address_failures (address text NOT NULL, at double precision NOT NULL)",
    "CREATE INDEX IF NOT EXISTS login_address_failures_by_address ON @S.login_address_failures (address, at)",
    """CREATE TABLE IF NOT EXISTS @S.nodes (
        node text NOT NULL,
        worker integer NOT NULL,
        slot integer NOT NULL,
        address text NOT NULL,
        pid integer NOT NULL,
        started_at double precision NOT NULL,
        heartbeat_at double precision NOT NULL,
        PRIMARY KEY (node, worker))""",
]


class ControlPlane:
    """The control-plane database of ``config`` (blocking calls; call them off the loop)."""

    def __init__(self, config: ControlPlaneConfig) -> None:
        self.config = config
        self.schema = config.postgres.schema_
        self.dsn = config.postgres.resolve_dsn()
        self.channel = f"{self.schema}_changes"

    def describe(self) -> str:
        from dbsentry import pgconn  # psycopg: only with a control plane

        return pgconn.describe(self.dsn, self.schema)

    def fail(self, err: Exception) -> ControlPlaneUnavailable:
        return ControlPlaneUnavailable(f"{self.describe()}: {str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}")

    def connection(self, application_name: str) -> pgconn.SharedConnection:
        from dbsentry import pgconn

        return pgconn.SharedConnection(self.dsn, application_name, search_path=self.schema, fail=self.fail)

    def connect(self, application_name: str) -> Any:
        """A plain autocommit connection (psycopg) in the control-plane schema."""
        from dbsentry import pgconn

        return pgconn.connect(self.dsn, application_name, connect_timeout=3, statement_timeout_ms=5000, search_path=self.schema)

    def migrate(self) -> None:
        """Create or bring up to date the schema (every node does it at start; idempotent)."""
        conn = self.connection("dbsentry-control-migrate")
        try:
            with conn.transaction() as tx:
                tx.run("SELECT pg_advisory_xact_lock(?)", (zlib.crc32(f"dbsentry.control.migrate:{self.schema}".encode()),))
                for stmt in _DDL:
                    tx.run(stmt.replace("@S", self.schema))
                found = tx.rows("SELECT schema_version FROM cluster WHERE id = 1")
                if found and int(found[0][0]) > SCHEMA_VERSION:
                    raise ControlPlaneUnavailable(
                        f"{self.describe()} was made by a newer dbsentry (schema {found[0][0]}, this one knows {SCHEMA_VERSION})"
                    )
                tx.run(
                    "INSERT INTO cluster (id, schema_version, secret) VALUES (1, ?, ?) ON CONFLICT (id) DO NOTHING",
                    (SCHEMA_VERSION, secrets.token_bytes(_SECRET_BYTES)),
                )
        finally:
            conn.close()
        self.approval_store().close()  # its tables, in the same schema

    def secret(self) -> bytes:
        """The secret that authenticates messages between nodes: the configured one, else
        the one drawn when the control plane was made."""
        configured = self.config.resolve_secret()
        if configured is not None:
            return configured
        conn = self.connection("dbsentry-control")
        try:
            with conn.transaction() as tx:
                rows = tx.rows("SELECT secret FROM cluster WHERE id = 1")
        finally:
            conn.close()
        if not rows:
            raise ControlPlaneUnavailable(f"{self.describe()}: not initialised")
        return bytes(rows[0][0])

    def token_store(self) -> TokenStoreBase:
        from dbsentry.identity.pg import PostgresTokenStore

        return PostgresTokenStore(self.connection("dbsentry-tokens"))

    def login_limiter(self, ident: IdentityConfig) -> Limits:
        from dbsentry.identity.pg import PostgresLoginLimiter

        return PostgresLoginLimiter(
            self.connection("dbsentry-logins"),
            ident.max_failures,
            ident.failure_window_seconds,
            max_failures_per_address=ident.max_failures_per_address,
            max_backoff_seconds=ident.max_backoff_seconds,
        )

    def approval_store(self) -> ApprovalStore:
        from dbsentry.approvals.pg_store import PostgresApprovalStore

        store = PostgresApprovalStore(self.dsn, schema=self.schema, notify_channel=self.channel)
        store.migrate()
        return store


def token_store(config: Config) -> TokenStoreBase:
    """The token store ``config`` names: the control plane's, or ``<state_dir>/tokens.db``."""
    if config.control_plane is not None:
        return ControlPlane(config.control_plane).token_store()
    from dbsentry.identity.tokens import TokenStore

    return TokenStore(config.state_dir)


def login_limiter(config: Config, shared_path: Path | None) -> Limits | None:
    """The failed-login limiter: the control plane's; else SQLite at ``shared_path`` (the
    workers of one node); else None (the Authenticator's own, in memory)."""
    ident = config.identity
    if config.control_plane is not None:
        return ControlPlane(config.control_plane).login_limiter(ident)
    if shared_path is None:
        return None
    from dbsentry.identity.shared_limit import SharedLoginLimiter

    return SharedLoginLimiter(
        shared_path,
        ident.max_failures,
        ident.failure_window_seconds,
        max_failures_per_address=ident.max_failures_per_address,
        max_backoff_seconds=ident.max_backoff_seconds,
    )
