"""The search index: the nodes' audit logs copied into an ``AuditStore`` for searching.

The index is derived data.  ``catch_up`` copies what a node's log holds beyond the
index's cursor for that node, in batches, each batch and the cursor in one transaction;
several indexers (the proxy's follower thread, a CLI command that reads the index) may
run at once: what one has indexed the others skip.  ``reindex`` rebuilds it from the
logs.  ``audit verify`` checks every index row against the log (``verify_index``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from dbsentry.audit.log import LogRecord, LogTailer, list_nodes
from dbsentry.audit.store import AuditStore, AuditStoreError, IndexRow, columns_from_payload

log = logging.getLogger("dbsentry.audit")
BATCH = 1000


def _rows(records: Iterator[LogRecord]) -> Iterator[list[IndexRow]]:
    batch: list[IndexRow] = []
    for r in records:
        try:
            columns = columns_from_payload(r.payload)
        except ValueError as err:  # verify reports it; the index cannot show it
            log.error("audit log record %s/%d cannot be indexed: %s", r.node, r.seq, err)
            continue
        batch.append(IndexRow(r.seq, r.prev_hash, r.hash, r.payload, columns))
        if len(batch) >= BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def catch_up(
    store: AuditStore,
    log_dir: Path,
    node: str,
    upto: int | None = None,
    tailer: LogTailer | None = None,
    after: int | None = None,
) -> int:
    """Index ``node``'s log up to seq ``upto`` (all of it: None) from ``after`` (default:
    the index's cursor); returns the cursor after."""
    cursor = store.index_cursor(node) if after is None else after
    if upto is not None and upto <= cursor:
        return cursor
    reader = tailer if tailer is not None else LogTailer(Path(log_dir) / node)
    for batch in _rows(reader.read(cursor, upto)):
        cursor = store.index_batch(node, batch)
    return cursor


def catch_up_all(store: AuditStore, log_dir: Path) -> None:
    """Index every node's log under ``log_dir``."""
    for node in list_nodes(Path(log_dir)):
        catch_up(store, log_dir, node)


def reindex(store: AuditStore, log_dir: Path, node: str | None = None) -> tuple[int, int]:
    """Rebuild the index of ``node``'s log (every log under ``log_dir``: None): (rows
    deleted, rows indexed)."""
    dropped = store.drop_index(node)
    nodes = [node] if node is not None else list_nodes(Path(log_dir))
    for n in nodes:
        catch_up(store, log_dir, n)
    return dropped, sum(1 for n in nodes for _ in store.iter_index(n))


@dataclass(slots=True)
class IndexFollower:
    """A thread that keeps the index up to date with this node's log while the proxy runs:
    every ``interval`` seconds (records are searchable within about that long; a search
    from the CLI catches up by itself), and at once when woken (closing)."""

    store: AuditStore
    log_dir: Path
    node: str
    durable_seq: Callable[[], int]
    wakeup: threading.Event
    interval: float = 0.25
    cursor: int | None = None
    errors: int = 0
    _stop: bool = False
    _thread: threading.Thread | None = None
    last_error: str | None = field(default=None)
    _tailer: LogTailer | None = None

    def start(self) -> None:
        self._tailer = LogTailer(Path(self.log_dir) / self.node)
        self._thread = threading.Thread(target=self._run, name="dbsentry-audit-index", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            self.wakeup.wait(self.interval)
            self.step()

    def step(self) -> None:
        try:
            self.cursor = catch_up(self.store, self.log_dir, self.node, self.durable_seq(), self._tailer, self.cursor)
            self.last_error = None
        except (AuditStoreError, OSError) as err:
            self.errors += 1
            self.cursor = None  # read it again
            if self.last_error is None:
                log.warning("audit index not updated (retrying): %s", err)
            self.last_error = str(err)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop = True
        self.wakeup.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.step()  # what became durable last


class CatchUp:
    """Brings the index up to date with the logs before a reader in the proxy's process
    (the console, the API) reads it, so that a statement is found as soon as its client
    has its result; the helper process's indexer does the rest within 250 ms.  This node's
    log is indexed up to what is durable, other logs (the tools log, other nodes' on a
    shared directory) up to their end.  At most every ``min_interval`` seconds; thread-safe."""

    def __init__(self, log_dir: Path, node: str, durable_seq: Callable[[], int], min_interval: float = 0.05) -> None:
        self.log_dir = Path(log_dir)
        self.node = node
        self.durable_seq = durable_seq
        self.min_interval = min_interval
        self._tailers: dict[str, LogTailer] = {}
        self._lock = threading.Lock()
        self._last = 0.0

    def __call__(self, store: AuditStore) -> None:
        now = time.monotonic()
        if now - self._last < self.min_interval:
            return
        with self._lock:
            if now - self._last < self.min_interval:
                return
            self._last = now
            try:
                for node in list_nodes(self.log_dir):
                    tailer = self._tailers.get(node)
                    if tailer is None:
                        tailer = self._tailers[node] = LogTailer(self.log_dir / node)
                    upto = self.durable_seq() if node == self.node else None
                    catch_up(store, self.log_dir, node, upto, tailer)
            except (AuditStoreError, OSError) as err:
                log.warning("audit index not brought up to date before a read: %s", err)
