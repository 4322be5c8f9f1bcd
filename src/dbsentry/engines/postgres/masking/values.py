"""Masking PostgreSQL wire values: a field's bytes as the server sent them, in text or
binary format, by its type OID, masked so that it still decodes as the type the client was
told in RowDescription.

Types that cannot hold a placeholder (dates, numbers, network addresses...) get a fixed,
documented value of their own type instead (:data:`TYPED_MASKS`, e.g. ``1900-01-01``), so a
masked value never reads as missing data; only the ``null`` strategy gives NULL.  The
strategies themselves, on text, are :mod:`dbsentry.masking.strategies`.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from collections.abc import Callable

import orjson

from dbsentry.masking.classes import DataClass
from dbsentry.masking.detect import detect_value, find_sensitive
from dbsentry.masking.strategies import (
    DEFAULT_STRATEGIES,
    PLACEHOLDERS,
    SAFETY_NET_CLASSES,
    STRATEGIES,
    hash_text,
    keyed_digest,
    mask_text,
    may_hold_sensitive,
    partial_text,
    scan_text,
)

__all__ = [
    "OP_EMAIL",
    "OP_KEEP_LAST",
    "OP_SCAN",
    "TYPED_MASKS",
    "BytePartial",
    "Constant",
    "Masker",
    "Scan",
    "make_detect_masker",
    "make_masker",
    "make_safety_net_masker",
]

_BYTE_PARTIAL = frozenset(
    {DataClass.PAYMENT_CARD, DataClass.NATIONAL_ID, DataClass.PHONE, DataClass.EMAIL}
)

# -- on wire values -----------------------------------------------------------------------------

#: Takes a field's bytes as the server sent them (never NULL), returns the masked bytes or
#: None for NULL.
Masker = Callable[[bytes], bytes | None]

OID_BYTEA = 17
OID_CHAR = 18
OID_NAME = 19
OID_INT8 = 20
OID_INT2 = 21
OID_INT4 = 23
OID_TEXT = 25
OID_JSON = 114
OID_XML = 142
OID_CIDR = 650
OID_FLOAT4 = 700
OID_FLOAT8 = 701
OID_UNKNOWN = 705
OID_MACADDR8 = 774
OID_MACADDR = 829
OID_INET = 869
OID_BPCHAR = 1042
OID_VARCHAR = 1043
OID_DATE = 1082
OID_TIME = 1083
OID_TIMESTAMP = 1114
OID_TIMESTAMPTZ = 1184
OID_INTERVAL = 1186
OID_TIMETZ = 1266
OID_NUMERIC = 1700
OID_UUID = 2950
OID_JSONB = 3802
FIRST_USER_OID = 16384

# 1900-01-01 counted from PostgreSQL's epoch, 2000-01-01: in days, and in microseconds.
_SENTINEL_DAYS = -36524
_SENTINEL_USECS = _SENTINEL_DAYS * 86_400 * 1_000_000

#: The masked value of each type that cannot hold a placeholder, as (text, binary): a
#: valid value of the type that stands out as masked.  Text forms are PostgreSQL's output
#: with the default DateStyle (ISO) and IntervalStyle (postgres).  Every other type that
#: is neither text-like, JSON, bytea nor one of these (booleans, money, arrays,
#: composites, ranges, geometry, extension types in binary format) is masked to NULL.
TYPED_MASKS: dict[int, tuple[bytes, bytes]] = {
    OID_DATE: (b"1900-01-01", struct.pack("!i", _SENTINEL_DAYS)),
    OID_TIMESTAMP: (b"1900-01-01 00:00:00", struct.pack("!q", _SENTINEL_USECS)),
    OID_TIMESTAMPTZ: (b"1900-01-01 00:00:00+00", struct.pack("!q", _SENTINEL_USECS)),
    OID_TIME: (b"00:00:00", struct.pack("!q", 0)),
    OID_TIMETZ: (b"00:00:00+00", struct.pack("!qi", 0, 0)),
    OID_INTERVAL: (b"00:00:00", struct.pack("!qii", 0, 0, 0)),
    # family (PGSQL_AF_INET 2), prefix bits, is_cidr, address length, address
    OID_INET: (b"0.0.0.0", bytes((2, 32, 0, 4, 0, 0, 0, 0))),
    OID_CIDR: (b"0.0.0.0/32", bytes((2, 32, 1, 4, 0, 0, 0, 0))),
    OID_MACADDR: (b"00:00:00:00:00:00", bytes(6)),
    OID_MACADDR8: (b"00:00:00:00:00:00:00:00", bytes(8)),
    OID_INT2: (b"0", struct.pack("!h", 0)),
    OID_INT4: (b"0", struct.pack("!i", 0)),
    OID_INT8: (b"0", struct.pack("!q", 0)),
    OID_FLOAT4: (b"0", struct.pack("!f", 0.0)),
    OID_FLOAT8: (b"0", struct.pack("!d", 0.0)),
    # ndigits 0, weight 0, sign positive, dscale 0
    OID_NUMERIC: (b"0", struct.pack("!hhHh", 0, 0, 0, 0)),
    OID_UUID: (b"00000000-0000-0000-0000-000000000000", bytes(16)),
}

_TEXT_OIDS = frozenset({OID_TEXT, OID_VARCHAR, OID_BPCHAR, OID_NAME, OID_UNKNOWN, OID_CHAR})
# whose text form is all digits, so value detection can look at them in text format
_DIGIT_OIDS = frozenset({OID_INT8, OID_INT4, OID_INT2, OID_NUMERIC})
# text[], varchar[], bpchar[], json[], jsonb[], record
_ARRAY_TEXT_OIDS = frozenset({1009, 1015, 1014, 199, 3807, 2249})


def _kind(type_oid: int, fmt: int) -> str:
    """How masked values of this type are written: text, json, jsonb, bytea, uuid, inet,
    typed (a value of :data:`TYPED_MASKS`) or null."""
    if type_oid in _TEXT_OIDS:
        return "text"
    if type_oid == OID_JSON:
        return "json"
    if type_oid == OID_JSONB:
        return "jsonb"
    if type_oid == OID_BYTEA:
        return "bytea"
    if type_oid == OID_UUID:
        return "uuid"
    if type_oid in (OID_INET, OID_CIDR):
        return "inet"
    if type_oid in TYPED_MASKS:
        return "typed"
    if type_oid >= FIRST_USER_OID and fmt == 0:
        return "text"  # citext and other extension types read as text; binary formats are unknown
    return "null"


def _fit(s: str, type_oid: int, typmod: int) -> str:
    """Pad or cut a masked text to the declared length of ``char(n)``/``varchar(n)``/``name``."""
    if type_oid in (OID_BPCHAR, OID_VARCHAR) and typmod >= 4:
        n = typmod - 4
        s = s[:n]
        return s.ljust(n) if type_oid == OID_BPCHAR else s
    if type_oid == OID_CHAR:
        return s[:1]
    if type_oid == OID_NAME:
        b = s.encode("utf-8", "surrogateescape")[:63]  # bytes that were not UTF-8 are kept
        return b.decode("utf-8", "ignore")
    return s


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _encode(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")


def _bytea_value(raw: bytes, fmt: int) -> bytes:
    if fmt == 1:
        return raw
    if raw.startswith(b"\\x"):
        try:
            return bytes.fromhex(raw[2:].decode("ascii"))
        except ValueError:
            return raw
    return raw


def _json_inner(text: str) -> str | None:
    """The string a JSON document is, when it is a JSON string."""
    t = text.strip()
    if t.startswith('"'):
        try:
            v = orjson.loads(t)
        except orjson.JSONDecodeError:
            return None
        return v if isinstance(v, str) else None
    return None


class Constant:
    """A masker whose output does not depend on the value (row rewriting splices it in
    without calling it)."""

    __slots__ = ("value",)

    def __init__(self, value: bytes | None) -> None:
        self.value = value

    def __call__(self, raw: bytes) -> bytes | None:
        return self.value


_NULL_MASKER = Constant(None)

# Byte-level partial masks for the hot classes: ASCII digits (and letters) become ``*``
# through bytes.translate, without decoding.
_DIGITS = b"0123456789"
_ALNUM = _DIGITS + b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_STAR_DIGITS = bytes.maketrans(_DIGITS, b"*" * len(_DIGITS))
_STAR_ALNUM = bytes.maketrans(_ALNUM, b"*" * len(_ALNUM))
_DIGIT_SET = frozenset(_DIGITS)
_ALNUM_SET = frozenset(_ALNUM)


def _keep_last_bytes(raw: bytes, keep: int, alnum: bool) -> bytes:
    table, members = (_STAR_ALNUM, _ALNUM_SET) if alnum else (_STAR_DIGITS, _DIGIT_SET)
    seen = 0
    i = len(raw)
    while i > 0 and seen < keep:
        i -= 1
        if raw[i] in members:
            seen += 1
    if seen < keep:
        return raw.translate(table)
    return raw[:i].translate(table) + raw[i:]


# Operations that the row walkers of rows.py (and their C twin, ``_fastmask``) apply
# themselves instead of calling a masker; a masker that can be one says so in ``native``.
OP_EMAIL = 2  # (OP_EMAIL, placeholder): b"****@" + what follows the last "@", if any precedes it
OP_KEEP_LAST = 3  # (OP_KEEP_LAST, alnum, t1, k1, t2, k2): see BytePartial

# Per class, (alnum, t1, k1, t2, k2): of n digits (or letters and digits, when alnum) all
# but the last k1 become "*" when n >= t1, else all but the last k2 when n >= t2, else all
# (the thresholds of _partial_bytes).
_KEEP_LAST: dict[DataClass, tuple[bool, int, int, int, int]] = {
    DataClass.PAYMENT_CARD: (False, 5, 4, 5, 0),
    DataClass.NATIONAL_ID: (True, 9, 4, 6, 2),
    DataClass.PHONE: (False, 10, 4, 3, 2),
}


class BytePartial:
    """The ``partial`` strategy of a class with a byte-level form (card, national id, phone,
    email) on a text column: :func:`_partial_bytes`, fitted to the declared length of
    ``char(n)``/``varchar(n)``/``name``.  ``native`` describes the same operation for the
    row walkers when no fitting is needed (None when it is)."""

    __slots__ = ("cls", "fit", "native", "type_oid", "typmod")

    def __init__(self, cls: DataClass, type_oid: int, typmod: int) -> None:
        self.cls = cls
        self.type_oid = type_oid
        self.typmod = typmod
        self.fit = type_oid in (OID_CHAR, OID_NAME) or (
            type_oid in (OID_BPCHAR, OID_VARCHAR) and typmod >= 4
        )
        native: tuple[object, ...] | None = None
        if not self.fit:
            if cls is DataClass.EMAIL:
                native = (OP_EMAIL, _encode(PLACEHOLDERS[cls]))
            else:
                native = (OP_KEEP_LAST, *_KEEP_LAST[cls])
        self.native = native

    def __call__(self, raw: bytes) -> bytes | None:
        out = _partial_bytes(raw, self.cls)
        assert out is not None
        if self.fit:
            return _encode(_fit(_decode(out), self.type_oid, self.typmod))
        return out


def _partial_bytes(raw: bytes, cls: DataClass | None) -> bytes | None:
    """The partial mask of ``raw`` for the classes that have a byte-level form, else None."""
    if cls is DataClass.PAYMENT_CARD:
        n = len(raw) - len(raw.translate(None, _DIGITS))
        return _keep_last_bytes(raw, 4 if n > 4 else 0, alnum=False)
    if cls is DataClass.NATIONAL_ID:
        n = len(raw) - len(raw.translate(None, _ALNUM))
        return _keep_last_bytes(raw, 4 if n >= 9 else 2 if n >= 6 else 0, alnum=True)
    if cls is DataClass.PHONE:
        n = len(raw) - len(raw.translate(None, _DIGITS))
        return _keep_last_bytes(raw, 4 if n >= 10 else 2 if n > 2 else 0, alnum=False)
    if cls is DataClass.EMAIL:
        local, at, domain = raw.rpartition(b"@")
        return b"****@" + domain if at and local else _encode(PLACEHOLDERS[cls])
    return None


def make_masker(
    strategy: str,
    cls: DataClass | None,
    type_oid: int,
    typmod: int = -1,
    fmt: int = 0,
    key: bytes = b"",
) -> Masker:
    """A function that masks one field of a column of type ``type_oid`` in format ``fmt``
    (0 text, 1 binary) with ``strategy``.

    - text types (text, varchar, bpchar, name, "char", unknown; extension types such as
      citext in text format): masked text, fitted to the declared length;
    - json/jsonb: a JSON string (binary jsonb gets its version byte); a JSON document that is
      a string is masked inside, any other document is replaced whole (``partial`` of a
      document is ``redact``);
    - bytea: ``\\x`` hex in text format, raw bytes in binary; ``partial`` is ``redact``,
      ``hash`` gives 16 digest bytes;
    - uuid with ``hash``: a UUID from the digest, so joins keep working;
    - inet and cidr: ``partial`` keeps the network half (as on text), ``hash`` gives an
      address in 10.0.0.0/8 or fd00::/8 from the digest, ``redact`` is ``0.0.0.0``;
    - dates, times, numbers, MAC addresses, uuid (other than ``hash``): the type's value in
      :data:`TYPED_MASKS` (``1900-01-01``, ``0``...), whatever the strategy but ``null``;
    - every other type (booleans, arrays, composites...): NULL.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown masking strategy {strategy!r}")
    kind = _kind(type_oid, fmt)
    if strategy == "null" or kind == "null":
        return _NULL_MASKER
    if kind == "uuid" and strategy == "hash":
        return lambda raw: _uuid_hash(raw, fmt, key)
    if kind == "inet" and strategy in ("partial", "hash"):
        return _InetMasker(strategy, type_oid == OID_CIDR, fmt, key)
    if kind in ("typed", "uuid", "inet"):
        return Constant(TYPED_MASKS[type_oid][fmt])
    if kind == "text":
        if strategy == "redact":
            return Constant(_encode(_fit(PLACEHOLDERS[cls], type_oid, typmod)))
        if strategy == "partial" and cls is not None and cls in _BYTE_PARTIAL:
            return BytePartial(cls, type_oid, typmod)

        def text_masker(raw: bytes) -> bytes | None:
            out = mask_text(_decode(raw), cls, strategy, key)
            return None if out is None else _encode(_fit(out, type_oid, typmod))

        return text_masker
    if kind in ("json", "jsonb"):
        prefix = b"\x01" if kind == "jsonb" and fmt == 1 else b""
        if strategy == "redact":
            return Constant(prefix + orjson.dumps(PLACEHOLDERS[cls]))

        def json_masker(raw: bytes) -> bytes | None:
            body = raw[1:] if prefix and raw[:1] == b"\x01" else raw
            text = _decode(body)
            inner = _json_inner(text)
            if inner is None:
                out = mask_text(text, cls, "redact" if strategy == "partial" else strategy, key)
            else:
                out = mask_text(inner, cls, strategy, key)
            if out is None:
                return None
            try:
                return prefix + orjson.dumps(out)
            except TypeError:  # not valid UTF-8 (another client_encoding): keep none of it
                return prefix + orjson.dumps(PLACEHOLDERS[cls])

        return json_masker
    # bytea
    if strategy in ("redact", "partial"):
        placeholder = _encode(PLACEHOLDERS[cls])
        return Constant(placeholder if fmt == 1 else b"\\x" + placeholder.hex().encode())

    def bytea_masker(raw: bytes) -> bytes | None:
        d = keyed_digest(key, _bytea_value(raw, fmt), 16)
        return d if fmt == 1 else b"\\x" + d.hex().encode()

    return bytea_masker


