"""The API's routes for approvals and access requests: list, review, approve, deny; grants."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request

from dbsentry.web.api import (
    MAX_PAGE,
    AnyRole,
    ReviewBody,
    Reviewer,
    auditor,
    errors,
)
from dbsentry.web.approvals import ApprovalsUnavailable, ReviewRefused
from dbsentry.web.auth import Principal
from dbsentry.web.service import WebServices


def add_routes(r: APIRouter, svc: WebServices) -> None:
    audit = auditor(svc)

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
