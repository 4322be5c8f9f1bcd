"""The audit store interface and the hash chain both implementations share.

Every record is stored once, in order, with

    seq        1, 2, 3 ... without gaps (after an archive, counting on from the anchor)
    prev_hash  the hash of record seq-1 (the anchor's hash for the first; 64 zeros at genesis)
    hash       SHA-256(prev_hash (32 bytes) || seq (8 bytes, big-endian) || payload)

where ``payload`` is the record's canonical JSON (``records.canonical``).  A few fields are
copied out of the payload into indexed columns for searching; ``verify`` checks they agree
with the payload.  ``chain_head`` holds the last (seq, hash) and is updated in the same
transaction as every append, so it also serialises appenders.
"""

from __future__ import annotations

import abc
import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

from dbsentry.audit.keys import Checkpoint, Signer
from dbsentry.audit.records import Record

if TYPE_CHECKING:
    from dbsentry.audit.config import AuditConfig

GENESIS_HASH = "0" * 64


class AuditStoreError(Exception):
    """The store could not do what was asked (I/O error, database down, locked)."""


def chain_hash(prev_hash: str, seq: int, payload: bytes) -> str:
    h = hashlib.sha256(bytes.fromhex(prev_hash))
    h.update(seq.to_bytes(8, "big"))
    h.update(payload)
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class ChainPoint:
    seq: int
    hash: str


@dataclass(frozen=True, slots=True)
class EncodedRecord:
    """A record's canonical payload and the fields copied into indexed columns."""

    payload: bytes
    id: str
    time: float
    type: str
    session_id: str | None
    identity: str | None
    identity_kind: str | None
    connection: str | None
    environment: str | None
    decision: str | None
    command: str | None
    ref: str | None  # completion: statement_id; approval: approval_id
    tables: tuple[str, ...]

    def row(self, tables: Any) -> tuple[Any, ...]:
        """The stored columns from ``id`` to ``payload``, with ``tables`` as the store
        keeps them (JSON text, an array)."""
        return (
            self.id, self.time, self.type, self.session_id, self.identity, self.identity_kind,
            self.connection, self.environment, self.decision, self.command, self.ref,
            tables, self.payload.decode("utf-8"),
        )  # fmt: skip

    def index_tuple(self) -> tuple[Any, ...]:
        return (
            self.id,
            self.time,
            self.type,
            self.session_id,
            self.identity,
            self.identity_kind,
            self.connection,
            self.environment,
            self.decision,
            self.command,
            self.ref,
            self.tables,
        )


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


#: The columns a record's payload gives the index, in ``EncodedRecord`` order (``payload``
#: aside): id, time, type, session_id, identity, identity_kind, connection, environment,
#: decision, command, ref, tables.
IndexColumns = tuple[
    str, float, str, str | None, str | None, str | None, str | None, str | None, str | None, str | None, str | None,
    tuple[str, ...],
]  # fmt: skip


def index_columns(data: dict[str, Any]) -> IndexColumns:
    """The indexed columns of a decoded payload (the one definition: ``index_fields``,
    the index follower and ``verify`` all use it).  ``ValueError`` if a field cannot be
    one (``time`` not a number, ``tables`` not a list)."""
    get = data.get
    rtype = get("type", "")
    if not isinstance(rtype, str):
        rtype = str(rtype)
    if rtype == "completion":
        ref = get("statement_id")
    elif rtype == "approval":
        ref = get("approval_id")
    else:
        ref = None
    if rtype == "approval":
        identity, kind = get("requester"), get("requester_kind")
    else:
        identity, kind = get("identity"), get("identity_kind")
    rid = get("id", "")
    tables = get("tables") or ()
    try:
        when = float(get("time", 0.0))
        table_names = tuple(map(str, tables))
    except TypeError as err:
        raise ValueError(f"a field cannot be indexed: {err}") from None
    return (
        rid if isinstance(rid, str) else str(rid),
        when,
        rtype,
        _opt_str(get("session_id")),
        _opt_str(identity),
        _opt_str(kind),
        _opt_str(get("connection")),
        _opt_str(get("environment")),
        _opt_str(get("decision")),
        _opt_str(get("command")),
        _opt_str(ref),
        table_names,
    )


def index_fields(data: dict[str, Any], payload: bytes) -> EncodedRecord:
    return EncodedRecord(payload, *index_columns(data))


def encode(record: Record) -> EncodedRecord:
    data = record.canonical_mapping()
    return index_fields(data, orjson.dumps(data, option=orjson.OPT_SORT_KEYS))