class _InetMasker:
    """``partial`` or ``hash`` of an inet or cidr value, in text or binary format, with the
    strategies' text forms (:func:`partial_text`, :func:`hash_text`); the prefix length is kept
    (for cidr, no wider than what the masked address leaves), and a value that cannot be
    read becomes ``0.0.0.0``."""

    __slots__ = ("cidr", "fmt", "key", "strategy")

    def __init__(self, strategy: str, cidr: bool, fmt: int, key: bytes) -> None:
        self.strategy = strategy
        self.cidr = cidr
        self.fmt = fmt
        self.key = key

    def __call__(self, raw: bytes) -> bytes | None:
        sentinel = TYPED_MASKS[OID_CIDR if self.cidr else OID_INET][self.fmt]
        try:
            iface = self._read(raw)
        except ValueError:
            return sentinel
        address = str(iface.ip)
        if self.strategy == "partial":
            masked = partial_text(address, DataClass.IP_ADDRESS)
        else:
            masked = hash_text(address, DataClass.IP_ADDRESS, self.key)
        try:
            ip = ipaddress.ip_address(masked)
        except ValueError:
            return sentinel
        bits = iface.network.prefixlen if ip.version == iface.version else ip.max_prefixlen
        if self.cidr:
            # A cidr value may not have bits set right of its prefix.
            net = ipaddress.ip_network(f"{ip}/{bits}", strict=False)
            ip, bits = net.network_address, net.prefixlen
        return self._write(ip, bits)

    def _read(self, raw: bytes) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
        if self.fmt == 0:
            return ipaddress.ip_interface(raw.decode("ascii").strip())
        if len(raw) < 4 or raw[0] not in (2, 3) or len(raw) != 4 + raw[3]:
            raise ValueError("not an inet value")
        packed = raw[4:]
        if len(packed) not in (4, 16):
            raise ValueError("not an inet value")
        return ipaddress.ip_interface((packed, raw[1]))

    def _write(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address, bits: int) -> bytes:
        if self.fmt == 1:
            packed = ip.packed
            family = 2 if ip.version == 4 else 3
            return bytes((family, bits, 1 if self.cidr else 0, len(packed))) + packed
        if self.cidr or bits != ip.max_prefixlen:
            return f"{ip}/{bits}".encode()
        return str(ip).encode()


