"""Masking MySQL/MariaDB wire values, by the column's type as its ColumnDefinition tells,
in the text protocol (every value a length-encoded string) and the binary protocol
(:mod:`dbsentry.engines.mysql.wire.values`), so that a masked value is still a valid value
of the type the client was told.

The decision (the same as PostgreSQL's, docs/masking.md "Strategies and types"):

- **Column definitions are never rewritten.**  A masked value keeps its column's type, and
  a masked string is cut to the column's length in characters (``length`` divided by the
  charset's bytes per character), as PostgreSQL cuts ``varchar(n)``.  So the metadata the
  server sent passes unchanged, which matters twice over in MySQL: a prepared statement's
  column definitions go to the client at COM_STMT_PREPARE, before anything is executed,
  and MariaDB's metadata cache (``MARIADB_CLIENT_CACHE_METADATA``) and MySQL's optional
  metadata skip them on later executions.
- **Strings** (CHAR, VARCHAR, TEXT, BLOB, ENUM, SET; in the column's charset, bytes for the
  binary charset): the strategy's text (``partial``, ``hash``, ``redact``), NULL for ``null``.
- **JSON** (MySQL's type; MariaDB's JSON is a LONGTEXT and masked as a string): a JSON
  string; a document that is a JSON string is masked inside, any other document is
  replaced whole (``partial`` becomes ``redact``).  Value detection masks the strings
  inside a document and writes it back (the spacing is not kept).
- **Types that cannot hold a placeholder** get a fixed value of their own type, never NULL
  (only the ``null`` strategy gives NULL): integers and YEAR ``0``, FLOAT/DOUBLE ``0``,
  DECIMAL ``0`` with the column's decimals, DATE ``1900-01-01``, DATETIME/TIMESTAMP
  ``1900-01-01 00:00:00`` (with the column's fractional digits), TIME ``00:00:00``, BIT
  zero bytes of the same length.  GEOMETRY and VECTOR become NULL.
- **Value detection** (``detect``: unresolved lineage, value-scanned columns, the safety
  net) scans strings and JSON documents span by span (:func:`dbsentry.masking.strategies.
  scan_text`), and integers and decimals of 9 digits or more as a whole (a card stored as
  a BIGINT becomes ``0``, in text and binary alike); dates, times, floats and bits are
  left alone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import orjson

from dbsentry.engines.mysql.wire.charsets import charset
from dbsentry.engines.mysql.wire.constants import BINARY_CHARSET, ColumnType
from dbsentry.engines.mysql.wire.results import ColumnDefinition
from dbsentry.engines.mysql.wire.values import DateTime, Time, Value
from dbsentry.masking.classes import DataClass
from dbsentry.masking.detect import detect_value
from dbsentry.masking.strategies import (
    DEFAULT_STRATEGIES,
    PLACEHOLDERS,
    mask_text,
    may_hold_sensitive,
    scan_text,
)

__all__ = ["ValueMasker", "kind_of"]

_INTS = frozenset({ColumnType.TINY, ColumnType.SHORT, ColumnType.INT24, ColumnType.LONG, ColumnType.LONGLONG, ColumnType.YEAR})  # fmt: skip
_FLOATS = frozenset({ColumnType.FLOAT, ColumnType.DOUBLE})
_DECIMALS = frozenset({ColumnType.DECIMAL, ColumnType.NEWDECIMAL})
_DATES = frozenset({ColumnType.DATE, ColumnType.NEWDATE})
_DATETIMES = frozenset({ColumnType.DATETIME, ColumnType.TIMESTAMP, ColumnType.DATETIME2, ColumnType.TIMESTAMP2})  # fmt: skip
_TIMES = frozenset({ColumnType.TIME, ColumnType.TIME2})
_OPAQUE = frozenset({ColumnType.GEOMETRY, ColumnType.VECTOR})
_BYTES_PER_CHAR = {
    "utf8mb4": 4, "utf8mb3": 3, "utf16": 4, "utf16le": 4, "utf32": 4, "ucs2": 2, "big5": 2,
    "gbk": 2, "sjis": 2, "cp932": 2, "gb2312": 2, "euckr": 2, "gb18030": 4, "ujis": 3,
    "eucjpms": 3,
}  # fmt: skip


def kind_of(col: ColumnDefinition) -> str:
    """``int``, ``float``, ``decimal``, ``date``, ``datetime``, ``time``, ``bit``, ``json``,
    ``opaque`` (GEOMETRY, VECTOR), ``null`` or ``string`` (everything else)."""
    t = col.type
    if t in _INTS:
        return "int"
    if t in _FLOATS:
        return "float"
    if t in _DECIMALS:
        return "decimal"
    if t in _DATES:
        return "date"
    if t in _DATETIMES:
        return "datetime"
    if t in _TIMES:
        return "time"
    if t == ColumnType.BIT:
        return "bit"
    if t == ColumnType.JSON:
        return "json"
    if t in _OPAQUE:
        return "opaque"
    if t == ColumnType.NULL:
        return "null"
    return "string"


_UNCHANGED = b"\x00unchanged"  # compared by identity only


def _fraction(col: ColumnDefinition) -> str:
    return "." + "0" * col.decimals if 0 < col.decimals <= 6 else ""


class ValueMasker:
    """Masks the values of one column: :meth:`text` the bytes of a text-protocol value,
    :meth:`binary` a decoded binary-protocol value; None is NULL.  A value left alone is
    returned as the same object, so callers can tell.  By ``data_class`` with
    ``strategy`` (``partial``, ``hash``, ``redact``, ``null``), or by value detection
    (``strategy="detect"``, looking for ``classes``, None: all)."""

    __slots__ = ("_cache", "_class", "_classes", "_codec", "_col", "_constant", "_detect", "_ip", "_key", "_kind", "_limit", "_strategies", "_strategy")  # fmt: skip

    def __init__(
        self,
        col: ColumnDefinition,
        data_class: DataClass | None,
        strategy: str,
        *,
        key: bytes = b"",
        strategies: Mapping[DataClass, str] | None = None,
        classes: frozenset[DataClass] | None = None,
    ) -> None:
        self._col = col
        self._kind = kind_of(col)
        self._class = data_class
        self._strategy = strategy
        self._detect = strategy == "detect"
        self._key = key
        self._strategies = dict(strategies or DEFAULT_STRATEGIES)
        self._classes = classes
        self._ip = classes is None or DataClass.IP_ADDRESS in classes
        cs = charset(col.charset)
        self._codec = "utf-8" if cs is None or cs.codec is None else cs.codec
        per = _BYTES_PER_CHAR.get(cs.name, 1) if cs is not None else 1
        self._limit = col.length // per if col.length and self._kind == "string" else 0
        self._cache: dict[bytes, bytes | None] = {}
        self._constant: dict[str, bytes | None] = {}

    @property
    def kind(self) -> str:
        return self._kind

    # -- text

    def _mask(self, text: str, whole_json: bool = False) -> str | None:
        if self._detect:
            if not may_hold_sensitive(text.encode("utf-8", "surrogateescape"), self._ip):
                return text
            return scan_text(text, self._strategies, self._key, self._classes)
        strategy = "redact" if whole_json and self._strategy == "partial" else self._strategy
        return mask_text(text, self._class, strategy, self._key)

    def _decode(self, raw: bytes) -> str:
        if self._col.charset != BINARY_CHARSET:
            try:
                return raw.decode(self._codec)
            except (UnicodeDecodeError, LookupError):
                pass
        return raw.decode("utf-8", "surrogateescape")

    def _encode(self, text: str) -> bytes:
        if self._col.charset != BINARY_CHARSET:
            try:
                return text.encode(self._codec, "replace")
            except (UnicodeEncodeError, LookupError):
                pass
        return text.encode("utf-8", "surrogateescape")

    def _cached(self, raw: bytes, fn: Callable[[bytes], bytes | None]) -> bytes | None:
        """``fn(raw)``, remembered for the column's first 4,096 distinct values; a value
        left alone comes back as ``raw`` itself."""
        if raw in self._cache:
            hit = self._cache[raw]
            return raw if hit is _UNCHANGED else hit
        out = fn(raw)
        if len(self._cache) < 4096:
            self._cache[raw] = _UNCHANGED if out is raw else out
        return out

    def _string(self, raw: bytes) -> bytes | None:
        if not self._detect and self._strategy in ("redact", "null"):
            # the same for every value: made once
            if "" not in self._constant:
                masked = mask_text("", self._class, self._strategy, self._key)
                if masked is not None and self._limit:
                    masked = masked[: self._limit]
                self._constant[""] = None if masked is None else self._encode(masked)
            return self._constant[""]
        text = self._decode(raw)
        masked = self._mask(text)
        if masked is None:
            return None
        if masked == text:
            return raw
        if self._limit and len(masked) > self._limit:
            masked = masked[: self._limit]
        return self._encode(masked)

    def _json(self, raw: bytes) -> bytes | None:
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            masked = self._mask(raw.decode("utf-8", "surrogateescape"))
            if masked is None:
                return None
            return raw if self._detect and masked == raw.decode("utf-8", "surrogateescape") else orjson.dumps(masked)
        if not self._detect:
            inner = doc if isinstance(doc, str) else raw.decode("utf-8", "surrogateescape")
            masked = self._mask(inner, whole_json=not isinstance(doc, str))
            return None if masked is None else orjson.dumps(masked)
        changed = False

        def walk(v: Any) -> Any:
            nonlocal changed
            if isinstance(v, str):
                m = self._mask(v)
                if m != v:
                    changed = True
                    return m if m is not None else PLACEHOLDERS[None]
                return v
            if isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 10**8:
                if self._number_hit(str(v)):
                    changed = True
                    return PLACEHOLDERS[detect_value(str(v))]
                return v
            if isinstance(v, list):
                return [walk(x) for x in v]
            if isinstance(v, dict):
                return {walk(k): walk(x) for k, x in v.items()}
            return v

        try:
            out = walk(doc)
        except RecursionError:
            return None  # nested too deeply to scan: withheld
        return orjson.dumps(out) if changed else raw

    def _number_hit(self, text: str) -> bool:
        """Value detection on a number: 9 digits or more, detected as a whole."""
        if sum(ch.isdigit() for ch in text) < 9:
            return False
        found = detect_value(text)
        return found is not None and (self._classes is None or found in self._classes)

    def _typed_null(self) -> bool:
        """Whether a typed column's masked value is NULL (the ``null`` strategy)."""
        if self._detect:
            return False
        return self._strategy == "null"

    def text(self, raw: bytes) -> bytes | None:
        """A text-protocol value (its bytes), masked."""
        kind = self._kind
        if kind == "string":
            return self._cached(raw, self._string)
        if kind == "json":
            return self._cached(raw, self._json)
        if kind == "null":
            return raw
        if self._detect:
            if kind in ("int", "decimal") and self._number_hit(raw.decode("ascii", "replace")):
                return b"0" if kind == "int" else b"0" + _fraction(self._col).encode()
            return raw
        if self._typed_null() or kind == "opaque":
            return None
        col = self._col
        if kind in ("int", "float"):
            return b"0"
        if kind == "decimal":
            return b"0" + _fraction(col).encode()
        if kind == "date":
            return b"1900-01-01"
        if kind == "datetime":
            return b"1900-01-01 00:00:00" + _fraction(col).encode()
        if kind == "time":
            return b"00:00:00" + _fraction(col).encode()
        return b"\x00" * len(raw)  # bit

    # -- binary

    def binary(self, value: Value) -> Value:
        """A decoded binary-protocol value, masked (None: NULL)."""
        kind = self._kind
        if value is None or kind == "null":
            return value
        if kind in ("string", "json"):
            raw = value if isinstance(value, bytes) else str(value).encode()
            out = self._cached(raw, self._string if kind == "string" else self._json)
            return value if out is raw else out
        if self._detect:
            if kind in ("int", "decimal") and self._number_hit(str(value)):
                return 0 if kind == "int" else "0" + _fraction(self._col)
            return value
        if self._typed_null() or kind == "opaque":
            return None
        if kind == "int":
            return 0
        if kind == "float":
            return 0.0
        if kind == "decimal":
            return "0" + _fraction(self._col)
        if kind in ("date", "datetime"):
            return DateTime(1900, 1, 1)
        if kind == "time":
            return Time()
        return b"\x00" * len(value) if isinstance(value, bytes) else value  # bit
