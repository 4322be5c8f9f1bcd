"""Masking of what leaves the proxy besides result rows: notices, errors, notifications,
reported parameters.

Rows are masked column by column because the mask plan knows where each value comes
from.  The other messages a server sends carry free text, and data reaches it through
``RAISE NOTICE '%', email``, ``pg_notify('ch', email)``, a failed cast that quotes the
value (``invalid input syntax for type integer: "ada@example.com"``), a unique violation
(``Key (email)=(ada@example.com) already exists.``) or a check that fails
(``Failing row contains (...)``).  A :class:`ChannelMasker` masks that text in three ways:

- **by value**: what the value detectors find (:func:`~dbsentry.masking.detect.find_sensitive`)
  is masked in place, the rest of the text stays;
- **by what the session has seen masked**: :class:`TouchedValues` remembers raw values of
  classified columns that the session's masked results contained, and any occurrence of
  one of them (in any case, with any separators, reversed, as md5, hex or base64) becomes
  the class placeholder, so a name that no detector can find is still caught;
- **by where the message comes from**: an error that quotes data, raised by a statement
  that reads classified columns, has its quoted values redacted (``"<redacted>"``) and a
  message raised by code (``RAISE``) or a notice is withheld; key and row details of
  constraint violations on tables with classified columns are redacted whatever the
  statement was.

Everything else, including the SQLSTATE, severity, and harmless text such as
``function foo(integer) does not exist``, passes unchanged.  Pure: no I/O.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from dbsentry.masking.catalog import ClassMap
from dbsentry.masking.classes import DataClass
from dbsentry.masking.detect import find_sensitive
from dbsentry.masking.strategies import DEFAULT_STRATEGIES, PLACEHOLDERS, mask_text

REDACTED = "<redacted>"
WITHHELD_NOTICE = "dbsentry: the notice text was withheld because the statement reads masked data"
WITHHELD_RAISE = "dbsentry: the message was withheld because the statement reads masked data"

# SQLSTATE classes whose messages may quote values: data exceptions, integrity constraint
# violations, PL/pgSQL RAISE, routine and trigger exceptions, check options, internal and
# foreign-data errors, and the undefined-object errors of classes 42 and 3F, which quote a
# name the statement may have computed from data (``current_setting(name)``,
# ``name::regclass``, ``name::regoper``).
DATA_CLASSES = frozenset({"22", "23", "P0", "2F", "38", "39", "09", "27", "44", "XX", "HV", "42", "3F"})
# Fields of an ErrorResponse/NoticeResponse that carry free text: message, detail, hint,
# context (where), internal query.  The others are codes, positions, identifiers, the
# server's file and line.
TEXT_FIELDS = frozenset("MDHWq")
# untranslatable_character, character_not_in_repertoire: "character with byte sequence
# 0xd0 0x96 in encoding ..." / "invalid byte sequence for encoding ...: 0xd0 0x96"
_ENCODING_ERRORS = frozenset({"22P05", "22021"})
_BYTE_SEQUENCE = re.compile(r"0x[0-9a-fA-F]{2}(?: 0x[0-9a-fA-F]{2})*")
_WITHHELD_BYTES = "(bytes withheld by dbsentry)"

# Constraint violations whose DETAIL quotes a key or a whole row of the table.
_ROW_CLASSES = frozenset({"23", "44", "27"})

# ParameterStatus values that are set by the server or have a fixed form; the others
# (application_name, search_path, parameters extensions report) are free text.
FIXED_PARAMETERS = frozenset(
    {
        "server_version",
        "server_encoding",
        "client_encoding",
        "datestyle",
        "intervalstyle",
        "timezone",
        "integer_datetimes",
        "standard_conforming_strings",
        "is_superuser",
        "session_authorization",
        "in_hot_standby",
        "default_transaction_read_only",
        "scram_iterations",
    }
)

MIN_FORM = 4  # shorter normalized values are not looked for (they would match everywhere)
MIN_WORD = 5  # words of a value looked for on their own (``Lovelace`` of ``Ada Lovelace``)


def _norm_map(text: str) -> tuple[str, list[int]]:
    """``text`` lower case with letters and digits only, and for each character kept its
    index in ``text``."""
    chars: list[str] = []
    where: list[int] = []
    for i, ch in enumerate(text):
        if ch.isalnum():
            low = ch.lower()
            if len(low) != 1:
                low = ch  # keep the index map one to one
            chars.append(low)
            where.append(i)
    return "".join(chars), where


def _norm(text: str) -> str:
    return _norm_map(text)[0]


def spellings(value: str) -> set[str]:
    """The normalized forms of ``value`` that SQL can hand out without a detector seeing
    them: the value, reversed, its md5, hex and base64, and its longer words."""
    raw = value.encode("utf-8", "surrogateescape")
    n = _norm(value)
    out = {
        n,
        n[::-1],
        hashlib.md5(raw).hexdigest(),
        raw.hex(),
        _norm(base64.b64encode(raw).decode()),
    }
    words = re.split(r"[\W_]+", value)
    if len(words) > 1:
        out.update(w for word in words if len(w := _norm(word)) >= MIN_WORD)
    return {f for f in out if len(f) >= MIN_FORM}


@dataclass
class TouchedValues:
    """A bounded set of raw values of classified columns that a session's masked results
    contained; the oldest are forgotten first."""

    limit: int = 4096
    _values: dict[str, DataClass] = field(default_factory=dict)
    # first MIN_FORM characters of a form -> {form: class}
    _index: dict[str, dict[str, DataClass]] | None = None

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, value: object) -> bool:
        return value in self._values

    def add(self, value: str, cls: DataClass) -> None:
        if len(_norm(value)) < MIN_FORM:
            return
        values = self._values
        if value in values:
            return
        if len(values) >= self.limit:
            del values[next(iter(values))]
        values[value] = cls
        self._index = None

    def _built(self) -> dict[str, dict[str, DataClass]]:
        index = self._index
        if index is None:
            index = {}
            for value, cls in self._values.items():
                for form in spellings(value):
                    index.setdefault(form[:MIN_FORM], {})[form] = cls
            self._index = index
        return index

    def find(self, text: str) -> list[tuple[int, int, DataClass]]:
        """Where remembered values occur in ``text`` (longest first at each place, not
        overlapping), as ``(start, end, class)`` in ``text``'s indices."""
        if not self._values or len(text) < MIN_FORM:
            return []
        index = self._built()
        norm, where = _norm_map(text)
        out: list[tuple[int, int, DataClass]] = []
        i = 0
        n = len(norm)
        while i <= n - MIN_FORM:
            bucket = index.get(norm[i : i + MIN_FORM])
            if bucket is not None:
                best = max((f for f in bucket if norm.startswith(f, i)), key=len, default=None)
                if best is not None:
                    j = i + len(best)
                    out.append((where[i], where[j - 1] + 1, bucket[best]))
                    i = j
                    continue
            i += 1
        return out