def _uuid_hash(raw: bytes, fmt: int, key: bytes) -> bytes:
    value = raw
    if fmt == 0:
        try:  # hash the 16 bytes, so text and binary results agree
            value = bytes.fromhex(_decode(raw).replace("-", "").strip("{}"))
        except ValueError:
            value = raw
    d = keyed_digest(key, value, 16)
    if fmt == 1:
        return d
    h = d.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}".encode()


# A JSON document's string tokens and long integers (outside strings: the tokenizer steps
# over each string whole).  Documents come from PostgreSQL, so they are valid JSON.
_JSON_TOKEN_RE = re.compile(r'"(?:[^"\\]|\\.)*"|(?<![\w.+-])-?\d{9,}(?![\w.])')


def _scan_json_text(
    text: str,
    strategies: dict[DataClass, str],
    key: bytes,
    classes: frozenset[DataClass] | None,
) -> str:
    """``text`` (a JSON document) with what the detectors find in its strings (keys and
    values) and in integers of 9 or more digits masked in place; everything else, spacing
    and number spelling included, is kept.  ``text`` itself when nothing was found."""
    out: list[str] = []
    pos = 0
    for m in _JSON_TOKEN_RE.finditer(text):
        token = m.group()
        if token[0] == '"':
            if len(token) < 9:  # fewer than 7 characters: nothing to find
                continue
            try:
                inner = orjson.loads(token)
            except orjson.JSONDecodeError:  # lone surrogates, bytes that are not UTF-8
                raw_inner = token[1:-1]
                if scan_text(raw_inner, strategies, key, classes) is raw_inner:
                    continue
                new: str | None = PLACEHOLDERS[None]
            else:
                assert isinstance(inner, str)
                masked = scan_text(inner, strategies, key, classes)
                if masked is inner:
                    continue
                new = masked  # None (the null strategy): JSON null
        else:
            found = detect_value(token)
            if found is None or (classes is not None and found not in classes):
                continue
            new = mask_text(token, found, strategies.get(found, DEFAULT_STRATEGIES[found]), key)
        out.append(text[pos : m.start()])
        out.append(orjson.dumps(new).decode())
        pos = m.end()
    if not out:
        return text
    out.append(text[pos:])
    return "".join(out)


