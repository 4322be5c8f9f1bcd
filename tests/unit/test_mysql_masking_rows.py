"""Masked MySQL result rows (engines/mysql/masking/rows.py, values.py): text and binary
protocol, every wire type, with properties: a rewritten row decodes with
engines/mysql/wire to as many columns, each masked column masked and every other column
byte for byte as it came."""

from __future__ import annotations

import datetime as dt

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dbsentry.engines.mysql.masking import MysqlMaskPlan, MysqlRowMasker
from dbsentry.engines.mysql.masking.values import kind_of
from dbsentry.engines.mysql.wire import primitives as p
from dbsentry.engines.mysql.wire.constants import BINARY_CHARSET, UNSIGNED_FLAG, ColumnType
from dbsentry.engines.mysql.wire.results import (
    BinaryRow,
    ColumnDefinition,
    TextRow,
    column_types,
    decode_binary_row,
    decode_text_row,
    encode_binary_row,
    encode_text_row,
)
from dbsentry.engines.mysql.wire.values import DateTime, Time, Value, encode_binary_value
from dbsentry.errors import ProtocolError
from dbsentry.masking.catalog import ClassMap, SourceColumn
from dbsentry.masking.classes import Classification, DataClass
from dbsentry.masking.plans import ColumnMask
from dbsentry.masking.strategies import PLACEHOLDERS

UTF8 = 45  # utf8mb4_general_ci


def col(name: str, type_: int, length: int = 400, charset: int = UTF8, decimals: int = 0, flags: int = 0, **kw: str) -> ColumnDefinition:
    return ColumnDefinition(name, type_, charset=charset, length=length, decimals=decimals, flags=flags, **kw)


def mask(i: int, cls: DataClass | None, strategy: str) -> ColumnMask:
    return ColumnMask(i, cls, strategy, frozenset(), "lineage" if cls else "unresolved")


def test_text_rows() -> None:
    cols = [col("id", ColumnType.LONG, 11), col("email", ColumnType.VAR_STRING), col("ssn", ColumnType.STRING, 80), col("city", ColumnType.VAR_STRING)]
    plan = MysqlMaskPlan((None, mask(1, DataClass.EMAIL, "partial"), mask(2, DataClass.NATIONAL_ID, "redact"), None))
    m = MysqlRowMasker(plan, cols)
    row = encode_text_row(TextRow((b"1", b"ada@example.com", b"123-45-6789", b"London")))
    out = decode_text_row(m.text_row(row), 4).values
    assert out == (b"1", b"****@example.com", b"<national_id>", b"London")
    with_null = encode_text_row(TextRow((b"2", None, None, b"Paris")))
    assert m.text_row(with_null) is with_null  # nothing to mask: the same bytes
    # values are read up to the last masked column, and checked against the packet's end
    with pytest.raises(ProtocolError):
        m.text_row(row[:12])
    with pytest.raises(ProtocolError):
        m.text_row(b"\x30" + row[1:])
    last = MysqlRowMasker(MysqlMaskPlan((None, None, None, mask(3, None, "detect"))), cols)
    with pytest.raises(ProtocolError):
        last.text_row(row + b"\x01x")
    with pytest.raises(ProtocolError):
        last.text_row(row[:-2])
    with pytest.raises(ProtocolError):
        last.text_row(b"\xff" + row[1:])


def test_masked_strings_fit_the_column() -> None:
    cols = [col("ssn", ColumnType.STRING, 9, charset=8)]  # CHAR(9) latin1
    m = MysqlRowMasker(MysqlMaskPlan((mask(0, DataClass.NATIONAL_ID, "redact"),)), cols)
    out = decode_text_row(m.text_row(encode_text_row(TextRow((b"123456789",)))), 1).values
    assert out == (b"<national",)
    utf = [col("ssn", ColumnType.STRING, 36)]  # CHAR(9) utf8mb4: 9 characters
    m = MysqlRowMasker(MysqlMaskPlan((mask(0, DataClass.NATIONAL_ID, "redact"),)), utf)
    assert decode_text_row(m.text_row(encode_text_row(TextRow((b"123456789",)))), 1).values == (b"<national",)