def index_from_payload(payload: bytes) -> EncodedRecord:
    """The indexed columns a payload should have (``verify`` compares them)."""
    return EncodedRecord(payload, *columns_from_payload(payload))


def columns_from_payload(payload: bytes) -> IndexColumns:
    """``index_columns`` of a payload; ``ValueError`` if it is not a JSON object."""
    data = orjson.loads(payload)
    if not isinstance(data, dict):
        raise ValueError("payload is not a JSON object")
    return index_columns(data)


@dataclass(frozen=True, slots=True)
class StoredRecord:
    seq: int
    prev_hash: str
    hash: str
    record: EncodedRecord
    # Records indexed from a node's audit log: the node and the record's seq in its chain
    # (``seq`` is then only the index's row number).  None for records of the store's own
    # chain (written before the audit log existed).
    node: str | None = None
    node_seq: int | None = None

    @property
    def payload(self) -> bytes:
        return self.record.payload

    def data(self) -> dict[str, Any]:
        value = orjson.loads(self.record.payload)
        assert isinstance(value, dict)
        return value


@dataclass(frozen=True, slots=True, kw_only=True)
class SearchFilter:
    """Which statement records to return; every given field must match."""

    identity: str | None = None
    identity_kind: str | None = None
    connection: str | None = None
    environment: str | None = None
    table: str | None = None  # "users" matches "users" and "public.users"
    decision: str | None = None
    session_id: str | None = None
    since: float | None = None  # unix time, inclusive
    until: float | None = None  # unix time, exclusive
    text: str | None = None  # substring of the statement, case-insensitive
    # digests of redaction tokens (``<class:hmac:digest>``): the statement or its
    # parameters hold one of them (see dbsentry.audit.redaction)
    digests: tuple[str, ...] = ()
    # an agent run (the ``run_id`` correlation pair the MCP server puts on its statements)
    run: str | None = None


#: What a run id may hold, so that it is matched literally (no LIKE wildcard but ``_``).
RUN_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.:-")

_EQUAL_COLUMNS = (
    "identity",
    "identity_kind",
    "connection",
    "environment",
    "decision",
    "session_id",
)


def filter_clauses(flt: SearchFilter, mark: str) -> tuple[list[str], list[Any]]:
    """The WHERE clauses every store shares for ``flt`` (on alias ``s``), with ``mark`` as
    the parameter placeholder; table and text matching are left to each store's dialect."""
    where = ["s.type = 'statement'"]
    params: list[Any] = []
    for col in _EQUAL_COLUMNS:
        value = getattr(flt, col)
        if value is not None:
            where.append(f"s.{col} = {mark}")
            params.append(value)
    if flt.since is not None:
        where.append(f"s.time >= {mark}")
        params.append(flt.since)
    if flt.until is not None:
        where.append(f"s.time < {mark}")
        params.append(flt.until)
    if flt.digests:
        # hex digits only: nothing to escape in the pattern
        where.append("(" + " OR ".join(f"s.payload LIKE {mark}" for _ in flt.digests) + ")")
        params.extend(f"%:hmac:{d}>%" for d in flt.digests)
    if flt.run is not None:
        if not flt.run or not set(flt.run) <= RUN_ID_CHARS:
            where.append("1 = 0")  # no run id has other characters (dbsentry.agents.runs)
        else:
            # canonical JSON: the pair appears as written only inside ``correlation``
            # (statement text and parameters are JSON strings, their quotes escaped)
            where.append(f"s.payload LIKE {mark}")
            params.append(f'%"run_id":"{flt.run}"%')
    return where, params


class IndexRow(NamedTuple):
    """One log record as the index stores it (a tuple: the follower makes thousands a
    second)."""

    node_seq: int
    prev_hash: str
    hash: str
    payload: bytes
    columns: IndexColumns

    def values(self, node: str, tables: Any) -> tuple[Any, ...]:
        """The stored columns ``prev_hash, hash, id ... ref, tables, payload, node,
        node_seq``, with ``tables`` as the store keeps them."""
        return (self.prev_hash, self.hash, *self.columns[:11], tables, self.payload.decode("utf-8"), node, self.node_seq)


@dataclass(frozen=True, slots=True)
class Dialect:
    """What the SQLite and PostgreSQL stores spell differently in the queries they share."""

    mark: str  # the parameter placeholder
    records: str  # the records table, as written in a query
    columns: str  # the stored columns, in the order rows are read
    # (table name, LIKE pattern for "schema.table") -> the clause on alias ``s``
    table_clause: str
    text_clause: str  # statement text LIKE/ILIKE the parameter
    types_clause: Callable[[Sequence[str]], tuple[str, list[Any]]]
    cursors: str  # the table of each node's indexed position
    checkpoints: str  # the checkpoints table, as written in a query


