"""Approvals of risky statements and just-in-time access, routed to the right reviewers.

The proxy uses :class:`Approvals` (``service.py``) over a store from
:func:`open_approval_store`; the command line adds the ``approvals`` and ``access`` groups
from ``dbsentry.approvals.cli``.  The rules of review and use live in ``rules.py``.
"""

from typing import TYPE_CHECKING

from dbsentry.lazy import exports

if TYPE_CHECKING:
    from dbsentry.approvals.config import (
        AccessConfig,
        AccessRoute,
        ApprovalsConfig,
        ModeOverride,
        WebhookConfig,
    )
    from dbsentry.approvals.model import (
        ApprovalRequest,
        FactsSummary,
        Grant,
        Review,
        Reviewed,
        access_request,
        granted_connections,
        normalize_statement,
        statement_key,
        statement_request,
        summarize_facts,
        with_grants,
    )
    from dbsentry.approvals.notify import Notifier, sign, verify_signature
    from dbsentry.approvals.rules import ReviewRefused
    from dbsentry.approvals.service import Approvals, Gate
    from dbsentry.approvals.store import ApprovalStore, ApprovalStoreError, open_approval_store


__all__ = [
    "AccessConfig",
    "AccessRoute",
    "ApprovalRequest",
    "ApprovalStore",
    "ApprovalStoreError",
    "Approvals",
    "ApprovalsConfig",
    "FactsSummary",
    "Gate",
    "Grant",
    "ModeOverride",
    "Notifier",
    "Review",
    "ReviewRefused",
    "Reviewed",
    "WebhookConfig",
    "access_request",
    "granted_connections",
    "normalize_statement",
    "open_approval_store",
    "sign",
    "statement_key",
    "statement_request",
    "summarize_facts",
    "verify_signature",
    "with_grants",
]

if not TYPE_CHECKING:  # imported when first used (dbsentry/lazy.py)
    __getattr__ = exports(
        __name__,
        {
            "config": (
                "AccessConfig",
                "AccessRoute",
                "ApprovalsConfig",
                "ModeOverride",
                "WebhookConfig",
            ),
            "model": (
                "ApprovalRequest",
                "FactsSummary",
                "Grant",
                "Review",
                "Reviewed",
                "access_request",
                "granted_connections",
                "normalize_statement",
                "statement_key",
                "statement_request",
                "summarize_facts",
                "with_grants",
            ),
            "notify": (
                "Notifier",
                "sign",
                "verify_signature",
            ),
            "rules": ("ReviewRefused",),
            "service": (
                "Approvals",
                "Gate",
            ),
            "store": (
                "ApprovalStore",
                "ApprovalStoreError",
                "open_approval_store",
            ),
        },
    )