def classified_columns(classmap: ClassMap) -> dict[tuple[str, str], frozenset[str]]:
    """Lower-case column names of classified columns, by ``(schema, table)`` and by
    ``("", table)`` (error messages name a table without its schema in their text)."""
    out: dict[tuple[str, str], set[str]] = {}
    for col in classmap.columns:
        for key in ((col.schema.lower(), col.table.lower()), ("", col.table.lower())):
            out.setdefault(key, set()).add(col.column.lower())
    return {k: frozenset(v) for k, v in out.items()}


_KEY_TAIL_RE = re.compile(
    r"\) (?:already exists|is not present in table \"[^\"]*\"|is still referenced from table \"[^\"]*\")\.$"
)
_FAILING_ROW = "Failing row contains ("


def redact_quoted(text: str, keep: frozenset[str] = frozenset()) -> str:
    """``text`` with what it quotes redacted.  Quoted identifiers in ``keep`` (the
    error's table, column, constraint...) stay; from the first quoted piece that is not
    one of them to the last quote, everything becomes ``"<redacted>"``: PostgreSQL does
    not escape quotes inside the values it quotes, so where a value ends cannot be told,
    and values come after the identifiers in its messages."""
    pos = text.find('"')
    while pos >= 0:
        close = text.find('"', pos + 1)
        if close < 0:
            return f"{text[: pos + 1]}{REDACTED}"
        if text[pos + 1 : close] not in keep:
            last = text.rindex('"')
            return f'{text[:pos]}"{REDACTED}"{text[last + 1 :]}'
        pos = text.find('"', close + 1)
    return text


