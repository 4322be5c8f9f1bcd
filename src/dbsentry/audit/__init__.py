"""The tamper-evident audit trail: records, hash-chained stores, group commit, verify, query.

The proxy uses ``AuditWriter`` with a store from ``open_store``; the CLI uses ``audit`` and
``report`` from ``dbsentry.audit.cli``.
"""

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
    Problem,
    VerifyResult,
    archive,
    verify,
    verify_archive,
)
from dbsentry.audit.writer import AuditUnavailable, AuditWriter

__all__ = [
    "ApprovalRecord",
    "ArchiveResult",
    "AuditConfig",
    "AuditStore",
    "AuditStoreError",
    "AuditUnavailable",
    "AuditWriter",
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
    "extract_correlation",
    "load_or_create_signing_key",
    "load_public_key",
    "open_store",
    "prepare_params",
    "redact_literals",
    "verify",
    "verify_archive",
]
