"""The MySQL lexer on MySQL's lexical traps: exact where it reads, refusing where unsure."""

from __future__ import annotations

import pytest

from dbsentry.engines.mysql.sql.facts import analyze
from dbsentry.engines.mysql.sql.lexing import SqlMode, lexer, split, tokens
from dbsentry.governance.facts import AnalysisRefused
from dbsentry.governance.text import (
    COMMENT,
    LITERAL,
    OTHER,
    QUOTED_IDENT,
    comment_texts,
    without_literals,
)

NBE = SqlMode(no_backslash_escapes=True)
ANSI = SqlMode.parse("ANSI")


DEFAULT = SqlMode()


def kinds(sql: str, mode: SqlMode = DEFAULT) -> list[tuple[str, str]]:
    return [(t.kind, sql[t.start : t.end]) for t in tokens(sql, mode)]


def refused(sql: str, mode: SqlMode = DEFAULT) -> AnalysisRefused:
    with pytest.raises(AnalysisRefused) as err:
        analyze(sql, mode)
    return err.value


def test_hash_comment_to_end_of_line() -> None:
    assert kinds("SELECT 1 # x ; DROP\n, 2") == [
        (OTHER, "SELECT"),
        (LITERAL, "1"),
        (COMMENT, "# x ; DROP"),
        (OTHER, ","),
        (LITERAL, "2"),
    ]


@pytest.mark.parametrize("after", [" ", "\t", "\n", "\r", "\x01", ""])
def test_double_dash_is_a_comment_only_before_a_space_or_control(after: str) -> None:
    sql = f"SELECT 1 --{after}"
    assert kinds(sql)[-1] == (COMMENT, f"--{after}".rstrip("\n"))


def test_double_dash_without_a_space_is_refused() -> None:
    # MySQL: 1--1 is 1 - (-1) = 2; sqlglot and most tools read a comment
    err = refused("SELECT 1--1")
    assert err.sqlstate == "0A000" and "two minus signs" in str(err)
    refused("DELETE FROM t WHERE id = 5 --' OR 1=1")


def test_block_comments_are_not_nested() -> None:
    assert kinds("SELECT /* a /* b */ 1") == [
        (OTHER, "SELECT"),
        (COMMENT, "/* a /* b */"),
        (LITERAL, "1"),
    ]


@pytest.mark.parametrize(
    "sql",
    [
        "/*!DROP TABLE t*/",
        "SELECT 1 /*!50000 , SLEEP(5) */",
        "SELECT 1 /*!80000 UNION SELECT 2 */",
        "SELECT 1 /*M! ; DROP TABLE t */",
        "SELECT 1 /*M!100000 , 2 */",
        "SELECT 1 /*+ SET_VAR(sql_mode='') */",
        "DR/*!*/OP TABLE t",
        "SELECT 1; /*!DROP TABLE t*/",
    ],
)
def test_executable_comments_and_hints_are_refused(sql: str) -> None:
    assert refused(sql).sqlstate == "0A000"


def test_executable_comment_inside_a_string_or_comment_is_text() -> None:
    assert analyze("SELECT '/*!DROP TABLE t*/'")[0].command == "SELECT"
    assert analyze("SELECT 1 /* /*!DROP TABLE t */")[0].command == "SELECT"
    assert analyze("SELECT 1 -- /*!DROP TABLE t*/")[0].command == "SELECT"


def test_comment_split_keywords_are_two_words() -> None:
    assert refused("DR/**/OP TABLE t").sqlstate in ("0A000", "42601")
    assert refused("DEL/**/ETE FROM t").sqlstate in ("0A000", "42601")


def test_backslash_escapes_by_default() -> None:
    sql = "SELECT 'a\\'; DROP TABLE t; -- '"
    assert kinds(sql)[:2] == [(OTHER, "SELECT"), (LITERAL, "'a\\'; DROP TABLE t; -- '")]
    facts = analyze(sql)
    assert [f.command for f in facts] == ["SELECT"]


