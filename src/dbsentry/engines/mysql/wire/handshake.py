"""The connection phase: the server's Handshake v10, the client's SSLRequest and
HandshakeResponse41, and the authentication exchange (AuthSwitchRequest, AuthMoreData,
the client's raw answers), decoded and encoded both ways.

Capabilities are one 64-bit int (see :mod:`~dbsentry.engines.mysql.wire.constants`):
MariaDB puts its extended capabilities in the last four filler bytes of both the greeting
and the response when ``CLIENT_MYSQL`` (bit 0) is clear, and those become bits 32..63 here.

Only protocol 4.1 is spoken: a HandshakeResponse320 or a pre-4.1 greeting is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from dbsentry.engines.mysql.wire import constants as c
from dbsentry.engines.mysql.wire import primitives as p
from dbsentry.engines.mysql.wire.generic import ERR, OK, decode_err, decode_ok
from dbsentry.errors import ProtocolError

__all__ = [
    "AuthMoreData",
    "AuthSwitchRequest",
    "AuthSwitchResponse",
    "Handshake",
    "HandshakeResponse",
    "SSLRequest",
    "decode_auth_more_data",
    "decode_auth_reply",
    "decode_auth_switch_request",
    "decode_auth_switch_response",
    "decode_client_handshake",
    "decode_handshake",
    "decode_server_greeting",
    "encode_auth_more_data",
    "encode_auth_switch_request",
    "encode_auth_switch_response",
    "encode_handshake",
    "encode_handshake_response",
    "encode_ssl_request",
]

_LOW32 = 0xFFFFFFFF
_SSL_REQUEST_LEN = 32
MAX_AUTH_RESPONSE = 1 << 16  # no plugin's answer comes near; a larger one is refused


@dataclass(frozen=True, slots=True)
class Handshake:
    """The server greeting (Protocol::HandshakeV10).

    ``auth_plugin_data`` is the nonce without the NUL the server puts after it (20 bytes
    from MySQL and MariaDB). ``auth_plugin_name`` is "" without ``CLIENT_PLUGIN_AUTH``.
    """

    server_version: str
    connection_id: int
    auth_plugin_data: bytes
    capabilities: int
    charset: int = 45
    status: int = c.SERVER_STATUS_AUTOCOMMIT
    auth_plugin_name: str = ""

    @property
    def mariadb_capabilities(self) -> int:
        return self.capabilities >> 32


@dataclass(frozen=True, slots=True)
class SSLRequest:
    """The first 32 bytes of a HandshakeResponse41, alone, with ``CLIENT_SSL``: TLS next."""

    capabilities: int
    max_packet_size: int = 1 << 24
    charset: int = 45


@dataclass(frozen=True, slots=True)
class HandshakeResponse:
    """The client's login (Protocol::HandshakeResponse41). Optional fields are present on
    the wire exactly when their capability is set: ``database`` with
    ``CLIENT_CONNECT_WITH_DB``, ``auth_plugin_name`` with ``CLIENT_PLUGIN_AUTH``,
    ``attributes`` with ``CLIENT_CONNECT_ATTRS``, ``zstd_level`` with
    ``CLIENT_ZSTD_COMPRESSION_ALGORITHM``."""

    capabilities: int
    user: str
    auth_response: bytes = b""
    max_packet_size: int = 1 << 24
    charset: int = 45
    database: str = ""
    auth_plugin_name: str = ""
    attributes: tuple[tuple[str, str], ...] = ()
    zstd_level: int = 0

    def attribute(self, name: str) -> str | None:
        for key, value in self.attributes:
            if key == name:
                return value
        return None


@dataclass(frozen=True, slots=True)
class AuthSwitchRequest:
    """The server asks for another plugin; ``data`` is as sent (nonce plus a NUL for the
    password plugins), :attr:`nonce` without that NUL."""

    plugin: str
    data: bytes = b""

    @property
    def nonce(self) -> bytes:
        return self.data[:-1] if self.data.endswith(b"\x00") else self.data


@dataclass(frozen=True, slots=True)
class AuthSwitchResponse:
    """The client's answer to an AuthSwitchRequest (and any later authentication packet
    of the client): the plugin's data, the whole payload."""

    data: bytes


@dataclass(frozen=True, slots=True)
class AuthMoreData:
    """Extra authentication data from the server (0x01 header): caching_sha2_password's
    fast-auth markers, a public key, ed25519's nonce and so on."""

    data: bytes


# ----------------------------------------------------------------- server greeting


