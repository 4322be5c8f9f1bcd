"""PostgreSQL protocol 3.0 messages as frozen, typed values.

Only the messages dbsentry has to understand are decoded; everything else travels as
raw frames (see :mod:`dbsentry.engines.postgres.wire.codec`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

PROTOCOL_3_0 = 196608  # 3 << 16
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102

# Frame type bytes, as ints (what indexing a bytes object yields).
# From the client.
Q_QUERY = ord("Q")
Q_PARSE = ord("P")
Q_BIND = ord("B")
Q_DESCRIBE = ord("D")
Q_EXECUTE = ord("E")
Q_CLOSE = ord("C")
Q_SYNC = ord("S")
Q_FLUSH = ord("H")
Q_FUNCTION_CALL = ord("F")
Q_TERMINATE = ord("X")
Q_PASSWORD = ord("p")
Q_COPY_FAIL = ord("f")
# Both directions.
COPY_DATA = ord("d")
COPY_DONE = ord("c")
# From the server.
R_AUTH = ord("R")
R_PARAMETER_STATUS = ord("S")
R_BACKEND_KEY = ord("K")
R_READY = ord("Z")
R_ERROR = ord("E")
R_NOTICE = ord("N")
R_NOTIFICATION = ord("A")
R_ROW_DESCRIPTION = ord("T")
R_DATA_ROW = ord("D")
R_COMMAND_COMPLETE = ord("C")
R_EMPTY_QUERY = ord("I")
R_PORTAL_SUSPENDED = ord("s")
R_NO_DATA = ord("n")
R_NEGOTIATE_VERSION = ord("v")
R_COPY_IN = ord("G")
R_COPY_OUT = ord("H")
R_COPY_BOTH = ord("W")
R_FUNCTION_CALL_RESPONSE = ord("V")

AUTH_OK = 0
AUTH_CLEARTEXT = 3
AUTH_MD5 = 5
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12


# ----------------------------------------------------------------- startup phase


@dataclass(frozen=True, slots=True)
class SSLRequest:
    pass


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    pass


@dataclass(frozen=True, slots=True)
class CancelRequest:
    pid: int
    secret: bytes


@dataclass(frozen=True, slots=True)
class StartupMessage:
    version: int
    params: tuple[tuple[str, str], ...] = ()

    @property
    def major(self) -> int:
        return self.version >> 16

    @property
    def minor(self) -> int:
        return self.version & 0xFFFF

    def get(self, name: str, default: str | None = None) -> str | None:
        for k, v in self.params:
            if k == name:
                return v
        return default


StartupPacket = SSLRequest | GSSENCRequest | CancelRequest | StartupMessage


# ----------------------------------------------------------------- client messages


@dataclass(frozen=True, slots=True)
class Query:
    sql: str


@dataclass(frozen=True, slots=True)
class Parse:
    name: str
    sql: str
    param_types: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Bind:
    portal: str
    statement: str
    param_formats: tuple[int, ...] = ()
    params: tuple[bytes | None, ...] = ()
    result_formats: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Execute:
    portal: str
    max_rows: int = 0


@dataclass(frozen=True, slots=True)
class Describe:
    kind: str  # "S" statement or "P" portal
    name: str


@dataclass(frozen=True, slots=True)
class Close:
    kind: str
    name: str


@dataclass(frozen=True, slots=True)
class PasswordMessage:
    data: bytes  # cleartext password (null-stripped) or a SASL payload


# ----------------------------------------------------------------- server messages


@dataclass(frozen=True, slots=True)
class Authentication:
    code: int
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class ParameterStatus:
    name: str
    value: str


@dataclass(frozen=True, slots=True)
class NotificationResponse:
    """A NOTIFY delivered to a listening session (``pid`` is the notifying backend's)."""

    pid: int
    channel: str
    payload: str


@dataclass(frozen=True, slots=True)
class BackendKeyData:
    pid: int
    secret: bytes


@dataclass(frozen=True, slots=True)
class ReadyForQuery:
    status: str  # "I" idle, "T" in a transaction block, "E" in a failed block


@dataclass(frozen=True, slots=True)
class ErrorFields:
    """The fields of an ErrorResponse or NoticeResponse, keyed by their one-letter codes."""

    fields: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    def get(self, code: str, default: str = "") -> str:
        for k, v in self.fields:
            if k == code:
                return v
        return default

    @property
    def severity(self) -> str:
        return self.get("V") or self.get("S")

    @property
    def sqlstate(self) -> str:
        return self.get("C")

    @property
    def message(self) -> str:
        return self.get("M")


@dataclass(frozen=True, slots=True)
class CommandComplete:
    tag: str


@dataclass(frozen=True, slots=True)
class NegotiateProtocolVersion:
    newest_minor: int
    unsupported: tuple[str, ...] = ()
