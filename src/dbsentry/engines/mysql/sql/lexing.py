"""MySQL's and MariaDB's lexical rules, exactly, and nothing it is unsure of.

:func:`tokens` reads a statement text as the server's lexer does and gives its tokens in
the engine-neutral terms of :mod:`dbsentry.governance.text` (it is the MySQL
:data:`~dbsentry.governance.text.Lexer`: literal redaction, correlation ids and approval
keys read it).  It fails closed: on anything where the server could read the text
differently from the analysis it raises :class:`MySQLLexRefused` (an
:class:`~dbsentry.governance.facts.AnalysisRefused`), and the statement is denied.

The traps, and the decisions:

- ``#`` starts a comment to the end of the line; ``--`` does only when a space or a
  control character (or the end of the text) follows: ``1--1`` is one minus minus one.
  dbsentry refuses a ``--`` that is not a comment (other parsers read it as one).
- ``/* ... */`` is a comment, not nested (the first ``*/`` ends it); unterminated, refused.
- **Executable comments** ``/*! ... */``, ``/*!50000 ... */`` and MariaDB's ``/*M! ... */``
  are code the server runs (when its version is high enough, which the proxy cannot know
  for every server): a text holding one is **refused**, wherever it is, so that no
  statement means one thing to dbsentry and another to the server.  Optimizer hints
  ``/*+ ... */`` are refused too (``SET_VAR`` changes settings for the statement, and
  MariaDB and MySQL read them differently).
- Strings in ``'...'`` and (without ``ANSI_QUOTES``) ``"..."``: a doubled quote is a quote,
  and a backslash escapes the next character unless ``NO_BACKSLASH_ESCAPES`` is set
  (``'a\\'b'`` is one string without it, and a string and more text with it).
  ``N'..'``, ``x'..'`` (hex digits, even count), ``b'..'`` (binary digits), ``0x..``,
  ``0b..`` and introducers ``_utf8mb4'..'`` are literals (the introducer is part of the
  literal token when it touches the quote).
- Identifiers in backticks (a doubled backtick is a backtick) and, with ``ANSI_QUOTES``,
  in double quotes.  An unquoted word that starts with a digit but is not a number
  (``123abc``, ``0x1g``) is refused: MySQL reads it as an identifier, most parsers do not.
- Outside quotes, a backslash (the client's ``\\G``, ``\\g``...), a NUL, and any character
  that is not ASCII are refused: MySQL's own reading of them (non-ASCII letters are
  identifier characters, U+00A0 is not a space) is easy to get wrong.
- ``DELIMITER`` is a command of the ``mysql`` client, never sent to the server: a
  statement starting with it is refused.
- ``PIPES_AS_CONCAT`` (``||`` is concatenation instead of OR) and
  ``HIGH_NOT_PRECEDENCE`` change how expressions parse: in those modes a statement with
  ``||`` (respectively ``NOT`` or ``!``) is refused.

:func:`split` cuts a text into statements at the ``;`` tokens (empty statements dropped).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

from dbsentry.governance.facts import AnalysisRefused
from dbsentry.governance.text import COMMENT, LITERAL, OTHER, QUOTED_IDENT, Token

__all__ = [
    "MySQLLexRefused",
    "MySQLSyntaxError",
    "SqlMode",
    "lexer",
    "split",
    "tokens",
]

_SPACE = frozenset(" \t\n\r\f\v")
_WORD_START = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_$")
_DIGITS = frozenset("0123456789")
_WORD = _WORD_START | _DIGITS
_HEX = frozenset("0123456789abcdefABCDEF")
# Operators of several characters, longest first (each is one OTHER token).
_OPERATORS = ("<=>", "->>", "<<", ">>", "<=", ">=", "<>", "!=", ":=", "&&", "||", "->")
_PUNCT = frozenset("()[]{},;.=<>!+-*/%&|^~?:@")
MAX_TEXT = 1_000_000  # characters: a longer text is not analysed


class MySQLLexRefused(AnalysisRefused):
    """The text holds something the MySQL lexer refuses to read (executable comments,
    client commands, characters MySQL reads its own way): ``0A000``."""

    sqlstate = "0A000"


class MySQLSyntaxError(AnalysisRefused):
    """The text is not lexically valid MySQL (an unterminated string or comment...):
    ``42601``, as the server would answer."""

    sqlstate = "42601"


@dataclass(frozen=True, slots=True)
class SqlMode:
    """The parts of a session's ``sql_mode`` that change how its text reads."""

    no_backslash_escapes: bool = False
    ansi_quotes: bool = False
    pipes_as_concat: bool = False
    high_not_precedence: bool = False
    # a mode that changes the grammar itself (MariaDB's ORACLE, the old MSSQL, DB2,
    # POSTGRESQL, MAXDB): nothing is analysed under it
    unsupported: str | None = None

    @classmethod
    def parse(cls, sql_mode: str) -> SqlMode:
        """From the value of ``@@sql_mode`` (comma-separated names; ``ANSI`` implies
        ``ANSI_QUOTES`` and ``PIPES_AS_CONCAT``, as in MySQL and MariaDB)."""
        names = {n.strip().upper() for n in sql_mode.split(",") if n.strip()}
        other = sorted(names & {"ORACLE", "MSSQL", "DB2", "POSTGRESQL", "MAXDB"})
        if other:
            return cls(True, True, True, True, unsupported=other[0])
        ansi = "ANSI" in names
        return cls(
            no_backslash_escapes="NO_BACKSLASH_ESCAPES" in names,
            ansi_quotes=ansi or "ANSI_QUOTES" in names,
            pipes_as_concat=ansi or "PIPES_AS_CONCAT" in names,
            high_not_precedence="HIGH_NOT_PRECEDENCE" in names,
        )