def decode_server_greeting(payload: bytes) -> Handshake | ERR:
    """The server's first packet: a greeting, or an ERR (too many connections, host not
    allowed, ...)."""
    if payload[:1] == b"\xff":
        return decode_err(payload)
    return decode_handshake(payload)


def decode_handshake(payload: bytes) -> Handshake:
    r = p.Reader(payload)
    version = r.int1()
    if version != 10:
        raise ProtocolError(f"unsupported handshake protocol version {version}")
    server_version = r.cstr("server version")
    connection_id = r.int4()
    part1 = r.fixed(8, "auth-plugin-data")
    r.skip(1)
    caps = r.int2()
    if r.at_end():
        raise ProtocolError("server greeting without the protocol 4.1 fields")
    charset = r.int1()
    status = r.int2()
    caps |= r.int2() << 16
    data_len = r.int1()
    r.skip(6)
    extended = r.int4()
    if not caps & c.CLIENT_MYSQL:
        caps |= extended << 32
    nonce = part1
    if caps & c.CLIENT_SECURE_CONNECTION:
        part2 = r.fixed(max(13, data_len - 8), "auth-plugin-data")
        nonce += part2[: max(12, data_len - 9)]
    plugin = r.cstr("auth plugin name", or_end=True) if caps & c.CLIENT_PLUGIN_AUTH else ""
    return Handshake(server_version, connection_id, nonce, caps, charset, status, plugin)


def encode_handshake(h: Handshake) -> bytes:
    caps = h.capabilities
    nonce = h.auth_plugin_data
    if caps & c.CLIENT_SECURE_CONNECTION:
        if len(nonce) < 20 or (len(nonce) != 20 and not caps & c.CLIENT_PLUGIN_AUTH):
            raise ValueError("the nonce has 20 bytes (more only with CLIENT_PLUGIN_AUTH)")
    elif len(nonce) != 8:
        raise ValueError("without CLIENT_SECURE_CONNECTION the nonce has 8 bytes")
    if caps & c.CLIENT_MYSQL and caps >> 32:
        raise ValueError("MariaDB extended capabilities need CLIENT_MYSQL cleared")
    out = bytearray(b"\x0a")
    out += p.cstr(h.server_version)
    out += p.int4(h.connection_id)
    out += nonce[:8] + b"\x00"
    out += p.int2(caps & 0xFFFF)
    out.append(h.charset)
    out += p.int2(h.status)
    out += p.int2((caps >> 16) & 0xFFFF)
    out.append(len(nonce) + 1 if caps & c.CLIENT_PLUGIN_AUTH else 0)
    out += bytes(6) + p.int4(caps >> 32)
    if caps & c.CLIENT_SECURE_CONNECTION:
        part2 = nonce[8:] + b"\x00"
        out += part2 + bytes(max(0, 13 - len(part2)))
    if caps & c.CLIENT_PLUGIN_AUTH:
        out += p.cstr(h.auth_plugin_name)
    return bytes(out)


# ----------------------------------------------------------------- client login


def decode_client_handshake(payload: bytes) -> SSLRequest | HandshakeResponse:
    """The client's answer to the greeting: an SSLRequest (TLS follows, then the full
    response) or a HandshakeResponse41."""
    r = p.Reader(payload)
    caps = r.int4()
    if not caps & c.CLIENT_PROTOCOL_41:
        raise ProtocolError("the client speaks a protocol older than 4.1 (HandshakeResponse320)")
    max_packet = r.int4()
    charset = r.int1()
    r.skip(19)
    extended = r.int4()
    if not caps & c.CLIENT_MYSQL:
        caps |= extended << 32
    if r.at_end():
        if not caps & c.CLIENT_SSL:
            raise ProtocolError("handshake response without a user name")
        return SSLRequest(caps, max_packet, charset)
    user = r.cstr("user name")
    if caps & c.CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA:
        size = r.lenenc_int()
        if size > MAX_AUTH_RESPONSE:
            raise ProtocolError(f"authentication response of {size} bytes exceeds the limit of {MAX_AUTH_RESPONSE}")
        auth = r.fixed(size, "authentication response")
    elif caps & c.CLIENT_SECURE_CONNECTION:
        auth = r.fixed(r.int1(), "authentication response")
    else:
        auth = r.cstr_bytes("authentication response")
    database = plugin = ""
    attributes: tuple[tuple[str, str], ...] = ()
    zstd = 0
    if caps & c.CLIENT_CONNECT_WITH_DB and not r.at_end():
        database = r.cstr("database name", or_end=True)
    if caps & c.CLIENT_PLUGIN_AUTH and not r.at_end():
        plugin = r.cstr("auth plugin name", or_end=True)
    if caps & c.CLIENT_CONNECT_ATTRS and not r.at_end():
        attributes = decode_attributes(r.lenenc_bytes("connection attributes"))
    if caps & c.CLIENT_ZSTD_COMPRESSION_ALGORITHM and not r.at_end():
        zstd = r.int1()
    r.done("handshake response")
    return HandshakeResponse(caps, user, auth, max_packet, charset, database, plugin, attributes, zstd)


