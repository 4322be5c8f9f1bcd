"""SQL parsing into facts for governance."""

from dbsentry.engines.postgres.sql.facts import (
    FLAGS,
    UNKNOWN_PARAM,
    CopyFacts,
    SQLAnalysisError,
    SQLParseError,
    SQLTooComplex,
    SQLUnsupported,
    StatementFacts,
    analyze,
    split_statement_spans,
    where_true_with,
)

__all__ = [
    "FLAGS",
    "UNKNOWN_PARAM",
    "CopyFacts",
    "SQLAnalysisError",
    "SQLParseError",
    "SQLTooComplex",
    "SQLUnsupported",
    "StatementFacts",
    "analyze",
    "split_statement_spans",
    "where_true_with",
]
