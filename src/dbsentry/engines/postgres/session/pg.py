"""The per-connection PostgreSQL session: a state machine with no awaits.

Events come in through one entry point, :meth:`Session.handle` (bytes from the client,
bytes from the upstream, "the token was checked", "the upstream is ready", ...:
:mod:`dbsentry.engines.postgres.session.events`); commands come out
(:mod:`dbsentry.engines.postgres.session.commands`).  Every rule of the session lives here, so it is
tested without sockets.

States::

    STARTUP --SSLRequest--> (TLS) --StartupMessage--> AUTH --password--> VERIFYING
      --identity ok--> CONNECTING --upstream ready--> READY <--> (query cycles) --> CLOSED

With a lazy upstream (``limits.lazy_upstream``), once the connection's server parameters
are known (:mod:`dbsentry.engines.postgres.session.server_params`), the client is logged in without one::

    VERIFYING --identity ok--> GREETED --first message that needs the database--> OPENING
      --upstream ready--> READY

A GREETED session answers Sync itself and ends on Terminate without any upstream.

While they are not known for a client's startup settings, one session logs in upstream
for every client with those settings (single flight, see ``ServerParams.join_login``);
the others wait for its login to end, then are greeted from what it taught, or (it
failed) log in upstream themselves; at most ``connect_timeout_seconds``::

    VERIFYING --another session's login will tell--> WAITING --it ended--> GREETED
                                                       |   (or CONNECTING, or WAITING again)
                                                       +--connect_timeout_seconds--> CONNECTING
"""

from __future__ import annotations

import logging
import re
import secrets
import struct
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import NamedTuple, Protocol, assert_never

from dbsentry.approvals.model import statement_key
from dbsentry.audit.config import AuditConfig
from dbsentry.audit.records import CompletionRecord, Record, extract_correlation
from dbsentry.config import Config, ConnectionConfig
from dbsentry.engines.postgres.session import commands as c
from dbsentry.engines.postgres.session.auditing import SessionAudit
from dbsentry.engines.postgres.session.events import (
    AuditFailed,
    ClientClosed,
    ClientData,
    ClientTLSStarted,
    Event,
    GuardApprovalAnswered,
    HeldRefused,
    LoginWaitTimedOut,
    PasswordVerified,
    StartupTimedOut,
    UpstreamClosed,
    UpstreamData,
    UpstreamFailed,
    UpstreamReady,
    WaitedLoginEnded,
)
from dbsentry.engines.postgres.session.functions import names_user_code
from dbsentry.engines.postgres.session.governance import (
    Check,
    Governor,
    classes_from,
    denial_message,
)
from dbsentry.engines.postgres.session.guard import Guard, Limits, Mode, Out
from dbsentry.engines.postgres.session.guard import Statement as GuardedStatement
from dbsentry.engines.postgres.session.masking import (
    MaskingService,
    MaskingView,
    SessionMasking,
    StatementPlan,
    looks_masked,
    writes_masked_literal,
)
from dbsentry.engines.postgres.session.rowcap import RowCap
from dbsentry.engines.postgres.session.server_params import (
    Greeting,
    LoginKey,
    ServerParams,
    Setting,
    given_application_name,
)
from dbsentry.engines.postgres.sql import shape as _shape
from dbsentry.engines.postgres.sql.facts import (
    TRANSACTION_COMMANDS,
    SQLParseError,
    StatementFacts,
    setting_values,
    where_true_with,
)
from dbsentry.engines.postgres.sql.parse import tokens
from dbsentry.engines.postgres.wire import codec, encodings
from dbsentry.engines.postgres.wire import messages as m
from dbsentry.governance.durability import changes_data, transactional_only
from dbsentry.identity.model import Identity
from dbsentry.identity.ratelimit import ControlPlaneUnavailable, LoginThrottled
from dbsentry.policy.engine import Decision
from dbsentry.policy.verdict import Verdict

# Startup parameters the proxy sets or refuses itself rather than forwarding.
_NOT_FORWARDED = frozenset({"user", "database", "options", "replication"})
_ROLE_SETTINGS = frozenset({"role", "session_authorization"})
# Startup settings an agent may not give in production: the proxy sets them.
_AGENT_FORCED = frozenset({"default_transaction_read_only", "transaction_read_only", "statement_timeout"})
# Startup parameters every client sends that the allow-list need not name.
_ALWAYS_ALLOWED = frozenset({"application_name", "client_encoding"})
MAX_AUTH_MESSAGE = 64 * 1024
_EMPTY: Mapping[str, str] = MappingProxyType({})


def _empty() -> Mapping[str, str]:
    return _EMPTY  # shared: most sessions have nothing to keep here


# What PostgreSQL does with these outside a query needs no database: it ignores COPY
# messages outside COPY, and Flush with nothing to flush.  (Sync is answered.)
_NO_DATABASE_NEEDED = frozenset({m.Q_FLUSH, m.COPY_DATA, m.COPY_DONE, m.Q_COPY_FAIL})


class State(Enum):
    STARTUP = "startup"
    AUTH = "auth"
    VERIFYING = "verifying"
    CONNECTING = "connecting"
    WAITING = "waiting"  # identity verified; waits for another session's upstream login
    GREETED = "greeted"  # logged in from known server parameters, no upstream yet
    OPENING = "opening"  # logged in, the upstream is being opened for its first statement
    READY = "ready"
    CLOSED = "closed"


#: Every state a session may move to from each state; anything else is a bug in the session,
#: and :meth:`Session._enter` raises instead of going on (the shell then drops the
#: connection: it fails closed).  The login paths: a password (AUTH, VERIFYING); then an
#: upstream login of the session's own (CONNECTING), or the wait for another session's login
#: of the same settings (WAITING), or a greeting from known server parameters with the
#: upstream opened at the first statement (GREETED, OPENING).
TRANSITIONS: dict[State, frozenset[State]] = {
    State.STARTUP: frozenset({State.AUTH, State.CLOSED}),
    State.AUTH: frozenset({State.VERIFYING, State.CLOSED}),
    State.VERIFYING: frozenset({State.CONNECTING, State.WAITING, State.GREETED, State.CLOSED}),
    State.WAITING: frozenset({State.WAITING, State.CONNECTING, State.GREETED, State.CLOSED}),
    State.CONNECTING: frozenset({State.READY, State.CLOSED}),
    State.GREETED: frozenset({State.OPENING, State.CLOSED}),
    State.OPENING: frozenset({State.READY, State.CLOSED}),
    State.READY: frozenset({State.CLOSED}),
    State.CLOSED: frozenset({State.CLOSED}),
}


class SessionStateError(RuntimeError):
    """A session tried a transition :data:`TRANSITIONS` does not allow (a bug)."""


def fatal(sqlstate: str, message: str, hint: str | None = None) -> bytes:
    return codec.error_response(sqlstate, message, severity="FATAL", hint=hint)


_PG_SPACE = " \t\n\r\f\v"  # C isspace(), what PostgreSQL splits options on


def pg_split_opts(options: str) -> list[str]:
    """Split an ``options`` string into words exactly as PostgreSQL's pg_split_opts does.

    Words are separated by unescaped whitespace; a backslash makes the next character
    literal.  Quotes have no special meaning.
    """
    words: list[str] = []
    word: list[str] = []
    in_word = escaped = False
    for ch in options:
        if escaped:
            word.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = in_word = True
        elif ch in _PG_SPACE:
            if in_word:
                words.append("".join(word))
                word, in_word = [], False
        else:
            word.append(ch)
            in_word = True
    if in_word:
        words.append("".join(word))
    return words


def split_options(options: str) -> tuple[dict[str, str], str]:
    """Split a libpq ``options`` string into dbsentry settings and the rest.

    ``-c dbsentry.approval=wait -c search_path=app`` gives
    ``({"approval": "wait"}, "-c search_path=app")``.  Words are split the way the server
    splits them (:func:`pg_split_opts`), and the rest is escaped again for it.
    """
    words = pg_split_opts(options)
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
            # ParseLongOption: '-' becomes '_' in the name only, never in the value.
            long_name, _, long_value = w[2:].partition("=")
            setting = long_name.replace("-", "_") + "=" + long_value
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
    return "".join("\\" + ch if ch == "\\" or ch in _PG_SPACE else ch for ch in word)


# CommandComplete tags after which a connection's catalog is read again (masking).
_SCHEMA_TAGS = frozenset({b"CREATE", b"ALTER ", b"DROP T", b"DROP V", b"DROP F", b"DROP S", b"COMMEN"})
AUDIT_UNAVAILABLE = "dbsentry: the audit trail is unavailable, so the statement was not run; try again shortly"
ALLOWED = Decision("allow", ())
# Statement, portal and cursor names the proxy keeps for itself.
_NOT_SENT_HINT = "dbsentry: the statement was not sent to the database"
# A refused statement is replaced by one that fails upstream in order and names this.
_MARKER = "dbsentry refused statement "
_MARKER_BYTES = _MARKER.encode()
_RESERVED_PREFIX = ("dbsentry_", "dbsentry ")
_RESERVED_MESSAGE = 'dbsentry: names starting with "dbsentry_" or "dbsentry " are the proxy\'s own; use another name'
_NAMED_FRAMES = frozenset({m.Q_PARSE, m.Q_BIND, m.Q_DESCRIBE, m.Q_CLOSE, m.Q_EXECUTE})
# What ends a pipeline segment: the unit a batch of statements is admitted in.
_SEGMENT_ENDS = frozenset({m.Q_SYNC, m.Q_FLUSH, m.Q_QUERY, m.Q_FUNCTION_CALL})
# The frames Session._govern_frame looks at (a Sync, a Flush, COPY data: nothing to govern).
_GOVERNED_FRAMES = _NAMED_FRAMES | {m.Q_QUERY, m.Q_FUNCTION_CALL}
# Client messages that run no statement (a Bind plans, and planning runs no volatile code).
def _major_version(server_version: str) -> int:
    """PostgreSQL's major version from its ``server_version`` ("15.20 (Debian ...)",
    "17devel"); 0 when it does not start with one."""
    digits = re.match(r"\d+", server_version)
    return int(digits.group()) if digits else 0


_RUNS_NOTHING = frozenset({m.Q_PARSE, m.Q_BIND, m.Q_DESCRIBE, m.Q_CLOSE, m.Q_SYNC, m.Q_FLUSH})
# Commands that only read: between two guarded statements they leave the row counters alone.
_PLAIN_READS = frozenset({"SELECT", "VALUES", "TABLE", "SHOW"})
_UNBOUNDED_RULE = "baseline.prod.unbounded-write"


class GrantSource(Protocol):
    """What a session needs of the approvals service: just-in-time grants."""

    def effective_identity(self, identity: Identity) -> Identity: ...

    def connection_granted(self, identity: str, connection: str) -> bool: ...


_COPYING = frozenset(
    {"CREATE TABLE AS", "SELECT INTO", "CREATE VIEW", "CREATE MATERIALIZED VIEW", "CREATE RULE", "INSERT", "UPDATE", "MERGE", "ALTER TABLE"}
)


# Statements that keep a query to run later, for whoever reads or writes the relation: a
# rule's actions are a view's query (a rule DO INSTEAD SELECT answers an INSERT with rows
# no mask plan follows).
_VIEWS = frozenset({"CREATE VIEW", "CREATE MATERIALIZED VIEW", "CREATE RULE"})


def _keeps_a_query(facts: StatementFacts) -> bool:
    """Whether the statement, or one inside it (``CREATE SCHEMA s CREATE VIEW ...``),
    defines a view or a rule."""
    return facts.command in _VIEWS or any(cmd in _VIEWS for cmd in facts.commands)


def _copies_data(facts: StatementFacts) -> bool:
    return facts.command in _COPYING or any(cmd in _COPYING for cmd in facts.commands)


def _refusal(check: Check, rule: str, message: str, sqlstate: str = "42501") -> Check:
    """A deny decision made by the session (masking, prepared names), in the shape the policy gives."""
    return _decided(check, Decision("deny", (rule,), f"{message} ({rule})", sqlstate=sqlstate))


def _decided(check: Check, decision: Decision) -> Check:
    """``check``'s statements under ``decision``."""
    verdict = check.verdict
    return Check(Verdict(verdict.facts, tuple(decision for _ in verdict.facts), decision, verdict.parse_error))


def _binds_masked_value(check: Check, buf: bytes, start: int, end: int, enc: str, types: Sequence[int] = ()) -> bool:
    """Whether a Bind of a writing statement carries a mask placeholder as a parameter
    (``types``: the parameter type OIDs its Parse declared)."""
    if not any(f.statement_class == "WRITE" for f in check.verdict.facts):
        return False
    bind = codec.decode_bind(buf, start, end, enc)
    fmts = bind.param_formats
    for i, v in enumerate(bind.params):
        if v is None:
            continue
        if (fmts[i] if len(fmts) > 1 else fmts[0]) == 1 if fmts else False:
            # Binary: text travels in the client encoding; a number's bytes can look like
            # ``**`` or ``<..>`` (the int2 10794 is 0x2a2a), so only values declared as
            # text (or undeclared), and readable, count.
            oid = types[i] if i < len(types) else 0
            if oid and oid not in _BINARY_TEXTS:
                continue
            try:
                text = v.decode(enc)
            except UnicodeDecodeError:
                continue
            if not text.isprintable():
                continue
        else:
            text = v.decode(enc, "replace")
        if looks_masked(text):
            return True
    return False


_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")
_SHORTS: dict[int, struct.Struct] = {}


def _shorts(n: int) -> struct.Struct:
    got = _SHORTS.get(n)
    if got is None:
        got = _SHORTS[n] = struct.Struct(f"!{n}h")
    return got


# What the session reads of a Bind: (portal, statement, parameter formats, parameters).
# A tuple: every extended-protocol statement makes one, and a frozen m.Bind costs four
# times as much to make.
_BindParts = tuple[str, str, tuple[int, ...], tuple[bytes | None, ...]]


def _bind_parts(bind: m.Bind) -> _BindParts:
    return bind.portal, bind.statement, bind.param_formats, bind.params


def _decode_bind(buf: bytes, start: int, end: int, enc: str) -> _BindParts:
    """``codec.decode_bind`` (but the result formats), several times as fast for a
    well-formed Bind (the extended protocol's every statement); anything else is left to
    it, and to its errors."""
    z = buf.find(b"\x00", start, end)
    z2 = buf.find(b"\x00", z + 1, end) if z >= 0 else -1
    pos = z2 + 1
    if z2 < 0 or pos + 2 > end:
        return _bind_parts(codec.decode_bind(buf, start, end, enc))
    (nf,) = _I16.unpack_from(buf, pos)
    pos += 2
    if nf < 0 or pos + 2 * nf + 2 > end:
        return _bind_parts(codec.decode_bind(buf, start, end, enc))
    fmts = (_SHORTS.get(nf) or _shorts(nf)).unpack_from(buf, pos) if nf else ()
    pos += 2 * nf
    (count,) = _I16.unpack_from(buf, pos)
    pos += 2
    if count < 0:
        return _bind_parts(codec.decode_bind(buf, start, end, enc))
    params: list[bytes | None] = []
    for _ in range(count):
        if pos + 4 > end:
            return _bind_parts(codec.decode_bind(buf, start, end, enc))
        (size,) = _I32.unpack_from(buf, pos)
        pos += 4
        if size == -1:
            params.append(None)
        elif size < 0 or pos + size > end:
            return _bind_parts(codec.decode_bind(buf, start, end, enc))
        else:
            params.append(bytes(buf[pos : pos + size]))
            pos += size
    if pos + 2 > end:
        return _bind_parts(codec.decode_bind(buf, start, end, enc))
    (nr,) = _I16.unpack_from(buf, pos)
    pos += 2
    if nr < 0 or pos + 2 * nr != end:
        return _bind_parts(codec.decode_bind(buf, start, end, enc))
    return (
        buf[start:z].decode(enc, "surrogateescape"),
        buf[z + 1 : z2].decode(enc, "surrogateescape"),
        fmts,
        tuple(params),
    )


def _readable_params(fmts: tuple[int, ...], params: tuple[bytes | None, ...], enc: str) -> tuple[str | None, ...]:
    """Bind parameters for the audit: text-format ones as text, binary ones as ``\\x`` hex."""
    out: list[str | None] = []
    for i, value in enumerate(params):
        if value is None:
            out.append(None)
            continue
        binary = (fmts[i] if len(fmts) > 1 else fmts[0]) == 1 if fmts else False
        out.append("\\x" + value.hex() if binary else value.decode(enc, "replace"))
    return tuple(out)


_BINARY_INTS = {21: "!h", 23: "!i", 20: "!q", 26: "!I"}  # int2, int4, int8, oid
_BINARY_FLOATS = {700: "!f", 701: "!d"}
_BINARY_TEXTS = frozenset({25, 1043, 1042, 19, 705})  # text, varchar, bpchar, name, unknown


_INT_BY_SIZE = {2: 21, 4: 23, 8: 20}