def decode_attributes(raw: bytes) -> tuple[tuple[str, str], ...]:
    r = p.Reader(raw)
    out = []
    while not r.at_end():
        key = r.lenenc_text("attribute name")
        out.append((key, r.lenenc_text("attribute value")))
    return tuple(out)


def encode_attributes(attributes: tuple[tuple[str, str], ...]) -> bytes:
    return b"".join(p.lenenc_text(k) + p.lenenc_text(v) for k, v in attributes)


def _login_head(caps: int, max_packet: int, charset: int) -> bytes:
    if caps & c.CLIENT_MYSQL and caps >> 32:
        raise ValueError("MariaDB extended capabilities need CLIENT_MYSQL cleared")
    return p.int4(caps & _LOW32) + p.int4(max_packet) + bytes((charset,)) + bytes(19) + p.int4(caps >> 32)


def encode_ssl_request(s: SSLRequest) -> bytes:
    return _login_head(s.capabilities | c.CLIENT_SSL, s.max_packet_size, s.charset)


def encode_handshake_response(h: HandshakeResponse) -> bytes:
    caps = h.capabilities
    out = bytearray(_login_head(caps, h.max_packet_size, h.charset))
    out += p.cstr(h.user)
    if caps & c.CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA:
        out += p.lenenc_bytes(h.auth_response)
    elif caps & c.CLIENT_SECURE_CONNECTION:
        if len(h.auth_response) > 255:
            raise ValueError("an authentication response over 255 bytes needs CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA")
        out += bytes((len(h.auth_response),)) + h.auth_response
    else:
        out += p.cstr(h.auth_response)
    if caps & c.CLIENT_CONNECT_WITH_DB:
        out += p.cstr(h.database)
    if caps & c.CLIENT_PLUGIN_AUTH:
        out += p.cstr(h.auth_plugin_name)
    if caps & c.CLIENT_CONNECT_ATTRS:
        out += p.lenenc_bytes(encode_attributes(h.attributes))
    if caps & c.CLIENT_ZSTD_COMPRESSION_ALGORITHM:
        out.append(h.zstd_level)
    return bytes(out)


# ----------------------------------------------------------------- authentication exchange


def decode_auth_switch_request(payload: bytes) -> AuthSwitchRequest:
    r = p.Reader(payload)
    if r.int1() != c.AUTH_SWITCH_HEADER:
        raise ProtocolError("not an AuthSwitchRequest")
    if r.at_end():
        raise ProtocolError("the server asks for mysql_old_password (pre-4.1 authentication), which is not supported")
    plugin = r.cstr("auth plugin name", or_end=True)
    return AuthSwitchRequest(plugin, r.rest())


def encode_auth_switch_request(a: AuthSwitchRequest) -> bytes:
    return b"\xfe" + p.cstr(a.plugin) + a.data


def decode_auth_switch_response(payload: bytes) -> AuthSwitchResponse:
    return AuthSwitchResponse(payload)


def encode_auth_switch_response(a: AuthSwitchResponse) -> bytes:
    return a.data


def decode_auth_more_data(payload: bytes) -> AuthMoreData:
    if payload[:1] != b"\x01":
        raise ProtocolError("not an AuthMoreData packet")
    return AuthMoreData(payload[1:])


def encode_auth_more_data(a: AuthMoreData) -> bytes:
    return b"\x01" + a.data


def decode_auth_reply(payload: bytes, capabilities: int) -> OK | ERR | AuthSwitchRequest | AuthMoreData:
    """What the server answers during authentication."""
    head = payload[:1]
    if head == b"\x00":
        return decode_ok(payload, capabilities)
    if head == b"\xff":
        return decode_err(payload, capabilities)
    if head == b"\xfe":
        return decode_auth_switch_request(payload)
    if head == b"\x01":
        return decode_auth_more_data(payload)
    raise ProtocolError("unexpected packet during authentication" + (f" (header 0x{payload[0]:02x})" if payload else " (empty)"))
