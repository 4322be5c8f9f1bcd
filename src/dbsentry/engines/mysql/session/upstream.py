"""The proxy's login to a MySQL/MariaDB server with a connection's credentials, sans-IO.

:class:`UpstreamLogin` reads the server's bytes (``receive``) and says what to do
(:class:`LoginStep`): bytes to send, start TLS (then ``tls_started``), ready, or refused.
Plugins: ``mysql_native_password``, ``caching_sha2_password`` (fast and full
authentication: the password in the clear inside TLS, else RSA-encrypted with the server's
key), ``client_ed25519`` (MariaDB), ``mysql_clear_password`` (only over TLS), and auth
switch requests between them; any other plugin refuses the login with its name.
"""

from __future__ import annotations

from dataclasses import dataclass

from dbsentry.engines.mysql.session.events import UpstreamFailed, UpstreamReady
from dbsentry.engines.mysql.wire import auth
from dbsentry.engines.mysql.wire import constants as c
from dbsentry.engines.mysql.wire.generic import ERR, OK
from dbsentry.engines.mysql.wire.handshake import (
    AuthMoreData,
    AuthSwitchRequest,
    Handshake,
    HandshakeResponse,
    SSLRequest,
    decode_auth_reply,
    decode_server_greeting,
    encode_handshake_response,
    encode_ssl_request,
)
from dbsentry.engines.mysql.wire.packets import PacketSplitter, encode_packet
from dbsentry.errors import ProtocolError

#: What the proxy always asks of a server (protocol 4.1 with plugin authentication, a
#: database at login).
REQUIRED = (
    c.CLIENT_LONG_PASSWORD
    | c.CLIENT_LONG_FLAG
    | c.CLIENT_PROTOCOL_41
    | c.CLIENT_TRANSACTIONS
    | c.CLIENT_SECURE_CONNECTION
    | c.CLIENT_PLUGIN_AUTH
    | c.CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
    | c.CLIENT_CONNECT_WITH_DB
)
#: Capabilities a client agrees with the proxy that change what the server sends: the
#: server must have each one the client took, since its answers are forwarded as they are.
PROTOCOL_CAPABILITIES = (
    c.CLIENT_FOUND_ROWS
    | c.CLIENT_MULTI_STATEMENTS
    | c.CLIENT_MULTI_RESULTS
    | c.CLIENT_PS_MULTI_RESULTS
    | c.CLIENT_SESSION_TRACK
    | c.CLIENT_DEPRECATE_EOF
    | c.CLIENT_INTERACTIVE
    | c.CLIENT_CONNECT_ATTRS
    | c.CLIENT_IGNORE_SIGPIPE
)
MAX_LOGIN_PACKET = 1 << 16


@dataclass(slots=True)
class LoginStep:
    send: bytes = b""
    start_tls: bool = False
    ready: UpstreamReady | None = None
    refused: UpstreamFailed | None = None


def _caps_names(caps: int) -> str:
    names = [name for name, value in vars(c).items() if name.startswith("CLIENT_") and value & caps and value.bit_count() == 1]
    return ", ".join(sorted(set(names))) or hex(caps)