TYPED = [
    (col("n", ColumnType.LONGLONG, 20), b"4539148803436467", 4539148803436467, b"0", 0),
    (col("n", ColumnType.LONG, 11, flags=UNSIGNED_FLAG), b"123456789", 123456789, b"0", 0),
    (col("n", ColumnType.TINY, 4), b"7", 7, b"0", 0),
    (col("n", ColumnType.SHORT, 6), b"7", 7, b"0", 0),
    (col("n", ColumnType.INT24, 9), b"7", 7, b"0", 0),
    (col("y", ColumnType.YEAR, 4), b"1985", 1985, b"0", 0),
    (col("f", ColumnType.DOUBLE, 22, decimals=31), b"1.5", 1.5, b"0", 0.0),
    (col("f", ColumnType.FLOAT, 12, decimals=31), b"1.5", 1.5, b"0", 0.0),
    (col("d", ColumnType.NEWDECIMAL, 12, decimals=2), b"12.50", "12.50", b"0.00", "0.00"),
    (col("d", ColumnType.DATE, 10), b"1985-06-01", DateTime(1985, 6, 1), b"1900-01-01", DateTime(1900, 1, 1)),
    (col("d", ColumnType.DATETIME, 23, decimals=3), b"1985-06-01 10:00:00.000", DateTime(1985, 6, 1, 10), b"1900-01-01 00:00:00.000", DateTime(1900, 1, 1)),
    (col("d", ColumnType.TIMESTAMP, 19), b"2020-01-01 00:00:01", DateTime(2020, 1, 1, 0, 0, 1), b"1900-01-01 00:00:00", DateTime(1900, 1, 1)),
    (col("t", ColumnType.TIME, 10), b"10:00:00", Time(False, 0, 10), b"00:00:00", Time()),
    (col("b", ColumnType.BIT, 8, charset=BINARY_CHARSET), b"\x05", b"\x05", b"\x00", b"\x00"),
    (col("g", ColumnType.GEOMETRY, 0, charset=BINARY_CHARSET), b"\x00\x01", b"\x00\x01", None, None),
]


@pytest.mark.parametrize(("c", "text", "value", "masked_text", "masked_value"), TYPED)
def test_typed_values_stay_valid(c: ColumnDefinition, text: bytes, value: Value, masked_text: bytes | None, masked_value: Value) -> None:
    plan = MysqlMaskPlan((mask(0, DataClass.PAYMENT_CARD, "partial"),))
    m = MysqlRowMasker(plan, [c])
    assert decode_text_row(m.text_row(encode_text_row(TextRow((text,)))), 1).values == (masked_text,)
    types = column_types([c])
    out = decode_binary_row(m.binary_row(encode_binary_row(BinaryRow((value,)), types)), types).values
    assert out == (masked_value,)
    nulled = MysqlRowMasker(MysqlMaskPlan((mask(0, DataClass.PAYMENT_CARD, "null"),)), [c])
    assert decode_text_row(nulled.text_row(encode_text_row(TextRow((text,)))), 1).values == (None,)
    assert decode_binary_row(nulled.binary_row(encode_binary_row(BinaryRow((value,)), types)), types).values == (None,)


def test_json_values() -> None:
    c = col("doc", ColumnType.JSON, 0, charset=UTF8)
    m = MysqlRowMasker(MysqlMaskPlan((mask(0, DataClass.EMAIL, "partial"),)), [c])
    got = decode_text_row(m.text_row(encode_text_row(TextRow((b'"ada@example.com"',)))), 1).values[0]
    assert got is not None and orjson.loads(got) == "****@example.com"
    got = decode_text_row(m.text_row(encode_text_row(TextRow((b'{"e": "ada@example.com"}',)))), 1).values[0]
    assert got is not None and orjson.loads(got) == "<email>"
    scan = MysqlRowMasker(MysqlMaskPlan((mask(0, None, "detect"),)), [c])
    doc = b'{"note": "call ada@example.com", "n": 1, "card": 4539148803436467}'
    got = decode_text_row(scan.text_row(encode_text_row(TextRow((doc,)))), 1).values[0]
    assert got is not None
    parsed = orjson.loads(got)
    assert parsed["note"] == "call ****@example.com" and parsed["n"] == 1 and "4539148803436467" not in got.decode()
    deep = b"[" * 1000 + b"]" * 1000
    assert decode_text_row(scan.text_row(encode_text_row(TextRow((deep,)))), 1).values == (None,)
    plain = b'{"a": 1}'
    assert scan.text_row(encode_text_row(TextRow((plain,)))) == encode_text_row(TextRow((plain,)))


def test_value_detection_and_the_safety_net() -> None:
    cols = [col("memo", ColumnType.BLOB, 65535), col("n", ColumnType.LONGLONG, 20), col("when", ColumnType.DATE, 10)]
    plan = MysqlMaskPlan((mask(0, None, "detect"), mask(1, None, "detect"), mask(2, None, "detect")))
    m = MysqlRowMasker(plan, cols)
    types = column_types(cols)
    row = encode_binary_row(BinaryRow((b"card 4539 1488 0343 6467, thanks", 4539148803436467, DateTime(2020, 1, 1))), types)
    out = decode_binary_row(m.binary_row(row), types).values
    assert out == (b"card **** **** **** 6467, thanks", 0, DateTime(2020, 1, 1))
    harmless = encode_binary_row(BinaryRow((b"order 12 shipped", 42, DateTime(2020, 1, 1))), types)
    assert m.binary_row(harmless) is harmless
    again = encode_binary_row(BinaryRow((b"order 12 shipped", 42, DateTime(2020, 1, 1))), types)
    assert m.binary_row(again) is again  # remembered as left alone
    # the safety net: unmasked string columns are scanned (without IP addresses)
    net = MysqlRowMasker(MysqlMaskPlan((None,)), [col("c1", ColumnType.VAR_STRING)], safety_net=True)
    assert net.masks[0] is not None and net.masks[0].reason == "safety-net"
    got = decode_text_row(net.text_row(encode_text_row(TextRow((b"mail bob@example.org from 10.0.0.1",)))), 1).values
    assert got == (b"mail ****@example.org from 10.0.0.1",)
    assert not MysqlRowMasker(MysqlMaskPlan((None,)), [col("n", ColumnType.LONG)], safety_net=True).active


