"""The maskers of notices, errors, notifications and reported parameters (pure)."""

from __future__ import annotations

import base64
import hashlib

from hypothesis import given
from hypothesis import strategies as st

from dbsentry.engines.postgres.masking.channels import (
    REDACTED,
    WITHHELD_NOTICE,
    WITHHELD_RAISE,
    ChannelMasker,
    TouchedValues,
    classified_columns,
    redact_detail,
    redact_quoted,
)
from dbsentry.engines.postgres.wire import codec
from dbsentry.engines.postgres.wire import messages as m
from dbsentry.masking.catalog import Classification, ClassMap, SourceColumn
from dbsentry.masking.classes import DataClass

NAME = "Ada Lovelace"
EMAIL = "ada.lovelace@example.com"


def _masker(*touched: tuple[str, DataClass]) -> ChannelMasker:
    values = TouchedValues()
    for v, c in touched:
        values.add(v, c)
    cols = {
        SourceColumn("public", "customers", "full_name"): Classification(
            DataClass.PERSON_NAME, "name", "full_name"
        ),
        SourceColumn("public", "customers", "email"): Classification(
            DataClass.EMAIL, "name", "email"
        ),
    }
    return ChannelMasker(touched=values, tables=classified_columns(ClassMap(cols)))


def test_text_masks_detected_spans_and_keeps_the_rest() -> None:
    c = _masker()
    assert c.text(f"write to {EMAIL} today") == "write to ****@example.com today"
    assert (
        c.text("card 4539 1488 0343 6467, ssn 536-22-8714")
        == "card **** **** **** 6467, ssn ***-**-8714"
    )
    assert c.text("hello 42") == "hello 42"
    assert c.text("") == ""


def test_touched_values_in_every_spelling() -> None:
    c = _masker((NAME, DataClass.PERSON_NAME))
    raw = NAME.encode()
    for spelled in (
        NAME,
        NAME.upper(),
        "AdaLovelace",
        "ada-lovelace",
        NAME[::-1],
        hashlib.md5(raw).hexdigest(),
        raw.hex(),
        base64.b64encode(raw).decode(),
        "Lovelace",
    ):
        out = c.text(f"x {spelled} y")
        assert out == "x <name> y", (spelled, out)
    assert c.text("Adam and Eve") == "Adam and Eve"


def test_touched_values_are_bounded_and_ignore_short_values() -> None:
    t = TouchedValues(limit=3)
    t.add("Bo", DataClass.PERSON_NAME)
    assert len(t) == 0
    for name in ("Alice Smith", "Bobby Jones", "Carol White", "Diana Prince"):
        t.add(name, DataClass.PERSON_NAME)
    assert len(t) == 3 and "Alice Smith" not in t and "Diana Prince" in t
    assert t.find("Diana Prince was here") == [(0, 12, DataClass.PERSON_NAME)]
    assert t.find("Alice Smith") == []


def test_redact_quoted() -> None:
    assert redact_quoted('invalid input syntax for type integer: "Ada"') == (
        f'invalid input syntax for type integer: "{REDACTED}"'
    )
    keep = frozenset({"customers", "customers_qty_check"})
    msg = 'new row for relation "customers" violates check constraint "customers_qty_check"'
    assert redact_quoted(msg, keep) == msg
    # a value with quotes inside: everything from its first quote to the last goes
    assert redact_quoted('bad: "a" leak "b"') == f'bad: "{REDACTED}"'
    assert redact_quoted('bad: "unterminated') == f'bad: "{REDACTED}'
    assert redact_quoted("no quotes") == "no quotes"


def test_redact_detail() -> None:
    assert (
        redact_detail(f"Key (email)=({EMAIL}) already exists.")
        == f"Key (email)=({REDACTED}) already exists."
    )
    assert redact_detail('Key (a, b)=(1, x) is not present in table "t".') == (
        f'Key (a, b)=({REDACTED}) is not present in table "t".'
    )
    assert redact_detail("Key (lower(email))=(a) b) weird") == f"Key (lower(email))=({REDACTED})"
    assert (
        redact_detail(f"Failing row contains (1, {NAME}, null).")
        == f"Failing row contains ({REDACTED})."
    )


def _fields(sqlstate: str, message: str, **extra: str) -> tuple[tuple[str, str], ...]:
    return (("S", "ERROR"), ("V", "ERROR"), ("C", sqlstate), ("M", message), *extra.items())


def test_harmless_errors_are_unchanged() -> None:
    c = _masker((NAME, DataClass.PERSON_NAME))
    for f in (
        _fields(
            "42883",
            "function nope(integer) does not exist",
            H="No function matches the given name.",
        ),
        _fields("26000", 'prepared statement "x" does not exist'),
        _fields("22012", "division by zero"),
    ):
        assert c.fields(f, notice=False, strict=False) is None
        assert c.fields(f, notice=False, strict=True) is None
    # A syntax error of the client's own text: a statement that was analysed (strict) has
    # parsed, so there its syntax errors come from values parsed at run time.
    syntax = _fields("42601", 'syntax error at or near "selec"', P="1")
    assert c.fields(syntax, notice=False, strict=False) is None
    masked = c.fields(syntax, notice=False, strict=True)
    assert masked is not None and "selec" not in str(masked)


def test_strict_data_errors_redact_quoted_values_and_keep_sqlstate() -> None:
    c = _masker()
    f = _fields("22P02", f'invalid input syntax for type integer: "{NAME}"')
    assert c.fields(f, notice=False, strict=False) is None  # nothing detects a name
    out = dict(c.fields(f, notice=False, strict=True) or ())
    assert (
        out["C"] == "22P02" and out["M"] == f'invalid input syntax for type integer: "{REDACTED}"'
    )