def _binary_text(value: bytes, oid: int, enc: str) -> str:
    """A binary parameter as PostgreSQL would print it, where the type is a simple one;
    else its bytes in hex (equal bytes still compare equal).  An undeclared type (0: the
    server inferred it) of 2, 4 or 8 bytes reads as an integer: the folding only ever
    learns from it that a WHERE is always true, and equal bytes still read alike."""
    if oid == 0:
        oid = _INT_BY_SIZE.get(len(value), 0)
    try:
        if oid in _BINARY_INTS and len(value) == struct.calcsize(_BINARY_INTS[oid]):
            return str(struct.unpack(_BINARY_INTS[oid], value)[0])
        if oid in _BINARY_FLOATS and len(value) == struct.calcsize(_BINARY_FLOATS[oid]):
            return repr(struct.unpack(_BINARY_FLOATS[oid], value)[0])
        if oid == 16 and len(value) == 1:
            return "true" if value != b"\x00" else "false"
        if oid in _BINARY_TEXTS:
            return value.decode(enc)
    except (struct.error, UnicodeDecodeError):
        pass
    return "\\x" + value.hex()


def _param_values(
    fmts: tuple[int, ...], params: tuple[bytes | None, ...], enc: str, types: tuple[int, ...] = ()
) -> tuple[str | None, ...]:
    """Bind parameters as the WHERE folding reads them: text-format ones as text, binary
    ones decoded by the types the Parse declared (see :func:`_binary_text`)."""
    out: list[str | None] = []
    for i, value in enumerate(params):
        binary = (fmts[i] if len(fmts) > 1 else fmts[0]) == 1 if fmts else False
        if value is None:
            out.append(None)
        elif binary:
            out.append(_binary_text(value, types[i] if i < len(types) else 0, enc))
        else:
            out.append(value.decode(enc, "replace"))
    return tuple(out)


_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(us|ms|s|min|h|d)?\s*$")
_UNIT_MS = {"us": 0.001, "ms": 1.0, None: 1.0, "s": 1000.0, "min": 60_000.0, "h": 3_600_000.0, "d": 86_400_000.0}


def _duration_ms(text: str) -> float | None:
    """A PostgreSQL time setting's value in milliseconds (no unit: milliseconds)."""
    match = _DURATION.match(text)
    if match is None:
        return None
    return float(match.group(1)) * _UNIT_MS[match.group(2)]


def _catalog_schemas_in(search_path: str) -> bool:
    """Whether a search_path value names a catalog schema whose tables lack a ``pg_`` prefix."""
    for item in search_path.split(","):
        name = item.strip().strip('"').lower()
        if name == "information_schema" or name.startswith("pg_toast"):
            return True
    return False


# SQL commands that make or drop prepared statements (a name, or all of them).
_SQL_NAMING = frozenset({"PREPARE", "DEALLOCATE", "DEALLOCATE ALL", "DISCARD ALL"})


def _executed(facts: StatementFacts) -> StatementFacts | None:
    """The ``EXECUTE name(...)`` a statement runs: itself, or under EXPLAIN ANALYZE."""
    if facts.command == "EXECUTE":
        return facts
    inner = facts.inner
    if facts.command == "EXPLAIN ANALYZE" and inner is not None and inner.command == "EXECUTE":
        return inner
    return None


def _exact_params(fmts: tuple[int, ...], params: tuple[bytes | None, ...]) -> tuple[str | None, ...]:
    """Bind parameters exactly (format code and bytes): different values never compare equal."""
    out: list[str | None] = []
    for i, value in enumerate(params):
        if value is None:
            out.append(None)
            continue
        binary = (fmts[i] if len(fmts) > 1 else fmts[0]) == 1 if fmts else False
        out.append(("b:" if binary else "t:") + value.hex())
    return tuple(out)


class _Chunk:
    """One chunk of frames on its way through: replaced frames, commands, records to commit."""

    __slots__ = (
        "_stop", "_swaps", "approvals", "block", "buf", "commands", "copies_in", "durable", "extra", "gated", "guarded",
        "in_block", "names", "plans", "quiet", "reads",
    )  # fmt: skip

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.commands: list[c.Command] = []
        self.gated: list[Record] = []
        # A gated statement may change data: forward only once its record is durable.
        self.durable = False
        # The statements so far run inside the client's open transaction block, where one
        # that only changes this transaction's rows need not wait (see _gate_durable).
        self.block = False
        # The client's explicit block was open at the chunk's start, with no statement in
        # flight that could end it (the row guard's Executes may start from its last
        # reading: see Guard.wrap_execute; what the chunk runs before them forgets it).
        self.in_block = False
        # The frame being handled runs plain reads only (the row counters stay as they are).
        self.reads = False
        # ... or changes no row counter at all (see Guard.unseen_changes).
        self.quiet = False
        self.plans: tuple[StatementPlan | None, ...] = ()  # of the Query being handled
        self.approvals: list[c.ApprovalAsk] = []
        # The frame being handled runs under the row guard: how (see Session._wrap_guarded).
        self.guarded: _Guarded | None = None
        # The frame being handled runs a COPY FROM STDIN (see Session._copy_cycle).
        self.copies_in = False
        self.extra = b""  # frames of the proxy's own, sent after what is forwarded
        # The names of the frame being handled, once read (see Session._frame_names).
        self.names: tuple[str, str] | None = None
        # Frames sent instead of the client's: (frame start, frame end, replacement), in order.
        self._swaps: list[tuple[int, int, bytes]] | None = None
        self._stop = len(buf)

    def replace(self, body_start: int, end: int, frame: bytes) -> None:
        """Send ``frame`` instead of the frame whose body starts at ``body_start``."""
        if self._swaps is None:
            self._swaps = []
        self._swaps.append((body_start - 5, end, frame))

    def cut(self, stop: int) -> None:
        """Forward nothing from ``stop`` on."""
        self._stop = stop

    def part(self, lo: int, hi: int) -> bytes:
        """What is forwarded of the frames from ``lo`` to ``hi`` (both frame boundaries)."""
        buf = self.buf
        if self._swaps is None:
            return buf if lo == 0 and hi == len(buf) else buf[lo:hi]
        pieces: list[bytes] = []
        at = lo
        for start, end, frame in self._swaps:
            if start >= lo and end <= hi:
                pieces.append(buf[at:start])
                pieces.append(frame)
                at = max(at, end)
        pieces.append(buf[at:hi])
        return b"".join(pieces)

    def assemble(self) -> bytes:
        if self._swaps is None:
            out = self.buf if self._stop == len(self.buf) else self.buf[: self._stop]
        else:
            out = self.part(0, self._stop)
        return out + self.extra if self.extra else out


@dataclass(slots=True)
class _Segment:
    """Governed frames held back: a pipeline segment with a statement that needs approval
    waits for the Sync or Flush that ends it, to be admitted whole (see Session._process).
    ``raw`` and ``spans`` are the client's frames (for a second pass that refuses them),
    ``out`` what is forwarded of them; both kept in pieces, so that a segment arriving in
    many reads costs what it holds, not that times the reads."""

    raw: list[bytes]
    size: int  # of raw
    spans: list[tuple[int, int, int]]
    out: list[bytes]
    gated: list[Record]
    approvals: list[c.ApprovalAsk]
    durable: bool

    def then(self, more: _Segment) -> _Segment:
        """These frames, followed by ``more`` (taken into this one)."""
        n = self.size
        self.raw.extend(more.raw)
        self.size += more.size
        self.spans.extend((t, s + n, e + n) for t, s, e in more.spans)
        self.out.extend(more.out)
        self.gated.extend(more.gated)
        self.approvals.extend(more.approvals)
        self.durable = self.durable or more.durable
        return self


# ParseComplete, BindComplete, CloseComplete
_NAME_ANSWERS = frozenset((ord("1"), ord("2"), ord("3")))

# A prepared statement as the session knows it: SQL, what it was judged under, the check.
_Prepared = tuple[str, str, Check]


class _Rename(NamedTuple):
    """A change of server-side names waiting for the answer that says it was carried out."""

    cycle: int  # the cycle of the request (its Sync's or its Query's)
    portal: bool  # portal names, not statement names
    names: tuple[str, ...]
    confirm: bytes  # the answer's message type (b"1", b"2", b"3"), or b"C" + the command tag


class _Portal:
    """A portal as the session knows it: its statement's name, the statement it was bound
    to (an Execute runs that one, whatever the name means by then), and its parameters,
    read from the Bind when asked: as audited (``readable``) and exactly (``exact``)."""

    __slots__ = ("_exact", "_readable", "enc", "formats", "params", "prepared", "statement")

    def __init__(
        self, statement: str, formats: tuple[int, ...], params: tuple[bytes | None, ...], enc: str, prepared: _Prepared
    ) -> None:
        self.statement = statement
        self.formats = formats
        self.params = params
        self.enc = enc  # the client encoding at Bind
        self.prepared = prepared
        self._readable: tuple[str | None, ...] | None = None
        self._exact: tuple[str | None, ...] | None = None

    @property
    def readable(self) -> tuple[str | None, ...]:
        if self._readable is None:
            self._readable = _readable_params(self.formats, self.params, self.enc)
        return self._readable

    @property
    def exact(self) -> tuple[str | None, ...]:
        if self._exact is None:
            self._exact = _exact_params(self.formats, self.params)
        return self._exact


class _CheckFacts:
    """What the Binds and Executes of a prepared statement ask of its check, read once."""

    __slots__ = ("copies_in", "durable", "first", "plans_opaque", "quiet", "reads", "transactional", "where_params", "writes")

    def __init__(self, check: Check, durable: Callable[[StatementFacts], bool], may_write: Callable[[StatementFacts], bool]) -> None:
        facts = check.verdict.facts
        self.first = first = facts[0] if facts else None
        # Whether running it must wait for its record to be durable (see _execute_frame,
        # Session._effect_durable), and whether a ROLLBACK undoes all it does (see _gate_durable).
        self.durable = first is None or durable(first)
        # Whether it may change data, itself or through what it calls (see SessionAudit.expect).
        self.writes = first is None or may_write(first)
        self.copies_in = any(_copies_in(f) for f in facts)
        self.transactional = first is not None and _transactional(first)
        self.reads = first is not None and len(facts) == 1 and _plain_read(first)
        self.quiet = first is not None and len(facts) == 1 and _quiet(first)
        # Whether planning it at Bind may run opaque code (see _guard_bind).
        self.plans_opaque = any("volatile_function" in f.flags and (f.functions or f.tables_read) for f in facts)
        # Whether a WHERE reads parameters (folded with the values bound, see _govern_bind).
        self.where_params = any(f.where_params for f in facts)


@dataclass(frozen=True, slots=True)
class _Guarded:
    """A frame that runs under the row guard (see :mod:`dbsentry.engines.postgres.session.guard`)."""

    mode: Mode
    statement: GuardedStatement
    hold_from: int = 0  # the index of the first guarded statement of a Query
    frame: int = m.Q_EXECUTE  # the extended-protocol message guarded (Execute, or Bind)


# Statements that end or begin transactions: around a guarded statement in one Query string,
# they would commit (or move) the guard's block before it could decide.
_TRANSACTION_CONTROL = TRANSACTION_COMMANDS
# Commands that change rows (anywhere in a statement: CTEs, EXPLAIN ANALYZE, upserts) or run
# code that may (CALL): in production they run under the row guard.
_CHANGES_ROWS = frozenset({"UPDATE", "DELETE", "MERGE", "CALL"})
# Statements that only define or describe a statement, without running it.
_DEFINES_ONLY = frozenset({"PREPARE", "EXPLAIN", "CREATE RULE", "CREATE FUNCTION", "CREATE PROCEDURE", "CREATE TRIGGER"})


class _ShapeRuling:
    """The ruling of an allowed Query, kept for every text of its shape (see
    :mod:`dbsentry.engines.postgres.sql.shape`): a text of the shape with constants of the same kinds gets
    the same check and masking plans, while nothing it depends on in the session has
    changed (``stamp``: see ``Session._shape_stamp``).  Only rulings that leave nothing
    behind but what is replayed here are kept: one plain SELECT, INSERT, UPDATE or DELETE,
    allowed, no approval, no copy of classified values, no change to the session's search
    path.  A statement the row guard held is held again (``guarded``); a write is checked
    again for masked values written back (``writes``)."""

    __slots__ = (
        "changes", "check", "durable", "guarded", "kinds", "masks", "parts", "plans", "quiet", "reads", "redaction", "settings",
        "source", "span", "stamp", "strict", "transactional", "writes",
    )  # fmt: skip

    def __init__(
        self,
        kinds: tuple[str, ...],
        parts: list[str],
        stamp: tuple[object, ...],
        check: Check,
        plans: tuple[StatementPlan | None, ...],
        masks: StatementPlan | None,
        span: tuple[int, int],
        planned: tuple[tuple[bool, ...], tuple[bool, ...], bool] | None,
        redaction: int | None,
        guarded: bool = False,
        durable: bool = True,
        changes: bool = True,
    ) -> None:
        self.kinds = kinds
        self.guarded = guarded
        self.parts = parts  # the text between the constants
        self.stamp = stamp
        self.check = check
        self.plans = plans
        self.masks = masks  # the plan the audit record names (None: exempt, or no masking)
        self.span = span  # (start, characters after the end): the statement's text in the Query's
        # what SessionMasking.plan left: (strict, settings, whether it left its source)
        self.strict, self.settings, self.source = planned if planned is not None else ((), (), False)
        self.redaction = redaction  # see SessionAudit.shape_statement
        # whether it must wait for its record to be durable (Session._effect_durable, with
        # the catalog of the stamp)
        facts = check.verdict.facts[0]
        self.durable = durable
        self.changes = changes  # whether it may change data (Session._may_write)
        self.transactional = _transactional(facts)
        self.reads = _plain_read(facts)
        self.quiet = _quiet(facts)
        self.writes = any(f.statement_class == "WRITE" for f in check.verdict.facts)


_MAX_SHAPES = 128


def _copies_in(facts: StatementFacts) -> bool:
    """A COPY FROM STDIN: the server reads rows from the client."""
    return facts.copy is not None and facts.copy.direction == "from" and facts.copy.target is None


def _plain_read(facts: StatementFacts) -> bool:
    """A read that changes no row counter: no function at all (even a builtin), nothing
    but SELECT/VALUES/TABLE/SHOW, no flag of code with effects."""
    return (
        facts.command in _PLAIN_READS
        and _PLAIN_READS.issuperset(facts.commands)
        and not facts.functions
        and not changes_data(facts.command, facts.classes, facts.flags)
    )