#: (OP_SCAN, scan, cache, ip): like a call, but a value that may_hold_sensitive(value, ip)
#: rejects is left as it is, without calling ``scan``.
OP_SCAN = 5


class Scan:
    """A value-detection masker with the prefilter in front: ``scan`` is called only on
    values that :func:`may_hold_sensitive` lets through (the row walkers, and the C
    extension, run the prefilter themselves and call ``scan``)."""

    __slots__ = ("ip", "scan")

    def __init__(self, scan: Masker, ip: bool) -> None:
        self.scan = scan
        self.ip = ip

    def __call__(self, raw: bytes) -> bytes | None:
        if not may_hold_sensitive(raw, self.ip):
            return raw
        return self.scan(raw)


def _text_scan(
    type_oid: int,
    typmod: int,
    key: bytes,
    strat: dict[DataClass, str],
    classes: frozenset[DataClass] | None,
) -> Masker:
    def text_scan(raw: bytes) -> bytes | None:
        text = _decode(raw)
        out = scan_text(text, strat, key, classes)
        if out is text:
            return raw
        return None if out is None else _encode(_fit(out, type_oid, typmod))

    return text_scan


def _json_scan(
    binary: bool, key: bytes, strat: dict[DataClass, str], classes: frozenset[DataClass] | None
) -> Masker:
    def json_scan(raw: bytes) -> bytes | None:
        body = raw[1:] if binary and raw[:1] == b"\x01" else raw
        text = _decode(body)
        out = _scan_json_text(text, strat, key, classes)
        if out is text:
            return raw
        return (raw[: len(raw) - len(body)]) + _encode(out)

    return json_scan


