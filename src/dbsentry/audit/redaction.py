"""Sensitive values in what dbsentry itself writes: statement texts, parameters, error texts.

With ``audit.redact_literals: sensitive`` (the default) a constant or bound parameter is
replaced by a *token* when

- it meets a column the catalog classifies (compared with, inserted into or assigned to
  it: ``dbsentry.engines.postgres.masking.literals``), or
- value detection recognises it (``detect_value`` on the whole value; ``find_sensitive``
  inside longer text, where only the values found are replaced).

A token is ``<class:hmac:12 hex digits>``: HMAC-SHA256 of the exact value under the
proxy's audit redaction key.  Equal values give equal tokens, so records still correlate,
and ``dbsentry audit token VALUE`` / ``audit search --value VALUE`` find them, but nobody
without the key can test guesses (a social security number has only 10^9 candidates).
In statement text a token is a string constant (``'<email:hmac:3f9a1c2b7d4e>'``), so the
stored text still parses.  Comments are scanned by value detection as well.

``redact_literals: true`` keeps the old behaviour: every constant becomes ``?``;
``false`` stores everything as sent.
"""

from __future__ import annotations

import hmac
import os
import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from dbsentry.audit.records import redact_literals
from dbsentry.engines.postgres.masking.literals import (
    LiteralMeets,
    Meets,
    find_literal_meets,
    meets_values_only,
)
from dbsentry.engines.postgres.sql import parse as sqlparse
from dbsentry.masking.catalog import Catalog, ClassMap
from dbsentry.masking.classes import DataClass
from dbsentry.masking.detect import detect_value, find_sensitive

__all__ = [
    "TOKEN_RE",
    "LiteralRedactor",
    "RedactMode",
    "Redacted",
    "current",
    "install",
    "load_or_create_redaction_key",
    "redaction_mode",
    "redactor_from_config",
]

RedactMode = Literal["off", "sensitive", "all"]

TOKEN_RE = re.compile(r"<([a-z_]+):hmac:([0-9a-f]{12})>")
_DOMAIN = b"dbsentry-audit-value-v1\x00"
_CACHE_MAX_CHARS = 8192  # longer texts are analysed each time, never kept
_DIGEST_HEX = 12  # 48 bits: tokens of distinct values practically never collide

_LITERAL_TOKENS = frozenset({"SCONST", "USCONST", "ICONST", "FCONST", "BCONST", "XCONST"})
_COMMENT_TOKENS = frozenset({"C_COMMENT", "SQL_COMMENT"})
_UNREDACTABLE = "<statement redacted: could not be tokenized>"
# Correlation keys whose values are trace ids (hex), never personal data.
_TRACE_KEYS = frozenset({"traceparent", "trace_id", "span_id", "tracestate"})


def redaction_mode(setting: bool | str) -> RedactMode:
    """``audit.redact_literals`` as a mode: false, true or ``"sensitive"``."""
    if setting is True:
        return "all"
    if setting is False:
        return "off"
    return "sensitive"


def redactor_from_config(
    config: Any, state_dir: Path, views: Callable[[str], CatalogView | None] | None = None
) -> LiteralRedactor:
    """The proxy's redactor: its key file (created on first use), the configured mode."""
    key = load_or_create_redaction_key(config.redaction_key_path(state_dir))
    return LiteralRedactor(key, redaction_mode(config.redact_literals), views)


def load_or_create_redaction_key(path: Path) -> bytes:
    """The 32-byte HMAC key at ``path``, created (mode 0600) on first use."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = secrets.token_bytes(32)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first: use theirs
            return load_or_create_redaction_key(path)
        with os.fdopen(fd, "wb") as f:
            f.write(key)
            f.flush()
            os.fsync(f.fileno())
        return key
    if len(data) < 16:
        raise ValueError(f"audit redaction key {path} is too short (at least 16 bytes)")
    return data


class CatalogView(Protocol):
    """What the redactor reads from a connection's classified catalog (a MaskingView)."""

    @property
    def catalog(self) -> Catalog: ...
    @property
    def classmap(self) -> ClassMap: ...
    @property
    def version(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Redacted:
    """A statement text and its parameters as they may be stored and shown."""

    text: str
    params: tuple[str | None, ...] | None
    changed: bool  # whether anything was replaced


_Analysed = tuple[LiteralMeets, str, bool]  # what meets what, the text as shown, changed


class _LRU:
    def __init__(self, size: int) -> None:
        self.size = size
        self.data: OrderedDict[Any, _Analysed] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: Any) -> _Analysed | None:
        with self.lock:
            hit = self.data.get(key)
            if hit is not None:
                self.data.move_to_end(key)
            return hit

    def put(self, key: Any, value: _Analysed) -> None:
        with self.lock:
            self.data[key] = value
            self.data.move_to_end(key)
            while len(self.data) > self.size:
                self.data.popitem(last=False)


