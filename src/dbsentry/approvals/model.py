"""Approval requests, reviews and just-in-time grants: frozen values, no I/O.

A statement request names one exact statement (its text with whitespace and comments
normalised, and its bound parameters) sent by one identity on one connection; its
``request_key`` binds all of that, so an approval covers nothing else.  An access request
asks for a group or a connection for a while; approved, it becomes a :class:`Grant`.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import orjson

from dbsentry.governance.text import Lexer, normalized
from dbsentry.identity.model import Identity

RequestKind = Literal["statement", "access"]
Status = Literal["pending", "approved", "denied", "expired", "withdrawn", "used"]
STATUSES: tuple[Status, ...] = ("pending", "approved", "denied", "expired", "withdrawn", "used")

ID_PREFIX = "apr_"
GRANT_PREFIX = "grt_"
# Crockford's base32 alphabet: no i, l, o, u, so an id read aloud or copied by hand survives.
_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
_ID_CHARS = 10  # 50 bits
ID_RE = re.compile(rf"^{ID_PREFIX}[{_ALPHABET}]{{{_ID_CHARS}}}$")
_KEY_VERSION = "dbsentry.approval.v1"
_WS = re.compile(r"\s+")


def new_request_id() -> str:
    """``apr_`` and 10 random base32 characters, e.g. ``apr_7k2m9qd4xt``."""
    return ID_PREFIX + "".join(secrets.choice(_ALPHABET) for _ in range(_ID_CHARS))


def new_grant_id() -> str:
    return GRANT_PREFIX + "".join(secrets.choice(_ALPHABET) for _ in range(_ID_CHARS))


def normalize_statement(sql: str, lex: Lexer) -> str:
    """The statement as its tokens, one space apart, without comments or trailing semicolons.

    Built from the engine's own lexer, so the layout of the statement and its comments do
    not matter while every literal stays exactly as written (``'a  b'`` is not ``'a b'``),
    and unlike a fingerprint, constants are kept (``id = 1`` is not ``id = 2``).  Text the
    lexer rejects falls back to collapsing whitespace runs.
    """
    found = normalized(sql, lex)
    if found is None:
        return _WS.sub(" ", sql).strip().rstrip("; ").strip()
    return found


def _digest(parts: Sequence[Any]) -> str:
    return hashlib.sha256(orjson.dumps([_KEY_VERSION, *parts])).hexdigest()


def statement_key(
    identity: str, connection: str, sql: str, params: Sequence[str | None] | None, lex: Lexer
) -> str:
    """SHA-256 (hex) over the identity, the connection, the normalised text and the parameters.

    ``params`` are the bound values as the audit trail shows them (``prepare_params``);
    None (simple protocol) and ``()`` (no parameters) differ on purpose.  ``lex`` is the
    statement's engine's lexer (``dbsentry.governance.text``).
    """
    plist = None if params is None else list(params)
    return _digest(["statement", identity, connection, normalize_statement(sql, lex), plist])


def access_key(identity: str, group: str | None, connection: str | None) -> str:
    return _digest(["access", identity, group, connection])


@dataclass(frozen=True, slots=True)
class Review:
    """One reviewer's approval or denial."""

    reviewer: str
    reviewer_kind: str
    approve: bool
    reason: str | None
    time: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "reviewer": self.reviewer,
            "reviewer_kind": self.reviewer_kind,
            "approve": self.approve,
            "reason": self.reason,
            "time": self.time,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Review:
        return cls(
            reviewer=str(d["reviewer"]),
            reviewer_kind=str(d.get("reviewer_kind", "human")),
            approve=bool(d["approve"]),
            reason=d.get("reason"),
            time=float(d["time"]),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ApprovalRequest:
    """A request for review: of one statement, or of temporary access (``kind``)."""

    id: str
    kind: RequestKind
    requester: str
    requester_kind: str
    requester_groups: tuple[str, ...]
    request_key: str
    created_at: float
    expires_at: float  # a pending request expires then
    # statements: how long an approval stays usable; access: how long the grant lasts
    validity_seconds: float
    approvers: tuple[str, ...]
    min_approvals: int
    connection: str | None = None
    environment: str | None = None
    # statement requests
    statement: str | None = None
    params: tuple[str | None, ...] | None = None
    command: str | None = None
    tables: tuple[str, ...] = ()
    risk: str | None = None
    rules: tuple[str, ...] = ()
    message: str | None = None
    session_id: str | None = None
    # access requests
    access_group: str | None = None
    reason: str | None = None  # the requester's justification
    # state
    status: Status = "pending"
    reviews: tuple[Review, ...] = ()
    decided_at: float | None = None
    approved_until: float | None = None
    used_at: float | None = None

    @property
    def approvals(self) -> tuple[Review, ...]:
        return tuple(r for r in self.reviews if r.approve)

    @property
    def denial(self) -> Review | None:
        return next((r for r in self.reviews if not r.approve), None)

    @property
    def required_approvals(self) -> int:
        return max(1, self.min_approvals)

    @property
    def target(self) -> str:
        """What an access request asks for, for messages: ``group dba`` or ``connection prod``."""
        if self.access_group is not None:
            return f"group {self.access_group}"
        return f"connection {self.connection}"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if name == "reviews":
                value = [r.to_dict() for r in value]
            elif isinstance(value, tuple):
                value = list(value)
            out[name] = value
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ApprovalRequest:
        data = dict(d)
        data["reviews"] = tuple(Review.from_dict(r) for r in data.get("reviews") or ())
        for name in ("requester_groups", "approvers", "tables", "rules"):
            data[name] = tuple(data.get(name) or ())
        if data.get("params") is not None:
            data["params"] = tuple(data["params"])
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True, slots=True)
class Grant:
    """Temporary membership of a group, or use of a connection, from an approved access request."""

    id: str
    identity: str
    group: str | None
    connection: str | None
    granted_at: float
    expires_at: float
    approval_id: str

    def active(self, now: float) -> bool:
        return self.granted_at <= now < self.expires_at

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "identity": self.identity,
            "group": self.group,
            "connection": self.connection,
            "granted_at": self.granted_at,
            "expires_at": self.expires_at,
            "approval_id": self.approval_id,
        }