def records_query(
    d: Dialect,
    *,
    after_seq: int,
    through_seq: int | None,
    since: float | None,
    until: float | None,
    types: Sequence[str] | None,
    descending: bool,
    limit: int | None,
    legacy: bool = False,
    node: str | None = None,
) -> tuple[str, list[Any]]:
    """The query of :meth:`AuditStore.iter_records`, in dialect ``d``."""
    m = d.mark
    where = [f"seq > {m}"]
    params: list[Any] = [after_seq]
    if legacy:
        where.append("node IS NULL")
    if node is not None:
        where.append(f"node = {m}")
        params.append(node)
    for clause, value in ((f"seq <= {m}", through_seq), (f"time >= {m}", since), (f"time < {m}", until)):
        if value is not None:
            where.append(clause)
            params.append(value)
    if types:
        clause, more = d.types_clause(types)
        where.append(clause)
        params.extend(more)
    sql = f"SELECT {d.columns} FROM {d.records} WHERE {' AND '.join(where)} ORDER BY seq"
    if descending:
        sql += " DESC"
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    return sql, params


def statements_query(d: Dialect, flt: SearchFilter, *, descending: bool, limit: int | None) -> tuple[str, list[Any]]:
    """The query of :meth:`AuditStore.search_statements` (each statement with its first
    completion's payload as the last column), in dialect ``d``."""
    where, params = filter_clauses(flt, d.mark)
    if flt.table is not None:
        where.append(d.table_clause)
        params += [flt.table, "%." + like_escape(flt.table)]
    if flt.text is not None:
        where.append(d.text_clause)
        params.append("%" + like_escape(flt.text) + "%")
    cols = ", ".join("s." + c.strip() for c in d.columns.split(","))
    sql = (
        f"SELECT {cols}, (SELECT c.payload FROM {d.records} c WHERE c.ref = s.id "
        f"AND c.type = 'completion' ORDER BY c.seq LIMIT 1) "
        f"FROM {d.records} s WHERE {' AND '.join(where)} ORDER BY s.seq{' DESC' if descending else ''}"
    )
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    return sql, params


