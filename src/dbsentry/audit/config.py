"""The ``audit:`` section of the configuration file."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_NODE_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
# A NATS subject: dot-separated tokens without wildcards or white space ({node} is replaced).
_NATS_SUBJECT = re.compile(r"^[^.*>\s]+(\.[^.*>\s]+)*$")
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"


class NatsTlsConfig(BaseModel):
    """TLS towards a NATS server that requires it (the client follows the server: a server
    without TLS is spoken to in plain text)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ca_file: Path | None = None  # a private CA (PEM) that signed the server's certificate
    cert_file: Path | None = None  # a client certificate (PEM), for servers that verify clients
    key_file: Path | None = None

    @model_validator(mode="after")
    def _check(self) -> NatsTlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("audit.nats.tls needs both cert_file and key_file, or neither")
        return self


class NatsConfig(BaseModel):
    """``audit.nats``: publish every record of this node's log to NATS JetStream
    (``audit/nats_sink.py``; at-least-once, the record id as ``Nats-Msg-Id``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # the server(s): a URL (several: comma-separated), or the environment variable holding
    # it (for a URL with a user and password); neither: nats://127.0.0.1:4222
    url: str | None = None
    url_env: str | None = None
    # where this node's records go; {node} is replaced by the node id
    subject: str = "dbsentry.audit.{node}"
    # the JetStream stream; created if missing (subjects: the subject with {node} as a
    # wildcard, so dbsentry.audit.> by default; a 2-minute duplicate window)
    stream: str = Field(default="DBSENTRY_AUDIT", pattern=r"^[A-Za-z0-9_-]{1,255}$")
    # a NATS credentials file (user JWT and NKey seed)
    creds_file: Path | None = None
    tls: NatsTlsConfig | None = None

    @model_validator(mode="after")
    def _check(self) -> NatsConfig:
        if self.url is not None and self.url_env is not None:
            raise ValueError("audit.nats takes url or url_env, not both")
        if not _NATS_SUBJECT.match(self.subject.replace("{node}", "node")):
            raise ValueError(
                "audit.nats.subject must be a NATS subject without wildcards, e.g. dbsentry.audit.{node}"
            )
        return self

    def resolve_url(self) -> list[str]:
        """The server URLs to connect to."""
        value = self.url
        if self.url_env is not None:
            value = os.environ.get(self.url_env)
            if not value:
                raise ValueError(f"environment variable {self.url_env} (audit.nats.url_env) is not set")
        urls = [u.strip() for u in (value or DEFAULT_NATS_URL).split(",") if u.strip()]
        if not urls:
            raise ValueError("audit.nats.url is empty")
        return urls

    def subject_for(self, node: str) -> str:
        return self.subject.replace("{node}", node)

    def stream_subjects(self, node: str) -> list[str]:
        """The subjects of the stream this creates when it is missing."""
        if self.subject.endswith(".{node}"):
            return [self.subject[: -len("{node}")] + ">"]
        return [self.subject_for(node)]

    def with_base_dir(self, base: Path) -> NatsConfig:
        def fix(p: Path | None) -> Path | None:
            return p if p is None or p.is_absolute() else base / p

        tls = self.tls
        if tls is not None:
            tls = tls.model_copy(
                update={"ca_file": fix(tls.ca_file), "cert_file": fix(tls.cert_file), "key_file": fix(tls.key_file)}
            )
        return self.model_copy(update={"creds_file": fix(self.creds_file), "tls": tls})


class AuditConfig(BaseModel):
    """Where the audit trail is stored and how strongly writes are made durable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    store: Literal["sqlite", "postgres"] = "sqlite"
    # sqlite: the database file; default <state_dir>/audit.db
    path: Path | None = None
    # postgres: a libpq connection string or URI (give dsn or dsn_env)
    dsn: str | None = None
    dsn_env: str | None = None
    pg_schema: str = "dbsentry_audit"
    # Every record goes first to this node's append-only log (log_dir/<node>/); the store
    # above is the search index built from the logs.  What a statement waits for:
    # effect: its record is written to the OS before it is forwarded (survives kill -9 of
    #   the proxy); nothing it produces reaches the client until the record is fsync'd, and
    #   statements that may change data (and COMMITs) are forwarded only once it is: no
    #   client sees a result, and no change is committed, without a durable record.
    # sync: forwarded only once its record is fsync'd.
    # write: forwarded once written to the OS; fsync at least every fsync_interval_ms
    #   (survives a proxy crash; an OS crash or power loss can lose that much).
    # async: records are written every async_flush_ms; a crash can lose that much.
    durability: Literal["effect", "sync", "write", "async"] = "effect"
    async_flush_ms: int = Field(default=200, ge=1, le=10_000)
    fsync_interval_ms: int = Field(default=20, ge=1, le=10_000)
    # Kept for old configuration files; the log does not time out (a slow disk slows the
    # clients down instead: backpressure).
    sync_timeout_seconds: float = Field(default=5.0, gt=0, le=300)
    # default <state_dir>/audit-log; each node writes <log_dir>/<node>/ only
    log_dir: Path | None = None
    # this node's id (letters, digits, - _ .); default: made once and kept in
    # <state_dir>/audit-node
    node: str | None = Field(default=None, pattern=_NODE_ID.pattern)
    segment_mb: int = Field(default=64, ge=1, le=4096)
    segment_seconds: float = Field(default=3600.0, gt=0)
    # What statement texts, parameters and error texts keep of the values in them:
    #   sensitive (default): values that meet a classified column, or that value detection
    #     recognises, become <class:hmac:...> tokens (keyed hash: equal values, equal tokens)
    #   true: every constant becomes ?, every parameter ?
    #   false: everything is stored as sent
    redact_literals: bool | Literal["sensitive"] = "sensitive"
    # HMAC key of the tokens; default <state_dir>/audit_redaction.key (created, 0600).
    # Give every node the same key so that equal values give equal tokens across nodes.
    redaction_key_file: Path | None = None
    max_statement_chars: int = Field(default=65_536, ge=256)
    max_param_chars: int = Field(default=1024, ge=16)
    max_params_chars: int = Field(default=16_384, ge=64)
    checkpoint_every: int = Field(default=1000, ge=1)
    checkpoint_seconds: float = Field(default=60.0, gt=0)
    max_batch: int = Field(default=1000, ge=1, le=100_000)
    max_queue: int = Field(default=100_000, ge=100)
    # default <state_dir>/audit_signing.key (public key next to it, .pub)
    signing_key: Path | None = None
    # more public keys (PEM) whose checkpoints verify accepts: other proxy nodes' keys
    trusted_public_keys: list[Path] = Field(default_factory=list)
    # other nodes' public keys, each bound to its node (node id -> PEM file): trusted for
    # that node's logs (its workers' and tools' too) only, and the only keys that are
    trusted_node_keys: dict[str, Path] = Field(default_factory=dict)
    # publish every record to NATS JetStream too (absent: no publishing); see NatsConfig
    nats: NatsConfig | None = None

    @model_validator(mode="after")
    def _check(self) -> AuditConfig:
        if self.store == "postgres" and (self.dsn is None) == (self.dsn_env is None):
            raise ValueError(
                "audit.store postgres needs exactly one of audit.dsn and audit.dsn_env"
            )
        if not _SCHEMA_NAME.match(self.pg_schema):
            raise ValueError("audit.pg_schema must be a lower-case SQL identifier")
        for node in self.trusted_node_keys:
            if not _NODE_ID.match(node):
                raise ValueError(f"audit.trusted_node_keys: {node!r} is not a node id (1-64 letters, digits, '-', '_' or '.')")
        return self

    def resolve_dsn(self) -> str:
        if self.dsn is not None:
            return self.dsn
        if self.dsn_env is not None:
            value = os.environ.get(self.dsn_env)
            if value is None:
                raise ValueError(f"environment variable {self.dsn_env} (audit.dsn_env) is not set")
            return value
        raise ValueError("audit.dsn is not set")

    def log_path(self, state_dir: Path) -> Path:
        return self.log_dir if self.log_dir is not None else state_dir / "audit-log"

    def sqlite_path(self, state_dir: Path) -> Path:
        return self.path if self.path is not None else state_dir / "audit.db"

    def signing_key_path(self, state_dir: Path) -> Path:
        return self.signing_key if self.signing_key is not None else state_dir / "audit_signing.key"

    def redaction_key_path(self, state_dir: Path) -> Path:
        return (
            self.redaction_key_file
            if self.redaction_key_file is not None
            else state_dir / "audit_redaction.key"
        )

    def with_base_dir(self, base: Path) -> AuditConfig:
        """Relative paths resolved against ``base`` (the configuration file's directory)."""

        def fix(p: Path | None) -> Path | None:
            return p if p is None or p.is_absolute() else base / p

        return self.model_copy(
            update={
                "path": fix(self.path),
                "log_dir": fix(self.log_dir),
                "signing_key": fix(self.signing_key),
                "redaction_key_file": fix(self.redaction_key_file),
                "trusted_public_keys": [
                    base / p if not p.is_absolute() else p for p in self.trusted_public_keys
                ],
                "trusted_node_keys": {
                    n: base / p if not p.is_absolute() else p for n, p in self.trusted_node_keys.items()
                },
                "nats": self.nats.with_base_dir(base) if self.nats is not None else None,
            }
        )
