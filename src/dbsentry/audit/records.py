"""What the audit trail records: sessions, statements, completions, approvals, system events.

Records are frozen dataclasses.  ``to_dict()`` gives their JSON form and ``canonical()`` the
exact bytes that are stored and hashed: orjson with sorted keys, so the same record always
serialises to the same bytes.

Helpers for building statement records: ``redact_literals`` (constants become ``?``),
``extract_correlation`` (W3C ``traceparent`` and sqlcommenter pairs from SQL comments) and
``prepare_params`` (extended-protocol parameters, size-capped and optionally redacted).
"""

from __future__ import annotations

import itertools
import os
import re
import secrets
import struct
import time as _time
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, TypeVar
from urllib.parse import unquote

import orjson

from dbsentry.governance.text import REDACTED_STATEMENT as REDACTED_STATEMENT
from dbsentry.governance.text import Lexer, comment_texts, without_literals
from dbsentry.identity.model import Identity

if TYPE_CHECKING:
    from dbsentry.audit.redaction import LiteralRedactor

"""Stored instead of the text when redaction is on and the statement cannot be tokenized."""



_id_prefix = secrets.token_hex(4)
_id_number = int(_id_prefix, 16)
_id_counter = itertools.count()
_U64 = (1 << 64) - 1


def _new_id_source() -> None:
    """A forked process gets its own id prefix and counter (ids stay unique across workers)."""
    global _id_prefix, _id_number, _id_counter
    _id_prefix = secrets.token_hex(4)
    _id_number = int(_id_prefix, 16)
    _id_counter = itertools.count()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_id_source)


def new_record_id() -> str:
    """A 128-bit id (32 hex digits) naming one record, assigned when the record is made.

    64 bits of time in nanoseconds, 32 random bits drawn once per process, and a 32-bit
    counter: unique across processes and nodes without a system call per record, and new
    ids land at the end of the store's id index instead of at random places in it (much
    cheaper to insert once the index outgrows the cache).
    """
    return _record_id(_time.time_ns())


_ID_PARTS = struct.Struct(">QII").pack


def _record_id(ns: int) -> str:
    """:func:`new_record_id` for a time already read (in nanoseconds)."""
    # the same 32 hex digits as "%016x%s%08x" (time, prefix, counter), in a third of the time
    return _ID_PARTS(ns & _U64, _id_number, next(_id_counter) & 0xFFFFFFFF).hex()


_FIELD_KEYS: dict[type, tuple[tuple[str, str], ...]] = {}


def _field_keys(cls: type[_Record]) -> tuple[tuple[str, str], ...]:
    """(attribute, JSON key) of a record class's fields, computed once per class."""
    keys = _FIELD_KEYS.get(cls)
    if keys is None:
        keys = tuple((f.name, cls._RENAMES.get(f.name, f.name)) for f in fields(cls))  # type: ignore[arg-type]
        _FIELD_KEYS[cls] = keys
    return keys


_BUILDERS: dict[type, Any] = {}


def _builder(cls: type[_Record]) -> Any:
    """A function giving a record's canonical mapping, generated once per class: the hot
    path (every statement makes a record) without the generic loop of ``to_dict``.
    Tuples stay tuples (orjson writes them as arrays, exactly like lists)."""
    fn = _BUILDERS.get(cls)
    if fn is None:
        items = [f"'type': {cls.TYPE!r}"]
        for f in fields(cls):  # type: ignore[arg-type]
            key = cls._RENAMES.get(f.name, f.name)
            if "Mapping" in str(f.type):
                items.append(f"{key!r}: _as_dict(r.{f.name})")
            else:
                items.append(f"{key!r}: r.{f.name}")
        namespace: dict[str, Any] = {"_as_dict": _as_dict}
        exec(f"def build(r):\n    return {{{', '.join(items)}}}\n", namespace)
        fn = _BUILDERS[cls] = namespace["build"]
    return fn


def _as_dict(value: Any) -> Any:
    return value if value is None or type(value) is dict else dict(value)