def test_parsers_that_echo_their_input_in_context_or_detail() -> None:
    """JSON's CONTEXT and libxml's DETAIL show the input without quotes: an attacker read
    names through ``('[' || full_name || ']')::json`` and ``xmlparse(document full_name)``."""
    c = _masker()
    json_error = _fields(
        "22P02",
        "invalid input syntax for type json",
        D='Token "AdaLovelace" is invalid.',
        W="JSON data, line 1: [AdaLovelace...",
    )
    out = dict(c.fields(json_error, notice=False, strict=True) or ())
    assert "Lovelace" not in repr(out) and out["W"] == REDACTED, out
    xml_error = _fields(
        "2200M",
        "invalid XML document",
        D=f"line 1: Start tag expected, '<' not found\n{NAME}\n^",
    )
    out = dict(c.fields(xml_error, notice=False, strict=True) or ())
    assert "Lovelace" not in repr(out) and REDACTED in out["D"] and "\n" not in out["D"], out
    # where the error happened stays, line by line; a value's line does not
    nested = _fields(
        "22P02",
        "invalid input syntax for type json",
        W="JSON data, line 1: Ada...\nPL/pgSQL function f(text) line 3 at assignment\n"
        'SQL function "g" statement 1',
    )
    out = dict(c.fields(nested, notice=False, strict=True) or ())
    lines = out["W"].split("\n")
    assert lines[:2] == [REDACTED, "PL/pgSQL function f(text) line 3 at assignment"], lines
    assert lines[2].startswith("SQL function ") and lines[2].endswith(" statement 1"), lines
    # a statement that reads nothing classified keeps the server's text
    assert c.fields(json_error, notice=False, strict=False) is None


def test_raise_in_a_statement_reading_classified_columns_is_withheld() -> None:
    c = _masker()
    f = _fields(
        "P0001",
        f"customer {NAME}",
        D="mail x",
        H="call y",
        W="PL/pgSQL function f(integer) line 4 at RAISE",
    )
    out = dict(c.fields(f, notice=False, strict=True) or ())
    assert out["M"] == WITHHELD_RAISE and "D" not in out and "H" not in out
    assert out["C"] == "P0001" and out["W"].startswith("PL/pgSQL function")
    notice = (("S", "NOTICE"), ("V", "NOTICE"), ("C", "00000"), ("M", NAME))
    assert dict(c.fields(notice, notice=True, strict=True) or ())["M"] == WITHHELD_NOTICE
    assert c.fields(notice, notice=True, strict=False) is None


def test_constraint_details_of_classified_tables() -> None:
    c = _masker()
    row = _fields(
        "23514",
        'new row for relation "customers" violates check constraint "q"',
        D=f"Failing row contains (1, {NAME}).",
        s="public",
        t="customers",
        n="q",
    )
    out = dict(c.fields(row, notice=False, strict=False) or ())
    assert out["D"] == f"Failing row contains ({REDACTED})." and out["M"].startswith(
        "new row for relation"
    )
    key = _fields(
        "23505",
        'duplicate key value violates unique constraint "k"',
        D=f"Key (full_name)=({NAME}) already exists.",
        s="public",
        t="customers",
    )
    assert (
        dict(c.fields(key, notice=False, strict=False) or ())["D"]
        == f"Key (full_name)=({REDACTED}) already exists."
    )
    harmless = _fields(
        "23505",
        'duplicate key value violates unique constraint "k"',
        D="Key (sku)=(SKU-1) already exists.",
        s="public",
        t="customers",
    )
    assert c.fields(harmless, notice=False, strict=False) is None
    other = _fields("23514", "x", D=f"Failing row contains ({NAME}).", s="public", t="orders")
    assert c.fields(other, notice=False, strict=False) is None


def test_notifications_and_parameters() -> None:
    c = _masker((NAME, DataClass.PERSON_NAME))
    assert c.notification("ch", "hello 42") is None
    assert c.notification("ch", f"{NAME} <{EMAIL}>") == "<name> <****@example.com>"
    assert c.parameter("application_name", "nightly") is None
    assert c.parameter("application_name", EMAIL) == "****@example.com"
    assert c.parameter("server_version", "17.2 " + EMAIL) is None  # fixed form: left alone


def test_codec_round_trips_non_utf8_fields() -> None:
    body = b"SERROR\x00C22021\x00Minvalid byte \xff\xfe\x00\x00"
    fields = codec.decode_raw_fields(body, 0, len(body))
    assert codec.encode_raw_fields(b"E", fields) == codec.frame(b"E", body)
    note = m.NotificationResponse(42, "ch", "p\udcff")
    frame = codec.encode_notification(note)
    assert codec.decode_notification(frame, 5, len(frame)) == note
    ps = codec.encode_raw_parameter_status("application_name", "x")
    assert codec.decode_raw_parameter_status(ps, 5, len(ps)) == m.ParameterStatus(
        "application_name", "x"
    )


@given(st.text(max_size=200))
def test_text_never_grows_a_touched_value(text: str) -> None:
    c = _masker((NAME, DataClass.PERSON_NAME), (EMAIL, DataClass.EMAIL))
    out = c.text(text + " " + NAME + " " + text)
    assert "lovelace" not in out.lower()


@given(st.binary(max_size=120))
def test_random_error_bodies_never_crash(body: bytes) -> None:
    c = _masker((NAME, DataClass.PERSON_NAME))
    try:
        fields = codec.decode_raw_fields(body, 0, len(body))
    except codec.ProtocolError:
        return
    out = c.fields(fields, notice=False, strict=True)
    if out is not None:
        codec.encode_raw_fields(b"E", out)
