"""Result sets and prepared-statement answers: column count, ColumnDefinition41, text and
binary rows, COM_STMT_PREPARE_OK, LOCAL INFILE requests; and two small state machines that
tell what each packet of an answer is (:class:`ResultReader`, :class:`PrepareReader`).

A text row is a sequence of length-encoded strings, ``0xFB`` for NULL. A binary row is a
``0x00`` header, a NULL bitmap whose first two bits are unused (offset 2) and the non-NULL
values in their binary form (:mod:`~dbsentry.engines.mysql.wire.values`). Encoders for both
exist so masking can rewrite values; decode then encode is exact.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from dbsentry.engines.mysql.wire import constants as c
from dbsentry.engines.mysql.wire import primitives as p
from dbsentry.engines.mysql.wire.generic import (
    EOF,
    ERR,
    OK,
    decode_eof,
    decode_err,
    decode_ok,
    is_result_end,
)
from dbsentry.engines.mysql.wire.values import (
    Value,
    decode_binary_value,
    encode_binary_value,
    is_null,
    null_bitmap,
    read_null_bitmap,
)
from dbsentry.errors import ProtocolError

__all__ = [
    "BinaryRow",
    "ColumnCount",
    "ColumnDefinition",
    "LocalInfileRequest",
    "PrepareReader",
    "ResultReader",
    "StmtPrepareOK",
    "TextRow",
    "decode_binary_row",
    "decode_column_count",
    "decode_column_definition",
    "decode_local_infile_request",
    "decode_stmt_prepare_ok",
    "decode_text_row",
    "encode_binary_row",
    "encode_column_count",
    "encode_column_definition",
    "encode_local_infile_request",
    "encode_stmt_prepare_ok",
    "encode_text_row",
]

MAX_COLUMNS = 4096  # MySQL's own limit on a table's columns; a result set gets the same


@dataclass(frozen=True, slots=True)
class ColumnCount:
    count: int
    # On the wire only with CLIENT_OPTIONAL_RESULTSET_METADATA (MySQL) or
    # MARIADB_CLIENT_CACHE_METADATA; 0: the columns are not sent again.
    metadata_follows: int = 1


@dataclass(frozen=True, slots=True)
class ColumnDefinition:
    """Protocol::ColumnDefinition41. ``default`` only in answers to COM_FIELD_LIST (None:
    NULL, 0xFB);
    ``extended`` is MariaDB's extended metadata (``MARIADB_CLIENT_EXTENDED_METADATA``),
    kept as its raw bytes."""

    name: str
    type: int
    schema: str = ""
    table: str = ""
    org_table: str = ""
    org_name: str = ""
    charset: int = 33
    length: int = 0
    flags: int = 0
    decimals: int = 0
    catalog: str = "def"
    default: bytes | None = None
    extended: bytes | None = None

    @property
    def unsigned(self) -> bool:
        return bool(self.flags & c.UNSIGNED_FLAG)

    @property
    def binary(self) -> bool:
        return self.charset == c.BINARY_CHARSET


@dataclass(frozen=True, slots=True)
class TextRow:
    values: tuple[bytes | None, ...]


@dataclass(frozen=True, slots=True)
class BinaryRow:
    values: tuple[Value, ...]


@dataclass(frozen=True, slots=True)
class StmtPrepareOK:
    statement_id: int
    num_columns: int
    num_params: int
    warnings: int = 0
    metadata_follows: int = 1  # on the wire only with CLIENT_OPTIONAL_RESULTSET_METADATA


@dataclass(frozen=True, slots=True)
class LocalInfileRequest:
    """The server asks the *client* for a file (LOAD DATA LOCAL INFILE)."""

    filename: str


# ----------------------------------------------------------------- column count and definitions


def decode_column_count(payload: bytes, capabilities: int) -> ColumnCount:
    r = p.Reader(payload)
    count = r.lenenc_int()
    if count == 0 or count > MAX_COLUMNS:
        raise ProtocolError(f"invalid column count {count}")
    follows = 1
    if capabilities & (c.CLIENT_OPTIONAL_RESULTSET_METADATA | c.MARIADB_CLIENT_CACHE_METADATA):
        follows = r.int1()
    r.done("column count")
    return ColumnCount(count, follows)


def encode_column_count(cc: ColumnCount, capabilities: int) -> bytes:
    out = p.lenenc_int(cc.count)
    if capabilities & (c.CLIENT_OPTIONAL_RESULTSET_METADATA | c.MARIADB_CLIENT_CACHE_METADATA):
        out += bytes((cc.metadata_follows,))
    return out


def decode_column_definition(payload: bytes, *, field_list: bool = False, extended_metadata: bool = False) -> ColumnDefinition:
    r = p.Reader(payload)
    catalog = r.lenenc_text("catalog")
    schema = r.lenenc_text("schema")
    table = r.lenenc_text("table")
    org_table = r.lenenc_text("table")
    name = r.lenenc_text("column name")
    org_name = r.lenenc_text("column name")
    extended = r.lenenc_bytes("extended metadata") if extended_metadata else None
    fixed = r.lenenc_int()
    if fixed != 0x0C:
        raise ProtocolError(f"column definition with fixed fields of {fixed} bytes (expected 12)")
    charset = r.int2()
    length = r.int4()
    type_ = r.int1()
    flags = r.int2()
    decimals = r.int1()
    r.skip(2)
    default = None
    if field_list and not r.at_end():
        default = r.lenenc_bytes_or_null("default value")
    r.done("column definition")
    return ColumnDefinition(
        name, type_, schema, table, org_table, org_name, charset, length, flags, decimals, catalog, default, extended
    )


def encode_column_definition(col: ColumnDefinition, *, field_list: bool = False, extended_metadata: bool = False) -> bytes:
    out = bytearray()
    for text in (col.catalog, col.schema, col.table, col.org_table, col.name, col.org_name):
        out += p.lenenc_text(text)
    if extended_metadata:
        out += p.lenenc_bytes(col.extended or b"")
    out += b"\x0c" + p.int2(col.charset) + p.int4(col.length) + bytes((col.type,)) + p.int2(col.flags)
    out += bytes((col.decimals, 0, 0))
    if field_list:
        out += b"\xfb" if col.default is None else p.lenenc_bytes(col.default)
    return bytes(out)


# ----------------------------------------------------------------- rows


def decode_text_row(payload: bytes, count: int) -> TextRow:
    r = p.Reader(payload)
    values = tuple(r.lenenc_bytes_or_null("column value") for _ in range(count))
    r.done("text row")
    return TextRow(values)


def encode_text_row(row: TextRow) -> bytes:
    return b"".join(b"\xfb" if v is None else p.lenenc_bytes(v) for v in row.values)


ColumnTypes = Sequence[tuple[int, bool]]  # (column type, unsigned) per column


def column_types(columns: Sequence[ColumnDefinition]) -> tuple[tuple[int, bool], ...]:
    return tuple((col.type, col.unsigned) for col in columns)


def decode_binary_row(payload: bytes, types: ColumnTypes) -> BinaryRow:
    r = p.Reader(payload)
    if r.int1() != 0x00:
        raise ProtocolError("binary row without its 0x00 header")
    bitmap = read_null_bitmap(r, len(types), 2)
    values = tuple(
        None if is_null(bitmap, i, 2) else decode_binary_value(r, type_, unsigned)
        for i, (type_, unsigned) in enumerate(types)
    )
    r.done("binary row")
    return BinaryRow(values)


def encode_binary_row(row: BinaryRow, types: ColumnTypes) -> bytes:
    if len(row.values) != len(types):
        raise ValueError(f"{len(row.values)} values for {len(types)} columns")
    out = bytearray(b"\x00")
    out += null_bitmap([v is None for v in row.values], 2)
    for v, (type_, unsigned) in zip(row.values, types, strict=True):
        if v is not None:
            out += encode_binary_value(type_, unsigned, v)
    return bytes(out)


# ----------------------------------------------------------------- prepared statements, LOCAL INFILE


def decode_stmt_prepare_ok(payload: bytes, capabilities: int) -> StmtPrepareOK:
    r = p.Reader(payload)
    if r.int1() != 0x00:
        raise ProtocolError("not a COM_STMT_PREPARE_OK packet")
    stmt = r.int4()
    columns = r.int2()
    params = r.int2()
    r.skip(1)
    warnings = r.int2() if not r.at_end() else 0
    follows = 1
    if capabilities & c.CLIENT_OPTIONAL_RESULTSET_METADATA and not r.at_end():
        follows = r.int1()
    r.done("COM_STMT_PREPARE_OK")
    return StmtPrepareOK(stmt, columns, params, warnings, follows)


def encode_stmt_prepare_ok(ok: StmtPrepareOK, capabilities: int) -> bytes:
    out = b"\x00" + p.int4(ok.statement_id) + p.int2(ok.num_columns) + p.int2(ok.num_params) + b"\x00"
    out += p.int2(ok.warnings)
    if capabilities & c.CLIENT_OPTIONAL_RESULTSET_METADATA:
        out += bytes((ok.metadata_follows,))
    return out


def decode_local_infile_request(payload: bytes) -> LocalInfileRequest:
    if payload[:1] != b"\xfb":
        raise ProtocolError("not a LOCAL INFILE request")
    return LocalInfileRequest(p.text_of(payload[1:]))


def encode_local_infile_request(req: LocalInfileRequest) -> bytes:
    return b"\xfb" + p.text_bytes(req.filename)


# ----------------------------------------------------------------- answers, packet by packet

ResultEvent = OK | ERR | EOF | ColumnCount | ColumnDefinition | TextRow | BinaryRow | LocalInfileRequest | bytes


class ResultReader:
    """Tells what each packet of the answer to COM_QUERY or COM_STMT_EXECUTE is.

    ``feed(payload)`` returns the packet decoded: OK / ERR (the answer, or one result of a
    multi-result answer), a LOCAL INFILE request, a column count, column definitions, the
    EOF after them, rows (:class:`TextRow`, or :class:`BinaryRow` with ``binary``; the raw
    payload with ``decode_rows=False``) and the OK/EOF ending the rows. ``done`` turns true
    after the last packet (no ``SERVER_MORE_RESULTS_EXISTS``); the columns of the current
    result are in ``columns``. When COM_STMT_EXECUTE opens a cursor the answer ends after
    the metadata (its EOF, or OK under ``CLIENT_DEPRECATE_EOF``, has
    ``SERVER_STATUS_CURSOR_EXISTS``); ``cursor=True`` reads the answer to COM_STMT_FETCH:
    rows of ``columns`` and an EOF/OK, no metadata.
    """

    __slots__ = ("_capabilities", "_count", "_state", "binary", "columns", "decode_rows", "done")

    def __init__(
        self,
        capabilities: int,
        *,
        binary: bool = False,
        decode_rows: bool = True,
        columns: Sequence[ColumnDefinition] = (),
        cursor: bool = False,
    ) -> None:
        self._capabilities = capabilities
        self.binary = binary or cursor
        self.decode_rows = decode_rows
        self.columns: list[ColumnDefinition] = list(columns)
        self._count = len(self.columns)
        self._state = "rows" if cursor else "start"
        self.done = False

    @property
    def state(self) -> str:
        """Where the answer is: "start" (a result's first packet next), "columns",
        "columns_eof", "rows", "infile" (the client sends a file) or "done"."""
        return self._state

    def _end(self, status: int) -> None:
        if status & c.SERVER_MORE_RESULTS_EXISTS:
            self._state = "start"
            self.columns = []
        else:
            self.done = True
            self._state = "done"

    def feed(self, payload: bytes) -> ResultEvent:
        if self.done:
            raise ProtocolError("packet after the end of the answer")
        if not payload:
            raise ProtocolError("empty packet in an answer")
        caps = self._capabilities
        head = payload[0]
        state = self._state
        if head == c.ERR_HEADER:
            self.done = True
            self._state = "done"
            return decode_err(payload, caps)
        if state == "start":
            if head == c.OK_HEADER:
                ok = decode_ok(payload, caps)
                self._end(ok.status)
                return ok
            if head == c.LOCAL_INFILE_HEADER:
                self._state = "infile"
                return decode_local_infile_request(payload)
            cc = decode_column_count(payload, caps)
            if cc.metadata_follows != 1:
                raise ProtocolError("result set without metadata (CLIENT_OPTIONAL_RESULTSET_METADATA) is not supported")
            self._count = cc.count
            self._state = "columns"
            return cc
        if state == "columns":
            col = decode_column_definition(payload, extended_metadata=bool(caps & c.MARIADB_CLIENT_EXTENDED_METADATA))
            self.columns.append(col)
            if len(self.columns) == self._count:
                self._state = "rows" if caps & c.CLIENT_DEPRECATE_EOF else "columns_eof"
            return col
        if state == "columns_eof":
            eof = decode_eof(payload, caps)
            self._state = "rows"
            if eof.status & c.SERVER_STATUS_CURSOR_EXISTS:
                # COM_STMT_EXECUTE opened a cursor: the rows come with COM_STMT_FETCH.
                self._end(eof.status)
            return eof
        if state == "rows":
            if is_result_end(payload, caps):
                if caps & c.CLIENT_DEPRECATE_EOF:
                    ok = decode_ok(payload, caps)
                    self._end(ok.status)
                    return ok
                eof = decode_eof(payload, caps)
                self._end(eof.status)
                return eof
            if not self.decode_rows:
                return payload
            if self.binary:
                return decode_binary_row(payload, column_types(self.columns))
            return decode_text_row(payload, len(self.columns))
        if state == "infile" and head == c.OK_HEADER:
            # After the client's file, the server answers as to any command.
            ok = decode_ok(payload, caps)
            self._end(ok.status)
            return ok
        raise ProtocolError(f"unexpected packet in an answer (header 0x{head:02x})")


PrepareEvent = StmtPrepareOK | ERR | EOF | ColumnDefinition


class PrepareReader:
    """Tells what each packet of the answer to COM_STMT_PREPARE is: COM_STMT_PREPARE_OK
    (or ERR), the parameters' definitions and the columns' definitions, each group
    followed by an EOF unless ``CLIENT_DEPRECATE_EOF``."""

    __slots__ = ("_capabilities", "_todo", "columns", "done", "ok", "params")

    def __init__(self, capabilities: int) -> None:
        self._capabilities = capabilities
        self.ok: StmtPrepareOK | None = None
        self.params: list[ColumnDefinition] = []
        self.columns: list[ColumnDefinition] = []
        self._todo: deque[tuple[str, int]] = deque()  # (what, how many) still to come
        self.done = False

    def feed(self, payload: bytes) -> PrepareEvent:
        if self.done:
            raise ProtocolError("packet after the end of the answer")
        caps = self._capabilities
        if self.ok is None:
            if payload[:1] == b"\xff":
                self.done = True
                return decode_err(payload, caps)
            ok = self.ok = decode_stmt_prepare_ok(payload, caps)
            if ok.metadata_follows != 1:
                raise ProtocolError("prepared statement without metadata is not supported")
            for what, count in (("param", ok.num_params), ("column", ok.num_columns)):
                if count:
                    self._todo.append((what, count))
                    if not caps & c.CLIENT_DEPRECATE_EOF:
                        self._todo.append(("eof", 1))
            self.done = not self._todo
            return ok
        what, count = self._todo[0]
        if count == 1:
            self._todo.popleft()
        else:
            self._todo[0] = (what, count - 1)
        self.done = not self._todo
        if what == "eof":
            return decode_eof(payload, caps)
        col = decode_column_definition(payload, extended_metadata=bool(caps & c.MARIADB_CLIENT_EXTENDED_METADATA))
        (self.params if what == "param" else self.columns).append(col)
        return col