class _Record:
    """Shared serialisation for the record dataclasses."""

    __slots__ = ()
    TYPE: ClassVar[str]
    # Python attribute name -> JSON key, for keys that are not valid or clear as identifiers.
    _RENAMES: ClassVar[Mapping[str, str]] = {}
    # The pre-encoded parts of a record made by RecordTemplate.make (in its instance dict);
    # None for a record made any other way.
    _template: ClassVar[RecordTemplate[Any] | None] = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.TYPE}
        for name, key in _field_keys(type(self)):
            value = getattr(self, name)
            if isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Mapping):
                value = dict(value)
            out[key] = value
        return out

    def canonical_mapping(self) -> dict[str, Any]:
        """``to_dict()``'s content, faster, with tuples left as tuples."""
        result: dict[str, Any] = _builder(type(self))(self)
        return result

    def canonical(self) -> bytes:
        """The stored and hashed form: compact JSON with sorted keys."""
        return canonical_json(self.canonical_mapping())


def canonical_json(data: Mapping[str, Any]) -> bytes:
    return orjson.dumps(data, option=orjson.OPT_SORT_KEYS)


@dataclass(frozen=True, kw_only=True)
class SessionEvent(_Record):
    """A client session was opened (after authentication) or closed."""

    TYPE: ClassVar[str] = "session"

    event: Literal["opened", "closed"]
    session_id: str
    identity: str
    identity_kind: str
    groups: tuple[str, ...] = ()
    token_id: str | None = None
    client_addr: str | None = None
    application_name: str | None = None
    tls: bool = False
    tls_version: str | None = None
    connection: str | None = None
    environment: str | None = None
    database: str | None = None
    duration_ms: float | None = None  # closed only
    end_reason: str | None = None  # closed only: "client_terminate", "idle_timeout", "error: ..."
    engine: str = "postgres"  # the listener's protocol: "postgres" or "mysql"
    time: float = field(default_factory=_time.time)
    id: str = field(default_factory=new_record_id)

    @classmethod
    def for_identity(
        cls,
        event: Literal["opened", "closed"],
        identity: Identity,
        *,
        session_id: str,
        **kwargs: Any,
    ) -> SessionEvent:
        """A session event whose identity fields come from an ``Identity``."""
        return cls(
            event=event,
            session_id=session_id,
            identity=identity.name,
            identity_kind=identity.kind,
            groups=tuple(sorted(identity.groups)),
            token_id=identity.token_id,
            **kwargs,
        )


def session_record(
    event: str,
    identity: Identity,
    *,
    session_id: str,
    opened_at: float,
    reason: str | None = None,
    tls_version: str | None = None,
    **kwargs: Any,
) -> SessionEvent:
    """A session's ``opened`` or ``closed`` record (anything else counts as closed), as
    every engine's session writes it: ``opened_at`` is ``time.monotonic()`` at the start
    (a closed record gets the duration), ``reason`` why it ended; ``kwargs``: the other
    fields (client_addr, connection, environment, database, application_name, engine)."""
    closed = event != "opened"
    return SessionEvent.for_identity(
        "closed" if closed else "opened",
        identity,
        session_id=session_id,
        tls=tls_version is not None,
        tls_version=tls_version,
        duration_ms=round((_time.monotonic() - opened_at) * 1000, 3) if closed else None,
        end_reason=reason if closed else None,
        **kwargs,
    )


#: Every ``decision`` a statement record holds: allowed, allowed with its results masked,
#: denied, held for approval, run after an approval.
STATEMENT_DECISIONS: tuple[str, ...] = ("allow", "mask", "deny", "require_approval", "approved")


