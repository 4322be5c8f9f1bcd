"""MySQL's side of the audit's literal redaction (``audit.redaction.StatementLiterals``),
by value: the MySQL lexer finds the constants, and value detection decides which are
sensitive (no catalog yet: which constants meet classified columns is masking's part,
``engines/mysql/masking``). Text the lexer refuses is stored redacted whole."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from dbsentry.audit.redaction import ConstantRedactor
from dbsentry.engines.mysql.sql.lexing import tokens
from dbsentry.governance.text import COMMENT, LITERAL, REDACTED_STATEMENT, Token
from dbsentry.masking.catalog import Catalog, ClassMap
from dbsentry.masking.meets import UNPARSED, LiteralMeets

_ESCAPES = {"0": "\x00", "n": "\n", "r": "\r", "t": "\t", "b": "\b", "Z": "\x1a"}


def constant_value(text: str) -> str:
    """A constant's value as written: a string unquoted (doubled quotes and backslash
    escapes read), a number as is; a hex or bit literal stays as written."""
    head = text[:1]
    if text[:1] in "_Nn" and "'" in text and not text.startswith("'"):
        text = text[text.index("'") :]  # an introducer or N'...'
        head = "'"
    if head not in ("'", '"') or len(text) < 2:
        return text
    quote = head
    body = text[1:-1]
    out: list[str] = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            out.append(_ESCAPES.get(nxt, nxt))
            i += 2
            continue
        if ch == quote and body[i + 1 : i + 2] == quote:
            out.append(quote)
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


class MySQLLiterals:
    """See the module: ``lex`` is MySQL's lexer (default ``sql_mode``)."""

    @staticmethod
    def lex(sql: str) -> Sequence[Token]:
        return tokens(sql)

    def meets(
        self, sql: str, catalog: Catalog | None, classmap: ClassMap | None, search_path: Iterable[str] | None
    ) -> LiteralMeets:
        try:
            toks = tokens(sql)
        except Exception:
            return UNPARSED
        return LiteralMeets(values={t.start: constant_value(sql[t.start : t.end]) for t in toks if t.kind == LITERAL})

    def values_only(self, sql: str, classmap: ClassMap | None) -> bool:
        return True  # no constant is judged by the column it meets (yet)

    def rewrite(self, sql: str, meets: LiteralMeets, redactor: ConstantRedactor) -> tuple[str, bool]:
        if not meets.parsed:
            return REDACTED_STATEMENT, True
        try:
            toks = tokens(sql)
        except Exception:
            return REDACTED_STATEMENT, True
        out: list[str] = []
        pos = 0
        changed = False
        for t in toks:
            piece = sql[t.start : t.end]
            if t.kind == LITERAL:
                new = redactor.constant(constant_value(piece))
            elif t.kind == COMMENT:
                scanned = redactor.text(piece)
                new = scanned if scanned != piece else None
            else:
                continue
            if new is not None:
                out.append(sql[pos : t.start])
                out.append(new)
                pos = t.end
                changed = True
        out.append(sql[pos:])
        return "".join(out), changed


MYSQL_LITERALS = MySQLLiterals()