def redact_tail(message: str) -> str:
    """A message of the form ``what: value`` (``operator does not exist: <value>``) with
    the value after its last ``": "`` redacted, unless it is redacted already."""
    head, sep, tail = message.rpartition(": ")
    if not sep or not tail or REDACTED in tail:
        return message
    return f"{head}{sep}{REDACTED}"


# The lines of a CONTEXT (``W``) that say where an error happened, in code the statement
# ran: function names, line numbers, statement numbers, the quoted text of a statement or
# expression (quotes are redacted on their own).  Any other line, such as the input JSON
# echoes (``JSON data, line 1: [Ada...``), is text PostgreSQL took from a value.
_FRAME_LINES = re.compile(
    r"PL/pgSQL function [^\n]*"
    r'|SQL function "[^"\n]*"(?: statement \d+| during inlining| during startup)?'
    r'|(?:SQL statement|SQL expression|PL/pgSQL expression|PL/pgSQL assignment) "[^\n]*"?'
    r'|COPY [^,\n]+, line \d+(?:, column [^:\n]+)?(?:: "[^\n]*"?)?'
    r"|parallel worker"
    r"|(?:unnamed portal|portal \"[^\"\n]*\"|extended query) with parameters: [^\n]*"
)


def redact_context(context: str) -> str:
    """A CONTEXT with every line that is not a known frame redacted (see _FRAME_LINES)."""
    return "\n".join(
        line if _FRAME_LINES.fullmatch(line) else REDACTED for line in context.split("\n")
    )


def redact_detail(detail: str) -> str:
    """A constraint violation's DETAIL with the key values or the failing row redacted."""
    if detail.startswith(_FAILING_ROW):
        return f"{_FAILING_ROW}{REDACTED})."
    if detail.startswith("Key ("):
        sep = detail.find(")=(")
        if sep > 0:
            rest = detail[sep + 3 :]
            m = _KEY_TAIL_RE.search(rest)
            tail = rest[m.start() :] if m is not None and m.start() > 0 else ")"
            return f"{detail[: sep + 3]}{REDACTED}{tail}"
    return redact_quoted(detail)


def _key_columns(detail: str) -> list[str] | None:
    if not detail.startswith("Key ("):
        return None
    sep = detail.find(")=(")
    if sep < 0:
        return None
    return [c.strip().strip('"').lower() for c in detail[5:sep].split(",")]


