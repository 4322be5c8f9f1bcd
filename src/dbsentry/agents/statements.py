"""What the MCP layer checks in SQL text before anything runs: its size, that it is one
statement, and the EXPLAIN it builds (PostgreSQL's here; ``agents/mysql.py`` has MySQL's).
The proxy still judges every statement it is sent; these checks only ever refuse more."""

from __future__ import annotations

from typing import Any

import orjson
from pglast.parser import ParseError

from dbsentry.agents.errors import ToolRefused
from dbsentry.engines.postgres.sql.parse import parse_json

# Statements EXPLAIN can show a plan for.
_EXPLAINABLE = frozenset({"SelectStmt", "InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"})


def _statements(sql: str) -> list[dict[str, Any]]:
    try:
        tree = orjson.loads(parse_json(sql))
    except ParseError as err:
        raise ToolRefused(f"the SQL does not parse: {err}") from None
    stmts: list[dict[str, Any]] = tree.get("stmts", [])
    return stmts


def checked_text(sql: object, max_bytes: int) -> str:
    """``sql`` if it is text within ``max_bytes`` without NUL (any engine)."""
    if not isinstance(sql, str):
        raise ToolRefused("sql must be a string holding one SQL statement")
    size = len(sql.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise ToolRefused(f"the SQL is {size} bytes; the limit is {max_bytes} bytes (mcp.max_sql_bytes)")
    if "\x00" in sql:
        raise ToolRefused("the SQL holds a NUL character")
    return sql


def check_count(count: int) -> None:
    """Refuse a text of ``count`` statements unless it is exactly one (any engine)."""
    if not count:
        raise ToolRefused("the SQL holds no statement")
    if count > 1:
        raise ToolRefused(
            f"one statement per call: the SQL holds {count} statements; nothing ran. "
            "Send each statement in its own call."
        )


TRANSACTION_CONTROL = (
    "each call runs in a transaction of its own: BEGIN, COMMIT, ROLLBACK and SAVEPOINT are not taken; nothing ran"
)


def one_statement(sql: object, max_bytes: int) -> str:
    """``sql`` if it is text within ``max_bytes`` holding exactly one statement."""
    sql = checked_text(sql, max_bytes)
    stmts = _statements(sql)
    check_count(len(stmts))
    kind = next(iter(stmts[0].get("stmt", {})), "?")
    if kind == "CopyStmt":
        raise ToolRefused("COPY is not taken through MCP: read with SELECT (rows come back capped); nothing ran")
    if kind == "TransactionStmt":
        raise ToolRefused(TRANSACTION_CONTROL)
    return sql


def statement_kind(sql: str) -> str:
    """The parse node of the one statement in ``sql`` (``SelectStmt``, ``ExplainStmt``...)."""
    stmt = _statements(sql)[0].get("stmt", {})
    return next(iter(stmt), "?")


def explain_text(sql: str) -> str:
    """``EXPLAIN (FORMAT JSON) sql`` for one explainable statement, checked after it is
    built to be exactly one EXPLAIN without ANALYZE (nothing runs)."""
    kind = statement_kind(sql)
    if kind not in _EXPLAINABLE:
        raise ToolRefused(
            f"explain shows plans of SELECT, INSERT, UPDATE, DELETE and MERGE; this is a {kind.removesuffix('Stmt')} statement"
        )
    text = f"EXPLAIN (FORMAT JSON) {sql.rstrip().rstrip(';')}"
    stmts = _statements(text)
    if len(stmts) != 1 or "ExplainStmt" not in stmts[0].get("stmt", {}):
        raise ToolRefused("the SQL cannot be explained on its own")
    options = stmts[0]["stmt"]["ExplainStmt"].get("options", [])
    names = [o.get("DefElem", {}).get("defname") for o in options]
    if names != ["format"]:
        raise ToolRefused("the SQL cannot be explained on its own")
    return text


_ROWS = frozenset({"SelectStmt", "ExplainStmt", "VariableShowStmt", "FetchStmt"})
_RETURNING = frozenset({"InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"})


def returns_rows(sql: str) -> bool:
    """Whether the one statement in ``sql`` answers with rows (read as a stream, cut at the
    caps) rather than a command tag (a statement with comments before it included)."""
    try:
        stmt = _statements(sql)[0].get("stmt", {})
    except (ToolRefused, IndexError):
        return True
    kind = next(iter(stmt), "?")
    if kind in _ROWS:
        return True
    node = stmt[kind] if kind in _RETURNING else {}
    # PostgreSQL 18 parses RETURNING into a clause; older parsers into a list
    return bool(node.get("returningList") or (node.get("returningClause") or {}).get("exprs"))
