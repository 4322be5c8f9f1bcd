"""Client commands (the command phase), decoded and encoded both ways.

:func:`decode_command` reads any command packet. COM_STMT_EXECUTE cannot be read alone: its
parameters depend on the statement's parameter count from COM_STMT_PREPARE, on the types
bound by an earlier execution and on the parameters sent with COM_STMT_SEND_LONG_DATA; so
:func:`decode_command` gives its head (:class:`StmtExecuteHead`, enough to route it) and
:func:`decode_stmt_execute` the whole message once the session looked the statement up.

SQL text stays ``bytes``: which charset it is in is the session's knowledge
(``character_set_client``), not the codec's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dbsentry.engines.mysql.wire import constants as c
from dbsentry.engines.mysql.wire import primitives as p
from dbsentry.engines.mysql.wire.constants import Command
from dbsentry.engines.mysql.wire.handshake import decode_attributes, encode_attributes
from dbsentry.engines.mysql.wire.values import (
    ParamType,
    Value,
    decode_binary_value,
    encode_binary_value,
    is_null,
    null_bitmap,
    read_null_bitmap,
)
from dbsentry.errors import ProtocolError

__all__ = [
    "ChangeUser",
    "Debug",
    "FieldList",
    "InitDB",
    "MalformedAttributes",
    "OtherCommand",
    "Param",
    "Ping",
    "ProcessKill",
    "Query",
    "Quit",
    "ResetConnection",
    "SetOption",
    "Statistics",
    "StmtClose",
    "StmtExecute",
    "StmtExecuteHead",
    "StmtFetch",
    "StmtPrepare",
    "StmtReset",
    "StmtSendLongData",
    "decode_command",
    "decode_stmt_execute",
    "encode_command",
]


@dataclass(frozen=True, slots=True)
class Param:
    """A bound value: a statement parameter or a query attribute (``name``).
    ``long_data``: its value came earlier in COM_STMT_SEND_LONG_DATA packets."""

    type: ParamType
    value: Value = None
    name: str = ""
    long_data: bool = False


@dataclass(frozen=True, slots=True)
class Quit:
    pass


@dataclass(frozen=True, slots=True)
class Ping:
    pass


@dataclass(frozen=True, slots=True)
class Statistics:
    pass


@dataclass(frozen=True, slots=True)
class ResetConnection:
    pass


@dataclass(frozen=True, slots=True)
class Debug:
    pass


@dataclass(frozen=True, slots=True)
class InitDB:
    schema: str


@dataclass(frozen=True, slots=True)
class Query:
    """COM_QUERY; ``attributes`` only with ``CLIENT_QUERY_ATTRIBUTES``."""

    sql: bytes
    attributes: tuple[Param, ...] = ()
    parameter_set_count: int = 1


@dataclass(frozen=True, slots=True)
class FieldList:
    table: str
    wildcard: str = ""


@dataclass(frozen=True, slots=True)
class ChangeUser:
    user: str
    auth_response: bytes = b""
    database: str = ""
    charset: int = 45
    auth_plugin_name: str = ""
    attributes: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class ProcessKill:
    connection_id: int


@dataclass(frozen=True, slots=True)
class SetOption:
    option: int  # MYSQL_OPTION_MULTI_STATEMENTS_ON / _OFF


@dataclass(frozen=True, slots=True)
class StmtPrepare:
    sql: bytes


@dataclass(frozen=True, slots=True)
class StmtExecuteHead:
    """The fixed part of COM_STMT_EXECUTE, readable without the statement's metadata."""

    statement_id: int
    flags: int
    iteration_count: int


@dataclass(frozen=True, slots=True)
class StmtExecute:
    """COM_STMT_EXECUTE with its parameters (query attributes follow the statement's own
    parameters under ``CLIENT_QUERY_ATTRIBUTES`` and carry a name)."""

    statement_id: int
    params: tuple[Param, ...] = ()
    flags: int = c.CURSOR_TYPE_NO_CURSOR
    iteration_count: int = 1
    new_params_bound: bool = True

    @property
    def types(self) -> tuple[ParamType, ...]:
        return tuple(param.type for param in self.params)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(param.name for param in self.params)


