"""Sans-IO PostgreSQL wire codec: bytes in, frames and typed messages out, and back.

No sockets, no asyncio, no policy.  Every length is checked against a cap before any
buffering, so a hostile peer cannot make the proxy slow or large: the work done is
O(bytes read).

A *frame* is one protocol message: a type byte, a 4-byte big-endian length that counts
itself, and a body.  :class:`FrameSplitter` finds frame boundaries without decoding
bodies; the ``decode_*`` functions decode the few bodies governance needs.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from dbsentry.engines.postgres.wire import messages as m
from dbsentry.errors import ProtocolError as ProtocolError  # the codec raises it (re-exported)

MAX_STARTUP_PACKET = 10_000
DEFAULT_MAX_MESSAGE = 64 * 1024 * 1024

_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")
_I16 = struct.Struct("!h")
_U16 = struct.Struct("!H")
_HDR = struct.Struct("!BI")
_unpack_u32 = _U32.unpack_from
_unpack_i32 = _I32.unpack_from
_unpack_i16 = _I16.unpack_from


class MessageTooLarge(ProtocolError):
    sqlstate = "54000"


class NotAStartupPacket(ProtocolError):
    """The first bytes of a connection are not a start-up packet (a Terminate where the
    start-up packet belongs, another protocol, noise): like PostgreSQL, close without an
    answer, since the peer is not speaking the protocol yet."""


# An oversized length is only answered when it may belong to a real start-up packet: at
# most this long, and followed by protocol 3.x.
_PLAUSIBLE_STARTUP = 1 << 20


# ----------------------------------------------------------------- startup packets


def read_startup_packet(buf: bytes | bytearray, max_len: int = MAX_STARTUP_PACKET) -> tuple[m.StartupPacket, int] | None:
    """Decode an untyped startup-phase packet from the head of ``buf``.

    Returns ``(packet, consumed)`` or None when more bytes are needed.
    """
    if len(buf) < 4:
        return None
    (length,) = _unpack_u32(buf, 0)
    if length < 8:
        raise NotAStartupPacket(f"invalid length of startup packet ({length})")
    if length > max_len:
        if length > _PLAUSIBLE_STARTUP:
            raise NotAStartupPacket(f"invalid length of startup packet ({length})")
        if len(buf) < 8:
            return None
        if _unpack_u32(buf, 4)[0] >> 16 != 3:
            raise NotAStartupPacket(f"invalid length of startup packet ({length})")
        raise MessageTooLarge(f"startup packet of {length} bytes exceeds the limit of {max_len}")
    if len(buf) < length:
        return None
    (code,) = _unpack_u32(buf, 4)
    body = bytes(buf[8:length])
    if code == m.SSL_REQUEST_CODE and length == 8:
        return m.SSLRequest(), length
    if code == m.GSSENC_REQUEST_CODE and length == 8:
        return m.GSSENCRequest(), length
    if code == m.CANCEL_REQUEST_CODE:
        if length < 16 or length > 8 + 4 + 256:
            raise ProtocolError("invalid cancel request length")
        (pid,) = _unpack_u32(body, 0)
        return m.CancelRequest(pid, body[4:]), length
    if code >> 16 != 3:
        raise ProtocolError(f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}")
    return m.StartupMessage(code, _decode_params(body)), length


def _decode_params(body: bytes) -> tuple[tuple[str, str], ...]:
    if not body.endswith(b"\x00"):
        raise ProtocolError("startup packet is not null-terminated")
    parts = body[:-1].split(b"\x00")
    if parts and parts[-1] == b"":
        parts.pop()
    if len(parts) % 2:
        raise ProtocolError("startup packet has a parameter without a value")
    try:
        strs = [p.decode("utf-8") for p in parts]
    except UnicodeDecodeError:
        raise ProtocolError("startup packet is not valid UTF-8") from None
    out = tuple((strs[i], strs[i + 1]) for i in range(0, len(strs), 2))
    if any(not k for k, _ in out):
        raise ProtocolError("startup packet has an empty parameter name")
    return out


def encode_startup(params: Iterable[tuple[str, str]], version: int = m.PROTOCOL_3_0) -> bytes:
    body = b"".join(k.encode() + b"\x00" + v.encode() + b"\x00" for k, v in params) + b"\x00"
    return _U32.pack(len(body) + 8) + _U32.pack(version) + body


def encode_ssl_request() -> bytes:
    return _U32.pack(8) + _U32.pack(m.SSL_REQUEST_CODE)


def encode_cancel_request(pid: int, secret: bytes) -> bytes:
    return _U32.pack(12 + len(secret)) + _U32.pack(m.CANCEL_REQUEST_CODE) + _U32.pack(pid) + secret


# ----------------------------------------------------------------- framing


class FrameSplitter:
    """Incrementally splits a stream of typed frames.

    ``split(data)`` returns ``(buf, spans)``: ``buf`` holds the complete frames received so
    far (it *is* ``data`` when nothing was carried over and the chunk ends on a frame
    boundary: no copy), ``spans`` lists ``(type, body_start, end)`` for each of them.  A
    partial frame at the end is kept for the next call.

    An incomplete frame is accumulated in a bytearray and only re-examined once enough
    bytes for it have arrived, so a frame dribbled in many small chunks costs O(its size),
    not O(size x chunks).
    """

    __slots__ = ("_need", "_pending", "max_len")

    def __init__(self, max_len: int = DEFAULT_MAX_MESSAGE) -> None:
        self._pending = bytearray()
        self._need = 0  # bytes the pending frame needs before it can be split
        self.max_len = max_len

    @property
    def pending(self) -> int:
        return len(self._pending)

    def take_pending(self) -> bytes:
        """Hand over the bytes of an incomplete frame (when the stream changes hands)."""
        pending = bytes(self._pending)
        self._pending = bytearray()
        self._need = 0
        return pending

    def split(self, data: bytes) -> tuple[bytes, list[tuple[int, int, int]]]:
        if self._pending:
            self._pending += data
            if len(self._pending) < self._need:
                return b"", []
            buf = bytes(self._pending)
            self._pending = bytearray()
        else:
            buf = data
        n = len(buf)
        pos = 0
        spans: list[tuple[int, int, int]] = []
        append = spans.append
        max_len = self.max_len
        need = 5
        while n - pos >= 5:
            t, length = _HDR.unpack_from(buf, pos)
            if length < 4:
                raise ProtocolError(f"invalid message length {length}")
            if length > max_len:
                raise MessageTooLarge(f"message of {length} bytes exceeds the limit of {max_len}")
            end = pos + 1 + length
            if end > n:
                need = 1 + length
                break
            append((t, pos + 5, end))
            pos = end
        if pos == n:
            return buf, spans
        self._pending = bytearray(memoryview(buf)[pos:])
        self._need = need
        return buf[:pos], spans


def frame(type_byte: bytes, body: bytes = b"") -> bytes:
    return type_byte + _U32.pack(len(body) + 4) + body


def read_cstr(buf: bytes, pos: int, end: int, enc: str = "utf-8") -> tuple[str, int]:
    """A null-terminated string at ``pos`` in the session's encoding, and the position
    after it.  Bytes the encoding cannot read survive as surrogates (see :func:`_cstr`)."""
    return _cstr(buf, pos, end, enc)


def _cstr(buf: bytes, pos: int, end: int, enc: str = "utf-8") -> tuple[str, int]:
    """Names and values: compared and sent back, never parsed, so bytes that are not
    valid in ``enc`` survive as surrogates and encode back to the same bytes
    (:func:`encode_name`); the server answers them as it would."""
    z = buf.find(b"\x00", pos, end)
    if z < 0:
        raise ProtocolError("unterminated string in message")
    return buf[pos:z].decode(enc, "surrogateescape"), z + 1


class BadEncoding(ProtocolError):
    """SQL text that is not valid in the session's client encoding: refused like
    PostgreSQL refuses it (22021), the session goes on."""

    sqlstate = "22021"

    def __init__(self, raw: bytes) -> None:
        super().__init__("invalid byte sequence " + " ".join(f"0x{b:02x}" for b in raw))
        self.raw = raw


def _sql(buf: bytes, pos: int, end: int, enc: str) -> tuple[str, int]:
    """SQL text, read strictly in ``enc`` (what the server parses is what is judged)."""
    z = buf.find(b"\x00", pos, end)
    if z < 0:
        raise ProtocolError("unterminated string in message")
    try:
        return buf[pos:z].decode(enc), z + 1
    except UnicodeDecodeError as err:
        raise BadEncoding(bytes(buf[pos + err.start : pos + min(err.end, err.start + 3)])) from None


def encode_name(name: str, enc: str = "utf-8") -> bytes:
    """A name read by :func:`_cstr`, back to its bytes."""
    return name.encode(enc, "surrogateescape")


def _need(pos: int, size: int, end: int) -> None:
    if pos + size > end:
        raise ProtocolError("message is shorter than its contents")


# ----------------------------------------------------------------- client message bodies


def decode_query(buf: bytes, start: int, end: int, enc: str = "utf-8") -> m.Query:
    return m.Query(query_sql(buf, start, end, enc))


def query_sql(buf: bytes, start: int, end: int, enc: str = "utf-8") -> str:
    """The SQL text of a Query (:func:`decode_query` without making the message)."""
    sql, pos = _sql(buf, start, end, enc)
    if pos != end:
        raise ProtocolError("trailing bytes in Query")
    return sql


def decode_parse(buf: bytes, start: int, end: int, enc: str = "utf-8") -> m.Parse:
    name, pos = _cstr(buf, start, end, enc)
    sql, pos = _sql(buf, pos, end, enc)
    _need(pos, 2, end)
    (n,) = _unpack_i16(buf, pos)
    pos += 2
    if n < 0:
        raise ProtocolError("negative parameter count in Parse")
    _need(pos, 4 * n, end)
    types = struct.unpack_from(f"!{n}I", buf, pos) if n else ()
    pos += 4 * n
    if pos != end:
        raise ProtocolError("trailing bytes in Parse")
    return m.Parse(name, sql, tuple(types))


def decode_bind(buf: bytes, start: int, end: int, enc: str = "utf-8") -> m.Bind:
    portal, pos = _cstr(buf, start, end, enc)
    stmt, pos = _cstr(buf, pos, end, enc)
    _need(pos, 2, end)
    (nf,) = _unpack_i16(buf, pos)
    pos += 2
    if nf < 0:
        raise ProtocolError("negative format count in Bind")
    _need(pos, 2 * nf, end)
    fmts = struct.unpack_from(f"!{nf}h", buf, pos) if nf else ()
    pos += 2 * nf
    _need(pos, 2, end)
    (np_,) = _unpack_i16(buf, pos)
    pos += 2
    if np_ < 0:
        raise ProtocolError("negative parameter count in Bind")
    params: list[bytes | None] = []
    for _ in range(np_):
        _need(pos, 4, end)
        (ln,) = _unpack_i32(buf, pos)
        pos += 4
        if ln == -1:
            params.append(None)
            continue
        if ln < 0:
            raise ProtocolError("invalid parameter length in Bind")
        _need(pos, ln, end)
        params.append(bytes(buf[pos : pos + ln]))
        pos += ln
    _need(pos, 2, end)
    (nr,) = _unpack_i16(buf, pos)
    pos += 2
    if nr < 0:
        raise ProtocolError("negative result format count in Bind")
    _need(pos, 2 * nr, end)
    rfmts = struct.unpack_from(f"!{nr}h", buf, pos) if nr else ()
    pos += 2 * nr
    if pos != end:
        raise ProtocolError("trailing bytes in Bind")
    return m.Bind(portal, stmt, tuple(fmts), tuple(params), tuple(rfmts))


def decode_execute(buf: bytes, start: int, end: int, enc: str = "utf-8") -> m.Execute:
    portal, pos = _cstr(buf, start, end, enc)
    _need(pos, 4, end)
    (rows,) = _unpack_i32(buf, pos)
    return m.Execute(portal, rows)


def decode_describe_or_close(buf: bytes, start: int, end: int, enc: str = "utf-8") -> tuple[str, str]:
    _need(start, 1, end)
    kind = chr(buf[start])
    if kind not in "SP":
        raise ProtocolError(f"invalid Describe/Close target {kind!r}")
    name, _pos = _cstr(buf, start + 1, end, enc)
    return kind, name


def decode_password(buf: bytes, start: int, end: int) -> m.PasswordMessage:
    """A cleartext PasswordMessage: the password without its terminating NUL."""
    data = bytes(buf[start:end])
    if data.endswith(b"\x00"):
        data = data[:-1]
    return m.PasswordMessage(data)


def encode_query(sql: str) -> bytes:
    return frame(b"Q", sql.encode() + b"\x00")


def encode_parse(p: m.Parse, enc: str = "utf-8") -> bytes:
    """``enc``: the encoding the name was read in (the SQL is the proxy's own, ASCII)."""
    body = encode_name(p.name, enc) + b"\x00" + p.sql.encode(enc) + b"\x00" + _I16.pack(len(p.param_types))
    if p.param_types:
        body += struct.pack(f"!{len(p.param_types)}I", *p.param_types)
    return frame(b"P", body)


def encode_bind(b: m.Bind, enc: str = "utf-8") -> bytes:
    parts = [encode_name(b.portal, enc), b"\x00", encode_name(b.statement, enc), b"\x00", _I16.pack(len(b.param_formats))]
    if b.param_formats:
        parts.append(struct.pack(f"!{len(b.param_formats)}h", *b.param_formats))
    parts.append(_I16.pack(len(b.params)))
    for p in b.params:
        if p is None:
            parts.append(_I32.pack(-1))
        else:
            parts.append(_I32.pack(len(p)))
            parts.append(p)
    parts.append(_I16.pack(len(b.result_formats)))
    if b.result_formats:
        parts.append(struct.pack(f"!{len(b.result_formats)}h", *b.result_formats))
    return frame(b"B", b"".join(parts))


def encode_execute(e: m.Execute, enc: str = "utf-8") -> bytes:
    return frame(b"E", encode_name(e.portal, enc) + b"\x00" + _I32.pack(e.max_rows))


def encode_describe(kind: str, name: str) -> bytes:
    return frame(b"D", kind.encode() + name.encode() + b"\x00")


def encode_close(kind: str, name: str) -> bytes:
    return frame(b"C", kind.encode() + name.encode() + b"\x00")


SYNC = frame(b"S")
FLUSH = frame(b"H")
TERMINATE = frame(b"X")


def encode_password(password: str | bytes) -> bytes:
    data = password.encode() if isinstance(password, str) else password
    return frame(b"p", data + b"\x00")


def encode_sasl_initial(mechanism: str, data: bytes) -> bytes:
    return frame(b"p", mechanism.encode() + b"\x00" + _I32.pack(len(data)) + data)


def encode_sasl_response(data: bytes) -> bytes:
    return frame(b"p", data)


# ----------------------------------------------------------------- server message bodies


def decode_auth(buf: bytes, start: int, end: int) -> m.Authentication:
    _need(start, 4, end)
    (code,) = _unpack_i32(buf, start)
    return m.Authentication(code, bytes(buf[start + 4 : end]))


def decode_sasl_mechanisms(data: bytes) -> list[str]:
    return [p.decode("utf-8", "replace") for p in data.split(b"\x00") if p]


def decode_parameter_status(buf: bytes, start: int, end: int, enc: str = "utf-8") -> m.ParameterStatus:
    name, pos = _cstr(buf, start, end, enc)
    value, pos = _cstr(buf, pos, end, enc)
    return m.ParameterStatus(name, value)


def decode_backend_key(buf: bytes, start: int, end: int) -> m.BackendKeyData:
    _need(start, 8, end)
    (pid,) = _unpack_u32(buf, start)
    return m.BackendKeyData(pid, bytes(buf[start + 4 : end]))


def decode_ready(buf: bytes, start: int, end: int) -> m.ReadyForQuery:
    if end - start != 1:
        raise ProtocolError("invalid ReadyForQuery")
    return m.ReadyForQuery(chr(buf[start]))


def _error_fields(buf: bytes, start: int, end: int, errors: str, enc: str = "utf-8") -> tuple[list[tuple[str, str]], int]:
    """The (code, value) fields of an ErrorResponse or NoticeResponse, and where they end."""
    out: list[tuple[str, str]] = []
    pos = start
    while pos < end and buf[pos] != 0:
        code = chr(buf[pos])
        z = buf.find(b"\x00", pos + 1, end)
        if z < 0:
            raise ProtocolError("unterminated error field")
        out.append((code, bytes(buf[pos + 1 : z]).decode(enc, errors)))
        pos = z + 1
    return out, pos


def decode_error_fields(buf: bytes, start: int, end: int, enc: str = "utf-8") -> m.ErrorFields:
    return m.ErrorFields(tuple(_error_fields(buf, start, end, "replace", enc)[0]))


def encode_text(text: str, enc: str = "utf-8") -> bytes:
    """Text read with surrogateescape, back to bytes in ``enc``; a character ``enc`` has
    no byte for (only text the proxy wrote itself) becomes ``?``.  NUL bytes are dropped."""
    try:
        data = text.encode(enc, "surrogateescape")
    except UnicodeEncodeError:
        data = b"".join(_encode_char(ch, enc) for ch in text)
    return data.replace(b"\x00", b"")


def _encode_char(ch: str, enc: str) -> bytes:
    try:
        return ch.encode(enc, "surrogateescape")
    except UnicodeEncodeError:
        return b"?"


def decode_raw_fields(buf: bytes, start: int, end: int, enc: str = "utf-8") -> tuple[tuple[str, str], ...]:
    """The fields of an ErrorResponse or NoticeResponse, each value decoded so that it
    encodes back to the same bytes (bytes that are not valid in ``enc`` survive as
    surrogates): for rewriting a message without changing what is not rewritten."""
    out, pos = _error_fields(buf, start, end, "surrogateescape", enc)
    if pos >= end:
        raise ProtocolError("error fields are not terminated")
    return tuple(out)


def encode_raw_fields(type_byte: bytes, fields: Iterable[tuple[str, str]], enc: str = "utf-8") -> bytes:
    """The inverse of :func:`decode_raw_fields`; NUL bytes in a value are dropped."""
    body = b"".join(k.encode() + encode_text(v, enc) + b"\x00" for k, v in fields)
    return frame(type_byte, body + b"\x00")


def decode_notification(buf: bytes, start: int, end: int, enc: str = "utf-8") -> m.NotificationResponse:
    _need(start, 4, end)
    (pid,) = _unpack_u32(buf, start)
    z = buf.find(b"\x00", start + 4, end)
    if z < 0:
        raise ProtocolError("unterminated string in message")
    channel = bytes(buf[start + 4 : z]).decode(enc, "surrogateescape")
    y = buf.find(b"\x00", z + 1, end)
    if y < 0:
        raise ProtocolError("unterminated string in message")
    payload = bytes(buf[z + 1 : y]).decode(enc, "surrogateescape")
    return m.NotificationResponse(pid, channel, payload)


def encode_notification(n: m.NotificationResponse, enc: str = "utf-8") -> bytes:
    return frame(b"A", _U32.pack(n.pid) + encode_text(n.channel, enc) + b"\x00" + encode_text(n.payload, enc) + b"\x00")


def decode_raw_parameter_status(buf: bytes, start: int, end: int, enc: str = "utf-8") -> m.ParameterStatus:
    """A ParameterStatus whose value re-encodes to the same bytes (see decode_raw_fields)."""
    z = buf.find(b"\x00", start, end)
    y = buf.find(b"\x00", z + 1, end) if z >= 0 else -1
    if y < 0:
        raise ProtocolError("unterminated string in message")
    return m.ParameterStatus(
        bytes(buf[start:z]).decode(enc, "surrogateescape"),
        bytes(buf[z + 1 : y]).decode(enc, "surrogateescape"),
    )


def encode_raw_parameter_status(name: str, value: str, enc: str = "utf-8") -> bytes:
    return frame(b"S", encode_text(name, enc) + b"\x00" + encode_text(value, enc) + b"\x00")


def decode_command_complete(buf: bytes, start: int, end: int) -> m.CommandComplete:
    tag, _ = _cstr(buf, start, end)
    return m.CommandComplete(tag)


def encode_auth(code: int, data: bytes = b"") -> bytes:
    return frame(b"R", _I32.pack(code) + data)


AUTH_OK_FRAME = encode_auth(m.AUTH_OK)
AUTH_CLEARTEXT_FRAME = encode_auth(m.AUTH_CLEARTEXT)


def encode_parameter_status(name: str, value: str) -> bytes:
    return frame(b"S", name.encode() + b"\x00" + value.encode() + b"\x00")


def encode_backend_key(pid: int, secret: bytes) -> bytes:
    return frame(b"K", _U32.pack(pid) + secret)


def encode_ready(status: str) -> bytes:
    return frame(b"Z", status.encode())


def encode_error_fields(type_byte: bytes, fields: Iterable[tuple[str, str]]) -> bytes:
    body = b"".join(k.encode() + v.encode() + b"\x00" for k, v in fields) + b"\x00"
    return frame(type_byte, body)


def error_response(sqlstate: str, message: str, *, severity: str = "ERROR", detail: str | None = None, hint: str | None = None) -> bytes:
    fields = [("S", severity), ("V", severity), ("C", sqlstate), ("M", message)]
    if detail:
        fields.append(("D", detail))
    if hint:
        fields.append(("H", hint))
    return encode_error_fields(b"E", fields)


def notice_response(message: str, *, severity: str = "NOTICE", sqlstate: str = "00000", detail: str | None = None) -> bytes:
    fields = [("S", severity), ("V", severity), ("C", sqlstate), ("M", message)]
    if detail:
        fields.append(("D", detail))
    return encode_error_fields(b"N", fields)


def encode_command_complete(tag: str) -> bytes:
    return frame(b"C", tag.encode() + b"\x00")


def encode_negotiate_protocol_version(newest_minor: int, unsupported: Iterable[str]) -> bytes:
    """The newest 3.x protocol the sender speaks; on the wire it is the full version code."""
    opts = list(unsupported)
    body = _I32.pack((3 << 16) | newest_minor) + _I32.pack(len(opts)) + b"".join(o.encode() + b"\x00" for o in opts)
    return frame(b"v", body)


def decode_negotiate_protocol_version(buf: bytes, start: int, end: int) -> m.NegotiateProtocolVersion:
    _need(start, 8, end)
    (version,) = _unpack_i32(buf, start)
    minor = version & 0xFFFF
    (n,) = _unpack_i32(buf, start + 4)
    pos = start + 8
    opts = []
    for _ in range(max(0, n)):
        s, pos = _cstr(buf, pos, end)
        opts.append(s)
    return m.NegotiateProtocolVersion(minor, tuple(opts))