@dataclass
class ChannelMasker:
    """Masks the free text of server messages for an identity under masking."""

    strategies: Mapping[DataClass, str] = field(default_factory=lambda: dict(DEFAULT_STRATEGIES))
    key: bytes = b""
    touched: TouchedValues = field(default_factory=TouchedValues)
    # classified column names by (schema, table) and ("", table); see classified_columns
    tables: Mapping[tuple[str, str], frozenset[str]] = field(default_factory=dict)

    def text(self, text: str) -> str:
        """``text`` with detected values and remembered values masked, the rest kept.
        Detection goes first, so an email keeps its domain as it does in rows."""
        if not text:
            return text
        spans = find_sensitive(text)
        if spans:
            out: list[str] = []
            pos = 0
            for sp in spans:
                out.append(text[pos : sp.start])
                strategy = self.strategies.get(sp.data_class, DEFAULT_STRATEGIES[sp.data_class])
                masked = mask_text(
                    text[sp.start : sp.end],
                    sp.data_class,
                    "redact" if strategy == "null" else strategy,
                    self.key,
                )
                out.append(masked or PLACEHOLDERS.get(sp.data_class, REDACTED))
                pos = sp.end
            out.append(text[pos:])
            text = "".join(out)
        found = self.touched.find(text)
        if found:
            parts: list[str] = []
            pos = 0
            for start, end, cls in found:
                parts.append(text[pos:start])
                parts.append(PLACEHOLDERS.get(cls, REDACTED))
                pos = end
            parts.append(text[pos:])
            text = "".join(parts)
        return text

    def fields(
        self, fields: Iterable[tuple[str, str]], *, notice: bool, strict: bool
    ) -> tuple[tuple[str, str], ...] | None:
        """An ErrorResponse's (``notice``: NoticeResponse's) fields masked; None when
        nothing changed.  ``strict``: the statement that caused it reads classified
        columns, so text it quotes or raises may be their values."""
        fields = tuple(fields)
        values = dict(fields)
        sqlstate = values.get("C", "")
        cls = sqlstate[:2]
        keep = frozenset(v for k, v in fields if k in "stcnd" and v)
        row_detail = cls in _ROW_CLASSES and self._classified_detail(values)
        # A notice or RAISE: free text that code wrote, possibly a value read by the statement.
        withhold = strict and (notice or cls == "P0")
        # (an undefined column is named by the statement's own text: no run-time value)
        quoted = strict and cls in DATA_CLASSES and sqlstate != "42703"
        out: list[tuple[str, str]] = []
        changed = False
        # An encoding error names the bytes of the character it could not convert: of a
        # value, a masked one as likely as not (and one character at a time, all of it).
        bytes_named = sqlstate in _ENCODING_ERRORS
        for code, value in fields:
            if code in TEXT_FIELDS:
                new = _BYTE_SEQUENCE.sub(_WITHHELD_BYTES, value) if bytes_named else value
                if withhold and code in "MDH":
                    new = "" if code != "M" else (WITHHELD_NOTICE if notice else WITHHELD_RAISE)
                else:
                    if code == "D" and (
                        row_detail
                        or (
                            quoted and (value.startswith(_FAILING_ROW) or value.startswith("Key ("))
                        )
                    ):
                        new = redact_detail(new)
                    elif quoted:
                        if code == "W":
                            new = redact_context(new)
                        elif code in "DH" and "\n" in new:
                            # PostgreSQL's own details are a sentence; several lines are
                            # a parser's report echoing its input (libxml's: the message,
                            # the input line, a caret)
                            new = REDACTED
                        # (a statement that was analysed parsed: a syntax error now comes
                        # from text parsed at run time, such as a value cast to regtype)
                        new = redact_quoted(new, keep)
                        if code == "M":
                            new = redact_tail(new)
                    new = self.text(new)
                if new != value:
                    changed = True
                    if not new:
                        continue
                out.append((code, new))
            else:
                out.append((code, value))
        return tuple(out) if changed else None

    def _classified_detail(self, values: Mapping[str, str]) -> bool:
        """Whether a constraint violation's DETAIL may quote classified columns: its table
        has some, and the key it quotes (if it is a key) includes one, or the table is
        unknown to the error."""
        table = values.get("t", "").lower()
        if not table:
            return bool(self.tables)  # cannot tell which table: assume the worst
        columns = self.tables.get((values.get("s", "").lower(), table)) or self.tables.get(
            ("", table)
        )
        if not columns:
            return False
        keys = _key_columns(values.get("D", ""))
        if keys is None:
            return True
        return any(
            k in columns or any(re.search(rf"\b{re.escape(c)}\b", k) for c in columns) for k in keys
        )

    def notification(self, channel: str, payload: str) -> str | None:
        """A notification's payload masked; None when unchanged."""
        new = self.text(payload)
        return None if new == payload else new

    def parameter(self, name: str, value: str) -> str | None:
        """A reported parameter's value masked (free-text parameters only); None when
        unchanged."""
        if name.lower() in FIXED_PARAMETERS:
            return None
        new = self.text(value)
        return None if new == value else new