def make_detect_masker(
    type_oid: int,
    typmod: int = -1,
    fmt: int = 0,
    key: bytes = b"",
    strategies: dict[DataClass, str] | None = None,
    text_oids: frozenset[int] = frozenset(),
) -> Masker | None:
    """A masker that looks at each value and masks what :func:`detect_value` and
    :func:`find_sensitive` recognise (the conservative fallback for unresolved columns).
    Text values are masked in place: a value that is sensitive as a whole is masked as a
    whole, sensitive spans of a longer text span by span, the rest of the text kept (and
    fitted to ``varchar(n)``/``char(n)``).  JSON documents likewise in their strings (keys
    and values) and long integers; digit-only types (integers, numeric) in text format are
    checked as a whole and become ``0`` on a hit; arrays, composites, extension types and
    bytea, where spans cannot be kept, become NULL on any hit.  ``text_oids`` are extension
    types known to be text in binary format too (citext).  None when the column's type
    cannot carry what the detectors find (binary numbers, dates, booleans...)."""
    strat = dict(DEFAULT_STRATEGIES)
    if strategies:
        strat.update(strategies)
    kind = "text" if type_oid in text_oids else _kind(type_oid, fmt)
    if kind == "text":
        return Scan(_text_scan(type_oid, typmod, key, strat, None), ip=True)
    if kind in ("json", "jsonb"):
        return Scan(_json_scan(kind == "jsonb" and fmt == 1, key, strat, None), ip=True)
    if type_oid in _DIGIT_OIDS and fmt == 0:
        zero = TYPED_MASKS[type_oid][0]

        def digits_scan(raw: bytes) -> bytes | None:
            return zero if len(raw) >= 9 and detect_value(_decode(raw)) is not None else raw

        return digits_scan
    if kind == "bytea" or (
        fmt == 0 and (type_oid >= FIRST_USER_OID or type_oid in _ARRAY_TEXT_OIDS)
    ):
        # bytea, text and json arrays, composites and extension types: a hit anywhere in
        # the value makes it NULL
        bytea = kind == "bytea"

        def any_scan(raw: bytes) -> bytes | None:
            text = _decode(_bytea_value(raw, fmt) if bytea else raw)
            return None if detect_value(text) is not None or find_sensitive(text, limit=1) else raw

        return any_scan
    return None