class UpstreamLogin:
    """One login. ``client_caps``: what the client agreed with the proxy (its protocol
    capabilities go upstream unchanged); ``tls``: send an SSLRequest and start TLS after
    the greeting; ``where``: how messages name the server."""

    def __init__(
        self,
        user: str,
        password: str | None,
        database: str,
        client_caps: int,
        charset: int,
        attributes: tuple[tuple[str, str], ...] = (),
        *,
        tls: bool = False,
        where: str = "the upstream",
    ) -> None:
        self.user = user
        self.password = password or ""
        self.database = database
        self.client_caps = client_caps
        self.charset = charset
        self.attributes = attributes
        self.tls = tls
        self.where = where
        self.greeting: Handshake | None = None
        self.capabilities = 0
        self._splitter = PacketSplitter(MAX_LOGIN_PACKET)
        self._seq = 0  # the sequence id of the next packet the proxy sends
        self._plugin = ""
        self._sha2: auth.CachingSha2Client | None = None
        self._done = False
        self.detail: str | None = None  # what the server said when it refused the login

    def _refuse(self, message: str, code: int = 2013, sqlstate: str = "08S01") -> LoginStep:
        self._done = True
        return LoginStep(refused=UpstreamFailed(code, sqlstate, f"dbsentry: {self.where}: {message}"))

    def _packet(self, payload: bytes) -> bytes:
        data, self._seq = encode_packet(payload, self._seq)
        self._splitter.expect(self._seq)
        return data

    def receive(self, data: bytes) -> LoginStep:
        if self._done:
            return LoginStep()
        try:
            packets = self._splitter.feed(data)
            out = LoginStep()
            for packet in packets:
                self._seq = (packet.last_seq + 1) & 0xFF
                step = self._greeting(packet.payload) if self.greeting is None else self._reply(packet.payload)
                out.send += step.send
                out.start_tls = out.start_tls or step.start_tls
                if step.ready is not None or step.refused is not None:
                    out.ready, out.refused = step.ready, step.refused
                    self._done = True
                    break
            return out
        except ProtocolError as err:
            return self._refuse(f"protocol error during login: {err}")

    def _greeting(self, payload: bytes) -> LoginStep:
        greeting = decode_server_greeting(payload)
        if isinstance(greeting, ERR):
            return self._refuse(f"the server refused the connection: {greeting.message}", greeting.code, greeting.sqlstate or "08004")
        self.greeting = greeting
        server = greeting.capabilities
        missing = REQUIRED & ~server & ~c.CLIENT_LONG_PASSWORD  # MariaDB clears bit 0 on purpose
        if missing:
            return self._refuse(f"the server lacks capabilities dbsentry needs: {_caps_names(missing)}")
        lacking = self.client_caps & PROTOCOL_CAPABILITIES & ~server
        if lacking:
            return self._refuse(f"the server lacks capabilities the client asked for: {_caps_names(lacking)}")
        caps = (REQUIRED | (self.client_caps & PROTOCOL_CAPABILITIES)) & (server | c.CLIENT_LONG_PASSWORD)
        if not server & c.CLIENT_MYSQL:
            caps &= ~c.CLIENT_MYSQL  # a MariaDB server: no extended capabilities asked for
        # Query attributes go upstream when the server reads them; else the session strips them.
        caps |= self.client_caps & server & c.CLIENT_QUERY_ATTRIBUTES
        if self.tls:
            if not server & c.CLIENT_SSL:
                return self._refuse("the server does not accept TLS connections (upstream_tls)")
            caps |= c.CLIENT_SSL
        self.capabilities = caps
        if self.tls:
            return LoginStep(send=self._packet(encode_ssl_request(SSLRequest(caps, 1 << 24, self.charset))), start_tls=True)
        return self._response()

    def tls_started(self) -> LoginStep:
        """The TLS handshake after the SSLRequest completed: log in."""
        return self._response()

    def _answer(self, plugin: str, nonce: bytes) -> bytes | LoginStep:
        self._plugin = plugin
        if plugin == auth.NATIVE_PASSWORD:
            return auth.native_password_scramble(self.password, nonce)
        if plugin == auth.CACHING_SHA2_PASSWORD:
            self._sha2 = auth.CachingSha2Client(self.password, nonce, secure=self.tls)
            return self._sha2.first()
        if plugin == auth.ED25519:
            return auth.ed25519_response(self.password, nonce)
        if plugin == auth.CLEAR_PASSWORD:
            if not self.tls:
                return self._refuse("the server asks for mysql_clear_password, which dbsentry sends only over TLS (upstream_tls)")
            return auth.clear_password_response(self.password)
        return self._refuse(f"the server asks for authentication plugin {plugin!r}, which dbsentry does not support")

    def _response(self) -> LoginStep:
        assert self.greeting is not None
        g = self.greeting
        answer = self._answer(g.auth_plugin_name or auth.NATIVE_PASSWORD, g.auth_plugin_data)
        if isinstance(answer, LoginStep):
            return answer
        response = HandshakeResponse(
            self.capabilities,
            self.user,
            answer,
            1 << 24,
            self.charset,
            self.database,
            self._plugin,
            self.attributes if self.capabilities & c.CLIENT_CONNECT_ATTRS else (),
        )
        return LoginStep(send=self._packet(encode_handshake_response(response)))

    def _reply(self, payload: bytes) -> LoginStep:
        reply = decode_auth_reply(payload, self.capabilities)
        if isinstance(reply, OK):
            g = self.greeting
            assert g is not None
            return LoginStep(ready=UpstreamReady(g.connection_id, g.server_version, self.capabilities, reply.status))
        if isinstance(reply, ERR):
            # The client's token was fine: the proxy's own credentials were not. The client
            # is not told the server's words (they name the upstream account); the log is.
            self.detail = f"ERROR {reply.code} ({reply.sqlstate}): {reply.message}"
            return self._refuse("the server rejected the proxy's credentials", 1045, "08004")
        if isinstance(reply, AuthSwitchRequest):
            # client_ed25519's nonce is 32 bytes with no NUL after it: one that ends in a zero
            # byte is not to be cut (1 login in 256 failed so)
            nonce = reply.data[:32] if reply.plugin == auth.ED25519 and len(reply.data) >= 32 else reply.nonce
            answer = self._answer(reply.plugin, nonce)
            if isinstance(answer, LoginStep):
                return answer
            return LoginStep(send=self._packet(answer))
        assert isinstance(reply, AuthMoreData)
        if self._sha2 is None:
            return self._refuse(f"unexpected authentication data for plugin {self._plugin!r}")
        more = self._sha2.more_data(reply.data)
        return LoginStep(send=self._packet(more)) if more is not None else LoginStep()
