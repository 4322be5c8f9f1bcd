"""The per-connection PostgreSQL session: a state machine with no awaits.

Events come in as method calls (bytes from the client, bytes from the upstream, "the
token was checked", "the upstream is ready", ...); commands come out
(:mod:`dbsentry.session.commands`).  Every rule of the session lives here, so it is
tested without sockets.

States::

    STARTUP --SSLRequest--> (TLS) --StartupMessage--> AUTH --password--> VERIFYING
      --identity ok--> CONNECTING --upstream ready--> READY <--> (query cycles) --> CLOSED
"""

from __future__ import annotations

import logging
import shlex
from dataclasses import dataclass, field
from enum import Enum

from dbsentry.config import Config, ConnectionConfig
from dbsentry.identity.model import Identity
from dbsentry.session import commands as c
from dbsentry.session.upstream import UpstreamReady
from dbsentry.wire.pg import codec
from dbsentry.wire.pg import messages as m

# Startup parameters the proxy sets or refuses itself rather than forwarding.
_NOT_FORWARDED = frozenset({"user", "database", "options", "replication"})
MAX_AUTH_MESSAGE = 64 * 1024


class State(Enum):
    STARTUP = "startup"
    AUTH = "auth"
    VERIFYING = "verifying"
    CONNECTING = "connecting"
    READY = "ready"
    CLOSED = "closed"


def fatal(sqlstate: str, message: str, hint: str | None = None) -> bytes:
    return codec.error_response(sqlstate, message, severity="FATAL", hint=hint)


def split_options(options: str) -> tuple[dict[str, str], str]:
    """Split a libpq ``options`` string into dbsentry settings and the rest.

    ``-c dbsentry.approval=wait -c search_path=app`` gives
    ``({"approval": "wait"}, "-c search_path=app")``.  PostgreSQL's own syntax escapes
    spaces with backslashes; shlex in POSIX mode reads that the same way.
    """
    try:
        words = shlex.split(options, posix=True)
    except ValueError:
        return {}, options
    ours: dict[str, str] = {}
    rest: list[str] = []
    i = 0
    while i < len(words):
        w = words[i]
        setting: str | None = None
        if w == "-c" and i + 1 < len(words):
            setting = words[i + 1]
            i += 2
        elif w.startswith("-c") and len(w) > 2:
            setting = w[2:]
            i += 1
        elif w.startswith("--") and "=" in w:
            setting = w[2:].replace("-", "_", w.index("=") - 2)
            i += 1
        else:
            rest.append(w)
            i += 1
            continue
        name, _, value = setting.partition("=")
        if name.lower().startswith("dbsentry."):
            ours[name.lower()[len("dbsentry.") :]] = value
        else:
            rest.extend(["-c", setting])
    return ours, " ".join(_escape_option(w) for w in rest)


def _escape_option(word: str) -> str:
    return word.replace("\\", "\\\\").replace(" ", "\\ ")


@dataclass(slots=True)
class ClientInfo:
    address: str
    tls: bool = False
    tls_version: str | None = None