DEFAULT_MODE = SqlMode()


def _quoted_end(sql: str, start: int, quote: str, backslash: bool) -> int:
    """The index just past the closing ``quote`` of the quoted run opening at ``start``."""
    i = start + 1
    n = len(sql)
    while i < n:
        c = sql[i]
        if backslash and c == "\\":
            i += 2
            continue
        if c == quote:
            if i + 1 < n and sql[i + 1] == quote:
                i += 2
                continue
            return i + 1
        i += 1
    what = {"'": "string", '"': "quoted text", "`": "quoted identifier"}[quote]
    raise MySQLSyntaxError(f"unterminated {what} at character {start}", start)


def _number_end(sql: str, i: int) -> int:
    """The end of the number starting at ``i`` (a digit, or ``.`` and a digit)."""
    n = len(sql)
    if sql.startswith(("0x", "0X"), i) and i + 2 < n and sql[i + 2] in _HEX:
        j = i + 2
        while j < n and sql[j] in _HEX:
            j += 1
        return j
    if sql.startswith(("0b", "0B"), i) and i + 2 < n and sql[i + 2] in "01":
        j = i + 2
        while j < n and sql[j] in "01":
            j += 1
        return j
    j = i
    while j < n and sql[j] in _DIGITS:
        j += 1
    if j < n and sql[j] == ".":
        j += 1
        while j < n and sql[j] in _DIGITS:
            j += 1
    if j < n and sql[j] in "eE":
        k = j + 1
        if k < n and sql[k] in "+-":
            k += 1
        if k < n and sql[k] in _DIGITS:
            while k < n and sql[k] in _DIGITS:
                k += 1
            j = k
    return j


