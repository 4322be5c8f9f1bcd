"""The HTTP API under ``/api/v1``: read the audit trail, review approvals, manage tokens.

This module holds what the routes share (bodies, parameters, roles, helpers); the routes
themselves are in ``web/routes/``, one module per area, and ``routes.build_router`` joins them.

Every handler authenticates the caller (see ``auth``), checks its role and records what it
did in the audit trail.  Handlers that touch a store are plain ``def``: FastAPI runs them in
worker threads, so blocking SQLite and PostgreSQL reads stay off the event loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Depends, HTTPException, Query, Request
from pydantic import BaseModel, Field

from dbsentry.audit.query import iso, parse_when, statement_row
from dbsentry.audit.store import SearchFilter, StoredRecord
from dbsentry.identity.tokens import TokenInfo
from dbsentry.web.access import Capability, require
from dbsentry.web.auth import Principal
from dbsentry.web.service import AuditRequired, WebServices
from dbsentry.web.views import live_session_row

log = logging.getLogger("dbsentry.web")

MAX_PAGE = 1000
MAX_POLICY_CHARS = 1024 * 1024
MAX_SQL_CHARS = 256 * 1024
# A body carrying a policy text or SQL, JSON-escaped (a newline takes two bytes).
POLICY_BODY_BYTES = 4 * MAX_POLICY_CHARS
# Audit sequence numbers are SQLite/PostgreSQL bigints.
MAX_SEQ = 2**63 - 1
# Times are between the epoch and the end of year 9999.
MAX_UNIX_TIME = 253_402_300_799.0
MAX_TOKEN_TTL = 10 * 366 * 86400.0
SSE_TYPES = ("statement", "completion", "session", "approval")
SEQ_TEXT = re.compile(r"[0-9]{1,19}")

#: since/until: unix seconds, ISO 8601, or an age like 30m, 12h, 7d, 2w.
TIME_PATTERN = (
    r"^([0-9]{1,12}(\.[0-9]{1,20})?|[0-9]{1,6}[smhdw]"
    r"|[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}(:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,9})?)?)?"
    r"(Z|[+-][0-9]{2}(:?[0-9]{2})?)?)?)?$"
)
When = Annotated[
    str | None,
    Query(
        pattern=TIME_PATTERN,
        max_length=40,
        description="unix seconds, ISO 8601 (UTC unless it says), or 30m/12h/7d/2w ago",
    ),
]

Cursor = Annotated[
    int | None,
    Query(ge=0, le=MAX_SEQ, description="the next_cursor of the previous page"),
]


# --- request and response bodies ---------------------------------------------------------------


class ErrorBody(BaseModel):
    """Every error answer: what went wrong, and for a 422 the fields at fault."""

    detail: str
    errors: list[dict[str, Any]] | None = Field(
        default=None, description="for a 422: each invalid field's location and message"
    )


_ERROR_MEANING = {
    400: "bad request: a Host not allowed, an unreadable Content-Length",
    401: "no valid token",
    403: "the caller lacks the capability",
    404: "absent, or the feature is not configured",
    408: "the body did not arrive in time",
    409: "the review is refused (already decided, expired)",
    413: "the body is larger than the route allows",
    422: "invalid input",
    429: "too many failed logins from this address",
    503: "the audit trail cannot record the change, or the proxy is not ready",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses, each with the ErrorBody schema."""
    return {c: {"model": ErrorBody, "description": _ERROR_MEANING[c]} for c in codes}


#: What any route may answer before its handler runs (the gate: Host, token, body).
GATE_ERRORS = (400, 408, 413, 422)
API_ERRORS = (*GATE_ERRORS, 401, 403, 429)



class StatementPage(BaseModel):
    items: list[dict[str, Any]]
    next_cursor: int | None = Field(
        description="pass as ?cursor= for the next page; null on the last page"
    )


class ReviewBody(BaseModel):
    comment: str | None = Field(default=None, max_length=4000)


Name = Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f]+$")]


class TokenCreate(BaseModel):
    identity: Name
    groups: list[Name] = Field(default_factory=list, max_length=100)
    kind: Literal["human", "agent"] = "human"
    ttl: str | None = Field(default="90d", description="like 8h, 30d; null for no expiry")


class PolicyText(BaseModel):
    text: str = Field(max_length=MAX_POLICY_CHARS)


class ExplainBody(BaseModel):
    sql: str = Field(min_length=1, max_length=MAX_SQL_CHARS)
    identity: str = Field(min_length=1, max_length=256)
    groups: list[str] = Field(default_factory=list, max_length=100)
    agent: bool = False
    connection: str
    at: datetime | None = None


# --- helpers -----------------------------------------------------------------------------------


