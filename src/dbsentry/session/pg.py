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
import secrets
import shlex
from dataclasses import dataclass, field
from enum import Enum

from dbsentry.config import Config, ConnectionConfig
from dbsentry.identity.model import Identity
from dbsentry.session import commands as c
from dbsentry.session.governance import Check, Governor, denial_message
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
    governor: Governor | None = None
    _environment: str = ""
    # Prepared statement name -> (SQL, policy version it was checked under).
    _prepared: dict[str, tuple[str, str]] = field(default_factory=dict)
    # Marker -> the ErrorResponse that replaces the upstream's error for a refused statement.
    _refusals: dict[str, bytes] = field(default_factory=dict)
    _marker_prefix: str = field(default_factory=lambda: secrets.token_hex(4))
    _marker_seq: int = 0

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
        conn = self.connection
        self._environment = conn.environment if conn is not None else ""
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
        gov = self.governor
        syncs = 0
        pieces: list[bytes] | None = None  # set once a frame is replaced
        last = 0
        extra: list[c.Command] = []
        for t, start, end in spans:
            if t == m.Q_QUERY or t == m.Q_SYNC or t == m.Q_FUNCTION_CALL:
                syncs += 1
            elif t == m.Q_TERMINATE:
                # CloseUpstream says goodbye to the upstream with its own Terminate.
                self.pending_syncs += syncs
                self.state = State.CLOSED
                before = self._assemble(pieces, buf, last, start - 5)
                return [*extra, *([c.SendUpstream(before)] if before else []), c.CloseUpstream(), c.CloseClient()]
            if gov is None:
                continue
            replacement: bytes | None = None
            if t == m.Q_QUERY:
                replacement = self._govern_query(gov, buf, start, end, extra)
            elif t == m.Q_PARSE:
                replacement = self._govern_parse(gov, buf, start, end, extra)
            elif t == m.Q_BIND:
                replacement = self._govern_bind(gov, buf, start, end, extra)
            elif t == m.Q_FUNCTION_CALL:
                replacement = self._govern_function_call(gov, extra)
            elif t == m.Q_CLOSE:
                kind, name = codec.decode_describe_or_close(buf, start, end)
                if kind == "S":
                    self._prepared.pop(name, None)
            if replacement is not None:
                if pieces is None:
                    pieces = []
                pieces.append(buf[last : start - 5])
                pieces.append(replacement)
                last = end
        self.pending_syncs += syncs
        out = self._assemble(pieces, buf, last, len(buf))
        if out:
            extra.append(c.SendUpstream(out))
        return extra

    @staticmethod
    def _assemble(pieces: list[bytes] | None, buf: bytes, last: int, stop: int) -> bytes:
        if pieces is None:
            return buf[:stop] if stop != len(buf) else buf
        return b"".join([*pieces, buf[last:stop]])

    # ------------------------------------------------------------------ governance

    def _check(self, gov: Governor, sql: str) -> Check:
        assert self.identity is not None and self.connection_name is not None
        return gov.check(sql, self.identity, self.connection_name, self._environment)

    def _too_long(self, sql_bytes: int) -> str | None:
        limit = self.config.limits.max_statement_bytes
        if sql_bytes > limit:
            return (
                f"dbsentry: statement of {sql_bytes} bytes exceeds the limit of {limit} bytes "
                "(limits.max_statement_bytes)"
            )
        return None

    def _govern_query(self, gov: Governor, buf: bytes, start: int, end: int, extra: list[c.Command]) -> bytes | None:
        too_long = self._too_long(end - start - 1)
        if too_long:
            return codec.encode_query(self._marker_sql(self._refuse(too_long, "54000", extra)))
        sql = codec.decode_query(buf, start, end).sql
        check = self._check(gov, sql)
        if check.allowed:
            return None
        return codec.encode_query(self._marker_sql(self._deny(check, sql, extra)))

    def _govern_parse(self, gov: Governor, buf: bytes, start: int, end: int, extra: list[c.Command]) -> bytes | None:
        parse = codec.decode_parse(buf, start, end)
        too_long = self._too_long(len(parse.sql))
        if too_long:
            self._prepared.pop(parse.name, None)
            marker = self._refuse(too_long, "54000", extra)
            return codec.encode_parse(m.Parse(parse.name, self._marker_sql(marker)))
        check = self._check(gov, parse.sql)
        if check.allowed:
            self._prepared[parse.name] = (parse.sql, gov.version)
            return None
        self._prepared.pop(parse.name, None)
        return codec.encode_parse(m.Parse(parse.name, self._marker_sql(self._deny(check, parse.sql, extra))))

    def _govern_bind(self, gov: Governor, buf: bytes, start: int, end: int, extra: list[c.Command]) -> bytes | None:
        # Re-check a prepared statement when the policy changed since its Parse.
        portal, pos = codec.read_cstr(buf, start, end)
        name, _ = codec.read_cstr(buf, pos, end)
        known = self._prepared.get(name)
        if known is None or known[1] == gov.version:
            return None
        sql = known[0]
        check = self._check(gov, sql)
        if check.allowed:
            self._prepared[name] = (sql, gov.version)
            return None
        self._prepared.pop(name, None)
        # Binding a statement that does not exist fails upstream, in order, with the marker.
        return codec.encode_bind(m.Bind(portal, self._deny(check, sql, extra)))

    def _govern_function_call(self, gov: Governor, extra: list[c.Command]) -> bytes | None:
        # A FunctionCall names a function by OID only, so governance cannot check it:
        # where the baseline applies (production), it is refused (fail closed).
        if self._environment not in gov.policy.production_environments:
            return None
        marker = self._refuse(
            "dbsentry: the FunctionCall protocol message is not allowed here; call the function with SQL "
            "(rule: baseline.function_call)",
            "42501",
            extra,
        )
        return codec.encode_query(self._marker_sql(marker))

    def _deny(self, check: Check, sql: str, extra: list[c.Command]) -> str:
        decision = check.decision
        marker = self._refuse(denial_message(decision), "42501", extra, log=False)
        extra.append(
            c.Log(
                logging.WARNING,
                "statement.denied",
                {
                    "identity": self.identity.name if self.identity else None,
                    "connection": self.connection_name,
                    "action": decision.action,
                    "rules": list(decision.rules),
                    "statement": sql[:200],
                },
            )
        )
        return marker

    def _refuse(self, message: str, sqlstate: str, extra: list[c.Command], log: bool = True) -> str:
        """Arrange for the statement to fail upstream, in order, and for its error to become ours.

        The statement is replaced by one that names a relation (or prepared statement)
        called after a fresh marker, which cannot exist: PostgreSQL itself fails it at the
        right point of the pipeline, moves the transaction to the failed state exactly as
        for any error, and skips to the next Sync.  Its ErrorResponse carries the marker,
        and :meth:`upstream_data` replaces it with this message.
        """
        self._marker_seq += 1
        marker = f"dbsentry_refused_{self._marker_prefix}_{self._marker_seq}"
        self._refusals[marker] = codec.error_response(sqlstate, message)
        if log:
            extra.append(c.Log(logging.WARNING, "statement.refused", {"reason": message}))
        return marker

    @staticmethod
    def _marker_sql(marker: str) -> str:
        return f'SELECT * FROM "{marker}"'

    def upstream_data(self, data: bytes) -> list[c.Command]:
        if self.state is not State.READY:
            return []
        try:
            buf, spans = self._upstream_frames.split(data)
        except codec.ProtocolError as err:
            return self._fail("08P01", f"dbsentry: upstream protocol error: {err}")
        pieces: list[bytes] | None = None
        last = 0
        for t, start, end in spans:
            if t == m.R_READY:
                self.txn_status = chr(buf[start])
                if self.pending_syncs:
                    self.pending_syncs -= 1
                if not self.pending_syncs and self._refusals:
                    # A refused statement skipped by an earlier error never reports.
                    self._refusals.clear()
            elif t == m.R_ERROR:
                if buf[start + 1 : start + 6] == b"FATAL":
                    self._upstream_fatal = True
                if self._refusals:
                    ours = self._our_error(buf, start, end)
                    if ours is not None:
                        if pieces is None:
                            pieces = []
                        pieces.append(buf[last : start - 5])
                        pieces.append(ours)
                        last = end
        out = self._assemble(pieces, buf, last, len(buf))
        return [c.SendClient(out)] if out else []

    def _our_error(self, buf: bytes, start: int, end: int) -> bytes | None:
        text = bytes(buf[start:end])
        if b"dbsentry_refused_" not in text:
            return None
        for marker in list(self._refusals):
            if marker.encode() in text:
                return self._refusals.pop(marker)
        return None

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