@dataclass(frozen=True, kw_only=True)
class StatementRecord(_Record):
    """One statement a client sent, with the facts and the decision governance made on it.

    It is written before the statement is forwarded (``decision`` is what the proxy did, one
    of :data:`STATEMENT_DECISIONS`); a ``CompletionRecord`` follows with the outcome.
    """

    TYPE: ClassVar[str] = "statement"
    _RENAMES: ClassVar[Mapping[str, str]] = {"statement_class": "class"}

    session_id: str
    identity: str
    identity_kind: str
    statement: str
    decision: str
    connection: str | None = None
    environment: str | None = None
    database: str | None = None
    statement_redacted: bool = False
    statement_truncated: bool = False
    params: tuple[str | None, ...] | None = None
    params_truncated: bool = False
    fingerprint: str | None = None
    command: str | None = None
    statement_class: str | None = None  # "read", "write", "ddl", "dcl", "role", "admin", ...
    risk: str | None = None  # "low", "medium", "high"
    tables: tuple[str, ...] = ()
    columns_read: tuple[str, ...] = ()
    columns_written: tuple[str, ...] = ()
    data_classes: tuple[str, ...] = ()  # classes of the columns touched (masked or not)
    rules: tuple[str, ...] = ()
    approval_id: str | None = None
    masked_columns: tuple[str, ...] = ()
    masked_classes: tuple[str, ...] = ()
    correlation: Mapping[str, str] = field(default_factory=dict)
    application_name: str | None = None
    engine: str = "postgres"  # the listener's protocol: "postgres" or "mysql"
    time: float = field(default_factory=_time.time)
    id: str = field(default_factory=new_record_id)

    @classmethod
    def create(
        cls,
        *,
        sql: str,
        params: Sequence[str | bytes | None] | None = None,
        redact: bool | str = False,
        max_statement_chars: int = 65536,
        max_param_chars: int = 1024,
        max_params_chars: int = 16384,
        redactor: LiteralRedactor | None = None,
        **kwargs: Any,
    ) -> StatementRecord:
        """Build a record from the raw statement text and parameters.

        Correlation ids are taken from the raw text before redaction; the text is redacted
        and capped, and the parameters prepared with ``prepare_params``.  ``redact`` is the
        ``audit.redact_literals`` setting: ``"sensitive"`` replaces sensitive values with
        tokens of ``redactor`` (default: the process's, see ``dbsentry.audit.redaction``),
        True every constant with ``?``, False nothing.  The redactor's engine lexer reads
        the text (a redactor without one stores every statement redacted whole).
        """
        text, redacted, truncated, prepared, params_truncated, correlation = statement_parts(
            sql,
            params,
            redact,
            kwargs.pop("correlation", None),
            kwargs.get("connection"),
            max_statement_chars,
            max_param_chars,
            max_params_chars,
            redactor,
        )
        return cls(
            statement=text,
            statement_redacted=redacted,
            statement_truncated=truncated,
            params=prepared,
            params_truncated=params_truncated,
            correlation=correlation,
            **kwargs,
        )


StatementParts = tuple[str, bool, bool, "tuple[str | None, ...] | None", bool, Mapping[str, str]]


def statement_parts(
    sql: str,
    params: Sequence[str | bytes | None] | None,
    redact: bool | str,
    correlation: Mapping[str, str] | None,
    connection: str | None,
    max_statement_chars: int = 65536,
    max_param_chars: int = 1024,
    max_params_chars: int = 16384,
    redactor: LiteralRedactor | None = None,
) -> StatementParts:
    """What :meth:`StatementRecord.create` stores of a statement: (text, statement_redacted,
    statement_truncated, params, params_truncated, correlation)."""
    if redactor is None:
        from dbsentry.audit.redaction import current  # it imports this module

        redactor = current()
    if correlation is None:
        correlation = extract_correlation(sql, redactor.lex)
    if redact is not True and redact is not False:  # "sensitive" (see redaction_mode)
        text, params, redacted = redactor.redact_sensitive(
            sql, None if params is None else [_param_text(p) for p in params], connection
        )
        if correlation:
            correlation = redactor.correlation(correlation)
        mode = "sensitive"
    else:
        mode = "all" if redact is True else "off"
        redacted = mode == "all"
        text = redact_literals(sql, redactor.lex) if redacted else sql
    truncated = len(text) > max_statement_chars
    if truncated:
        text = text[:max_statement_chars]
    prepared, params_truncated = (
        prepare_params(params, redact=mode == "all", max_value=max_param_chars, max_total=max_params_chars)
        if params is not None
        else (None, False)
    )
    return text, redacted, truncated, prepared, params_truncated, correlation


@dataclass(frozen=True, kw_only=True)
class CompletionRecord(_Record):
    """The outcome of a statement: rows, time taken, error.  Follows its ``StatementRecord``."""

    TYPE: ClassVar[str] = "completion"

    statement_id: str
    session_id: str
    rows: int | None = None
    duration_ms: float | None = None
    sqlstate: str | None = None
    error: str | None = None
    time: float = field(default_factory=_time.time)
    id: str = field(default_factory=new_record_id)


