"""The API's routes for who am I, identities and tokens."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request

from dbsentry.audit.query import iso
from dbsentry.identity.tokens import parse_duration
from dbsentry.web.api import (
    MAX_TOKEN_TTL,
    Admin,
    Auditor,
    Authenticated,
    TokenCreate,
    auditor,
    errors,
    token_row,
)
from dbsentry.web.service import WebServices


def add_routes(r: APIRouter, svc: WebServices) -> None:
    ctx = svc.ctx
    audit = auditor(svc)

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
                "nodes": ctx.nodes is not None,  # several nodes on one control plane
            },
            "connections": [
                {"name": name, "environment": c.environment}
                for name, c in sorted(ctx.config.connections.items())
            ],
            "policy_version": gov.version if gov is not None else None,
        }

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
        items = [token_row(i, now) for i in token_store().list(include_revoked=include_revoked)]
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
        return {"token": plaintext, "info": token_row(info, ctx.clock())}

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