def like_escape(text: str) -> str:
    """``text`` as a literal part of a LIKE pattern (backslash escapes)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def link(
    prev: ChainPoint, records: Sequence[EncodedRecord]
) -> list[tuple[int, str, str, EncodedRecord]]:
    """Number and hash ``records`` after ``prev``: (seq, prev_hash, hash, record) each."""
    out = []
    seq, prev_hash = prev.seq, prev.hash
    for r in records:
        seq += 1
        h = chain_hash(prev_hash, seq, r.payload)
        out.append((seq, prev_hash, h, r))
        prev_hash = h
    return out


class AuditStore(abc.ABC):
    """Append-only, hash-chained storage of audit records and signed checkpoints.

    Implementations are used from the writer thread and from readers (CLI, console) at the
    same time; the iterators stream (constant memory) from their own connection.
    """

    @abc.abstractmethod
    def append_batch(self, records: Sequence[EncodedRecord]) -> list[int]:
        """Append ``records`` in one durable transaction; return their seqs.

        Raises ``AuditStoreError`` if nothing was committed (or it cannot be known)."""

    @abc.abstractmethod
    def existing_ids(self, ids: Sequence[str]) -> set[str]:
        """Which of these record ids are stored (to retry a batch whose commit is uncertain)."""

    @abc.abstractmethod
    def head(self) -> ChainPoint:
        """The last record's (seq, hash) as recorded in ``chain_head``."""

    @abc.abstractmethod
    def anchor(self) -> ChainPoint:
        """Where the stored chain starts: (0, genesis) or the last archived record."""

    dialect: Dialect  # how the store spells the queries it shares with the others

    @abc.abstractmethod
    def _query(self, sql: str, params: Sequence[Any] = ()) -> Iterator[Sequence[Any]]:
        """Rows of a read-only query, streamed."""

    @staticmethod
    @abc.abstractmethod
    def _stored(row: Sequence[Any]) -> StoredRecord:
        """A row of ``dialect.columns`` as a stored record."""

    @abc.abstractmethod
    def _one(self, sql: str, params: Sequence[Any] = ()) -> Sequence[Any] | None:
        """The first row of a read-only query (None: none)."""

    def iter_records(
        self,
        *,
        after_seq: int = 0,
        through_seq: int | None = None,
        since: float | None = None,
        until: float | None = None,
        types: Sequence[str] | None = None,
        descending: bool = False,
        limit: int | None = None,
        legacy: bool = False,
    ) -> Iterator[StoredRecord]:
        """Records in seq order, streamed (``legacy``: only the store's own chain)."""
        sql, params = records_query(
            self.dialect,
            after_seq=after_seq,
            through_seq=through_seq,
            since=since,
            until=until,
            types=types,
            descending=descending,
            limit=limit,
            legacy=legacy,
        )
        for row in self._query(sql, params):
            yield self._stored(row)

    def search_statements(
        self, flt: SearchFilter, *, descending: bool = True, limit: int | None = None
    ) -> Iterator[tuple[StoredRecord, bytes | None]]:
        """Statement records matching ``flt`` with the payload of their first completion."""
        sql, params = statements_query(self.dialect, flt, descending=descending, limit=limit)
        width = len(self.dialect.columns.split(","))
        for row in self._query(sql, params):
            completion = row[width]
            yield self._stored(row), completion.encode("utf-8") if completion is not None else None

    def iter_index(self, node: str) -> Iterator[StoredRecord]:
        """The rows indexed from ``node``'s log, in the log's order."""
        sql = f"SELECT {self.dialect.columns} FROM {self.dialect.records} WHERE node = {self.dialect.mark} ORDER BY node_seq"
        for row in self._query(sql, [node]):
            yield self._stored(row)

    def index_nodes(self) -> list[str]:
        """Nodes whose logs have rows or a cursor in this index."""
        sql = f"SELECT node FROM {self.dialect.cursors} UNION SELECT DISTINCT node FROM {self.dialect.records} WHERE node IS NOT NULL"
        return sorted({str(r[0]) for r in self._query(sql)})

    @abc.abstractmethod
    def index_cursor(self, node: str) -> int:
        """The last seq of ``node``'s log that is indexed (0: none)."""

    @abc.abstractmethod
    def index_batch(self, node: str, rows: Sequence[IndexRow]) -> int:
        """Index ``rows`` (records of ``node``'s log, in order) in one transaction, skipping
        those another indexer has indexed meanwhile; returns the new cursor."""

    @abc.abstractmethod
    def drop_index(self, node: str | None = None) -> int:
        """Delete the rows indexed from ``node``'s log (every log: None) and their cursors;
        how many rows.  The store's own chain is not touched."""

    def last_seq_before(self, time: float) -> int:
        """The largest seq such that it and every earlier stored record are older than ``time``
        (the anchor's seq if there is none)."""
        d = self.dialect
        row = self._one(f"SELECT min(seq) FROM {d.records} WHERE time >= {d.mark}", (time,))
        anchor = self.anchor().seq
        if row is None or row[0] is None:
            return max(self.head().seq, anchor)
        return max(int(row[0]) - 1, anchor)

    @abc.abstractmethod
    def add_checkpoint(self, signer: Signer, kind: str = "periodic") -> Checkpoint | None:
        """Sign the current head and store the checkpoint (None if the head is already signed)."""

    def iter_checkpoints(self) -> Iterator[Checkpoint]:
        """All checkpoints, by seq."""
        sql = f"SELECT seq, hash, time, kind, key_id, signature FROM {self.dialect.checkpoints} ORDER BY seq, id"
        for row in self._query(sql):
            yield Checkpoint(int(row[0]), row[1], float(row[2]), row[3], row[4], row[5])

    @abc.abstractmethod
    def truncate_prefix(self, checkpoint: Checkpoint) -> int:
        """Delete records through ``checkpoint.seq`` and make it the anchor, in one transaction,
        storing the (archive) checkpoint.  Returns how many records were deleted."""

    @abc.abstractmethod
    def close(self) -> None: ...

    @abc.abstractmethod
    def describe(self) -> str:
        """Where the store is, for messages (no secrets)."""


def open_store(config: AuditConfig, state_dir: Path, *, create: bool = True) -> AuditStore:
    """The store ``config`` names.  With ``create=False`` a missing SQLite file is an error."""
    if config.store == "postgres":
        from dbsentry.audit.pg_store import PostgresStore

        return PostgresStore(
            config.resolve_dsn(), schema=config.pg_schema, fsync=False
        )
    from dbsentry.audit.sqlite_store import SQLiteStore

    path = config.sqlite_path(state_dir)
    if not create and not path.exists():
        raise AuditStoreError(f"no audit database at {path}")
    # The store is the search index of the audit logs: derived data, rebuilt from the
    # logs by ``dbsentry audit reindex``, so its commits need not wait for the disk.
    return SQLiteStore(path, fsync=False)
