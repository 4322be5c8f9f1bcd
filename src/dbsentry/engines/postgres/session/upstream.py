"""Sans-IO login to the upstream PostgreSQL with the proxy's own credentials.

The proxy speaks protocol 3.0 to the upstream and answers whatever authentication the
server demands: trust, cleartext, md5 or SCRAM-SHA-256 (with channel binding when the
upstream connection is TLS and the server offers it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

# The login's result is the session's event as it is (``Session.handle(ready)``).
from dbsentry.engines.postgres.session.events import UpstreamReady as UpstreamReady
from dbsentry.engines.postgres.wire import codec
from dbsentry.engines.postgres.wire import messages as m
from dbsentry.engines.postgres.wire.auth import AuthError, ScramClient, md5_password_message

_UNSUPPORTED_AUTH = {2: "Kerberos V5", 6: "SCM credentials", 7: "GSSAPI", 9: "SSPI"}


@dataclass(slots=True)
class UpstreamRefused:
    """The upstream refused the login (an ErrorResponse), or the exchange failed."""

    sqlstate: str
    message: str
    from_server: bool = True


@dataclass(slots=True)
class HandshakeStep:
    send: bytes = b""
    ready: UpstreamReady | None = None
    refused: UpstreamRefused | None = None


@dataclass(slots=True)
class UpstreamHandshake:
    user: str
    password: str | None
    params: tuple[tuple[str, str], ...]
    tls_binding: bytes | None = None
    max_message: int = codec.DEFAULT_MAX_MESSAGE
    _splitter: codec.FrameSplitter = field(init=False)
    _scram: ScramClient | None = field(default=None, init=False)
    _param_frames: list[bytes] = field(default_factory=list, init=False)
    _params: dict[str, str] = field(default_factory=dict, init=False)
    _key: tuple[int, bytes] = field(default=(0, b""), init=False)

    def __post_init__(self) -> None:
        self._splitter = codec.FrameSplitter(self.max_message)

    def startup_message(self) -> bytes:
        return codec.encode_startup((("user", self.user), *self.params))

    def receive(self, data: bytes) -> HandshakeStep:
        try:
            return self._receive(data)
        except codec.ProtocolError as err:
            return HandshakeStep(refused=UpstreamRefused("08P01", f"upstream protocol error: {err}", False))
        except AuthError as err:
            return HandshakeStep(refused=UpstreamRefused("08006", f"upstream authentication failed: {err}", False))

    def _receive(self, data: bytes) -> HandshakeStep:
        buf, spans = self._splitter.split(data)
        out: list[bytes] = []
        for t, start, end in spans:
            if t == m.R_AUTH:
                auth = codec.decode_auth(buf, start, end)
                reply = self._answer(auth)
                if isinstance(reply, UpstreamRefused):
                    return HandshakeStep(refused=reply)
                if reply:
                    out.append(reply)
            elif t == m.R_PARAMETER_STATUS:
                ps = codec.decode_parameter_status(buf, start, end)
                self._params[ps.name] = ps.value
                self._param_frames.append(buf[start - 5 : end])
            elif t == m.R_NOTICE:
                self._param_frames.append(buf[start - 5 : end])
            elif t == m.R_BACKEND_KEY:
                k = codec.decode_backend_key(buf, start, end)
                self._key = (k.pid, k.secret)
            elif t == m.R_NEGOTIATE_VERSION:
                pass  # we asked for 3.0; a server that knows newer minors says so, harmlessly
            elif t == m.R_ERROR:
                err = codec.decode_error_fields(buf, start, end)
                return HandshakeStep(refused=UpstreamRefused(err.sqlstate or "08006", err.message))
            elif t == m.R_READY:
                status = codec.decode_ready(buf, start, end).status
                # Anything after ReadyForQuery belongs to the session (normally nothing).
                leftover = bytes(buf[end:]) + self._splitter.take_pending()
                return HandshakeStep(
                    send=b"".join(out),
                    ready=UpstreamReady(
                        b"".join(self._param_frames), self._params, self._key[0], self._key[1], status, leftover
                    ),
                )
            else:
                raise codec.ProtocolError(f"unexpected message {chr(t)!r} during upstream login")
        return HandshakeStep(send=b"".join(out))

    def _answer(self, auth: m.Authentication) -> bytes | UpstreamRefused | None:
        code = auth.code
        if code == m.AUTH_OK:
            if self._scram is not None and not self._scram.done:
                # A server that skips SASLFinal never proved it knows the password.
                raise AuthError("the upstream sent AuthenticationOk before completing SCRAM")
            return None
        if code in _UNSUPPORTED_AUTH:
            return UpstreamRefused("08004", f"dbsentry: the upstream demands {_UNSUPPORTED_AUTH[code]} authentication, which dbsentry does not support", False)
        if self.password is None:
            return UpstreamRefused("08004", "dbsentry: the upstream demands a password and the connection has none configured", False)
        if code == m.AUTH_CLEARTEXT:
            return codec.encode_password(self.password)
        if code == m.AUTH_MD5:
            if len(auth.data) != 4:
                raise codec.ProtocolError("invalid md5 salt")
            return codec.encode_sasl_response(md5_password_message(self.user, self.password, auth.data))
        if code == m.AUTH_SASL:
            mechanisms = codec.decode_sasl_mechanisms(auth.data)
            self._scram = ScramClient(self.password, mechanisms, tls_server_end_point=self.tls_binding)
            return codec.encode_sasl_initial(self._scram.mechanism, self._scram.client_first())
        if code == m.AUTH_SASL_CONTINUE:
            if self._scram is None:
                raise codec.ProtocolError("SASLContinue before SASL")
            return codec.encode_sasl_response(self._scram.client_final(auth.data))
        if code == m.AUTH_SASL_FINAL:
            if self._scram is None:
                raise codec.ProtocolError("SASLFinal before SASL")
            self._scram.verify_server_final(auth.data)
            return None
        return UpstreamRefused("08004", f"dbsentry: the upstream demands unknown authentication method {code}", False)
