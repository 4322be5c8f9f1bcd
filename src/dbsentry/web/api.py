"""The HTTP API under ``/api/v1``: read the audit trail, review approvals, manage tokens.

Every handler authenticates the caller (see ``auth``), checks its role and records what it
did in the audit trail.  Handlers that touch a store are plain ``def``: FastAPI runs them in
worker threads, so blocking SQLite and PostgreSQL reads stay off the event loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
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
from dbsentry.web.approvals import ApprovalsUnavailable, ReviewRefused, to_jsonable
from dbsentry.web.auth import AuthError, Principal, bearer_token, identify, principal_for
from dbsentry.web.config import Role
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

ANY_ROLE: tuple[Role, ...] = ("admin", "auditor", "reviewer")
AUDIT_READERS: tuple[Role, ...] = ("admin", "auditor")
REVIEWERS: tuple[Role, ...] = ("admin", "reviewer")
ADMINS: tuple[Role, ...] = ("admin",)

MAX_PAGE = 1000
MAX_POLICY_CHARS = 1024 * 1024
MAX_SQL_CHARS = 256 * 1024
_SSE_TYPES = ("statement", "completion", "session", "approval")


# --- request and response bodies ---------------------------------------------------------------


class StatementPage(BaseModel):
    items: list[dict[str, Any]]
    next_cursor: int | None = Field(
        description="pass as ?cursor= for the next page; null on the last page"
    )


class ReviewBody(BaseModel):
    comment: str | None = Field(default=None, max_length=4000)


class TokenCreate(BaseModel):
    identity: str = Field(min_length=1, max_length=256)
    groups: list[str] = Field(default_factory=list, max_length=100)
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
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return parse_when(value)
    except ValueError as err:
        raise HTTPException(422, f"{what}: {err}") from None


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


# --- authentication dependencies ------------------------------------------------------------


def services(request: Request) -> WebServices:
    svc = request.app.state.web_services
    assert isinstance(svc, WebServices)
    return svc


def principal(request: Request) -> Principal:
    """The caller, from its bearer token (cached on the request)."""
    cached = getattr(request.state, "principal", None)
    if isinstance(cached, Principal):
        return cached
    svc = services(request)
    token = bearer_token(request.headers.get("authorization"))
    if token is None:
        raise AuthError(401, "send Authorization: Bearer <dbsentry token or OIDC JWT>")
    identity = identify(svc.ctx.authenticator, token, _client(request))
    if identity is None:
        raise AuthError(401, "the token is invalid, expired or revoked")
    who = principal_for(identity, svc.web)
    request.state.principal = who
    return who


def role(*roles: Role) -> Callable[[Request], Principal]:
    def check(request: Request) -> Principal:
        who = principal(request)
        if not who.has(roles):
            raise AuthError(403, f"this needs the role {' or '.join(roles)}")
        return who

    return check


Authenticated = Annotated[Principal, Depends(principal)]
AnyRole = Annotated[Principal, Depends(role(*ANY_ROLE))]
Auditor = Annotated[Principal, Depends(role(*AUDIT_READERS))]
Reviewer = Annotated[Principal, Depends(role(*REVIEWERS))]
Admin = Annotated[Principal, Depends(role(*ADMINS))]


# --- the router --------------------------------------------------------------------------------


def build_router(svc: WebServices) -> APIRouter:
    ctx = svc.ctx

    def audit(
        request: Request, who: Principal, action: str, change: bool = False, **detail: Any
    ) -> None:
        try:
            svc.audit(who, action, _client(request), detail, change=change)
        except AuditRequired as err:
            raise HTTPException(503, str(err)) from None

    r = APIRouter(prefix="/api/v1")

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

    @r.get("/sessions/{session_id}", tags=["sessions"], summary="One session")
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
        cursor: int | None = None,
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
        since: Annotated[
            str | None, Query(description="ISO 8601, unix seconds or 30m/12h/7d ago")
        ] = None,
        until: str | None = None,
        text: Annotated[str | None, Query(max_length=1000)] = None,
        value: Annotated[
            str | None,
            Query(max_length=1000, description="a value as sent: records holding its token"),
        ] = None,
        cursor: int | None = None,
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
            int | None, Query(description="start after this seq (default: now)")
        ] = None,
        last_event_id: Annotated[str | None, Header()] = None,
    ) -> StreamingResponse:
        start = after
        if start is None and last_event_id and last_event_id.isdigit():
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

    @r.get("/approvals", tags=["approvals"], summary="Approval requests (pending first by default)")
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

    @r.get("/approvals/{approval_id}", tags=["approvals"], summary="One approval request")
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
        if who.identity.is_agent and not svc.web.agents_may_review:
            raise HTTPException(403, "agents cannot review approval requests")
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

    @r.post("/approvals/{approval_id}/approve", tags=["approvals"], summary="Approve a request")
    def approve(
        request: Request, who: Reviewer, approval_id: str, body: ReviewBody | None = None
    ) -> dict[str, Any]:
        return review(request, who, approval_id, True, body or ReviewBody())

    @r.post("/approvals/{approval_id}/deny", tags=["approvals"], summary="Deny a request")
    def deny(
        request: Request, who: Reviewer, approval_id: str, body: ReviewBody | None = None
    ) -> dict[str, Any]:
        return review(request, who, approval_id, False, body or ReviewBody())

    @r.get("/access-requests", tags=["approvals"], summary="Requests for temporary access")
    def access_requests(
        request: Request,
        who: AnyRole,
        status: str | None = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 200,
    ) -> dict[str, Any]:
        items = approvals_call(lambda: svc.approvals.access_requests(status=status, limit=limit))
        audit(request, who, "access_requests.list", status=status)
        return {"items": items}

    @r.get("/grants", tags=["approvals"], summary="Temporary access grants")
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

    @r.get("/identities", tags=["identities"], summary="Identities that hold dbsentry tokens")
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

    @r.get("/tokens", tags=["identities"], summary="Tokens (never their secrets)")
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
    )
    def create_token(request: Request, who: Admin, body: TokenCreate) -> dict[str, Any]:
        if who.identity.is_agent and not svc.web.agents_may_review:
            raise HTTPException(403, "agents cannot create tokens")
        try:
            ttl = parse_duration(body.ttl) if body.ttl else None
        except ValueError as err:
            raise HTTPException(422, str(err)) from None
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

    @r.delete("/tokens/{token_id}", tags=["identities"], summary="Revoke a token")
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

    @r.get("/policy", tags=["policy"], summary="The policy in force: its source text and rules")
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
    def policy_check(request: Request, who: AnyRole, body: PolicyText) -> dict[str, Any]:
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
    )
    def policy_explain(request: Request, who: AnyRole, body: ExplainBody) -> dict[str, Any]:
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
        since: str | None = "7d",
        until: str | None = None,
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
        since: str | None = "7d",
        until: str | None = None,
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


def auth_error_body(err: AuthError) -> tuple[int, dict[str, Any], dict[str, str]]:
    headers = {"WWW-Authenticate": 'Bearer realm="dbsentry"'} if err.status == 401 else {}
    if err.status == 429:
        headers["Retry-After"] = "60"
    return err.status, {"detail": err.message}, headers


__all__ = ["StatementPage", "auth_error_body", "build_router", "statement_page", "to_jsonable"]