@dataclass(frozen=True, kw_only=True)
class ApprovalRecord(_Record):
    """A step in an approval's life, written by the approvals feature.

    ``event`` is ``requested``, ``approved``, ``denied``, ``expired`` or ``revoked``;
    ``decision`` repeats the outcome once there is one.
    """

    TYPE: ClassVar[str] = "approval"

    approval_id: str
    event: Literal["requested", "approved", "denied", "expired", "revoked"]
    requester: str
    requester_kind: str = "human"
    reviewer: str | None = None
    requested_at: float | None = None
    decided_at: float | None = None
    expires_at: float | None = None
    decision: str | None = None
    reason: str | None = None  # the requester's justification
    review_comment: str | None = None
    connection: str | None = None
    environment: str | None = None
    statement: str | None = None
    fingerprint: str | None = None
    session_id: str | None = None
    time: float = field(default_factory=_time.time)
    id: str = field(default_factory=new_record_id)


@dataclass(frozen=True, kw_only=True)
class SystemEvent(_Record):
    """Something that happened to the audit trail itself (an outage, a recovery, a start)."""

    TYPE: ClassVar[str] = "system"

    event: str
    detail: Mapping[str, Any] = field(default_factory=dict)
    node: str | None = None
    time: float = field(default_factory=_time.time)
    id: str = field(default_factory=new_record_id)


Record = SessionEvent | StatementRecord | CompletionRecord | ApprovalRecord | SystemEvent


# --- the canonical payload, from pre-encoded parts ----------------------------------------

_new = object.__new__
_set = object.__setattr__
_dumps = orjson.dumps
_SORT = orjson.OPT_SORT_KEYS
R = TypeVar("R", bound=_Record)


def payload_bytes(record: _Record) -> bytes:
    """The canonical payload of ``record``: exactly
    ``orjson.dumps(record.canonical_mapping(), option=orjson.OPT_SORT_KEYS)``, the bytes
    that are stored and hashed.

    A record made by :meth:`RecordTemplate.make` is encoded from its template's
    pre-encoded parts: only the fields that vary between the template's records are
    encoded, and spliced in key order between the others' bytes."""
    template = record._template
    if template is None:
        return _dumps(record.canonical_mapping(), option=_SORT)
    return template.encode(record)


def _runs(cls: type[_Record], variable: tuple[str, ...]) -> list[tuple[str, list[str]]]:
    """The canonical keys in order: each varying key as ``(key, [])``, each run of static
    keys as ``(its first key, [every key of the run])``."""
    varying = {cls._RENAMES.get(n, n) for n in (*variable, "id", "time")}
    keys = sorted([*(cls._RENAMES.get(f.name, f.name) for f in fields(cls)), "type"])  # type: ignore[arg-type]
    out: list[tuple[str, list[str]]] = []
    for key in keys:
        if key in varying:
            out.append((key, []))
        elif out and out[-1][1]:
            out[-1][1].append(key)
        else:
            out.append((key, [key]))
    return out


_GENERATED: dict[tuple[type, tuple[str, ...]], tuple[Any, Any]] = {}
_LAYOUTS: dict[tuple[type, tuple[str, ...]], tuple[dict[str, Any], tuple[tuple[tuple[str, ...], int], ...]]] = {}


def _layout(cls: type[_Record], variable: tuple[str, ...]) -> tuple[dict[str, Any], tuple[tuple[tuple[str, ...], int], ...]]:
    """A record class's fields by name, and each run of static keys (see :func:`_runs`)
    with the length of ``{"first key":`` that starts its encoding: computed once per class
    and set of varying fields (a template is made for every new statement)."""
    got = _LAYOUTS.get((cls, variable))
    if got is None:
        by_name = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
        runs = tuple((tuple(run), len(_dumps(run[0])) + 2) for _, run in _runs(cls, variable) if run)
        got = _LAYOUTS[(cls, variable)] = (by_name, runs)
    return got