# Transaction control and settings: they change no row of any table.  (A COMMIT runs the
# deferred triggers of the tables changed in the transaction: the row guard refuses changes
# to a table with deferrable triggers, and a change it did not measure makes the session
# forget what it knew of the row counters anyway.)
_QUIET = frozenset(
    {"BEGIN", "START TRANSACTION", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE", "ROLLBACK TO SAVEPOINT", "SET", "RESET"}
)


def _quiet(facts: StatementFacts) -> bool:
    """Changes no row counter and runs no code of the client's: a plain read, transaction
    control, a setting (see Guard.unseen_changes)."""
    if _plain_read(facts):
        return True
    return facts.command in _QUIET and _QUIET.issuperset(facts.commands) and not facts.functions and not facts.flags


def _transactional(facts: StatementFacts) -> bool:
    return transactional_only(facts.command, facts.commands, facts.classes, facts.flags, facts.functions)


def _gate_durable(chunk: _Chunk, durable: bool, transactional: bool) -> None:
    """A statement of ``chunk`` is forwarded: does the chunk wait for its record to be
    durable (``durable``: it may change data, see governance.durability)?  Not inside the
    client's open transaction block when a ROLLBACK undoes all it does (``transactional``):
    its COMMIT waits.  Any other statement may end the block: those after it wait."""
    if not (chunk.block and transactional):
        chunk.durable = chunk.durable or durable
    if not transactional:
        chunk.block = False


@dataclass(slots=True)
class ClientInfo:
    address: str
    tls: bool = False
    tls_version: str | None = None


@dataclass(slots=True)
class Session:
    """One client connection, from its first byte to its last.

    Thousands of idle sessions may be held at once: what a session needs only once it
    talks to the upstream is created then.
    """

    config: Config
    client: ClientInfo
    proxy_pid: int
    proxy_secret: bytes
    state: State = State.STARTUP
    identity: Identity | None = None
    connection_name: str | None = None
    startup: m.StartupMessage | None = None
    settings: Mapping[str, str] = field(default_factory=_empty)  # dbsentry.* startup options
    txn_status: str = "I"
    upstream_params: Mapping[str, str] = field(default_factory=_empty)  # from the upstream's login
    audit_config: AuditConfig | None = None
    audit: SessionAudit | None = None
    session_id: str = field(default_factory=lambda: secrets.token_hex(8))
    _cycles_sent: int = 0
    _cycles_done: int = 0
    # DDL completed in the open transaction: the catalog is read again once it ends (a
    # read before the COMMIT would see the old catalog, and keep it)
    _schema_pending: bool = False
    _startup_buf: bytes = b""
    _tls_starting: bool = False  # "S" sent to an SSLRequest, the handshake not done yet
    _client_frames: codec.FrameSplitter = field(init=False)
    _upstream_frames: codec.FrameSplitter = field(init=False)
    _upstream_fatal: bool = False
    _forward_options: str = ""
    _early: bytes = b""  # client bytes that arrived before the session was ready
    _busy: bool = False  # forwarded something the upstream has not answered with an idle Z
    # A statement that may have ended the transaction went upstream since the last
    # ReadyForQuery (an Execute of COMMIT answers before the Sync that reports the new
    # state): txn_status "T" may be stale.  Only the row guard asks (an attack round found
    # an Execute's COMMIT, then writes measured from a reading of the ended block).
    _block_unsure: bool = False
    governor: Governor | None = None
    masking_service: MaskingService | None = None
    # Each connection's catalog (functions that may change data), with or without masking.
    catalog_service: MaskingService | None = None
    masking: SessionMasking | None = None
    # The approvals service (JIT grants, approval requests), when approvals are on.
    approvals: GrantSource | None = None
    _environment: str = ""
    # Prepared statement name -> (SQL, what it was judged under (policy version, grants), the check).
    _prepared: dict[str, _Prepared] = field(default_factory=dict)
    # Portal name -> what it was bound to, kept when auditing, approving or guarding.
    _portals: dict[str, _Portal] = field(default_factory=dict)
    # Marker -> the ErrorResponse that replaces the upstream's error for a refused statement.
    _refusals: dict[str, bytes] = field(default_factory=dict)
    # Cycle number -> the marker of the refused Query that is that cycle.
    _marker_cycles: dict[int, str] = field(default_factory=dict)
    _marker_prefix: str = ""  # drawn at the first refusal
    _marker_seq: int = 0
    # Known server parameters per connection, for greeting clients without an upstream.
    server_params: ServerParams | None = None
    _told: Greeting | None = None  # what a lazily greeted client was told
    # The login key this session logs in upstream for (CONNECTING) or waits for (WAITING).
    _flight: LoginKey | None = None
    # The row guard (production sessions): follows the exchange, runs guarded statements.
    guard: Guard | None = None
    _limits: Limits | None = None
    # Client bytes held while a guarded statement runs (or waits for the upstream to be idle).
    _held: bytes | None = None
    # A pipeline segment with a statement that needs approval, held until its Sync or Flush.
    _segment: _Segment | None = None
    _await_idle: bool = False
    _armed: bytes | None = None  # the client chunk whose guarded statement the guard runs
    # Parse messages sent, oldest first: (name, the entry before, the entry it made), so a
    # Parse the server did not carry out (failed, skipped) is undone here too.
    _parse_log: deque[tuple[str, _Prepared | None, _Prepared | None]] | None = None
    # Server-side names a request changes (Parse, Close, SQL PREPARE, DEALLOCATE, DISCARD
    # ALL: statements; Bind, Close: portals), oldest first, until the server's answer says it
    # carried the request out (ParseComplete, BindComplete, CloseComplete, the CommandComplete
    # of the SQL command).  The server answers in order, so an error of the request's cycle
    # before that answer means it failed or was skipped: its names become unknown
    # (_renames_failed), and are then neither bound, executed nor made again here.  (An
    # attack round had a failed DEALLOCATE, re-Parse, PREPARE or re-Bind leave the server
    # running one statement while the trail named another, or none.)
    _renames: deque[_Rename] | None = None
    _unknown_names: set[str] | None = None  # statement names that may or may not exist upstream
    _frame_cycle: int = 0  # the cycle of the client message being governed
    # A COPY FROM STDIN forwarded (its cycle; 0: none) whose data has not ended yet: the
    # Syncs sent meanwhile (counted in _copy_syncs, not as cycles) are ignored by the server
    # once it reads the data (CopyInResponse: _copy_reading).
    _copy_cycle: int = 0
    _copy_syncs: int = 0
    _copy_reading: bool = False
    # Whether a Parse of this session held an SQL PREPARE, DEALLOCATE or DISCARD ALL: its
    # Executes change the names (see _check_sql_prepared).
    _sql_naming_parsed: bool = False
    _row_cap: RowCap | None = None  # agents in production: rows one result may return
    # SQL prepared statement names once prepared for a statement that changes rows.
    _risky_sql: set[str] = field(default_factory=set)
    # Prepared statement name -> the parameter types its Parse declared (binary values).
    _param_types: dict[str, tuple[int, ...]] = field(default_factory=dict)
    # (connection, upstream backend pid) -> the pid its client was given (the shell keeps
    # it for every session), and this session's own backend pid.
    backend_pids: Mapping[tuple[str, int], int] | None = None
    backend_pid: int = 0
    # The session's client_encoding as the server reports it, and the Python codec that
    # reads its text as the server does (a statement not yet answered may be changing it).
    client_encoding: str = encodings.UTF8
    enc: str = "utf-8"
    # earlier frames of this chunk, or of one before, are not answered yet
    _in_flight: bool = False
    # Rulings of allowed Queries by the key of their shape (see _ShapeRuling).
    _shapes: dict[str, _ShapeRuling] | None = None
    # Checks whose statements run without the guard, by id, with the catalog view (see
    # _runs_quietly).
    _quiet: dict[int, tuple[Check, MaskingView | None]] | None = None
    # What every Bind and Execute of a prepared statement asks of its check, by the
    # check's id, with the check (see _facts_of).
    _known: dict[int, tuple[Check, _CheckFacts, MaskingView | None]] | None = None

    def __post_init__(self) -> None:
        self._client_frames = codec.FrameSplitter(MAX_AUTH_MESSAGE)

    # ------------------------------------------------------------------ helpers

    @property
    def connection(self) -> ConnectionConfig | None:
        if self.connection_name is None:
            return None
        conn = self.config.connections.get(self.connection_name)
        # A MySQL connection is served by the MySQL listener, not this one.
        return conn if conn is not None and conn.engine == "postgres" else None

    def _fail(self, sqlstate: str, message: str, hint: str | None = None, **log: object) -> list[c.Command]:
        flight = self._leave_flight()
        self._enter(State.CLOSED)
        return [
            *flight,
            *self._closing(message),
            c.Log(logging.INFO, "session.refused", {"sqlstate": sqlstate, "reason": message, **log}),
            c.SendClient(fatal(sqlstate, message, hint)),
            c.CloseClient(),
            c.CloseUpstream(),
        ]

    def _enter(self, state: State) -> None:
        if state not in TRANSITIONS[self.state]:
            old = self.state
            self.state = State.CLOSED
            raise SessionStateError(f"session {self.session_id}: {old.value} -> {state.value} is not a transition")
        self.state = state

    # ------------------------------------------------------------------ events in

    def handle(self, event: Event) -> list[c.Command]:
        """Feed the session one event; the commands to carry out, in order.

        The session's only entry point.  The match is exhaustive (mypy checks
        ``assert_never``): an event added to :data:`~dbsentry.engines.postgres.session.events.Event`
        and not handled here is a type error, not a silent drop.
        """
        # The two events of every network read come first, by exact type: in CPython 3.11 a
        # class pattern that matches allocates (a set, a list and a tuple), which the hot
        # path need not pay.  Events are final, so mypy narrows them out of the match.
        if type(event) is ClientData:
            return self._on_client_data(event.data)
        if type(event) is UpstreamData:
            return self._on_upstream_data(event.data)
        match event:
            case PasswordVerified():
                return self._on_password_verified(event.identity)
            case UpstreamReady():
                return self._on_upstream_ready(event)
            case UpstreamFailed():
                return self._on_upstream_failed(event.sqlstate, event.message)
            case AuditFailed():
                return self._refuse_held(event.frames, event.records, "58000", AUDIT_UNAVAILABLE)
            case HeldRefused():
                return self._refuse_held(event.frames, event.records, event.sqlstate, event.message)
            case GuardApprovalAnswered():
                return self._on_guard_approval(event.approved, event.message)
            case ClientTLSStarted():
                return self._on_client_tls_started(event.version)
            case WaitedLoginEnded():
                return self._on_waited_login_ended()
            case LoginWaitTimedOut():
                return self._on_login_wait_timed_out()
            case StartupTimedOut():
                return self._on_startup_timed_out()
            case ClientClosed():
                return self._on_client_closed()
            case UpstreamClosed():
                return self._on_upstream_closed()
            case _:
                assert_never(event)

    # ------------------------------------------------------------------ client events

    def _on_client_data(self, data: bytes) -> list[c.Command]:
        try:
            if self.state is State.READY:
                return self._client_ready(data)
            if self.state is State.STARTUP:
                return self._client_startup(data)
            if self.state is State.GREETED:
                return self._client_greeted(data)
            if self.state is State.AUTH:
                return self._client_auth(data)
            if self.state is State.CLOSED:
                return []
            # VERIFYING / CONNECTING / OPENING: the client must wait for us; it may only
            # pipeline.
            return self._client_early(data)
        except codec.NotAStartupPacket as err:
            # PostgreSQL logs these and closes: the peer does not speak the protocol yet.
            self._enter(State.CLOSED)
            return [
                *self._closing(str(err)),
                c.Log(logging.INFO, "session.invalid_startup", {"reason": str(err), "client": self.client.address}),
                c.CloseClient(),
                c.CloseUpstream(),
            ]
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
            self._tls_starting = True
            return [c.SendClient(b"S"), c.StartClientTLS()]
        if isinstance(packet, m.GSSENCRequest):
            out: list[c.Command] = [c.SendClient(b"N")]
            return out + (self._client_startup(rest) if rest else [])
        if isinstance(packet, m.CancelRequest):
            self._enter(State.CLOSED)
            return [c.ForwardCancel(packet.pid, packet.secret)]
        return self._on_startup_message(packet, rest)

    def _on_client_tls_started(self, version: str | None) -> list[c.Command]:
        self._tls_starting = False
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
        if ours:
            self.settings = ours
        self._forward_options = rest_options
        self.connection_name = msg.get("database") or user
        self._enter(State.AUTH)
        out.append(c.SendClient(codec.AUTH_CLEARTEXT_FRAME))
        if rest:
            out.extend(self._client_auth(rest))
        return out

    def _client_auth(self, data: bytes) -> list[c.Command]:
        buf, spans = self._client_frames.split(data)
        for t, start, end in spans:
            if t != m.Q_PASSWORD:
                if t == m.Q_TERMINATE:
                    self._enter(State.CLOSED)
                    return [c.CloseClient()]
                raise codec.ProtocolError(f"expected a password message, got {chr(t)!r}")
            pw = buf[start:end]
            if pw.endswith(b"\x00"):
                pw = pw[:-1]
            try:
                password = pw.decode("utf-8")
            except UnicodeDecodeError:
                password = ""
            self._enter(State.VERIFYING)
            assert self.startup is not None
            # A client may pipeline its first queries behind the password: keep them for later.
            self._early = bytes(buf[end:]) + self._client_frames.take_pending()
            return [c.VerifyPassword(self.startup.get("user") or "", password)]
        return []

    def _client_early(self, data: bytes) -> list[c.Command]:
        # Queries pipelined before AuthenticationOk run once the session is ready, as with
        # PostgreSQL itself; they are kept (within the message cap) until then.
        self._early += data
        if len(self._early) > self.config.limits.max_message_bytes:
            raise codec.MessageTooLarge("too much data sent before authentication completed")
        return []

    def _on_password_verified(self, identity: Identity | LoginThrottled | None) -> list[c.Command]:
        if self.state is not State.VERIFYING:
            return []
        assert self.startup is not None
        user = self.startup.get("user") or ""
        if isinstance(identity, ControlPlaneUnavailable):
            # cannot_connect_now, as PostgreSQL says while it starts up: not the client's
            # credentials, try again (docs/deployment.md "Several nodes")
            return self._fail("57P03", identity.message, client=self.client.address, user=user)
        if isinstance(identity, LoginThrottled):
            return self._fail("28000", identity.message, client=self.client.address, user=user)
        if identity is None:
            return self._fail(
                "28P01", f'password authentication failed for user "{user}"', client=self.client.address, user=user
            )
        self.identity = identity
        conn = self.connection
        effective = self.approvals.effective_identity(identity) if self.approvals is not None else identity
        if conn is None:
            usable = [
                name
                for name, known in sorted(self.config.connections.items())
                if known.engine == "postgres"
                and (known.allow_groups is None
                or effective.groups & set(known.allow_groups)
                or (self.approvals is not None and self.approvals.connection_granted(identity.name, name)))
            ]
            return self._fail(
                "3D000",
                f'dbsentry: connection "{self.connection_name}" does not exist; '
                + (f"connections you can use: {', '.join(usable)}" if usable else "no connection is open to you"),
                "The database name picks the connection, e.g. dbname=" + usable[0] if usable else None,
                user=user,
            )
        granted = self.approvals is not None and self.approvals.connection_granted(identity.name, self.connection_name or "")
        if conn.allow_groups is not None and not (effective.groups & set(conn.allow_groups)) and not granted:
            return self._fail(
                "42501",
                f'dbsentry: identity "{identity.name}" is not allowed to use connection "{self.connection_name}"',
                user=user,
            )
        switched = self._role_switch_requested()
        if switched:
            return self._fail(
                "42501",
                f"dbsentry: setting {switched} at connection start is not allowed; the proxy decides the upstream role",
                user=user,
            )
        refused = self._startup_settings_refused()
        if refused is not None:
            return self._fail("42501", refused, user=user)
        assert self.connection_name is not None
        out: list[c.Command] = [
            c.Log(
                logging.INFO,
                "session.authenticated",
                {"identity": identity.name, "kind": identity.kind, "connection": self.connection_name},
            )
        ]
        return out + self._log_in(wait=True)

    def _log_in(self, wait: bool) -> list[c.Command]:
        """Greet the client from what is known of the server, or wait for another session's
        login that will tell (when ``wait``), or log in upstream."""
        name = self.connection_name
        assert name is not None
        cache = self.server_params
        settings = self._startup_settings() if cache is not None and self.config.lazy_upstream(name) else None
        if cache is not None and settings is not None:
            greeting = cache.greeting(name, settings)
            if greeting is not None:
                return self._greet_without_upstream(greeting)
            if wait:
                key = cache.login_key(name, settings)
                joined = cache.join_login(key, self.proxy_pid)
                self._flight = joined or key
                if joined is not None:
                    return self._wait_for_login()
                # No greeting is known and no login is under way to learn it: this one is,
                # and the clients with the same settings wait for it.
        self._enter(State.CONNECTING)
        return [c.OpenUpstream(name, self._upstream_startup())]

    def _wait_for_login(self) -> list[c.Command]:
        out: list[c.Command] = [c.Log(logging.DEBUG, "session.waiting_for_login", {"connection": self.connection_name})]
        if self.state is not State.WAITING:
            # Once per session: waking to wait for another login keeps the first deadline.
            conn = self.connection
            assert conn is not None and self.connection_name is not None
            out.append(c.WaitForLogin(self.connection_name, conn.connect_timeout_seconds))
        self._enter(State.WAITING)
        return out

    def _on_waited_login_ended(self) -> list[c.Command]:
        """The login this session waited for ended (:class:`~dbsentry.engines.postgres.session.commands.WakeWaiting`):
        greet the client from what it taught; else (it failed) log in upstream, or wait
        again when another woken session already does."""
        if self.state is not State.WAITING:
            return []
        self._flight = None  # it left the registry with the login that ended
        return self._log_in(wait=True)

    def _on_login_wait_timed_out(self) -> list[c.Command]:
        """Waited ``connect_timeout_seconds`` for another session's login: log in upstream."""
        if self.state is not State.WAITING:
            return []
        out = self._leave_flight()
        out.append(c.Log(logging.INFO, "session.login_wait_timed_out", {"connection": self.connection_name}))
        return out + self._log_in(wait=False)

    def _leave_flight(self) -> list[c.Command]:
        """Out of the single flight of logins (before the state changes): a waiting session
        stops waiting; the session that logged in for others wakes them."""
        key, cache = self._flight, self.server_params
        if key is None or cache is None:
            return []
        self._flight = None
        if self.state is State.WAITING:
            cache.leave_login(key, self.proxy_pid)
            return []
        waiting = cache.login_ended(key)
        return [c.WakeWaiting(waiting)] if waiting else []

    def _role_switch_requested(self) -> str | None:
        """A startup parameter or ``-c`` option that would change the upstream role."""
        assert self.startup is not None
        names = [k for k, _ in self.startup.params]
        for word in pg_split_opts(self._forward_options):
            names.append(word.removeprefix("-c").lstrip("-").partition("=")[0].replace("-", "_"))
        for name in names:
            if name.strip().lower() in _ROLE_SETTINGS:
                return name.strip().lower()
        return None

    def _upstream_startup(self) -> tuple[tuple[str, str], ...]:
        """The startup parameters of the upstream login: the client's, but for ours, then the
        proxy's own settings (PostgreSQL applies startup parameters after ``options``, in
        order, so these win)."""
        conn = self.connection
        assert conn is not None and self.startup is not None
        params: list[tuple[str, str]] = [("database", conn.database)]
        for k, v in self.startup.params:
            if k in _NOT_FORWARDED or k.startswith("_pq_.") or k.lower().startswith("dbsentry."):
                continue
            params.append((k, v))
        if self._forward_options:
            params.append(("options", self._forward_options))
        params.extend(self._forced_settings())
        return tuple(params)

    def _production(self) -> bool:
        conn, gov = self.connection, self.governor
        return conn is not None and gov is not None and conn.environment in gov.policy.production_environments

    def _forced_settings(self) -> list[tuple[str, str]]:
        """What the proxy sets upstream for this identity: the connection's role for it
        (``roles``), and for agents in production a read-only session with a statement
        timeout (least privilege at the database, whatever the parser missed)."""
        conn, identity = self.connection, self.identity
        if conn is None or identity is None:
            return []
        if self.approvals is not None:
            identity = self.approvals.effective_identity(identity)
        out: list[tuple[str, str]] = []
        if conn.roles is not None:
            role = conn.roles.role_for(identity.kind, identity.groups)
            if role:
                out.append(("role", role))
        if identity.kind == "agent" and self._production():
            out.append(("default_transaction_read_only", "on"))
            timeout = self.config.guardrails.agent_statement_timeout
            if timeout:
                out.append(("statement_timeout", timeout))
        return out

    def _startup_settings_refused(self) -> str | None:
        """Why the client's own startup settings are not allowed here (production only)."""
        gov = self.governor
        if gov is None or not self._production():
            return None
        settings = self._client_settings()
        if settings is None:
            return "dbsentry: connection options other than -c name=value are not allowed in production"
        agent = self.identity is not None and self.identity.kind == "agent"
        for name, value in settings:
            if agent and name in _AGENT_FORCED:
                return f"dbsentry: setting {name} at connection start is not allowed for agents; the proxy sets it"
            if name == "search_path" and _catalog_schemas_in(value):
                return "dbsentry: search_path at connection start may not name information_schema or pg_toast in production"
            if name not in _ALWAYS_ALLOWED and not gov.setting_allowed(name):
                return (
                    f"dbsentry: setting {name} at connection start is not allowed in production; it is not on the "
                    "allow-list of settings (a policy adds names with baseline.allow_settings)"
                )
        return None

    def _startup_settings(self) -> list[Setting] | None:
        """The settings the upstream login applies, in its order (``options`` first, then the
        startup parameters, then the proxy's own), names in lower case; None when
        ``options`` holds a switch other than ``-c name=value`` (its effect on the server's
        parameters is not known)."""
        settings = self._client_settings()
        if settings is None:
            return None
        return settings + [(k, v) for k, v in self._forced_settings()]

    def _client_settings(self) -> list[Setting] | None:
        """The client's own settings of :meth:`_startup_settings`."""
        assert self.startup is not None
        out: list[Setting] = []
        words = pg_split_opts(self._forward_options) if self._forward_options else []
        for i in range(0, len(words), 2):
            # split_options leaves dbsentry's own out and every other setting as "-c name=value".
            if words[i] != "-c" or i + 1 >= len(words) or "=" not in words[i + 1]:
                return None
            name, _, value = words[i + 1].partition("=")
            out.append((name.replace("-", "_").lower(), value))
        for k, v in self.startup.params:
            if k in _NOT_FORWARDED or k.startswith("_pq_.") or k.lower().startswith("dbsentry."):
                continue
            out.append((k.lower(), v))
        return out

    def _logged_in(self, application_name: str | None) -> list[c.Command]:
        """The client is logged in (with or without an upstream yet): audit it, and take
        full-size messages from now on."""
        conn = self.connection
        self._environment = conn.environment if conn is not None else ""
        out: list[c.Command] = []
        if self.audit_config is not None and self.identity is not None and conn is not None:
            assert self.connection_name is not None and self.startup is not None
            self.audit = SessionAudit(
                self.audit_config,
                self.session_id,
                self.identity,
                self.connection_name,
                self._environment,
                conn.database,
                self.client.address,
                self.client.tls_version,
                application_name or self.startup.get("application_name"),
            )
            out.append(c.Audit(self.audit.session_event("opened")))
        self._client_frames = codec.FrameSplitter(self.config.limits.max_message_bytes)
        out.append(c.LoginComplete())
        return out

    def _greet_without_upstream(self, greeting: Greeting) -> list[c.Command]:
        assert self.startup is not None
        self._enter(State.GREETED)
        self._told = greeting
        self.txn_status = greeting.status
        settings = self._startup_settings() or ()
        told = list(greeting.told(given_application_name(settings)))
        out = self._logged_in(dict(told).get("application_name"))
        frames = [codec.AUTH_OK_FRAME]
        frames.extend(codec.encode_parameter_status(k, v) for k, v in told)
        frames.append(codec.encode_backend_key(self.proxy_pid, self.proxy_secret))
        frames.append(codec.encode_ready(greeting.status))
        out.append(c.SendClient(b"".join(frames)))
        if self._early:
            early, self._early = self._early, b""
            out.extend(self._client_greeted(early))
        return out

    def _client_greeted(self, data: bytes) -> list[c.Command]:
        """Logged in without an upstream: open it for the first message that needs it."""
        buf, spans = self._client_frames.split(data)
        replies: list[bytes] = []
        out: list[c.Command] = []
        for t, start, _end in spans:
            if t == m.Q_SYNC:
                replies.append(codec.encode_ready(self.txn_status))
            elif t in _NO_DATABASE_NEEDED:
                continue
            elif t == m.Q_TERMINATE:
                if replies:
                    out.append(c.SendClient(b"".join(replies)))
                self._enter(State.CLOSED)
                return [*out, *self._closing("client terminated"), c.CloseClient()]
            else:
                # Kept as it came; processed exactly as in a ready session once it is.
                self._early = bytes(buf[start - 5 :]) + self._client_frames.take_pending()
                self._enter(State.OPENING)
                assert self.connection_name is not None
                if replies:
                    out.append(c.SendClient(b"".join(replies)))
                out.append(c.Log(logging.DEBUG, "session.upstream_opening", {"connection": self.connection_name}))
                out.append(c.OpenUpstream(self.connection_name, self._upstream_startup()))
                return out
        if replies:
            out.append(c.SendClient(b"".join(replies)))
        return out

    # ------------------------------------------------------------------ upstream login

    def _on_upstream_ready(self, ready: UpstreamReady) -> list[c.Command]:
        if self.state is State.CONNECTING:
            out = self._logged_in(ready.params.get("application_name"))
            out.append(
                c.SendClient(
                    b"".join(
                        (
                            codec.AUTH_OK_FRAME,
                            ready.parameter_frames,
                            codec.encode_backend_key(self.proxy_pid, self.proxy_secret),
                            codec.encode_ready(ready.status),
                        )
                    )
                )
            )
        elif self.state is State.OPENING:
            out = []
            news = self._news_since_greeting(ready)
            if news:
                out.append(c.SendClient(news))
        else:
            return [c.CloseUpstream()]
        self._enter(State.READY)
        if self.server_params is not None and self.connection_name is not None:
            settings = self._startup_settings()
            if settings is not None:
                self.server_params.learn(self.connection_name, settings, ready.params, ready.status)
        # The clients that waited for this login can be greeted from what it taught now.
        out.extend(self._leave_flight())
        self.upstream_params = dict(ready.params)
        self.backend_pid = ready.backend_pid
        self._set_encoding(ready.params.get("client_encoding", encodings.UTF8))
        self.txn_status = ready.status
        self._upstream_frames = codec.FrameSplitter(self.config.limits.max_message_bytes)
        self._start_guard()
        if self.masking_service is not None:
            assert self.connection_name is not None
            # Results are followed for every session; who is exempt is decided per
            # statement, so a just-in-time grant counts only while it lasts.
            self.masking = SessionMasking(
                self.masking_service,
                self.connection_name,
                self._masking_exempt,
                safety_net=self.masking_service.safety_net_for(self._production()),
                enc=self.enc,
            )
            conn = self.connection
            users = [conn.user, *(v for k, v in self._forced_settings() if k == "role")] if conn is not None else []
            self.masking.start_search_path(self._client_settings(), users)
        if ready.leftover:
            out.extend(self._on_upstream_data(ready.leftover))
        if self._early:
            early, self._early = self._early, b""
            out.extend(self._on_client_data(early))
        return out

    def _start_guard(self) -> None:
        """Production sessions of people run data-changing statements under the row guard
        (agents change nothing: their sessions are read-only upstream)."""
        gov, conn, identity = self.governor, self.connection, self.identity
        if gov is None or conn is None or identity is None:
            return
        if self._environment not in gov.policy.production_environments:
            return
        cfg = self.config.guardrails
        if identity.kind == "agent":
            if cfg.agent_max_rows is not None:
                self._row_cap = RowCap(cfg.agent_max_rows, self._marked_error)
            return
        limits = cfg.limits_for(conn.guardrails, identity.kind, identity.groups)
        if limits.max_rows_changed is None and limits.max_fraction_changed is None:
            return
        self._limits = Limits(
            limits.max_rows_changed, limits.max_fraction_changed, cfg.min_rows_for_fraction
        )
        # The upstream connection is the session's own, opened for it (no pool hands
        # backends on): nothing it ran so far changed rows.
        flush = _major_version(self.upstream_params.get("server_version", "")) >= 15
        self.guard = Guard(self.config.limits.max_message_bytes, self._guard_error, fresh=True, flush=flush)

    def _guard_error(self, message: str) -> bytes:
        return self._marked_error("42501", message)

    def _marked_error(self, sqlstate: str, message: str) -> bytes:
        """An error of the proxy's own, carrying a marker that becomes ``message`` on its way
        out (see :meth:`_refuse`): masking never mistakes it for the server's error."""
        marker = self._refuse(message, sqlstate, [], log=False)
        return codec.error_response(sqlstate, marker)

    def _news_since_greeting(self, ready: UpstreamReady) -> bytes:
        """What the upstream's login said that the client was not told when greeted:
        ParameterStatus values that differ (they may come at any time), and notices."""
        assert self._told is not None
        told = dict(self._told.told(given_application_name(self._startup_settings() or ())))
        self._told = None
        buf = ready.parameter_frames
        _, spans = codec.FrameSplitter().split(buf)
        news: list[bytes] = []
        for t, start, end in spans:
            if t == m.R_PARAMETER_STATUS:
                ps = codec.decode_parameter_status(buf, start, end)
                if told.get(ps.name) == ps.value:
                    continue
            news.append(buf[start - 5 : end])
        return b"".join(news)

    def _on_upstream_failed(self, sqlstate: str, message: str) -> list[c.Command]:
        if self.state is State.CLOSED:
            return []
        return self._fail(sqlstate, message, connection=self.connection_name)

    # ------------------------------------------------------------------ query cycles

    @property
    def pending_syncs(self) -> int:
        """ReadyForQuery messages the upstream still owes (one per Query, Sync, FunctionCall)."""
        return self._cycles_sent - self._cycles_done

    def _client_ready(self, data: bytes) -> list[c.Command]:
        if self._held is not None:
            # A guarded statement is running: what comes after it waits (see _hold_rest).
            self._held += data
            if len(self._held) > self.config.limits.max_message_bytes:
                raise codec.MessageTooLarge("too much data sent while a guarded statement was running")
            return []
        buf, spans = self._client_frames.split(data)
        return self._process(buf, spans, None) if spans else []

    def _hold_rest(self, chunk: _Chunk, buf: bytes, stop: int) -> None:
        """Forward nothing from ``stop`` on: keep it (and what follows) for later."""
        chunk.cut(stop)
        self._held = bytes(buf[stop:]) + self._client_frames.take_pending()

    def _release_held(self) -> list[c.Command]:
        """The guarded statement is over (or the upstream idle): go on with what was held."""
        held, self._held = self._held, None
        self._await_idle = False
        if not held or self.state is not State.READY:
            return []
        buf, spans = self._client_frames.split(held)
        return self._process(buf, spans, None) if spans else []

    def _refuse_held(
        self,
        frames: tuple[bytes, list[tuple[int, int, int]]],
        records: Sequence[Record],
        sqlstate: str,
        message: str,
    ) -> list[c.Command]:
        """Held frames will not run after all (audit unavailable, approval refused)."""
        if self.state is not State.READY:
            return []
        out: list[c.Command] = []
        if self.audit is not None and records:
            done = self.audit.refused((r.id for r in records), sqlstate, message)
            out.extend(c.Audit(r) for r in done)
        buf, spans = frames
        out.extend(self._process(buf, spans, message, sqlstate))
        guard = self.guard
        if guard is not None and guard.active and buf is self._armed:
            # The guarded statement was among them: it is refused like the others, and
            # what the client sent after it goes on.
            guard.cancel()
            out.extend(self._release_held())
        return out

    def _process(
        self, buf: bytes, spans: list[tuple[int, int, int]], refuse: str | None, refuse_state: str = "58000"
    ) -> list[c.Command]:
        """Forward one chunk of complete client frames, governed and audited.

        With ``refuse`` (a second pass after the audit store failed), every statement in
        the chunk is refused with that message instead; cycles were counted already.
        """
        gov = self.governor
        guard = self.guard if refuse is None else None
        if refuse is not None and self.guard is not None:
            self.guard.forget_baseline()  # what this pass sends is not followed
            self.guard.unseen_changes()
        chunk = _Chunk(buf)
        # In the client's open transaction block, with nothing in flight that could end it.
        chunk.block = self.txn_status == "T" and not self._busy and self._cycles_sent == self._cycles_done
        chunk.in_block = (
            self.txn_status == "T" and guard is not None and not guard.exchange.runs_pending and not self._block_unsure
        )
        if spans and spans[-1][2] < len(buf):
            chunk.cut(spans[-1][2])  # a second pass over the frames a held chunk sent
        terminate = False
        sent = spans
        # The unit of all-or-none admission is the pipeline segment up to its Sync or Flush
        # (or a Query, a FunctionCall), not what one read holds: from the first Execute that
        # needs approval in a segment, the frames wait for the segment's end.  ``hold`` is
        # where they start: (span index, frame start, gated records, approval asks) before it.
        asking = refuse is None and self.approvals is not None
        carry = self._segment if asking else None
        hold: tuple[int, int, int, int] | None = None if carry is None else (0, 0, 0, 0)
        for i, (t, start, end) in enumerate(spans):
            if (
                guard is not None
                and t == m.Q_QUERY
                and not guard.exchange.idle
                and not guard.exchange.skipping
                and self._guards_query(buf, start, end)
            ):
                # Its mode depends on the transaction state: wait until earlier requests are
                # answered (a Flush makes the server answer a batch that has no Sync yet).
                self._hold_rest(chunk, buf, start - 5)
                self._await_idle = True
                chunk.extra = codec.FLUSH
                sent = spans[:i]
                break
            # A Query (or FunctionCall) sent while the server skips to Sync is discarded
            # unanswered: it is no cycle.
            discarded = guard is not None and (t == m.Q_QUERY or t == m.Q_FUNCTION_CALL) and guard.exchange.skipping
            if t == m.Q_SYNC and self._copy_cycle and refuse is None:
                # The server ignores a Sync while a COPY reads the client's data (libpq sends
                # one right behind the COPY's Execute): no cycle, unless the COPY fails first
                # (see _copy_failed).  An attack round had the session's count shift by one
                # there, every later outcome taken for the one before it.
                self._copy_syncs += 1
                discarded = self._copy_reading  # known to be ignored: not even asked of the guard
            elif t == m.Q_QUERY or t == m.Q_SYNC or t == m.Q_FUNCTION_CALL:
                if refuse is None and not discarded:
                    self._cycles_sent += 1
            elif t == m.COPY_DONE or t == m.Q_COPY_FAIL:
                self._copy_cycle = 0  # the COPY's data ends: Syncs count again
            elif t == m.Q_TERMINATE:
                chunk.cut(start - 5)
                terminate = True
                sent = spans[:i]
                break
            if refuse is not None:
                self._refuse_frame(chunk, t, start, end, refuse, refuse_state)
                continue
            parse_name: str | None = None
            if guard is not None and t == m.Q_PARSE:
                parse_name, _ = codec.read_cstr(buf, start, end, self.enc)
                before = self._prepared.get(parse_name)
            chunk.names = None
            chunk.reads = chunk.quiet = False
            if gov is not None and t in _GOVERNED_FRAMES:
                gated = len(chunk.gated)
                asks = len(chunk.approvals) if asking and t == m.Q_EXECUTE else 0
                self._in_flight = self._busy or i > 0 or carry is not None
                # (a Query's or Sync's cycle was counted above; other messages end with the next Sync)
                self._frame_cycle = self._cycles_sent if t == m.Q_QUERY or t == m.Q_FUNCTION_CALL else self._cycles_sent + 1
                try:
                    self._govern_frame(gov, chunk, t, start, end)
                except Exception as err:  # fail closed, and keep the session
                    self._analysis_failed(chunk, t, start, end, err, gated)
                if chunk.copies_in:
                    chunk.copies_in = False
                    self._copy_cycle, self._copy_syncs, self._copy_reading = self._frame_cycle, 0, False
                if asking:
                    if t in _SEGMENT_ENDS:
                        hold = None
                    elif hold is None and t == m.Q_EXECUTE and len(chunk.approvals) > asks:
                        hold = (i, start - 5, gated, asks)
            elif asking and gov is not None and t in _SEGMENT_ENDS:
                hold = None
            if self.masking is not None:
                self.masking.sent(t, buf, start, end, chunk.plans, chunk.names)
                chunk.plans = ()
            if guard is not None:
                if parse_name is not None:
                    if self._parse_log is None:
                        self._parse_log = deque()
                    self._parse_log.append((parse_name, before, self._prepared.get(parse_name)))
                guarded = chunk.guarded
                if guarded is None:
                    if not discarded:
                        guard.exchange.sent(t)
                        if not chunk.reads and t not in _RUNS_NOTHING:
                            guard.forget_baseline()  # it may change the row counters
                            self._block_unsure = True  # ... or end the transaction
                            chunk.in_block = False
                            if not chunk.quiet:
                                guard.unseen_changes()  # ... unmeasured
                    continue
                chunk.guarded = None
                self._wrap_guarded(guard, chunk, guarded, start, end)
                self._hold_rest(chunk, buf, end)
                sent = spans[: i + 1]
                break
        frames = (buf, sent)
        if hold is not None and self._held is not None:
            # A guarded statement (or a Query waiting for the upstream to be idle, behind a
            # Flush of ours) ends what can go now: it goes.  (After a Terminate, what is
            # held stays unrun: the session ends, see _closing.)
            hold = None
        if carry is not None or hold is not None:
            out, frames = self._hold_segment(chunk, sent, carry, hold)
        else:
            out = chunk.assemble()
        cmds = chunk.commands
        if out:
            self._busy = True
            send = c.SendUpstream(out)
            if chunk.approvals or (chunk.gated and self.audit is not None and self.audit.wait):
                cmds.append(c.AuditGate(chunk.gated, [send], frames, chunk.approvals, chunk.durable))
            else:
                if chunk.gated:
                    cmds.extend(c.Audit(r) for r in chunk.gated)
                cmds.append(send)
        if terminate:
            self._enter(State.CLOSED)
            # CloseUpstream says goodbye to the upstream with its own Terminate.
            cmds.extend(self._closing("client terminated"))
            cmds.extend((c.CloseUpstream(), c.CloseClient()))
        return cmds

    def _hold_segment(
        self,
        chunk: _Chunk,
        sent: list[tuple[int, int, int]],
        carry: _Segment | None,
        hold: tuple[int, int, int, int] | None,
    ) -> tuple[bytes, tuple[bytes, list[tuple[int, int, int]]]]:
        """Keep the frames from ``hold`` on (an unfinished segment) for later, and put the
        frames held before (``carry``) in front of the rest: what to forward now and the
        frames it comes from.  ``chunk.gated`` and ``chunk.approvals`` are left with
        those of what is forwarded now."""
        buf = chunk.buf
        self._segment = None
        if hold is None:
            stop = sent[-1][2] if sent else 0
            now = _Segment([bytes(buf[:stop])], stop, list(sent), [chunk.assemble()], chunk.gated, chunk.approvals, chunk.durable)
        else:
            k, pos, gi, ai = hold
            assert not chunk.extra  # only a guarded Query adds frames, and it ends the segment
            stop = sent[-1][2] if sent else 0
            later = _Segment(
                [bytes(buf[pos:stop])],
                stop - pos,
                [(t, s - pos, e - pos) for t, s, e in sent[k:]],
                [chunk.part(pos, stop)],
                chunk.gated[gi:],
                chunk.approvals[ai:],
                chunk.durable,
            )
            if carry is not None and pos == 0:
                later = carry.then(later)  # nothing ended in this read
                carry = None
            self._segment = later
            if later.size > self.config.limits.max_message_bytes:
                raise codec.MessageTooLarge(
                    f"a pipeline segment with a statement that needs approval exceeds limits.max_message_bytes "
                    f"({self.config.limits.max_message_bytes} bytes) before its Sync or Flush; nothing of it was run"
                )
            now = _Segment(
                [bytes(buf[:pos])], pos, sent[:k], [chunk.part(0, pos)], chunk.gated[:gi], chunk.approvals[:ai], chunk.durable
            )
        if carry is not None:
            now = carry.then(now)
        chunk.gated = now.gated
        chunk.approvals = now.approvals
        chunk.durable = now.durable
        raw = b"".join(now.raw)
        if self._armed is buf:
            self._armed = raw  # the guard knows its chunk by its frames (see _refuse_held)
        return b"".join(now.out), (raw, now.spans)

    def _analysis_failed(self, chunk: _Chunk, t: int, start: int, end: int, err: Exception, gated: int) -> None:
        """Analysing the frame's statement raised: refuse it (fail closed), keep the session."""
        error: bytes | None = None
        if isinstance(err, codec.BadEncoding):
            # As PostgreSQL answers text its client encoding cannot read.
            sqlstate = "22021"
            message = f'invalid byte sequence for encoding "{self.client_encoding}": ' + " ".join(
                f"0x{b:02x}" for b in err.raw
            )
            error = codec.error_response(sqlstate, message, hint=_NOT_SENT_HINT)
        elif isinstance(err, RecursionError) or getattr(err, "sqlstate", None) == "54001":
            sqlstate, message = "54001", "dbsentry: statement too complex to analyse; it was not run"
        else:
            sqlstate, message = "XX000", f"dbsentry: the statement could not be analysed ({type(err).__name__}); it was not run"
        chunk.guarded = None
        chunk.plans = ()
        records = chunk.gated[gated:]
        del chunk.gated[gated:]
        if self.audit is not None and records:
            chunk.commands.extend(c.Audit(r) for r in records)
            chunk.commands.extend(c.Audit(r) for r in self.audit.refused((r.id for r in records), sqlstate, message))
        level = logging.WARNING if error is not None else logging.ERROR
        chunk.commands.append(c.Log(level, "statement.analysis_failed", {"error": repr(err)[:500], "sqlstate": sqlstate}))
        if t == m.Q_PARSE:
            name, _ = codec.read_cstr(chunk.buf, start, end, self.enc)
            self._refused_parse(name)
            marker = self._refuse(message, sqlstate, chunk.commands, log=False, error=error)
            chunk.replace(start, end, codec.encode_parse(m.Parse(name, self._marker_sql(marker)), self.enc))
        elif t == m.Q_BIND:
            bind = codec.decode_bind(chunk.buf, start, end, self.enc)
            marker = self._refuse(message, sqlstate, chunk.commands, log=False, error=error)
            chunk.replace(start, end, codec.encode_bind(m.Bind(bind.portal, marker), self.enc))
        elif t == m.Q_QUERY and error is not None:
            marker = self._refuse(message, sqlstate, chunk.commands, log=False, error=error)
            chunk.replace(start, end, self._marker_query(marker))
        else:
            self._refuse_frame(chunk, t, start, end, message, sqlstate, first_pass=True)
        if not records and t in (m.Q_QUERY, m.Q_PARSE):
            pos = start if t == m.Q_QUERY else codec.read_cstr(chunk.buf, start, end, self.enc)[1]
            z = chunk.buf.find(b"\x00", pos, end)
            raw = bytes(chunk.buf[pos : min(z if z >= 0 else end, pos + 16384)]).decode(self.enc, "replace")
            self._audit_refused(chunk, raw[:4096], message)

    def _refuse_frame(
        self, chunk: _Chunk, t: int, start: int, end: int, message: str, sqlstate: str, first_pass: bool = False
    ) -> None:
        if t == m.Q_QUERY or t == m.Q_FUNCTION_CALL:
            marker = self._refuse(message, sqlstate, chunk.commands)
            chunk.replace(start, end, self._marker_query(marker) if first_pass else codec.encode_query(self._marker_sql(marker)))
        elif t == m.Q_EXECUTE:
            # Executing a portal that does not exist fails upstream, in order, with the marker.
            marker = self._refuse(message, sqlstate, chunk.commands)
            chunk.replace(start, end, codec.encode_execute(m.Execute(marker), self.enc))

    def _govern_frame(self, gov: Governor, chunk: _Chunk, t: int, start: int, end: int) -> None:
        buf = chunk.buf
        names = ("", "")
        bind: _BindParts | None = None
        if t in _NAMED_FRAMES:
            if t == m.Q_BIND and (self.audit is not None or self.approvals is not None or self.guard is not None):
                try:
                    bind = _decode_bind(buf, start, end, self.enc)  # needed below: read once
                    names = (bind[0], bind[1])
                except codec.ProtocolError:
                    names = self._frame_names(t, buf, start, end)  # the names first, as always
            else:
                names = self._frame_names(t, buf, start, end)
            chunk.names = names
            if names[0].startswith(_RESERVED_PREFIX) or names[-1].startswith(_RESERVED_PREFIX):
                marker = self._refuse(_RESERVED_MESSAGE, "42501", chunk.commands)
                chunk.replace(start, end, codec.encode_execute(m.Execute(marker), self.enc))  # fails like any error
                if t == m.Q_EXECUTE and (self.audit is not None or self.approvals is not None):
                    self._execute_frame(chunk, codec.decode_execute(buf, start, end, self.enc).portal)
                return
        if t == m.Q_QUERY:
            self._govern_query(gov, chunk, start, end)
        elif t == m.Q_PARSE:
            self._govern_parse(gov, chunk, start, end)
        elif t == m.Q_BIND:
            refusals = self._marker_seq
            portal, name = names
            self._govern_bind(gov, chunk, start, end, portal, name, bind)
            if self.guard is not None and self._marker_seq == refusals:
                self._guard_bind(chunk, portal, name)
        elif t == m.Q_EXECUTE:
            if self.audit is not None or self.approvals is not None or self.guard is not None:
                portal = names[0]
                if buf.find(b"\x00", start, end) + 5 > end:
                    codec.decode_execute(buf, start, end, self.enc)  # too short: raises as it would
                if portal not in self._portals:
                    # Not bound through this session, or bound by a request that may have
                    # failed: the server may hold another statement under the name.
                    message = f'portal "{portal}" is not known to dbsentry in this session (its Bind failed or was never made); bind it again'
                    marker = self._refuse(message, "34000", chunk.commands)
                    chunk.replace(start, end, codec.encode_execute(m.Execute(marker), self.enc))
                    if portal:  # (the unnamed one: after a refused Parse or Bind of the same pipeline)
                        self._audit_refused(chunk, f"<Execute of portal {portal[:200]}>", message)
                    return
                if self.audit is not None or self.approvals is not None:
                    self._execute_frame(chunk, portal)
                if self._sql_naming_parsed:
                    named = self._sql_naming_executed(gov, portal)
                    if named is not None:
                        self._refuse_frame(chunk, t, start, end, named.decision.message or "refused", named.decision.sqlstate)
                        return
                if self.guard is not None:
                    refused = self._guard_execute(chunk, portal)
                    if refused is not None:
                        self._refuse_frame(chunk, t, start, end, refused, "42501")
        elif t == m.Q_FUNCTION_CALL:
            self._govern_function_call(gov, chunk, start, end)
        elif t == m.Q_CLOSE:
            kind, name = names
            if kind == "S":
                self._prepared.pop(name, None)
            else:
                self._portals.pop(name, None)
            self._renamed(kind == "P", (name,), b"3")

    def _frame_names(self, t: int, buf: bytes, start: int, end: int) -> tuple[str, str]:
        """The names an extended-protocol message gives: (portal, statement) of a Bind,
        (kind, name) of a Describe or Close, (name, name) of a Parse or an Execute."""
        if t == m.Q_BIND:
            portal, pos = codec.read_cstr(buf, start, end, self.enc)
            return portal, codec.read_cstr(buf, pos, end, self.enc)[0]
        if t == m.Q_DESCRIBE or t == m.Q_CLOSE:
            # codec.decode_describe_or_close inline for a well-formed one (every statement
            # of pgbench -M prepared has its Describe); anything else is left to it.
            kind = buf[start] if start < end else 0
            z = buf.find(b"\x00", start + 1, end) if kind == 83 or kind == 80 else -1  # S, P
            if z < 0:
                return codec.decode_describe_or_close(buf, start, end, self.enc)
            return "S" if kind == 83 else "P", buf[start + 1 : z].decode(self.enc, "surrogateescape")
        # Parse, Execute: the name comes first (codec.read_cstr inline: every Execute has one)
        z = buf.find(b"\x00", start, end)
        name = buf[start:z].decode(self.enc, "surrogateescape") if z >= 0 else codec.read_cstr(buf, start, end, self.enc)[0]
        return name, name

    # ------------------------------------------------------------------ governance

    def _check(self, gov: Governor, sql: str) -> Check:
        assert self.identity is not None and self.connection_name is not None
        identity = self.identity
        if self.approvals is not None:
            # Just-in-time grants count while they last; after expiry the next statement
            # is judged without them.
            identity = self.approvals.effective_identity(identity)
        view = self.catalog_service.current(self.connection_name) if self.catalog_service is not None else None
        check = gov.check(
            sql,
            identity,
            self.connection_name,
            self._environment,
            view.functions if view else None,
            classes_from(view.catalog, view.classmap) if view else None,
        )
        if check.allowed and self._production():
            refused = self._agent_timeout_raised(check) if identity.kind == "agent" else None
            refused = refused or self._search_path_refused(check)
            if refused is not None:
                return refused
        if any((f.prepared_name or "").startswith(_RESERVED_PREFIX) for f in check.verdict.facts):
            return _refusal(check, "dbsentry.reserved_names", _RESERVED_MESSAGE.removeprefix("dbsentry: "))
        conn = self.connection
        if conn is not None and conn.roles is not None and any("role_switch" in f.flags for f in check.verdict.facts):
            return _refusal(
                check,
                "connection.roles",
                f"the upstream role is set by the proxy (connections.{self.connection_name}.roles) and cannot be changed",
            )
        return check

    def _search_path_refused(self, check: Check) -> Check | None:
        """A search path that puts information_schema or pg_toast before the user's schemas
        would make unqualified writes land in the catalogs."""
        for facts in check.verdict.facts:
            if "search_path" not in facts.settings:
                continue
            for value in setting_values(facts.text, "search_path"):
                if value is not None and not (isinstance(value, str) and not _catalog_schemas_in(value)):
                    return _refusal(
                        check,
                        "baseline.prod.settings",
                        "in production search_path may not name information_schema or pg_toast, nor be set from "
                        "something that is not a constant",
                    )
        return None

    def _agent_timeout_raised(self, check: Check) -> Check | None:
        """An agent may lower the statement timeout the proxy set, never raise or remove it."""
        limit = _duration_ms(self.config.guardrails.agent_statement_timeout or "")
        if limit is None:
            return None
        for facts in check.verdict.facts:
            if "statement_timeout" not in facts.settings:
                continue
            for value in setting_values(facts.text, "statement_timeout"):
                if value is None:
                    continue  # RESET / DEFAULT: back to the proxy's value
                ms = _duration_ms(value) if isinstance(value, str) else None
                if ms is None or ms <= 0 or ms > limit:
                    return _refusal(
                        check,
                        "guardrails.agent_statement_timeout",
                        f"agents may lower statement_timeout, not raise it above "
                        f"{self.config.guardrails.agent_statement_timeout} or turn it off",
                    )
        return None

    def _judged_under(self, gov: Governor) -> str:
        """What a prepared statement's decision depends on besides its text: the policy
        version and, with just-in-time grants, the groups the identity has right now."""
        if self.approvals is None or self.identity is None:
            return gov.version
        groups = self.approvals.effective_identity(self.identity).groups
        return f"{gov.version}:{','.join(sorted(groups))}"

    def _approvable(self, check: Check) -> bool:
        """Whether the statement may run once approved (rather than being refused now)."""
        return self.approvals is not None and check.decision.action == "require_approval"

    def _approval_key(self, sql: str, params: Sequence[str | None] | None) -> str:
        """The key an approval of ``sql`` with ``params`` (the exact bound values; None
        for the simple protocol) is stored under, for this identity and connection."""
        assert self.identity is not None and self.connection_name is not None
        return statement_key(self.identity.name, self.connection_name, sql, params, tokens)

    def _too_long(self, sql_bytes: int) -> str | None:
        limit = self.config.limits.max_statement_bytes
        if sql_bytes > limit:
            return (
                f"dbsentry: statement of {sql_bytes} bytes exceeds the limit of {limit} bytes "
                "(limits.max_statement_bytes)"
            )
        return None

    def _govern_query(self, gov: Governor, chunk: _Chunk, start: int, end: int) -> None:
        buf = chunk.buf
        too_long = self._too_long(end - start - 1)
        if too_long:
            marker = self._refuse(too_long, "54000", chunk.commands)
            chunk.replace(start, end, self._marker_query(marker))
            self._audit_refused(chunk, bytes(buf[start : min(end, start + 4096)]).decode(self.enc, "replace"), too_long)
            return
        unsure = self._unreadable(buf, start, end)
        sql = codec.query_sql(buf, start, end, self.enc)
        if unsure is None and self._in_flight and not buf[start:end].isascii():
            unsure = self._reads_alike(gov, bytes(buf[start : end - 1]), sql)
        if unsure:
            marker = self._refuse(unsure, "55000", chunk.commands)
            chunk.replace(start, end, self._marker_query(marker))
            self._audit_refused(chunk, sql[:4096], unsure)
            return
        shaped = _shape.split(sql) if not gov.policy.uses_time and buf[start:end].isascii() else None
        stamp: tuple[object, ...] = ()
        source: object = None
        if shaped is not None:
            stamp = self._shape_stamp(gov)
            ruling = self._shapes.get(shaped[0]) if self._shapes is not None else None
            if (
                ruling is not None
                and ruling.stamp == stamp
                and _shape.same_kinds(shaped[1], ruling.kinds)
                and self._apply_shape(chunk, sql, shaped[1], ruling)
            ):
                return
            source = self.masking.planned_state()[2] if self.masking is not None else None
        check = self._check(gov, sql)
        if check.allowed:
            check = self._check_sql_prepared(gov, check)
        plans: tuple[StatementPlan | None, ...] = ()
        approvable = self._approvable(check)
        if check.allowed or approvable:
            check, plans = self._mask_plans(sql, check)
            approvable = self._approvable(check)
        if check.allowed and self.guard is not None:
            problem = self._guard_query(chunk, check, sql)
            if problem is not None:
                marker = self._refuse(problem, "42501", chunk.commands)
                chunk.replace(start, end, self._marker_query(marker))
                self._audit_refused(chunk, sql, problem)
                return
        audit = self.audit
        if check.allowed or approvable:
            chunk.plans = plans
            chunk.copies_in = check.allowed and any(_copies_in(f) for f in check.verdict.facts)
            # (only the row guard asks: see Guard.forget_baseline)
            chunk.reads = self.guard is not None and all(_plain_read(f) for f in check.verdict.facts)
            chunk.quiet = self.guard is not None and all(_quiet(f) for f in check.verdict.facts)
            ids: list[str] = []
            if audit is not None:
                verdict = check.verdict
                correlation = extract_correlation(sql, tokens)
                masked = self.masking is not None and not self.masking.exempt()
                for i, (facts, decision) in enumerate(zip(verdict.facts, verdict.decisions, strict=True)):
                    plan = plans[i] if masked and i < len(plans) else None
                    rec = audit.statement(facts.text, facts, decision, correlation=correlation, masks=plan)
                    chunk.gated.append(rec)
                    durable = self._effect_durable(facts)
                    _gate_durable(chunk, durable, chunk.block and _transactional(facts))  # asked in a block only
                    audit.expect(rec, self._cycles_sent, writes=self._may_write(facts))
                    ids.append(rec.id)
            if approvable:
                chunk.approvals.append(
                    c.ApprovalAsk(sql, None, check.decision, check.verdict.facts, self._approval_key(sql, None), tuple(ids))
                )
            elif shaped is not None and check.allowed:
                self._remember_shape(gov, sql, shaped, stamp, source, check, plans)
            return
        marker = self._deny(check, sql, chunk.commands)
        chunk.replace(start, end, self._marker_query(marker))
        self._audit_denied(chunk, sql, check)

    # ------------------------------------------------------------------ shapes

    def _shape_stamp(self, gov: Governor) -> tuple[object, ...]:
        """Everything in the session a Query's ruling depends on besides its text: the
        policy, the identity's groups with live grants, the connection's catalog, and the
        masking state (view, search path, exemption).  A kept ruling is used only while
        the stamp is the same."""
        groups = (
            self.approvals.effective_identity(self.identity).groups
            if self.approvals is not None and self.identity is not None
            else None
        )
        catalog = self.catalog_service.current(self.connection_name or "") if self.catalog_service is not None else None
        masking = self.masking.path_state() if self.masking is not None else None
        return (gov.policy, groups, catalog, masking)

    def _remember_shape(
        self,
        gov: Governor,
        sql: str,
        shaped: tuple[str, list[str]],
        stamp: tuple[object, ...],
        source: object,
        check: Check,
        plans: tuple[StatementPlan | None, ...],
    ) -> None:
        """Keep the ruling of an allowed Query for its shape, when it may be (see
        _ShapeRuling and dbsentry.engines.postgres.sql.shape)."""
        facts = check.verdict.facts
        if len(facts) != 1 or len(check.verdict.decisions) != 1 or self._shape_stamp(gov) != stamp:
            return
        found = _shape.shape_of(sql, facts)
        if found is None or found[0] != shaped[0]:
            return
        f = facts[0]
        masking = self.masking
        if masking is not None and _copies_data(f):
            view = masking.service.current(masking.connection)
            copies = masking.copies(sql) if view is not None else {}
            if copies is None or copies:
                return  # a copy of classified values: judged (and inherited) per text
        masked = masking is not None and not masking.exempt()
        planned = None
        if masking is not None:
            strict, settings, after = masking.planned_state()
            planned = (strict, settings, after is not source)
        redaction = self.audit.values_only(f.text) if self.audit is not None else None
        shapes = self._shapes
        if shapes is None:
            shapes = self._shapes = {}
        elif len(shapes) >= _MAX_SHAPES:
            shapes.clear()
        shapes[found[0]] = _ShapeRuling(
            found[1],
            found[0].split("\x00"),
            stamp,
            check,
            plans,
            plans[0] if masked and plans else None,
            (f.span[0], len(sql) - f.span[1]),
            planned,
            redaction,
            self.guard is not None and any(self._changes_rows(x) for x in facts),
            self._effect_durable(check.verdict.facts[0]),
            self._may_write(check.verdict.facts[0]),
        )

    def _apply_shape(self, chunk: _Chunk, sql: str, constants: list[str], ruling: _ShapeRuling) -> bool:
        """What _govern_query does for an allowed Query, from the ruling of its shape;
        False (nothing done) when this text must be judged by itself."""
        check = ruling.check
        verdict = check.verdict
        if ruling.writes and writes_masked_literal(sql):
            return False  # refused by its text (masking.write_back)
        if ruling.guarded and self.guard is not None and self._guard_query(chunk, check, sql) is not None:
            return False  # (not for a text of a shape the guard held; judged by its text)
        chunk.plans = ruling.plans
        masking = self.masking
        if masking is not None:
            source = (sql, verdict.facts, check.decision) if ruling.source else None
            masking.replay_planned(ruling.strict, ruling.settings, source)
        audit = self.audit
        if audit is not None:
            facts, decision = verdict.facts[0], verdict.decisions[0]
            rec = audit.shape_statement(sql, ruling.parts, constants, ruling.span, facts, decision, ruling.masks, ruling.redaction)
            if rec is None:
                start, tail = ruling.span
                text = sql[start : len(sql) - tail].strip()
                rec = audit.statement(text, facts, decision, correlation=extract_correlation(sql, tokens), masks=ruling.masks)
            chunk.gated.append(rec)
            _gate_durable(chunk, ruling.durable, ruling.transactional)
            audit.expect(rec, self._cycles_sent, writes=ruling.changes)
        chunk.reads = ruling.reads
        chunk.quiet = ruling.quiet
        return True

    # ------------------------------------------------------------------ the row guard

    def _changes_rows(self, facts: StatementFacts) -> bool:
        """Whether running the statement may change rows (then it runs under the guard).

        SQL EXECUTE always does: what the server prepared under a name is not always what
        the session saw (a PREPARE that failed, another protocol)."""
        if facts.command in _DEFINES_ONLY:
            return False
        step: StatementFacts | None = facts
        while step is not None:
            if step.command == "EXECUTE":
                return self._executes_changes(step)
            step = step.inner
        if facts.copy is not None and facts.copy.direction == "from":
            return False  # rows come in; COPY FROM STDIN cannot be held (see docs/security.md)
        if "volatile_function" in facts.flags or not _CHANGES_ROWS.isdisjoint(facts.commands):
            return True
        # What the catalog last said cannot exempt: a trigger added to a table, or a user
        # function replaced, by a direct connection since the catalog was read.
        if "INSERT" in facts.commands:
            return True
        if facts.functions:
            view = self._catalog_view()
            return view is None or view.functions.calls_user_code(facts)
        return False

    def _executes_changes(self, execute: StatementFacts) -> bool:
        """Whether an SQL EXECUTE may change rows: unless its statement is known and reads
        only.  A name once prepared for a statement that changes rows stays suspect: a
        later PREPARE of it may have failed upstream."""
        name = execute.prepared_name or ""
        known = self._prepared.get(name)
        if known is None or name in self._risky_sql:
            return True
        facts = known[2].verdict.facts
        # An SQL PREPARE is known by the check of its whole query string; a protocol-level
        # statement (the same namespace) by its own.
        prepares = [f for f in facts if f.command == "PREPARE" and f.prepared_name == name]
        if prepares:
            return any(self._prepare_changes(p) for p in prepares)
        return any(self._changes_rows(f) for f in facts if f.command != "EXECUTE")

    def _prepare_changes(self, prepare: StatementFacts) -> bool:
        """Whether what an SQL PREPARE prepares may change rows (its own facts carry the
        catalog's marks for what it calls)."""
        inner = prepare.inner
        return inner is None or "volatile_function" in prepare.flags or self._changes_rows(inner)

    def _note_prepare(self, facts: StatementFacts) -> None:
        """An SQL PREPARE: remember its name when what it prepares changes rows."""
        if self.guard is not None and facts.prepared_name and self._prepare_changes(facts):
            self._risky_sql.add(facts.prepared_name)

    def _guards_query(self, buf: bytes, start: int, end: int) -> bool:
        """Whether a Query would run under the guard (a cached check; no side effects)."""
        gov = self.governor
        if gov is None or end - start - 1 > self.config.limits.max_statement_bytes:
            return False
        check = self._check(gov, codec.decode_query(buf, start, end, self.enc).sql)
        return check.allowed and any(self._changes_rows(f) for f in check.verdict.facts)

    def _guard_query(self, chunk: _Chunk, check: Check, sql: str) -> str | None:
        """Arrange for an allowed Query to run under the guard when it changes rows; a
        refusal message when the guard cannot hold it."""
        if self.guard is not None and self.guard.exchange.skipping:
            return None  # the server discards it (an earlier request of the batch failed)
        facts = check.verdict.facts
        unguardable = self._unguardable(facts)
        if unguardable is not None:
            return f"dbsentry: in production {unguardable} (guardrails.max_rows_changed)"
        first = None
        prepared_here: dict[str, StatementFacts] = {}  # PREPAREs earlier in this string
        for i, f in enumerate(facts):
            executed = _executed(f)
            if executed is not None and executed.prepared_name in prepared_here:
                changes = self._prepare_changes(prepared_here[executed.prepared_name])
            else:
                changes = self._changes_rows(f)
            if changes:
                first = i
                break
            if f.command == "PREPARE" and f.prepared_name:
                prepared_here[f.prepared_name] = f
        if first is None:
            return None
        problem: str | None = None
        if any(f.command in _TRANSACTION_CONTROL for f in facts[first + 1 :]):
            problem = "transaction control after it"
        elif any(f.command in _TRANSACTION_CONTROL for f in facts[:first]):
            problem = "transaction control before it"
        elif any(f.copy is not None and f.copy.direction == "from" and f.copy.target is None for f in facts):
            problem = "COPY FROM STDIN"
        if problem is not None:
            return (
                "dbsentry: in production a statement that changes rows runs under a row limit "
                f"(guardrails.max_rows_changed), which cannot hold it with {problem} in the same query "
                "string; send them as separate queries"
            )
        if self._block_unsure:
            return (
                "dbsentry: in production a statement that changes rows runs under a row limit "
                "(guardrails.max_rows_changed), which must know whether a transaction block is open: a statement "
                "sent since the server last said so (an Execute without its Sync) may have begun or ended one; "
                "send a Sync first"
            )
        mode = Mode.AUTOCOMMIT if self.txn_status == "I" else Mode.BLOCK
        chunk.guarded = _Guarded(mode, GuardedStatement(sql, facts=facts), first)
        return None

    def _catalog_view(self) -> MaskingView | None:
        if self.catalog_service is None or self.connection_name is None:
            return None
        return self.catalog_service.current(self.connection_name)

    def _unguardable(self, facts: Sequence[StatementFacts]) -> str | None:
        """What the catalog says the row guard could not hold in these statements."""
        view = self._catalog_view()
        if view is None:
            return None
        for f in facts:
            problem = view.functions.unguardable(f)
            if problem is not None:
                return problem
        return None

    def _guard_execute(self, chunk: _Chunk, portal: str) -> str | None:
        """Arrange for an Execute to run under the guard when its statement may change rows
        (or is not known: the server may hold one the session never saw); a refusal message
        when the guard cannot hold it."""
        if self.guard is not None and self.guard.exchange.skipping:
            return None  # the server skips it (an earlier request of the batch failed)
        bound = self._portals.get(portal)
        prepared = bound.prepared if bound is not None else None
        facts: tuple[StatementFacts, ...] = ()
        if prepared is None:
            sql = "<a prepared statement dbsentry does not know>"
        else:
            sql, _, check = prepared
            if self._approvable(check) or not check.allowed:
                return None  # an approval, once given, covers it; a refusal runs nothing
            facts = check.verdict.facts
            if self._runs_quietly(check):
                return None
        problem = self._unguardable(facts)
        if problem is not None:
            return f"dbsentry: in production {problem} (guardrails.max_rows_changed)"
        if prepared is not None and not any(self._changes_rows(f) for f in facts):
            return None
        if any("CALL" in f.commands for f in facts) and (
            self.txn_status != "T"
            or self._block_unsure
            or (self.guard is not None and self.guard.exchange.runs_pending)
        ):
            # Outside a transaction block a procedure may COMMIT by itself: nothing could
            # undo it.  In a block it cannot.
            return (
                "dbsentry: in production CALL runs under a row limit (guardrails.max_rows_changed), which "
                "cannot undo a procedure's own COMMIT: run it inside BEGIN ... COMMIT"
            )
        params = bound.readable if bound is not None else None
        key = bound.exact if bound is not None else None
        chunk.guarded = _Guarded(Mode.EXTENDED, GuardedStatement(sql, params, key, facts))
        return None

    def _runs_quietly(self, check: Check) -> bool:
        """Whether the statement of ``check`` neither changes rows nor holds what the guard
        cannot hold, by the connection's current catalog: an Execute of it runs without
        the guard.  Kept per check and catalog, for statements that execute no prepared
        statement (what those run is the session's to know at the time)."""
        view = self._catalog_view()
        quiet = self._quiet
        got = quiet.get(id(check)) if quiet is not None else None
        if got is not None and got[0] is check and got[1] is view:
            return True
        facts = check.verdict.facts
        if self._unguardable(facts) is not None or any(self._changes_rows(f) for f in facts):
            return False
        step: StatementFacts | None
        for f in facts:
            step = f
            while step is not None:
                if step.command == "EXECUTE":
                    return True  # quiet now; not kept
                step = step.inner
        if quiet is None:
            quiet = self._quiet = {}
        elif len(quiet) >= _MAX_SHAPES:
            quiet.clear()
        quiet[id(check)] = (check, view)
        return True

    def _facts_of(self, check: Check) -> _CheckFacts:
        """What Binds and Executes ask of a prepared statement's check, kept per check and
        catalog (a statement prepared once is bound and executed many times)."""
        known = self._known
        view = self._catalog_view()
        got = known.get(id(check)) if known is not None else None
        if got is not None and got[0] is check and got[2] is view:
            return got[1]
        if known is None:
            known = self._known = {}
        elif len(known) >= _MAX_SHAPES:
            known.clear()
        facts = _CheckFacts(check, self._effect_durable, self._may_write)
        known[id(check)] = (check, facts, view)
        return facts

    def _effect_durable(self, facts: StatementFacts) -> bool:
        """Whether the statement must not run before its record is durable (``effect``): it
        may change data (see _may_write)."""
        if changes_data(facts.command, facts.classes, facts.flags):
            return True
        if self.audit is None or self.audit.config.durability != "effect":
            return False  # only effect forwards a statement before its record is durable
        return self._may_write(facts)

    def _may_write(self, facts: StatementFacts) -> bool:
        """Whether the statement may change data (governance.durability), or what it calls
        or reads may, whatever the catalog last said of that code
        (FunctionSafety.reads_beyond: a function replaced, a row-level security policy, a
        foreign table).  No catalog yet: anything it calls or reads may."""
        if changes_data(facts.command, facts.classes, facts.flags):
            return True
        view = self._catalog_view()
        if view is None:
            return bool(facts.functions or facts.tables_read or facts.inner) or names_user_code(facts.text)
        return view.functions.reads_beyond(facts)

    def _guard_bind(self, chunk: _Chunk, portal: str, name: str) -> None:
        """Planning runs non-volatile functions (constant folding, estimates) at Bind: a
        Bind of a statement that calls opaque code runs under the guard too."""
        if self.guard is None or self.guard.exchange.skipping:
            return
        prepared = self._prepared.get(name)
        if prepared is not None and not self._facts_of(prepared[2]).plans_opaque:
            return  # only what it calls (or the views it reads call) can run at planning
        if prepared is not None and (self._approvable(prepared[2]) or not prepared[2].allowed):
            return
        sql = prepared[0] if prepared is not None else "<a prepared statement dbsentry does not know>"
        facts = prepared[2].verdict.facts if prepared is not None else ()
        bound = self._portals.get(portal)
        chunk.guarded = _Guarded(
            Mode.EXTENDED,
            GuardedStatement(sql, bound.readable if bound else None, bound.exact if bound else None, facts),
            frame=m.Q_BIND,
        )

    def _wrap_guarded(self, guard: Guard, chunk: _Chunk, guarded: _Guarded, start: int, end: int) -> None:
        limits = self._limits
        assert limits is not None
        frame = bytes(chunk.buf[start - 5 : end])
        if guarded.mode is Mode.EXTENDED:
            wrapped = guard.wrap_execute(frame, guarded.statement, limits, guarded.frame, chunk.in_block)
        else:
            wrapped = guard.wrap_query(frame, guarded.mode, guarded.hold_from, guarded.statement, limits)
        chunk.replace(start, end, wrapped)
        self._armed = chunk.buf

    def _confirm_parses(self, guard: Guard) -> None:
        """Undo what Parse messages the server did not carry out changed in ``_prepared``:
        it still has the statement it had before (whatever the client meant to replace)."""
        log = self._parse_log
        outcomes = guard.exchange.parse_outcomes
        while outcomes and log:
            ok = outcomes.popleft()
            name, before, made = log.popleft()
            if ok:
                continue
            if self._prepared.get(name) is made:
                if before is None:
                    self._prepared.pop(name, None)
                else:
                    self._prepared[name] = before
            else:
                # A later Parse of the name replaced ours: it replaced what was before.
                for i, (n, b, later) in enumerate(log):
                    if n == name and b is made:
                        log[i] = (n, before, later)
                        break
        outcomes.clear()

    def _guard_out(self, out: Out) -> list[c.Command]:
        cmds: list[c.Command] = []
        if out.upstream:
            cmds.append(c.SendUpstream(b"".join(out.upstream)))
        if out.client:
            frames = b"".join(out.client)
            _, spans = codec.FrameSplitter().split(frames)
            cmds.extend(self._upstream_frames_received(frames, spans, tracked=True))
        if out.ask is not None:
            ask = out.ask
            st = ask.statement
            # bound to the exact values and to the effect seen now
            key = self._approval_key(st.sql, (*(st.key_params or ()), f"effect:{ask.effect}"))
            cmds.append(c.GuardApproval(st.sql, st.params, key, tuple(st.facts), ask.message, ask.rule))
        if out.finished:
            self._armed = None
            cmds.extend(self._release_held())
        return cmds

    def _on_guard_approval(self, approved: bool, message: str | None) -> list[c.Command]:
        """The answer to :class:`~dbsentry.engines.postgres.session.commands.GuardApproval`."""
        guard = self.guard
        if guard is None or self.state is not State.READY:
            return []
        if approved:
            log = c.Log(logging.WARNING, "guard.approved", {"identity": self.identity.name if self.identity else None})
            return [log, *self._guard_out(guard.approval(True, None))]
        return self._guard_out(guard.approval(False, message))

    def _mask_plans(self, sql: str, check: Check) -> tuple[Check, tuple[StatementPlan | None, ...]]:
        """The mask plan of each statement, or a refusal when masking cannot be guaranteed."""
        verdict = check.verdict
        if any(f.statement_class == "WRITE" for f in verdict.facts) and writes_masked_literal(sql):
            return _refusal(check, "masking.write_back", "writing a masked value back is refused"), ()
        masking = self.masking
        if masking is None:
            return check, ()
        exempt = masking.exempt()
        view = masking.service.current(masking.connection)
        if view is not None and any(_copies_data(f) for f in verdict.facts):
            copies = masking.copies(sql)
            if not exempt and (
                copies is None or copies or any(_keeps_a_query(f) and view.copies_sensitive_columns(f) for f in verdict.facts)
            ):
                # Copying classified values elsewhere (a table, a view, another column)
                # would let a masked identity read them unmasked from there.
                return _refusal(check, "masking.copy_out", "a masked identity may not copy sensitive columns"), ()
            if copies:
                # Whoever reads the copies later sees them masked like the originals.
                masking.service.inherit(masking.connection, copies)
        if not exempt and any(masking.creates_classified_function(f) or masking.stores_prepared(f) for f in verdict.facts):
            # A SQL function's body is a query kept to run later, like a view's; it runs
            # before the catalog is read again (a temporary function: always).
            return _refusal(check, "masking.copy_out", "a masked identity may not copy sensitive columns"), ()
        if exempt:
            # Plans are still made (and kept for prepared statements and cursors): whether
            # results are masked is decided when they arrive, grants may expire meanwhile.
            return check, masking.plan(sql, verdict.facts, check.decision)
        side = masking.side_channel(verdict.facts)
        if side is not None:
            # The value would leave by a notification or a setting, where no plan masks it.
            return _refusal(check, "masking.side_channel", side), ()
        plans = masking.plan(sql, verdict.facts, check.decision)
        assert self.identity is not None
        identity = self.approvals.effective_identity(self.identity) if self.approvals is not None else self.identity
        denied = masking.inference(sql, verdict.facts, check.decision, identity, self._environment, self._production())
        if denied is not None:  # masked columns in WHERE, ORDER BY...: masking.predicates
            return Check(Verdict(verdict.facts, tuple(denied for _ in verdict.facts), denied, verdict.parse_error)), ()
        for plan in plans:
            if plan is None:
                continue
            if plan.plan.deny:
                return _refusal(check, "masking.unresolved", "masking cannot follow the data of this statement"), ()
            copy = plan.lineage.copy
            if copy is not None and copy.format == "binary":
                return _refusal(check, "masking.binary_copy", "binary COPY of sensitive columns is refused; use text or csv"), ()
        return check, plans

    def _masking_exempt(self) -> bool:
        """Whether the identity sees real values now (its groups, with live grants)."""
        identity = self.identity
        if identity is None or self.masking_service is None:
            return False
        if self.approvals is not None:
            identity = self.approvals.effective_identity(identity)
        return bool(identity.groups & self.masking_service.exempt_groups)

    # ------------------------------------------------------------------ server-side names

    def _renamed(self, portal: bool, names: tuple[str, ...], confirm: bytes) -> None:
        """The client message being governed changes ``names`` upstream once carried out."""
        renames = self._renames
        if renames is None:
            renames = self._renames = deque()
        renames.append(_Rename(self._frame_cycle, portal, names, confirm))

    def _name_taken(self, name: str) -> str | None:
        """Why no statement can be made under ``name`` (one exists, or may): None if one can.
        PostgreSQL refuses a named statement's name twice; the unnamed one is replaced."""
        if not name:
            return None
        if name in self._prepared:
            return f'prepared statement "{name}" already exists'
        if self._unknown_names and name in self._unknown_names:
            return f'prepared statement "{name}" may still exist upstream (a request that changed it failed): use another name'
        return None

    def _refused_parse(self, name: str) -> None:
        """A Parse refused here goes upstream as one that fails under the same name: a named
        statement keeps what it held; the unnamed one is gone (PostgreSQL drops it first)."""
        if not name:
            self._prepared.pop(name, None)

    def _dropped_all(self, confirm: bytes | None) -> None:
        if self._prepared and confirm is not None:
            self._renamed(False, tuple(self._prepared), confirm)
        self._prepared.clear()
        if self.guard is not None:
            self.guard.statements_dropped()

    def _rename_answered(self, answer: bytes) -> None:
        """The server carried out the oldest request that changes names, if ``answer`` is
        what it answers; anything else out of order makes what is pending unknown."""
        renames = self._renames
        assert renames
        head = renames[0]
        if head.confirm == answer:
            renames.popleft()
            unknown = self._unknown_names
            if unknown and not head.portal:
                unknown.difference_update(head.names)
        elif answer[:1] != b"C":
            self._renames_failed(self._cycles_done + 1)  # not the answer expected: fail closed

    def _renames_failed(self, cycle: int) -> None:
        """Cycle ``cycle`` failed (or ended) before the server answered the name changes of
        its requests still pending: they may not have happened, so those names are unknown."""
        renames = self._renames
        while renames and renames[0].cycle <= cycle:
            r = renames.popleft()
            if r.portal:
                for name in r.names:
                    self._portals.pop(name, None)
                continue
            for name in r.names:
                self._prepared.pop(name, None)
                if name:
                    if self._unknown_names is None:
                        self._unknown_names = set()
                    self._unknown_names.add(name)

    def _check_sql_prepared(self, gov: Governor, check: Check, query: bool = True) -> Check:
        """Track SQL PREPARE, and judge SQL EXECUTE by the statement it runs, now.

        Protocol-level and SQL prepared statements share one namespace upstream.  ``query``:
        the statement runs now (a Query, or the Execute of a portal): what it changes is
        taken now and confirmed by its CommandComplete (see _renames).  In a Parse it runs
        at each Execute, which may never come: the names change there (an attack round had
        a PREPARE parsed and never executed make the trail name a statement the server did
        not hold).
        """
        for facts in check.verdict.facts:
            name = facts.prepared_name
            if facts.command in _SQL_NAMING:
                if not query:
                    self._sql_naming_parsed = True
                    continue
                if facts.command == "PREPARE" and name is not None:
                    taken = self._name_taken(name)
                    if taken is not None:
                        return _refusal(check, "session.prepared_name", taken, "42P05")
                    self._prepared[name] = (facts.text, self._judged_under(gov), check)
                    self._renamed(False, (name,), b"CPREPARE")
                    self._note_prepare(facts)
                elif facts.command == "DISCARD ALL" or name is None:
                    self._dropped_all(b"C" + facts.command.encode())
                else:
                    self._prepared.pop(name, None)
                    self._renamed(False, (name,), b"CDEALLOCATE")
            else:
                executed = _executed(facts)
                if executed is None:
                    continue
                if executed.prepared_name not in self._prepared:
                    # Not prepared through this session, or by a request that may have
                    # failed: the server may run another statement under the name.
                    return _refusal(
                        check,
                        "session.prepared_name",
                        f'prepared statement "{executed.prepared_name}" is not known to dbsentry in this session: prepare it again',
                        "26000",
                    )
                # (a refusal names the EXECUTE the client sent, with its values: an earlier
                # version recorded the PREPARE's text instead)
                inner = self._check(gov, self._prepared[executed.prepared_name][0])
                if not inner.allowed:
                    return _decided(check, inner.decision)
                if executed.execute_params is not None:
                    bound = self._bound_always_true(gov, inner, executed.execute_params)
                    if bound is not None:
                        return _decided(check, bound.decision)
        return check

    def _sql_naming_executed(self, gov: Governor, portal: str) -> Check | None:
        """The Execute of a portal whose statement is an SQL PREPARE, DEALLOCATE or DISCARD
        ALL: the names change now, as in a Query; the refusal if the name is taken."""
        bound = self._portals.get(portal)
        if bound is None:
            return None
        check = bound.prepared[2]
        if not any(f.command in _SQL_NAMING for f in check.verdict.facts):
            return None
        after = self._check_sql_prepared(gov, check)
        return None if after is check else after

    def _bound_always_true(self, gov: Governor, check: Check, params: Sequence[object]) -> Check | None:
        """A refusal when an UPDATE/DELETE's WHERE is always true with the values bound to
        it (``WHERE $1 = $2`` with 1 and 1), where the baseline's unbounded-write rule applies."""
        rule = gov.policy.rule(_UNBOUNDED_RULE)
        if rule is None or self._environment not in gov.policy.production_environments:
            return None
        for facts in check.verdict.facts:
            if facts.where_params and where_true_with(facts, params):
                return _refusal(
                    check,
                    _UNBOUNDED_RULE,
                    "an UPDATE/DELETE whose WHERE is always true with the values bound to it is not allowed in production",
                )
        return None

    def _govern_parse(self, gov: Governor, chunk: _Chunk, start: int, end: int) -> None:
        unsure = self._unreadable(chunk.buf, start, end)
        parse = codec.decode_parse(chunk.buf, start, end, self.enc)
        taken = self._name_taken(parse.name)
        if taken is not None:
            marker = self._refuse(taken, "42P05", chunk.commands)
            chunk.replace(start, end, codec.encode_parse(m.Parse(parse.name, self._marker_sql(marker)), self.enc))
            self._audit_refused(chunk, parse.sql[:4096], taken)
            return
        if unsure is None and self._in_flight and not chunk.buf[start:end].isascii():
            at = chunk.buf.find(b"\x00", start, end) + 1
            unsure = self._reads_alike(gov, bytes(chunk.buf[at : chunk.buf.find(b"\x00", at, end)]), parse.sql)
        if unsure:
            self._refused_parse(parse.name)
            marker = self._refuse(unsure, "55000", chunk.commands)
            chunk.replace(start, end, codec.encode_parse(m.Parse(parse.name, self._marker_sql(marker)), self.enc))
            self._audit_refused(chunk, parse.sql[:4096], unsure)
            return
        too_long = self._too_long(len(parse.sql))
        if too_long:
            self._refused_parse(parse.name)
            marker = self._refuse(too_long, "54000", chunk.commands)
            chunk.replace(start, end, codec.encode_parse(m.Parse(parse.name, self._marker_sql(marker)), self.enc))
            self._audit_refused(chunk, parse.sql[:4096], too_long)
            return
        check = self._check(gov, parse.sql)
        if check.allowed:
            # SQL PREPARE / EXECUTE sent with the extended protocol, as in a Query.
            check = self._check_sql_prepared(gov, check, query=False)
        plans: tuple[StatementPlan | None, ...] = ()
        if check.allowed or self._approvable(check):
            check, plans = self._mask_plans(parse.sql, check)
        if check.allowed or self._approvable(check):
            self._prepared[parse.name] = (parse.sql, self._judged_under(gov), check)
            self._renamed(False, (parse.name,), b"1")
            if parse.param_types:
                self._param_types[parse.name] = parse.param_types
            else:
                self._param_types.pop(parse.name, None)
            if self.masking is not None:
                self.masking.parsed(parse.name, plans[0] if plans else None, (parse.sql, parse.param_types))
            return
        self._refused_parse(parse.name)
        if self.masking is not None:
            self.masking.parsed(parse.name, None)
        marker = self._deny(check, parse.sql, chunk.commands)
        chunk.replace(start, end, codec.encode_parse(m.Parse(parse.name, self._marker_sql(marker)), self.enc))
        self._audit_denied(chunk, parse.sql, check)

    def _govern_bind(
        self, gov: Governor, chunk: _Chunk, start: int, end: int, portal: str, name: str, bind: _BindParts | None
    ) -> None:
        """``bind``: the Bind, when read already."""
        buf = chunk.buf
        known = self._prepared.get(name)
        if known is None:
            # Not prepared through this session, or by a request that may have failed: the
            # server may hold another statement under the name (or none).
            self._portals.pop(portal, None)
            message = f'prepared statement "{name}" is not known to dbsentry in this session: prepare it again'
            marker = self._refuse(message, "26000", chunk.commands)
            chunk.replace(start, end, codec.encode_bind(m.Bind(portal, marker), self.enc))
            if name:
                self._audit_refused(chunk, f"<Bind of prepared statement {name[:200]}>", message)
            return
        if self.audit is not None or self.approvals is not None or self.guard is not None:
            if bind is None:
                bind = _decode_bind(buf, start, end, self.enc)
            self._portals[portal] = _Portal(name, bind[2], bind[3], self.enc, known)
        self._renamed(True, (portal,), b"2")
        if known is not None and self._facts_of(known[2]).where_params:
            if bind is None:
                bind = _bind_parts(codec.decode_bind(buf, start, end, self.enc))
            values = _param_values(bind[2], bind[3], self.enc, self._param_types.get(name, ()))
            bound = self._bound_always_true(gov, known[2], values)
            if bound is not None:
                marker = self._deny(bound, known[0], chunk.commands)
                chunk.replace(start, end, codec.encode_bind(m.Bind(portal, marker), self.enc))
                self._audit_denied(chunk, known[0], bound)
                return
        if known is not None and self.masking_service is not None and _binds_masked_value(
            known[2], buf, start, end, self.enc, self._param_types.get(name, ())
        ):
            # The SQL text was checked at Parse; a masked value can also come as a parameter.
            check = _refusal(known[2], "masking.write_back", "writing a masked value back is refused")
            marker = self._deny(check, known[0], chunk.commands)
            chunk.replace(start, end, codec.encode_bind(m.Bind(portal, marker), self.enc))
            self._audit_denied(chunk, known[0], check)
            return
        # Re-check when the policy changed since its Parse, and at every Bind when a rule
        # has a time window (decisions then change by the minute; the check is cached).
        if known is None or (known[1] == self._judged_under(gov) and not gov.policy.uses_time):
            return
        sql = known[0]
        check = self._check(gov, sql)
        if check.allowed or self._approvable(check):
            self._prepared[name] = (sql, self._judged_under(gov), check)
            return
        self._prepared.pop(name, None)
        # Binding a statement that does not exist fails upstream, in order, with the marker.
        marker = self._deny(check, sql, chunk.commands)
        chunk.replace(start, end, codec.encode_bind(m.Bind(portal, marker), self.enc))
        self._audit_denied(chunk, sql, check)

    def _govern_function_call(self, gov: Governor, chunk: _Chunk, start: int, end: int) -> None:
        # A FunctionCall names a function by OID only, so governance cannot check it:
        # where the baseline applies (production), it is refused (fail closed); so it is
        # for identities under masking, whose FunctionCallResponse no plan could mask.
        masked = self.masking is not None and not self.masking.exempt()
        if self._environment in gov.policy.production_environments or masked:
            rule = "baseline.function_call" if self._environment in gov.policy.production_environments else "masking.function_call"
            message = (
                "dbsentry: the FunctionCall protocol message is not allowed here; call the function with SQL "
                f"(rule: {rule})"
            )
            marker = self._refuse(message, "42501", chunk.commands)
            chunk.replace(start, end, self._marker_query(marker))
            self._audit_refused(chunk, "<FunctionCall>", message)
            return
        if self.audit is not None:
            oid = int.from_bytes(chunk.buf[start : start + 4], "big")
            rec = self.audit.statement(f"<FunctionCall oid={oid}>", None, ALLOWED, command="FUNCTION CALL")
            chunk.gated.append(rec)
            _gate_durable(chunk, True, False)
            self.audit.expect(rec, self._cycles_sent)

    def _deny(self, check: Check, sql: str, commands: list[c.Command]) -> str:
        decision = check.decision
        verdict = check.verdict
        if verdict.syntax_error and verdict.parse_error is not None:
            # Answered as PostgreSQL answers it (clients, ORMs and editors act on 42601 and
            # its position), with a hint that it never reached the database.
            position = verdict.error_position if verdict.error_position is not None else len(sql)
            error = codec.encode_error_fields(
                b"E",
                [
                    ("S", "ERROR"),
                    ("V", "ERROR"),
                    ("C", "42601"),
                    ("M", verdict.parse_error),
                    ("H", _NOT_SENT_HINT),
                    ("P", str(position + 1)),
                ],
            )
            marker = self._refuse(verdict.parse_error, "42601", commands, log=False, error=error)
        else:
            marker = self._refuse(denial_message(decision), decision.sqlstate, commands, log=False)
        commands.append(
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

    def _refuse(
        self, message: str, sqlstate: str, commands: list[c.Command], log: bool = True, error: bytes | None = None
    ) -> str:
        """Arrange for the statement to fail upstream, in order, and for its error to become ours.

        The statement is replaced by one that names a relation (or prepared statement, or
        portal) called after a fresh marker, which cannot exist: PostgreSQL itself fails it
        at the right point of the pipeline, moves the transaction to the failed state
        exactly as for any error, and skips to the next Sync.  Its ErrorResponse carries
        the marker, and :meth:`_on_upstream_data` replaces it with this message.
        """
        self._marker_seq += 1
        if not self._marker_prefix:
            self._marker_prefix = secrets.token_hex(4)
        marker = f"{_MARKER}{self._marker_prefix}-{self._marker_seq}"
        self._refusals[marker] = error if error is not None else codec.error_response(sqlstate, message)
        if log:
            commands.append(c.Log(logging.WARNING, "statement.refused", {"reason": message}))
        return marker

    def _marker_query(self, marker: str) -> bytes:
        """The Query that stands for a refused one, as the current cycle: its error is ours
        whatever it says (in a failed transaction PostgreSQL answers 25P02 first)."""
        self._marker_cycles[self._cycles_sent] = marker
        return codec.encode_query(self._marker_sql(marker))

    @staticmethod
    def _marker_sql(marker: str) -> str:
        # Fails when parsed (so a Parse fails too), and the server's log says plainly what
        # happened: invalid input syntax for type integer: "dbsentry refused statement ..."
        return f"SELECT '{marker}'::pg_catalog.int4"

    # ------------------------------------------------------------------ audit records

    def _audit_denied(self, chunk: _Chunk, sql: str, check: Check) -> None:
        audit = self.audit
        if audit is None:
            return
        verdict = check.verdict
        if not verdict.facts:
            chunk.commands.append(c.Audit(audit.statement(sql, None, check.decision, command="UNPARSABLE")))
            return
        correlation = extract_correlation(sql, tokens)
        for facts in verdict.facts:
            chunk.commands.append(
                c.Audit(audit.statement(facts.text, facts, check.decision, correlation=correlation))
            )

    def _audit_refused(self, chunk: _Chunk, sql: str, reason: str) -> None:
        if self.audit is not None:
            decision = Decision("deny", (), reason)
            chunk.commands.append(c.Audit(self.audit.statement(sql, None, decision)))

    def _execute_frame(self, chunk: _Chunk, portal: str) -> None:
        bound = self._portals.get(portal)
        if bound is None:
            return
        sql, _, check = bound.prepared
        ids: tuple[str, ...] = ()
        if self.audit is not None:
            known = self._facts_of(check)
            masking = self.masking
            plan = masking.statement(bound.statement) if masking is not None and not masking.exempt() else None
            rec = self.audit.statement(sql, known.first, check.decision, params=bound.readable, masks=plan)
            chunk.copies_in = known.copies_in
            chunk.gated.append(rec)
            _gate_durable(chunk, known.durable, known.transactional)
            chunk.reads = known.reads
            chunk.quiet = known.quiet
            # answered before the next Sync's ReadyForQuery
            self.audit.expect(rec, self._cycles_sent + 1, writes=known.writes, extended=True)
            ids = (rec.id,)
        if self._approvable(check):
            chunk.approvals.append(
                c.ApprovalAsk(
                    sql, bound.readable, check.decision, check.verdict.facts, self._approval_key(sql, bound.exact), ids
                )
            )

    # ------------------------------------------------------------------ from the upstream

    def _on_upstream_data(self, data: bytes) -> list[c.Command]:
        if self.state is not State.READY:
            return []
        try:
            buf, spans = self._upstream_frames.split(data)
            if self._row_cap is not None:
                buf, spans = self._row_cap.filter(buf, spans)
            guard = self.guard
            if guard is None:
                return self._upstream_frames_received(buf, spans)
            if not (guard.active or guard.exchange.proxy_requests):
                cmds = self._upstream_frames_received(buf, spans, tracked=False)
            else:
                buf, spans, out = guard.received(buf, spans)
                cmds = self._upstream_frames_received(buf, spans, tracked=True) if spans else []
                cmds.extend(self._guard_out(out))
            if guard.exchange.parse_outcomes:
                self._confirm_parses(guard)
            if self._await_idle and guard.exchange.idle and not guard.active:
                cmds.extend(self._release_held())
            return cmds
        except codec.MessageTooLarge as err:
            return self._fail("54000", f"dbsentry: a message from the upstream exceeds limits.max_message_bytes: {err}")
        except codec.ProtocolError as err:
            return self._fail("08P01", f"dbsentry: upstream protocol error: {err}")

    def _upstream_frames_received(
        self, buf: bytes, spans: list[tuple[int, int, int]], tracked: bool = True
    ) -> list[c.Command]:
        """``tracked``: the guard has followed these frames already (or there is none)."""
        audit = self.audit
        masking = self.masking
        if not tracked and self.guard is not None:
            # Which request each message answers: nothing below depends on it, and a
            # protocol error below ends the session.
            self.guard.exchange.received_all(spans)
        chunk = _Chunk(buf)
        i = 0
        n = len(spans)
        while i < n:
            t, start, end = spans[i]
            i += 1
            masked: bytes | None = None
            if masking is not None:
                if t == m.R_DATA_ROW or t == m.COPY_DATA:
                    # A run of result rows is masked in one call; nothing below looks at them.
                    rows, count, run_end = masking.received_rows(buf, spans, i - 1)
                    if rows is not None:
                        chunk.replace(start, run_end, rows)
                    i += count - 1
                    continue
                masked = masking.received(t, buf, start, end)
                if masked is not None and not (t == m.R_ERROR and self._refusals) and t != m.R_NOTIFICATION:
                    chunk.replace(start, end, masked)
                    masked = None
            if t == m.R_NOTIFICATION:
                chunk.replace(start, end, self._client_pid(buf[start - 5 : end] if masked is None else masked))
                continue
            if t == m.R_READY:
                self.txn_status = chr(buf[start]) if end - start == 1 else codec.decode_ready(buf, start, end).status
                self._block_unsure = False
                if self.txn_status != "T" and self.guard is not None:
                    # The transaction ended or failed: the row counters restart (the guard
                    # does not see these answers when no bracket runs).
                    self.guard.forget_baseline()
                    if self.txn_status == "I":
                        # Idle; with nothing asked of the server since if it is the last
                        # answer of this read and no request is left unanswered.
                        self.guard.idle_ready(i == n and self.guard.exchange.idle)
                if self._cycles_done < self._cycles_sent:
                    self._cycles_done += 1
                if self._renames:
                    self._renames_failed(self._cycles_done)  # (none is left unanswered by a cycle that ended well)
                if self._cycles_done == self._cycles_sent:
                    self._busy = False
                if self._refusals and self._cycles_done == self._cycles_sent:
                    # A refused statement skipped after an earlier error never reports.
                    self._refusals.clear()
                    self._marker_cycles.clear()
                if audit is not None:
                    skipped = audit.ready(self._cycles_done, self.txn_status)
                    if skipped:
                        chunk.commands.extend(c.Audit(r) for r in skipped)
                if self._schema_pending and self.txn_status == "I":
                    self._schema_pending = False
                    assert self.connection_name is not None
                    chunk.commands.append(c.SchemaChanged(self.connection_name))
            elif t == m.R_ERROR:
                if self._copy_cycle and self._copy_cycle <= self._cycles_done + 1:
                    self._copy_failed()
                if self.guard is not None:
                    self.guard.forget_baseline()
                if self._renames:
                    self._renames_failed(self._cycles_done + 1)
                if b"VFATAL\x00" in buf[start:end] or b"VPANIC\x00" in buf[start:end]:
                    self._upstream_fatal = True
                if self._refusals:
                    ours = self._our_error(buf, start, end)
                    if ours is not None:
                        chunk.replace(start, end, ours)
                        if audit is not None:
                            # it fails the transaction as any error does (an attack round had
                            # a write before a refused statement recorded as committed)
                            refused = codec.decode_error_fields(ours, 5, len(ours), self.enc)
                            audit.failed(refused.sqlstate, refused.message)
                        continue
                    if masked is not None:  # the server's own error, masked
                        chunk.replace(start, end, masked)
                if audit is not None:
                    fields = codec.decode_error_fields(buf, start, end, self.enc)
                    self._audit_done(chunk, audit.error(fields.sqlstate, fields.message, self._cycles_done + 1))
            elif t == m.R_PARAMETER_STATUS:
                ps = codec.decode_parameter_status(buf, start, end, self.enc)
                if ps.name == "client_encoding":
                    self._set_encoding(ps.value)
                elif ps.name == "application_name" and audit is not None:
                    audit.application_name = ps.value
            elif t == m.R_COMMAND_COMPLETE:
                if self._renames and self._renames[0].confirm[:1] == b"C":
                    self._rename_answered(b"C" + bytes(buf[start : end - 1]))
                if self.catalog_service is not None and buf[start : start + 6] in _SCHEMA_TAGS:
                    self._schema_pending = True  # announced at the ReadyForQuery that ends the transaction
                if audit is not None:
                    tag = codec.read_cstr(buf, start, end)[0]  # what decode_command_complete reads
                    self._audit_done(chunk, audit.command_complete(tag))
            elif t in _NAME_ANSWERS and self._renames:
                self._rename_answered(bytes((t,)))
            elif t == m.R_COPY_IN and self._copy_cycle and not self._copy_reading:
                # The server reads the COPY's data: the Syncs sent since it began are ignored
                self._copy_reading = True
                if self.guard is not None and self._copy_syncs:
                    self.guard.exchange.syncs_ignored(self._copy_syncs)
            elif audit is not None and (t == m.R_EMPTY_QUERY or t == m.R_PORTAL_SUSPENDED):
                self._audit_done(chunk, audit.empty_or_suspended())
            elif audit is not None and t == m.R_FUNCTION_CALL_RESPONSE:
                # a FunctionCall's answer (it was recorded as never run: an attack round)
                self._audit_done(chunk, audit.function_called())
        out = chunk.assemble()
        if out:
            chunk.commands.append(c.SendClient(out))
        return chunk.commands

    def _copy_failed(self) -> None:
        """An error in the cycle of the COPY FROM STDIN: before it read any data (it never
        ran, or an earlier statement failed) the Syncs sent since are answered after all;
        while it read, the server stops reading and answers the Syncs from now on."""
        if not self._copy_reading:
            self._cycles_sent += self._copy_syncs
        self._copy_cycle, self._copy_syncs, self._copy_reading = 0, 0, False

    def _set_encoding(self, name: str) -> None:
        """The server reported the session's client_encoding (at login, or after a SET,
        a RESET or a rollback changed it)."""
        self.client_encoding = name
        self.enc = encodings.codec_for(name, self.upstream_params.get("server_encoding", encodings.UTF8)) or "ascii"
        if self.masking is not None:
            self.masking.enc = self.enc

    def _unreadable(self, buf: bytes, start: int, end: int) -> str | None:
        """Text in EUC_TW or MULE_INTERNAL, which only read as ASCII here: refused."""
        if self.enc != "ascii" or buf[start:end].isascii():
            return None
        return f"dbsentry: text in client_encoding {self.client_encoding} can only be read as ASCII"

    def _reads_alike(self, gov: Governor, raw: bytes, sql: str) -> str | None:
        """A refusal when text that is not ASCII is sent while earlier statements are
        unanswered (any of them may change client_encoding: a SET, but as well a view, a
        cursor, an operator or a domain calling set_config) and it would be a different
        statement in another client encoding; None when it reads as the same statement
        in every encoding that can read it (ASCII reads the same in all of them)."""
        try:
            ours = gov.facts_cache.analyze(sql)
        except SQLParseError:
            return None  # refused as unparsable anyway
        for enc in encodings.ALTERNATIVES:
            if enc == self.enc:
                continue
            try:
                other = raw.decode(enc)
            except UnicodeDecodeError:
                continue  # the server would refuse it in that encoding (22021)
            if other == sql:
                continue
            try:
                theirs = gov.facts_cache.analyze(other)
            except SQLParseError:
                continue  # and there it would not parse
            if tuple(theirs) != tuple(ours):
                return (
                    "dbsentry: this statement reads differently in another client encoding, and a statement "
                    "sent before it and not yet answered may change the encoding; send it once they are answered"
                )
        return None

    def _client_pid(self, frame: bytes) -> bytes:
        """A NotificationResponse names the backend that sent it: the pid that backend's
        client was given, when dbsentry knows it (its own sessions on this connection)."""
        if len(frame) < 9:
            return frame
        (pid,) = struct.unpack_from("!I", frame, 5)
        if pid == self.backend_pid:
            ours = self.proxy_pid
        elif self.backend_pids is not None and self.connection_name is not None:
            ours = self.backend_pids.get((self.connection_name, pid), pid)
        else:
            return frame
        return frame[:5] + struct.pack("!I", ours) + frame[9:]

    @staticmethod
    def _audit_done(chunk: _Chunk, records: list[CompletionRecord]) -> None:
        chunk.commands.extend(c.Audit(r) for r in records)

    def _our_error(self, buf: bytes, start: int, end: int) -> bytes | None:
        cycle_marker = self._marker_cycles.pop(self._cycles_done + 1, None) if self._marker_cycles else None
        if cycle_marker is not None and cycle_marker in self._refusals:
            return self._refusals.pop(cycle_marker)
        text = bytes(buf[start:end])
        if _MARKER_BYTES not in text:
            return None
        for marker in list(self._refusals):
            if marker.encode() in text:
                return self._refusals.pop(marker)
        return None

    def _closing(self, reason: str) -> list[c.Command]:
        """Audit records for the end of the session (once)."""
        audit = self.audit
        if audit is None:
            return []
        self.audit = None
        out: list[c.Command] = []
        held, self._segment = self._segment, None
        if held is not None and held.gated:
            # A segment that waited for its Sync never ran: its records say so.
            out.extend(c.Audit(r) for r in held.gated)
            message = f"the session ended before the pipeline's Sync ({reason})"
            out.extend(c.Audit(r) for r in audit.refused((r.id for r in held.gated), "08006", message))
        out.extend(c.Audit(r) for r in audit.abandoned())
        out.append(c.Audit(audit.session_event("closed", reason)))
        return out

    # ------------------------------------------------------------------ endings

    def _on_client_closed(self) -> list[c.Command]:
        # Busy: a query may be running (a Flush without Sync leaves no ReadyForQuery owed).
        was_busy = self.state is State.READY and (self.pending_syncs > 0 or self._busy)
        out: list[c.Command] = [c.Log(logging.DEBUG, "session.client_closed", {"busy": was_busy})]
        out.extend(self._leave_flight())
        self._enter(State.CLOSED)
        out.extend(self._closing("client disconnected while a statement was running" if was_busy else "client disconnected"))
        if was_busy:
            # PostgreSQL would only notice the vanished client when it next writes; a
            # long query would run on.  Cancel it, then close.
            out.append(c.CancelUpstream())
        out.append(c.CloseUpstream())
        return out

    def _on_upstream_closed(self) -> list[c.Command]:
        if self.state is State.CLOSED:
            return []
        out: list[c.Command] = [c.Log(logging.INFO, "session.upstream_closed", {"connection": self.connection_name})]
        out.extend(self._leave_flight())
        self._enter(State.CLOSED)
        out.extend(self._closing("upstream closed the connection"))
        if not self._upstream_fatal:
            out.append(c.SendClient(fatal("08006", "dbsentry: the upstream server closed the connection unexpectedly")))
        out.append(c.CloseClient())
        return out

    def _on_startup_timed_out(self) -> list[c.Command]:
        if self.state in (State.READY, State.GREETED, State.OPENING, State.CLOSED):
            return []
        if self._tls_starting:  # mid-handshake: an error in clear would be garbage to the client's TLS
            self._enter(State.CLOSED)
            reason = "dbsentry: timeout waiting for the TLS handshake"
            return [c.Log(logging.INFO, "session.refused", {"sqlstate": "08P01", "reason": reason, "client": self.client.address}), c.CloseClient()]
        return self._fail("08P01", "dbsentry: timeout waiting for startup and authentication", client=self.client.address)
