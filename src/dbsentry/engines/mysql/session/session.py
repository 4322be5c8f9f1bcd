"""One MySQL/MariaDB client connection as a sans-IO state machine.

``Session.handle(event)`` is the only entry point: events in (bytes from either side, the
answers to commands), commands out (:mod:`~dbsentry.engines.mysql.session.commands`). The
states and every allowed transition are in :data:`TRANSITIONS`; any other transition
raises :class:`SessionStateError` and the connection is dropped.

The proxy speaks the server's side of the handshake to the client (its own connection id
and nonce, ``caching_sha2_password`` asking for full authentication so that the token
itself arrives: in the clear inside TLS, or RSA-encrypted with the proxy's key;
``mysql_clear_password`` over TLS), checks the token, then logs in upstream with the
connection's credentials and the client's protocol capabilities, so that the server's
answers are forwarded as they are.

The command phase is one exchange at a time, as the protocol is: a command is read,
governed, audited, forwarded; the server's answer is followed packet by packet
(:mod:`~dbsentry.engines.mysql.wire.results`) to its end, and re-framed towards the client
(:meth:`Session._to_client`); result rows pass through :meth:`Session.result_row`, the one
place where a row rewriter (masking) plugs in; rows nobody rewrites are re-framed in bulk,
consecutive ones of one read in one go. Commands that arrive meanwhile wait.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import TYPE_CHECKING, Protocol, assert_never

from dbsentry.audit.config import AuditConfig
from dbsentry.audit.records import Record, StatementRecord
from dbsentry.audit.redaction import LiteralRedactor
from dbsentry.config import Config, ConnectionConfig
from dbsentry.engines.mysql.masking import MysqlMaskPlan, Refusal, copies_of, plan_for
from dbsentry.engines.mysql.session import commands as c
from dbsentry.engines.mysql.session import guard as g
from dbsentry.engines.mysql.session.auditing import MySQLAudit
from dbsentry.engines.mysql.session.events import (
    ApprovalAnswered,
    AuditFailed,
    ClientClosed,
    ClientData,
    ClientTLSStarted,
    Event,
    KillAnswered,
    PasswordVerified,
    StartupTimedOut,
    UpstreamClosed,
    UpstreamData,
    UpstreamFailed,
    UpstreamReady,
)
from dbsentry.engines.mysql.session.governance import MySQLGovernor
from dbsentry.engines.mysql.session.literals import constant_value
from dbsentry.engines.mysql.session.masking import (
    DETECT_ALL,
    Inheritance,
    MaskingSource,
    ResultMasking,
    settings_for,
)
from dbsentry.engines.mysql.sql.lexing import DEFAULT_MODE, SqlMode, lexer, tokens
from dbsentry.engines.mysql.wire import auth
from dbsentry.engines.mysql.wire import commands as w
from dbsentry.engines.mysql.wire import constants as k
from dbsentry.engines.mysql.wire.charsets import charset as charset_of
from dbsentry.engines.mysql.wire.generic import (
    EOF,
    ERR,
    OK,
    decode_eof,
    decode_err,
    decode_ok,
    encode_err,
    encode_ok,
    is_result_end,
)
from dbsentry.engines.mysql.wire.handshake import (
    AuthSwitchRequest,
    Handshake,
    HandshakeResponse,
    SSLRequest,
    decode_client_handshake,
    encode_auth_switch_request,
    encode_handshake,
)
from dbsentry.engines.mysql.wire.packets import (
    Packet,
    PacketSplitter,
    encode_packet,
    encode_packets,
)
from dbsentry.engines.mysql.wire.results import (
    ColumnCount,
    ColumnDefinition,
    PrepareReader,
    ResultReader,
    StmtPrepareOK,
    TextRow,
)
from dbsentry.engines.mysql.wire.values import ParamType, value_text
from dbsentry.errors import ProtocolError
from dbsentry.governance.durability import changes_data
from dbsentry.governance.facts import StatementFacts
from dbsentry.governance.text import COMMENT, LITERAL
from dbsentry.identity.model import Identity
from dbsentry.identity.ratelimit import ControlPlaneUnavailable, LoginThrottled
from dbsentry.masking import writeback
from dbsentry.masking.catalog import ClassMap, SourceColumn
from dbsentry.masking.classes import Classification
from dbsentry.masking.strategies import DEFAULT_STRATEGIES, scan_text
from dbsentry.policy.engine import Decision, combine
from dbsentry.policy.verdict import Verdict, denial_message

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

__all__ = ["OFFERED", "ClientInfo", "Session", "SessionStateError", "State"]

# Error codes (MySQL's numbering) of the errors the proxy makes itself.
ER_ACCESS_DENIED = 1045
ER_DBACCESS_DENIED = 1044  # the server's own code for a database the account may not use
ER_BAD_DB = 1049
ER_NO_DB = 1046
ER_SPECIFIC_ACCESS_DENIED = 1227
ER_PARSE = 1064
ER_NOT_SUPPORTED = 1235
ER_UNKNOWN_COM = 1047
ER_NET_PACKETS_OUT_OF_ORDER = 1156
ER_NET_PACKET_TOO_LARGE = 1153
ER_HANDSHAKE = 1043
ER_SECURE_TRANSPORT_REQUIRED = 3159
ER_NO_SUCH_THREAD = 1094
ER_KILL_DENIED = 1095
ER_AUDIT = 3098  # "the table does not comply with the requirements by an external plugin"
ER_UNKNOWN_STMT = 1243
ER_TABLEACCESS_DENIED = 1142  # a masking refusal (docs/mysql.md "Masking")
# statements that may store copies of classified values (their columns inherit the class)
_COPYING = frozenset({"INSERT", "REPLACE", "UPDATE", "CREATE TABLE AS"})
ER_MALFORMED_PACKET = 1835
# "Server shutdown in progress" (08S01): the server's own answer when it cannot serve a
# login now for a reason of its own; drivers and pools retry it (docs/mysql.md)
ER_SERVER_SHUTDOWN = 1053
ALLOWED = Decision("allow", ())

#: What the proxy's greeting offers. Not offered: compression (refused cleanly: a client
#: asking for it gets no compression), LOCAL INFILE (the server could ask the client for
#: any file), IGNORE_SPACE and ODBC (they change how the text reads), optional metadata,
#: and MariaDB's extended capabilities. Query attributes are read, audited, and stripped
#: when the server does not read them.
OFFERED = (
    k.CLIENT_LONG_PASSWORD
    | k.CLIENT_FOUND_ROWS
    | k.CLIENT_LONG_FLAG
    | k.CLIENT_CONNECT_WITH_DB
    | k.CLIENT_PROTOCOL_41
    | k.CLIENT_INTERACTIVE
    | k.CLIENT_SSL
    | k.CLIENT_IGNORE_SIGPIPE
    | k.CLIENT_TRANSACTIONS
    | k.CLIENT_SECURE_CONNECTION
    | k.CLIENT_MULTI_STATEMENTS
    | k.CLIENT_MULTI_RESULTS
    | k.CLIENT_PS_MULTI_RESULTS
    | k.CLIENT_PLUGIN_AUTH
    | k.CLIENT_CONNECT_ATTRS
    | k.CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
    | k.CLIENT_SESSION_TRACK
    | k.CLIENT_DEPRECATE_EOF
    | k.CLIENT_QUERY_ATTRIBUTES
)
MAX_AUTH_PACKET = 1 << 16
#: The settings a session re-reads after a statement that may change them.
_MODE_QUERY = b"\x03SELECT @@sql_mode, @@character_set_client"
_READ_ONLY = b"\x03SET SESSION TRANSACTION READ ONLY"


class State(Enum):
    GREETED = "greeted"  # the greeting was sent: SSLRequest or HandshakeResponse next
    TLS = "tls"  # the client's TLS handshake is under way
    AUTH = "auth"  # authentication exchange with the client
    VERIFYING = "verifying"  # the token is being checked
    CONNECTING = "connecting"  # logging in upstream
    INIT = "init"  # reading the upstream session's settings (internal query)
    READY = "ready"  # waiting for the client's next command
    GATED = "gated"  # a command waits for its audit record, an approval or a KILL
    BUSY = "busy"  # a command was forwarded: its answer is being read
    CLOSED = "closed"


TRANSITIONS: dict[State, frozenset[State]] = {
    State.GREETED: frozenset({State.TLS, State.AUTH, State.VERIFYING, State.CLOSED}),
    State.TLS: frozenset({State.GREETED, State.CLOSED}),
    State.AUTH: frozenset({State.AUTH, State.VERIFYING, State.CLOSED}),
    State.VERIFYING: frozenset({State.CONNECTING, State.READY, State.INIT, State.CLOSED}),
    State.CONNECTING: frozenset({State.INIT, State.CLOSED}),
    State.INIT: frozenset({State.READY, State.CLOSED}),
    # (READY -> AUTH / VERIFYING: COM_CHANGE_USER authenticates again; then INIT)
    State.READY: frozenset({State.GATED, State.BUSY, State.AUTH, State.VERIFYING, State.CLOSED}),
    State.GATED: frozenset({State.READY, State.BUSY, State.CLOSED}),
    State.BUSY: frozenset({State.READY, State.BUSY, State.CLOSED}),
    State.CLOSED: frozenset({State.CLOSED}),
}


class SessionStateError(RuntimeError):
    """A transition :data:`TRANSITIONS` does not allow: a bug, the connection is dropped."""


class GrantSource(Protocol):
    """Just-in-time access (the approvals service)."""

    def effective_identity(self, identity: Identity) -> Identity: ...

    def connection_granted(self, identity: str, connection: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class ClientInfo:
    address: str


# Parameter types MariaDB binds as NULL without reading their bytes (MEDIUMINT, YEAR, BIT).
_UNREAD_PARAM_TYPES = frozenset({0x09, 0x0D, 0x10})
LONG_DATA_KEPT = 64 * 1024  # bytes of a long-data parameter kept for the record


@dataclass(slots=True)
class _Prepared:
    """A statement the server prepared for this client (by the server's statement id)."""

    sql: str
    num_params: int
    verdict: Verdict
    types: tuple[ParamType, ...] | None = None
    names: tuple[str, ...] | None = None
    # parameters sent with COM_STMT_SEND_LONG_DATA since the last execute the server ran:
    # their first LONG_DATA_KEPT bytes, for the record
    long_data: dict[int, bytearray] = field(default_factory=dict)
    cursor: list[ColumnDefinition] | None = None  # columns of an open cursor
    plan: MysqlMaskPlan | None = None  # its mask plan (None: planned for no masked identity)


@dataclass(slots=True)
class _Exchange:
    """The command whose answer is being read."""

    kind: str  # "result", "prepare", "fetch", "simple", "statistics", "fields", "internal"
    reader: ResultReader | PrepareReader | None = None
    sql: str = ""
    statement: _Prepared | None = None
    statement_id: int = 0
    rows: int = 0  # rows of the current result
    refresh: bool = False  # re-read sql_mode and the charset after the answer
    # SQL-level prepared statements once this command is forwarded (None: unchanged)
    prepared_names: dict[str, str | None] | None = None
    internal_row: TextRow | None = None
    mask: ResultMasking | None = None  # the identity's results are masked
    # SQL-level prepared statements' plans once this command is forwarded (None: unchanged)
    sql_plans: dict[str, MysqlMaskPlan] | None = None
    ddl: bool = False  # the schema may change: the catalog is read again after the answer
    guard: _Bracket | None = None  # it runs under the row guard (production)
    inherit: Inheritance | None = None  # copies of classified values, kept as statements succeed
    # names an SQL PREPARE after the string's first statement prepares: MariaDB runs it only if
    # every statement before it succeeded, so they are forgotten when the answer is an error
    unsure_names: frozenset[str] = frozenset()
    failed: bool = False  # the answer ended with an error


@dataclass(slots=True)
class _Bracket:
    """A statement running under the row guard (:mod:`~dbsentry.engines.mysql.session.guard`):
    where the bracket is, what it measured, and the statement's answer, held."""

    mode: g.Mode
    limits: g.Limits
    written: tuple[tuple[str, str], ...]
    facts: tuple[StatementFacts, ...]
    sql: str
    params: tuple[str | None, ...] | None
    binary: bool
    step: str = "info"  # info, begin, before, statement, after, end
    reader: ResultReader | None = None  # follows the answer of the current step
    rows: list[TextRow] = field(default_factory=list)
    error: ERR | None = None  # of the current step
    plan: g.Plan | None = None
    before: g.Snapshot | None = None
    held: list[bytes] = field(default_factory=list)  # the statement's answer
    held_bytes: int = 0
    status_at: list[int] = field(default_factory=list)  # held packets that carry status flags
    stmt_failed: bool = False
    reported: int = 0  # rows an UPDATE/DELETE's OK reported
    refusal: tuple[str, str] | None = None  # (message, rule): rolled back and refused
    ends: list[bytes] = field(default_factory=list)  # end commands still to send
    commit: bool = False


@dataclass(slots=True)
class _Held:
    """A command waiting for an approval or a KILL's answer."""

    packet: bytes  # the command as the client sent it
    sql: str
    verdict: Verdict | None
    params: tuple[str | None, ...] | None
    exchange: _Exchange


_SESSION_SETUP = re.compile(r"\s*SET\s+(NAMES\s+'?\w+'?(\s+COLLATE\s+'?\w+'?)?|AUTOCOMMIT\s*=\s*[01])\s*;?\s*\Z", re.IGNORECASE)


def _kill_target(sql: str) -> tuple[int, bool] | None:
    """``KILL [QUERY | CONNECTION] id`` exactly (comments and one ``;`` allowed): (id,
    query only); None for any other text."""
    try:
        toks = [t for t in tokens(sql) if t.kind != COMMENT]
    except Exception:
        return None
    words = [sql[t.start : t.end] for t in toks]
    if words and words[-1] == ";":
        words.pop()
        toks.pop()
    if not words or words[0].upper() != "KILL":
        return None
    query_only = False
    rest = words[1:]
    if rest and rest[0].upper() in ("QUERY", "CONNECTION"):
        query_only = rest[0].upper() == "QUERY"
        rest = rest[1:]
    if len(rest) != 1 or not rest[0].isdigit() or toks[-1].kind != LITERAL:
        return None
    return int(rest[0]), query_only


def _touches(facts: Sequence[StatementFacts], classmap: ClassMap) -> bool:
    """Whether the statements read or write a table with classified or value-scanned
    columns, by table name in any schema (an unqualified or unknown schema counts: more
    withheld, never less)."""
    sensitive = {table.lower() for _, table in classmap.tables}
    if not sensitive:
        return False
    for f in facts:
        for name in (*f.tables_read, *f.tables_written):
            if name.rsplit(".", 1)[-1].strip("`").lower() in sensitive:
                return True
    return False


def _reads_diagnostics(sql: str) -> bool:
    """``SHOW WARNINGS``, ``SHOW ERRORS`` or ``SHOW COUNT(*) WARNINGS|ERRORS`` (texts the
    lexer refuses count: the statement is refused anyway)."""
    try:
        words = [sql[t.start : t.end].upper() for t in tokens(sql) if t.kind != COMMENT][:6]
    except Exception:
        return True
    if words[:1] != ["SHOW"]:
        return False
    rest = words[1:]
    if rest[:4] == ["COUNT", "(", "*", ")"]:
        rest = rest[4:]
    return rest[:1] in (["WARNINGS"], ["ERRORS"])


def _use_target(sql: str, facts: StatementFacts) -> str | None:
    """The database a ``USE`` statement names."""
    try:
        toks = [t for t in tokens(facts.text or sql) if t.kind != COMMENT]
    except Exception:
        return None
    text = facts.text or sql
    words = [text[t.start : t.end] for t in toks]
    if len(words) < 2:
        return None
    name = words[1]
    if name.startswith("`") and name.endswith("`"):
        name = name[1:-1].replace("``", "`")
    return name


@dataclass(eq=False)
class Session:
    """One client connection. ``proxy_id``: the connection id the proxy gave the client."""

    config: Config
    client: ClientInfo
    proxy_id: int
    governor: MySQLGovernor | None = None
    audit_config: AuditConfig | None = None
    redactor: LiteralRedactor | None = None
    grants: GrantSource | None = None
    approvals: bool = False
    rsa_key: RSAPrivateKey | None = None
    masking: MaskingSource | None = None  # None: masking is off (masking.enabled)
    server_version: str = "8.0.0-dbsentry"
    nonce: bytes = field(default_factory=auth.new_nonce)
    state: State = State.GREETED
    session_id: str = field(default_factory=lambda: secrets.token_hex(8))
    identity: Identity | None = None
    connection_name: str | None = None
    tls_version: str | None = None
    upstream_id: int | None = None

    def __post_init__(self) -> None:
        self._client = PacketSplitter(MAX_AUTH_PACKET, first_seq=1)
        self._upstream = PacketSplitter(self.config.limits.max_message_bytes, first_seq=1)
        self._tls = False
        self._caps = 0  # what the client and the proxy agreed on
        self._up_caps = 0
        self._up_version = ""  # the upstream server's own version
        self._charset = 45
        self._codec = "utf-8"
        self._mode: SqlMode = DEFAULT_MODE
        self._user = ""
        self._attributes: tuple[tuple[str, str], ...] = ()
        self._seq = 0  # the sequence id of the next packet to the client
        self._sha2: auth.CachingSha2Server | None = None
        self._clear = False  # the client answers mysql_clear_password
        self._status = k.SERVER_STATUS_AUTOCOMMIT
        self._queue: deque[Packet] = deque()  # commands that wait for the one in flight
        self._queued_bytes = 0
        self._exchange: _Exchange | None = None
        self._bracket: _Bracket | None = None  # the row guard's bracket in flight
        self._limits: g.Limits | None = None  # the row guard's (production sessions of people)
        # LOCK TABLES may be in effect (START TRANSACTION would release its locks)
        self._tables_locked = False
        self._held: _Held | None = None
        self._prepared: dict[int, _Prepared] = {}
        # SQL-level PREPARE name FROM '...': name (lower case) -> the text it runs (None:
        # prepared from a variable, judged as dynamic SQL when it was prepared)
        self._sql_prepared: dict[str, str | None] = {}
        self._sql_plans: dict[str, MysqlMaskPlan] = {}  # their mask plans, by name
        # The server's warnings are of a statement that read masked data (a masked
        # identity's): SHOW WARNINGS/ERRORS would quote its values, and are refused.
        self._diagnostics_withheld = False
        self._pending_prepare: tuple[str, Verdict, MysqlMaskPlan | None] | None = None
        self.audit: MySQLAudit | None = None
        self._closed_audited = False
        self._first: bytearray | None = bytearray()  # the client's first packet, until read

    # ------------------------------------------------------------------ helpers

    @property
    def connection(self) -> ConnectionConfig | None:
        if self.connection_name is None:
            return None
        conn = self.config.connections.get(self.connection_name)
        return conn if conn is not None and conn.engine == "mysql" else None

    # -- what the console's live sessions show (web/views.live_session_row) --

    engine = "mysql"

    @property
    def environment(self) -> str | None:
        conn = self.connection
        return conn.environment if conn is not None else None

    @property
    def database(self) -> str | None:
        conn = self.connection
        return conn.database if conn is not None else None

    @property
    def tls(self) -> bool:
        return self._tls

    @property
    def txn_status(self) -> str:
        """PostgreSQL's letters, as the console reads them: I idle, T in a transaction."""
        return "T" if self._status & k.SERVER_STATUS_IN_TRANS else "I"

    def _enter(self, state: State) -> None:
        if state not in TRANSITIONS[self.state]:
            raise SessionStateError(f"MySQL session: {self.state.value} -> {state.value} is not allowed")
        self.state = state

    def _packet(self, payload: bytes) -> bytes:
        data, self._seq = encode_packet(payload, self._seq)
        return data

    def _err(self, code: int, sqlstate: str, message: str) -> bytes:
        return self._packet(encode_err(ERR(code, message, sqlstate), self._caps or k.CLIENT_PROTOCOL_41))

    def _fail(self, code: int, sqlstate: str, message: str, **fields: object) -> list[c.Command]:
        """Send the error and end the session."""
        out: list[c.Command] = [
            c.SendClient(self._err(code, sqlstate, message)),
            c.Log(logging.INFO, "session.refused", {"sqlstate": sqlstate, "reason": message, "client": self.client.address, **fields}),
        ]
        return out + self._closing(f"error: {message}")

    def _closing(self, reason: str) -> list[c.Command]:
        out: list[c.Command] = []
        if self.state is not State.CLOSED:
            self._enter(State.CLOSED)
        out += self._audit_end(reason)
        return [*out, c.CloseUpstream(), c.CloseClient()]

    def _audit_end(self, reason: str) -> list[c.Command]:
        if self.audit is None or self._closed_audited:
            return []
        self._closed_audited = True
        out: list[c.Command] = [c.Audit(r) for r in self.audit.rest("outcome unknown: the session ended before the server answered (the statement may have run)")]
        out.append(c.Audit(self.audit.session_event("closed", reason)))
        return out

    # ------------------------------------------------------------------ the entry point

    def greeting(self) -> bytes:
        """The proxy's Handshake v10 (sequence id 0), sent when the client connects."""
        hello = Handshake(
            self.server_version,
            self.proxy_id,
            self.nonce,
            OFFERED,
            45,
            k.SERVER_STATUS_AUTOCOMMIT,
            auth.CACHING_SHA2_PASSWORD,
        )
        data, self._seq = encode_packet(encode_handshake(hello), 0)
        return data

    def handle(self, event: Event) -> list[c.Command]:
        """Feed one event; the commands to carry out, in order."""
        if self.state is State.CLOSED and not isinstance(event, ClientClosed | UpstreamClosed):
            return []
        try:
            match event:
                case ClientData(data=data):
                    return self._on_client_data(data)
                case UpstreamData(data=data):
                    return self._on_upstream_data(data)
                case ClientTLSStarted(version=version):
                    return self._on_tls(version)
                case PasswordVerified(identity=identity):
                    return self._on_password_verified(identity)
                case UpstreamReady():
                    return self._on_upstream_ready(event)
                case UpstreamFailed(code=code, sqlstate=sqlstate, message=message):
                    if self.state is not State.CONNECTING:
                        return []
                    return self._fail(code, sqlstate, message)
                case AuditFailed(message=message):
                    return self._on_audit_failed(message)
                case ApprovalAnswered(approval_id=approval_id, message=message):
                    return self._on_approval(approval_id, message)
                case KillAnswered(error=error):
                    return self._on_kill_answered(error)
                case ClientClosed():
                    return self._on_client_closed()
                case UpstreamClosed():
                    return self._on_upstream_closed()
                case StartupTimedOut():
                    return self._on_startup_timed_out()
                case _:
                    assert_never(event)
        except ProtocolError as err:
            return self._protocol_error(err)

    def _protocol_error(self, err: ProtocolError) -> list[c.Command]:
        if self.state is State.CLOSED:
            return []
        name = type(err).__name__
        if name == "PacketOutOfOrder":
            code = ER_NET_PACKETS_OUT_OF_ORDER
        elif name == "PacketTooLarge":
            code = ER_NET_PACKET_TOO_LARGE
        elif isinstance(err, auth.AuthError):
            code = ER_ACCESS_DENIED
        else:
            code = ER_HANDSHAKE if self.state in (State.GREETED, State.AUTH) else ER_UNKNOWN_COM
        sqlstate = "28000" if isinstance(err, auth.AuthError) else "08S01"
        return self._fail(code, sqlstate, f"dbsentry: {err}")

    # ------------------------------------------------------------------ login

    def _on_client_data(self, data: bytes) -> list[c.Command]:
        state = self.state
        if state is State.GREETED and self._first is not None:
            # The client's first packet: an SSLRequest is followed by the client's TLS
            # handshake at once (without waiting for an answer), so it is cut off here
            # before anything reads those bytes as packets.
            self._first += data
            if len(self._first) < 4:
                return []
            size = 4 + int.from_bytes(self._first[:3], "little")
            if size == 36 and len(self._first) < size:
                return []
            first, self._first = bytes(self._first), None
            ssl_request = self._ssl_request(first)
            if ssl_request is not None:
                return ssl_request
            data = first
        if state in (State.GREETED, State.AUTH):
            # One packet at a time: what follows the last one of the login belongs to what
            # comes after it (a command pipelined behind COM_CHANGE_USER: an attack round
            # had one end the session when the login took several round trips).
            out: list[c.Command] = []
            while True:
                packets = self._client.feed(data, limit=1)
                data = b""
                if not packets:
                    return out
                self._seq = (packets[0].last_seq + 1) & 0xFF
                out += self._on_login_packet(packets[0].payload)
                if self.state in (State.GREETED, State.AUTH):
                    self._client.expect(self._seq)  # the client answers what the proxy sent
                    continue
                if not self._client.pending or self.state is State.CLOSED:
                    return out
                if self.upstream_id is None or self.state is not State.VERIFYING:
                    raise ProtocolError("data after the authentication answer")
                return out + self._on_client_data(b"")  # commands: they wait for the new login
        if state is State.TLS:
            raise ProtocolError("plaintext data during the TLS handshake")
        packets = self._client.feed(data)
        for packet in packets:
            if packet.seq != 0:
                raise ProtocolError(f"a command with sequence id {packet.seq} (commands start at 0)")
            self._queue.append(packet)
            self._queued_bytes += len(packet.payload)
        if self._queued_bytes > self.config.limits.max_message_bytes:
            raise ProtocolError("too many commands sent without waiting for their answers")
        if state in (State.VERIFYING, State.CONNECTING, State.INIT) and self._queue and self.upstream_id is None:
            # (COM_CHANGE_USER keeps the upstream session: what the client pipelined after
            # it waits for the new login, as the server would have it)
            raise ProtocolError("a command before the login completed")
        return self._next_commands()

    def _ssl_request(self, data: bytes) -> list[c.Command] | None:
        """An SSLRequest first: TLS starts, and the bytes after it (the client's TLS
        handshake, sent without waiting) belong to TLS, not to the packet stream."""
        if len(data) < 36 or data[:4] != b"\x20\x00\x00\x01" or not data[5] & (k.CLIENT_SSL >> 8):
            return None
        msg = decode_client_handshake(data[4:36])
        if not isinstance(msg, SSLRequest):
            return None
        self._caps = msg.capabilities & OFFERED
        self._seq = 2
        self._client.expect(2)
        self._enter(State.TLS)
        return [c.StartClientTLS(data[36:])]

    def _on_login_packet(self, payload: bytes) -> list[c.Command]:
        if self.state is State.AUTH:
            return self._on_auth_data(payload)
        msg = decode_client_handshake(payload)
        if isinstance(msg, SSLRequest):
            if self._tls:
                raise ProtocolError("a second SSLRequest")
            self._caps = msg.capabilities & OFFERED
            self._enter(State.TLS)
            return [c.StartClientTLS(self._client.take_pending())]
        return self._on_handshake_response(msg)

    def _on_tls(self, version: str | None) -> list[c.Command]:
        if self.state is not State.TLS:
            return []
        self._tls = True
        self.tls_version = version or "TLS"
        self._enter(State.GREETED)
        return []

    def _on_handshake_response(self, msg: HandshakeResponse) -> list[c.Command]:
        self._caps = msg.capabilities & (OFFERED | k.CLIENT_SSL)
        self._user = msg.user
        self.connection_name = msg.database or None
        self._attributes = msg.attributes
        self._charset = msg.charset
        cs = charset_of(msg.charset)
        if cs is None or cs.codec is None or not cs.client_ok or not cs.backslash_safe:
            name = cs.name if cs is not None else str(msg.charset)
            return self._fail(ER_HANDSHAKE, "08004", f"dbsentry: character set {name} is not supported for statements; use utf8mb4")
        self._codec = cs.codec
        if msg.capabilities & k.CLIENT_COMPRESS:
            self._caps &= ~k.CLIENT_COMPRESS  # never offered: the client goes on without it
        if self.config.tls.require_client_tls and not self._tls:
            return self._fail(
                ER_SECURE_TRANSPORT_REQUIRED,
                "08004",
                "dbsentry: TLS is required (tls.require_client_tls): connect with TLS (mariadb/mysql --ssl, ssl=True); "
                "the password is a dbsentry token and never crosses the network in plaintext",
                user=msg.user,
            )
        plugin = msg.auth_plugin_name
        if plugin == auth.CLEAR_PASSWORD and self._tls:
            return self._verify(auth.read_clear_password(msg.auth_response))
        if plugin == auth.CACHING_SHA2_PASSWORD:
            return self._sha2_start(msg.auth_response)
        # Any other plugin (mysql_native_password, client_ed25519, none): switch, so that
        # the token itself arrives (a scramble of it cannot be checked).
        self._enter(State.AUTH)
        self._sha2 = None
        switch = AuthSwitchRequest(auth.CACHING_SHA2_PASSWORD, self.nonce + b"\x00")
        return [c.SendClient(self._packet(encode_auth_switch_request(switch)))]

    def _sha2_start(self, scramble: bytes) -> list[c.Command]:
        self._sha2 = auth.CachingSha2Server(self.nonce, secure=self._tls, private_key=self.rsa_key)
        more = self._sha2.start(scramble)
        if more is None:
            return self._fail(
                ER_ACCESS_DENIED, "28000", f"dbsentry: access denied for user '{self._user}': the password must be a dbsentry token"
            )
        if self.state is not State.AUTH:
            self._enter(State.AUTH)
        return [c.SendClient(self._packet(more))]

    def _on_auth_data(self, payload: bytes) -> list[c.Command]:
        if self._sha2 is None:
            # the answer to the auth switch: caching_sha2_password's scramble
            return self._sha2_start(payload)
        reply, password = self._sha2.client_data(payload)
        if password is not None:
            return self._verify(password)
        assert reply is not None
        return [c.SendClient(self._packet(reply))]

    def _verify(self, password: str) -> list[c.Command]:
        if not password:
            return self._fail(
                ER_ACCESS_DENIED, "28000", f"dbsentry: access denied for user '{self._user}': the password must be a dbsentry token"
            )
        self._enter(State.VERIFYING)
        self._client.max_payload = self.config.limits.max_message_bytes
        self._client.commands = True
        self._client.expect(0)
        return [c.VerifyPassword(self._user, password)]

    def _on_password_verified(self, identity: Identity | LoginThrottled | None) -> list[c.Command]:
        if self.state is not State.VERIFYING:
            return []
        user = self._user
        if isinstance(identity, ControlPlaneUnavailable):
            return self._fail(ER_SERVER_SHUTDOWN, "08S01", identity.message, user=user)
        if isinstance(identity, LoginThrottled):
            return self._fail(ER_ACCESS_DENIED, "28000", f"dbsentry: {identity.message}", user=user)
        if identity is None:
            return self._fail(
                ER_ACCESS_DENIED,
                "28000",
                f"dbsentry: access denied for user '{user}': the password must be a valid dbsentry token (or OIDC token) for it",
                user=user,
            )
        self.identity = identity
        effective = self.grants.effective_identity(identity) if self.grants is not None else identity

        def may_use(name: str, conn: ConnectionConfig) -> bool:
            return (
                conn.allow_groups is None
                or bool(effective.groups & set(conn.allow_groups))
                or (self.grants is not None and self.grants.connection_granted(identity.name, name))
            )

        conn = self.connection
        if self.connection_name is None:
            # No database: a control session, without upstream, for KILL (the mariadb
            # client's Ctrl-C connects so to kill the running statement).
            self._enter(State.READY)
            return [
                c.LoginComplete(),
                c.Log(logging.INFO, "session.control", {"identity": identity.name, "engine": "mysql"}),
                c.SendClient(self._packet(encode_ok(OK(0, 0, self._status, 0), self._caps))),
                *self._next_commands(),
            ]
        if conn is None:
            usable = [n for n, known in sorted(self.config.connections.items()) if known.engine == "mysql" and may_use(n, known)]
            return self._fail(
                ER_BAD_DB,
                "42000",
                f"dbsentry: connection '{self.connection_name}' does not exist; the database name picks the connection (mariadb -D <name>); "
                + (f"connections you can use: {', '.join(usable)}" if usable else "no connection is open to you"),
                user=user,
            )
        assert self.connection_name is not None
        if not may_use(self.connection_name, conn):
            return self._fail(
                ER_DBACCESS_DENIED,
                "42000",
                f"dbsentry: identity '{identity.name}' is not allowed to use connection '{self.connection_name}'",
                user=user,
            )
        if self.upstream_id is not None:
            return self._changed_user()  # COM_CHANGE_USER: the upstream session exists
        self._enter(State.CONNECTING)
        attrs = tuple((k_, v) for k_, v in self._attributes if not k_.startswith("_dbsentry"))
        attrs += (("_dbsentry_identity", identity.name), ("_dbsentry_session", self.session_id))
        return [
            c.Log(logging.INFO, "session.authenticated", {"identity": identity.name, "kind": identity.kind, "connection": self.connection_name, "engine": "mysql"}),
            c.OpenUpstream(self.connection_name, self._caps & ~k.CLIENT_SSL, self._charset, attrs),
        ]

    def _on_upstream_ready(self, ready: UpstreamReady) -> list[c.Command]:
        if self.state is not State.CONNECTING:
            return []
        self.upstream_id = ready.connection_id
        self._up_version = ready.server_version
        self._up_caps = ready.capabilities
        self._status = ready.status
        self._enter(State.INIT)
        return self._read_settings()

    def _read_settings(self) -> list[c.Command]:
        """Ask the server for the session's sql_mode and character set (not forwarded).
        An agent on a production connection gets read-only transactions from the server
        first (defence in depth: its statements are judged read-only by their facts, and
        the baseline refuses switching back to read-write)."""
        if self._agent_read_only():
            self._exchange = _Exchange("internal", ResultReader(self._up_caps), sql="read-only")
            self._upstream.expect(1)
            return [c.SendUpstream(encode_packet(_READ_ONLY, 0)[0])]
        self._exchange = _Exchange("internal", ResultReader(self._up_caps))
        self._upstream.expect(1)
        return [c.SendUpstream(encode_packet(_MODE_QUERY, 0)[0])]

    def _agent_read_only(self) -> bool:
        conn = self.connection
        return (
            self.identity is not None
            and self.identity.is_agent
            and conn is not None
            and self.governor is not None
            and conn.environment in self.governor.policy.production_environments
        )

    def _settings_read(self, row: TextRow | None) -> list[c.Command]:
        if row is None or len(row.values) != 2 or row.values[0] is None or row.values[1] is None:
            raise ProtocolError("the server did not tell its sql_mode and character set")
        self._mode = SqlMode.parse(row.values[0].decode("ascii", "replace"))
        name = row.values[1].decode("ascii", "replace")
        codec = _CODECS.get(name)
        if codec is None:
            # An unknown or quote-hiding character set: nothing more is analysed.
            self._codec = ""
        else:
            self._codec = codec
        out: list[c.Command] = []
        if self.state is State.INIT:
            out = self._logged_in()
        return out

    def _logged_in(self) -> list[c.Command]:
        conn = self.connection
        assert conn is not None and self.identity is not None and self.connection_name is not None
        self._enter(State.READY)
        self._limits = self._guard_limits()
        out: list[c.Command] = [c.LoginComplete()]
        if self.audit_config is not None and self.governor is not None:
            self.audit = MySQLAudit(
                self.audit_config,
                self.session_id,
                self.identity,
                self.connection_name,
                conn.environment,
                conn.database,
                self.client.address,
                self.tls_version,
                dict(self._attributes).get("program_name"),
                self.redactor,
            )
            out.append(c.Audit(self.audit.session_event("opened")))
        ok = OK(0, 0, self._status, 0)
        out.append(c.SendClient(self._packet(encode_ok(ok, self._caps))))
        out.append(c.Log(logging.INFO, "session.ready", {"connection": self.connection_name, "upstream_id": self.upstream_id}))
        return out + self._next_commands()

    # ------------------------------------------------------------------ commands

    def _next_commands(self) -> list[c.Command]:
        out: list[c.Command] = []
        while self.state is State.READY and self._queue:
            packet = self._queue.popleft()
            self._queued_bytes -= len(packet.payload)
            self._seq = (packet.last_seq + 1) & 0xFF
            out += self._command(packet.payload)
        return out

    def _command(self, payload: bytes) -> list[c.Command]:
        if self.audit is not None:
            self.audit.attributes = ()
        try:
            cmd = w.decode_command(payload, self._caps)
        except w.MalformedAttributes as err:
            # the packet is whole: this command is refused, the session goes on
            return [
                c.Log(logging.WARNING, "statement.refused", {"reason": str(err), "engine": "mysql"}),
                *self._reply_error(ER_MALFORMED_PACKET, "HY000", f"dbsentry: {err}"),
            ]
        if self.connection is None:
            return self._control_command(payload, cmd)
        match cmd:
            case w.Query(sql=raw, attributes=attributes, parameter_set_count=sets):
                if sets != 1:
                    return self._reply_error(
                        ER_MALFORMED_PACKET, "HY000", f"dbsentry: COM_QUERY: parameter set count {sets} (only 1 is defined)"
                    )
                if self._caps & k.CLIENT_QUERY_ATTRIBUTES and not self._up_caps & k.CLIENT_QUERY_ATTRIBUTES:
                    payload = w.encode_command(w.Query(raw), self._up_caps)  # the server does not read them
                self._audit_attributes(attributes)
                return self._query(payload, raw)
            case w.StmtPrepare(sql=raw):
                return self._prepare(payload, raw)
            case w.StmtExecuteHead(statement_id=sid):
                return self._execute(payload, sid)
            case w.StmtSendLongData(statement_id=sid, param_id=pid, data=data):
                stmt = self._prepared.get(sid)
                if stmt is not None:
                    kept = stmt.long_data.setdefault(pid, bytearray())
                    kept += data[: max(0, LONG_DATA_KEPT - len(kept))]
                return [c.SendUpstream(encode_packet(payload, 0)[0])]  # no answer
            case w.StmtClose(statement_id=sid):
                self._prepared.pop(sid, None)
                return [c.SendUpstream(encode_packet(payload, 0)[0])]  # no answer
            case w.StmtReset(statement_id=sid):
                stmt = self._prepared.get(sid)
                if stmt is not None:
                    stmt.long_data.clear()
                    stmt.cursor = None
                return self._forward(payload, _Exchange("simple"))
            case w.StmtFetch(statement_id=sid):
                stmt = self._prepared.get(sid)
                if stmt is None or stmt.cursor is None:
                    return self._forward(payload, _Exchange("simple"))  # the server answers the error
                reader = ResultReader(self._up_caps, cursor=True, columns=stmt.cursor, decode_rows=False)
                fetch = _Exchange("fetch", reader, statement=stmt)
                if self._masked():
                    mask = self._result_masking((stmt.plan or DETECT_ALL,), ("SELECT",))
                    if mask is None:
                        return self._reply_error(ER_TABLEACCESS_DENIED, "42501", self._no_catalog_message())
                    fetch.mask = mask
                return self._forward(payload, fetch)
            case w.Ping() | w.SetOption():
                return self._forward(payload, _Exchange("simple"))
            case w.Statistics():
                return self._forward(payload, _Exchange("statistics"))
            case w.FieldList():
                return self._forward(payload, _Exchange("fields"))
            case w.ResetConnection():
                self._tables_locked = False
                self._prepared.clear()
                self._sql_prepared = {}
                self._sql_plans = {}
                return self._forward(payload, _Exchange("simple", refresh=True))
            case w.InitDB(schema=schema):
                return self._init_db(schema)
            case w.Quit():
                return self._closing("client_terminate")
            case w.ProcessKill(connection_id=target):
                return self._kill(payload, f"KILL {target}", target, False)
            case w.ChangeUser():
                return self._change_user(cmd)
            case w.Debug() | w.StmtExecute() | w.OtherCommand():
                code = payload[0]
                try:
                    name = "COM_" + k.Command(code).name
                except ValueError:
                    name = f"command 0x{code:02x}"
                return self._reply_error(ER_UNKNOWN_COM, "08S01", f"dbsentry: {name} is not allowed through the proxy")
            case _:
                assert_never(cmd)

    def _control_command(self, payload: bytes, cmd: w.AnyCommand) -> list[c.Command]:
        """A session without a connection answers KILL, PING and QUIT only."""
        if isinstance(cmd, w.Quit):
            return self._closing("client_terminate")
        if isinstance(cmd, w.Ping):
            return [c.SendClient(self._packet(encode_ok(OK(0, 0, self._status, 0), self._caps)))]
        if isinstance(cmd, w.ProcessKill):
            return self._kill(payload, f"KILL {cmd.connection_id}", cmd.connection_id, False)
        if isinstance(cmd, w.Query):
            sql = self._decode_text(cmd.sql)
            kill = _kill_target(sql) if sql is not None else None
            if sql is not None and kill is not None:
                return self._kill(payload, sql, kill[0], kill[1])
            if sql is not None and _SESSION_SETUP.match(sql):
                # what drivers send at connect (SET NAMES utf8mb4, SET autocommit=0): no
                # upstream here, nothing to set
                return [c.SendClient(self._packet(encode_ok(OK(0, 0, self._status, 0), self._caps)))]
        usable = ", ".join(sorted(n for n, known in self.config.connections.items() if known.engine == "mysql"))
        return self._reply_error(
            ER_NO_DB,
            "3D000",
            "dbsentry: no connection chosen: the database name picks the connection (mariadb -D <name>); "
            f"without one only KILL works (connections: {usable or 'none'})",
        )

    def _reply_error(self, code: int, sqlstate: str, message: str) -> list[c.Command]:
        """Answer the current command with an error; the session stays usable."""
        return [c.SendClient(self._err(code, sqlstate, message))]

    def _forward(self, payload: bytes, exchange: _Exchange) -> list[c.Command]:
        self._exchange = exchange
        self._enter(State.BUSY)
        self._upstream.expect(1)
        bracket = exchange.guard
        if bracket is not None:
            # the row guard's bracket first; the statement when its turn comes
            self._bracket = bracket
            bracket.held = [payload]
            return self._bracket_send(g.info_sql(bracket.written).encode())
        return [c.SendUpstream(encode_packet(payload, 0)[0])]

    def _decode_text(self, raw: bytes) -> str | None:
        if not self._codec:
            return None
        try:
            return raw.decode(self._codec)
        except UnicodeDecodeError:
            return None

    def _check(self, sql: str) -> Verdict | None:
        conn = self.connection
        assert conn is not None and self.identity is not None and self.connection_name is not None
        if self.governor is None:
            return None
        return self.governor.check(sql, self.identity, self.connection_name, conn.environment, self._mode)

    def _refusal(self, verdict: Verdict, sql: str) -> str | None:
        """Why a statement the policy allows still does not run here; None: it runs."""
        conn = self.connection
        assert conn is not None
        for facts in verdict.facts:
            if facts.command == "USE":
                target = _use_target(sql, facts)
                if target != conn.database:
                    return (
                        f"dbsentry: one connection per session: USE {target} is refused "
                        f"(connect with the connection's name as the database to use another)"
                    )
        return None

    def _judge_executes(self, verdict: Verdict) -> tuple[Verdict, dict[str, str | None] | None] | str:
        """``EXECUTE name`` judged by what ``PREPARE name`` gave it to run, as the policy
        rules now (an approval or a policy that allowed the PREPARE does not let later
        EXECUTEs run what it would refuse); with the prepared names the string leaves. A
        string: why it is refused."""
        commands = {f.command for f in verdict.facts}
        if not commands & {"PREPARE", "EXECUTE", "DEALLOCATE"}:
            return verdict, None
        known = dict(self._sql_prepared)
        decisions = list(verdict.decisions)
        for i, facts in enumerate(verdict.facts):
            name = (facts.prepared_name or "").lower()
            if not name:
                continue
            if not (facts.prepared_name or "").isascii():
                # MariaDB folds a name's case by its own tables (small and capital sigma, the micro sign and capital mu are one
                # name, the Kelvin sign is not k), Python by Unicode's: a name the two could
                # read apart is refused (an attack round ran a CALL past the row guard by an
                # EXECUTE the proxy judged as the SELECT it thought the name held).
                return f"dbsentry: prepared statement name {facts.prepared_name!r}: only ASCII names are supported"
            if facts.command == "PREPARE":
                known[name] = facts.inner.text if facts.inner is not None and facts.inner.text else None
            elif facts.command == "DEALLOCATE":
                known.pop(name, None)
            elif facts.command == "EXECUTE":
                if name not in known:
                    return f"dbsentry: EXECUTE {facts.prepared_name}: no statement of that name was prepared through dbsentry in this session"
                text = known[name]
                inner = self._check(text) if text is not None else None
                if inner is not None:
                    if inner.decision.action == "require_approval":
                        return (
                            f"dbsentry: EXECUTE {facts.prepared_name} runs a statement that needs approval "
                            f"({', '.join(inner.decision.rules)}): send that statement itself to request it"
                        )
                    decisions[i] = combine((decisions[i], inner.decision))
        if decisions != list(verdict.decisions):
            verdict = replace(verdict, decisions=tuple(decisions), decision=combine(decisions))
        return verdict, known

    def _denied(self, verdict: Verdict, sql: str, params: tuple[str | None, ...] | None = None) -> list[c.Command]:
        decision = verdict.decision
        if verdict.syntax_error and verdict.parse_error is not None:
            # (the neutral refusal's text speaks of PostgreSQL's parser)
            rules = ", ".join(decision.rules)
            message = f"dbsentry: statement rejected: it is not valid MySQL ({verdict.parse_error}) (rule: {rules})"
        else:
            message = denial_message(decision)
            if verdict.parse_error is not None and verdict.parse_error not in message:
                message = f"{message}: {verdict.parse_error}"
        out: list[c.Command] = []
        if self.audit is not None:
            facts = verdict.facts[0] if verdict.facts else None
            out.append(c.Audit(self.audit.statement(sql, facts, decision, params)))
        out.append(
            c.Log(
                logging.WARNING,
                "statement.denied",
                {"identity": self.identity.name if self.identity else None, "connection": self.connection_name, "engine": "mysql",
                 "action": decision.action, "rules": list(decision.rules), "statement": sql[:200]},
            )
        )
        code = ER_PARSE if verdict.syntax_error else ER_SPECIFIC_ACCESS_DENIED
        return out + self._reply_error(code, "42000", message)

    def _refused(self, sql: str, message: str, verdict: Verdict | None = None, rule: str = "dbsentry.mysql") -> list[c.Command]:
        out: list[c.Command] = []
        if self.audit is not None:
            decision = Decision("deny", (rule,), message)
            facts = verdict.facts[0] if verdict is not None and verdict.facts else None
            out.append(c.Audit(self.audit.statement(sql, facts, decision)))
        out.append(c.Log(logging.WARNING, "statement.refused", {"reason": message, "engine": "mysql"}))
        return out + self._reply_error(ER_SPECIFIC_ACCESS_DENIED, "42000", message)

    def _govern(
        self,
        packet: bytes,
        sql: str,
        verdict: Verdict | None,
        exchange: _Exchange,
        params: tuple[str | None, ...] | None = None,
        prepared: _Prepared | None = None,
    ) -> list[c.Command]:
        """Audit and forward (or refuse, or ask for approval) one statement command.
        ``prepared``: the statement COM_STMT_EXECUTE runs (its PREPARE's mask plan)."""
        if verdict is not None:
            refusal = self._refusal(verdict, sql)
            if refusal is not None:
                return self._refused(sql, refusal, verdict)
            judged = self._judge_executes(verdict)
            if isinstance(judged, str):
                return self._refused(sql, judged, verdict)
            verdict, exchange.prepared_names = judged
            approval = verdict.decision.action == "require_approval" and bool(verdict.facts) and self.approvals
            if not verdict.decision.allowed and not approval:
                return self._denied(verdict, sql, params)
            if self.masking is not None and _writes_masked(sql, verdict, params, self._mode):
                write_back = Refusal("42501", f"dbsentry: writing a masked value back is refused ({writeback.RULE})", writeback.RULE)
                return self._mask_refused(sql, write_back, verdict, params)
            masked = self._mask_exchange(sql, verdict, exchange, prepared)
            if masked is not None:
                return self._mask_refused(sql, masked, verdict, params)
            exchange.inherit = self._inheritance(sql, verdict, prepared is not None)
            exchange.refresh = any(f.settings or f.command in ("SET", "CALL") for f in verdict.facts)
            exchange.ddl = any("DDL" in f.classes for f in verdict.facts)  # also once approved
            if verdict.decision.allowed:
                # (an approval, once given, covers the statement: it runs unguarded)
                bracket = self._guard_for(sql, verdict, params, prepared is not None)
                if isinstance(bracket, str):
                    return self._refused(sql, bracket, verdict, rule=g.RULE_ROWS)
                exchange.guard = bracket
            if not verdict.decision.allowed:
                return self._ask_approval(packet, sql, verdict, exchange, params)
        elif self._masked():
            # no policy (passthrough): nothing judged, but masking still holds
            mask = self._result_masking((DETECT_ALL,), ())
            if mask is None:
                return self._reply_error(ER_TABLEACCESS_DENIED, "42501", self._no_catalog_message())
            exchange.mask = mask
        return self._audited_forward(packet, sql, verdict, exchange, params)

    # ------------------------------------------------------------------ masking

    def _masked(self) -> bool:
        """Whether the identity's results are masked now (masking on, and none of its
        groups, with live grants, in ``masking.exempt_groups``)."""
        if self.masking is None or self.identity is None:
            return False
        identity = self.grants.effective_identity(self.identity) if self.grants is not None else self.identity
        return not identity.groups & self.masking.exempt_groups

    def _production(self) -> bool:
        conn = self.connection
        return conn is not None and self.governor is not None and conn.environment in self.governor.policy.production_environments

    def _no_catalog_message(self) -> str:
        return (
            f"dbsentry: the schema of connection '{self.connection_name}' has not been read, so masking cannot be"
            " guaranteed: the statement was not run"
        )

    def _plan_text(
        self, sql: str, facts: Sequence[StatementFacts] | None, verdict: Verdict | None
    ) -> tuple[MysqlMaskPlan, ...] | Refusal:
        """The mask plan of each statement of ``sql`` for this (masked) identity, or why
        it may not run."""
        return _first_refusal(self._plans_or_refusals(sql, facts, verdict))

    def _plans_or_refusals(
        self, sql: str, facts: Sequence[StatementFacts] | None, verdict: Verdict | None
    ) -> tuple[MysqlMaskPlan | Refusal, ...]:
        """``plan_for`` with the session's catalog, database, ``sql_mode`` and the
        identity's predicates mode and strategies."""
        assert self.masking is not None and self.identity is not None and self.connection_name is not None
        conn = self.connection
        assert conn is not None
        view = self.masking.current(self.connection_name)
        if view is None:
            return (Refusal("42501", self._no_catalog_message(), "masking.catalog"),)
        identity = self.grants.effective_identity(self.identity) if self.grants is not None else self.identity
        mode = self.masking.config.predicates.mode_for(identity.kind, identity.groups, conn.environment, self._production())
        decision = verdict.decision if verdict is not None else _NO_VERDICT.decision
        return plan_for(
            sql,
            view.catalog,
            view.classmap,
            settings=settings_for(self.masking.settings, decision),
            predicates=mode,
            database=conn.database,
            mode=self._mode,
            facts=facts,
        )

    def _result_masking(
        self, plans: tuple[MysqlMaskPlan, ...], commands: tuple[str, ...], decision: Decision = ALLOWED
    ) -> ResultMasking | None:
        assert self.masking is not None and self.connection_name is not None
        view = self.masking.current(self.connection_name)
        if view is None:
            return None
        return ResultMasking(
            plans,
            commands,
            view.classmap,
            settings_for(self.masking.settings, decision),
            self.masking.key,
            self.masking.safety_net_for(self._production()),
        )

    def _mask_exchange(self, sql: str, verdict: Verdict, exchange: _Exchange, prepared: _Prepared | None) -> Refusal | None:
        """Plan the masking of the command's results (a masked identity); a refusal when a
        statement may not run for it."""
        if not self._masked():
            return None
        if prepared is not None:
            # COM_STMT_EXECUTE: its PREPARE's plan (made now if it was prepared while the
            # identity was exempt)
            plan = prepared.plan
            if plan is None:
                planned = self._plan_text(prepared.sql, verdict.facts, verdict)
                if isinstance(planned, Refusal):
                    return planned
                plan = prepared.plan = planned[0] if len(planned) == 1 else DETECT_ALL
            plans: tuple[MysqlMaskPlan, ...] = (plan,)
        else:
            raw = self._plans_or_refusals(sql, verdict.facts, verdict)
            if len(raw) != len(verdict.facts):
                refused = _first_refusal(raw)
                if isinstance(refused, Refusal):
                    return refused
                raw = tuple(DETECT_ALL for _ in verdict.facts)
            # EXECUTE s: the plan of PREPARE s (before its own fallback may refuse)
            named = _first_refusal(self._sql_level_plans(raw, verdict, exchange))
            if isinstance(named, Refusal):
                return named
            plans = named
        commands = tuple(f.command for f in verdict.facts) if prepared is None else ("SELECT",)
        mask = self._result_masking(plans, commands, verdict.decision)
        if mask is None:
            return Refusal("42501", self._no_catalog_message(), "masking.catalog")
        # The server's warnings quote the values a statement read ("Truncated incorrect
        # INTEGER value: 'Ada Lovelace'"): after one that read masked data they are not shown.
        # (COM_STMT_EXECUTE of a prepared SHOW WARNINGS too: its text is the PREPARE's)
        texts = (prepared.sql,) if prepared is not None else tuple(f.text or sql for f in verdict.facts)
        if self._diagnostics_withheld and any(_reads_diagnostics(t) for t in texts):
            return Refusal(
                "42501",
                "dbsentry: the warnings of the previous statement are withheld: it read masked data",
                "masking.diagnostics",
            )
        touched = _touches(verdict.facts, mask.classmap)
        mask.withhold_errors = touched
        # The server resets its warnings at each statement that uses a table (not at
        # SELECT 1, not at SHOW WARNINGS): so does this.
        uses_tables = any(f.tables_read or f.tables_written for f in verdict.facts)
        sensitive = touched or any(p.reads_sensitive or p.active for p in plans) or not plans
        self._diagnostics_withheld = sensitive or (self._diagnostics_withheld and not uses_tables)
        exchange.mask = mask
        return None

    def _inheritance(self, sql: str, verdict: Verdict, prepared: bool) -> Inheritance | None:
        """What the statements of ``sql`` copy from classified columns (any identity:
        exempt ones may copy into other tables, masked ones within a table): the columns
        they store the values in inherit the class once the statement succeeded.  SQL
        ``EXECUTE s`` copies what the text of ``PREPARE s`` does."""
        if (
            self.masking is None
            or self.connection_name is None
            or not any(_may_copy(f, sql) for f in verdict.facts)
        ):
            return None
        view = self.masking.current(self.connection_name)
        if view is None or not view.classmap.columns:
            return None
        conn = self.connection
        database = conn.database if conn is not None else None

        def copies(text: str) -> list[Mapping[SourceColumn, Classification]]:
            found = copies_of(text, view.catalog, view.classmap, database, self._mode)
            return [f or {} for f in found or ()]

        out = copies(sql)
        if len(out) != len(verdict.facts):
            out = [{} for _ in verdict.facts]
        known = dict(self._sql_prepared)
        for i, f in enumerate(verdict.facts):
            name = (f.prepared_name or "").lower()
            if not name or prepared:
                continue
            if f.command == "PREPARE":
                known[name] = f.inner.text if f.inner is not None and f.inner.text else None
            elif f.command == "DEALLOCATE":
                known.pop(name, None)
            elif f.command == "EXECUTE" and known.get(name):
                inner = copies(known[name] or "")
                out[i] = inner[0] if len(inner) == 1 else {}
        if not any(out):
            return None
        commands = ("EXECUTE",) if prepared else tuple(f.command for f in verdict.facts)
        return Inheritance(tuple(out), commands)

    def _inherited(self, copies: Mapping[SourceColumn, Classification]) -> list[c.Command]:
        if not copies or self.connection_name is None:
            return []
        return [c.InheritClasses(self.connection_name, dict(copies))]

    def _client_error(self, ex: _Exchange, payload: bytes, err: ERR) -> bytes:
        """The server's error as a masked identity may see it. Errors quote values (a
        duplicate key, a failed conversion): when the statement read masked data the text is
        withheld whole (its code and SQLSTATE stay); otherwise what the value detectors find
        in it is masked in place."""
        mask = ex.mask
        if mask is None:
            return payload
        if mask.withhold_errors or not mask.plans or any(p.reads_sensitive or p.active for p in mask.plans):
            message = f"dbsentry: the server's message (error {err.code}) was withheld because the statement reads masked data"
        else:
            scanned = scan_text(err.message, dict(DEFAULT_STRATEGIES), mask.key)
            message = scanned if scanned is not None else f"dbsentry: the server's message (error {err.code}) was withheld"
        if message == err.message:
            return payload
        return encode_err(ERR(err.code, message, err.sqlstate), self._caps or k.CLIENT_PROTOCOL_41)

    def _sql_level_plans(
        self, plans: tuple[MysqlMaskPlan | Refusal, ...], verdict: Verdict, exchange: _Exchange
    ) -> tuple[MysqlMaskPlan | Refusal, ...]:
        """SQL ``PREPARE s FROM '...'`` plans the text it prepares (a refusal refuses the
        whole string); ``EXECUTE s`` gets that plan."""
        if not {f.command for f in verdict.facts} & {"PREPARE", "EXECUTE", "DEALLOCATE"}:
            return plans
        known = dict(self._sql_plans)
        out = list(plans)
        for i, facts in enumerate(verdict.facts):
            name = (facts.prepared_name or "").lower()
            if not name:
                continue
            if facts.command == "PREPARE":
                known.pop(name, None)
                text = facts.inner.text if facts.inner is not None else None
                if text:
                    inner = self._plan_text(text, None, verdict)
                    if isinstance(inner, Refusal):
                        return (inner,)
                    known[name] = inner[0] if len(inner) == 1 else DETECT_ALL
            elif facts.command == "DEALLOCATE":
                known.pop(name, None)
            elif facts.command == "EXECUTE":
                found = known.get(name)
                if found is not None:
                    out[i] = found
        exchange.sql_plans = known
        return tuple(out)

    def _mask_refused(
        self, sql: str, refusal: Refusal, verdict: Verdict | None, params: tuple[str | None, ...] | None = None
    ) -> list[c.Command]:
        """A statement masking refuses: ERR 1142 with the refusal's SQLSTATE and words,
        audited as denied by its rule."""
        out: list[c.Command] = []
        if self.audit is not None:
            decision = Decision("deny", (refusal.rule,), refusal.message)
            facts = verdict.facts[0] if verdict is not None and verdict.facts else None
            out.append(c.Audit(self.audit.statement(sql, facts, decision, params)))
        out.append(
            c.Log(
                logging.WARNING,
                "statement.denied",
                {"identity": self.identity.name if self.identity else None, "connection": self.connection_name, "engine": "mysql",
                 "action": "deny", "rules": [refusal.rule], "statement": sql[:200]},
            )
        )
        return out + self._reply_error(ER_TABLEACCESS_DENIED, refusal.sqlstate, refusal.message)

    def _audited_forward(
        self,
        packet: bytes,
        sql: str,
        verdict: Verdict | None,
        exchange: _Exchange,
        params: tuple[str | None, ...] | None = None,
        approval_id: str | None = None,
    ) -> list[c.Command]:
        prepared_before = self._sql_prepared
        if exchange.prepared_names is not None:
            self._sql_prepared = exchange.prepared_names  # what PREPARE/DEALLOCATE leave
            if verdict is not None:
                exchange.unsure_names = frozenset(
                    f.prepared_name.lower() for f in verdict.facts[1:] if f.command == "PREPARE" and f.prepared_name
                )
        if exchange.sql_plans is not None:
            self._sql_plans = exchange.sql_plans
        if verdict is not None:
            for f in verdict.facts:
                if f.command == "LOCK TABLE":
                    self._tables_locked = True
                elif f.command in ("UNLOCK TABLES", "START TRANSACTION", "BEGIN"):
                    self._tables_locked = False
        audit = self.audit
        if audit is None or verdict is None:
            return self._forward(packet, exchange)
        records: list[Record] = []
        durable = False
        mask = exchange.mask
        for i, (facts, decision) in enumerate(zip(verdict.facts, verdict.decisions, strict=True)):
            text = facts.text or sql
            masks = mask.plans[i] if mask is not None and i < len(mask.plans) else None
            rec = audit.statement(
                text if len(verdict.facts) > 1 else sql, facts, decision, params, approval_id=approval_id, masks=masks
            )
            records.append(rec)
            durable = durable or changes_data(facts.command, facts.classes, facts.flags)
        forward = self._forward(packet, exchange)
        if exchange.kind != "prepare":  # a PREPARE has no rows nor effect: its records are complete as written
            calls = self._calls(verdict, prepared_before)
            for record, call in zip(records, calls, strict=True):
                if isinstance(record, StatementRecord):
                    audit.expect(record, calls=call)
        if not audit.wait:
            return [*(c.Audit(r) for r in records), *forward]
        return [c.AuditGate(records, forward, durable=durable)]

    def _query(self, packet: bytes, raw: bytes) -> list[c.Command]:
        sql = self._decode_text(raw)
        if sql is None:
            return self._refused("<undecodable statement>", f"dbsentry: the statement is not valid {self._codec or 'text in a supported character set'}: it was not run")
        if len(raw) > self.config.limits.max_statement_bytes:
            return self._refused(sql[:1000], f"dbsentry: statement of {len(raw)} bytes exceeds limits.max_statement_bytes")
        kill = _kill_target(sql)
        if kill is not None:
            return self._kill(packet, sql, kill[0], kill[1])
        verdict = self._check(sql)
        return self._govern(packet, sql, verdict, _Exchange("result", ResultReader(self._up_caps, decode_rows=False), sql=sql))

    def _prepare(self, packet: bytes, raw: bytes) -> list[c.Command]:
        sql = self._decode_text(raw)
        if sql is None:
            return self._refused("<undecodable statement>", "dbsentry: the statement is not valid text in the connection's character set")
        if len(raw) > self.config.limits.max_statement_bytes:
            return self._refused(sql[:1000], f"dbsentry: statement of {len(raw)} bytes exceeds limits.max_statement_bytes")
        verdict = self._check(sql)
        if verdict is not None:
            refusal = self._refusal(verdict, sql)
            if refusal is not None:
                return self._refused(sql, refusal, verdict)
            if not verdict.decision.allowed and verdict.decision.action != "require_approval":
                return self._denied(verdict, sql)
            if len(verdict.facts) != 1:
                return self._refused(sql, "dbsentry: a prepared statement holds exactly one statement")
        plan: MysqlMaskPlan | None = None
        if self._masked():
            planned = self._plan_text(sql, verdict.facts if verdict is not None else None, verdict)
            if isinstance(planned, Refusal):
                return self._mask_refused(sql, planned, verdict)
            plan = planned[0] if len(planned) == 1 else DETECT_ALL
        # Audited when it is executed, with its parameters (require_approval: then too).
        exchange = _Exchange("prepare", PrepareReader(self._up_caps), sql=sql)
        self._pending_prepare = (sql, verdict if verdict is not None else _NO_VERDICT, plan)
        return self._forward(packet, exchange)

    def _execute(self, packet: bytes, sid: int) -> list[c.Command]:
        stmt = self._prepared.get(sid)
        if stmt is None:
            return self._reply_error(ER_UNKNOWN_STMT, "HY000", f"dbsentry: unknown prepared statement handler ({sid}) given to COM_STMT_EXECUTE")
        try:
            execute = w.decode_stmt_execute(
                packet, self._caps, stmt.num_params, stmt.types, frozenset(stmt.long_data), stmt.names
            )
        except (ProtocolError, ValueError) as err:
            return self._refused(stmt.sql, f"dbsentry: the parameters of COM_STMT_EXECUTE cannot be read ({err}): it was not run")
        unread = [t for t in execute.types or stmt.types or () if t.type in _UNREAD_PARAM_TYPES]
        if unread:
            # MariaDB binds NULL for these and reads none of their bytes, so the parameters
            # after them are read from other bytes than dbsentry reads (an attack round).
            return self._refused(
                stmt.sql,
                f"dbsentry: COM_STMT_EXECUTE with a parameter of type {unread[0].type:#04x} (MEDIUMINT, YEAR or BIT) is "
                "refused: the server may read it otherwise than dbsentry; send it as an integer or a string",
            )
        if len(execute.params) < stmt.num_params:
            return self._refused(
                stmt.sql, f"dbsentry: COM_STMT_EXECUTE sent {len(execute.params)} parameters for a statement of {stmt.num_params}: it was not run"
            )
        # Query attributes follow the statement's own parameters.
        own, attributes = execute.params[: stmt.num_params], execute.params[stmt.num_params :]
        self._audit_attributes(attributes)
        if self._caps & k.CLIENT_QUERY_ATTRIBUTES and not self._up_caps & k.CLIENT_QUERY_ATTRIBUTES:
            stripped = replace(execute, params=own, flags=execute.flags & ~k.PARAMETER_COUNT_AVAILABLE)
            packet = w.encode_stmt_execute(stripped, self._up_caps, stmt.num_params)
        long_data = stmt.long_data
        params = tuple(
            value_text(bytes(long_data.get(i, b""))) if p.long_data else value_text(p.value) for i, p in enumerate(own)
        )
        verdict = self._check(stmt.sql)  # again: the policy may have been reloaded since
        cursor = execute.flags & k.CURSOR_TYPE_READ_ONLY
        reader = ResultReader(self._up_caps, binary=True, decode_rows=False)
        exchange = _Exchange("result", reader, sql=stmt.sql, statement=stmt if cursor else None, statement_id=sid)
        stmt.cursor = None
        out = self._govern(packet, stmt.sql, verdict, exchange, params, prepared=stmt)
        if self._exchange is exchange:
            # Sent: the server binds these types from now on and has used up the long data.
            # An execute refused here never reached it: it keeps both (an attack round had a
            # refused execute's types and long data change what the next one recorded).
            stmt.types = execute.types or stmt.types
            stmt.names = execute.names or stmt.names
            long_data.clear()
        return out

    def _change_user(self, cmd: w.ChangeUser) -> list[c.Command]:
        """COM_CHANGE_USER: the client logs in again, with a token, as at login (the same
        plugins and rules); the upstream session is reset (COM_RESET_CONNECTION: nothing
        of the previous identity's session survives) and the session goes on as the new
        identity, audited as a new session. It stays on its connection; anything refused
        ends the session, as a failed login does."""
        conn = self.connection
        assert conn is not None
        if cmd.database and cmd.database not in (self.connection_name, conn.database):
            return self._fail(
                ER_NOT_SUPPORTED, "42000", f"dbsentry: COM_CHANGE_USER to '{cmd.database}': one connection per session; connect again with it as the database"
            )
        if cmd.charset and cmd.charset != self._charset:
            return self._fail(ER_NOT_SUPPORTED, "42000", "dbsentry: COM_CHANGE_USER with another character set is not supported; connect again")
        if self._bracket is not None or self._held is not None:
            raise ProtocolError("COM_CHANGE_USER while a command is in flight")
        self._user = cmd.user
        self._client.commands = False  # the authentication exchange continues the command's sequence
        plugin = cmd.auth_plugin_name
        if plugin == auth.CLEAR_PASSWORD and self._tls:
            return self._verify(auth.read_clear_password(cmd.auth_response))
        if plugin == auth.CACHING_SHA2_PASSWORD:
            out = self._sha2_start(cmd.auth_response)
        else:
            self._enter(State.AUTH)
            self._sha2 = None
            switch = AuthSwitchRequest(auth.CACHING_SHA2_PASSWORD, self.nonce + b"\x00")
            out = [c.SendClient(self._packet(encode_auth_switch_request(switch)))]
        if self.state is State.AUTH:
            self._client.expect(self._seq)
        return out

    def _changed_user(self) -> list[c.Command]:
        """The token of COM_CHANGE_USER was accepted: the previous identity's session ends
        (audited), the upstream session is reset, its settings read again."""
        assert self.identity is not None
        out: list[c.Command] = self._audit_end(f"change_user: {self.identity.name}")
        self.audit = None
        self._closed_audited = False
        self.session_id = secrets.token_hex(8)
        self._prepared.clear()
        self._sql_prepared = {}
        self._sql_plans = {}
        self._tables_locked = False
        self._diagnostics_withheld = False
        self._enter(State.INIT)
        self._exchange = _Exchange("internal", ResultReader(self._up_caps), sql="reset")
        self._upstream.expect(1)
        out.append(c.Log(logging.INFO, "session.change_user", {"identity": self.identity.name, "connection": self.connection_name}))
        return [*out, c.SendUpstream(encode_packet(bytes((k.Command.RESET_CONNECTION,)), 0)[0])]

    def _audit_attributes(self, attributes: Sequence[w.Param]) -> None:
        """The command's query attributes, for its audit records."""
        if self.audit is not None and attributes:
            self.audit.attributes = tuple((a.name, None if a.long_data else value_text(a.value)) for a in attributes)

    def _init_db(self, schema: str) -> list[c.Command]:
        conn = self.connection
        assert conn is not None
        if schema in (self.connection_name, conn.database):
            ok = OK(0, 0, self._status, 0)
            return [c.SendClient(self._packet(encode_ok(ok, self._caps)))]
        return self._reply_error(
            ER_SPECIFIC_ACCESS_DENIED,
            "42000",
            f"dbsentry: one connection per session: cannot change to '{schema}'; connect again with it as the database",
        )

    # ------------------------------------------------------------------ approvals and KILL

    def _ask_approval(
        self, packet: bytes, sql: str, verdict: Verdict, exchange: _Exchange, params: tuple[str | None, ...] | None
    ) -> list[c.Command]:
        from dbsentry.approvals.model import statement_key

        assert self.identity is not None and self.connection_name is not None and self.audit is not None
        key = statement_key(self.identity.name, self.connection_name, sql, params, lexer(self._mode))
        self._held = _Held(packet, sql, verdict, params, exchange)
        self._enter(State.GATED)
        display = self.audit.display(sql, params)
        mode = dict(self._attributes).get("dbsentry.approval")
        return [c.AskApproval(sql, display, params, verdict.decision, verdict.facts, key, mode)]

    def _on_approval(self, approval_id: str | None, message: str) -> list[c.Command]:
        held = self._held
        if self.state is not State.GATED or held is None or held.verdict is None:
            return []
        self._held = None
        self._enter(State.READY)
        if approval_id is None:
            out: list[c.Command] = []
            if self.audit is not None:
                facts = held.verdict.facts[0] if held.verdict.facts else None
                out.append(c.Audit(self.audit.statement(held.sql, facts, held.verdict.decision, held.params)))
            return out + self._reply_error(ER_SPECIFIC_ACCESS_DENIED, "42000", message) + self._next_commands()
        return self._audited_forward(held.packet, held.sql, held.verdict, held.exchange, held.params, approval_id)

    def _kill(self, packet: bytes, sql: str, target: int, query_only: bool) -> list[c.Command]:
        assert self.identity is not None
        out: list[c.Command] = []
        if self.audit is not None:
            decision = Decision("allow", ("dbsentry.kill",))
            rec = self.audit.statement(sql, None, decision, command="KILL QUERY" if query_only else "KILL")
            self.audit.expect(rec)
            out.append(c.Audit(rec))
        reviewer = bool(self.identity.groups & set(self.config.approvals.default_approvers))
        self._held = _Held(packet, sql, None, None, _Exchange("kill"))
        self._enter(State.GATED)
        out.append(c.Kill(target, query_only, self.identity.name, reviewer))
        return out

    def _on_kill_answered(self, error: str | None) -> list[c.Command]:
        if self.state is not State.GATED or self._held is None or self._held.exchange.kind != "kill":
            return []
        self._held = None
        self._enter(State.READY)
        out: list[c.Command] = []
        if self.audit is not None:
            rec = self.audit.complete(sqlstate="HY000" if error else None, error=error, rows=None if error else 0)
            if rec is not None:
                out.append(c.Audit(rec))
        if error is None:
            out.append(c.SendClient(self._packet(encode_ok(OK(0, 0, self._status, 0), self._caps))))
        else:
            code = ER_KILL_DENIED if "not owner" in error else ER_NO_SUCH_THREAD
            out += self._reply_error(code, "HY000", error)
        return out + self._next_commands()

    def _on_audit_failed(self, message: str) -> list[c.Command]:
        if self.state is not State.BUSY or self._exchange is None:
            return []
        self._exchange = None
        self._bracket = None  # nothing of it was sent
        self._enter(State.READY)
        out: list[c.Command] = []
        if self.audit is not None:
            out += [c.Audit(r) for r in self.audit.rest(f"not executed: {message}")]
        out += self._reply_error(ER_AUDIT, "58000", f"dbsentry: the audit trail cannot record the statement, so it was not run ({message})")
        return out + self._next_commands()

    # ------------------------------------------------------------------ the row guard

    def _guard_limits(self) -> g.Limits | None:
        """The row guard's limits: production sessions of people (agents change nothing:
        their upstream sessions are read-only), when a limit is configured."""
        if not self._production() or self.identity is None or self.identity.is_agent:
            return None
        cfg = self.config.guardrails
        limits = cfg.limits_for(None, self.identity.kind, self.identity.groups)
        if limits.max_rows_changed is None and limits.max_fraction_changed is None:
            return None
        return g.Limits(limits.max_rows_changed, limits.max_fraction_changed, cfg.min_rows_for_fraction)

    def _calls(self, verdict: Verdict, prepared: dict[str, str | None]) -> list[bool]:
        """Which statements of the string run a CALL (its result sets come before its own
        answer): itself, through EXECUTE IMMEDIATE, or SQL EXECUTE of a prepared CALL, by
        what the name holds at that point of the string (``prepared``: at its start).  Two
        attack rounds had the later statements of a string take a procedure's result sets.
        A statement prepared from a variable is not known: taken for no CALL."""
        known = dict(prepared)
        out = []
        for facts in verdict.facts:
            name = (facts.prepared_name or "").lower()
            command = facts.command
            if command == "PREPARE" and name:
                known[name] = facts.inner.text if facts.inner is not None and facts.inner.text else None
                out.append(False)
            elif command == "DEALLOCATE" and name:
                known.pop(name, None)
                out.append(False)
            elif command == "EXECUTE":
                text = known.get(name)
                inner = self._check(text) if text is not None else None
                out.append(inner is not None and any(f.command == "CALL" or "CALL" in f.commands for f in inner.facts))
            else:
                out.append(command == "CALL" or "CALL" in facts.commands)
        return out

    def _run_facts(self, facts: StatementFacts) -> tuple[StatementFacts, ...] | None:
        """What running ``facts`` runs: SQL ``EXECUTE name`` runs what ``PREPARE name``
        gave it (None: not known, so it may change anything)."""
        if facts.command != "EXECUTE":
            return (facts,)
        text = self._sql_prepared.get((facts.prepared_name or "").lower())
        if text is None:
            return None
        inner = self._check(text)
        return tuple(inner.facts) if inner is not None and inner.facts else None

    def _guard_for(
        self, sql: str, verdict: Verdict, params: tuple[str | None, ...] | None, binary: bool
    ) -> _Bracket | str | None:
        """The bracket an allowed statement runs in, when it may change rows under a
        limit; a message when the guard cannot hold it (it is refused); None: no guard."""
        limits = self._limits
        if limits is None:
            return None
        ran: list[StatementFacts] = []
        unknown = False
        for f in verdict.facts:
            facts = self._run_facts(f)
            if facts is None:
                unknown = True
            else:
                ran.extend(facts)
        guarded = unknown or any(g.changes_rows(f) for f in ran)
        if not guarded:
            return None
        head = "dbsentry: in production a statement that changes rows runs under a row limit (guardrails.max_rows_changed)"
        if unknown:
            return f"{head}, and what this EXECUTE runs is not known: PREPARE it through dbsentry in this session"
        if len(verdict.facts) > 1:
            return f"{head}, which cannot hold it with other statements in the same query string: send them one at a time"
        if any(f.command == "CALL" or "CALL" in f.commands for f in ran):
            return f"{head}, which cannot hold CALL: a procedure may COMMIT by itself, and nothing could undo what it did"
        assert self.connection is not None
        database = self.connection.database
        written = tuple(dict.fromkeys(g.split_name(t, database) for f in ran for t in f.tables_written))
        inside = self._status & k.SERVER_STATUS_IN_TRANS or not self._status & k.SERVER_STATUS_AUTOCOMMIT
        mode = g.Mode.SAVEPOINT if inside else g.Mode.TRANSACTION
        if mode is g.Mode.TRANSACTION and self._tables_locked:
            return (
                f"{head}, which would open a transaction and so release the session's LOCK TABLES: "
                "lock the tables inside a transaction (SET autocommit = 0; LOCK TABLES ...), or UNLOCK TABLES first"
            )
        return _Bracket(mode, limits, written, tuple(ran), sql, params, binary)

    def _bracket_send(self, sql: bytes) -> list[c.Command]:
        """One of the bracket's own commands, its answer read by the session."""
        b = self._bracket
        assert b is not None
        b.reader = ResultReader(self._up_caps)
        b.rows = []
        b.error = None
        self._upstream.expect(1)
        return [c.SendUpstream(encode_packet(b"\x03" + sql, 0)[0])]

    def _bracket_packet(self, ex: _Exchange, b: _Bracket, payload: bytes) -> list[c.Command]:
        reader = b.reader
        assert reader is not None
        if b.step == "statement":
            if payload[:1] == b"\xff" and reader.state in ("rows", "start"):
                b.stmt_failed = True
                ev: object = reader.feed(payload)
            else:
                state = reader.state
                ev = reader.feed(payload)
                if isinstance(ev, OK | EOF) and not isinstance(ev, bytes):
                    b.status_at.append(len(b.held))
                    if isinstance(ev, OK) and state == "start" and {"UPDATE", "DELETE"} & {c_ for f in b.facts for c_ in f.commands}:
                        b.reported = ev.affected_rows
            b.held.append(payload)
            b.held_bytes += len(payload)
            if b.held_bytes > self.config.limits.max_message_bytes and b.refusal is None:
                b.refusal = ("dbsentry: the statement's answer is too large to hold under the row limit (guardrails.max_rows_changed); it was rolled back", g.RULE_ROWS)
            if not reader.done:
                return []
            return self._bracket_next(ex, b)
        if payload[:1] == b"\xff" and reader.state in ("rows", "start"):
            b.error = decode_err(payload, self._up_caps)
            reader.feed(payload)
        else:
            ev = reader.feed(payload)
            if isinstance(ev, TextRow):
                b.rows.append(ev)
            elif isinstance(ev, OK | EOF) and reader.done:
                self._status = ev.status
        if not reader.done:
            return []
        return self._bracket_next(ex, b)

    def _bracket_next(self, ex: _Exchange, b: _Bracket) -> list[c.Command]:
        """The current step's answer is complete: the next step."""
        step = b.step
        if step == "info":
            if b.error is not None:
                return self._bracket_refuse(ex, b, f"dbsentry: the row guard could not read the catalog ({b.error.message}): the statement was not run")
            try:
                measured = g.plan(g.parse_info([r.values for r in b.rows]), b.written, b.facts)
            except ValueError as err:
                return self._bracket_refuse(ex, b, f"dbsentry: the row guard could not read the catalog ({err}): the statement was not run")
            if isinstance(measured, str):
                return self._bracket_refuse(
                    ex, b, f"dbsentry: in production a statement that changes rows runs under a row limit (guardrails.max_rows_changed), which cannot hold this one: {measured}"
                )
            b.plan = measured
            b.step = "begin"
            return self._bracket_send(g.begin_sql(b.mode))
        if step == "begin":
            if b.error is not None:
                return self._bracket_refuse(ex, b, f"dbsentry: the row guard could not open its transaction ({b.error.message}): the statement was not run")
            b.step = "before"
            assert b.plan is not None
            return self._bracket_send(g.snapshot_sql(b.plan, self._mariadb(), b.limits, before=True).encode())
        if step == "before":
            assert b.plan is not None
            try:
                if b.error is not None:
                    raise ValueError(b.error.message)
                b.before = g.parse_snapshot(b.rows[0].values if len(b.rows) == 1 else None, b.plan, before=True)
            except ValueError as err:
                b.refusal = (f"dbsentry: the row guard could not measure ({err}): the statement was not run", g.RULE_ROWS)
                return self._bracket_end(b, commit=False)
            b.step = "statement"
            b.reader = ResultReader(self._up_caps, binary=b.binary, decode_rows=False)
            self._upstream.expect(1)
            return [c.SendUpstream(encode_packet(b.held.pop(), 0)[0])]
        if step == "statement":
            if b.stmt_failed or b.refusal is not None:
                return self._bracket_end(b, commit=False)
            b.step = "after"
            assert b.plan is not None
            return self._bracket_send(g.snapshot_sql(b.plan, self._mariadb(), b.limits, before=False).encode())
        if step == "after":
            assert b.plan is not None and b.before is not None
            try:
                if b.error is not None:
                    raise ValueError(b.error.message)
                after = g.parse_snapshot(b.rows[0].values if len(b.rows) == 1 else None, b.plan, before=False)
                judged = g.judge(b.limits, b.plan, b.before, after, b.reported)
            except ValueError as err:
                b.refusal = (f"dbsentry: the row guard could not measure what the statement changed ({err}); it was rolled back", g.RULE_ROWS)
                return self._bracket_end(b, commit=False)
            if not judged.ok:
                b.refusal = (f"dbsentry: {judged.message}", judged.rule)
            return self._bracket_end(b, commit=judged.ok)
        # step == "end"
        if b.error is not None and not b.stmt_failed:
            # A COMMIT or ROLLBACK that fails leaves the transaction in a state the proxy
            # does not know: the session ends (the server rolls back what is open).
            raise ProtocolError(f"the row guard could not end its transaction: {b.error.message}")
        if b.ends:
            return self._bracket_send(b.ends.pop(0))
        return self._bracket_finish(ex, b)

    def _bracket_end(self, b: _Bracket, commit: bool) -> list[c.Command]:
        b.step = "end"
        b.commit = commit
        first, *rest = g.end_sql(b.mode, commit)
        b.ends = rest
        return self._bracket_send(first)

    def _bracket_refuse(self, ex: _Exchange, b: _Bracket, message: str) -> list[c.Command]:
        b.refusal = (message, g.RULE_ROWS)
        return self._bracket_finish(ex, b)

    def _bracket_finish(self, ex: _Exchange, b: _Bracket) -> list[c.Command]:
        """The bracket is over: the statement's answer goes to the client (its status flags
        as they are now), or the refusal."""
        self._bracket = None
        ex.guard = None
        if b.refusal is None:
            out: list[c.Command] = []
            for i, payload in enumerate(b.held):
                if i in b.status_at and b.mode is g.Mode.TRANSACTION:
                    payload = _with_status(payload, self._status, self._up_caps)
                out += self._answer_packet(ex, payload)
            return out
        message, rule = b.refusal
        out = []
        if self.audit is not None:
            facts = b.facts[0] if b.facts else None
            out.append(c.Audit(self.audit.statement(b.sql, facts, Decision("deny", (rule,), message), b.params)))
        out.append(
            c.Log(
                logging.WARNING,
                "statement.denied",
                {"identity": self.identity.name if self.identity else None, "connection": self.connection_name, "engine": "mysql",
                 "action": "deny", "rules": [rule], "statement": b.sql[:200]},
            )
        )
        out += self._complete(sqlstate="42000", error=message)
        out += self._reply_error(ER_SPECIFIC_ACCESS_DENIED, "42000", message)
        return out + self._done(ex)

    def _mariadb(self) -> bool:
        return "mariadb" in self._up_version.lower()

    # ------------------------------------------------------------------ answers

    def _on_upstream_data(self, data: bytes) -> list[c.Command]:
        if self.state not in (State.BUSY, State.INIT) or self._exchange is None:
            if data and self.state is not State.CLOSED:
                raise ProtocolError("the server sent data while no command was in flight")
            return []
        out: list[c.Command] = []
        rows: list[bytes] = []  # consecutive rows forwarded as they are, framed in one go
        for packet in self._upstream.feed(data):
            ex = self._exchange
            if ex is None:
                raise ProtocolError("the server sent more than the answer to the command")
            payload = packet.payload
            if self._bracket is not None:
                out += self._bracket_packet(ex, self._bracket, payload)
                continue
            reader = ex.reader
            if (
                ex.mask is None
                and type(reader) is ResultReader
                and reader.state == "rows"
                and not reader.decode_rows
                and payload[:1] != b"\xff"
                and ex.kind != "internal"
                and not is_result_end(payload, self._up_caps)
            ):
                # A row nobody rewrites (no masking): what _answer_packet would do to it,
                # without an event, a command and a frame per row.
                ex.rows += 1
                rows.append(payload)
                continue
            if rows:
                framed, self._seq = encode_packets(rows, self._seq)
                out.append(c.SendClient(framed))
                rows = []
            out += self._answer_packet(ex, payload)
        if rows:
            framed, self._seq = encode_packets(rows, self._seq)
            out.append(c.SendClient(framed))
        return _joined(out)

    def result_row(self, payload: bytes, columns: Sequence[ColumnDefinition], binary: bool) -> bytes:
        """A result row on its way to the client, as the server sent it (text protocol, or
        binary with ``binary``), with its result's ``columns``. This is where a row
        rewriter plugs in (masking, ``engines/mysql/masking``): it returns the row to
        send instead (masked when the identity's results are)."""
        ex = self._exchange
        if ex is None or ex.mask is None:
            return payload
        return ex.mask.row(payload, columns, binary)

    def _to_client(self, payload: bytes) -> c.Command:
        return c.SendClient(self._packet(payload))

    def _answer_packet(self, ex: _Exchange, payload: bytes) -> list[c.Command]:
        kind = ex.kind
        if kind == "internal":
            return self._internal_packet(ex, payload)
        if kind in ("simple", "statistics"):
            if payload[:1] == b"\x00" or payload[:1] == b"\xfe":
                self._status_from(payload)
            return [self._to_client(payload), *self._done(ex)]
        if kind == "fields":
            out = [self._to_client(payload)]
            if payload[:1] in (b"\xff", b"\xfe"):  # a column definition starts with "def"
                out += self._done(ex)
            return out
        reader = ex.reader
        if kind == "prepare":
            assert isinstance(reader, PrepareReader)
            event = reader.feed(payload)
            out = [self._to_client(payload)]
            if isinstance(event, StmtPrepareOK) and self._pending_prepare is not None:
                sql, verdict, plan = self._pending_prepare
                self._prepared[event.statement_id] = _Prepared(sql, event.num_params, verdict, plan=plan)
            if reader.done:
                self._pending_prepare = None
                out += self._done(ex)
            return out
        assert isinstance(reader, ResultReader)
        if payload[:1] == b"\xff" and reader.state in ("rows", "start"):
            # an ERR: the answer (or what remains of a multi-result answer) ends here
            err = decode_err(payload, self._up_caps)
            ex.failed = True
            shown = self._client_error(ex, payload, err)
            return [self._to_client(shown), *self._complete(sqlstate=err.sqlstate, error=err.message), *self._done(ex)]
        state = reader.state
        ev = reader.feed(payload)
        out = []
        if isinstance(ev, bytes):
            ex.rows += 1
            out.append(self._to_client(self.result_row(ev, reader.columns, reader.binary)))
            return out
        out.append(self._to_client(payload))
        if isinstance(ev, ColumnCount):
            ex.rows = 0
            if ex.mask is not None:
                ex.mask.new_result()
        elif isinstance(ev, OK) and state == "start":
            self._status = ev.status
            if ex.mask is not None:
                ex.mask.statement_ended()
            if ex.inherit is not None:
                out += self._inherited(ex.inherit.statement_ended())
            out += self._complete(rows=ev.affected_rows)
        elif (state == "rows" or (state == "columns_eof" and reader.state != "rows")) and payload[:1] == b"\xfe":
            status = decode_ok(payload, self._up_caps).status if self._up_caps & k.CLIENT_DEPRECATE_EOF else decode_eof(payload, self._up_caps).status
            self._status = status
            if ex.mask is not None and state == "rows":
                ex.mask.result_ended()
            if ex.inherit is not None and kind != "fetch":
                out += self._inherited(ex.inherit.result_ended())
            if kind == "fetch":
                pass  # the rows of a cursor: its statement was completed when it opened
            elif status & k.SERVER_STATUS_CURSOR_EXISTS:
                if ex.statement is not None:
                    ex.statement.cursor = list(reader.columns)
                out += self._complete()
            elif self.audit is not None:
                rec = self.audit.result_ended(ex.rows)
                if rec is not None:
                    out.append(c.Audit(rec))
        if reader.done:
            out += self._done(ex)
        return out

    def _status_from(self, payload: bytes) -> None:
        try:
            if payload[:1] == b"\x00":
                self._status = decode_ok(payload, self._up_caps).status
            elif len(payload) < 9:
                self._status = decode_eof(payload, self._up_caps).status
        except ProtocolError:
            pass

    def _complete(self, rows: int | None = None, sqlstate: str | None = None, error: str | None = None) -> list[c.Command]:
        if self.audit is None:
            return []
        rec = self.audit.complete(rows, sqlstate, error)
        return [c.Audit(rec)] if rec is not None else []

    def _done(self, ex: _Exchange) -> list[c.Command]:
        """The answer to the command ended."""
        out: list[c.Command] = []
        if ex.failed:
            # A statement of the string failed: a PREPARE after the first may never have
            # run, and the server still has what the name held before (or nothing): its
            # EXECUTE is refused until the name is prepared again.
            for name in ex.unsure_names:
                self._sql_prepared.pop(name, None)
                self._sql_plans.pop(name, None)
        if self.audit is not None and ex.kind == "result":
            out += [c.Audit(r) for r in self.audit.rest("not executed: an earlier statement of the string failed")]
        self._exchange = None
        if ex.ddl and self.connection_name is not None:
            out.append(c.SchemaChanged(self.connection_name))
        if ex.refresh:
            return [*out, *self._read_settings()]
        self._enter(State.READY)
        return out + self._next_commands()

    def _internal_packet(self, ex: _Exchange, payload: bytes) -> list[c.Command]:
        reader = ex.reader
        assert isinstance(reader, ResultReader)
        if payload[:1] == b"\xff" and reader.state in ("start", "rows"):
            err = decode_err(payload, self._up_caps)
            raise ProtocolError(f"the server refused the session's settings: {err.message}")
        event = reader.feed(payload)
        if ex.sql == "reset" and reader.done:
            if isinstance(event, OK):
                self._status = event.status
            self._exchange = None
            return self._read_settings()  # then the session goes on as the new identity
        if ex.sql == "read-only" and reader.done:
            # read-only transactions are set: now the settings
            self._exchange = _Exchange("internal", ResultReader(self._up_caps))
            self._upstream.expect(1)
            return [c.SendUpstream(encode_packet(_MODE_QUERY, 0)[0])]
        if isinstance(event, TextRow) and ex.internal_row is None:
            ex.internal_row = event
        if not reader.done:
            return []
        self._exchange = None
        rereading = self.state is State.BUSY  # (else the login ends: commands queued go on there)
        out = self._settings_read(ex.internal_row)
        if rereading:
            # A statement changed them: the commands that waited go on. (After a login,
            # _logged_in has sent the next command already: the session is BUSY with it; an
            # attack round had a statement pipelined after COM_CHANGE_USER forwarded and its
            # answer then taken for nobody's, ending the session.)
            self._enter(State.READY)
            out += self._next_commands()
        return out

    # ------------------------------------------------------------------ endings

    def _on_client_closed(self) -> list[c.Command]:
        if self.state is State.CLOSED:
            return []
        running = self.state is State.BUSY and self._exchange is not None and self._exchange.kind == "result"
        self._enter(State.CLOSED)
        # A statement still running upstream is killed: nobody reads its result, and the
        # server would only notice the closed socket when it writes.
        return [*self._audit_end("client_terminate"), *([c.CancelUpstream()] if running else []), c.CloseUpstream()]

    def _on_upstream_closed(self) -> list[c.Command]:
        if self.state is State.CLOSED:
            return []
        return self._fail(2013, "08S01", "dbsentry: the upstream server closed the connection")

    def _on_startup_timed_out(self) -> list[c.Command]:
        if self.state not in (State.GREETED, State.TLS, State.AUTH, State.VERIFYING, State.CONNECTING, State.INIT):
            return []
        seconds = self.config.limits.startup_timeout_seconds
        return self._fail(ER_HANDSHAKE, "08S01", f"dbsentry: the login did not complete within {seconds:g}s")


def _may_copy(facts: StatementFacts, sql: str) -> bool:
    """Whether the statement may store a copy of a table's values (an ``INSERT`` of
    constants and built-in functions of them does not: not worth its lineage)."""
    if facts.command == "EXECUTE":
        return True
    if facts.command not in _COPYING:
        return False
    return bool(
        facts.command not in ("INSERT", "REPLACE")
        or facts.tables_read
        or facts.columns_read
        or "UPDATE" in facts.commands
        or "volatile_function" in facts.flags
        or "@" in (facts.text or sql)
    )


def _writes_masked(sql: str, verdict: Verdict, params: Sequence[str | None] | None, mode: SqlMode) -> bool:
    """Whether a write carries, as a string constant or a parameter, what the proxy emits
    for a masked value (``masking.write_back``): it would replace real data with its mask.
    The text a ``PREPARE`` prepares is read too."""
    if not any("WRITE" in f.classes for f in verdict.facts):
        return False
    if params is not None and any(p is not None and writeback.looks_masked(p) for p in params):
        return True
    texts = [sql, *(f.inner.text for f in verdict.facts if f.inner is not None and f.inner.text)]
    for text in texts:
        if "*" not in text and "<" not in text and ".invalid" not in text:
            continue
        try:
            toks = tokens(text, mode)
        except Exception:
            return True  # cannot tell: refused (the analysis refuses such text anyway)
        for t in toks:
            if t.kind == LITERAL and writeback.looks_masked(constant_value(text[t.start : t.end])):
                return True
    return False


def _with_status(payload: bytes, status: int, caps: int) -> bytes:
    """An OK or EOF of the guarded statement with the transaction flags of ``status`` (the
    bracket's COMMIT or ROLLBACK ended the transaction the statement ran in)."""
    keep = k.SERVER_STATUS_IN_TRANS | k.SERVER_STATUS_AUTOCOMMIT
    if payload[:1] == b"\xfe" and len(payload) < 9 and not caps & k.CLIENT_DEPRECATE_EOF:
        at = 3  # EOF: header, warnings, status
    else:
        at = 1
        for _ in range(2):  # affected rows, last insert id (length-encoded)
            first = payload[at]
            at += 1 + {0xFC: 2, 0xFD: 3, 0xFE: 8}.get(first, 0)
    old = int.from_bytes(payload[at : at + 2], "little")
    new = (old & ~keep) | (status & keep)
    return payload[:at] + new.to_bytes(2, "little") + payload[at + 2 :]


def _joined(commands: list[c.Command]) -> list[c.Command]:
    """Consecutive ``SendClient`` as one (one write for the packets of one read)."""
    out: list[c.Command] = []
    pending: list[bytes] = []
    for cmd in commands:
        if isinstance(cmd, c.SendClient):
            pending.append(cmd.data)
            continue
        if pending:
            out.append(c.SendClient(b"".join(pending)))
            pending = []
        out.append(cmd)
    if pending:
        out.append(c.SendClient(b"".join(pending)))
    return out


def _codecs() -> dict[str, str]:
    """Character set name -> Python codec, for the charsets statements may be read in."""
    out: dict[str, str] = {}
    for cid in range(1, 400):
        cs = charset_of(cid)
        if cs is not None and cs.codec is not None and cs.client_ok and cs.backslash_safe:
            out[cs.name] = cs.codec
    return out


_CODECS = _codecs()


def _first_refusal(plans: Sequence[MysqlMaskPlan | Refusal]) -> tuple[MysqlMaskPlan, ...] | Refusal:
    """The first refusal among ``plans``, or the plans."""
    out: list[MysqlMaskPlan] = []
    for p in plans:
        if isinstance(p, Refusal):
            return p
        out.append(p)
    return tuple(out)
_NO_VERDICT = Verdict((), (), ALLOWED)

