"""Approval events as audit records, and appending them from outside the proxy (the CLI)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from dbsentry.approvals.model import ApprovalRequest, Review
from dbsentry.audit.config import AuditConfig
from dbsentry.audit.keys import Signer
from dbsentry.audit.log import node_id
from dbsentry.audit.logwriter import append_from_tool
from dbsentry.audit.records import ApprovalRecord, payload_bytes
from dbsentry.audit.store import AuditStoreError

AuditEvent = Literal["requested", "approved", "denied", "expired", "revoked"]


def approval_record(
    request: ApprovalRequest,
    event: AuditEvent,
    *,
    review: Review | None = None,
    now: float | None = None,
) -> ApprovalRecord:
    """The audit record of one step of ``request``.

    For ``approved`` with more approvals still needed, ``decision`` stays empty: the record
    documents one reviewer's approval, not the outcome.  Access requests carry their target
    in ``statement`` (``ACCESS group dba FOR 7200s``).
    """
    decided = request.status in ("approved", "denied", "expired", "withdrawn", "used")
    if request.kind == "access":
        statement: str | None = f"ACCESS {request.target} FOR {request.validity_seconds:g}s"
    else:
        statement = request.statement
    return ApprovalRecord(
        approval_id=request.id,
        event=event,
        requester=request.requester,
        requester_kind=request.requester_kind,
        reviewer=None if review is None else review.reviewer,
        requested_at=request.created_at,
        decided_at=request.decided_at if decided else None,
        expires_at=request.approved_until if request.status == "approved" else request.expires_at,
        decision=request.status if decided else None,
        reason=request.reason,
        review_comment=None if review is None else review.reason,
        connection=request.connection,
        environment=request.environment,
        statement=statement,
        session_id=request.session_id,
        time=time.time() if now is None else now,
    )


def append_records(config: AuditConfig, state_dir: Path, records: Sequence[ApprovalRecord]) -> int:
    """Append records from a process that is not the proxy (the CLI, the demo) to the
    audit trail: this tool's own log (the proxy owns its node's), durable when this returns;
    the last seq.  Raises ``AuditStoreError`` on failure."""
    try:
        signer = Signer.from_path(config.signing_key_path(state_dir))
        return append_from_tool(
            config.log_path(state_dir), node_id(config.node, state_dir), [payload_bytes(r) for r in records], signer
        )
    except (OSError, ValueError) as err:
        raise AuditStoreError(f"audit log not written: {err}") from err