def when_param(value: str | None, what: str) -> float | None:
    """``since``/``until``: unix seconds, ISO 8601 or ``30m``-style; 422 unless it names a
    time between 1970 and 9999."""
    if value is None or value == "":
        return None
    try:
        when = float(value)
    except ValueError:
        try:
            when = parse_when(value)
        except (ValueError, OverflowError) as err:
            raise HTTPException(422, f"{what}: {err}") from None
    if not 0.0 <= when <= MAX_UNIX_TIME:  # also false for nan
        raise HTTPException(
            422, f"{what}: {value!r} is not a time between 1970 and 9999"
        )
    return when


def _client(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


_FILTER_FIELDS = {f.name for f in dataclasses.fields(SearchFilter)}


def statement_page(
    svc: WebServices,
    flt: SearchFilter,
    *,
    cursor: int | None,
    limit: int,
    newest_first: bool,
) -> StatementPage:
    """One page of matching statements.  ``cursor`` is the last seq of the previous page:
    newest first, the page holds seqs below it; oldest first, seqs above it."""
    store = svc.store
    skip: Callable[[int], bool] | None = None
    if cursor is not None:
        # Use a seq bound in the store when it has one; otherwise skip what was already seen
        # (costs the rows of earlier pages, never the whole trail).
        bound = "before_seq" if newest_first else "after_seq"
        if bound in _FILTER_FIELDS:
            bound_arg: dict[str, Any] = {bound: cursor}
            flt = dataclasses.replace(flt, **bound_arg)
        elif newest_first:
            skip = lambda seq: seq >= cursor  # noqa: E731
        else:
            skip = lambda seq: seq <= cursor  # noqa: E731
    items: list[dict[str, Any]] = []
    more = False
    results = store.search_statements(
        flt, descending=newest_first, limit=None if skip else limit + 1
    )
    with contextlib.closing(results):  # type: ignore[type-var]
        for stored, completion in results:
            if skip is not None and skip(stored.seq):
                continue
            if len(items) == limit:
                more = True
                break
            items.append(statement_row(stored, completion))
    return StatementPage(items=items, next_cursor=items[-1]["seq"] if more and items else None)


def token_row(info: TokenInfo, now: float) -> dict[str, Any]:
    return {
        "id": info.id,
        "identity": info.identity,
        "groups": list(info.groups),
        "kind": info.kind,
        "created_at": iso(info.created_at),
        "expires_at": iso(info.expires_at),
        "revoked_at": iso(info.revoked_at),
        "last_used_at": iso(info.last_used_at),
        "active": info.active(now),
    }


def record_event(r: StoredRecord) -> tuple[str, dict[str, Any]]:
    d = r.data()
    kind = str(d.get("type"))
    if kind == "statement":
        return kind, statement_row(r, None)
    d["seq"] = r.seq
    d["time"] = iso(d.get("time"))
    return kind, d


# --- who may call: one capability per route (see access.py) -----------------------------------

Authenticated = Annotated[Principal, Depends(require(Capability.SIGNED_IN))]
AnyRole = Annotated[Principal, Depends(require(Capability.READ))]
PolicyReader = Annotated[
    Principal, Depends(require(Capability.READ, max_body=POLICY_BODY_BYTES))
]
Auditor = Annotated[Principal, Depends(require(Capability.AUDIT))]
Reviewer = Annotated[Principal, Depends(require(Capability.REVIEW))]
Admin = Annotated[Principal, Depends(require(Capability.TOKENS))]


# --- the routes (web/routes/, one module per area) -----------------------------------------


def auditor(svc: WebServices) -> Callable[..., None]:
    """``audit(request, who, action, change=False, **detail)`` for a route: records the call
    in the audit trail (503 if it cannot be)."""

    def audit(
        request: Request, who: Principal, action: str, change: bool = False, **detail: Any
    ) -> None:
        request.state.action = action
        request.state.audited = True  # the gate adds a record only if this one fails
        try:
            svc.audit(who, action, _client(request), detail, change=change)
        except AuditRequired as err:
            raise HTTPException(503, str(err)) from None

    return audit


def live_rows(svc: WebServices) -> list[dict[str, Any]]:
    """The sessions open now, as rows for the sessions list and the agents view."""
    return cluster_live_rows(svc)[0]


def cluster_live_rows(svc: WebServices) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The sessions open now on this node and, with a control plane, on every other node
    (asked now); and the workers of other nodes whose sessions are missing (not answering)."""
    rows = []
    for obj in list(svc.ctx.live_sessions()):
        row = live_session_row(obj)
        if row is not None:
            rows.append(row)
    missing: list[dict[str, Any]] = []
    if svc.ctx.remote_sessions is not None:
        remote, missing = svc.ctx.remote_sessions()
        rows.extend(r for r in map(live_session_row, remote) if r is not None)
    return rows, missing