def test_no_backslash_escapes_reads_the_quote_as_the_end() -> None:
    sql = "SELECT 'a\\'; DROP TABLE t; -- '"
    facts = analyze(sql, NBE)
    assert [f.command for f in facts] == ["SELECT", "DROP TABLE"]


def test_backslash_quote_games() -> None:
    # an escaped backslash before the quote: the quote closes the string
    assert [f.command for f in analyze("SELECT 'a\\\\'; DROP TABLE t")] == ["SELECT", "DROP TABLE"]
    # doubled quotes and a backslash-escaped quote in one string
    assert len(analyze("SELECT 'it''s \\' still; here'")) == 1
    # double-quoted strings escape the same way
    assert [f.command for f in analyze('SELECT "a\\"; DROP TABLE t; -- "')] == ["SELECT"]
    assert [f.command for f in analyze('SELECT "a\\"; DROP TABLE t; -- "', NBE)] == [
        "SELECT",
        "DROP TABLE",
    ]


def test_ansi_quotes_make_double_quotes_identifiers() -> None:
    assert kinds('SELECT "a""b" FROM t', ANSI)[1] == (QUOTED_IDENT, '"a""b"')
    assert kinds('SELECT "a""b" FROM t')[1] == (LITERAL, '"a""b"')
    facts = analyze('DELETE FROM t WHERE "id" = 5', SqlMode(ansi_quotes=True))
    assert "always_true_where" not in facts[0].flags
    assert analyze('SELECT "x" FROM t', SqlMode(ansi_quotes=True))[0].columns_read == ("t.x",)


def test_pipes_as_concat_and_high_not_precedence_refuse_what_they_change() -> None:
    refused("DELETE FROM t WHERE id = 5 || 1", ANSI)
    refused("DELETE FROM t WHERE NOT 5 BETWEEN 0 AND 10", SqlMode(high_not_precedence=True))
    assert analyze("SELECT 1", ANSI)[0].command == "SELECT"


def test_backtick_identifiers_with_doubled_backticks() -> None:
    assert kinds("SELECT `a``b; DROP` FROM t")[1] == (QUOTED_IDENT, "`a``b; DROP`")
    assert len(analyze("SELECT `a``b; DROP` FROM t")) == 1
    refused("SELECT `` FROM t")


def test_prefixed_literals() -> None:
    got = kinds(
        "SELECT x'4142', X'41', b'0101', B'1', 0x41, 0b01, N'n', n'n', _utf8mb4'u', _latin1 'l'"
    )
    lits = [text for kind, text in got if kind == LITERAL]
    assert lits == [
        "x'4142'",
        "X'41'",
        "b'0101'",
        "B'1'",
        "0x41",
        "0b01",
        "N'n'",
        "n'n'",
        "_utf8mb4'u'",
        "'l'",
    ]
    assert analyze("SELECT x'4142', b'01', 0x41, N'n', _utf8mb4'u'")[0].command == "SELECT"


@pytest.mark.parametrize("sql", ["SELECT x'414'", "SELECT x'4G'", "SELECT b'012'"])
def test_malformed_hex_and_bit_literals(sql: str) -> None:
    assert refused(sql).sqlstate == "42601"


@pytest.mark.parametrize("sql", ["SELECT 123abc", "SELECT 0x1g", "SELECT 1e", "SELECT 1.2.3"])
def test_words_starting_with_digits_are_refused(sql: str) -> None:
    assert refused(sql).sqlstate == "0A000"


def test_qualified_names_with_digits() -> None:
    # unquoted, MySQL reads t.1a as a column; dbsentry refuses a word starting with a digit
    refused("SELECT t.1a FROM t")
    assert analyze("SELECT `t`.`1a` FROM t")[0].columns_read == ("t.1a",)


@pytest.mark.parametrize("sql", ["SELECT 1\\G", "SELECT 1 \\g", "SELECT 1; \\. file.sql", "\\d"])
def test_client_commands_are_refused(sql: str) -> None:
    assert refused(sql).sqlstate == "0A000"


