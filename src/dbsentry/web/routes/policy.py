"""The API's routes for the policy: read, check and explain."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Request

from dbsentry.identity.model import Identity
from dbsentry.web.api import (
    MAX_POLICY_CHARS,
    AnyRole,
    ExplainBody,
    PolicyReader,
    PolicyText,
    auditor,
    errors,
)
from dbsentry.web.service import WebServices


def add_routes(r: APIRouter, svc: WebServices) -> None:
    ctx = svc.ctx
    audit = auditor(svc)

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
        from dbsentry.engines.postgres.sql.verdict import evaluate_sql
        from dbsentry.policy import EvalContext
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
