"""The embedded audit store: one SQLite file in WAL mode with ``synchronous=FULL``.

A commit returns only after the WAL is fsync'd, so a committed record survives a crash or
power loss.  With ``fsync=False`` (``audit.durability: write``) it is ``synchronous=NORMAL``:
a commit returns once the WAL is written to the operating system, which survives a crash
of the proxy but not of the OS.  One process appends (the proxy's writer thread); readers open their own
connections and never block it.
"""

from __future__ import annotations

import sqlite3
import threading
import time as _time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import orjson

from dbsentry.audit.keys import Checkpoint, Signer
from dbsentry.audit.store import (
    GENESIS_HASH,
    AuditStore,
    AuditStoreError,
    ChainPoint,
    Dialect,
    EncodedRecord,
    IndexRow,
    StoredRecord,
    link,
)

_T = TypeVar("_T")

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL,
    time REAL NOT NULL,
    type TEXT NOT NULL,
    session_id TEXT,
    identity TEXT,
    identity_kind TEXT,
    connection TEXT,
    environment TEXT,
    decision TEXT,
    command TEXT,
    ref TEXT,
    tables TEXT NOT NULL,
    payload TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_time ON records (time);
CREATE INDEX IF NOT EXISTS records_ref ON records (ref) WHERE ref IS NOT NULL;
CREATE TABLE IF NOT EXISTS chain_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL
);
INSERT OR IGNORE INTO chain_head VALUES (1, 0, '{GENESIS_HASH}');
INSERT OR IGNORE INTO meta VALUES ('anchor_seq', '0'), ('anchor_hash', '{GENESIS_HASH}'),
    ('schema_version', '1');