def _generated(cls: type[_Record], variable: tuple[str, ...]) -> tuple[Any, Any]:
    """(make, encode) for records of ``cls`` whose ``variable`` fields (and id and time)
    vary, generated once per class and set of fields.

    ``encode`` gives orjson one dict, its keys in canonical order: each varying value,
    and for each run of static keys its first key, whose value is an ``orjson.Fragment``
    holding that key's encoded value followed by the rest of the run (``,"key":value``
    each): orjson writes a fragment as it is, so the output is the canonical object."""
    got = _GENERATED.get((cls, variable))
    if got is not None:
        return got
    names = {cls._RENAMES.get(f.name, f.name): f for f in fields(cls)}  # type: ignore[arg-type]
    items = []
    run = 0
    for key, static in _runs(cls, variable):
        if static:
            items.append(f"{key!r}: s[{run}]")
            run += 1
        elif _is_mapping_field(names[key]):
            items.append(f"{key!r}: _m(r.{names[key].name})")
        else:
            items.append(f"{key!r}: r.{names[key].name}")
    # A copy of the template's every key (the varying ones as placeholders), the varying
    # values then set in place: the dict is made at its size, not grown.
    assigned = "".join(f"    d[{name!r}] = {name}\n" for name in variable)
    source = (
        f"def make(t, {', '.join(variable)}):\n"
        "    r = _new(_cls)\n"
        "    ns = _ns()\n"
        "    d = t._base.copy()\n"
        f"{assigned}"
        "    d['time'] = ns / 1e9\n"
        "    d['id'] = _id(ns)\n"
        "    _set(r, '__dict__', d)\n"
        "    return r\n"
        "def encode(r, s):\n"
        f"    return _d({{{', '.join(items)}}}, option=_o)\n"
    )
    namespace: dict[str, Any] = {
        "_new": _new,
        "_set": _set,
        "_cls": cls,
        "_ns": _time.time_ns,
        "_id": _record_id,
        "_d": _dumps,
        "_o": _SORT,
        "_m": _as_dict,
    }
    exec(source, namespace)
    got = _GENERATED[(cls, variable)] = (namespace["make"], namespace["encode"])
    return got


def _is_mapping_field(f: Any) -> bool:
    return "Mapping" in str(f.type)


class RecordTemplate(Generic[R]):
    """Records of one class that share most of their values (a session's, a statement's),
    made cheaply and encoded from bytes prepared once.

    ``static`` gives the values the records share (fields not named take their defaults);
    ``variable`` names the fields given to each :meth:`make`, in that order.  ``id`` and
    ``time`` always vary: :meth:`make` draws them.  The records are ordinary records of
    ``cls`` (equal to one made by its constructor with the same values); they remember
    their template, and :func:`payload_bytes` encodes only their varying fields, with the
    pre-encoded bytes of the others.  Records are frozen, and the shared values must not
    be changed: the values a record holds are the ones its template encoded.
    """

    __slots__ = ("_base", "_encode", "_fragments", "cls", "make", "static", "variable")

    def __init__(self, cls: type[R], static: Mapping[str, Any], variable: Sequence[str] = ()) -> None:
        variable = tuple(variable)
        by_name, static_runs = _layout(cls, variable)
        unknown = (set(static) | set(variable)) - set(by_name)
        if unknown:
            raise ValueError(f"{cls.__name__} has no field {sorted(unknown)[0]!r}")
        if {"id", "time"} & (set(static) | set(variable)) or set(static) & set(variable):
            raise ValueError("id and time are drawn for each record; a field is static or variable, not both")
        values: dict[str, Any] = {}
        for name, f in by_name.items():
            if name in variable or name in ("id", "time"):
                continue
            if name in static:
                values[name] = static[name]
            elif f.default is not MISSING:
                values[name] = f.default
            elif f.default_factory is not MISSING:
                values[name] = f.default_factory()  # one value, shared: records are not changed
            else:
                raise ValueError(f"{cls.__name__}.{name} needs a value")
        self.cls = cls
        self.static = values
        self.variable = variable
        # a record's __dict__, but the values make sets (keys in the order they always had)
        self._base: dict[str, Any] = {**values, **dict.fromkeys(variable), "time": None, "id": None, "_template": self}
        make, self._encode = _generated(cls, variable)
        self.make: Any = make.__get__(self)
        # every field readable as an attribute (the varying ones, id and time as None)
        canonical = _builder(cls)(SimpleNamespace(**{**dict.fromkeys(by_name), **values}))
        fragments = []
        for run, skip in static_runs:
            body = _dumps({k: canonical[k] for k in run}, option=_SORT)  # {"k1":v1,"k2":v2}
            fragments.append(orjson.Fragment(body[skip:-1]))  # without '{"k1":'
        self._fragments = tuple(fragments)

    def __reduce__(self) -> tuple[Any, ...]:
        return (RecordTemplate, (self.cls, self.static, self.variable))

    def encode(self, record: R) -> bytes:
        """The canonical payload of a record this template made (see :func:`payload_bytes`)."""
        result: bytes = self._encode(record, self._fragments)
        return result


