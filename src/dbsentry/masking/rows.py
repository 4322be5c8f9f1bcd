"""Rewriting result rows on the wire: RowDescription, DataRow and COPY data.

Sans-IO like the codec: message *bodies* in, bodies out (wrap them with
``codec.frame(b"D", body)``).  The hot path is :func:`mask_data_row`: it walks the field
lengths of a DataRow up to the last masked column, calls the column's masker on the
fields it must change and splices the result, copying nothing else.  A
:class:`RowMasker` is compiled once per result (RowDescription + result formats + plan).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from dbsentry.masking.catalog import ClassMap
from dbsentry.masking.classes import DataClass
from dbsentry.masking.lineage import ColumnMask, CopyOptions, MaskPlan
from dbsentry.masking.strategies import (
    DEFAULT_STRATEGIES,
    Constant,
    Masker,
    make_detect_masker,
    make_masker,
)
from dbsentry.wire.pg.codec import ProtocolError, read_cstr

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
]

_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")
_FIELD_TAIL = struct.Struct("!IhIhih")
_unpack_i32 = _I32.unpack_from
_pack_i32 = _I32.pack
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
        name, pos = read_cstr(body, pos, end)
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


def compile_row_masker(
    plan: MaskPlan,
    fields: Sequence[Field],
    *,
    key: bytes,
    result_formats: Sequence[int] | None = None,
    classmap: ClassMap | None = None,
    strategies: dict[DataClass, str] | None = None,
) -> RowMasker | None:
    """Bind ``plan`` to a result's RowDescription; None when nothing needs masking.

    ``result_formats`` are the codes from Bind (a RowDescription answering Describe of a
    statement says text for every column; the formats chosen at Bind are the real ones).
    With ``classmap``, a column that RowDescription names as a sensitive table column
    (table oid + attnum) is masked even if lineage missed it (defence in depth).  When
    the plan's width does not match the result's, lineage was wrong about the statement,
    and every column that can carry sensitive data is value-scanned.
    """
    n = len(fields)
    fmts = _formats(n, result_formats, fields)
    strat = dict(DEFAULT_STRATEGIES)
    if strategies:
        strat.update(strategies)
    masks: list[ColumnMask | None]
    if len(plan.columns) == n:
        masks = list(plan.columns)
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
            maskers.append(None)
        elif m.strategy == "detect":
            maskers.append(make_detect_masker(f.type_oid, f.typmod, fmts[i], key, strat))
        else:
            maskers.append(
                make_masker(m.strategy, m.data_class, f.type_oid, f.typmod, fmts[i], key)
            )
    last = max((i for i, mk in enumerate(maskers) if mk is not None), default=-1)
    if last < 0:
        return None
    return RowMasker(tuple(maskers), n, last, tuple(masks), tuple(_op(m) for m in maskers))


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


@dataclass(slots=True)
class CopyMasker:
    """Masks the rows of a ``COPY ... TO STDOUT`` in text or CSV format.  Each CopyData
    message from the server carries one row (text format rows never contain a raw newline;
    a CSV row may, inside quotes).  Values are masked as text; a column whose type is known
    not to be text-like gets NULL."""

    options: CopyOptions
    maskers: tuple[Masker | None, ...]
    header_pending: bool

    def mask(self, data: bytes) -> bytes:
        if self.header_pending:
            self.header_pending = False
            return data
        if self.options.format == "csv":
            return self._mask_csv(data)
        lines = data.split(b"\n")
        return b"\n".join(self._mask_text_line(line) if line else line for line in lines)

    def _apply(self, i: int, value: str) -> str | None:
        fn = self.maskers[i] if i < len(self.maskers) else None
        if fn is None:
            return value
        out = fn(value.encode("utf-8", "surrogateescape"))
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
            masked = self._apply(i, _copy_text_decode(f))
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
            if masked is None:
                out.append(opts.null)
            else:
                body = masked.replace(esc, esc + esc) if esc != q else masked
                out.append(q + body.replace(q, esc + q) + q)
        return (opts.delimiter.join(out) + eol).encode("utf-8", "surrogateescape")


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
) -> CopyMasker | None:
    """Bind ``plan`` to a COPY's format; None when nothing needs masking.  Raises
    :class:`UnsupportedCopy` for binary COPY with columns to mask."""
    if not plan.active:
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
            maskers.append(None)
        elif m.strategy == "detect":
            maskers.append(make_detect_masker(type_oid, -1, 0, key, strat))
        else:
            maskers.append(make_masker(m.strategy, m.data_class, type_oid, -1, 0, key))
    if all(m is None for m in maskers):
        return None
    return CopyMasker(options, tuple(maskers), options.header)