def test_the_column_definition_names_a_classified_column() -> None:
    classmap = ClassMap({SourceColumn("app", "people", "email"): Classification(DataClass.EMAIL, "schema-name", "x")})
    c = col("e", ColumnType.VAR_STRING, schema="app", org_table="people", org_name="email", table="p")
    m = MysqlRowMasker(MysqlMaskPlan((None,)), [c], classmap=classmap)
    assert m.masks[0] is not None and m.masks[0].reason == "row-description"
    assert decode_text_row(m.text_row(encode_text_row(TextRow((b"ada@example.com",)))), 1).values == (b"****@example.com",)


def test_widths_and_rest() -> None:
    cols = [col("a", ColumnType.VAR_STRING), col("b", ColumnType.VAR_STRING)]
    # an exact plan of another width: every column value-scanned
    m = MysqlRowMasker(MysqlMaskPlan((mask(0, DataClass.EMAIL, "redact"),)), cols)
    assert [x.strategy if x else None for x in m.masks] == ["detect", "detect"]
    # inexact: ``rest`` for every column past the plan
    m = MysqlRowMasker(MysqlMaskPlan((), mask(-1, DataClass.SECRET, "redact"), exact=False), cols)
    row = encode_text_row(TextRow((b"x", b"y")))
    assert decode_text_row(m.text_row(row), 2).values == (b"<secret>", b"<secret>")
    assert not MysqlRowMasker(MysqlMaskPlan(), cols).active


def test_binary_row_errors() -> None:
    cols = [col("a", ColumnType.VAR_STRING)]
    m = MysqlRowMasker(MysqlMaskPlan((mask(0, DataClass.EMAIL, "redact"),)), cols)
    for bad in (b"\x01\x00\x01a", b"\x00\x00\x05ab", b"\x00\x00\x01ab", b"\x00"):
        with pytest.raises(ProtocolError):
            m.binary_row(bad)


# -- properties ----------------------------------------------------------------------------------

_TYPES: list[tuple[ColumnDefinition, st.SearchStrategy[Value]]] = [
    (col("s", ColumnType.VAR_STRING), st.sampled_from([b"ada@example.com", b"123-45-6789", b"plain text", b"", "caf\u00e9 +1 415 555 0132".encode()])),
    (col("b", ColumnType.BLOB, 65535, charset=BINARY_CHARSET), st.binary(max_size=40)),
    (col("e", ColumnType.ENUM, 10), st.sampled_from([b"red", b"green"])),
    (col("i8", ColumnType.LONGLONG, 20), st.integers(-(2**63), 2**63 - 1)),
    (col("u8", ColumnType.LONGLONG, 20, flags=UNSIGNED_FLAG), st.integers(0, 2**64 - 1)),
    (col("i4", ColumnType.LONG, 11), st.integers(-(2**31), 2**31 - 1)),
    (col("i3", ColumnType.INT24, 9), st.integers(-(2**31), 2**31 - 1)),
    (col("i2", ColumnType.SHORT, 6), st.integers(-(2**15), 2**15 - 1)),
    (col("i1", ColumnType.TINY, 4), st.integers(-128, 127)),
    (col("y", ColumnType.YEAR, 4), st.integers(0, 2155)),
    (col("d", ColumnType.DOUBLE, 22, decimals=31), st.floats(allow_nan=False)),
    (col("f", ColumnType.FLOAT, 12, decimals=31), st.sampled_from([0.5, -2.25, 1024.0])),
    (col("dec", ColumnType.NEWDECIMAL, 12, decimals=2), st.sampled_from(["1.50", "-123456789012.00", "0.00"])),
    (col("date", ColumnType.DATE, 10), st.dates().map(DateTime.of)),
    (col("dt", ColumnType.DATETIME, 26, decimals=6), st.datetimes().map(DateTime.of)),
    (col("ts", ColumnType.TIMESTAMP, 19), st.datetimes(min_value=dt.datetime(1970, 1, 2)).map(DateTime.of)),
    (col("t", ColumnType.TIME, 10), st.timedeltas(min_value=dt.timedelta(days=-30), max_value=dt.timedelta(days=30)).map(Time.of)),
    (col("bit", ColumnType.BIT, 8, charset=BINARY_CHARSET), st.binary(min_size=1, max_size=8)),
    (col("j", ColumnType.JSON, 0, charset=BINARY_CHARSET), st.sampled_from([b'{"a": "ada@example.com"}', b"[1, 2]", b'"x"'])),
    (col("g", ColumnType.GEOMETRY, 0, charset=BINARY_CHARSET), st.binary(max_size=25)),
]
_STRATEGIES = ["partial", "hash", "redact", "null", "detect"]
_CLASSES = [DataClass.EMAIL, DataClass.NATIONAL_ID, DataClass.PERSON_NAME, DataClass.PAYMENT_CARD]


