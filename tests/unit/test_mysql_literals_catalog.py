"""MySQL literal redaction with the catalog: constants compared with, assigned to or
inserted into a classified column become tokens of its class; others are judged by value."""

from __future__ import annotations

import pytest

from dbsentry.audit.redaction import LiteralRedactor
from dbsentry.engines.mysql.session.literals import MYSQL_LITERALS, find_literal_meets
from dbsentry.masking.catalog import ClassMap, SourceColumn
from dbsentry.masking.classes import Classification, DataClass

CLASSMAP = ClassMap(
    {
        SourceColumn("test", "cust", "label"): Classification(DataClass.EMAIL, "sample", "sampled values"),
        SourceColumn("test", "cust", "nick"): Classification(DataClass.PERSON_NAME, "comment", "pii:person_name"),
    }
)


def _redact(sql: str) -> str:
    redactor = LiteralRedactor(b"k" * 32, "sensitive", None, literals=MYSQL_LITERALS)
    text, _ = MYSQL_LITERALS.rewrite(sql, find_literal_meets(sql, CLASSMAP), redactor)
    return text


@pytest.mark.parametrize(
    ("sql", "kept", "classes"),
    [
        ("SELECT * FROM cust WHERE label = 'foo' AND city = 'Paris'", ["'Paris'"], ["email"]),
        ("SELECT * FROM cust c WHERE c.nick IN ('Bob', 'Al') OR 'zed' = c.label", [], ["person_name", "person_name", "email"]),
        ("SELECT * FROM cust WHERE LOWER(label) LIKE 'abc%' AND id BETWEEN 1 AND 5", ["1", "5"], ["email"]),
        ("INSERT INTO cust (id, nick, city) VALUES (1, 'Bobby', 'Paris')", ["'Paris'"], ["person_name"]),
        ("UPDATE cust SET nick = 'X', city = 'Y' WHERE id = 3", ["'Y'", "3"], ["person_name"]),
        ("SELECT * FROM other WHERE ssn = '999'", [], ["national_id"]),  # by its name alone
    ],
)
def test_constants_meeting_classified_columns_become_tokens(sql: str, kept: list[str], classes: list[str]) -> None:
    text = _redact(sql)
    for k in kept:
        assert k in text
    assert [c for c in classes] == [part.split(":hmac:")[0] for part in text.split("'<")[1:]]


def test_parameters_inserted_into_classified_columns_meet_them() -> None:
    meets = find_literal_meets("INSERT INTO cust (id, nick, city) VALUES (?, ?, ?)", CLASSMAP)
    assert dict(meets.params) == {2: DataClass.PERSON_NAME}


def test_values_only_when_no_sensitive_column_is_named() -> None:
    assert MYSQL_LITERALS.values_only("SELECT 1, 'x' FROM cust WHERE city = 'a'", CLASSMAP)
    assert not MYSQL_LITERALS.values_only("SELECT label FROM cust", CLASSMAP)
    assert not MYSQL_LITERALS.values_only("SELECT ssn FROM anything", None)  # the name classifies
    assert find_literal_meets("SELECT 'ada@example.com'", CLASSMAP).literals == {}
    assert not find_literal_meets("SELECT 'unterminated", CLASSMAP).parsed


@pytest.mark.parametrize(
    "sql",
    [
        "EXECUTE IMMEDIATE 'SELECT id FROM cust WHERE nick = ''Bobby'''",
        "EXECUTE IMMEDIATE 'SELECT id FROM cust WHERE nick = ''Bobby''' USING 1",
        "PREPARE s FROM 'UPDATE cust SET nick = ''Bobby'' WHERE id = 1'",
        'PREPARE s /* c */ FROM "SELECT id FROM cust WHERE nick = \'Bobby\'"',
    ],
)
def test_the_constants_of_a_prepared_text_are_redacted_with_it(sql: str) -> None:
    # the statement is one string constant: when its own constants meet a classified
    # column, the whole text becomes a token of that class
    text = _redact(sql)
    assert "Bobby" not in text and "<person_name:hmac:" in text, text


def test_a_prepared_text_of_harmless_constants_stays() -> None:
    sql = "PREPARE s FROM 'SELECT id FROM cust WHERE city = ''Paris'''"
    assert _redact(sql) == sql
