"""The audit record of a tool call: the proxy's own statement record, found by the call id
the statement carried (``mcp_call`` in its correlation), with the decision the proxy took."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dbsentry.audit.query import search
from dbsentry.audit.store import SearchFilter

if TYPE_CHECKING:
    from dbsentry.audit.store import AuditStore

log = logging.getLogger("dbsentry.agents")

#: How far back a call's record is looked for (the record is written before the statement runs).
WINDOW_SECONDS = 600.0


class AuditLookup:
    """Finds statement records in the search index, brought up to date with the log first."""

    def __init__(self, open_store: Callable[[], AuditStore], catch_up: Callable[[AuditStore], None]) -> None:
        self._open = open_store
        self._catch_up = catch_up
        self._lock = threading.Lock()
        self._store: AuditStore | None = None

    def find(self, identity: str, run_id: str, call_id: str) -> dict[str, Any] | None:
        """Blocking (the index and the log): call it in a worker thread."""
        with self._lock:
            try:
                if self._store is None:
                    self._store = self._open()
                self._catch_up(self._store)
                flt = SearchFilter(identity=identity, run=run_id, since=time.time() - WINDOW_SECONDS)
                for row in search(self._store, flt, limit=50, newest_first=True):
                    if row["correlation"].get("mcp_call") == call_id:
                        return {
                            "record_id": row["id"],
                            "seq": row["seq"],
                            "decision": row["decision"],
                            "rules": row["rules"],
                            "approval_id": row["approval_id"],
                            "masked_columns": row["masked_columns"],
                        }
            except Exception as err:  # the answer says the record was not found; the call stands
                log.warning("MCP: audit record not looked up: %s", err)
        return None

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None
