"""The rules of review and use, in one place: pure functions over :class:`ApprovalRequest`.

- Only members of one of the request's approver groups review it; never its requester,
  and never an AI agent.
- A request is approved when ``min_approvals`` distinct reviewers approved it; one denial by
  an eligible reviewer denies it.  Each reviewer reviews a request once.
- Only a pending, unexpired request can be reviewed.
- An approved statement request is used exactly once, by the same identity on the same
  connection for the same request key (text and parameters), before ``approved_until``.
- An approved access request becomes a :class:`Grant` from the approval for the requested
  duration.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

from dbsentry.approvals.model import ApprovalRequest, Grant, Review, Reviewed, new_grant_id
from dbsentry.identity.model import Identity

RefusalCode = Literal[
    "not_found",
    "self_review",
    "agent",
    "not_approver",
    "not_pending",
    "expired",
    "already_reviewed",
    "not_requester",
]


class ReviewRefused(Exception):
    """A review, or a withdrawal, that the rules do not allow; ``code`` says which rule."""

    def __init__(self, code: RefusalCode, message: str) -> None:
        super().__init__(message)
        self.code: RefusalCode = code


def _same_name(a: str, b: str) -> bool:
    return a.casefold() == b.casefold()


def review_refusal(
    request: ApprovalRequest, reviewer: Identity, now: float
) -> ReviewRefused | None:
    """Why ``reviewer`` may not review ``request`` now, or None if they may."""
    if request.status != "pending":
        return ReviewRefused(
            "not_pending", f"request {request.id} is {request.status}, not pending"
        )
    if now >= request.expires_at:
        return ReviewRefused("expired", f"request {request.id} expired before it was reviewed")
    if _same_name(reviewer.name, request.requester):
        return ReviewRefused(
            "self_review",
            f"{reviewer.name} made request {request.id} and cannot review it; another member "
            f"of {' or '.join(request.approvers) or 'the approver groups'} must",
        )
    if reviewer.is_agent:
        return ReviewRefused("agent", f"{reviewer.name} is an agent; only people review requests")
    if not reviewer.groups & set(request.approvers):
        groups = ", ".join(request.approvers) or "(none)"
        return ReviewRefused(
            "not_approver",
            f"{reviewer.name} is not in an approver group of request {request.id} ({groups})",
        )
    if any(_same_name(r.reviewer, reviewer.name) for r in request.reviews):
        return ReviewRefused(
            "already_reviewed", f"{reviewer.name} has already reviewed request {request.id}"
        )
    return None


def apply_review(
    request: ApprovalRequest,
    reviewer: Identity,
    approve: bool,
    reason: str | None,
    now: float,
) -> Reviewed:
    """The request after ``reviewer``'s approval or denial; raises :class:`ReviewRefused`."""
    refusal = review_refusal(request, reviewer, now)
    if refusal is not None:
        raise refusal
    review = Review(reviewer.name, reviewer.kind, approve, reason, now)
    reviews = (*request.reviews, review)
    if not approve:
        denied = replace(request, reviews=reviews, status="denied", decided_at=now)
        return Reviewed(denied, "denied", review=review)
    approvers = {r.reviewer.casefold() for r in reviews if r.approve}
    if len(approvers) < request.required_approvals:
        return Reviewed(replace(request, reviews=reviews), "recorded", review=review)
    approved = replace(
        request,
        reviews=reviews,
        status="approved",
        decided_at=now,
        approved_until=now + request.validity_seconds,
    )
    grant = None
    if request.kind == "access":
        grant = Grant(
            id=new_grant_id(),
            identity=request.requester,
            group=request.access_group,
            connection=None if request.access_group is not None else request.connection,
            granted_at=now,
            expires_at=now + request.validity_seconds,
            approval_id=request.id,
        )
    return Reviewed(approved, "approved", grant=grant, review=review)


def expiry_due(request: ApprovalRequest, now: float) -> bool:
    """A pending request past its review deadline, or an unused statement approval past its validity."""
    if request.status == "pending":
        return now >= request.expires_at
    if request.status == "approved" and request.kind == "statement":
        return request.approved_until is not None and now >= request.approved_until
    return False


def expire(request: ApprovalRequest, now: float) -> ApprovalRequest:
    """``request`` marked expired if :func:`expiry_due`, else unchanged."""
    if not expiry_due(request, now):
        return request
    return replace(request, status="expired", decided_at=request.decided_at or now)


def can_consume(
    request: ApprovalRequest, identity: str, connection: str, key: str, now: float
) -> bool:
    """Whether this statement may run now on the strength of ``request`` (once)."""
    return (
        request.kind == "statement"
        and request.status == "approved"
        and request.requester == identity
        and request.connection == connection
        and request.request_key == key
        and request.approved_until is not None
        and now < request.approved_until
    )


def consume(request: ApprovalRequest, now: float) -> ApprovalRequest:
    return replace(request, status="used", used_at=now)


def withdraw(request: ApprovalRequest, now: float, requester: str | None = None) -> ApprovalRequest:
    """The request withdrawn by its requester (a waiting client gave up); raises ReviewRefused."""
    if requester is not None and not _same_name(requester, request.requester):
        raise ReviewRefused("not_requester", f"only {request.requester} can withdraw {request.id}")
    if request.status != "pending":
        raise ReviewRefused("not_pending", f"request {request.id} is {request.status}, not pending")
    return replace(request, status="withdrawn", decided_at=now)