# The types the safety net scans: text-like, where masking a span keeps the value valid.
_SAFETY_NET_TEXT_OIDS = frozenset({OID_TEXT, OID_VARCHAR, OID_BPCHAR, OID_NAME, OID_UNKNOWN})


def make_safety_net_masker(
    type_oid: int,
    typmod: int = -1,
    fmt: int = 0,
    key: bytes = b"",
    strategies: dict[DataClass, str] | None = None,
    text_oids: frozenset[int] = frozenset(),
) -> Scan | None:
    """The safety net's masker for a result column nothing else masks: what the validated
    detectors find (:data:`SAFETY_NET_CLASSES`) is masked in place, span by span, by its
    class's strategy.  Only text-like types: text, varchar, bpchar, name, unknown,
    extension types in text format (citext; in binary too when in ``text_oids``), json and
    jsonb.  None for every other type (numbers, dates, booleans, arrays, bytea...)."""
    strat = dict(DEFAULT_STRATEGIES)
    if strategies:
        strat.update(strategies)
    if (
        type_oid in _SAFETY_NET_TEXT_OIDS
        or type_oid in text_oids
        or (type_oid >= FIRST_USER_OID and fmt == 0)
    ):
        return Scan(_text_scan(type_oid, typmod, key, strat, SAFETY_NET_CLASSES), ip=False)
    if type_oid in (OID_JSON, OID_JSONB):
        binary = type_oid == OID_JSONB and fmt == 1
        return Scan(_json_scan(binary, key, strat, SAFETY_NET_CLASSES), ip=False)
    return None
