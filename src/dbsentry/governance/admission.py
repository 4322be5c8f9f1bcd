"""Admission of statements that need approval: which approval each statement runs under.

A string of statements (several Queries in one chunk, a pipeline of Executes) is admitted
all or none: every statement that needs approval must have its own, and the approvals are
used together (``ApprovalStore.consume_all``), so one refused statement never burns the
approval of another.  Each statement's audit records then name its own approval.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

R = TypeVar("R")


def approvals_by_record(records_per_ask: Sequence[Sequence[str]], approval_ids: Sequence[str]) -> dict[str, str]:
    """Record id -> the id of the approval its statement runs under (``approval_ids[i]``
    is the one used for the statement whose records are ``records_per_ask[i]``)."""
    if len(records_per_ask) != len(approval_ids):
        raise ValueError("one approval per statement that needs one")
    return {rid: aid for rids, aid in zip(records_per_ask, approval_ids, strict=True) for rid in rids}


def stamp_approved(records: Sequence[R], approvals: Mapping[str, str]) -> list[R]:
    """The statement records of approved statements (those that waited for approval:
    ``decision == "require_approval"``), marked ``approved`` with their own approval;
    every other record as it is."""
    out: list[R] = []
    for r in records:
        rec: Any = r
        if getattr(rec, "decision", None) == "require_approval" and getattr(rec, "id", None) in approvals:
            r = dataclasses.replace(rec, approval_id=approvals[rec.id], decision="approved")
        out.append(r)
    return out
