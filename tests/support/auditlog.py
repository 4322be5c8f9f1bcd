"""An audit log for tests that run the console without a proxy: records appended through
``AuditLog`` (no event loop: each append is written at once), the index caught up on read.
Signed with the state directory's key, as the proxy signs (``audit verify`` requires it)."""

from __future__ import annotations

import threading
from pathlib import Path

from dbsentry.audit.appender import AuditLog
from dbsentry.audit.config import AuditConfig
from dbsentry.audit.index import catch_up_all
from dbsentry.audit.keys import Signer
from dbsentry.audit.logwriter import LogFile, append_from_tool
from dbsentry.audit.records import Record, payload_bytes
from dbsentry.audit.sqlite_store import SQLiteStore

NODE = "test-node"


def open_log(state_dir: Path) -> AuditLog:
    """A started ``AuditLog`` over ``state_dir``/audit-log/test-node (sync durability)."""
    audit = AuditLog(LogFile(state_dir / "audit-log", NODE, signer=_signer(state_dir)), "sync")
    audit.start()
    return audit


def _signer(state_dir: Path) -> Signer:
    return Signer.from_path(AuditConfig().signing_key_path(state_dir))


def fresh_store(store_path: Path, state_dir: Path) -> SQLiteStore:
    """The SQLite index at ``store_path``, caught up with the logs first (as a reader does)."""
    store = SQLiteStore(store_path)
    catch_up_all(store, state_dir / "audit-log")
    return store


class Indexer:
    """What the proxy's audit helper does for the index: catch it up with the logs, every
    ``interval`` seconds, in a thread (a context manager)."""

    def __init__(self, store_path: Path, state_dir: Path, interval: float = 0.1) -> None:
        self.store_path, self.log_dir, self.interval = store_path, state_dir / "audit-log", interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        store = SQLiteStore(self.store_path)
        try:
            while not self._stop.wait(self.interval):
                catch_up_all(store, self.log_dir)
        finally:
            store.close()

    def __enter__(self) -> Indexer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def append(state_dir: Path, *records: Record) -> None:
    """Append records as a command-line tool does (to the tools log), durable at return."""
    append_from_tool(state_dir / "audit-log", NODE, [payload_bytes(r) for r in records], _signer(state_dir))
