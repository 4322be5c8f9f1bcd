"""The HTTP API under ``/api/v1``: read the audit trail, review approvals, manage tokens.

Every handler authenticates the caller (see ``auth``), checks its role and records what it
did in the audit trail.  Handlers that touch a store are plain ``def``: FastAPI runs them in
worker threads, so blocking SQLite and PostgreSQL reads stay off the event loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import anyio
import orjson
from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from dbsentry.audit.query import iso, parse_when, statement_row
from dbsentry.audit.redaction import current as current_redactor
from dbsentry.audit.store import SearchFilter, StoredRecord
from dbsentry.identity.model import Identity
from dbsentry.identity.tokens import TokenInfo, parse_duration
from dbsentry.web.access import Capability, require
from dbsentry.web.approvals import ApprovalsUnavailable, ReviewRefused, to_jsonable
from dbsentry.web.auth import Principal
from dbsentry.web.service import AuditRequired, WebServices
from dbsentry.web.views import (
    DataAccess,
    agent_summary,
    class_lookup,
    class_map_rows,
    live_session_row,
    sessions_from_events,
)

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
_SSE_TYPES = ("statement", "completion", "session", "approval")
_SEQ = re.compile(r"[0-9]{1,19}")

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


def _when(value: str | None, what: str) -> float | None:
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


def _token_row(info: TokenInfo, now: float) -> dict[str, Any]:
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


def _record_event(r: StoredRecord) -> tuple[str, dict[str, Any]]:
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


# --- the router --------------------------------------------------------------------------------


def build_router(svc: WebServices) -> APIRouter:
    ctx = svc.ctx

    def audit(
        request: Request, who: Principal, action: str, change: bool = False, **detail: Any
    ) -> None:
        request.state.action = action
        request.state.audited = True  # the gate adds a record only if this one fails
        try:
            svc.audit(who, action, _client(request), detail, change=change)
        except AuditRequired as err:
            raise HTTPException(503, str(err)) from None

    r = APIRouter(prefix="/api/v1", responses=errors(*API_ERRORS))

    # --- who am I --------------------------------------------------------------------------

    @r.get("/me", tags=["identity"], summary="The caller, its roles and the features available")
    def me(request: Request, who: Authenticated) -> dict[str, Any]:
        gov = ctx.governor
        return {
            "identity": who.name,
            "kind": who.identity.kind,
            "groups": sorted(who.identity.groups),
            "source": who.identity.source,
            "token_id": who.identity.token_id,
            "expires_at": iso(who.identity.expires_at),
            "roles": sorted(who.roles),
            # which groups give which role: what to ask for when a role is missing
            "role_groups": {role: list(groups) for role, groups in svc.web.roles.items()},
            "features": {
                "approvals": svc.approvals.available,
                "review": svc.approvals.can_review,
                "access_requests": svc.approvals.has_access_requests,
                "grants": svc.approvals.has_grants,
                "classification": ctx.classification is not None,
                "policy": gov is not None,
                "oidc": getattr(ctx.authenticator, "oidc", None) is not None,
            },
            "connections": [
                {"name": name, "environment": c.environment}
                for name, c in sorted(ctx.config.connections.items())
            ],
            "policy_version": gov.version if gov is not None else None,
        }

    # --- sessions --------------------------------------------------------------------------

    def live_rows() -> list[dict[str, Any]]:
        rows = []
        for obj in list(ctx.live_sessions()):
            row = live_session_row(obj)
            if row is not None:
                rows.append(row)
        return rows

    @r.get(
        "/sessions", tags=["sessions"], summary="Live sessions and recent ones from the audit trail"
    )
    def sessions(
        request: Request,
        who: AnyRole,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
        identity: str | None = None,
    ) -> dict[str, Any]:
        live = live_rows()
        events = [
            rec.data()
            for rec in svc.store.iter_records(types=["session"], descending=True, limit=limit * 2)
        ]
        recent = sessions_from_events(events)
        live_ids = {row["session_id"] for row in live}
        for row in recent:
            row["live"] = row["session_id"] in live_ids
        if identity is not None:
            live = [s for s in live if s["identity"] == identity]
            recent = [s for s in recent if s.get("identity") == identity]
        audit(request, who, "sessions.list", identity=identity)
        return {"live": live, "recent": recent[:limit]}

    def find_session(session_id: str) -> dict[str, Any] | None:
        for row in live_rows():
            if row["session_id"] == session_id:
                return row
        events = [
            rec.data()
            for rec in svc.store.iter_records(types=["session"], descending=True, limit=20_000)
            if rec.record.session_id == session_id
        ]
        found = sessions_from_events(events)
        if found:
            return found[0]
        first = next(
            iter(
                svc.store.search_statements(
                    SearchFilter(session_id=session_id), descending=False, limit=1
                )
            ),
            None,
        )
        if first is None:
            return None
        row = statement_row(*first)
        return {
            "session_id": session_id,
            "live": False,
            **{
                k: row.get(k)
                for k in (
                    "identity",
                    "identity_kind",
                    "connection",
                    "environment",
                    "database",
                    "application_name",
                )
            },
        }

    @r.get("/sessions/{session_id}", tags=["sessions"], summary="One session", responses=errors(404))
    def session(request: Request, who: AnyRole, session_id: str) -> dict[str, Any]:
        row = find_session(session_id)
        audit(request, who, "sessions.get", session_id=session_id)
        if row is None:
            raise HTTPException(404, f"no session {session_id!r}")
        return row

    @r.get(
        "/sessions/{session_id}/statements",
        tags=["sessions"],
        summary="A session's statements in the order they were sent",
        response_model=StatementPage,
    )
    def session_statements(
        request: Request,
        who: AnyRole,
        session_id: str,
        cursor: Cursor = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 200,
    ) -> StatementPage:
        audit(request, who, "sessions.statements", session_id=session_id, cursor=cursor)
        return statement_page(
            svc, SearchFilter(session_id=session_id), cursor=cursor, limit=limit, newest_first=False
        )

    # --- statements ------------------------------------------------------------------------

    @r.get(
        "/statements",
        tags=["audit"],
        summary="Search statements; newest first, paginated by cursor (the last seq seen)",
        response_model=StatementPage,
    )
    def statements(
        request: Request,
        who: AnyRole,
        identity: str | None = None,
        kind: Annotated[
            Literal["human", "agent"] | None, Query(description="identity kind")
        ] = None,
        connection: str | None = None,
        environment: str | None = None,
        table: str | None = None,
        decision: str | None = None,
        session_id: str | None = None,
        since: When = None,
        until: When = None,
        text: Annotated[str | None, Query(max_length=1000)] = None,
        value: Annotated[
            str | None,
            Query(max_length=1000, description="a value as sent: records holding its token"),
        ] = None,
        cursor: Cursor = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
        order: Literal["newest", "oldest"] = "newest",
    ) -> StatementPage:
        redactor = current_redactor()
        flt = SearchFilter(
            digests=redactor.search_digests(value) if value else (),
            identity=identity or None,
            identity_kind=kind,
            connection=connection or None,
            environment=environment or None,
            table=table or None,
            decision=decision or None,
            session_id=session_id or None,
            since=_when(since, "since"),
            until=_when(until, "until"),
            text=text or None,
        )
        audit(
            request, who, "statements.search",
            filter={
                k: (redactor.text(v) if k == "text" else v)  # a search term may be a value
                for k, v in dataclasses.asdict(flt).items()
                if v is not None and v != ()
            },
            cursor=cursor,
        )  # fmt: skip
        return statement_page(svc, flt, cursor=cursor, limit=limit, newest_first=order == "newest")

    @r.get(
        "/stream",
        tags=["audit"],
        summary="Server-Sent Events: new statement, completion, session and approval records",
        response_class=StreamingResponse,
    )
    async def stream(
        request: Request,
        who: AnyRole,
        after: Annotated[
            int | None, Query(ge=0, le=MAX_SEQ, description="start after this seq (default: now)")
        ] = None,
        last_event_id: Annotated[str | None, Header(pattern=r"^[0-9]{1,18}$")] = None,
    ) -> StreamingResponse:
        start = after
        if start is None and last_event_id:
            if not _SEQ.fullmatch(last_event_id) or int(last_event_id) > MAX_SEQ:
                raise HTTPException(422, "Last-Event-ID: not a sequence number")
            start = int(last_event_id)
        if start is None:
            start = (await anyio.to_thread.run_sync(svc.store.head)).seq
        await anyio.to_thread.run_sync(lambda: audit(request, who, "stream.open", after=start))
        poll = svc.web.stream_poll_seconds

        def fetch(after_seq: int) -> list[StoredRecord]:
            return list(svc.store.iter_records(after_seq=after_seq, types=_SSE_TYPES, limit=500))

        async def events() -> AsyncIterator[bytes]:
            last = start
            quiet = 0.0
            yield b"retry: 2000\n\n"
            while not svc.stopping.is_set():
                try:
                    batch = await anyio.to_thread.run_sync(fetch, last)
                except Exception as err:  # the store is down: say so, keep trying
                    log.warning("live feed read failed: %s", err)
                    yield b'event: error\ndata: {"error": "audit store unavailable"}\n\n'
                    batch = []
                for rec in batch:
                    kind, data = _record_event(rec)
                    last = rec.seq
                    yield b"id: %d\nevent: %s\ndata: %s\n\n" % (
                        rec.seq,
                        kind.encode(),
                        orjson.dumps(data),
                    )
                if batch:
                    quiet = 0.0
                    if len(batch) == 500:
                        continue
                else:
                    quiet += poll
                    if quiet >= 15.0:
                        quiet = 0.0
                        yield b": keep-alive\n\n"
                await anyio.sleep(poll)

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    # --- approvals -------------------------------------------------------------------------

    def approvals_call(fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except ApprovalsUnavailable as err:
            raise HTTPException(404, str(err)) from None

    @r.get(
        "/approvals",
        tags=["approvals"],
        summary="Approval requests (pending first by default)",
        responses=errors(404),
    )
    def approvals(
        request: Request,
        who: AnyRole,
        status: Annotated[
            str | None, Query(description="pending, approved, denied, expired")
        ] = "pending",
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 200,
    ) -> dict[str, Any]:
        items = approvals_call(lambda: svc.approvals.requests(status=status or None, limit=limit))
        audit(request, who, "approvals.list", status=status)
        return {"items": items}

    @r.get(
        "/approvals/{approval_id}",
        tags=["approvals"],
        summary="One approval request",
        responses=errors(404),
    )
    def approval(request: Request, who: AnyRole, approval_id: str) -> dict[str, Any]:
        found = approvals_call(lambda: svc.approvals.get(approval_id))
        audit(request, who, "approvals.get", approval_id=approval_id)
        if found is None:
            raise HTTPException(404, f"no approval request {approval_id!r}")
        return dict(found)

    def review(
        request: Request, who: Principal, approval_id: str, approve: bool, body: ReviewBody
    ) -> dict[str, Any]:
        action = "approvals.approve" if approve else "approvals.deny"
        found = approvals_call(lambda: svc.approvals.get(approval_id))
        if found is None:
            raise HTTPException(404, f"no approval request {approval_id!r}")
        requester = found.get("requester") or found.get("identity")
        if requester is not None and requester == who.name:
            audit(
                request,
                who,
                action,
                change=True,
                approval_id=approval_id,
                outcome="refused: own request",
            )
            raise HTTPException(403, "you cannot review your own request")
        audit(request, who, action, change=True, approval_id=approval_id, comment=body.comment)
        try:
            result = approvals_call(
                lambda: svc.approvals.review(approval_id, who.identity, approve, body.comment)
            )
        except ReviewRefused as err:
            raise HTTPException(404 if err.code == "not_found" else 409, str(err)) from None
        return (
            result
            if result is not None
            else (svc.approvals.get(approval_id) or {"id": approval_id})
        )

    @r.post(
        "/approvals/{approval_id}/approve",
        tags=["approvals"],
        summary="Approve a request",
        responses=errors(404, 409, 503),
    )
    def approve(
        request: Request, who: Reviewer, approval_id: str, body: ReviewBody | None = None
    ) -> dict[str, Any]:
        return review(request, who, approval_id, True, body or ReviewBody())

    @r.post(
        "/approvals/{approval_id}/deny",
        tags=["approvals"],
        summary="Deny a request",
        responses=errors(404, 409, 503),
    )
    def deny(
        request: Request, who: Reviewer, approval_id: str, body: ReviewBody | None = None
    ) -> dict[str, Any]:
        return review(request, who, approval_id, False, body or ReviewBody())

    @r.get(
        "/access-requests",
        tags=["approvals"],
        summary="Requests for temporary access",
        responses=errors(404),
    )
    def access_requests(
        request: Request,
        who: AnyRole,
        status: str | None = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 200,
    ) -> dict[str, Any]:
        items = approvals_call(lambda: svc.approvals.access_requests(status=status, limit=limit))
        audit(request, who, "access_requests.list", status=status)
        return {"items": items}

    @r.get(
        "/grants", tags=["approvals"], summary="Temporary access grants", responses=errors(404)
    )
    def grants(request: Request, who: AnyRole, active: bool = True) -> dict[str, Any]:
        items = approvals_call(lambda: svc.approvals.grants(active=active))
        audit(request, who, "grants.list", active=active)
        return {"items": items}

    # --- identities and tokens -------------------------------------------------------------

    def token_store() -> Any:
        tokens = getattr(ctx.authenticator, "tokens", None)
        if tokens is None:
            raise HTTPException(404, "no token store")
        return tokens

    @r.get(
        "/identities",
        tags=["identities"],
        summary="Identities that hold dbsentry tokens",
        responses=errors(404),
    )
    def identities(request: Request, who: Auditor) -> dict[str, Any]:
        now = ctx.clock()
        by_name: dict[str, dict[str, Any]] = {}
        for info in token_store().list(include_revoked=False):
            row = by_name.setdefault(
                info.identity,
                {
                    "identity": info.identity,
                    "kind": info.kind,
                    "groups": set(),
                    "active_tokens": 0,
                    "last_used_at": None,
                },
            )
            row["groups"].update(info.groups)
            if info.active(now):
                row["active_tokens"] += 1
            used = iso(info.last_used_at)
            if used is not None and (row["last_used_at"] is None or used > row["last_used_at"]):
                row["last_used_at"] = used
        audit(request, who, "identities.list")
        items = [{**row, "groups": sorted(row["groups"])} for row in by_name.values()]
        return {"items": sorted(items, key=lambda x: x["identity"])}

    @r.get(
        "/tokens",
        tags=["identities"],
        summary="Tokens (never their secrets)",
        responses=errors(404),
    )
    def tokens(request: Request, who: Admin, include_revoked: bool = False) -> dict[str, Any]:
        now = ctx.clock()
        items = [_token_row(i, now) for i in token_store().list(include_revoked=include_revoked)]
        audit(request, who, "tokens.list")
        return {"items": items}

    @r.post(
        "/tokens",
        tags=["identities"],
        status_code=201,
        summary="Create a token; its secret is shown once",
        responses=errors(404, 503),
    )
    def create_token(request: Request, who: Admin, body: TokenCreate) -> dict[str, Any]:
        try:
            ttl = parse_duration(body.ttl) if body.ttl else None
        except ValueError as err:
            raise HTTPException(422, str(err)) from None
        if ttl is not None and ttl > MAX_TOKEN_TTL:
            raise HTTPException(422, "ttl: at most ten years")
        audit(
            request, who, "tokens.create", change=True,
            subject=body.identity, groups=sorted(body.groups), kind=body.kind, ttl=body.ttl,
        )  # fmt: skip
        try:
            plaintext, info = token_store().create(body.identity, body.groups, body.kind, ttl)
        except (ValueError, TypeError) as err:
            raise HTTPException(422, str(err)) from None
        audit(
            request,
            who,
            "tokens.created",
            change=True,
            subject=body.identity,
            created_token_id=info.id,
        )
        return {"token": plaintext, "info": _token_row(info, ctx.clock())}

    @r.delete(
        "/tokens/{token_id}",
        tags=["identities"],
        summary="Revoke a token",
        responses=errors(404, 503),
    )
    def revoke_token(request: Request, who: Admin, token_id: str) -> dict[str, Any]:
        audit(request, who, "tokens.revoke", change=True, revoked_token_id=token_id)
        if not token_store().revoke(token_id):
            raise HTTPException(404, f"no active token {token_id!r}")
        return {"revoked": token_id}

    # --- policy ----------------------------------------------------------------------------

    def governor() -> Any:
        if ctx.governor is None:
            raise HTTPException(404, "no policy: the proxy runs in passthrough mode")
        return ctx.governor

    @r.get(
        "/policy",
        tags=["policy"],
        summary="The policy in force: its source text and rules",
        responses=errors(404),
    )
    def policy(request: Request, who: AnyRole) -> dict[str, Any]:
        gov = governor()
        pol = gov.policy
        text = None
        if gov.path is not None:
            try:
                text = gov.path.read_text(encoding="utf-8")[:MAX_POLICY_CHARS]
            except (OSError, UnicodeDecodeError) as err:
                text = f"# cannot read {gov.path.name}: {err}"
        rules = []
        for cr in pol.rules:
            rule = cr.rule
            rules.append(
                {
                    "name": rule.name,
                    "description": rule.description,
                    "action": rule.action,
                    "baseline": cr.baseline,
                    "message": rule.message,
                    "approvers": rule.approvers,
                    "match": rule.match.model_dump(mode="json", exclude_defaults=True),
                    "unless": rule.unless.model_dump(mode="json", exclude_defaults=True)
                    if rule.unless
                    else None,
                    "mask": rule.mask.model_dump(mode="json", exclude_defaults=True)
                    if rule.mask
                    else None,
                }
            )
        audit(request, who, "policy.get")
        return {
            "version": pol.version,
            "source": gov.path.name if gov.path is not None else pol.source,
            "default": pol.default,
            "production_environments": sorted(pol.production_environments),
            "text": text,
            "rules": rules,
        }

    @r.post("/policy/check", tags=["policy"], summary="Validate a policy text without applying it")
    def policy_check(request: Request, who: PolicyReader, body: PolicyText) -> dict[str, Any]:
        from dbsentry.policy import PolicyError, parse_policy

        audit(request, who, "policy.check", chars=len(body.text))
        try:
            pol = parse_policy(body.text, "<posted>")
        except PolicyError as err:
            return {"ok": False, "line": err.line, "reason": err.reason, "message": str(err)}
        own = [cr for cr in pol.rules if not cr.baseline]
        return {
            "ok": True,
            "version": pol.version,
            "rules": len(own),
            "baseline_rules": len(pol.rules) - len(own),
        }

    @r.post(
        "/policy/explain",
        tags=["policy"],
        summary="The facts of SQL and the decision for an identity",
        responses=errors(404),
    )
    def policy_explain(request: Request, who: PolicyReader, body: ExplainBody) -> dict[str, Any]:
        from dbsentry.policy import EvalContext, evaluate_sql
        from dbsentry.policy.cli import verdict_to_dict

        gov = governor()
        conn = ctx.config.connections.get(body.connection)
        if conn is None:
            raise HTTPException(422, f"no connection named {body.connection!r}")
        at = body.at or datetime.now(UTC)
        if at.tzinfo is None:
            at = at.replace(tzinfo=UTC)
        ectx = EvalContext(
            identity=Identity(
                name=body.identity,
                groups=frozenset(body.groups),
                kind="agent" if body.agent else "human",
                token_id="api-explain",
                source="token",
            ),
            connection=body.connection,
            environment=conn.environment,
            now=at,
        )
        audit(request, who, "policy.explain", subject=body.identity, connection=body.connection)
        verdict = evaluate_sql(gov.policy, body.sql, ectx)
        return {
            "policy_version": gov.version,
            "environment": conn.environment,
            **verdict_to_dict(verdict),
        }

    # --- data ------------------------------------------------------------------------------

    def class_maps() -> dict[str, Any]:
        if ctx.classification is None:
            return {}
        try:
            return dict(ctx.classification())
        except Exception as err:
            log.warning("classification map unavailable: %s", err)
            return {}

    @r.get(
        "/classification",
        tags=["data"],
        summary="The data classes of sensitive columns, per connection",
        responses=errors(404),
    )
    def classification(request: Request, who: Auditor) -> dict[str, Any]:
        if ctx.classification is None:
            raise HTTPException(404, "masking is not available")
        known: list[dict[str, Any]] = []
        try:
            from dbsentry.masking.classes import SENSITIVITY

            known = [{"class": c.value, "sensitivity": s} for c, s in SENSITIVITY.items()]
        except ImportError:
            pass
        audit(request, who, "classification.get")
        return {"classes": known, "columns": class_map_rows(class_maps())}

    @r.get(
        "/data-access",
        tags=["data"],
        summary="Who touched which data: identity -> connection -> table -> column -> data class",
    )
    def data_access(
        request: Request,
        who: Auditor,
        since: When = "7d",
        until: When = None,
        identity: str | None = None,
        kind: Literal["human", "agent"] | None = None,
        connection: str | None = None,
        include_catalog: Annotated[
            bool, Query(description="count reads of pg_catalog and information_schema too")
        ] = False,
    ) -> dict[str, Any]:
        flt = SearchFilter(
            identity=identity or None,
            identity_kind=kind,
            connection=connection or None,
            since=_when(since, "since"),
            until=_when(until, "until"),
        )
        maps = class_maps()
        agg = DataAccess(class_lookup(maps) if maps else None, include_catalog=include_catalog)
        cap = svc.web.summary_max_statements
        truncated = False
        for n, (stored, _) in enumerate(
            svc.store.search_statements(flt, descending=True, limit=cap + 1)
        ):
            if n == cap:
                truncated = True
                break
            d = stored.data()
            d["time"] = iso(d.get("time"))
            agg.add(d)
        audit(
            request,
            who,
            "data_access.summary",
            filter={
                k: (current_redactor().text(v) if k == "text" else v)  # a term may be a value
                for k, v in dataclasses.asdict(flt).items()
                if v is not None and v != ()
            },
        )
        return {
            "since": iso(flt.since),
            "until": iso(flt.until),
            "truncated": truncated,
            **agg.result(),
        }

    @r.get("/agents", tags=["data"], summary="What AI agents (identity kind agent) have been doing")
    def agents(
        request: Request,
        who: Auditor,
        since: When = "7d",
        until: When = None,
        include_catalog: Annotated[
            bool, Query(description="count reads of pg_catalog and information_schema too")
        ] = False,
    ) -> dict[str, Any]:
        flt = SearchFilter(
            identity_kind="agent", since=_when(since, "since"), until=_when(until, "until")
        )
        cap = svc.web.summary_max_statements
        rows: Iterator[dict[str, Any]] = (
            statement_row(s, c)
            for s, c in svc.store.search_statements(flt, descending=True, limit=cap)
        )
        items = agent_summary(rows, include_catalog=include_catalog)
        live = [s for s in live_rows() if s["identity_kind"] == "agent"]
        audit(request, who, "agents.summary", since=since, until=until)
        return {"items": items, "live": live}

    # --- the audit trail itself ---------------------------------------------------------------

    @r.get("/audit/status", tags=["audit"], summary="The chain head and the writer's health")
    def audit_status(request: Request, who: Auditor) -> dict[str, Any]:
        head = svc.store.head()
        anchor = svc.store.anchor()
        writer = ctx.audit_writer
        audit(request, who, "audit.status")
        return {
            "head": {"seq": head.seq, "hash": head.hash},
            "anchor": {"seq": anchor.seq, "hash": anchor.hash},
            "writer": None
            if writer is None
            else {
                "healthy": writer.healthy,
                "last_error": writer.last_error,
                "durability": writer.durability,
                "stats": dataclasses.asdict(writer.stats),
            },
        }

    @r.get("/audit/verify", tags=["audit"], summary="Verify the hash chain and signed checkpoints")
    def audit_verify(request: Request, who: Auditor, fresh: bool = False) -> dict[str, Any]:
        audit(request, who, "audit.verify", fresh=fresh)
        checked, result = svc.verify(fresh=fresh)
        return {"checked_at": iso(checked), **result.to_dict()}

    return r


__all__ = ["ErrorBody", "StatementPage", "build_router", "errors", "statement_page", "to_jsonable"]
