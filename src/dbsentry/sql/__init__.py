"""SQL parsing into facts for governance."""

from dbsentry.sql.facts import (
    FLAGS,
    CopyFacts,
    SQLParseError,
    StatementFacts,
    analyze,
    split_statement_spans,
)

__all__ = [
    "FLAGS",
    "CopyFacts",
    "SQLParseError",
    "StatementFacts",
    "analyze",
    "split_statement_spans",
]
