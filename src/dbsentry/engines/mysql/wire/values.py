"""Values of the binary protocol (COM_STMT_EXECUTE parameters, query attributes and binary
result rows), decoded to Python values and encoded back exactly.

========================================  =====================================
wire type                                 Python value
========================================  =====================================
TINY, SHORT, YEAR, INT24, LONG, LONGLONG  ``int`` (signed, or unsigned with the flag)
FLOAT, DOUBLE                             ``float`` (FLOAT goes through 4 bytes)
DECIMAL, NEWDECIMAL                       ``str``, the decimal's text as sent
DATE, DATETIME, TIMESTAMP, NEWDATE        :class:`DateTime` (zero dates included)
TIME                                      :class:`Time` (days, sign, microseconds)
NULL                                      ``None``
strings, blobs, JSON, BIT, ENUM, SET,     ``bytes`` (the charset is the session's
GEOMETRY, VARCHAR, VECTOR                 business)
========================================  =====================================

Dates and times keep every field the wire carries, so ``0000-00-00`` and TIME values over
24 hours survive; :meth:`DateTime.to_python` / :meth:`Time.to_python` give ``datetime``
values where Python has one. Encoders write the shortest form MySQL itself writes.
"""

from __future__ import annotations

import datetime as dt
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from dbsentry.engines.mysql.wire import primitives as p
from dbsentry.engines.mysql.wire.constants import PARAM_UNSIGNED, ColumnType
from dbsentry.errors import ProtocolError

__all__ = [
    "DateTime",
    "ParamType",
    "Time",
    "Value",
    "decode_binary_value",
    "encode_binary_value",
    "is_null",
    "null_bitmap",
    "read_null_bitmap",
    "value_text",
]


@dataclass(frozen=True, slots=True)
class DateTime:
    """DATE, DATETIME and TIMESTAMP as the binary protocol carries them."""

    year: int = 0
    month: int = 0
    day: int = 0
    hour: int = 0
    minute: int = 0
    second: int = 0
    microsecond: int = 0

    @classmethod
    def of(cls, value: dt.date) -> DateTime:
        if isinstance(value, dt.datetime):
            return cls(value.year, value.month, value.day, value.hour, value.minute, value.second, value.microsecond)
        return cls(value.year, value.month, value.day)

    def to_python(self) -> dt.datetime | None:
        """The value as a ``datetime``; None for a zero or invalid date."""
        try:
            return dt.datetime(self.year, self.month, self.day, self.hour, self.minute, self.second, self.microsecond)
        except ValueError:
            return None

    def to_date(self) -> dt.date | None:
        try:
            return dt.date(self.year, self.month, self.day)
        except ValueError:
            return None

    def __str__(self) -> str:
        text = f"{self.year:04d}-{self.month:02d}-{self.day:02d}"
        if self.hour or self.minute or self.second or self.microsecond:
            text += f" {self.hour:02d}:{self.minute:02d}:{self.second:02d}"
            if self.microsecond:
                text += f".{self.microsecond:06d}"
        return text