@dataclass
class Session:
    """One client connection, from its first byte to its last."""

    config: Config
    client: ClientInfo
    proxy_pid: int
    proxy_secret: bytes
    state: State = State.STARTUP
    identity: Identity | None = None
    connection_name: str | None = None
    startup: m.StartupMessage | None = None
    settings: dict[str, str] = field(default_factory=dict)  # dbsentry.* startup options
    txn_status: str = "I"
    upstream_params: dict[str, str] = field(default_factory=dict)
    # Responses the upstream still owes: one ReadyForQuery per Query, Sync and FunctionCall.
    pending_syncs: int = 0
    _startup_buf: bytes = b""
    _client_frames: codec.FrameSplitter = field(init=False)
    _upstream_frames: codec.FrameSplitter = field(init=False)
    _upstream_fatal: bool = False
    _forward_options: str = ""

    def __post_init__(self) -> None:
        self._client_frames = codec.FrameSplitter(MAX_AUTH_MESSAGE)
        self._upstream_frames = codec.FrameSplitter(self.config.limits.max_message_bytes)

    # ------------------------------------------------------------------ helpers

    @property
    def connection(self) -> ConnectionConfig | None:
        if self.connection_name is None:
            return None
        return self.config.connections.get(self.connection_name)

    def _fail(self, sqlstate: str, message: str, hint: str | None = None, **log: object) -> list[c.Command]:
        self.state = State.CLOSED
        return [
            c.Log(logging.INFO, "session.refused", {"sqlstate": sqlstate, "reason": message, **log}),
            c.SendClient(fatal(sqlstate, message, hint)),
            c.CloseClient(),
            c.CloseUpstream(),
        ]

    # ------------------------------------------------------------------ client events

    def client_data(self, data: bytes) -> list[c.Command]:
        try:
            if self.state is State.READY:
                return self._client_ready(data)
            if self.state is State.STARTUP:
                return self._client_startup(data)
            if self.state is State.AUTH:
                return self._client_auth(data)
            if self.state is State.CLOSED:
                return []
            # VERIFYING / CONNECTING: the client must wait for us; it may only pipeline.
            return self._client_early(data)
        except codec.ProtocolError as err:
            return self._fail(err.sqlstate, f"dbsentry: {err}", client=self.client.address)

    def _client_startup(self, data: bytes) -> list[c.Command]:
        buf = self._startup_buf + data
        got = codec.read_startup_packet(buf)
        if got is None:
            self._startup_buf = buf
            return []
        packet, used = got
        rest = buf[used:]
        self._startup_buf = b""
        if isinstance(packet, m.SSLRequest):
            if self.client.tls:
                raise codec.ProtocolError("SSLRequest received on an encrypted connection")
            if rest:
                # Bytes sent before the TLS handshake could be injected by a man in the
                # middle (CVE-2021-23214): never treat them as part of the session.
                raise codec.ProtocolError("unencrypted data after SSLRequest")
            return [c.SendClient(b"S"), c.StartClientTLS()]
        if isinstance(packet, m.GSSENCRequest):
            out: list[c.Command] = [c.SendClient(b"N")]
            return out + (self._client_startup(rest) if rest else [])
        if isinstance(packet, m.CancelRequest):
            self.state = State.CLOSED
            return [c.ForwardCancel(packet.pid, packet.secret), c.CloseClient()]
        return self._on_startup_message(packet, rest)

    def client_tls_started(self, version: str | None) -> list[c.Command]:
        self.client.tls = True
        self.client.tls_version = version
        return []

    def _on_startup_message(self, msg: m.StartupMessage, rest: bytes) -> list[c.Command]:
        self.startup = msg
        out: list[c.Command] = []
        unsupported = [k for k, _ in msg.params if k.startswith("_pq_.")]
        if msg.minor > 0 or unsupported:
            out.append(c.SendClient(codec.encode_negotiate_protocol_version(0, unsupported)))
        user = msg.get("user")
        if not user:
            return self._fail("28000", "no PostgreSQL user name specified in startup packet")
        if msg.get("replication") not in (None, "false", "off", "no", "0"):
            return self._fail("0A000", "dbsentry: replication connections are not supported")
        if not self.client.tls and self.config.tls.require_client_tls:
            return self._fail(
                "28000",
                "dbsentry: this proxy requires TLS; connect with sslmode=require (or stronger)",
                hint="The password is an access token and is never accepted over plaintext.",
                client=self.client.address,
            )
        ours, rest_options = split_options(msg.get("options") or "")
        for k, v in msg.params:
            if k.lower().startswith("dbsentry."):
                ours[k.lower()[len("dbsentry.") :]] = v
        self.settings = ours
        self._forward_options = rest_options
        self.connection_name = msg.get("database") or user
        self.state = State.AUTH
        out.append(c.SendClient(codec.AUTH_CLEARTEXT_FRAME))
        if rest:
            out.extend(self._client_auth(rest))
        return out

    def _client_auth(self, data: bytes) -> list[c.Command]:
        buf, spans = self._client_frames.split(data)
        for t, start, end in spans:
            if t != m.Q_PASSWORD:
                if t == m.Q_TERMINATE:
                    self.state = State.CLOSED
                    return [c.CloseClient()]
                raise codec.ProtocolError(f"expected a password message, got {chr(t)!r}")
            pw = buf[start:end]
            if pw.endswith(b"\x00"):
                pw = pw[:-1]
            try:
                password = pw.decode("utf-8")
            except UnicodeDecodeError:
                password = ""
            self.state = State.VERIFYING
            assert self.startup is not None
            return [c.VerifyPassword(self.startup.get("user") or "", password)]
        return []

    def _client_early(self, data: bytes) -> list[c.Command]:
        # Before AuthenticationOk a well-behaved client sends nothing; Terminate is allowed.
        if data[:1] == b"X":
            return self._fail("08P01", "dbsentry: client terminated during login")
        raise codec.ProtocolError("unexpected data before authentication completed")

    def password_verified(self, identity: Identity | None) -> list[c.Command]:
        if self.state is not State.VERIFYING:
            return []
        assert self.startup is not None
        user = self.startup.get("user") or ""
        if identity is None:
            return self._fail(
                "28P01", f'password authentication failed for user "{user}"', client=self.client.address, user=user
            )
        self.identity = identity
        conn = self.connection
        if conn is None:
            return self._fail("3D000", f'dbsentry: connection "{self.connection_name}" does not exist', user=user)
        if conn.allow_groups is not None and not (identity.groups & set(conn.allow_groups)):
            return self._fail(
                "42501",
                f'dbsentry: identity "{identity.name}" is not allowed to use connection "{self.connection_name}"',
                user=user,
            )
        self.state = State.CONNECTING
        params: list[tuple[str, str]] = [("database", conn.database)]
        for k, v in self.startup.params:
            if k in _NOT_FORWARDED or k.startswith("_pq_.") or k.lower().startswith("dbsentry."):
                continue
            params.append((k, v))
        if self._forward_options:
            params.append(("options", self._forward_options))
        assert self.connection_name is not None
        return [
            c.Log(
                logging.INFO,
                "session.authenticated",
                {"identity": identity.name, "kind": identity.kind, "connection": self.connection_name},
            ),
            c.OpenUpstream(self.connection_name, tuple(params)),
        ]

    # ------------------------------------------------------------------ upstream login

    def upstream_ready(self, ready: UpstreamReady) -> list[c.Command]:
        if self.state is not State.CONNECTING:
            return [c.CloseUpstream()]
        self.state = State.READY
        self.upstream_params = dict(ready.params)
        self.txn_status = ready.status
        self._client_frames = codec.FrameSplitter(self.config.limits.max_message_bytes)
        greeting = b"".join(
            (
                codec.AUTH_OK_FRAME,
                ready.parameter_frames,
                codec.encode_backend_key(self.proxy_pid, self.proxy_secret),
                codec.encode_ready(ready.status),
            )
        )
        out: list[c.Command] = [c.SendClient(greeting)]
        if ready.leftover:
            out.extend(self.upstream_data(ready.leftover))
        return out

    def upstream_failed(self, sqlstate: str, message: str) -> list[c.Command]:
        if self.state is State.CLOSED:
            return []
        return self._fail(sqlstate, message, connection=self.connection_name)

    # ------------------------------------------------------------------ query cycles

    def _client_ready(self, data: bytes) -> list[c.Command]:
        buf, spans = self._client_frames.split(data)
        syncs = 0
        for t, start, _end in spans:
            if t == m.Q_QUERY or t == m.Q_SYNC or t == m.Q_FUNCTION_CALL:
                syncs += 1
            elif t == m.Q_TERMINATE:
                # CloseUpstream says goodbye to the upstream with its own Terminate.
                self.pending_syncs += syncs
                self.state = State.CLOSED
                before = buf[: start - 5]
                return [*([c.SendUpstream(before)] if before else []), c.CloseUpstream(), c.CloseClient()]
        self.pending_syncs += syncs
        return [c.SendUpstream(buf)] if buf else []

    def upstream_data(self, data: bytes) -> list[c.Command]:
        if self.state is not State.READY:
            return []
        try:
            buf, spans = self._upstream_frames.split(data)
        except codec.ProtocolError as err:
            return self._fail("08P01", f"dbsentry: upstream protocol error: {err}")
        for t, start, _end in spans:
            if t == m.R_READY:
                self.txn_status = chr(buf[start])
                if self.pending_syncs:
                    self.pending_syncs -= 1
            elif t == m.R_ERROR and buf[start + 1 : start + 6] == b"FATAL":
                self._upstream_fatal = True
        return [c.SendClient(buf)] if buf else []

    # ------------------------------------------------------------------ endings

    def client_closed(self) -> list[c.Command]:
        was_busy = self.state is State.READY and self.pending_syncs > 0
        self.state = State.CLOSED
        out: list[c.Command] = [c.Log(logging.DEBUG, "session.client_closed", {"busy": was_busy})]
        if was_busy:
            # PostgreSQL would only notice the vanished client when it next writes; a
            # long query would run on.  Cancel it, then close.
            out.append(c.CancelUpstream())
        out.append(c.CloseUpstream())
        return out

    def upstream_closed(self) -> list[c.Command]:
        if self.state is State.CLOSED:
            return []
        self.state = State.CLOSED
        out: list[c.Command] = [c.Log(logging.INFO, "session.upstream_closed", {"connection": self.connection_name})]
        if not self._upstream_fatal:
            out.append(c.SendClient(fatal("08006", "dbsentry: the upstream server closed the connection unexpectedly")))
        out.append(c.CloseClient())
        return out

    def startup_timeout(self) -> list[c.Command]:
        if self.state in (State.READY, State.CLOSED):
            return []
        return self._fail("08P01", "dbsentry: timeout waiting for startup and authentication", client=self.client.address)