def _hex_bytes(value: str) -> bytes | None:
    if len(value) > 2 and value.startswith("\\x") and len(value) % 2 == 0:
        try:
            return bytes.fromhex(value[2:])
        except ValueError:
            return None
    return None


def _readings(value: str) -> list[str]:
    """How a parameter may read: as sent, and a binary (``\\x`` hex) value as UTF-8 text
    or as a big-endian integer (int2/int4/int8 in binary format)."""
    raw = _hex_bytes(value)
    if raw is None:
        return [value]
    out: list[str] = []
    try:
        text = raw.decode("utf-8")
        if text.isprintable():
            out.append(text)
    except UnicodeDecodeError:
        pass
    if len(raw) in (2, 4, 8):
        out.append(str(int.from_bytes(raw, "big", signed=True)))
    out.append(value)
    return out


def _unquote(token: str) -> str:
    """The value of a constant token when the parse tree did not give it (approximate:
    it is only hashed and scanned)."""
    t = token
    if t[:1] in "eEbBxXnN" and t[1:2] == "'":
        t = t[1:]
    elif t[:3].upper() == "U&'":
        t = t[2:]
    if t.startswith("'") and t.endswith("'") and len(t) >= 2:
        return t[1:-1].replace("''", "'")
    if t.startswith("$"):
        end = t.find("$", 1)
        if end > 0:
            tag = t[: end + 1]
            if t.endswith(tag) and len(t) >= 2 * len(tag):
                return t[len(tag) : -len(tag)]
    return t