# --- redaction -----------------------------------------------------------------------------


def redact_literals(sql: str, lex: Lexer) -> str:
    """Replace every string, numeric, bit and hex constant with ``?`` and drop comments.

    ``lex`` is the statement's engine's own lexer (PostgreSQL's scanner, through
    ``dbsentry.engines.postgres.sql.parse.tokens``), so quoting (``E'..'``,
    ``$tag$..$tag$``, ``U&'..'``, doubled quotes) is handled exactly.  Comments are removed
    because they are free text; correlation ids should be extracted first with
    ``extract_correlation``.  When the text cannot be tokenized (an unterminated quote,
    say) nothing of it is kept: ``REDACTED_STATEMENT`` is returned.
    """
    return without_literals(sql, lex)


def _param_text(value: str | bytes | None) -> str | None:
    """A parameter as text: UTF-8 bytes decoded, other bytes as ``\\x`` + hex."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return "\\x" + value.hex()
    return value


def prepare_params(
    params: Sequence[str | bytes | None],
    *,
    redact: bool = False,
    max_value: int = 1024,
    max_total: int = 16384,
) -> tuple[tuple[str | None, ...], bool]:
    """Extended-protocol parameter values as text, each and all together size-capped.

    Bytes that are valid UTF-8 are decoded, others are shown as ``\\x`` + hex.  A value over
    ``max_value`` characters is cut and marked with its full length; once ``max_total``
    characters have been kept the remaining values become ``"…"``.  With ``redact`` every
    non-NULL value is ``?``.  Returns the values and whether anything was cut.
    """
    out: list[str | None] = []
    total = 0
    truncated = False
    for value in params:
        if value is None:
            out.append(None)
            continue
        if redact:
            out.append("?")
            continue
        if isinstance(value, bytes):
            try:
                text = value.decode("utf-8")
            except UnicodeDecodeError:
                text = "\\x" + value[: max_value // 2 + 1].hex()
        else:
            text = value
        if total >= max_total:
            out.append("…")
            truncated = True
            continue
        limit = min(max_value, max_total - total)
        if len(text) > limit:
            full = len(value)
            text = f"{text[:limit]}…(+{full - limit})"
            truncated = True
        total += len(text)
        out.append(text)
    return tuple(out), truncated


# --- correlation ---------------------------------------------------------------------------

_PAIR = re.compile(r"([A-Za-z0-9_.\-%]{1,64})\s*=\s*'((?:[^'\\]|\\.){0,512})'")
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")
_COMMENT_FALLBACK = re.compile(r"/\*(.*?)\*/|--([^\n]*)", re.S)
_MAX_PAIRS = 16
_MAX_VALUE = 256


def _comments(sql: str, lex: Lexer) -> list[str]:
    try:
        return comment_texts(sql, lex)
    except Exception:
        return [m.group(0) for m in _COMMENT_FALLBACK.finditer(sql)]


def extract_correlation(sql: str, lex: Lexer) -> dict[str, str]:
    """Correlation ids carried in the statement's comments.

    Reads sqlcommenter ``key='value'`` pairs (URL-encoded, ``\\'`` escapes) from ``/* */``
    and ``--`` comments (found by the engine's lexer ``lex``; by a plain pattern when it
    cannot tokenize the text).  A ``traceparent`` is kept only if it is a valid W3C trace context,
    and then ``trace_id`` and ``span_id`` are added.  At most 16 pairs, values cut to 256
    characters.  No comments, no pairs: ``{}``.
    """
    if "/*" not in sql and "--" not in sql and "#" not in sql:
        return {}  # no comment marker of any engine's SQL: nothing to read
    found: dict[str, str] = {}
    for comment in _comments(sql, lex):
        for m in _PAIR.finditer(comment):
            if len(found) >= _MAX_PAIRS:
                break
            key = unquote(m.group(1)).lower()
            value = unquote(m.group(2).replace("\\'", "'"))[:_MAX_VALUE]
            found.setdefault(key, value)
    tp = found.get("traceparent")
    if tp is not None:
        tm = _TRACEPARENT.match(tp.strip().lower())
        if tm is None or tm.group(1) == "0" * 32 or tm.group(2) == "0" * 16:
            del found["traceparent"]
        else:
            found["traceparent"] = tp.strip().lower()
            found["trace_id"] = tm.group(1)
            found["span_id"] = tm.group(2)
    return found
