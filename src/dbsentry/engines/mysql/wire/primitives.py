"""The protocol's basic types, bounds-checked: fixed-length little-endian integers,
length-encoded integers and strings, NUL-terminated strings and the rest of a packet.

:class:`Reader` walks one payload; every read checks the bytes are there first, so a
length that claims more than the packet holds is a :class:`ProtocolError` before anything
is allocated. The ``lenenc_*``/``int*`` functions below it write the same types.

Names (users, schemas, columns, attributes) are kept as ``str`` decoded from UTF-8 with
``surrogateescape``: bytes that are not UTF-8 survive and encode back to themselves
(:func:`text_bytes`), so decode then encode is exact whatever the connection's charset.
"""

from __future__ import annotations

import struct

from dbsentry.errors import ProtocolError

__all__ = [
    "LENENC_NULL",
    "Reader",
    "cstr",
    "int1",
    "int2",
    "int3",
    "int4",
    "int8",
    "lenenc_bytes",
    "lenenc_int",
    "lenenc_text",
    "text_bytes",
    "text_of",
]

LENENC_NULL = 0xFB  # a NULL in a text row (and LOCAL INFILE's header)

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


def text_of(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def text_bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


class Reader:
    """A cursor over one payload (``buf[pos:end]``)."""

    __slots__ = ("buf", "end", "pos")

    def __init__(self, buf: bytes, pos: int = 0, end: int | None = None) -> None:
        self.buf = buf
        self.pos = pos
        self.end = len(buf) if end is None else end

    @property
    def remaining(self) -> int:
        return self.end - self.pos

    def at_end(self) -> bool:
        return self.pos >= self.end

    def need(self, size: int, what: str = "value") -> None:
        if size > self.end - self.pos:
            raise ProtocolError(f"packet is shorter than its {what}")

    def peek(self) -> int:
        self.need(1)
        return self.buf[self.pos]

    def int1(self) -> int:
        self.need(1)
        v = self.buf[self.pos]
        self.pos += 1
        return v

    def int2(self) -> int:
        self.need(2)
        (v,) = _U16.unpack_from(self.buf, self.pos)
        self.pos += 2
        return int(v)

    def int3(self) -> int:
        self.need(3)
        b = self.buf
        p = self.pos
        self.pos += 3
        return b[p] | b[p + 1] << 8 | b[p + 2] << 16

    def int4(self) -> int:
        self.need(4)
        (v,) = _U32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return int(v)

    def int8(self) -> int:
        self.need(8)
        (v,) = _U64.unpack_from(self.buf, self.pos)
        self.pos += 8
        return int(v)

    def fixed(self, size: int, what: str = "value") -> bytes:
        self.need(size, what)
        v = self.buf[self.pos : self.pos + size]
        self.pos += size
        return bytes(v)

    def skip(self, size: int, what: str = "filler") -> None:
        self.need(size, what)
        self.pos += size

    def lenenc_int_or_null(self) -> int | None:
        """A length-encoded integer; ``None`` for the NULL marker ``0xFB``."""
        first = self.int1()
        if first < 0xFB:
            return first
        if first == 0xFC:
            return self.int2()
        if first == 0xFD:
            return self.int3()
        if first == 0xFE:
            return self.int8()
        if first == LENENC_NULL:
            return None
        raise ProtocolError("invalid length-encoded integer (0xff)")

    def lenenc_int(self) -> int:
        v = self.lenenc_int_or_null()
        if v is None:
            raise ProtocolError("unexpected NULL where a length-encoded integer belongs")
        return v

    def lenenc_bytes(self, what: str = "string") -> bytes:
        size = self.lenenc_int()
        self.need(size, what)  # checked before anything is copied
        v = self.buf[self.pos : self.pos + size]
        self.pos += size
        return bytes(v)

    def lenenc_bytes_or_null(self, what: str = "string") -> bytes | None:
        size = self.lenenc_int_or_null()
        if size is None:
            return None
        self.need(size, what)
        v = self.buf[self.pos : self.pos + size]
        self.pos += size
        return bytes(v)

    def lenenc_text(self, what: str = "string") -> str:
        return text_of(self.lenenc_bytes(what))

    def cstr_bytes(self, what: str = "string", *, or_end: bool = False) -> bytes:
        """A NUL-terminated string; with ``or_end`` the end of the packet may stand in
        for the NUL (some peers leave it off the last field)."""
        z = self.buf.find(b"\x00", self.pos, self.end)
        if z < 0:
            if not or_end:
                raise ProtocolError(f"unterminated {what}")
            v = self.buf[self.pos : self.end]
            self.pos = self.end
            return bytes(v)
        v = self.buf[self.pos : z]
        self.pos = z + 1
        return bytes(v)

    def cstr(self, what: str = "string", *, or_end: bool = False) -> str:
        return text_of(self.cstr_bytes(what, or_end=or_end))

    def rest(self) -> bytes:
        v = self.buf[self.pos : self.end]
        self.pos = self.end
        return bytes(v)

    def done(self, what: str) -> None:
        if self.pos != self.end:
            raise ProtocolError(f"trailing bytes in {what}")


# ----------------------------------------------------------------- writers


def int1(v: int) -> bytes:
    return bytes((v,))


def int2(v: int) -> bytes:
    return _U16.pack(v)


def int3(v: int) -> bytes:
    return v.to_bytes(3, "little")


def int4(v: int) -> bytes:
    return _U32.pack(v)


def int8(v: int) -> bytes:
    return _U64.pack(v)


def lenenc_int(v: int) -> bytes:
    if v < 0:
        raise ValueError("length-encoded integers are unsigned")
    if v < 0xFB:
        return bytes((v,))
    if v < 1 << 16:
        return b"\xfc" + _U16.pack(v)
    if v < 1 << 24:
        return b"\xfd" + v.to_bytes(3, "little")
    return b"\xfe" + _U64.pack(v)


def lenenc_bytes(v: bytes) -> bytes:
    return lenenc_int(len(v)) + v


def lenenc_text(v: str) -> bytes:
    return lenenc_bytes(text_bytes(v))


def cstr(v: str | bytes) -> bytes:
    raw = text_bytes(v) if isinstance(v, str) else v
    if b"\x00" in raw:
        raise ValueError("a NUL-terminated string cannot contain NUL")
    return raw + b"\x00"
