"""Approval requests for tests: a pending statement request in a store, in one call."""

from __future__ import annotations

import time
from typing import Any

from dbsentry.approvals.model import ApprovalRequest, statement_request
from dbsentry.engines.postgres.sql.parse import tokens
from dbsentry.identity import Identity


def add_pending(
    store: Any,
    requester: str,
    sql: str,
    *,
    groups: tuple[str, ...] = ("analysts",),
    approvers: tuple[str, ...] = ("dba",),
    age_seconds: float = 0.0,
    **extra: Any,
) -> ApprovalRequest:
    """A pending request of ``requester`` for ``sql`` on connection ``prod`` (production),
    created ``age_seconds`` ago, for an hour; ``extra`` goes to ``statement_request``."""
    now = time.time() - age_seconds
    request = statement_request(
        identity=Identity(requester, frozenset(groups), "human", "t", "token"),
        connection="prod",
        environment="production",
        sql=sql,
        params=None,
        approvers=list(approvers),
        min_approvals=1,
        now=now,
        ttl_seconds=3600,
        validity_seconds=3600,
        **extra,
        lex=tokens,
    )
    stored, _ = store.create_or_get_pending(request, now)
    return stored  # type: ignore[no-any-return]