CREATE TABLE IF NOT EXISTS checkpoints (
    id INTEGER PRIMARY KEY,
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL,
    time REAL NOT NULL,
    kind TEXT NOT NULL,
    key_id TEXT NOT NULL,
    signature TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS checkpoints_seq ON checkpoints (seq);
CREATE TRIGGER IF NOT EXISTS records_append_only BEFORE UPDATE ON records
BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
CREATE TABLE IF NOT EXISTS log_cursor (node TEXT PRIMARY KEY, seq INTEGER NOT NULL);
"""

# Version 2: the store is also the search index of the nodes' audit logs.
_V2 = """
ALTER TABLE records ADD COLUMN node TEXT;
ALTER TABLE records ADD COLUMN node_seq INTEGER;
CREATE UNIQUE INDEX IF NOT EXISTS records_node_seq ON records (node, node_seq) WHERE node IS NOT NULL;
UPDATE meta SET value = '2' WHERE key = 'schema_version';
"""

# Version 3: the index follower inserts thousands of rows a second, and each index of the
# table costs every insert; half the rows are completions, which searches find only
# through ``ref``.  So an index leaves out the rows no query asks it for: completions
# have no identity (``identity = ?`` implies IS NOT NULL), sessions are searched for
# statements only (``s.type = 'statement'`` is in every search), a type is looked up for
# other types than completions (``types_clause`` repeats the WHERE below when it can), and
# record ids are looked up (``existing_ids``) in the store's own chain only.
_V3_INDEXES = """
CREATE UNIQUE INDEX IF NOT EXISTS records_chain_id ON records (id) WHERE node IS NULL;
CREATE INDEX IF NOT EXISTS records_type_time_nc ON records (type, time) WHERE type <> 'completion';
CREATE INDEX IF NOT EXISTS records_identity_nn ON records (identity, time) WHERE identity IS NOT NULL;
CREATE INDEX IF NOT EXISTS records_statement_session ON records (session_id) WHERE type = 'statement';
DROP INDEX IF EXISTS records_id;
DROP INDEX IF EXISTS records_type_time;
DROP INDEX IF EXISTS records_identity;
DROP INDEX IF EXISTS records_session;
UPDATE meta SET value = '3' WHERE key = 'schema_version';
"""
_V3_NAMES = frozenset({"records_chain_id", "records_type_time_nc", "records_identity_nn", "records_statement_session"})
_MIGRATION_WAIT_MS = 120_000
_V2_NAMES = frozenset({"records_id", "records_type_time", "records_identity", "records_session"})

_COLUMNS = (
    "seq, prev_hash, hash, id, time, type, session_id, identity, identity_kind, connection, "
    "environment, decision, command, ref, tables, payload, node, node_seq"
)


def _row_to_stored(row: Sequence[Any]) -> StoredRecord:
    tables = orjson.loads(row[14])
    return StoredRecord(
        seq=row[0],
        prev_hash=row[1],
        hash=row[2],
        record=EncodedRecord(
            payload=row[15].encode("utf-8"),
            id=row[3],
            time=row[4],
            type=row[5],
            session_id=row[6],
            identity=row[7],
            identity_kind=row[8],
            connection=row[9],
            environment=row[10],
            decision=row[11],
            command=row[12],
            ref=row[13],
            tables=tuple(tables) if isinstance(tables, list) else (),
        ),
        node=row[16],
        node_seq=row[17],
    )


def _types_clause(types: Sequence[str]) -> tuple[str, list[Any]]:
    clause = f"type IN ({','.join('?' * len(types))})"
    if "completion" not in types:
        clause += " AND type <> 'completion'"  # the WHERE of records_type_time_nc, word for word
    return clause, list(types)


_DIALECT = Dialect(
    mark="?",
    records="records",
    columns=_COLUMNS,
    table_clause="EXISTS (SELECT 1 FROM json_each(s.tables) t WHERE t.value = ? OR t.value LIKE ? ESCAPE '\\')",
    text_clause="json_extract(s.payload, '$.statement') LIKE ? ESCAPE '\\'",
    types_clause=_types_clause,
    cursors="log_cursor",
    checkpoints="checkpoints",
)


class SQLiteStore(AuditStore):
    dialect = _DIALECT

    def __init__(self, path: Path, *, busy_timeout_ms: int = 5000, fsync: bool = True) -> None:
        self.path = Path(path)
        self._synchronous = "FULL" if fsync else "NORMAL"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._busy_timeout_ms = busy_timeout_ms
        self._lock = threading.Lock()
        try:
            self._conn = self._connect()
            # Another process may be building the indexes of a migration (seconds on a
            # large index): wait for it rather than fail to open.
            self._conn.execute(f"PRAGMA busy_timeout={max(int(busy_timeout_ms), _MIGRATION_WAIT_MS)}")
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.executescript(_SCHEMA)
            columns = {r[1] for r in self._conn.execute("PRAGMA table_info(records)")}
            if "node" not in columns:
                self._conn.executescript("BEGIN IMMEDIATE;" + _V2 + "COMMIT;")
            indexes = {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
            if not indexes >= _V3_NAMES or indexes & _V2_NAMES:
                self._conn.executescript("BEGIN IMMEDIATE;" + _V3_INDEXES + "COMMIT;")
            self._conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        except sqlite3.Error as err:
            raise AuditStoreError(f"cannot open audit database {self.path}: {err}") from err

    def _connect(self, *, read_only: bool = False) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path,
            timeout=self._busy_timeout_ms / 1000,
            isolation_level=None,
            check_same_thread=False,
        )
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_ms)}")
        if read_only:
            conn.execute("PRAGMA query_only=1")
        return conn

    def describe(self) -> str:
        return f"sqlite:{self.path}"

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # --- writing ---------------------------------------------------------------------------

    def append_batch(self, records: Sequence[EncodedRecord]) -> list[int]:
        if not records:
            return []
        with self._lock:
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    row = conn.execute("SELECT seq, hash FROM chain_head WHERE id = 1").fetchone()
                    linked = link(ChainPoint(row[0], row[1]), records)
                    conn.executemany(
                        "INSERT INTO records (seq, prev_hash, hash, id, time, type, session_id, "
                        "identity, identity_kind, connection, environment, decision, command, ref, "
                        "tables, payload) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                        [
                            (
                                seq,
                                prev,
                                h,
                        *r.row(orjson.dumps(list(r.tables)).decode()),
                            )
                            for seq, prev, h, r in linked
                        ],
                    )
                    last = linked[-1]
                    conn.execute(
                        "UPDATE chain_head SET seq = ?, hash = ? WHERE id = 1", (last[0], last[2])
                    )
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as err:
                raise AuditStoreError(f"audit append failed ({self.describe()}): {err}") from err
        return [x[0] for x in linked]

    def _transaction(self, work: Callable[[sqlite3.Connection], _T], what: str) -> _T:
        with self._lock:
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    result = work(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as err:
                raise AuditStoreError(f"audit {what} failed ({self.describe()}): {err}") from err
        return result

    def index_cursor(self, node: str) -> int:
        row = self._one("SELECT seq FROM log_cursor WHERE node = ?", (node,))
        return int(row[0]) if row is not None else 0

    def index_batch(self, node: str, rows: Sequence[IndexRow]) -> int:
        def work(conn: sqlite3.Connection) -> int:
            got = conn.execute("SELECT seq FROM log_cursor WHERE node = ?", (node,)).fetchone()
            cursor = int(got[0]) if got is not None else 0
            todo = [r for r in rows if r.node_seq > cursor]
            if not todo:
                return cursor
            dumps = orjson.dumps
            conn.executemany(
                "INSERT INTO records (prev_hash, hash, id, time, type, session_id, identity, "
                "identity_kind, connection, environment, decision, command, ref, tables, payload, "
                "node, node_seq) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [x.values(node, dumps(x.columns[11]).decode()) for x in todo],
            )
            last = todo[-1].node_seq
            conn.execute(
                "INSERT INTO log_cursor VALUES (?, ?) ON CONFLICT (node) DO UPDATE SET seq = excluded.seq",
                (node, last),
            )
            return last

        return self._transaction(work, "index")

    def drop_index(self, node: str | None = None) -> int:
        def work(conn: sqlite3.Connection) -> int:
            if node is None:
                n = conn.execute("DELETE FROM records WHERE node IS NOT NULL").rowcount
                conn.execute("DELETE FROM log_cursor")
            else:
                n = conn.execute("DELETE FROM records WHERE node = ?", (node,)).rowcount
                conn.execute("DELETE FROM log_cursor WHERE node = ?", (node,))
            return int(n)

        return self._transaction(work, "reindex")

    def add_checkpoint(self, signer: Signer, kind: str = "periodic") -> Checkpoint | None:
        with self._lock:
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    seq, h = conn.execute(
                        "SELECT seq, hash FROM chain_head WHERE id = 1"
                    ).fetchone()
                    last = conn.execute("SELECT max(seq) FROM checkpoints").fetchone()[0]
                    if seq == 0 or (last is not None and last >= seq and kind == "periodic"):
                        conn.execute("ROLLBACK")
                        return None
                    cp = signer.sign(seq, h, _time.time(), kind)
                    self._insert_checkpoint(conn, cp)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as err:
                raise AuditStoreError(f"audit checkpoint failed: {err}") from err
        return cp

    @staticmethod
    def _insert_checkpoint(conn: sqlite3.Connection, cp: Checkpoint) -> None:
        conn.execute(
            "INSERT INTO checkpoints (seq, hash, time, kind, key_id, signature) VALUES (?,?,?,?,?,?)",
            (cp.seq, cp.hash, cp.time, cp.kind, cp.key_id, cp.signature),
        )

    def truncate_prefix(self, checkpoint: Checkpoint) -> int:
        with self._lock:
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    row = conn.execute(
                        "SELECT hash FROM records WHERE seq = ?", (checkpoint.seq,)
                    ).fetchone()
                    if row is None or row[0] != checkpoint.hash:
                        raise AuditStoreError(f"record {checkpoint.seq} is not the archived one")
                    self._insert_checkpoint(conn, checkpoint)
                    conn.execute(
                        "UPDATE meta SET value = ? WHERE key = 'anchor_seq'", (str(checkpoint.seq),)
                    )
                    conn.execute(
                        "UPDATE meta SET value = ? WHERE key = 'anchor_hash'", (checkpoint.hash,)
                    )
                    n = conn.execute(
                        "DELETE FROM records WHERE seq <= ?", (checkpoint.seq,)
                    ).rowcount
                    conn.execute("DELETE FROM checkpoints WHERE seq < ?", (checkpoint.seq,))
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as err:
                raise AuditStoreError(f"audit archive failed: {err}") from err
        return int(n)

    # --- reading ---------------------------------------------------------------------------

    def _query(self, sql: str, params: Sequence[Any] = ()) -> Iterator[Sequence[Any]]:
        conn = self._connect(read_only=True)
        try:
            cur = conn.execute(sql, params)
            while True:
                rows = cur.fetchmany(500)
                if not rows:
                    break
                yield from rows
        except sqlite3.Error as err:
            raise AuditStoreError(f"audit read failed ({self.describe()}): {err}") from err
        finally:
            conn.close()

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Sequence[Any] | None:
        return next(iter(self._query(sql, params)), None)

    def head(self) -> ChainPoint:
        row = self._one("SELECT seq, hash FROM chain_head WHERE id = 1")
        assert row is not None
        return ChainPoint(row[0], row[1])

    def anchor(self) -> ChainPoint:
        rows: dict[str, str] = {
            r[0]: r[1]
            for r in self._query(
                "SELECT key, value FROM meta WHERE key IN ('anchor_seq', 'anchor_hash')"
            )
        }
        return ChainPoint(int(rows.get("anchor_seq", 0)), rows.get("anchor_hash", GENESIS_HASH))

    def existing_ids(self, ids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for i in range(0, len(ids), 500):
            chunk = list(ids[i : i + 500])
            marks = ",".join("?" * len(chunk))
            found.update(
                r[0] for r in self._query(f"SELECT id FROM records WHERE id IN ({marks}) AND node IS NULL", chunk)
            )
        return found

    @staticmethod
    def _stored(row: Sequence[Any]) -> StoredRecord:
        return _row_to_stored(row)


