"""Sensitive values in what dbsentry itself writes: statement texts, parameters, error texts.

With ``audit.redact_literals: sensitive`` (the default) a constant or bound parameter is
replaced by a *token* when

- it meets a column the catalog classifies (compared with, inserted into or assigned to
  it: the engine's analysis, a :class:`StatementLiterals`; PostgreSQL's is
  ``dbsentry.engines.postgres.masking.literals``), or
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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal, Protocol

from dbsentry.governance.text import REDACTED_STATEMENT, Lexer, Token, without_literals
from dbsentry.masking.catalog import Catalog, ClassMap
from dbsentry.masking.classes import DataClass
from dbsentry.masking.detect import detect_value, find_sensitive
from dbsentry.masking.meets import UNPARSED, LiteralMeets, Meets

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
    config: Any,
    state_dir: Path,
    views: Callable[[str], CatalogView | None] | None = None,
    literals: StatementLiterals | None = None,
) -> LiteralRedactor:
    """The proxy's redactor: its key file (created on first use), the configured mode, the
    engine's statement analysis."""
    key = load_or_create_redaction_key(config.redaction_key_path(state_dir))
    return LiteralRedactor(key, redaction_mode(config.redact_literals), views, literals=literals)


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


class ConstantRedactor(Protocol):
    """What an engine's statement rewriting asks of the redactor."""

    def token(self, value: str, data_class: Meets) -> str: ...
    def constant(self, value: str) -> str | None: ...
    def text(self, text: str) -> str: ...


class StatementLiterals(Protocol):
    """An engine's side of literal redaction: its lexer, which constants of a statement
    meet which classified columns, and the statement rewritten with the sensitive ones as
    tokens (spelled as the engine's string constants, so the text still parses)."""

    def lex(self, sql: str) -> Sequence[Token]: ...
    def meets(
        self, sql: str, catalog: Catalog | None, classmap: ClassMap | None, search_path: Iterable[str] | None
    ) -> LiteralMeets: ...
    def values_only(self, sql: str, classmap: ClassMap | None) -> bool: ...
    def rewrite(self, sql: str, meets: LiteralMeets, redactor: ConstantRedactor) -> tuple[str, bool]: ...


def _no_lexer(sql: str) -> Sequence[Token]:
    raise ValueError("no engine lexer: the statement cannot be tokenized")


_NUMERIC = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def detect_constant(value: str) -> DataClass | None:
    """``detect_value``, also for a number however it is written: signed
    (``-4111111111111111``), with leading zeros, a fraction of zeros or an exponent
    (``4111111111111111.0``, ``04111111111111111``, ``4.111111111111111e15``): the same
    integer."""
    found = detect_value(value)
    if found is None and value[:1] in "-+" and value[1:2].isdigit():
        found = detect_value(value[1:])
    if found is None and 7 <= len(value) <= 64 and _NUMERIC.fullmatch(value):
        try:
            number = abs(Decimal(value))
        except InvalidOperation:
            return None
        if number == number.to_integral_value() and 10**6 <= number < 10**20:
            digits = str(int(number))
            if digits != value.lstrip("+-"):
                found = detect_value(digits)
    return found


def quote_constant(text: str) -> str:
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
        *,
        literals: StatementLiterals | None = None,
    ) -> None:
        self._key = key
        self.mode = mode
        # The engine's statement analysis; without one no statement text can be read, so
        # every statement is stored redacted whole (fail closed).
        self.literals = literals
        self.lex: Lexer = literals.lex if literals is not None else _no_lexer
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
            literals = self.literals
            if literals is None:
                meets, text, changed = UNPARSED, REDACTED_STATEMENT, True
            else:
                if view is not None:
                    meets = literals.meets(sql, view.catalog, view.classmap, view.catalog.search_path)
                else:
                    meets = literals.meets(sql, None, None, None)
                text, changed = literals.rewrite(sql, meets, self)
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
        column: the engine's ``StatementLiterals.values_only``), the catalog version that
        holds for; else None.  Then :meth:`constant` redacts each constant as
        :meth:`redact` would."""
        view = self.views(connection) if self.views is not None and connection is not None else None
        literals = self.literals
        if literals is None or not literals.values_only(sql, view.classmap if view is not None else None):
            return None
        return view.version if view is not None else 0

    def constant(self, value: str) -> str | None:
        """The replacement of a constant (its value as the parse tree gives it) that meets
        no classified column: a token when value detection knows it, the value with what
        it finds inside replaced, or None to keep it."""
        cls = detect_constant(value)
        if cls is not None:
            return quote_constant(self.token(value, cls))
        scanned = self.text(value)
        return quote_constant(scanned) if scanned != value else None

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
            text = without_literals(sql, self.lex)
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


# -- the process's redactor -------------------------------------------------------------------

_installed: LiteralRedactor | None = None
_fallback_key = secrets.token_bytes(32)
_fallbacks: dict[int, LiteralRedactor] = {}
_lock = threading.Lock()


def install(redactor: LiteralRedactor | None) -> None:
    """Make ``redactor`` the one sessions and the approvals service use (the proxy does
    this at start-up with its key and catalogs)."""
    global _installed
    _installed = redactor


def current(literals: StatementLiterals | None = None) -> LiteralRedactor:
    """The installed redactor; without one (tests, tools), one with a key drawn for this
    process, so values are still never stored in clear (but tokens do not survive it),
    reading statements with ``literals`` (an engine asks with its own; without any, every
    statement text is redacted whole)."""
    if _installed is not None:
        return _installed
    key = id(literals)
    found = _fallbacks.get(key)
    if found is not None:
        return found
    with _lock:
        found = _fallbacks.get(key)
        if found is None:
            found = _fallbacks[key] = LiteralRedactor(_fallback_key, literals=literals)
        return found
