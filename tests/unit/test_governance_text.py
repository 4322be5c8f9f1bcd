"""The engine-neutral reading of statement text (governance.text) with any engine's lexer,
and what the audit and the approval key make of it; a redactor without an engine's
analysis stores statements redacted whole."""

from __future__ import annotations

import re
from collections.abc import Sequence

from dbsentry.approvals.model import normalize_statement, statement_key
from dbsentry.audit.records import StatementRecord, extract_correlation, redact_literals
from dbsentry.audit.redaction import LiteralRedactor
from dbsentry.engines.postgres.sql.parse import tokens
from dbsentry.governance.text import COMMENT, LITERAL, OTHER, REDACTED_STATEMENT, Token

_TOY = re.compile(r"(?P<c>#[^\n]*)|(?P<l>'[^']*'|\d+)|(?P<o>\S)")


def toy_lexer(sql: str) -> Sequence[Token]:
    """A second engine's lexer: # comments, '...' strings without escapes, digits."""
    if sql.count("'") % 2:
        raise ValueError("unterminated string")
    out = []
    for m in _TOY.finditer(sql):
        kind = COMMENT if m.group("c") else LITERAL if m.group("l") else OTHER
        out.append(Token(kind, m.start(), m.end()))
    return out


def test_literals_and_comments_follow_the_lexer_given() -> None:
    sql = "SELECT a FROM t WHERE b = 'x' # note traceparent='00-" + "a" * 32 + "-" + "b" * 16 + "-01'"
    shown = redact_literals(sql, toy_lexer)
    assert "'x'" not in shown and "note" not in shown and "?" in shown
    assert extract_correlation(sql, toy_lexer)["trace_id"] == "a" * 32
    # PostgreSQL's lexer knows no # comments: the same text reads differently
    assert redact_literals("SELECT 'a' -- c", tokens) == "SELECT ?"


def test_approval_key_uses_the_engines_reading() -> None:
    a, b = "DELETE FROM t WHERE id = 1 # why", "DELETE FROM t WHERE id = 1"
    assert normalize_statement(a, toy_lexer) == normalize_statement(b, toy_lexer)
    assert statement_key("alice", "prod", a, None, toy_lexer) == statement_key("alice", "prod", b, None, toy_lexer)
    assert statement_key("alice", "prod", a, None, toy_lexer) != statement_key(
        "alice", "prod", "DELETE FROM t WHERE id = 2", None, toy_lexer
    )


def test_text_a_lexer_rejects_keeps_nothing() -> None:
    assert redact_literals("SELECT 'ssn 536-22-8726", toy_lexer) == REDACTED_STATEMENT
    assert redact_literals("SELECT 'ssn 536-22-8726", tokens) == REDACTED_STATEMENT


def test_a_redactor_without_an_engine_redacts_statements_whole() -> None:
    r = LiteralRedactor(b"k" * 32)
    for mode in ("sensitive", "all"):
        shown = r.redact("SELECT * FROM customers WHERE email = 'ada@example.com'", mode=mode)  # type: ignore[arg-type]
        assert shown.text == REDACTED_STATEMENT and shown.changed
    assert r.values_only("SELECT 1", None) is None
    rec = StatementRecord.create(
        sql="SELECT 'ada@example.com'",
        redact="sensitive",
        redactor=r,
        session_id="s",
        identity="alice",
        identity_kind="human",
        decision="allow",
        connection="prod",
    )
    assert rec.statement == REDACTED_STATEMENT and "ada@" not in str(rec.to_dict())
