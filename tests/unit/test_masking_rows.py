"""RowDescription/DataRow codecs, row masking and COPY masking."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dbsentry.engines.postgres.masking.lineage import ColumnMask, CopyOptions, MaskPlan
from dbsentry.engines.postgres.masking.rows import (
    Field,
    UnsupportedCopy,
    compile_copy_masker,
    compile_row_masker,
    decode_data_row,
    decode_row_description,
    encode_data_row,
    encode_row_description,
    mask_data_row,
)
from dbsentry.engines.postgres.wire.codec import ProtocolError
from dbsentry.masking.catalog import ClassMap, SourceColumn
from dbsentry.masking.classes import Classification, DataClass

D = DataClass
KEY = b"k"
SRC = SourceColumn("public", "customers", "x")


def field(
    name: str, oid: int = 25, fmt: int = 0, table: int = 0, attnum: int = 0, typmod: int = -1
) -> Field:
    return Field(name, table, attnum, oid, -1, typmod, fmt)


def mask(i: int, cls: DataClass | None, strategy: str) -> ColumnMask:
    return ColumnMask(i, cls, strategy, frozenset({SRC}), "lineage" if cls else "unresolved")


# -- codecs -----------------------------------------------------------------------------------

fields_st = st.lists(
    st.builds(
        Field,
        st.text(
            alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)),
            max_size=20,
        ),
        st.integers(0, 2**32 - 1),
        st.integers(-(2**15), 2**15 - 1),
        st.integers(0, 2**32 - 1),
        st.integers(-(2**15), 2**15 - 1),
        st.integers(-(2**31), 2**31 - 1),
        st.integers(0, 1),
    ),
    max_size=8,
)
values_st = st.lists(st.one_of(st.none(), st.binary(max_size=50)), max_size=30)


@settings(max_examples=60, deadline=None)
@given(fields_st)
def test_row_description_round_trip(fields: list[Field]) -> None:
    assert decode_row_description(encode_row_description(fields)) == tuple(fields)


@settings(max_examples=300, deadline=None)
@given(values_st)
def test_data_row_round_trip(values: list[bytes | None]) -> None:
    assert decode_data_row(encode_data_row(values)) == values


@settings(max_examples=300, deadline=None)
@given(values_st, st.data())
def test_mask_data_row_matches_decode_encode(
    values: list[bytes | None], data: st.DataObject
) -> None:
    n = len(values)
    chosen = data.draw(st.sets(st.integers(0, max(0, n - 1)), max_size=n)) if n else set()
    plan = MaskPlan(tuple(mask(i, D.EMAIL, "redact") if i in chosen else None for i in range(n)))
    masker = compile_row_masker(plan, [field(f"c{i}") for i in range(n)], key=KEY)
    body = encode_data_row(values)
    if masker is None:
        assert not chosen
        return
    expected = [b"<email>" if i in chosen and v is not None else v for i, v in enumerate(values)]
    assert decode_data_row(mask_data_row(body, masker)) == expected


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_random_bytes_never_crash(data: bytes) -> None:
    for fn in (decode_data_row, decode_row_description):
        with contextlib.suppress(ProtocolError):
            fn(data)
    plan = MaskPlan((mask(0, D.EMAIL, "redact"), None, mask(2, D.SECRET, "null")))
    masker = compile_row_masker(plan, [field("a"), field("b"), field("c")], key=KEY)
    assert masker is not None
    with contextlib.suppress(ProtocolError):
        mask_data_row(data, masker)


def test_decode_errors() -> None:
    with pytest.raises(ProtocolError):
        decode_data_row(b"\x00\x01\x00\x00\x00\x05ab")
    with pytest.raises(ProtocolError):
        decode_data_row(encode_data_row([b"a"]) + b"x")
    with pytest.raises(ProtocolError):
        decode_row_description(b"\x00\x01abc")


# -- masking rows --------------------------------------------------------------------------------


def test_mask_only_planned_columns() -> None:
    fields = [
        field("id", 23),
        field("email"),
        field("ssn", 1042, typmod=15),
        field("notes"),
        field("card"),
    ]
    plan = MaskPlan(
        (
            None,
            mask(1, D.EMAIL, "partial"),
            mask(2, D.NATIONAL_ID, "partial"),
            None,
            mask(4, D.PAYMENT_CARD, "null"),
        )
    )
    masker = compile_row_masker(plan, fields, key=KEY)
    assert (
        masker is not None
        and masker.last == 4
        and masker.data_classes == {D.EMAIL, D.NATIONAL_ID, D.PAYMENT_CARD}
    )
    body = encode_data_row([b"7", b"alice@example.com", b"123-45-6789", None, b"4242424242424242"])
    out = decode_data_row(mask_data_row(body, masker))
    assert out == [b"7", b"****@example.com", b"***-**-6789", None, None]
    # NULLs stay NULL and an untouched row is the same object
    nulls = encode_data_row([b"1", None, None, b"x", None])
    assert mask_data_row(nulls, masker) is nulls


def test_width_mismatch_is_refused() -> None:
    masker = compile_row_masker(MaskPlan((mask(0, D.EMAIL, "redact"),)), [field("a")], key=KEY)
    assert masker is not None
    with pytest.raises(ProtocolError):
        mask_data_row(encode_data_row([b"a", b"b"]), masker)


def test_nothing_to_mask_gives_no_masker() -> None:
    assert compile_row_masker(MaskPlan((None, None)), [field("a"), field("b")], key=KEY) is None
    # detect on a column whose type cannot carry what detection finds
    plan = MaskPlan((mask(0, None, "detect"),))
    assert compile_row_masker(plan, [field("d", 1082)], key=KEY) is None


def test_result_formats_from_bind() -> None:
    plan = MaskPlan((mask(0, D.EMAIL, "redact"), mask(1, D.EMAIL, "redact")))
    fields = [field("a", 3802), field("b", 3802)]
    both_binary = compile_row_masker(plan, fields, key=KEY, result_formats=[1])
    assert both_binary is not None
    out = decode_data_row(mask_data_row(encode_data_row([b'\x01"x"', b'\x01"y"']), both_binary))
    assert out == [b'\x01"<email>"', b'\x01"<email>"']
    mixed = compile_row_masker(plan, fields, key=KEY, result_formats=[0, 1])
    assert mixed is not None
    out = decode_data_row(mask_data_row(encode_data_row([b'"x"', b'\x01"y"']), mixed))
    assert out == [b'"<email>"', b'\x01"<email>"']


def test_plan_width_mismatch_falls_back_to_detection() -> None:
    plan = MaskPlan((mask(0, D.EMAIL, "redact"),), reads_sensitive=True)
    masker = compile_row_masker(plan, [field("a"), field("b")], key=KEY)
    assert masker is not None
    out = decode_data_row(mask_data_row(encode_data_row([b"hello", b"alice@example.com"]), masker))
    assert out == [b"hello", b"****@example.com"]


def test_row_description_names_a_sensitive_column() -> None:
    cm = ClassMap(
        {SRC: Classification(D.SECRET, "schema-name", "x")},
        {(100, 3): Classification(D.SECRET, "schema-name", "x")},
    )
    masker = compile_row_masker(
        MaskPlan((None, None)), [field("a"), field("b", table=100, attnum=3)], key=KEY, classmap=cm
    )
    assert (
        masker is not None
        and masker.masks[1] is not None
        and masker.masks[1].reason == "row-description"
    )
    assert decode_data_row(mask_data_row(encode_data_row([b"a", b"hunter2"]), masker)) == [
        b"a",
        b"<secret>",
    ]


def test_detect_mode_rows() -> None:
    plan = MaskPlan(tuple(mask(i, None, "detect") for i in range(3)), reads_sensitive=True)
    masker = compile_row_masker(plan, [field("a"), field("b", 23), field("c", 20)], key=KEY)
    assert masker is not None
    out = decode_data_row(
        mask_data_row(encode_data_row([b"ssn 123-45-6789", b"12", b"4242424242424242"]), masker)
    )
    assert out == [b"ssn ***-**-6789", b"12", b"0"]  # a card number in a bigint: 0


# -- COPY -----------------------------------------------------------------------------------------


def test_copy_text() -> None:
    plan = MaskPlan(
        (
            None,
            mask(1, D.EMAIL, "partial"),
            mask(2, D.NATIONAL_ID, "null"),
            mask(3, D.SECRET, "redact"),
        )
    )
    cm = compile_copy_masker(plan, CopyOptions(), key=KEY)
    assert cm is not None
    line = b"1\talice@example.com\t123-45-6789\tpass\\tword\\\\x\n"
    assert cm.mask(line) == b"1\t****@example.com\t\\N\t<secret>\n"
    assert cm.mask(b"2\t\\N\t\\N\t\\N\n") == b"2\t\\N\t\\N\t\\N\n"
    # escapes decode before masking and re-encode after
    weird = compile_copy_masker(MaskPlan((mask(0, None, "detect"),)), CopyOptions(), key=KEY)
    assert weird is not None
    assert weird.mask(b"mail:\\talice@example.com\\n\n") == b"mail:\\t****@example.com\\n\n"


def test_copy_text_types() -> None:
    plan = MaskPlan((mask(0, D.PHONE, "partial"), mask(1, D.PHONE, "partial")))
    cm = compile_copy_masker(plan, CopyOptions(type_oids=(20, 25)), key=KEY)
    assert cm is not None
    assert cm.mask(b"4155550132\t415-555-0132\n") == b"0\t***-***-0132\n"


def test_copy_csv() -> None:
    plan = MaskPlan((None, mask(1, D.EMAIL, "redact"), mask(2, D.PHONE, "null")))
    opts = CopyOptions(format="csv", delimiter=",", null="", header=True)
    cm = compile_copy_masker(plan, opts, key=KEY)
    assert cm is not None
    assert cm.mask(b"id,email,phone\n") == b"id,email,phone\n"  # header passes
    assert cm.mask(b'1,"a,""b""@example.com",555\n') == b'1,"<email>",\n'
    assert cm.mask(b"2,,\n") == b"2,,\n"  # NULLs stay NULL
    assert cm.mask(b'3,"",x\r\n') == b'3,"<email>",\r\n'  # an empty string is a value
    assert cm.mask(b'4,"multi\nline@example.com",1\n') == b'4,"<email>",\n'


def test_copy_binary_is_refused() -> None:
    plan = MaskPlan((mask(0, D.EMAIL, "redact"),))
    with pytest.raises(UnsupportedCopy):
        compile_copy_masker(plan, CopyOptions(format="binary"), key=KEY)
    assert compile_copy_masker(MaskPlan((None,)), CopyOptions(format="binary"), key=KEY) is None


def test_struct_layout() -> None:
    body = encode_row_description([field("email", 25, table=7, attnum=2)])
    assert body == b"\x00\x01email\x00" + struct.pack("!IhIhih", 7, 2, 25, -1, -1, 0)
