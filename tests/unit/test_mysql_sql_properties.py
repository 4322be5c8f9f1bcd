"""Properties of the MySQL lexer and analysis: exact spans, only refusals, and fast."""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dbsentry.engines.mysql.sql.facts import analyze
from dbsentry.engines.mysql.sql.lexing import SqlMode, split, tokens
from dbsentry.governance.facts import AnalysisRefused
from dbsentry.governance.text import COMMENT, LITERAL, QUOTED_IDENT

MODES = st.sampled_from(
    [
        SqlMode(),
        SqlMode(no_backslash_escapes=True),
        SqlMode(ansi_quotes=True),
        SqlMode.parse("ANSI"),
    ]
)

# SQL-ish text: keywords, names, operators, quotes, comment openers, escapes, odd characters
PIECES = st.sampled_from(
    [
        "SELECT",
        "DELETE",
        "FROM",
        "WHERE",
        "UPDATE",
        "SET",
        "INSERT",
        "INTO",
        "VALUES",
        "DROP",
        "TABLE",
        "t",
        "id",
        "a",
        "`a`",
        "`a``b`",
        "1",
        "0",
        "1.5",
        "1e3",
        "0x41",
        "x'41'",
        "b'1'",
        "N'x'",
        "_utf8mb4'x'",
        "'",
        '"',
        "`",
        "'a\\'b'",
        "'it''s'",
        '"q"',
        "\\",
        "\\'",
        "--",
        "-- ",
        "#",
        "/*",
        "*/",
        "/*!",
        "/*M!",
        "/*+",
        ";",
        "(",
        ")",
        ",",
        ".",
        "=",
        "<=>",
        "||",
        "&&",
        "!",
        "NOT",
        "OR",
        "AND",
        "1=1",
        "@a",
        "@@x",
        "?",
        "LIMIT",
        "JOIN",
        "ON",
        " ",
        "\n",
        "\t",
        "é",
        "\u00a0",
        "\x00",
        "DELIMITER",
        "\\G",
        "LOAD_FILE(",
        "PREPARE",
        "EXECUTE",
        "HANDLER",
        "CALL",
        "DO",
        "LOAD DATA",
        "OUTFILE",
        "GRANT",
        "SHUTDOWN",
        "SLEEP(",
    ]
)
SQLISH = st.lists(PIECES, max_size=40).map(" ".join) | st.lists(PIECES, max_size=40).map("".join)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sql=SQLISH | st.text(max_size=200), mode=MODES)
def test_accepted_text_round_trips_its_token_spans(sql: str, mode: SqlMode) -> None:
    try:
        toks = tokens(sql, mode)
        statements = split(sql, toks)
    except AnalysisRefused:
        return
    pos = 0
    for t in toks:
        assert pos <= t.start < t.end <= len(sql)
        assert sql[pos : t.start].strip(" \t\n\r\f\v") == ""  # only whitespace between tokens
        pos = t.end
    assert sql[pos:].strip(" \t\n\r\f\v") == ""
    # the same text, re-lexed token by token, gives the same kinds
    for t in toks:
        piece = sql[t.start : t.end]
        if t.kind in (LITERAL, QUOTED_IDENT) and piece[:1] in "'\"`":
            assert piece[-1] == piece[0]
        if t.kind == COMMENT:
            assert piece.startswith(("#", "--", "/*"))
    # statements cover the code tokens, in order
    for start, end, part in statements:
        assert all(start <= x.start and x.end <= end for x in part if x.kind != COMMENT)


@pytest.mark.serial
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sql=SQLISH | st.text(max_size=300), mode=MODES)
def test_analysis_gives_facts_or_refuses_and_is_fast(sql: str, mode: SqlMode) -> None:
    began = time.perf_counter()
    try:
        facts = analyze(sql, mode)
    except AnalysisRefused as err:
        assert err.sqlstate in ("42601", "0A000", "54001", "XX000")
        assert err.sqlstate != "XX000", f"the analysis failed on {sql!r}: {err}"
    else:
        for f in facts:
            assert f.statement_class in (
                "READ",
                "WRITE",
                "FUNCTION",
                "ROLE",
                "DDL",
                "MISC",
                "MISC_SET",
            )
            assert 0 <= f.span[0] < f.span[1] <= len(sql)
    assert time.perf_counter() - began < 1.0


@settings(max_examples=150, deadline=None)
@given(
    where=st.lists(
        st.sampled_from(
            [
                "1",
                "0",
                "'a'",
                "'A'",
                "TRUE",
                "NULL",
                "id",
                "id = id",
                "1 = 1",
                "OR",
                "AND",
                "XOR",
                "NOT",
                "(",
                ")",
            ]
        ),
        min_size=1,
        max_size=12,
    ).map(" ".join)
)
def test_an_or_true_tail_is_always_flagged(where: str) -> None:
    # whatever comes first, "... OR TRUE" at the end deletes every row
    try:
        facts = analyze(f"DELETE FROM t WHERE ({where}) OR TRUE")
    except AnalysisRefused:
        return
    assert "always_true_where" in facts[0].flags


@pytest.mark.serial
def test_deep_nesting_is_refused_quickly() -> None:
    began = time.perf_counter()
    for sql in (
        "SELECT " + "(" * 5000 + "1" + ")" * 5000,
        "DELETE FROM t WHERE " + "NOT " * 3000 + "id = 1",
    ):
        try:
            analyze(sql)
        except AnalysisRefused as err:
            assert err.sqlstate in ("54001", "42601", "0A000")
    assert time.perf_counter() - began < 10


@pytest.mark.serial
def test_long_statement_lists_are_fast() -> None:
    sql = ";".join(f"SELECT a, b FROM t WHERE id = {i}" for i in range(300))
    began = time.perf_counter()
    assert len(analyze(sql)) == 300
    assert time.perf_counter() - began < 5
