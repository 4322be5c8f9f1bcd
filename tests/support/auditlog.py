"""An audit log for tests that run the console without a proxy: records appended through
``AuditLog`` (no event loop: each append is written at once), the index caught up on read."""

from __future__ import annotations

from pathlib import Path

from dbsentry.audit.appender import AuditLog
from dbsentry.audit.index import catch_up_all
from dbsentry.audit.logwriter import LogFile
from dbsentry.audit.sqlite_store import SQLiteStore

NODE = "test-node"


def open_log(state_dir: Path) -> AuditLog:
    """A started ``AuditLog`` over ``state_dir``/audit-log/test-node (sync durability)."""
    audit = AuditLog(LogFile(state_dir / "audit-log", NODE), "sync")
    audit.start()
    return audit


def fresh_store(store_path: Path, state_dir: Path) -> SQLiteStore:
    """The SQLite index at ``store_path``, caught up with the logs first (as a reader does)."""
    store = SQLiteStore(store_path)
    catch_up_all(store, state_dir / "audit-log")
    return store