@pytest.mark.parametrize("sql", ["DELIMITER //", "delimiter $$", "SELECT 1; DELIMITER ;;"])
def test_delimiter_is_refused(sql: str) -> None:
    assert "DELIMITER" in str(refused(sql))


@pytest.mark.parametrize(
    "sql", ["SELECT\u00a01", "SELECT 1\u2028", "SELECT é FROM t", "SELECT 1\x00"]
)
def test_characters_outside_ascii_are_refused_outside_quotes(sql: str) -> None:
    refused(sql)


def test_non_ascii_inside_quotes_is_fine() -> None:
    assert analyze("SELECT 'héllo', `tablé` FROM t")[0].command == "SELECT"


@pytest.mark.parametrize(
    "sql", ["SELECT 'x", 'SELECT "x', "SELECT `x", "SELECT 1 /* x", "SELECT 'x\\'"]
)
def test_unterminated_is_a_syntax_error(sql: str) -> None:
    assert refused(sql).sqlstate == "42601"


def test_split_drops_empty_statements() -> None:
    sql = "SELECT 1;; -- c\n ; SELECT 2 ;"
    toks = tokens(sql)
    assert [sql[s:e] for s, e, _ in split(sql, toks)] == ["SELECT 1", "SELECT 2"]
    assert [f.span for f in analyze(sql)] == [(0, 8), (19, 27)]


def test_user_variables_and_quoted_variable_names() -> None:
    assert kinds("SELECT @a, @@global.x, @'q'")[1:] == [
        (OTHER, "@"),
        (OTHER, "a"),
        (OTHER, ","),
        (OTHER, "@@"),
        (OTHER, "global"),
        (OTHER, "."),
        (OTHER, "x"),
        (OTHER, ","),
        (OTHER, "@"),
        (QUOTED_IDENT, "'q'"),
    ]


def test_the_governance_text_helpers_read_mysql_text() -> None:
    lex = lexer()
    assert without_literals("SELECT * FROM t WHERE a = 'x\\'y' AND b = 0x41 # secret", lex) == (
        "SELECT * FROM t WHERE a = ? AND b = ?"
    )
    assert comment_texts("SELECT 1 /* trace=abc */ -- x\n", lex) == ["/* trace=abc */", "-- x"]


def test_sqlglot_disagreement_is_refused() -> None:
    # The cross-check: the lexer's reading (here under NO_BACKSLASH_ESCAPES) against
    # sqlglot's (here without it) of the same text: the quoted spans differ, refused.
    from dbsentry.engines.mysql.sql.facts import _agree

    text = "SELECT 'a\\', 'b', 'c'"
    mine = [t for t in tokens(text, NBE) if t.kind != COMMENT]
    with pytest.raises(AnalysisRefused):
        _agree(text, mine, SqlMode())
    _agree(text, mine, NBE)  # the same reading: no refusal
    # a comment sqlglot would read where MySQL reads code
    text = "SELECT 1 --1"
    mine = [t for t in tokens("SELECT 1 - 1") if t.kind != COMMENT]
    with pytest.raises(AnalysisRefused):
        _agree(
            text,
            [
                mine[0],
                mine[1],
                mine[2]._replace(start=9, end=10),
                mine[3]._replace(start=10, end=11),
            ],
            SqlMode(),
        )


def test_dollar_words_are_identifiers_for_both() -> None:
    assert analyze("SELECT $$x$$ FROM t")[0].columns_read == ("t.$$x$$",)


def test_sql_mode_parse() -> None:
    m = SqlMode.parse("STRICT_TRANS_TABLES,no_backslash_escapes, ANSI_QUOTES")
    assert m == SqlMode(no_backslash_escapes=True, ansi_quotes=True)
    assert SqlMode.parse("ANSI").pipes_as_concat
    assert SqlMode.parse("").no_backslash_escapes is False
    oracle = SqlMode.parse("ORACLE,STRICT_TRANS_TABLES")
    assert oracle.unsupported == "ORACLE"
    with pytest.raises(AnalysisRefused):
        analyze("SELECT 1", oracle)