def _detect_constant(value: str) -> DataClass | None:
    """``detect_value``, also for a signed number (``-4111111111111111``)."""
    found = detect_value(value)
    if found is None and value[:1] in "-+" and value[1:2].isdigit():
        found = detect_value(value[1:])
    return found


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class LiteralRedactor:
    """Turns sensitive values into tokens; one per proxy process (see ``install``).

    ``views(connection)`` gives the connection's classified catalog, or None (then column
    names alone decide).  Thread-safe: the approvals service calls it from worker threads.
    """

    def __init__(
        self,
        key: bytes,
        mode: RedactMode = "sensitive",
        views: Callable[[str], CatalogView | None] | None = None,
        cache_size: int = 4096,
    ) -> None:
        self._key = key
        self.mode = mode
        self.views = views
        self._cache = _LRU(cache_size)
        self._last: tuple[tuple[str | None, int, str], _Analysed] | None = None

    # -- tokens -----------------------------------------------------------------------------

    def digest(self, value: str) -> str:
        """The 12 hex digits naming ``value`` (exactly as written)."""
        mac = hmac.new(self._key, _DOMAIN + value.encode("utf-8", "surrogatepass"), "sha256")
        return mac.hexdigest()[:_DIGEST_HEX]

    def token(self, value: str, data_class: Meets) -> str:
        label = data_class.value if isinstance(data_class, DataClass) else "value"
        return f"<{label}:hmac:{self.digest(value)}>"

    def search_digests(self, value: str) -> tuple[str, ...]:
        """The digests a record holding ``value`` may show (the value as given, and
        trimmed when it has surrounding spaces)."""
        out = [self.digest(value)]
        if value.strip() != value:
            out.append(self.digest(value.strip()))
        return tuple(dict.fromkeys(out))

    # -- free text --------------------------------------------------------------------------

    def text(self, text: str) -> str:
        """``text`` with every value that value detection finds replaced by its token."""
        if len(text) < 7:
            return text
        whole = detect_value(text)
        if whole is not None:
            return self.token(text, whole)
        spans = find_sensitive(text)
        if not spans:
            return text
        out: list[str] = []
        pos = 0
        for sp in spans:
            out.append(text[pos : sp.start])
            out.append(self.token(text[sp.start : sp.end], sp.data_class))
            pos = sp.end
        out.append(text[pos:])
        return "".join(out)

    def correlation(self, pairs: Mapping[str, str]) -> dict[str, str]:
        """sqlcommenter pairs with detected values replaced (trace ids are left alone)."""
        return {k: (v if k in _TRACE_KEYS else self.text(v)) for k, v in pairs.items()}

    # -- statements -------------------------------------------------------------------------

    def _analysed(self, sql: str, connection: str | None) -> _Analysed:
        """What meets what in ``sql`` and its text as shown, cached by text and catalog."""
        view = self.views(connection) if self.views is not None and connection is not None else None
        key = (connection, view.version if view is not None else 0, sql)
        last = self._last  # one read: the pair is replaced whole, never changed
        if last is not None and last[0] == key:
            return last[1]  # the same statement again (a prepared statement's executions)
        hit = self._cache.get(key)
        if hit is None:
            if view is not None:
                meets = find_literal_meets(
                    sql, view.catalog, view.classmap, view.catalog.search_path
                )
            else:
                meets = find_literal_meets(sql)
            text, changed = self._statement(sql, meets)
            hit = (meets, text, changed)
            if len(sql) <= _CACHE_MAX_CHARS:
                self._cache.put(key, hit)
        if len(sql) <= _CACHE_MAX_CHARS:
            self._last = (key, hit)
        return hit

    def catalog_version(self, connection: str | None) -> int:
        """The version of the classified catalog ``connection``'s statements are redacted by."""
        view = self.views(connection) if self.views is not None and connection is not None else None
        return view.version if view is not None else 0

    def values_only(self, sql: str, connection: str | None) -> int | None:
        """When every constant of ``sql`` is redacted by its value alone (it meets no
        column: :func:`~dbsentry.engines.postgres.masking.literals.meets_values_only`), the catalog
        version that holds for; else None.  Then :meth:`constant` redacts each constant
        as :meth:`redact` would."""
        view = self.views(connection) if self.views is not None and connection is not None else None
        if not meets_values_only(sql, view.classmap if view is not None else None):
            return None
        return view.version if view is not None else 0

    def constant(self, value: str) -> str | None:
        """The replacement of a constant (its value as the parse tree gives it) that meets
        no classified column: a token when value detection knows it, the value with what
        it finds inside replaced, or None to keep it."""
        cls = _detect_constant(value)
        if cls is not None:
            return _quote(self.token(value, cls))
        scanned = self.text(value)
        return _quote(scanned) if scanned != value else None

    def meets(self, sql: str, connection: str | None) -> LiteralMeets:
        return self._analysed(sql, connection)[0]

    def redact(
        self,
        sql: str,
        params: Sequence[str | None] | None = None,
        connection: str | None = None,
        mode: RedactMode | None = None,
    ) -> Redacted:
        """The statement and its parameters as they may be stored and shown."""
        mode = self.mode if mode is None else mode
        plist = None if params is None else tuple(params)
        if mode == "off":
            return Redacted(sql, plist, False)
        if mode == "all":
            text = redact_literals(sql)
            shown = None if plist is None else tuple(None if p is None else "?" for p in plist)
            return Redacted(text, shown, True)
        return Redacted(*self.redact_sensitive(sql, plist, connection))

    def redact_sensitive(
        self, sql: str, params: Sequence[str | None] | None = None, connection: str | None = None
    ) -> tuple[str, tuple[str | None, ...] | None, bool]:
        """:meth:`redact` in mode ``"sensitive"``, as (text, params, changed)."""
        meets, text, changed = self._analysed(sql, connection)
        if params is not None:
            shown_params, pchanged = self._params(params, meets)
            return text, shown_params, changed or pchanged
        return text, None, changed

    def _params(
        self, params: Sequence[str | None], meets: LiteralMeets
    ) -> tuple[tuple[str | None, ...], bool]:
        out: list[str | None] = []
        changed = False
        for i, value in enumerate(params, 1):
            if value is None:
                out.append(None)
                continue
            readings = _readings(value)
            new: str | None = None
            if i in meets.params or not meets.parsed:
                cls = meets.params.get(i)
                if cls is None:  # an unknown class: perhaps detection knows it
                    cls = next((c for r in readings if (c := detect_value(r)) is not None), None)
                new = self.token(readings[0], cls)
            else:
                for r in readings:
                    cls = detect_value(r)
                    if cls is not None:
                        new = self.token(r, cls)
                        break
                if new is None:
                    scanned = self.text(readings[0])
                    if scanned != readings[0]:
                        new = scanned
            if new is not None:
                changed = True
                out.append(new)
            else:
                out.append(value)
        return tuple(out), changed

    def _statement(self, sql: str, meets: LiteralMeets) -> tuple[str, bool]:
        try:
            tokens = sqlparse.scan(sql)
        except Exception:
            return _UNREDACTABLE, True
        out: list[str] = []
        pos = 0
        changed = False
        i = 0
        n = len(tokens)
        while i < n:
            tok = tokens[i]
            name = tok.name
            start = tok.start
            if name in _COMMENT_TOKENS:
                comment = sql[tok.start : tok.end + 1]
                scanned = self.text(comment)
                if scanned != comment:
                    out.append(sql[pos:start])
                    out.append(scanned)
                    pos = tok.end + 1
                    changed = True
                i += 1
                continue
            if name == "IDENT" and sql[start] == '"':
                # a quoted identifier is free text too ("ada@example.com" as a name)
                inner = sql[start + 1 : tok.end].replace('""', '"')
                scanned = self.text(inner)
                if scanned != inner:
                    out.append(sql[pos:start])
                    out.append('"' + scanned.replace('"', '""') + '"')
                    pos = tok.end + 1
                    changed = True
                i += 1
                continue
            # A negative number is one constant: ``-`` then the number.
            negative = (
                name == "ASCII_45"
                and start in meets.values
                and i + 1 < n
                and tokens[i + 1].name in ("ICONST", "FCONST")
            )
            if name not in _LITERAL_TOKENS and not negative:
                i += 1
                continue
            j = i + 1 if negative else i
            end = tokens[j].end
            # 'abc'<newline>'def' is one constant in SQL: take the continuations with it.
            while (
                tokens[j].name == "SCONST"
                and j + 1 < n
                and tokens[j + 1].name == "SCONST"
                and "\n" in sql[end + 1 : tokens[j + 1].start]
                and not sql[end + 1 : tokens[j + 1].start].strip()
            ):
                j += 1
                end = tokens[j].end
            value = meets.values.get(start)
            if value is None:
                value = "".join(
                    _unquote(sql[t.start : t.end + 1])
                    for t in tokens[i + (1 if negative else 0) : j + 1]
                )
                if negative:
                    value = "-" + value
            replacement: str | None = None
            if start in meets.literals or not meets.parsed:
                cls = meets.literals.get(start)
                if cls is None:
                    cls = _detect_constant(value)
                replacement = _quote(self.token(value, cls))
            else:
                replacement = self.constant(value)
            if replacement is not None:
                out.append(sql[pos:start])
                out.append(replacement)
                pos = end + 1
                changed = True
            i = j + 1
        if not changed:
            return sql, False
        out.append(sql[pos:])
        return "".join(out), True


# -- the process's redactor -------------------------------------------------------------------

_installed: LiteralRedactor | None = None
_fallback: LiteralRedactor | None = None
_lock = threading.Lock()


def install(redactor: LiteralRedactor | None) -> None:
    """Make ``redactor`` the one sessions and the approvals service use (the proxy does
    this at start-up with its key and catalogs)."""
    global _installed
    _installed = redactor


def current() -> LiteralRedactor:
    """The installed redactor; without one (tests, tools), one with a key drawn for this
    process, so values are still never stored in clear (but tokens do not survive it)."""
    global _fallback
    if _installed is not None:
        return _installed
    if _fallback is not None:
        return _fallback
    with _lock:
        if _fallback is None:
            _fallback = LiteralRedactor(secrets.token_bytes(32))
        return _fallback