@dataclass(frozen=True, slots=True)
class StmtSendLongData:
    statement_id: int
    param_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class StmtClose:
    statement_id: int


@dataclass(frozen=True, slots=True)
class StmtReset:
    statement_id: int


@dataclass(frozen=True, slots=True)
class StmtFetch:
    statement_id: int
    rows: int


@dataclass(frozen=True, slots=True)
class OtherCommand:
    """A command the proxy does not read (replication, COM_SHUTDOWN, ...): refused or
    forwarded by the session, never guessed at."""

    command: int
    body: bytes


AnyCommand = (
    Quit
    | Ping
    | Statistics
    | ResetConnection
    | Debug
    | InitDB
    | Query
    | FieldList
    | ChangeUser
    | ProcessKill
    | SetOption
    | StmtPrepare
    | StmtExecuteHead
    | StmtExecute
    | StmtSendLongData
    | StmtClose
    | StmtReset
    | StmtFetch
    | OtherCommand
)

_EMPTY: dict[int, Callable[[], AnyCommand]] = {
    Command.QUIT: Quit,
    Command.PING: Ping,
    Command.STATISTICS: Statistics,
    Command.RESET_CONNECTION: ResetConnection,
    Command.DEBUG: Debug,
}


def _command_name(code: int) -> str:
    try:
        return "COM_" + Command(code).name
    except ValueError:
        return f"command 0x{code:02x}"


def decode_command(payload: bytes, capabilities: int) -> AnyCommand:
    """One command packet from the client (COM_STMT_EXECUTE as its head only)."""
    if not payload:
        raise ProtocolError("empty command packet")
    code = payload[0]
    r = p.Reader(payload, 1)
    empty = _EMPTY.get(code)
    if empty is not None:
        r.done(_command_name(code))
        return empty()
    if code == Command.QUERY:
        return _decode_query(r, capabilities)
    if code == Command.INIT_DB:
        return InitDB(p.text_of(r.rest()))
    if code == Command.STMT_PREPARE:
        return StmtPrepare(r.rest())
    if code == Command.STMT_EXECUTE:
        head = StmtExecuteHead(r.int4(), r.int1(), r.int4())
        return head
    if code in (Command.STMT_CLOSE, Command.STMT_RESET):
        stmt = r.int4()
        r.done(_command_name(code))
        return StmtClose(stmt) if code == Command.STMT_CLOSE else StmtReset(stmt)
    if code == Command.STMT_FETCH:
        fetch = StmtFetch(r.int4(), r.int4())
        r.done("COM_STMT_FETCH")
        return fetch
    if code == Command.STMT_SEND_LONG_DATA:
        return StmtSendLongData(r.int4(), r.int2(), r.rest())
    if code == Command.FIELD_LIST:
        table = r.cstr("table name")
        return FieldList(table, p.text_of(r.rest()))
    if code == Command.CHANGE_USER:
        return _decode_change_user(r, capabilities)
    if code == Command.PROCESS_KILL:
        kill = ProcessKill(r.int4())
        r.done("COM_PROCESS_KILL")
        return kill
    if code == Command.SET_OPTION:
        option = SetOption(r.int2())
        r.done("COM_SET_OPTION")
        return option
    return OtherCommand(code, r.rest())


# ----------------------------------------------------------------- bound values


class MalformedAttributes(ProtocolError):
    """The query attributes of a COM_QUERY cannot be read (the packet itself is whole)."""


def _read_bound(
    r: p.Reader,
    count: int,
    types: Sequence[ParamType] | None,
    names: bool,
    long_data: frozenset[int] = frozenset(),
    bound_names: Sequence[str] | None = None,
) -> tuple[tuple[Param, ...], bool]:
    """A null bitmap, the new-params-bound flag, types (and names) and values."""
    bitmap = read_null_bitmap(r, count)
    bound = r.int1()
    if bound > 1:
        raise ProtocolError(f"invalid new-params-bound flag {bound}")
    names_: list[str] = [""] * count
    if not bound and bound_names is not None and len(bound_names) == count:
        names_ = list(bound_names)
    if bound:
        new_types = []
        for i in range(count):
            new_types.append(ParamType(r.int1(), r.int1()))
            if names:
                names_[i] = r.lenenc_text("parameter name")
        types = new_types
    elif types is None or len(types) != count:
        raise ProtocolError("parameters sent without their types, and none were bound before")
    params = []
    for i, ptype in enumerate(types):
        if is_null(bitmap, i):
            params.append(Param(ptype, None, names_[i]))
        elif i in long_data:
            params.append(Param(ptype, None, names_[i], long_data=True))
        else:
            params.append(Param(ptype, decode_binary_value(r, ptype.type, ptype.unsigned), names_[i]))
    return tuple(params), bool(bound)