def tokens(sql: str, mode: SqlMode = DEFAULT_MODE) -> list[Token]:
    """The tokens of ``sql`` as MySQL (8.0+) and MariaDB (10.11+) read it under ``mode``;
    whitespace is not a token.  Raises :class:`MySQLLexRefused` or
    :class:`MySQLSyntaxError`."""
    if len(sql) > MAX_TEXT:
        raise MySQLLexRefused(f"statement text longer than {MAX_TEXT} characters")
    if mode.unsupported:
        raise MySQLLexRefused(f"sql_mode {mode.unsupported} changes MySQL's grammar: not analysed")
    out: list[Token] = []
    append = out.append
    n = len(sql)
    i = 0
    backslash = not mode.no_backslash_escapes
    while i < n:
        c = sql[i]
        if c in _SPACE:
            i += 1
            continue
        # -- comments
        if c == "#":
            j = sql.find("\n", i)
            j = n if j < 0 else j
            append(Token(COMMENT, i, j))
            i = j
            continue
        if c == "-" and sql.startswith("--", i):
            nxt = sql[i + 2] if i + 2 < n else ""
            if nxt == "" or nxt in _SPACE or ord(nxt) < 32 or ord(nxt) == 127:
                j = sql.find("\n", i)
                j = n if j < 0 else j
                append(Token(COMMENT, i, j))
                i = j
                continue
            raise MySQLLexRefused(
                f"'--' not followed by a space at character {i}: MySQL reads it as two minus signs, "
                "other parsers as a comment; write '- -' or '-- ' ",
                i,
            )
        if c == "/" and sql.startswith("/*", i):
            if sql.startswith(("/*!", "/*M!", "/*m!"), i):
                raise MySQLLexRefused(
                    f"executable comment at character {i}: MySQL and MariaDB run the text of /*! ... */ "
                    "as code; dbsentry refuses statements that hold one",
                    i,
                )
            if sql.startswith("/*+", i):
                raise MySQLLexRefused(
                    f"optimizer hint /*+ ... */ at character {i}: not analysed", i
                )
            j = sql.find("*/", i + 2)
            if j < 0:
                raise MySQLSyntaxError(f"unterminated comment at character {i}", i)
            append(Token(COMMENT, i, j + 2))
            i = j + 2
            continue
        # -- quoted text
        if c == "'":
            j = _quoted_end(sql, i, "'", backslash)
            append(Token(LITERAL, i, j))
            i = j
            continue
        if c == '"':
            j = _quoted_end(sql, i, '"', backslash and not mode.ansi_quotes)
            append(Token(QUOTED_IDENT if mode.ansi_quotes else LITERAL, i, j))
            i = j
            continue
        if c == "`":
            j = _quoted_end(sql, i, "`", False)
            if j == i + 2:
                raise MySQLSyntaxError(f"empty quoted identifier at character {i}", i)
            append(Token(QUOTED_IDENT, i, j))
            i = j
            continue
        # -- words, prefixed literals, numbers
        if c in _WORD_START:
            j = i + 1
            while j < n and sql[j] in _WORD:
                j += 1
            word = sql[i:j]
            if j < n and sql[j] == "'":
                low = word.lower()
                if low in ("x", "b"):
                    end = _quoted_end(sql, j, "'", False)
                    body = sql[j + 1 : end - 1]
                    allowed = _HEX if low == "x" else frozenset("01")
                    if any(ch not in allowed for ch in body) or (low == "x" and len(body) % 2):
                        raise MySQLSyntaxError(f"malformed {word}'...' literal at character {i}", i)
                    append(Token(LITERAL, i, end))
                    i = end
                    continue
                if low == "n" or (word.startswith("_") and len(word) > 1):
                    end = _quoted_end(sql, j, "'", backslash)
                    append(Token(LITERAL, i, end))
                    i = end
                    continue
            append(Token(OTHER, i, j))
            i = j
            continue
        if c in _DIGITS or (
            c == "." and i + 1 < n and sql[i + 1] in _DIGITS and not _after_name(sql, out)
        ):
            j = _number_end(sql, i)
            if j < n and (
                sql[j] in _WORD or (sql[j] == "." and sql[j - 1] != "." and "." in sql[i:j])
            ):
                raise MySQLLexRefused(
                    f"a word starting with a digit at character {i} (MySQL reads it as an identifier): "
                    "quote it with backticks",
                    i,
                )
            append(Token(LITERAL, i, j))
            i = j
            continue
        if c == "@":
            # @var, @@global.var: the sigils are OTHER tokens; @'name' / @`name` are quoted names
            j = i + 1
            if j < n and sql[j] == "@":
                j += 1
            append(Token(OTHER, i, j))
            i = j
            if i < n and sql[i] in "'\"`":
                end = _quoted_end(sql, i, sql[i], backslash and sql[i] != "`")
                append(Token(QUOTED_IDENT, i, end))
                i = end
            continue
        for op in _OPERATORS:
            if sql.startswith(op, i):
                append(Token(OTHER, i, i + len(op)))
                i += len(op)
                break
        else:
            if c in _PUNCT:
                append(Token(OTHER, i, i + 1))
                i += 1
                continue
            if c == "\\":
                raise MySQLLexRefused(
                    f"backslash outside quotes at character {i} (\\G and \\g are commands of the mysql client, "
                    "not SQL)",
                    i,
                )
            raise MySQLLexRefused(
                f"character {c!r} at position {i} outside quotes is not analysed", i
            )
    _mode_checks(sql, out, mode)
    return out


def _after_name(sql: str, out: list[Token]) -> bool:
    """Whether the previous token ends a name (so ``t.1`` is a qualified name, not 0.1)."""
    if not out:
        return False
    last = out[-1]
    return last.kind == QUOTED_IDENT or (last.kind == OTHER and sql[last.end - 1] in _WORD)


def _mode_checks(sql: str, toks: list[Token], mode: SqlMode) -> None:
    code = [t for t in toks if t.kind == OTHER]
    for t in code:
        word = sql[t.start : t.end]
        if mode.pipes_as_concat and word == "||":
            raise MySQLLexRefused("'||' under PIPES_AS_CONCAT is not analysed", t.start)
        if mode.high_not_precedence and (word == "!" or word.upper() == "NOT"):
            raise MySQLLexRefused("NOT under HIGH_NOT_PRECEDENCE is not analysed", t.start)


def split(sql: str, toks: Sequence[Token]) -> list[tuple[int, int, list[Token]]]:
    """The statements of a text: (start, end, tokens) for each, cut at ``;`` tokens, the
    ``;`` excluded; statements without code (only comments, or nothing) are dropped.
    A statement that starts with the client's ``DELIMITER`` command is refused."""
    out: list[tuple[int, int, list[Token]]] = []
    current: list[Token] = []

    def close() -> None:
        code = [t for t in current if t.kind != COMMENT]
        if code:
            first = sql[code[0].start : code[0].end]
            if first.upper() == "DELIMITER":
                raise MySQLLexRefused(
                    "DELIMITER is a command of the mysql client, not SQL: the server never receives it",
                    code[0].start,
                )
            out.append((code[0].start, code[-1].end, list(current)))

    for t in toks:
        if t.kind == OTHER and t.end - t.start == 1 and sql[t.start] == ";":
            close()
            current = []
        else:
            current.append(t)
    close()
    return out


def lexer(mode: SqlMode = DEFAULT_MODE) -> Callable[[str], Sequence[Token]]:
    """The :data:`~dbsentry.governance.text.Lexer` of a session in ``mode``."""
    return partial(tokens, mode=mode)