@dataclass(frozen=True, slots=True)
class Time:
    """TIME as the binary protocol carries it: a sign, days and a time of day."""

    negative: bool = False
    days: int = 0
    hours: int = 0
    minutes: int = 0
    seconds: int = 0
    microseconds: int = 0

    @classmethod
    def of(cls, value: dt.timedelta) -> Time:
        negative = value < dt.timedelta(0)
        if negative:
            value = -value
        secs = value.seconds
        return cls(negative, value.days, secs // 3600, secs // 60 % 60, secs % 60, value.microseconds)

    def to_python(self) -> dt.timedelta:
        delta = dt.timedelta(
            days=self.days, hours=self.hours, minutes=self.minutes, seconds=self.seconds, microseconds=self.microseconds
        )
        return -delta if self.negative else delta

    def __str__(self) -> str:
        hours = self.days * 24 + self.hours
        text = f"{'-' if self.negative else ''}{hours:02d}:{self.minutes:02d}:{self.seconds:02d}"
        if self.microseconds:
            text += f".{self.microseconds:06d}"
        return text


Value = int | float | str | bytes | DateTime | Time | None


@dataclass(frozen=True, slots=True)
class ParamType:
    """A parameter's two type bytes in COM_STMT_EXECUTE: the column type and a flag byte
    (``0x80``: unsigned)."""

    type: int
    flags: int = 0

    @property
    def unsigned(self) -> bool:
        return bool(self.flags & PARAM_UNSIGNED)


_INT_SIZES: dict[int, int] = {
    ColumnType.TINY: 1,
    ColumnType.SHORT: 2,
    ColumnType.YEAR: 2,
    ColumnType.INT24: 4,
    ColumnType.LONG: 4,
    ColumnType.LONGLONG: 8,
}
_DATETIMES = frozenset({ColumnType.DATE, ColumnType.DATETIME, ColumnType.TIMESTAMP, ColumnType.NEWDATE})
_DECIMALS = frozenset({ColumnType.DECIMAL, ColumnType.NEWDECIMAL})
_BYTES = frozenset(
    {
        ColumnType.VARCHAR,
        ColumnType.BIT,
        ColumnType.JSON,
        ColumnType.ENUM,
        ColumnType.SET,
        ColumnType.TINY_BLOB,
        ColumnType.MEDIUM_BLOB,
        ColumnType.LONG_BLOB,
        ColumnType.BLOB,
        ColumnType.VAR_STRING,
        ColumnType.STRING,
        ColumnType.GEOMETRY,
        ColumnType.VECTOR,
    }
)
# Every type a binary value may have on the wire (the others are server-internal).
WIRE_TYPES = frozenset(
    {*_INT_SIZES, *_DATETIMES, *_DECIMALS, *_BYTES, ColumnType.FLOAT, ColumnType.DOUBLE, ColumnType.TIME, ColumnType.NULL}
)
_FLOAT = struct.Struct("<f")
_DOUBLE = struct.Struct("<d")


def _type_name(type_: int) -> str:
    try:
        return ColumnType(type_).name
    except ValueError:
        return str(type_)


def decode_binary_value(r: p.Reader, type_: int, unsigned: bool) -> Value:
    """Read one non-NULL value of ``type_`` at the reader's position."""
    size = _INT_SIZES.get(type_)
    if size is not None:
        raw = r.fixed(size, "integer value")
        return int.from_bytes(raw, "little", signed=not unsigned)
    if type_ in _BYTES:
        return r.lenenc_bytes("string value")
    if type_ == ColumnType.DOUBLE:
        return float(_DOUBLE.unpack(r.fixed(8, "DOUBLE value"))[0])
    if type_ == ColumnType.FLOAT:
        return float(_FLOAT.unpack(r.fixed(4, "FLOAT value"))[0])
    if type_ in _DECIMALS:
        return p.text_of(r.lenenc_bytes("DECIMAL value"))
    if type_ in _DATETIMES:
        length = r.int1()
        if length not in (0, 4, 7, 11):
            raise ProtocolError(f"invalid length {length} of a {_type_name(type_)} value")
        if length == 0:
            return DateTime()
        year, month, day = r.int2(), r.int1(), r.int1()
        if length == 4:
            return DateTime(year, month, day)
        hour, minute, second = r.int1(), r.int1(), r.int1()
        micro = r.int4() if length == 11 else 0
        return DateTime(year, month, day, hour, minute, second, micro)
    if type_ == ColumnType.TIME:
        length = r.int1()
        if length not in (0, 8, 12):
            raise ProtocolError(f"invalid length {length} of a TIME value")
        if length == 0:
            return Time()
        negative = r.int1()
        if negative > 1:
            raise ProtocolError("invalid sign of a TIME value")
        days, hours, minutes, seconds = r.int4(), r.int1(), r.int1(), r.int1()
        micro = r.int4() if length == 12 else 0
        return Time(bool(negative), days, hours, minutes, seconds, micro)
    if type_ == ColumnType.NULL:
        return None
    raise ProtocolError(f"binary value of unsupported type {_type_name(type_)}")


def encode_binary_value(type_: int, unsigned: bool, value: Value) -> bytes:
    """The binary form of ``value`` as ``type_`` (shortest form for dates and times)."""
    size = _INT_SIZES.get(type_)
    if size is not None:
        if not isinstance(value, int):
            raise TypeError(f"{_type_name(type_)} needs an int")
        return value.to_bytes(size, "little", signed=not unsigned)
    if type_ in _BYTES:
        if isinstance(value, str):
            value = p.text_bytes(value)
        if not isinstance(value, bytes):
            raise TypeError(f"{_type_name(type_)} needs bytes")
        return p.lenenc_bytes(value)
    if type_ == ColumnType.DOUBLE:
        if not isinstance(value, int | float):
            raise TypeError("DOUBLE needs a float")
        return _DOUBLE.pack(value)
    if type_ == ColumnType.FLOAT:
        if not isinstance(value, int | float):
            raise TypeError("FLOAT needs a float")
        return _FLOAT.pack(value)
    if type_ in _DECIMALS:
        if isinstance(value, DateTime | Time) or value is None:
            raise TypeError("DECIMAL needs its text")
        return p.lenenc_bytes(value if isinstance(value, bytes) else p.text_bytes(str(value)))
    if type_ in _DATETIMES:
        if isinstance(value, dt.date):
            value = DateTime.of(value)
        if not isinstance(value, DateTime):
            raise TypeError(f"{_type_name(type_)} needs a DateTime")
        v = value
        if v.microsecond:
            return b"\x0b" + p.int2(v.year) + bytes((v.month, v.day, v.hour, v.minute, v.second)) + p.int4(v.microsecond)
        if v.hour or v.minute or v.second:
            return b"\x07" + p.int2(v.year) + bytes((v.month, v.day, v.hour, v.minute, v.second))
        if v.year or v.month or v.day:
            return b"\x04" + p.int2(v.year) + bytes((v.month, v.day))
        return b"\x00"
    if type_ == ColumnType.TIME:
        if isinstance(value, dt.timedelta):
            value = Time.of(value)
        if not isinstance(value, Time):
            raise TypeError("TIME needs a Time")
        t = value
        head = bytes((int(t.negative),)) + p.int4(t.days) + bytes((t.hours, t.minutes, t.seconds))
        if t.microseconds:
            return b"\x0c" + head + p.int4(t.microseconds)
        if t.negative or t.days or t.hours or t.minutes or t.seconds:
            return b"\x08" + head
        return b"\x00"
    if type_ == ColumnType.NULL:
        return b""
    raise ValueError(f"binary value of unsupported type {_type_name(type_)}")


def value_text(value: Value) -> str | None:
    """A value as text for the audit: what ``SELECT`` would show (bytes read as UTF-8)."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


# ----------------------------------------------------------------- NULL bitmaps


def null_bitmap(nulls: Sequence[bool], offset: int = 0) -> bytes:
    """The NULL bitmap of ``nulls`` (offset 0 for parameters, 2 for binary rows)."""
    out = bytearray((len(nulls) + offset + 7) // 8)
    for i, null in enumerate(nulls):
        if null:
            bit = i + offset
            out[bit >> 3] |= 1 << (bit & 7)
    return bytes(out)


def read_null_bitmap(r: p.Reader, count: int, offset: int = 0) -> bytes:
    return r.fixed((count + offset + 7) // 8, "NULL bitmap")


def is_null(bitmap: bytes, i: int, offset: int = 0) -> bool:
    bit = i + offset
    return bool(bitmap[bit >> 3] & (1 << (bit & 7)))
