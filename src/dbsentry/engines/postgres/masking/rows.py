"""Rewriting result rows on the wire: RowDescription, DataRow and COPY data.

Sans-IO like the codec: message *bodies* in, bodies out (wrap them with
``codec.frame(b"D", body)``).  :func:`mask_data_row` masks one DataRow: it walks the field
lengths up to the last masked column, calls the column's masker on the fields it must
change and splices the result, copying nothing else.  A :class:`RowMasker` is compiled
once per result (RowDescription + result formats + plan).

The proxy's hot path is :func:`mask_data_rows` (and :meth:`CopyMasker.mask_frames` for
COPY): every DataRow of a received chunk in one call, against a per-column plan of simple
operations compiled with the result.  It runs in C when the optional extension
``_fastmask`` is built, else in the Python loops here; both give the bytes
:func:`mask_data_row` gives.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from types import ModuleType

from dbsentry.engines.postgres.masking.lineage import ColumnMask, CopyOptions, MaskPlan
from dbsentry.engines.postgres.masking.values import (
    OP_EMAIL,
    OP_KEEP_LAST,
    OP_SCAN,
    BytePartial,
    Constant,
    Masker,
    Scan,
    make_detect_masker,
    make_masker,
    make_safety_net_masker,
)
from dbsentry.errors import ProtocolError
from dbsentry.masking.catalog import Catalog, ClassMap
from dbsentry.masking.classes import DataClass
from dbsentry.masking.strategies import DEFAULT_STRATEGIES, may_hold_sensitive

_fastmask: ModuleType | None
if os.environ.get("DBSENTRY_MASKING_NO_EXTENSION"):
    _fastmask = None
else:
    try:
        from dbsentry.engines.postgres.masking import _fastmask
    except ImportError:  # not built (no compiler at install): the Python loops below
        _fastmask = None

__all__ = [
    "CopyMasker",
    "Field",
    "RowMasker",
    "UnsupportedCopy",
    "compile_copy_masker",
    "compile_row_masker",
    "decode_data_row",
    "decode_row_description",
    "encode_data_row",
    "encode_row_description",
    "mask_data_row",
    "mask_data_rows",
    "text_type_oids",
]

_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")
_FIELD_TAIL = struct.Struct("!IhIhih")
_unpack_i32 = _I32.unpack_from
_unpack_u32 = _U32.unpack_from
_pack_i32 = _I32.pack
_pack_u32 = _U32.pack
_NULL = b"\xff\xff\xff\xff"


@dataclass(frozen=True, slots=True)
class Field:
    """One column of a RowDescription."""

    name: str
    table_oid: int
    attnum: int
    type_oid: int
    typlen: int
    typmod: int
    format: int


def _cstr(buf: bytes, pos: int, end: int) -> tuple[str, int]:
    z = buf.find(b"\x00", pos, end)
    if z < 0:
        raise ProtocolError("unterminated string in message")
    return buf[pos:z].decode("utf-8", "surrogateescape"), z + 1


def decode_row_description(body: bytes) -> tuple[Field, ...]:
    end = len(body)
    if end < 2:
        raise ProtocolError("RowDescription is too short")
    (n,) = _I16.unpack_from(body, 0)
    if n < 0:
        raise ProtocolError("negative field count in RowDescription")
    pos = 2
    out = []
    for _ in range(n):
        name, pos = _cstr(body, pos, end)
        if pos + 18 > end:
            raise ProtocolError("RowDescription is shorter than its fields")
        table, attnum, type_oid, typlen, typmod, fmt = _FIELD_TAIL.unpack_from(body, pos)
        pos += 18
        out.append(Field(name, table, attnum, type_oid, typlen, typmod, fmt))
    if pos != end:
        raise ProtocolError("trailing bytes in RowDescription")
    return tuple(out)


def encode_row_description(fields: Sequence[Field]) -> bytes:
    parts = [_I16.pack(len(fields))]
    for f in fields:
        parts.append(f.name.encode() + b"\x00")
        parts.append(
            _FIELD_TAIL.pack(f.table_oid, f.attnum, f.type_oid, f.typlen, f.typmod, f.format)
        )
    return b"".join(parts)


def decode_data_row(body: bytes) -> list[bytes | None]:
    end = len(body)
    if end < 2:
        raise ProtocolError("DataRow is too short")
    (n,) = _I16.unpack_from(body, 0)
    if n < 0:
        raise ProtocolError("negative column count in DataRow")
    pos = 2
    out: list[bytes | None] = []
    for _ in range(n):
        if pos + 4 > end:
            raise ProtocolError("DataRow is shorter than its columns")
        (ln,) = _unpack_i32(body, pos)
        pos += 4
        if ln == -1:
            out.append(None)
            continue
        if ln < 0 or pos + ln > end:
            raise ProtocolError("invalid field length in DataRow")
        out.append(body[pos : pos + ln])
        pos += ln
    if pos != end:
        raise ProtocolError("trailing bytes in DataRow")
    return out


def encode_data_row(values: Sequence[bytes | None]) -> bytes:
    parts = [_I16.pack(len(values))]
    for v in values:
        if v is None:
            parts.append(_NULL)
        else:
            parts.append(_pack_i32(len(v)))
            parts.append(v)
    return b"".join(parts)


# -- compiled maskers ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RowMasker:
    """A mask plan bound to the columns of one result."""

    maskers: tuple[Masker | None, ...]  # per column
    width: int
    last: int  # index of the last masked column
    masks: tuple[ColumnMask | None, ...]  # what was decided, for audit
    # per column: None (leave), bytes (a constant: length prefix and value, spliced in as
    # is), or the masker to call
    ops: tuple[bytes | Masker | None, ...] = ()
    # per column up to ``last``: what the batch walkers (:func:`mask_data_rows`) do, see
    # :func:`_row_op`; it holds this result's caches
    plan: tuple[Op | None, ...] = ()
    # the masked columns whose values are text in the client encoding (text format, or a
    # text type in binary): what a session in another encoding than UTF-8 transcodes
    text: tuple[int, ...] = ()

    @property
    def data_classes(self) -> frozenset[DataClass]:
        return frozenset(
            m.data_class for m in self.masks if m is not None and m.data_class is not None
        )


def _op(masker: Masker | None) -> bytes | Masker | None:
    if isinstance(masker, Constant):
        v = masker.value
        return _NULL if v is None else _pack_i32(len(v)) + v
    return masker


# -- batch plans ---------------------------------------------------------------------------------
#
# An op is a tuple whose first item says what to do with a column's (non-NULL) values:
#
#   (OP_CONST, value)                        the value is replaced by ``value``
#   (OP_EMAIL, placeholder, ...)             b"****@" + the text after the last "@" when
#                                            something precedes it, else ``placeholder``
#   (OP_KEEP_LAST, alnum, t1, k1, t2, k2, ...)  digits (letters and digits when alnum) become
#                                            "*" but the last k1 when there are >= t1 of
#                                            them, else the last k2 when >= t2, else all
#   (OP_CALL, masker, cache)                 the masker is called; ``cache`` (a dict, raw ->
#                                            what to write) is filled up to CACHE_SIZE
#   (OP_SCAN, scan, cache, ip)               value detection: a value that
#                                            strategies.may_hold_sensitive(value, ip) rejects
#                                            is left as it is (as if the column had no op);
#                                            any other is an OP_CALL of ``scan``
#
# For DataRows ``value``, ``placeholder`` and what the cache holds are fields (length
# prefix and bytes, or the NULL marker); for COPY text they are the escaped text.  The
# items after the ones listed are for the Python loops only (format caches, tables).  The C
# extension ``_fastmask`` reads the same tuples.

OP_CONST = 1
OP_CALL = 4
Op = tuple[object, ...]
CACHE_SIZE = 4096  # masked values remembered per column and result (values that repeat)
_FORMAT_CACHE_SIZE = 1024  # value shapes remembered per OP_KEEP_LAST column (Python loops)
_FORMAT_CACHE_MAX_LEN = 64

_DIGITS = b"0123456789"
_ALNUM = _DIGITS + b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# digits -> "0", or letters and digits -> "a"; the rest unchanged: a value's shape
_SHAPE_DIGITS = bytes.maketrans(_DIGITS, b"0" * len(_DIGITS))
_SHAPE_ALNUM = bytes.maketrans(_ALNUM, b"a" * len(_ALNUM))


def _keep_last_op(native: tuple[object, ...]) -> Op:
    alnum = bool(native[1])
    if alnum:
        return (*native, _SHAPE_ALNUM, b"a", {})
    return (*native, _SHAPE_DIGITS, b"0", {})


def _keep_last_split(
    shape: bytes, marker: bytes, t1: int, k1: int, t2: int, k2: int
) -> tuple[bytes, int]:
    """For a value of this shape: the masked head and where the kept tail starts (the
    result of pg_values._keep_last_bytes is ``head + value[start:]``)."""
    n = shape.count(marker)
    keep = k1 if n >= t1 else k2 if n >= t2 else 0
    mark = marker[0]
    i = len(shape)
    seen = 0
    while i > 0 and seen < keep:
        i -= 1
        if shape[i] == mark:
            seen += 1
    if seen < keep:
        i = len(shape)
    return shape[:i].replace(marker, b"*"), i


def _row_op(masker: Masker | None) -> Op | None:
    if masker is None:
        return None
    if isinstance(masker, Constant):
        v = masker.value
        return (OP_CONST, _NULL if v is None else _pack_i32(len(v)) + v)
    if isinstance(masker, BytePartial) and masker.native is not None:
        native = masker.native
        if native[0] == OP_EMAIL:
            placeholder = native[1]
            assert isinstance(placeholder, bytes)
            return (OP_EMAIL, _pack_i32(len(placeholder)) + placeholder)
        if native[0] == OP_KEEP_LAST:
            return _keep_last_op(native)
    if isinstance(masker, Scan):
        return (OP_SCAN, masker.scan, {}, masker.ip)
    return (OP_CALL, masker, {})


def _formats(n: int, result_formats: Sequence[int] | None, fields: Sequence[Field]) -> list[int]:
    """Bind's result-format codes: none means text, one applies to all, else one each.
    Without them, the formats RowDescription states."""
    if result_formats is None:
        return [f.format for f in fields]
    if not result_formats:
        return [0] * n
    if len(result_formats) == 1:
        return [result_formats[0]] * n
    return list(result_formats) + [0] * (n - len(result_formats))


# Built-in types whose binary form is their text in the client encoding (jsonb after its
# version byte): text, varchar, bpchar, name, unknown, "char", json, xml, jsonb.
_BINARY_TEXT = frozenset({25, 1043, 1042, 19, 705, 18, 114, 142, 3802})

# Extension types whose binary form is their text (so masked text stays valid in binary).
_TEXT_IN_BINARY = frozenset({"citext"})


def text_type_oids(catalog: Catalog) -> frozenset[int]:
    """The oids of the catalog's column types that are text in binary format too (citext),
    remembered with the catalog."""
    found = catalog.cache.get("text_type_oids")
    if isinstance(found, frozenset):
        return found
    oids = frozenset(
        col.type_oid
        for rel in catalog.relations.values()
        for col in rel.columns
        if col.type_oid >= 16384
        and col.type_name.rpartition(".")[2].strip('"').split("(")[0].split("[")[0] in _TEXT_IN_BINARY
        and not col.type_name.endswith("]")
    )
    catalog.cache["text_type_oids"] = oids
    return oids


def compile_row_masker(
    plan: MaskPlan,
    fields: Sequence[Field],
    *,
    key: bytes,
    result_formats: Sequence[int] | None = None,
    classmap: ClassMap | None = None,
    strategies: dict[DataClass, str] | None = None,
    safety_net: bool = False,
    text_oids: frozenset[int] = frozenset(),
) -> RowMasker | None:
    """Bind ``plan`` to a result's RowDescription; None when nothing needs masking.

    ``result_formats`` are the codes from Bind (a RowDescription answering Describe of a
    statement says text for every column; the formats chosen at Bind are the real ones).
    With ``classmap``, a column that RowDescription names as a sensitive table column
    (table oid + attnum) is masked even if lineage missed it (defence in depth).  When
    the plan's width does not match the result's, lineage was wrong about the statement,
    and every column that can carry sensitive data is value-scanned.

    With ``safety_net``, every column left without a mask whose type is text-like (text,
    varchar, bpchar, name, unknown, extension types in text format, json, jsonb) is
    scanned by the validated detectors and what they find is masked in place (reason
    ``"safety-net"``).  ``text_oids``: extension types that are text in binary format too
    (citext).
    """
    n = len(fields)
    fmts = _formats(n, result_formats, fields)
    strat = dict(DEFAULT_STRATEGIES)
    if strategies:
        strat.update(strategies)
    masks: list[ColumnMask | None]
    if len(plan.columns) == n:
        masks = list(plan.columns)
    elif plan.columns and all(c is not None and c.reason == "inexact" for c in plan.columns):
        # Columns lineage could not tell apart, all masked alike: so are these.
        first = plan.columns[0]
        assert first is not None
        masks = [replace(first, index=i) for i in range(n)]
    elif plan.active or plan.reads_sensitive:
        masks = [ColumnMask(i, None, "detect", frozenset(), "unresolved") for i in range(n)]
    else:
        masks = [None] * n
    if classmap is not None:
        for i, f in enumerate(fields):
            current = masks[i]
            if f.table_oid and (current is None or current.data_class is None):
                c = classmap.attrs.get((f.table_oid, f.attnum))
                if c is not None:
                    masks[i] = ColumnMask(
                        i, c.data_class, strat[c.data_class], frozenset(), "row-description"
                    )
    maskers: list[Masker | None] = []
    for i, (m, f) in enumerate(zip(masks, fields, strict=True)):
        if m is None:
            net = (
                make_safety_net_masker(f.type_oid, f.typmod, fmts[i], key, strat, text_oids)
                if safety_net
                else None
            )
            if net is not None:
                masks[i] = ColumnMask(i, None, "detect", frozenset(), "safety-net")
            maskers.append(net)
        elif m.strategy == "detect":
            maskers.append(
                make_detect_masker(f.type_oid, f.typmod, fmts[i], key, strat, text_oids)
            )
        else:
            maskers.append(
                make_masker(m.strategy, m.data_class, f.type_oid, f.typmod, fmts[i], key)
            )
    last = max((i for i, mk in enumerate(maskers) if mk is not None), default=-1)
    if last < 0:
        return None
    return RowMasker(
        tuple(maskers),
        n,
        last,
        tuple(masks),
        tuple(_op(m) for m in maskers),
        tuple(_row_op(m) for m in maskers[: last + 1]),
        tuple(
            i
            for i, mk in enumerate(maskers)
            if mk is not None and (fmts[i] == 0 or fields[i].type_oid in _BINARY_TEXT or fields[i].type_oid in text_oids)
        ),
    )


def mask_data_row(body: bytes, masker: RowMasker) -> bytes:
    """The DataRow body with the masked columns rewritten (``body`` itself when nothing
    changed)."""
    ops = masker.ops
    end = len(body)
    if end < 2 or (body[0] << 8 | body[1]) != masker.width:
        raise ProtocolError("DataRow does not match its RowDescription")
    parts: list[bytes] = []
    append = parts.append
    start = 0
    pos = 2
    try:
        for i in range(masker.last + 1):
            (ln,) = _unpack_i32(body, pos)
            op = ops[i]
            if ln < -1:
                raise ProtocolError("invalid field length in DataRow")
            if op is None or ln < 0:
                pos += 4 if ln < 0 else 4 + ln
                continue
            value_end = pos + 4 + ln
            if value_end > end:
                raise ProtocolError("invalid field length in DataRow")
            if isinstance(op, bytes):
                append(body[start:pos])
                append(op)
                start = value_end
            else:
                raw = body[pos + 4 : value_end]
                new = op(raw)
                if new is not raw:
                    append(body[start:pos])
                    append(_NULL if new is None else _pack_i32(len(new)) + new)
                    start = value_end
            pos = value_end
    except struct.error:
        raise ProtocolError("DataRow is shorter than its columns") from None
    if not parts:
        return body
    append(body[start:])
    return b"".join(parts)


_EMAIL_HEADS = tuple(_pack_i32(5 + n) + b"****@" for n in range(256))


def mask_data_rows(buf: bytes, pos: int, masker: RowMasker) -> tuple[bytes | None, int, int]:
    """Mask the DataRow frames that follow each other in ``buf`` from ``pos`` (where the
    first one starts; ``buf`` ends with a whole frame, as FrameSplitter hands it over).

    Returns the frames to send in their place (None when none changed), how many frames
    were read and where the first frame that is not a DataRow starts.  Every row goes
    through the same checks as :func:`mask_data_row`, and gives the same bytes.
    """
    if _fastmask is not None:
        return _fastmask.mask_data_rows(buf, pos, masker.width, masker.plan)  # type: ignore[no-any-return]
    return _py_mask_data_rows(buf, pos, masker.width, masker.plan)


def _py_mask_data_rows(
    buf: bytes, pos: int, width: int, plan: tuple[Op | None, ...]
) -> tuple[bytes | None, int, int]:
    limit = len(buf)
    pieces: list[bytes] = []
    append = pieces.append
    unpack_i32 = _unpack_i32
    seg = pos  # the bytes of buf from seg on are not in pieces yet
    count = 0
    try:
        while pos < limit and buf[pos] == 68:  # "D"
            (flen,) = _unpack_u32(buf, pos + 1)
            fend = pos + 1 + flen
            if flen < 4 or fend > limit:
                raise ProtocolError("invalid message length")
            row = buf[pos + 5 : fend]
            if len(row) < 2 or (row[0] << 8 | row[1]) != width:
                raise ProtocolError("DataRow does not match its RowDescription")
            end = len(row)
            parts: list[bytes] | None = None  # the row's new body, when a value changed
            rseg = 0  # the bytes of row from rseg on are not in parts yet
            p = 2
            for op in plan:
                (ln,) = unpack_i32(row, p)  # struct.error past the end
                p += 4
                if ln < 0:
                    if ln != -1:
                        raise ProtocolError("invalid field length in DataRow")
                    continue
                ve = p + ln
                if ve > end:
                    raise ProtocolError("invalid field length in DataRow")
                if op is None or (op[0] == OP_SCAN and not may_hold_sensitive(row[p:ve], op[3])):  # type: ignore[arg-type]
                    p = ve
                    continue
                if parts is None:
                    parts = []
                kind = op[0]
                if kind == OP_KEEP_LAST:
                    # same length: the head of the value changes, its tail stays in place
                    raw = row[p:ve]
                    shape = raw.translate(op[6])  # type: ignore[arg-type]
                    cache: dict[bytes, tuple[bytes, int]] = op[8]  # type: ignore[assignment]
                    hit = cache.get(shape)
                    if hit is None:
                        hit = _keep_last_split(shape, op[7], op[2], op[3], op[4], op[5])  # type: ignore[arg-type]
                        if ln <= _FORMAT_CACHE_MAX_LEN and len(cache) < _FORMAT_CACHE_SIZE:
                            cache[shape] = hit
                    head, keep_from = hit
                    if keep_from:
                        parts.append(row[rseg:p])
                        parts.append(head)
                        rseg = p + keep_from
                elif kind == OP_CONST:
                    parts.append(row[rseg : p - 4])
                    parts.append(op[1])  # type: ignore[arg-type]
                    rseg = ve
                elif kind == OP_EMAIL:
                    parts.append(row[rseg : p - 4])
                    at = row.rfind(b"@", p, ve)
                    if at > p:
                        n = ve - at - 1
                        parts.append(_EMAIL_HEADS[n] if n < 256 else _pack_i32(5 + n) + b"****@")
                        rseg = at + 1
                    else:
                        parts.append(op[1])  # type: ignore[arg-type]
                        rseg = ve
                else:
                    raw = row[p:ve]
                    values: dict[bytes, bytes] = op[2]  # type: ignore[assignment]
                    new = values.get(raw)
                    if new is None:
                        out = op[1](raw)  # type: ignore[operator]
                        new = _NULL if out is None else _pack_i32(len(out)) + out
                        if len(values) < CACHE_SIZE:
                            values[raw] = new
                    parts.append(row[rseg : p - 4])
                    parts.append(new)
                    rseg = ve
                p = ve
            if parts is not None:
                parts.append(row[rseg:])
                new_row = b"".join(parts)
                append(buf[seg:pos])
                append(b"D" + _pack_u32(len(new_row) + 4))
                append(new_row)
                seg = fend
            pos = fend
            count += 1
    except struct.error:
        raise ProtocolError("DataRow is shorter than its columns") from None
    if not pieces:
        return None, count, pos
    append(buf[seg:pos])
    return b"".join(pieces), count, pos


# -- COPY ---------------------------------------------------------------------------------------


class UnsupportedCopy(Exception):
    """Binary COPY of sensitive columns: the caller refuses the statement."""


_TEXT_ESCAPES = {
    ord("b"): "\b",
    ord("f"): "\f",
    ord("n"): "\n",
    ord("r"): "\r",
    ord("t"): "\t",
    ord("v"): "\v",
}


def _copy_text_decode(field: str) -> str:
    if "\\" not in field:
        return field
    out = []
    i = 0
    n = len(field)
    while i < n:
        ch = field[i]
        if ch != "\\" or i + 1 >= n:
            out.append(ch)
            i += 1
            continue
        nxt = field[i + 1]
        if nxt in "01234567":
            j = i + 1
            while j < n and j < i + 4 and field[j] in "01234567":
                j += 1
            out.append(chr(int(field[i + 1 : j], 8)))
            i = j
        elif nxt == "x" and i + 2 < n and field[i + 2] in "0123456789abcdefABCDEF":
            j = i + 2
            while j < n and j < i + 4 and field[j] in "0123456789abcdefABCDEF":
                j += 1
            out.append(chr(int(field[i + 2 : j], 16)))
            i = j
        else:
            out.append(_TEXT_ESCAPES.get(ord(nxt), nxt))
            i += 2
    return "".join(out)


def _copy_text_encode(value: str, delimiter: str) -> str:
    out = value.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
    if delimiter != "\t":
        out = out.replace(delimiter, "\\" + delimiter)
    return out.replace("\t", "\\t")


class _Left:
    """What CopyMasker._apply returns for a value a scan left as it was."""


LEFT = _Left()


# Delimiters with which a text COPY line without backslashes splits on the delimiter byte
# and a value's escaping is one replacement per byte (PostgreSQL refuses the others).
_PLAIN_DELIMITERS = frozenset(
    b for b in range(1, 128) if b not in b"\\.\r\nabcdefghijklmnopqrstuvwxyz0123456789"
)


@dataclass(slots=True)
class CopyMasker:
    """Masks the rows of a ``COPY ... TO STDOUT`` in text or CSV format.  Each CopyData
    message from the server carries one row (text format rows never contain a raw newline;
    a CSV row may, inside quotes).  Values are masked as text; a column whose type is known
    not to be text-like gets NULL."""

    options: CopyOptions
    maskers: tuple[Masker | None, ...]
    header_pending: bool
    # text format with a plain delimiter: (delimiter byte, NULL string, op per column), for
    # the lines that need no unescaping (see mask_frames)
    plan: tuple[int, bytes, tuple[Op | None, ...]] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.plan = self._compile_text_plan()

    def _compile_text_plan(self) -> tuple[int, bytes, tuple[Op | None, ...]] | None:
        opts = self.options
        if opts.format != "text" or len(opts.delimiter) != 1:
            return None
        delim = ord(opts.delimiter)
        if delim not in _PLAIN_DELIMITERS:
            return None
        try:
            null = opts.null.encode("utf-8")
        except UnicodeEncodeError:
            return None
        ops: list[Op | None] = []
        for m in self.maskers:
            if m is None:
                ops.append(None)
            elif isinstance(m, Constant):
                v = m.value
                ops.append((OP_CONST, null if v is None else self._escape(v)))
            elif isinstance(m, BytePartial) and m.native is not None and m.native[0] == OP_EMAIL:
                placeholder = m.native[1]
                assert isinstance(placeholder, bytes)
                ops.append((OP_EMAIL, self._escape(placeholder)))
            elif isinstance(m, BytePartial) and m.native is not None:
                ops.append(_keep_last_op(m.native))
            elif isinstance(m, Scan):
                ops.append((OP_SCAN, m.scan, {}, m.ip))
            else:
                ops.append((OP_CALL, m, {}))
        return delim, null, tuple(ops)

    def _escape(self, value: bytes) -> bytes:
        """_copy_text_encode on bytes."""
        delimiter = self.options.delimiter.encode()
        out = value.replace(b"\\", b"\\\\").replace(b"\n", b"\\n").replace(b"\r", b"\\r")
        if delimiter != b"\t":
            out = out.replace(delimiter, b"\\" + delimiter)
        return out.replace(b"\t", b"\\t")

    def mask(self, data: bytes) -> bytes:
        if self.header_pending:
            self.header_pending = False
            return data
        return self._mask_message(data)

    def _mask_message(self, data: bytes) -> bytes:
        if self.options.format == "csv":
            return self._mask_csv(data)
        lines = data.split(b"\n")
        return b"\n".join(self._mask_text_line(line) if line else line for line in lines)

    def mask_frames(self, buf: bytes, pos: int) -> tuple[bytes | None, int, int]:
        """Mask the CopyData frames that follow each other in ``buf`` from ``pos``, like
        :func:`mask_data_rows` (the bytes :meth:`mask` gives message by message, the same
        checks).  A text line without a backslash, ending in its only newline, is masked by
        splitting its bytes; any other line (escapes, CSV) goes through the decoding path of
        :meth:`mask`."""
        pieces: list[bytes] = []
        count = 0
        if self.header_pending and pos < len(buf) and buf[pos] == 100:
            # the header line passes as it is
            self.header_pending = False
            _, count, next_pos = _copy_frames(buf, pos, 1)
            if next_pos == pos:
                return None, 0, pos
            pieces.append(buf[pos:next_pos])
            pos = next_pos
        plan = self.plan
        if plan is not None and _fastmask is not None:
            out, n, end = _fastmask.mask_copy_rows(
                buf, pos, plan[0], plan[1], plan[2], self._mask_message
            )
        else:
            out, n, end = self._py_mask_frames(buf, pos)
        if not pieces:
            return out, n, end
        pieces.append(buf[pos:end] if out is None else out)
        return b"".join(pieces), count + n, end

    def _py_mask_frames(self, buf: bytes, pos: int) -> tuple[bytes | None, int, int]:
        plan = self.plan
        line_masker = self._py_text_line if plan is not None else None
        limit = len(buf)
        pieces: list[bytes] = []
        append = pieces.append
        seg = pos
        count = 0
        while pos < limit and buf[pos] == 100:  # "d"
            if limit - pos < 5:
                raise ProtocolError("truncated message")
            (flen,) = _unpack_u32(buf, pos + 1)
            fend = pos + 1 + flen
            if flen < 4 or fend > limit:
                raise ProtocolError("invalid message length")
            data = buf[pos + 5 : fend]
            if (
                line_masker is not None
                and len(data) > 1
                and data.find(b"\n") == len(data) - 1
                and data[-2] != 13  # "\r"
                and b"\\" not in data
            ):
                new = line_masker(data)
            else:
                new = self._mask_message(data)
            append(buf[seg:pos])
            append(b"d" + _pack_u32(len(new) + 4))
            append(new)
            seg = fend
            pos = fend
            count += 1
        if not pieces:
            return None, count, pos
        append(buf[seg:pos])
        return b"".join(pieces), count, pos

    def _py_text_line(self, data: bytes) -> bytes:
        """A text COPY line without backslashes, ending in its only newline: fields split
        on the delimiter byte, values need no unescaping."""
        assert self.plan is not None
        delim, null, ops = self.plan
        fields = data[:-1].split(bytes((delim,)))
        for i, op in enumerate(ops[: len(fields)]):
            if op is None:
                continue
            f = fields[i]
            if f == null:
                continue
            kind = op[0]
            if kind == OP_SCAN and not may_hold_sensitive(f, op[3]):  # type: ignore[arg-type]
                continue
            if kind == OP_CONST:
                fields[i] = op[1]  # type: ignore[call-overload]
                continue
            if kind == OP_KEEP_LAST:
                shape = f.translate(op[6])  # type: ignore[arg-type]
                cache: dict[bytes, tuple[bytes, int]] = op[8]  # type: ignore[assignment]
                hit = cache.get(shape)
                if hit is None:
                    hit = _keep_last_split(shape, op[7], op[2], op[3], op[4], op[5])  # type: ignore[arg-type]
                    if len(f) <= _FORMAT_CACHE_MAX_LEN and len(cache) < _FORMAT_CACHE_SIZE:
                        cache[shape] = hit
                new = hit[0] + f[hit[1] :]
            elif kind == OP_EMAIL:
                at = f.rfind(b"@")
                if at <= 0:
                    fields[i] = op[1]  # type: ignore[call-overload]
                    continue
                new = b"****@" + f[at + 1 :]
            else:
                values: dict[bytes, bytes] = op[2]  # type: ignore[assignment]
                cached = values.get(f)
                if cached is None:
                    out = op[1](f)  # type: ignore[operator]
                    if out is None:
                        cached = null
                    elif kind == OP_SCAN and out is f:
                        cached = f  # a value the scan left is written as it came
                    else:
                        cached = self._escape(out)
                    if len(values) < CACHE_SIZE:
                        values[f] = cached
                fields[i] = cached
                continue
            fields[i] = self._escape(new)
        return bytes((delim,)).join(fields) + b"\n"

    def _apply(self, i: int, value: str) -> str | _Left | None:
        """The masked value, or LEFT when a value scan left it (it returned its input: the
        field is then written as it came, not re-escaped or re-quoted)."""
        fn = self.maskers[i] if i < len(self.maskers) else None
        if fn is None:
            return LEFT
        raw = value.encode("utf-8", "surrogateescape")
        out = fn(raw)
        if out is raw and isinstance(fn, Scan):
            return LEFT
        return None if out is None else out.decode("utf-8", "surrogateescape")

    def _mask_text_line(self, line: bytes) -> bytes:
        opts = self.options
        text = line.decode("utf-8", "surrogateescape")
        cr = text.endswith("\r")
        if cr:
            text = text[:-1]
        fields = _split_text(text, opts.delimiter)
        out = []
        for i, f in enumerate(fields):
            if i >= len(self.maskers) or self.maskers[i] is None or f == opts.null:
                out.append(f)
                continue
            value = _copy_text_decode(f)
            masked = self._apply(i, value)
            if isinstance(masked, _Left):
                out.append(f)
                continue
            out.append(opts.null if masked is None else _copy_text_encode(masked, opts.delimiter))
        return (opts.delimiter.join(out) + ("\r" if cr else "")).encode("utf-8", "surrogateescape")

    def _mask_csv(self, data: bytes) -> bytes:
        opts = self.options
        text = data.decode("utf-8", "surrogateescape")
        eol = ""
        for e in ("\r\n", "\n", "\r"):
            if text.endswith(e):
                eol = e
                text = text[: -len(e)]
                break
        fields = _split_csv(text, opts.delimiter, opts.quote, opts.escape)
        out = []
        q, esc = opts.quote, opts.escape
        for i, (raw, value, quoted) in enumerate(fields):
            if (
                i >= len(self.maskers)
                or self.maskers[i] is None
                or (not quoted and value == opts.null)
            ):
                out.append(raw)
                continue
            masked = self._apply(i, value)
            if isinstance(masked, _Left):
                out.append(raw)
                continue
            if masked is None:
                out.append(opts.null)
            else:
                body = masked.replace(esc, esc + esc) if esc != q else masked
                out.append(q + body.replace(q, esc + q) + q)
        return (opts.delimiter.join(out) + eol).encode("utf-8", "surrogateescape")


def _copy_frames(buf: bytes, pos: int, most: int) -> tuple[None, int, int]:
    """Step over up to ``most`` CopyData frames from ``pos``, checking their lengths."""
    limit = len(buf)
    count = 0
    while count < most and pos < limit and buf[pos] == 100:
        if limit - pos < 5:
            raise ProtocolError("truncated message")
        (flen,) = _unpack_u32(buf, pos + 1)
        if flen < 4 or pos + 1 + flen > limit:
            raise ProtocolError("invalid message length")
        pos += 1 + flen
        count += 1
    return None, count, pos


def _split_text(text: str, delimiter: str) -> list[str]:
    """Split a text-format COPY row on unescaped delimiters, keeping escapes."""
    if "\\" + delimiter not in text:
        return text.split(delimiter)
    out = []
    cur = []
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "\\" and i + 1 < n:
            cur.append(text[i : i + 2])
            i += 2
            continue
        if ch == delimiter:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    out.append("".join(cur))
    return out


def _split_csv(text: str, delimiter: str, quote: str, escape: str) -> list[tuple[str, str, bool]]:
    """(raw text, value, was quoted) for each field of a CSV row."""
    out = []
    i = 0
    n = len(text)
    while True:
        start = i
        if i < n and text[i] == quote:
            i += 1
            buf = []
            while i < n:
                ch = text[i]
                if (
                    ch == escape
                    and i + 1 < n
                    and text[i + 1] in (quote, escape)
                    and (escape != quote or text[i + 1] == quote)
                ):
                    buf.append(text[i + 1])
                    i += 2
                    continue
                if ch == quote:
                    i += 1
                    break
                buf.append(ch)
                i += 1
            # anything up to the delimiter after the closing quote belongs to the field
            while i < n and text[i] != delimiter:
                buf.append(text[i])
                i += 1
            out.append((text[start:i], "".join(buf), True))
        else:
            j = text.find(delimiter, i)
            j = n if j < 0 else j
            out.append((text[i:j], text[i:j], False))
            i = j
        if i >= n:
            return out
        i += 1  # the delimiter
        if i == n:
            out.append(("", "", False))
            return out


def compile_copy_masker(
    plan: MaskPlan,
    options: CopyOptions,
    *,
    key: bytes,
    strategies: dict[DataClass, str] | None = None,
    safety_net: bool = False,
) -> CopyMasker | None:
    """Bind ``plan`` to a COPY's format; None when nothing needs masking.  Raises
    :class:`UnsupportedCopy` for binary COPY with columns to mask.

    With ``safety_net``, columns without a mask are scanned as in
    :func:`compile_row_masker`: text-like ones for ``COPY table`` (whose column types are
    known), every one for ``COPY (query)`` (values are text).  Binary COPY is left to
    the plan (the safety net cannot read it, and does not refuse it)."""
    if not plan.active and not (safety_net and options.format != "binary"):
        return None
    if options.format == "binary":
        raise UnsupportedCopy("binary COPY of sensitive columns cannot be masked; use text or CSV")
    strat = dict(DEFAULT_STRATEGIES)
    if strategies:
        strat.update(strategies)
    types = options.type_oids or ()
    maskers: list[Masker | None] = []
    for i, m in enumerate(plan.columns):
        oid = types[i] if i < len(types) else None
        type_oid = 25 if oid is None or oid >= 16384 else oid
        if m is None:
            maskers.append(
                make_safety_net_masker(type_oid, -1, 0, key, strat) if safety_net else None
            )
        elif m.strategy == "detect":
            maskers.append(make_detect_masker(type_oid, -1, 0, key, strat))
        else:
            maskers.append(make_masker(m.strategy, m.data_class, type_oid, -1, 0, key))
    if all(m is None for m in maskers):
        return None
    return CopyMasker(options, tuple(maskers), options.header)
