"""What the shell feeds a MySQL session (``Session.handle(event)``, an exhaustive match)."""

from __future__ import annotations

from dataclasses import dataclass

from dbsentry.identity.model import Identity
from dbsentry.identity.ratelimit import LoginThrottled


@dataclass(slots=True)
class ClientData:
    """Bytes read from the client."""

    data: bytes


@dataclass(slots=True)
class UpstreamData:
    """Bytes read from the upstream after its login."""

    data: bytes


@dataclass(frozen=True, slots=True)
class ClientTLSStarted:
    """The client's TLS handshake (``StartClientTLS``) completed."""

    version: str | None


@dataclass(frozen=True, slots=True)
class PasswordVerified:
    """The answer to ``VerifyPassword``: the identity, a throttled login, or None."""

    identity: Identity | LoginThrottled | None


@dataclass(frozen=True, slots=True)
class UpstreamReady:
    """The upstream login (``OpenUpstream``) succeeded."""

    connection_id: int  # the server's own id of the connection (KILL routes to it)
    server_version: str
    capabilities: int  # what the proxy and the server agreed on
    status: int  # the server status flags of its OK


@dataclass(frozen=True, slots=True)
class UpstreamFailed:
    """The upstream could not be reached or logged in to."""

    code: int
    sqlstate: str
    message: str


@dataclass(frozen=True, slots=True)
class AuditFailed:
    """The records of an ``AuditGate`` could not be written: the statement must not run."""

    message: str


@dataclass(frozen=True, slots=True)
class ApprovalAnswered:
    """The answer to ``AskApproval``: the approval it runs under, or the refusal."""

    approval_id: str | None
    message: str = ""


@dataclass(frozen=True, slots=True)
class KillAnswered:
    """The answer to ``Kill``: None when done, else why not."""

    error: str | None


@dataclass(frozen=True, slots=True)
class ClientClosed:
    pass


@dataclass(frozen=True, slots=True)
class UpstreamClosed:
    pass


@dataclass(frozen=True, slots=True)
class StartupTimedOut:
    """``limits.startup_timeout_seconds`` passed before ``LoginComplete``."""


Event = (
    ClientData
    | UpstreamData
    | ClientTLSStarted
    | PasswordVerified
    | UpstreamReady
    | UpstreamFailed
    | AuditFailed
    | ApprovalAnswered
    | KillAnswered
    | ClientClosed
    | UpstreamClosed
    | StartupTimedOut
)
