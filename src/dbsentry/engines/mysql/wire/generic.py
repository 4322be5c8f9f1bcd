"""The generic response packets: OK (with session-state information), ERR and EOF.

Decoders take one payload and the capabilities both ends agreed on (the proxy speaks
protocol 4.1 only, ``CLIENT_PROTOCOL_41``, on both sides; without it the status and warning
fields shrink as the protocol says). Encoders return payloads; framing is
:mod:`~dbsentry.engines.mysql.wire.packets`' business.

With ``CLIENT_DEPRECATE_EOF`` a result set ends with an OK packet whose header is ``0xFE``
instead of an EOF packet; :func:`is_result_end` tells that packet from a row.
"""

from __future__ import annotations

from dataclasses import dataclass

from dbsentry.engines.mysql.wire import constants as c
from dbsentry.engines.mysql.wire import primitives as p
from dbsentry.errors import ProtocolError

__all__ = [
    "EOF",
    "ERR",
    "OK",
    "SessionState",
    "decode_eof",
    "decode_err",
    "decode_ok",
    "encode_eof",
    "encode_err",
    "encode_ok",
    "is_eof",
    "is_result_end",
]


@dataclass(frozen=True, slots=True)
class SessionState:
    """One entry of an OK packet's session-state information (``SESSION_TRACK_*``)."""

    type: int
    data: bytes

    def fields(self) -> tuple[str, ...]:
        """The entry's length-encoded strings: (name, value) for a system variable, (schema,)
        for a schema change, (flag,) for a state change, ..."""
        r = p.Reader(self.data)
        if self.type == c.SESSION_TRACK_GTIDS:
            r.int1()  # encoding specification
        out = []
        while not r.at_end():
            out.append(r.lenenc_text("session state field"))
        return tuple(out)


@dataclass(frozen=True, slots=True)
class OK:
    affected_rows: int = 0
    last_insert_id: int = 0
    status: int = 0
    warnings: int = 0
    info: str = ""
    session_state: tuple[SessionState, ...] = ()
    header: int = c.OK_HEADER  # 0xFE when it ends a result set under CLIENT_DEPRECATE_EOF


@dataclass(frozen=True, slots=True)
class ERR:
    code: int
    message: str
    sqlstate: str | None = "HY000"  # None: no '#' marker (errors sent before 4.1 is agreed)


@dataclass(frozen=True, slots=True)
class EOF:
    warnings: int = 0
    status: int = 0


def decode_ok(payload: bytes, capabilities: int) -> OK:
    r = p.Reader(payload)
    header = r.int1()
    if header not in (c.OK_HEADER, c.EOF_HEADER):
        raise ProtocolError(f"not an OK packet (header 0x{header:02x})")
    affected = r.lenenc_int()
    insert_id = r.lenenc_int()
    status = warnings = 0
    if capabilities & c.CLIENT_PROTOCOL_41:
        status = r.int2()
        warnings = r.int2()
    elif capabilities & c.CLIENT_TRANSACTIONS:
        status = r.int2()
    info = ""
    state: tuple[SessionState, ...] = ()
    if capabilities & c.CLIENT_SESSION_TRACK:
        if not r.at_end():
            info = r.lenenc_text("OK info")
            if status & c.SERVER_SESSION_STATE_CHANGED and not r.at_end():
                state = _decode_session_state(r.lenenc_bytes("session state information"))
        r.done("OK packet")
    else:
        info = p.text_of(r.rest())
    return OK(affected, insert_id, status, warnings, info, state, header)


def _decode_session_state(raw: bytes) -> tuple[SessionState, ...]:
    r = p.Reader(raw)
    out = []
    while not r.at_end():
        kind = r.int1()
        out.append(SessionState(kind, r.lenenc_bytes("session state entry")))
    return tuple(out)


def encode_ok(ok: OK, capabilities: int) -> bytes:
    out = bytearray((ok.header,))
    out += p.lenenc_int(ok.affected_rows)
    out += p.lenenc_int(ok.last_insert_id)
    if capabilities & c.CLIENT_PROTOCOL_41:
        out += p.int2(ok.status) + p.int2(ok.warnings)
    elif capabilities & c.CLIENT_TRANSACTIONS:
        out += p.int2(ok.status)
    if capabilities & c.CLIENT_SESSION_TRACK:
        state_changed = bool(ok.status & c.SERVER_SESSION_STATE_CHANGED and ok.session_state)
        if ok.info or state_changed:
            out += p.lenenc_text(ok.info)
        if state_changed:
            out += p.lenenc_bytes(b"".join(bytes((s.type,)) + p.lenenc_bytes(s.data) for s in ok.session_state))
    else:
        out += p.text_bytes(ok.info)
    return bytes(out)


def decode_err(payload: bytes, capabilities: int = c.CLIENT_PROTOCOL_41) -> ERR:
    r = p.Reader(payload)
    if r.int1() != c.ERR_HEADER:
        raise ProtocolError("not an ERR packet")
    code = r.int2()
    sqlstate = None
    if capabilities & c.CLIENT_PROTOCOL_41 and not r.at_end() and r.peek() == ord("#"):
        r.skip(1)
        sqlstate = p.text_of(r.fixed(5, "SQLSTATE"))
    return ERR(code, p.text_of(r.rest()), sqlstate)


def encode_err(err: ERR, capabilities: int = c.CLIENT_PROTOCOL_41) -> bytes:
    out = b"\xff" + p.int2(err.code)
    if err.sqlstate is not None and capabilities & c.CLIENT_PROTOCOL_41:
        state = p.text_bytes(err.sqlstate)
        if len(state) != 5:
            raise ValueError("a SQLSTATE has five characters")
        out += b"#" + state
    return out + p.text_bytes(err.message)


def decode_eof(payload: bytes, capabilities: int = c.CLIENT_PROTOCOL_41) -> EOF:
    r = p.Reader(payload)
    if r.int1() != c.EOF_HEADER:
        raise ProtocolError("not an EOF packet")
    if capabilities & c.CLIENT_PROTOCOL_41:
        warnings = r.int2()
        status = r.int2()
        r.done("EOF packet")
        return EOF(warnings, status)
    r.done("EOF packet")
    return EOF()


def encode_eof(eof: EOF, capabilities: int = c.CLIENT_PROTOCOL_41) -> bytes:
    if capabilities & c.CLIENT_PROTOCOL_41:
        return b"\xfe" + p.int2(eof.warnings) + p.int2(eof.status)
    return b"\xfe"


def is_eof(payload: bytes) -> bool:
    """An EOF packet (and not a row or an OK that happens to start with 0xFE)."""
    return len(payload) < 9 and payload[:1] == b"\xfe"


def is_result_end(payload: bytes, capabilities: int) -> bool:
    """The packet that ends a result set's rows: EOF, or under ``CLIENT_DEPRECATE_EOF`` an
    OK with header 0xFE (a row starting with 0xFE is 16 MiB or more long)."""
    if payload[:1] != b"\xfe":
        return False
    if capabilities & c.CLIENT_DEPRECATE_EOF:
        return len(payload) < c.MAX_PACKET_PAYLOAD
    return len(payload) < 9