def _write_bound(params: Sequence[Param], bound: bool, names: bool) -> bytes:
    out = bytearray(null_bitmap([param.value is None and not param.long_data for param in params]))
    out.append(int(bound))
    if bound:
        for param in params:
            out += bytes((param.type.type, param.type.flags))
            if names:
                out += p.lenenc_text(param.name)
    for param in params:
        if param.value is not None and not param.long_data:
            out += encode_binary_value(param.type.type, param.type.unsigned, param.value)
    return bytes(out)


def _decode_query(r: p.Reader, capabilities: int) -> Query:
    if not capabilities & c.CLIENT_QUERY_ATTRIBUTES:
        return Query(r.rest())
    try:
        count = r.lenenc_int()
        set_count = r.lenenc_int()
        attributes: tuple[Param, ...] = ()
        if count:
            attributes, _ = _read_bound(r, count, None, names=True)
    except ProtocolError as err:
        raise MalformedAttributes(f"COM_QUERY: the query attributes cannot be read: {err}") from err
    return Query(r.rest(), attributes, set_count)


def decode_stmt_execute(
    payload: bytes,
    capabilities: int,
    num_params: int,
    types: Sequence[ParamType] | None = None,
    long_data: frozenset[int] = frozenset(),
    names: Sequence[str] | None = None,
) -> StmtExecute:
    """COM_STMT_EXECUTE for a statement of ``num_params`` parameters (from its
    COM_STMT_PREPARE_OK); ``types`` and ``names``: those bound by its last execution
    (:attr:`StmtExecute.types`, :attr:`StmtExecute.names`), used when the client does not
    send them again; ``long_data``: parameters sent with COM_STMT_SEND_LONG_DATA since the
    last execution or reset."""
    r = p.Reader(payload)
    if r.int1() != Command.STMT_EXECUTE:
        raise ProtocolError("not a COM_STMT_EXECUTE packet")
    stmt, flags, iterations = r.int4(), r.int1(), r.int4()
    attrs = bool(capabilities & c.CLIENT_QUERY_ATTRIBUTES)
    params: tuple[Param, ...] = ()
    bound = True
    if num_params > 0 or (attrs and flags & c.PARAMETER_COUNT_AVAILABLE):
        count = r.lenenc_int() if attrs else num_params
        if count:
            params, bound = _read_bound(r, count, types, names=attrs, long_data=long_data, bound_names=names)
    r.done("COM_STMT_EXECUTE")
    return StmtExecute(stmt, params, flags, iterations, bound)


def encode_stmt_execute(e: StmtExecute, capabilities: int, num_params: int) -> bytes:
    out = bytearray((Command.STMT_EXECUTE,))
    out += p.int4(e.statement_id) + bytes((e.flags,)) + p.int4(e.iteration_count)
    attrs = bool(capabilities & c.CLIENT_QUERY_ATTRIBUTES)
    if num_params > 0 or (attrs and e.flags & c.PARAMETER_COUNT_AVAILABLE):
        if attrs:
            out += p.lenenc_int(len(e.params))
        elif len(e.params) != num_params:
            raise ValueError(f"the statement has {num_params} parameters, {len(e.params)} given")
        if e.params:
            out += _write_bound(e.params, e.new_params_bound, names=attrs)
    elif e.params:
        raise ValueError("parameters given for a statement without parameters")
    return bytes(out)


