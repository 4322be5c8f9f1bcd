"""The audit store for several proxy nodes: a PostgreSQL schema (``dbsentry_audit``).

All nodes append to one linear chain: the append transaction locks the single
``chain_head`` row (``SELECT ... FOR UPDATE``), numbers and hashes its records after it,
inserts them and moves the head, so concurrent appenders queue on that row.  The schema is
created and migrated on first connection, under an advisory lock so nodes starting together
do not race.  With the server's default ``synchronous_commit = on`` a commit is durable.
"""

from __future__ import annotations

import contextlib
import threading
import time as _time
import uuid
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import psycopg

from dbsentry import pgconn
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

# Each entry migrates from version i to i+1.  "@S" is the schema name (validated identifier).
_MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE @S.records (
            seq bigint PRIMARY KEY,
            id text NOT NULL UNIQUE,
            time double precision NOT NULL,
            type text NOT NULL,
            session_id text,
            identity text,
            identity_kind text,
            connection text,
            environment text,
            decision text,
            command text,
            ref text,
            tables text[] NOT NULL,
            payload text NOT NULL,
            prev_hash text NOT NULL,
            hash text NOT NULL)""",
        "CREATE INDEX records_time ON @S.records (time)",
        "CREATE INDEX records_type_time ON @S.records (type, time)",
        "CREATE INDEX records_identity ON @S.records (identity, time)",
        "CREATE INDEX records_session ON @S.records (session_id)",
        "CREATE INDEX records_ref ON @S.records (ref) WHERE ref IS NOT NULL",
        "CREATE INDEX records_tables ON @S.records USING gin (tables)",
        """CREATE TABLE @S.chain_head (
            id int PRIMARY KEY CHECK (id = 1), seq bigint NOT NULL, hash text NOT NULL)""",
        f"INSERT INTO @S.chain_head VALUES (1, 0, '{GENESIS_HASH}')",
        f"""INSERT INTO @S.meta VALUES ('anchor_seq', '0'), ('anchor_hash', '{GENESIS_HASH}')""",
        """CREATE TABLE @S.checkpoints (
            id bigserial PRIMARY KEY, seq bigint NOT NULL, hash text NOT NULL,
            time double precision NOT NULL, kind text NOT NULL, key_id text NOT NULL,
            signature text NOT NULL)""",
        "CREATE INDEX checkpoints_seq ON @S.checkpoints (seq)",
        """CREATE FUNCTION @S.forbid_update() RETURNS trigger LANGUAGE plpgsql AS
            $$BEGIN RAISE EXCEPTION 'audit records are append-only'; END$$""",
        """CREATE TRIGGER records_append_only BEFORE UPDATE ON @S.records
            FOR EACH ROW EXECUTE FUNCTION @S.forbid_update()""",
    ],
    # The store is also the search index of the nodes' audit logs: their rows are numbered
    # by a sequence (each node's chain lives in its log), one cursor row per node.
    [
        "ALTER TABLE @S.records ADD COLUMN node text, ADD COLUMN node_seq bigint",
        "CREATE UNIQUE INDEX records_node_seq ON @S.records (node, node_seq) WHERE node IS NOT NULL",
        "CREATE SEQUENCE @S.records_seq",
        "SELECT setval('@S.records_seq', GREATEST((SELECT max(seq) FROM @S.records), 0) + 1, false)",
        "ALTER TABLE @S.records ALTER COLUMN seq SET DEFAULT nextval('@S.records_seq')",
        "CREATE TABLE @S.log_cursor (node text PRIMARY KEY, seq bigint NOT NULL)",
    ],
]

_COLUMNS = (
    "seq, prev_hash, hash, id, time, type, session_id, identity, identity_kind, connection, "
    "environment, decision, command, ref, tables, payload, node, node_seq"
)


def _row_to_stored(row: Sequence[Any]) -> StoredRecord:
    return StoredRecord(
        seq=int(row[0]),
        prev_hash=row[1],
        hash=row[2],
        record=EncodedRecord(
            payload=row[15].encode("utf-8"),
            id=row[3],
            time=float(row[4]),
            type=row[5],
            session_id=row[6],
            identity=row[7],
            identity_kind=row[8],
            connection=row[9],
            environment=row[10],
            decision=row[11],
            command=row[12],
            ref=row[13],
            tables=tuple(row[14] or ()),
        ),
        node=row[16],
        node_seq=int(row[17]) if row[17] is not None else None,
    )


_DIALECT = Dialect(
    mark="%s",
    records="@S.records",
    columns=_COLUMNS,
    table_clause="(s.tables @> ARRAY[%s]::text[] OR EXISTS (SELECT 1 FROM unnest(s.tables) t WHERE t LIKE %s))",
    text_clause="(s.payload::jsonb ->> 'statement') ILIKE %s",
    types_clause=lambda types: ("type = ANY(%s)", [list(types)]),
    cursors="@S.log_cursor",
    checkpoints="@S.checkpoints",
)


class PostgresStore(AuditStore):
    dialect = _DIALECT

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "dbsentry_audit",
        connect_timeout: int = 5,
        statement_timeout_ms: int = 10_000,
        fsync: bool = True,
    ) -> None:
        self._dsn = dsn
        self._fsync = fsync
        self.schema = schema
        self._connect_timeout = connect_timeout
        self._statement_timeout_ms = statement_timeout_ms
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        self._migrated = False

    def _sql(self, text: str) -> str:
        return text.replace("@S", self.schema)

    def describe(self) -> str:
        return pgconn.describe(self._dsn, self.schema)

    def _connect(self) -> psycopg.Connection[Any]:
        conn = pgconn.connect(
            self._dsn,
            "dbsentry-audit",
            connect_timeout=self._connect_timeout,
            statement_timeout_ms=self._statement_timeout_ms,
        )
        if not self._fsync:
            # durability "write": a commit returns once the server has it, before its WAL
            # is flushed (a crash of the audit database itself can lose the last ones).
            conn.execute("SET synchronous_commit = off")
        return conn

    def _migrate(self, conn: psycopg.Connection[Any]) -> None:
        lock_key = zlib.crc32(f"dbsentry.audit.migrate:{self.schema}".encode())
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key,))
            conn.execute(self._sql("CREATE SCHEMA IF NOT EXISTS @S"))
            conn.execute(
                self._sql(
                    "CREATE TABLE IF NOT EXISTS @S.meta (key text PRIMARY KEY, value text NOT NULL)"
                )
            )
            row = conn.execute(
                self._sql("SELECT value FROM @S.meta WHERE key = 'schema_version'")
            ).fetchone()
            version = int(row[0]) if row else 0
            if version > len(_MIGRATIONS):
                raise AuditStoreError(
                    f"audit schema {self.schema} is version {version}, newer than this dbsentry knows"
                )
            for statements in _MIGRATIONS[version:]:
                for stmt in statements:
                    conn.execute(self._sql(stmt))
            conn.execute(
                self._sql(
                    "INSERT INTO @S.meta VALUES ('schema_version', %s) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
                ),
                (str(len(_MIGRATIONS)),),
            )

    def _writer(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            conn = self._connect()
            if not self._migrated:
                try:
                    self._migrate(conn)
                except BaseException:
                    conn.close()
                    raise
                self._migrated = True
            self._conn = conn
        return self._conn

    def _drop_writer(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    def migrate(self) -> None:
        """Create or upgrade the schema now (it is done on first use otherwise)."""
        with self._lock:
            try:
                self._writer()
            except psycopg.Error as err:
                self._drop_writer()
                raise AuditStoreError(
                    f"audit store unavailable ({self.describe()}): {err}"
                ) from err

    def close(self) -> None:
        with self._lock:
            self._drop_writer()

    # --- writing ---------------------------------------------------------------------------

    def append_batch(self, records: Sequence[EncodedRecord]) -> list[int]:
        if not records:
            return []
        with self._lock:
            try:
                conn = self._writer()
                with conn.transaction(), conn.cursor() as cur:
                    cur.execute(
                        self._sql("SELECT seq, hash FROM @S.chain_head WHERE id = 1 FOR UPDATE")
                    )
                    row = cur.fetchone()
                    assert row is not None
                    linked = link(ChainPoint(int(row[0]), row[1]), records)
                    cur.executemany(
                        self._sql(
                            "INSERT INTO @S.records (seq, prev_hash, hash, id, time, type, session_id, "
                            "identity, identity_kind, connection, environment, decision, command, ref, "
                            "tables, payload) VALUES "
                            "(%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s::text[],%s)"
                        ),
                        [
                            (
                                seq,
                                prev,
                                h,
                        *r.row(list(r.tables)),
                            )
                            for seq, prev, h, r in linked
                        ],
                    )
                    last = linked[-1]
                    cur.execute(
                        self._sql("UPDATE @S.chain_head SET seq = %s, hash = %s WHERE id = 1"),
                        (last[0], last[2]),
                    )
            except (psycopg.Error, OSError) as err:
                self._drop_writer()
                raise AuditStoreError(f"audit append failed ({self.describe()}): {err}") from err
        return [x[0] for x in linked]

    def _transaction(self, work: Callable[[psycopg.Cursor[Any]], _T], what: str) -> _T:
        with self._lock:
            try:
                conn = self._writer()
                with conn.transaction(), conn.cursor() as cur:
                    return work(cur)
            except (psycopg.Error, OSError) as err:
                self._drop_writer()
                raise AuditStoreError(f"audit {what} failed ({self.describe()}): {err}") from err

    def index_cursor(self, node: str) -> int:
        self.migrate()
        row = self._one("SELECT seq FROM @S.log_cursor WHERE node = %s", (node,))
        return int(row[0]) if row is not None else 0

    def index_batch(self, node: str, rows: Sequence[IndexRow]) -> int:
        def work(cur: psycopg.Cursor[Any]) -> int:
            # One row per node: indexers of different nodes never wait for each other.
            cur.execute(self._sql("INSERT INTO @S.log_cursor VALUES (%s, 0) ON CONFLICT DO NOTHING"), (node,))
            cur.execute(self._sql("SELECT seq FROM @S.log_cursor WHERE node = %s FOR UPDATE"), (node,))
            got = cur.fetchone()
            cursor = int(got[0]) if got is not None else 0
            todo = [r for r in rows if r.node_seq > cursor]
            if not todo:
                return cursor
            cur.executemany(
                self._sql(
                    "INSERT INTO @S.records (prev_hash, hash, id, time, type, session_id, identity, "
                    "identity_kind, connection, environment, decision, command, ref, tables, payload, "
                    "node, node_seq) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s::text[],%s,%s,%s)"
                ),
                [x.values(node, list(x.columns[11])) for x in todo],
            )
            last = todo[-1].node_seq
            cur.execute(self._sql("UPDATE @S.log_cursor SET seq = %s WHERE node = %s"), (last, node))
            return last

        return self._transaction(work, "index")

    def drop_index(self, node: str | None = None) -> int:
        def work(cur: psycopg.Cursor[Any]) -> int:
            if node is None:
                cur.execute(self._sql("DELETE FROM @S.records WHERE node IS NOT NULL"))
                n = cur.rowcount
                cur.execute(self._sql("DELETE FROM @S.log_cursor"))
            else:
                cur.execute(self._sql("DELETE FROM @S.records WHERE node = %s"), (node,))
                n = cur.rowcount
                cur.execute(self._sql("DELETE FROM @S.log_cursor WHERE node = %s"), (node,))
            return int(n)

        return self._transaction(work, "reindex")

    def add_checkpoint(self, signer: Signer, kind: str = "periodic") -> Checkpoint | None:
        with self._lock:
            try:
                conn = self._writer()
                with conn.transaction(), conn.cursor() as cur:
                    cur.execute(
                        self._sql("SELECT seq, hash FROM @S.chain_head WHERE id = 1 FOR UPDATE")
                    )
                    row = cur.fetchone()
                    assert row is not None
                    seq, h = int(row[0]), str(row[1])
                    cur.execute(self._sql("SELECT max(seq) FROM @S.checkpoints"))
                    last = cur.fetchone()
                    if seq == 0 or (
                        last and last[0] is not None and last[0] >= seq and kind == "periodic"
                    ):
                        return None
                    cp = signer.sign(seq, h, _time.time(), kind)
                    self._insert_checkpoint(cur, cp)
            except (psycopg.Error, OSError) as err:
                self._drop_writer()
                raise AuditStoreError(f"audit checkpoint failed: {err}") from err
        return cp

    def _insert_checkpoint(self, cur: psycopg.Cursor[Any], cp: Checkpoint) -> None:
        cur.execute(
            self._sql(
                "INSERT INTO @S.checkpoints (seq, hash, time, kind, key_id, signature) "
                "VALUES (%s,%s,%s,%s,%s,%s)"
            ),
            (cp.seq, cp.hash, cp.time, cp.kind, cp.key_id, cp.signature),
        )

    def truncate_prefix(self, checkpoint: Checkpoint) -> int:
        with self._lock:
            try:
                conn = self._writer()
                with conn.transaction(), conn.cursor() as cur:
                    cur.execute(self._sql("SELECT 1 FROM @S.chain_head WHERE id = 1 FOR UPDATE"))
                    cur.execute(
                        self._sql("SELECT hash FROM @S.records WHERE seq = %s"), (checkpoint.seq,)
                    )
                    row = cur.fetchone()
                    if row is None or row[0] != checkpoint.hash:
                        raise AuditStoreError(f"record {checkpoint.seq} is not the archived one")
                    self._insert_checkpoint(cur, checkpoint)
                    cur.execute(
                        self._sql("UPDATE @S.meta SET value = %s WHERE key = 'anchor_seq'"),
                        (str(checkpoint.seq),),
                    )
                    cur.execute(
                        self._sql("UPDATE @S.meta SET value = %s WHERE key = 'anchor_hash'"),
                        (checkpoint.hash,),
                    )
                    cur.execute(
                        self._sql("DELETE FROM @S.records WHERE seq <= %s"), (checkpoint.seq,)
                    )
                    n = cur.rowcount
                    cur.execute(
                        self._sql("DELETE FROM @S.checkpoints WHERE seq < %s"), (checkpoint.seq,)
                    )
            except (psycopg.Error, OSError) as err:
                self._drop_writer()
                raise AuditStoreError(f"audit archive failed: {err}") from err
        return int(n)

    # --- reading ---------------------------------------------------------------------------

    def _query(self, sql: str, params: Sequence[Any] = ()) -> Iterator[Sequence[Any]]:
        """Rows streamed through a server-side cursor on a connection of their own."""
        try:
            with (
                psycopg.connect(self._dsn, connect_timeout=self._connect_timeout) as conn,
                conn.cursor(name=f"dbsentry_audit_{uuid.uuid4().hex[:12]}") as cur,
            ):
                cur.itersize = 500
                cur.execute(self._sql(sql), params)
                yield from cur
        except psycopg.errors.UndefinedTable as err:
            raise AuditStoreError(f"no audit schema {self.schema} in {self.describe()}") from err
        except psycopg.Error as err:
            raise AuditStoreError(f"audit read failed ({self.describe()}): {err}") from err

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Sequence[Any] | None:
        try:
            with psycopg.connect(
                self._dsn, connect_timeout=self._connect_timeout, autocommit=True
            ) as conn:
                return conn.execute(self._sql(sql), params).fetchone()
        except psycopg.errors.UndefinedTable as err:
            raise AuditStoreError(f"no audit schema {self.schema} in {self.describe()}") from err
        except psycopg.Error as err:
            raise AuditStoreError(f"audit read failed ({self.describe()}): {err}") from err

    def head(self) -> ChainPoint:
        row = self._one("SELECT seq, hash FROM @S.chain_head WHERE id = 1")
        assert row is not None
        return ChainPoint(int(row[0]), row[1])

    def anchor(self) -> ChainPoint:
        row = self._one(
            "SELECT (SELECT value FROM @S.meta WHERE key = 'anchor_seq'), "
            "(SELECT value FROM @S.meta WHERE key = 'anchor_hash')"
        )
        if row is None or row[0] is None:
            return ChainPoint(0, GENESIS_HASH)
        return ChainPoint(int(row[0]), row[1])

    def existing_ids(self, ids: Sequence[str]) -> set[str]:
        if not ids:
            return set()
        return {
            r[0] for r in self._query("SELECT id FROM @S.records WHERE id = ANY(%s)", (list(ids),))
        }

    @staticmethod
    def _stored(row: Sequence[Any]) -> StoredRecord:
        return _row_to_stored(row)



    def drop_schema(self) -> None:
        """Remove the schema and everything in it (tests)."""
        with self._lock:
            self._drop_writer()
            with psycopg.connect(
                self._dsn, autocommit=True, connect_timeout=self._connect_timeout
            ) as conn:
                conn.execute(self._sql("DROP SCHEMA IF EXISTS @S CASCADE"))
