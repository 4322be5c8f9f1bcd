"""A statement's text as its engine's lexer sees it: where its constants and comments are.

The audit (literal redaction, correlation ids in comments) and the approval key read a
statement's text by its tokens, and only the engine knows its SQL's quoting rules
(PostgreSQL's ``E'..'``, ``$tag$..$tag$``, ``U&'..'``; MySQL's backslashes and
backticks).  So each engine hands over a :data:`Lexer`; what is done with the tokens is
written once, here.  PostgreSQL's is ``dbsentry.engines.postgres.sql.parse.tokens``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final, NamedTuple

__all__ = [
    "COMMENT",
    "LITERAL",
    "OTHER",
    "QUOTED_IDENT",
    "REDACTED_STATEMENT",
    "Lexer",
    "Token",
    "comment_texts",
    "normalized",
    "without_literals",
]

LITERAL: Final = "literal"  # a string, number, bit string or hex constant
COMMENT: Final = "comment"
QUOTED_IDENT: Final = "quoted_ident"  # an identifier in quotes: free text like a comment
OTHER: Final = "other"

REDACTED_STATEMENT = "<statement redacted: could not be tokenized>"


class Token(NamedTuple):
    """One token: its kind, and its characters ``sql[start:end]``."""

    kind: str
    start: int
    end: int


# The tokens of a statement text, in order; raises on a text it cannot tokenize.
Lexer = Callable[[str], Sequence[Token]]


def without_literals(sql: str, lex: Lexer) -> str:
    """Every constant replaced with ``?`` and every comment dropped.

    Comments are removed because they are free text (read correlation ids first).  A text
    that cannot be tokenized keeps nothing: :data:`REDACTED_STATEMENT`.
    """
    try:
        tokens = lex(sql)
    except Exception:
        return REDACTED_STATEMENT
    out: list[str] = []
    pos = 0
    for tok in tokens:
        if tok.kind == LITERAL:
            out.append(sql[pos : tok.start])
            out.append("?")
            pos = tok.end
        elif tok.kind == COMMENT:
            out.append(sql[pos : tok.start])
            out.append(" ")
            pos = tok.end
    out.append(sql[pos:])
    text = "".join(out)
    # A literal the lexer did not see would be a lexer bug; quotes left over mean that.
    if "'" in text or "$$" in text:
        return REDACTED_STATEMENT
    return text.strip()


def comment_texts(sql: str, lex: Lexer) -> list[str]:
    """The statement's comments, as written; raises when it cannot be tokenized."""
    return [sql[t.start : t.end] for t in lex(sql) if t.kind == COMMENT]


def normalized(sql: str, lex: Lexer) -> str | None:
    """The statement as its tokens one space apart, without comments or trailing
    semicolons: its layout and comments do not matter, while every constant stays exactly
    as written.  None when it cannot be tokenized."""
    try:
        tokens = lex(sql)
    except Exception:
        return None
    parts = [sql[t.start : t.end] for t in tokens if t.kind != COMMENT]
    while parts and parts[-1] == ";":
        parts.pop()
    return " ".join(parts)