@st.composite
def results(draw: st.DrawFn) -> tuple[list[ColumnDefinition], tuple[Value, ...], tuple[ColumnMask | None, ...]]:
    picks = draw(st.lists(st.sampled_from(range(len(_TYPES))), min_size=1, max_size=12))
    cols = [_TYPES[i][0] for i in picks]
    values = tuple(draw(st.one_of(st.none(), _TYPES[i][1])) for i in picks)
    masks: list[ColumnMask | None] = []
    for i in range(len(picks)):
        if draw(st.booleans()):
            masks.append(None)
            continue
        strategy = draw(st.sampled_from(_STRATEGIES))
        masks.append(mask(i, None if strategy == "detect" else draw(st.sampled_from(_CLASSES)), strategy))
    return cols, values, tuple(masks)


def _text_of(v: Value, c: ColumnDefinition) -> bytes | None:
    """The text-protocol form of a binary value (as the server would send it)."""
    if v is None:
        return None
    if isinstance(v, bytes):
        return v
    if isinstance(v, float):
        return repr(v).encode()
    return str(v).encode()


def _check_masked(c: ColumnDefinition, m: ColumnMask, before: Value | bytes, after: Value | bytes, text: bool) -> None:
    if before is None:
        assert after is None
        return
    kind = kind_of(c)
    if m.strategy == "null":
        assert after is None
    elif m.strategy == "detect":
        pass  # only what the detectors find changes (checked in the tests above)
    elif kind == "string":
        if m.strategy == "redact":
            assert after == PLACEHOLDERS[m.data_class].encode()[: c.length // (4 if c.charset == UTF8 else 1)]
    elif kind in ("int", "float") and not text:
        assert after == 0
    elif kind == "opaque":
        assert after is None
    elif kind in ("date", "datetime") and not text:
        assert after == DateTime(1900, 1, 1)
    elif kind == "json" and m.strategy == "redact":
        assert after is not None and orjson.loads(after) == PLACEHOLDERS[m.data_class]


@settings(max_examples=150, deadline=None)
@given(results())
def test_binary_rows_property(case: tuple[list[ColumnDefinition], tuple[Value, ...], tuple[ColumnMask | None, ...]]) -> None:
    cols, values, masks = case
    types = column_types(cols)
    payload = encode_binary_row(BinaryRow(values), types)
    masker = MysqlRowMasker(MysqlMaskPlan(masks), cols)
    out = masker.binary_row(payload)
    decoded = decode_binary_row(out, types).values
    assert len(decoded) == len(cols)
    for i, (c, before, after) in enumerate(zip(cols, values, decoded, strict=True)):
        m = masks[i]
        if m is None:
            # byte for byte as it came
            orig = b"" if before is None else encode_binary_value(c.type, c.unsigned, before)
            again = b"" if after is None else encode_binary_value(c.type, c.unsigned, after)
            assert orig == again and (before is None) == (after is None)
        else:
            _check_masked(c, m, before, after, text=False)
    if all(m is None for m in masks):
        assert out is payload


@settings(max_examples=150, deadline=None)
@given(results())
def test_text_rows_property(case: tuple[list[ColumnDefinition], tuple[Value, ...], tuple[ColumnMask | None, ...]]) -> None:
    cols, values, masks = case
    texts = tuple(_text_of(v, c) for v, c in zip(values, cols, strict=True))
    payload = encode_text_row(TextRow(texts))
    masker = MysqlRowMasker(MysqlMaskPlan(masks), cols)
    out = masker.text_row(payload)
    decoded = decode_text_row(out, len(cols)).values
    assert len(decoded) == len(cols)
    # every unmasked value's length-encoded bytes are the same
    reader = p.Reader(out)
    for i, before in enumerate(texts):
        after = reader.lenenc_bytes_or_null("v")
        assert after == decoded[i]
        m = masks[i]
        if m is None:
            assert after == before
        else:
            _check_masked(cols[i], m, before, after, text=True)
