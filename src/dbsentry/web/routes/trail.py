"""The API's routes for the audit trail's own state and verification."""

from __future__ import annotations

import dataclasses
from typing import Any

from fastapi import APIRouter, Request

from dbsentry.audit.query import iso
from dbsentry.web.api import (
    Auditor,
    auditor,
)
from dbsentry.web.service import WebServices


def add_routes(r: APIRouter, svc: WebServices) -> None:
    ctx = svc.ctx
    audit = auditor(svc)

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