def _decode_change_user(r: p.Reader, capabilities: int) -> ChangeUser:
    user = r.cstr("user name")
    if capabilities & c.CLIENT_SECURE_CONNECTION:
        auth = r.fixed(r.int1(), "authentication response")
    else:
        auth = r.cstr_bytes("authentication response")
    database = r.cstr("database name", or_end=True)
    charset = 0
    plugin = ""
    attributes: tuple[tuple[str, str], ...] = ()
    if not r.at_end():
        charset = r.int2()
    if capabilities & c.CLIENT_PLUGIN_AUTH and not r.at_end():
        plugin = r.cstr("auth plugin name", or_end=True)
    if capabilities & c.CLIENT_CONNECT_ATTRS and not r.at_end():
        attributes = decode_attributes(r.lenenc_bytes("connection attributes"))
    r.done("COM_CHANGE_USER")
    return ChangeUser(user, auth, database, charset, plugin, attributes)


# ----------------------------------------------------------------- encoding


def encode_command(cmd: AnyCommand, capabilities: int, num_params: int = 0) -> bytes:
    """The payload of a command (``num_params`` for COM_STMT_EXECUTE only)."""
    match cmd:
        case Quit():
            return bytes((Command.QUIT,))
        case Ping():
            return bytes((Command.PING,))
        case Statistics():
            return bytes((Command.STATISTICS,))
        case ResetConnection():
            return bytes((Command.RESET_CONNECTION,))
        case Debug():
            return bytes((Command.DEBUG,))
        case InitDB(schema):
            return bytes((Command.INIT_DB,)) + p.text_bytes(schema)
        case Query(sql, attributes, set_count):
            if not capabilities & c.CLIENT_QUERY_ATTRIBUTES:
                if attributes:
                    raise ValueError("query attributes need CLIENT_QUERY_ATTRIBUTES")
                return bytes((Command.QUERY,)) + sql
            head = bytes((Command.QUERY,)) + p.lenenc_int(len(attributes)) + p.lenenc_int(set_count)
            if attributes:
                head += _write_bound(attributes, True, names=True)
            return head + sql
        case StmtPrepare(sql):
            return bytes((Command.STMT_PREPARE,)) + sql
        case StmtExecute():
            return encode_stmt_execute(cmd, capabilities, num_params)
        case StmtExecuteHead(stmt, flags, iterations):
            return bytes((Command.STMT_EXECUTE,)) + p.int4(stmt) + bytes((flags,)) + p.int4(iterations)
        case StmtClose(stmt):
            return bytes((Command.STMT_CLOSE,)) + p.int4(stmt)
        case StmtReset(stmt):
            return bytes((Command.STMT_RESET,)) + p.int4(stmt)
        case StmtFetch(stmt, rows):
            return bytes((Command.STMT_FETCH,)) + p.int4(stmt) + p.int4(rows)
        case StmtSendLongData(stmt, param_id, data):
            return bytes((Command.STMT_SEND_LONG_DATA,)) + p.int4(stmt) + p.int2(param_id) + data
        case FieldList(table, wildcard):
            return bytes((Command.FIELD_LIST,)) + p.cstr(table) + p.text_bytes(wildcard)
        case ChangeUser():
            return _encode_change_user(cmd, capabilities)
        case ProcessKill(connection_id):
            return bytes((Command.PROCESS_KILL,)) + p.int4(connection_id)
        case SetOption(option):
            return bytes((Command.SET_OPTION,)) + p.int2(option)
        case OtherCommand(code, body):
            return bytes((code,)) + body


def _encode_change_user(u: ChangeUser, capabilities: int) -> bytes:
    out = bytearray((Command.CHANGE_USER,))
    out += p.cstr(u.user)
    if capabilities & c.CLIENT_SECURE_CONNECTION:
        if len(u.auth_response) > 255:
            raise ValueError("authentication response over 255 bytes")
        out += bytes((len(u.auth_response),)) + u.auth_response
    else:
        out += p.cstr(u.auth_response)
    out += p.cstr(u.database)
    out += p.int2(u.charset)
    if capabilities & c.CLIENT_PLUGIN_AUTH:
        out += p.cstr(u.auth_plugin_name)
    if capabilities & c.CLIENT_CONNECT_ATTRS:
        out += p.lenenc_bytes(encode_attributes(u.attributes))
    return bytes(out)
