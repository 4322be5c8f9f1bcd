"""Which approval each statement of a batch runs under (governance.admission)."""

from __future__ import annotations

import pytest

from dbsentry.audit.records import CompletionRecord, StatementRecord
from dbsentry.governance.admission import approvals_by_record, stamp_approved


def _statement(rid: str, decision: str = "require_approval") -> StatementRecord:
    return StatementRecord(
        id=rid, decision=decision, statement=f"update t{rid}", session_id="s1", identity="alice", identity_kind="person"
    )


def test_each_statement_gets_its_own_approval() -> None:
    records = [_statement("r1"), _statement("r2"), _statement("r3", "allow")]
    approvals = approvals_by_record([("r1",), ("r2",)], ["apr_a", "apr_b"])
    stamped = stamp_approved(records, approvals)
    assert [(r.id, getattr(r, "decision", None), getattr(r, "approval_id", None)) for r in stamped] == [
        ("r1", "approved", "apr_a"),
        ("r2", "approved", "apr_b"),
        ("r3", "allow", None),
    ]


def test_other_records_pass_unchanged() -> None:
    done = CompletionRecord(id="c1", statement_id="r1", session_id="s1")
    assert stamp_approved([done], {"c1": "apr_a"}) == [done]


def test_one_approval_per_statement() -> None:
    with pytest.raises(ValueError):
        approvals_by_record([("r1",), ("r2",)], ["apr_a"])
