"""What a session asks its I/O shell to do.

The session state machines never perform I/O: they return these commands, and the
asyncio shell (``dbsentry.server``) carries them out in order.  A command that needs an
answer names the event (:mod:`dbsentry.engines.postgres.session.events`) the shell feeds
back through ``Session.handle``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dbsentry.audit.records import Record
from dbsentry.engines.postgres.sql.facts import StatementFacts
from dbsentry.policy.engine import Decision


@dataclass(slots=True)
class SendClient:
    data: bytes


@dataclass(slots=True)
class SendUpstream:
    data: bytes


@dataclass(slots=True)
class StartClientTLS:
    """Answer 'S' was queued; upgrade the client socket to TLS (server side)."""


@dataclass(slots=True)
class VerifyPassword:
    """Check the token the client sent; answer with ``PasswordVerified``."""

    user: str
    password: str


@dataclass(slots=True)
class LoginComplete:
    """The client is logged in: the startup timeout no longer applies."""


@dataclass(slots=True)
class OpenUpstream:
    """Connect and log in to the upstream; answer with ``UpstreamReady`` or ``UpstreamFailed``."""

    connection: str
    params: tuple[tuple[str, str], ...]


@dataclass(slots=True)
class WaitForLogin:
    """Another session's upstream login will tell how to greet this client: it waits.

    Send ``LoginWaitTimedOut`` after ``seconds`` unless the client is logged in
    (``LoginComplete``) or gone by then.  Sent once per session.
    """

    connection: str
    seconds: float


@dataclass(slots=True)
class WakeWaiting:
    """This session's upstream login ended (in success or failure): send ``WaitedLoginEnded``
    to each session that waited for it (proxy backend pids)."""

    sessions: tuple[int, ...]


@dataclass(slots=True)
class CancelUpstream:
    """Send a CancelRequest for this session's upstream backend (with its real key)."""


@dataclass(slots=True)
class ForwardCancel:
    """A client asked to cancel the session holding proxy backend key (pid, secret).  The
    shell closes this client connection once the upstream has the request, as PostgreSQL
    does (libpq's cancel returns then), or a late cancel could stop the next statement."""

    pid: int
    secret: bytes


@dataclass(slots=True)
class CloseClient:
    """Close the client connection once what was queued for it has been written."""


@dataclass(slots=True)
class CloseUpstream:
    pass


@dataclass(slots=True)
class Audit:
    """Append an audit record; do not wait for it."""

    record: Record


@dataclass(slots=True)
class AuditGate:
    """Commit ``records`` durably, then carry out ``then``.

    Commands after this one that send to the upstream wait their turn behind it.  If the
    store cannot commit, the shell sends ``AuditFailed(frames, records)`` instead of
    carrying out ``then`` (``HeldRefused`` when an approval is refused), and carries out
    what that returns.
    """

    records: list[Record]
    then: list[Command]
    frames: tuple[bytes, list[tuple[int, int, int]]]
    # Statements that need an approval first (the shell resolves them before committing).
    approvals: list[ApprovalAsk] = field(default_factory=list)
    # Some statement may change data: with audit durability "effect", forward only once
    # the records are durable (otherwise once written).
    durable: bool = False


@dataclass(frozen=True, slots=True)
class ApprovalAsk:
    """A statement whose decision is ``require_approval``: ask the approvals service."""

    sql: str
    params: tuple[str | None, ...] | None
    decision: Decision
    facts: tuple[StatementFacts, ...]
    # The approval key (``approvals.model.statement_key``: identity, connection, the
    # statement as the engine's lexer reads it, and the exact format and bytes of each
    # bound value; ``params``, the audit trail's text, is for people and may show
    # different values the same way).
    key: str = ""
    # the ids of the audit records of this statement (they name the approval it runs under)
    records: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class GuardApproval:
    """A statement changed more rows than the guard allows: may an approval let it commit?

    Ask the approvals service as for ``ApprovalAsk`` (an approved request for the same
    statement is used up), then answer with ``GuardApprovalAnswered(approved, message)``;
    without approvals, answer ``(False, None)`` at once.  The statement's transaction stays
    open meanwhile, so the shell never waits for a person here.
    """

    sql: str
    params: tuple[str | None, ...] | None
    key: str  # the approval key: the statement, its exact values and what it changed
    facts: tuple[StatementFacts, ...]
    message: str
    rule: str


@dataclass(slots=True)
class SchemaChanged:
    """DDL ran on this connection: its catalog (masking) must be read again."""

    connection: str


@dataclass(slots=True)
class Log:
    level: int
    event: str
    fields: dict[str, Any] = field(default_factory=dict)


Command = (
    SendClient
    | SendUpstream
    | StartClientTLS
    | VerifyPassword
    | LoginComplete
    | OpenUpstream
    | WaitForLogin
    | WakeWaiting
    | CancelUpstream
    | ForwardCancel
    | CloseClient
    | CloseUpstream
    | Audit
    | AuditGate
    | GuardApproval
    | SchemaChanged
    | Log
)