def with_grants(identity: Identity, grants: Sequence[Grant], now: float) -> Identity:
    """``identity`` with the groups its active grants give it (the same object if none)."""
    extra = {
        g.group
        for g in grants
        if g.group is not None and g.identity == identity.name and g.active(now)
    }
    if not extra or extra <= identity.groups:
        return identity
    return replace(identity, groups=identity.groups | extra)


def granted_connections(identity: str, grants: Sequence[Grant], now: float) -> frozenset[str]:
    """The connections active grants let ``identity`` use whatever their ``allow_groups``."""
    return frozenset(
        g.connection
        for g in grants
        if g.connection is not None and g.identity == identity and g.active(now)
    )


@dataclass(frozen=True, slots=True)
class FactsSummary:
    """What reviewers see of a statement besides its text."""

    command: str | None = None
    tables: tuple[str, ...] = ()
    risk: str | None = None


_RISK_ORDER = {"low": 0, "moderate": 1, "high": 2}


def summarize_facts(facts: Sequence[Any]) -> FactsSummary:
    """Command(s), tables and highest risk of a query string's ``StatementFacts``."""
    commands: list[str] = []
    tables: list[str] = []
    risk: str | None = None
    for f in facts:
        if f.command not in commands:
            commands.append(f.command)
        for t in (*f.tables_read, *f.tables_written):
            if t not in tables:
                tables.append(t)
        if risk is None or _RISK_ORDER.get(f.risk, 0) > _RISK_ORDER.get(risk, 0):
            risk = f.risk
    return FactsSummary(", ".join(commands) or None, tuple(tables), risk)


def statement_request(
    *,
    identity: Identity,
    connection: str,
    environment: str | None,
    sql: str,
    params: Sequence[str | None] | None,
    approvers: Sequence[str],
    min_approvals: int,
    now: float,
    ttl_seconds: float,
    validity_seconds: float,
    summary: FactsSummary = FactsSummary(),
    rules: Sequence[str] = (),
    message: str | None = None,
    session_id: str | None = None,
    display_sql: str | None = None,
    request_key: str | None = None,
    lex: Lexer | None = None,
) -> ApprovalRequest:
    """A new pending request for one statement.

    ``sql`` and ``params`` are what the client sent (they make the key, read with the
    engine's lexer ``lex``, unless ``request_key`` is given); ``display_sql`` is what
    reviewers see, when it differs (the audit trail's redacted text, say).
    """
    params_tuple = None if params is None else tuple(params)
    if request_key is None:
        if lex is None:
            raise TypeError("statement_request needs request_key or the engine's lexer")
        request_key = statement_key(identity.name, connection, sql, params_tuple, lex)
    return ApprovalRequest(
        id=new_request_id(),
        kind="statement",
        requester=identity.name,
        requester_kind=identity.kind,
        requester_groups=tuple(sorted(identity.groups)),
        request_key=request_key,
        created_at=now,
        expires_at=now + ttl_seconds,
        validity_seconds=validity_seconds,
        approvers=tuple(dict.fromkeys(approvers)),
        min_approvals=max(1, min_approvals),
        connection=connection,
        environment=environment,
        statement=display_sql if display_sql is not None else sql,
        params=params_tuple,
        command=summary.command,
        tables=summary.tables,
        risk=summary.risk,
        rules=tuple(rules),
        message=message,
        session_id=session_id,
    )


def access_request(
    *,
    identity: Identity,
    group: str | None,
    connection: str | None,
    duration_seconds: float,
    reason: str,
    approvers: Sequence[str],
    min_approvals: int,
    now: float,
    ttl_seconds: float,
    environment: str | None = None,
) -> ApprovalRequest:
    """A new pending request for temporary membership of ``group`` or use of ``connection``."""
    if (group is None) == (connection is None):
        raise ValueError("an access request names exactly one of a group and a connection")
    if duration_seconds <= 0:
        raise ValueError("the access duration must be positive")
    return ApprovalRequest(
        id=new_request_id(),
        kind="access",
        requester=identity.name,
        requester_kind=identity.kind,
        requester_groups=tuple(sorted(identity.groups)),
        request_key=access_key(identity.name, group, connection),
        created_at=now,
        expires_at=now + ttl_seconds,
        validity_seconds=duration_seconds,
        approvers=tuple(dict.fromkeys(approvers)),
        min_approvals=max(1, min_approvals),
        connection=connection,
        environment=environment,
        access_group=group,
        reason=reason,
    )


@dataclass(frozen=True, slots=True)
class Reviewed:
    """The result of a review: the request after it, and the grant it created, if any.

    ``event`` is ``approved`` or ``denied`` once the request is decided, ``recorded`` when an
    approval was counted but more are needed.
    """

    request: ApprovalRequest
    event: Literal["approved", "denied", "recorded"]
    grant: Grant | None = None
    review: Review | None = field(default=None)
