"""What a MySQL session asks its I/O shell to do (``server/mysql_proxy.py`` carries them out
in order). A command that needs an answer names the event the shell feeds back through
``Session.handle``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dbsentry.audit.records import Record
from dbsentry.governance.facts import StatementFacts
from dbsentry.masking.catalog import SourceColumn
from dbsentry.masking.classes import Classification
from dbsentry.policy.engine import Decision


@dataclass(slots=True)
class SendClient:
    data: bytes


@dataclass(slots=True)
class SendUpstream:
    data: bytes


@dataclass(slots=True)
class StartClientTLS:
    """The client sent an SSLRequest: TLS (server side) starts on its socket; ``early``:
    bytes of the client's TLS handshake that came with the SSLRequest (a client sends it
    without waiting for an answer). Answer with ``ClientTLSStarted``."""

    early: bytes = b""


@dataclass(slots=True)
class VerifyPassword:
    """Check the token (or OIDC JWT) the client sent; answer with ``PasswordVerified``."""

    user: str
    password: str


@dataclass(slots=True)
class LoginComplete:
    """The client is logged in: the start-up timeout no longer applies."""


@dataclass(slots=True)
class OpenUpstream:
    """Connect to the connection's server and log in with its credentials
    (:class:`~dbsentry.engines.mysql.session.upstream.UpstreamLogin` with these
    capabilities); answer with ``UpstreamReady`` or ``UpstreamFailed``."""

    connection: str
    capabilities: int
    charset: int
    attributes: tuple[tuple[str, str], ...] = ()


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
    """Write ``records`` to the audit log, then carry out ``then``; if they cannot be
    written, send ``AuditFailed`` instead (and carry out what it returns). ``durable``: the
    statement may change data, so under ``sync``/``effect`` durability it waits for the
    records to be durable, not only written."""

    records: list[Record]
    then: list[Command]
    durable: bool = False


@dataclass(frozen=True, slots=True)
class AskApproval:
    """A statement the policy says needs approval: ask the approvals service
    (``Approvals.statement_gate``); answer with ``ApprovalAnswered``."""

    sql: str
    display_sql: str
    params: tuple[str | None, ...] | None
    decision: Decision
    facts: tuple[StatementFacts, ...]
    key: str
    #: The client's choice, from its connection attribute ``dbsentry.approval`` (``fail``
    #: or ``wait``; anything else: the configuration's mode), as PostgreSQL clients give
    #: ``-c dbsentry.approval=...``.
    client_mode: str | None = None


@dataclass(frozen=True, slots=True)
class Kill:
    """``KILL [QUERY] id`` with a proxy-issued connection id: find that session, check it
    belongs to ``identity`` (or that ``reviewer``), and kill its statement (``query_only``)
    or its connection upstream; answer with ``KillAnswered``."""

    target: int
    query_only: bool
    identity: str
    reviewer: bool


@dataclass(slots=True)
class CancelUpstream:
    """Kill the statement this session's upstream connection runs (``KILL QUERY`` on a
    side connection): its client left while it ran."""


@dataclass(frozen=True, slots=True)
class SchemaChanged:
    """A statement that may change the schema (DDL) ran: read ``connection``'s catalog
    again (masking; in the background, sessions keep the current one meanwhile)."""

    connection: str


@dataclass(frozen=True, slots=True)
class InheritClasses:
    """A statement that copied classified values succeeded: the columns it stored them in
    keep their class (``MaskingService.inherit``: for every session, and saved for after a
    restart)."""

    connection: str
    copies: Mapping[SourceColumn, Classification]


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
    | CloseClient
    | CloseUpstream
    | Audit
    | AuditGate
    | AskApproval
    | Kill
    | CancelUpstream
    | SchemaChanged
    | InheritClasses
    | Log
)
