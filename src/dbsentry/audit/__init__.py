"""The tamper-evident audit trail: records, hash-chained stores, group commit, verify, query.

The proxy appends to this node's log with ``AuditLog`` (``audit.appender``); the store from
``open_store`` is the search index built from the logs; the CLI uses ``audit`` and
``report`` from ``dbsentry.audit.cli``.
"""

from typing import TYPE_CHECKING

from dbsentry.lazy import exports

if TYPE_CHECKING:
    from dbsentry.audit.appender import AuditLog, AuditUnavailable
    from dbsentry.audit.config import AuditConfig
    from dbsentry.audit.keys import (
        Checkpoint,
        KeyRing,
        Signer,
        load_or_create_signing_key,
        load_public_key,
    )
    from dbsentry.audit.records import (
        ApprovalRecord,
        CompletionRecord,
        Record,
        SessionEvent,
        StatementRecord,
        SystemEvent,
        extract_correlation,
        prepare_params,
        redact_literals,
    )
    from dbsentry.audit.store import AuditStore, AuditStoreError, SearchFilter, open_store
    from dbsentry.audit.verify import (
        ArchiveResult,
        AuditVerification,
        Problem,
        VerifyResult,
        archive,
        archive_log,
        verify,
        verify_all,
        verify_archive,
        verify_log,
    )


__all__ = [
    "ApprovalRecord",
    "ArchiveResult",
    "AuditConfig",
    "AuditLog",
    "AuditStore",
    "AuditStoreError",
    "AuditUnavailable",
    "AuditVerification",
    "Checkpoint",
    "CompletionRecord",
    "KeyRing",
    "Problem",
    "Record",
    "SearchFilter",
    "SessionEvent",
    "Signer",
    "StatementRecord",
    "SystemEvent",
    "VerifyResult",
    "archive",
    "archive_log",
    "extract_correlation",
    "load_or_create_signing_key",
    "load_public_key",
    "open_store",
    "prepare_params",
    "redact_literals",
    "verify",
    "verify_all",
    "verify_archive",
    "verify_log",
]

if not TYPE_CHECKING:  # imported when first used (dbsentry/lazy.py)
    __getattr__ = exports(
        __name__,
        {
            "appender": (
                "AuditLog",
                "AuditUnavailable",
            ),
            "config": ("AuditConfig",),
            "keys": (
                "Checkpoint",
                "KeyRing",
                "Signer",
                "load_or_create_signing_key",
                "load_public_key",
            ),
            "records": (
                "ApprovalRecord",
                "CompletionRecord",
                "Record",
                "SessionEvent",
                "StatementRecord",
                "SystemEvent",
                "extract_correlation",
                "prepare_params",
                "redact_literals",
            ),
            "store": (
                "AuditStore",
                "AuditStoreError",
                "SearchFilter",
                "open_store",
            ),
            "verify": (
                "ArchiveResult",
                "AuditVerification",
                "Problem",
                "VerifyResult",
                "archive",
                "archive_log",
                "verify",
                "verify_all",
                "verify_archive",
                "verify_log",
            ),
        },
    )
