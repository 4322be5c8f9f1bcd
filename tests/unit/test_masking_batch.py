"""The batch row walkers (rows.mask_data_rows, CopyMasker.mask_frames): the same bytes as
masking message by message, the C extension byte-identical to its Python fallback, and
malformed input refused with ProtocolError only."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dbsentry.config import MaskingConfig
from dbsentry.engines.postgres.masking import rows
from dbsentry.engines.postgres.masking.lineage import (
    ColumnMask,
    CopyOptions,
    MaskPlan,
    StatementLineage,
)
from dbsentry.engines.postgres.masking.rows import (
    OP_CALL,
    OP_CONST,
    Field,
    compile_copy_masker,
    compile_row_masker,
    encode_data_row,
    encode_row_description,
    mask_data_row,
    mask_data_rows,
)
from dbsentry.engines.postgres.masking.values import (
    OP_EMAIL,
    OP_KEEP_LAST,
    OP_SCAN,
    BytePartial,
    _partial_bytes,
)
from dbsentry.engines.postgres.session.masking import (
    MaskingService,
    SessionMasking,
    StatementPlan,
    _Query,
)
from dbsentry.engines.postgres.wire import codec
from dbsentry.engines.postgres.wire.codec import ProtocolError
from dbsentry.masking.catalog import SourceColumn
from dbsentry.masking.classes import DataClass

D = DataClass
KEY = b"k"
SRC = frozenset({SourceColumn("public", "customers", "x")})
fast = rows._fastmask
needs_extension = pytest.mark.skipif(fast is None, reason="the C extension is not built")
HEALTH = list(HealthCheck)

CLASSES = [*DataClass, None]
STRATEGIES = ["partial", "hash", "redact", "null", "detect"]
# text, varchar, bpchar, name, "char", unknown, json, jsonb, bytea, uuid, int4, int8, date,
# an extension type, text[]
OIDS = [25, 1043, 1042, 19, 18, 705, 114, 3802, 17, 2950, 23, 20, 1082, 16385, 1009]

byte = st.sampled_from(
    [*b"0123456789" * 3, *b"abcXYZ@ -.+()/\t\\\n\r\"',|;N", 0xC3, 0xA9, 0xFF, 0x80, 0xED]
)
value = st.one_of(
    st.none(),
    st.lists(byte, max_size=30).map(bytes),
    st.from_regex(rb"\A[a-z0-9.]{0,8}@[a-z]{1,8}\.com\Z"),
    st.from_regex(rb"\A\+?[0-9 ()-]{5,20}\Z"),
    st.from_regex(rb"\A[0-9]{3}-[0-9]{2}-[0-9]{4}\Z"),
    st.text(max_size=12).map(lambda s: s.encode("utf-8", "surrogateescape")),
    st.binary(max_size=20),
)
column = st.one_of(
    st.none(),
    st.tuples(
        st.sampled_from(CLASSES),
        st.sampled_from(STRATEGIES),
        st.sampled_from(OIDS),
        st.sampled_from([-1, 5, 8, 20]),
        st.sampled_from([0, 0, 0, 1]),
    ),
)


def plan_and_fields(
    specs: list[tuple[DataClass | None, str, int, int, int] | None],
) -> tuple[MaskPlan, list[Field]]:
    masks: list[ColumnMask | None] = []
    fields = []
    for i, spec in enumerate(specs):
        if spec is None:
            masks.append(None)
            fields.append(Field(f"c{i}", 0, 0, 25, -1, -1, 0))
        else:
            cls, strategy, oid, typmod, fmt = spec
            masks.append(ColumnMask(i, cls, strategy, SRC, "lineage"))
            fields.append(Field(f"c{i}", 0, 0, oid, -1, typmod, fmt))
    return MaskPlan(tuple(masks)), fields


def reference(frames: list[bytes], masker: rows.RowMasker) -> bytes:
    """Message by message, as the session masked before batching."""
    return b"".join(codec.frame(b"D", mask_data_row(f[5:], masker)) for f in frames)


def safe(fn: object, *args: object) -> object:
    try:
        return fn(*args)  # type: ignore[operator]
    except ProtocolError:
        return "ProtocolError"


# -- DataRow ---------------------------------------------------------------------------------


@settings(max_examples=400, deadline=None, suppress_health_check=HEALTH)
@given(st.lists(column, min_size=1, max_size=7), st.booleans(), st.data())
def test_batch_rows_match_message_by_message(
    specs: list, safety_net: bool, data: st.DataObject
) -> None:
    plan, fields = plan_and_fields(specs)
    masker = compile_row_masker(plan, fields, key=KEY, safety_net=safety_net)
    if masker is None:
        return
    values = st.lists(value, min_size=len(specs), max_size=len(specs))
    frames = [
        codec.frame(b"D", encode_data_row(r))
        for r in data.draw(st.lists(values, min_size=1, max_size=5))
    ]
    tail = data.draw(st.sampled_from([b"", codec.encode_command_complete("SELECT 5")]))
    buf = b"".join(frames) + tail
    try:
        expected = reference(frames, masker)
    except (UnicodeError, TypeError):
        return  # json/name values that are not UTF-8: the maskers themselves refuse them
    end = len(buf) - len(tail)
    for walk in (mask_data_rows, lambda b, p, m: rows._py_mask_data_rows(b, p, m.width, m.plan)):
        out, count, stop = walk(buf, 0, masker)
        assert (count, stop) == (len(frames), end)
        assert (buf[:end] if out is None else out) == expected


ops = st.one_of(
    st.none(),
    st.binary(max_size=12).map(lambda v: (OP_CONST, codec._I32.pack(len(v)) + v)),
    st.just((OP_CONST, b"\xff\xff\xff\xff")),
    st.binary(max_size=8).map(lambda v: (OP_EMAIL, codec._I32.pack(len(v)) + v)),
    st.tuples(st.booleans(), *(st.integers(-2, 12) for _ in range(4))).map(
        lambda a: rows._keep_last_op((OP_KEEP_LAST, *a))
    ),
    st.sampled_from(
        [
            lambda raw: None,
            lambda raw: raw,
            lambda raw: raw[::-1] + b"!",
            lambda raw: b"",
        ]
    ).map(lambda fn: (OP_CALL, fn, {})),
    st.tuples(
        st.sampled_from([lambda raw: None, lambda raw: raw, lambda raw: raw[::-1] + b"!"]),
        st.booleans(),
    ).map(lambda a: (OP_SCAN, a[0], {}, a[1])),
)


@needs_extension
@settings(max_examples=500, deadline=None, suppress_health_check=HEALTH)
@given(st.lists(ops, min_size=1, max_size=6), st.data())
def test_extension_rows_match_python(plan: list, data: st.DataObject) -> None:
    assert fast is not None
    width = len(plan) + data.draw(st.integers(0, 2))
    values = st.lists(value, min_size=width, max_size=width)
    buf = b"".join(
        codec.frame(b"D", encode_data_row(r)) for r in data.draw(st.lists(values, max_size=4))
    ) + data.draw(st.sampled_from([b"", b"C\x00\x00\x00\x05\x00"]))
    pos = 0
    assert safe(fast.mask_data_rows, buf, pos, width, tuple(plan)) == safe(
        rows._py_mask_data_rows, buf, pos, width, tuple(plan)
    )


@settings(max_examples=500, deadline=None, suppress_health_check=HEALTH)
@given(st.lists(ops, min_size=1, max_size=4), st.data())
def test_malformed_rows_only_raise_protocol_error(plan: list, data: st.DataObject) -> None:
    """Random bytes, or valid rows with bytes changed or cut: ProtocolError or a result,
    the same from C and Python; never another exception, never a read past a frame."""
    width = len(plan)
    values = st.lists(value, min_size=width, max_size=width)
    buf = bytearray(
        b"".join(
            codec.frame(b"D", encode_data_row(r)) for r in data.draw(st.lists(values, max_size=3))
        )
    )
    if not buf or data.draw(st.booleans()):
        buf += b"D" + data.draw(st.binary(max_size=40))
    for _ in range(data.draw(st.integers(0, 4))):
        i = data.draw(st.integers(0, len(buf) - 1))
        if data.draw(st.booleans()):
            buf[i] = data.draw(st.sampled_from([0, 1, 2, 4, 0x7F, 0x80, 0xFF, ord("D")]))
        else:  # a plausible length (a field's, a frame's, the column count)
            n = data.draw(st.one_of(st.integers(-3, 80), st.sampled_from([2**31 - 1, 2**32 - 1])))
            buf[i : i + 4] = (n % 2**32).to_bytes(4, "big")
    buf = bytes(buf[: data.draw(st.integers(1, len(buf)))])
    expected = safe(rows._py_mask_data_rows, buf, 0, width, tuple(plan))
    if fast is not None:
        assert safe(fast.mask_data_rows, buf, 0, width, tuple(plan)) == expected


def test_rows_of_bad_lengths_are_refused() -> None:
    masker = compile_row_masker(
        MaskPlan((None, ColumnMask(1, D.EMAIL, "partial", SRC, "lineage"))),
        [Field("a", 0, 0, 25, -1, -1, 0), Field("b", 0, 0, 25, -1, -1, 0)],
        key=KEY,
    )
    assert masker is not None
    good = encode_data_row([b"1", b"a@b.c"])
    assert mask_data_rows(codec.frame(b"D", good), 0, masker)[0] == codec.frame(
        b"D", encode_data_row([b"1", b"****@b.c"])
    )
    bad = [
        b"\x00\x02\xff\xff\xff\xfb" + good[6:],  # a length of -5 (only -1 is NULL)
        good[:-1],  # the last value is cut
        b"\x00\x02\x00\x00\x00\x09" + good[6:],  # a value longer than the row
        b"\x00\x03" + good[2:],  # not the width of RowDescription
    ]
    for body in bad:
        with pytest.raises(ProtocolError):
            mask_data_row(body, masker)
        with pytest.raises(ProtocolError):
            mask_data_rows(codec.frame(b"D", body), 0, masker)
        with pytest.raises(ProtocolError):
            rows._py_mask_data_rows(codec.frame(b"D", body), 0, masker.width, masker.plan)
    # a frame whose length runs past the buffer
    with pytest.raises(ProtocolError):
        mask_data_rows(b"D\x00\x01\x00\x00" + good, 0, masker)


@pytest.mark.parametrize("cls", [D.PAYMENT_CARD, D.NATIONAL_ID, D.PHONE, D.EMAIL])
@settings(max_examples=300, deadline=None, suppress_health_check=HEALTH)
@given(raw=st.one_of(st.lists(byte, max_size=40).map(bytes), st.binary(max_size=30)))
def test_native_partial_is_partial_bytes(cls: DataClass, raw: bytes) -> None:
    masker = BytePartial(cls, 25, -1)
    assert masker.native is not None
    plan = (rows._row_op(masker),)
    buf = codec.frame(b"D", encode_data_row([raw]))
    expected = codec.frame(b"D", encode_data_row([_partial_bytes(raw, cls)]))
    walks = [rows._py_mask_data_rows] + ([fast.mask_data_rows] if fast is not None else [])
    for walk in walks:
        out, _, _ = walk(buf, 0, 1, plan)
        assert (buf if out is None else out) == expected


# -- COPY ------------------------------------------------------------------------------------

line_byte = st.sampled_from(
    [*b"0123456789" * 3, *b'abcXYZ@ -.+\t\t\t\\\\nNr\r",|;', 0xC3, 0xA9, 0xFF]
)
cell = st.one_of(
    st.just(b"\\N"),
    st.just(b""),
    # no backslash: the line is split on bytes; what needs escaping after masking
    st.lists(st.sampled_from([*b"0123456789@\r\t*,|ab -", 0xC3, 0xA9]), max_size=16).map(bytes),
    st.from_regex(rb"\A[a-z0-9.]{0,8}@[a-z]{1,8}\.com\Z"),
    st.from_regex(rb"\A[0-9]{3}-[0-9]{2}-[0-9]{4}\Z"),
    st.from_regex(rb"\A\+1 [0-9]{3} [0-9]{3} [0-9]{4}\Z"),
)


@settings(max_examples=400, deadline=None, suppress_health_check=HEALTH)
@given(
    st.lists(
        st.one_of(st.none(), st.tuples(st.sampled_from(CLASSES), st.sampled_from(STRATEGIES))),
        min_size=1,
        max_size=6,
    ),
    st.booleans(),
    st.sampled_from(["text", "text", "csv"]),
    st.sampled_from(["\t", ",", "|", ";", "*", "@"]),
    st.sampled_from(["\\N", "", "NULL", "N"]),
    st.booleans(),
    st.one_of(
        st.none(), st.lists(st.sampled_from([25, 20, 1043, 114, 17, None]), max_size=6).map(tuple)
    ),
    st.lists(
        st.one_of(
            st.lists(line_byte, max_size=60).map(bytes), st.lists(cell, min_size=1, max_size=6)
        ),
        min_size=1,
        max_size=6,
    ),
    st.data(),
)
def test_copy_frames_match_message_by_message(
    specs: list,
    safety_net: bool,
    fmt: str,
    delimiter: str,
    null: str,
    header: bool,
    type_oids: tuple[int | None, ...] | None,
    lines: list,
    data: st.DataObject,
) -> None:
    masks = tuple(
        None if s is None else ColumnMask(i, s[0], s[1], SRC, "lineage")
        for i, s in enumerate(specs)
    )
    opts = CopyOptions(
        format=fmt, delimiter=delimiter, null=null, header=header, type_oids=type_oids
    )  # type: ignore[arg-type]
    messages = []
    for line in lines:
        if isinstance(line, list):
            line = delimiter.encode().join(line) + b"\n"
        elif data.draw(st.booleans()):
            line += b"\n"
        messages.append(line)
    buf = b"".join(codec.frame(b"d", msg) for msg in messages)
    reference = compile_copy_masker(MaskPlan(masks), opts, key=KEY, safety_net=safety_net)
    if reference is None:
        return
    try:
        expected = b"".join(codec.frame(b"d", reference.mask(msg)) for msg in messages)
    except (UnicodeError, TypeError):
        return
    for use_extension in (True, False):
        masker = compile_copy_masker(MaskPlan(masks), opts, key=KEY, safety_net=safety_net)
        assert masker is not None
        if not use_extension:
            if masker.header_pending:
                masker.header_pending = False
                first = codec.frame(b"d", messages[0])
                out, count, end = masker._py_mask_frames(buf, len(first))
                out, count = first + (buf[len(first) : end] if out is None else out), count + 1
            else:
                out, count, end = masker._py_mask_frames(buf, 0)
        else:
            out, count, end = masker.mask_frames(buf, 0)
        assert (count, end) == (len(messages), len(buf))
        assert (buf if out is None else out) == expected


@settings(max_examples=400, deadline=None, suppress_health_check=HEALTH)
@given(st.binary(max_size=60), st.booleans())
def test_malformed_copy_only_raises_protocol_error(junk: bytes, framed: bool) -> None:
    plan = MaskPlan(
        (
            None,
            ColumnMask(1, D.PHONE, "partial", SRC, "lineage"),
            ColumnMask(2, D.SECRET, "hash", SRC, "lineage"),
        )
    )
    buf = (b"d" + junk) if framed else junk
    results = []
    for use_extension in (True, False):
        masker = compile_copy_masker(plan, CopyOptions(), key=KEY)
        assert masker is not None
        results.append(
            safe(masker.mask_frames if use_extension else masker._py_mask_frames, buf, 0)
        )
    assert results[0] == results[1]


# -- in the session ----------------------------------------------------------------------------


def test_session_masks_a_run_of_rows_in_one_call() -> None:
    fields = [
        Field("id", 0, 0, 20, -1, -1, 0),
        Field("email", 0, 0, 25, -1, -1, 0),
        Field("ssn", 0, 0, 25, -1, -1, 0),
    ]
    plan = MaskPlan(
        (
            None,
            ColumnMask(1, D.EMAIL, "partial", SRC, "lineage"),
            ColumnMask(2, D.NATIONAL_ID, "partial", SRC, "lineage"),
        )
    )
    service = MaskingService(MaskingConfig(), KEY)
    masking = SessionMasking(service, "app")
    masking.expect.append(
        _Query((StatementPlan(StatementLineage("SELECT", (), frozenset(), True), plan),))
    )
    values = [
        [str(i).encode(), f"user{i}@example.com".encode(), b"123-45-6789" if i % 3 else None]
        for i in range(50)
    ]
    stream = codec.frame(b"T", encode_row_description(fields))
    stream += b"".join(codec.frame(b"D", encode_data_row(v)) for v in values)
    stream += codec.encode_command_complete("SELECT 50") + codec.encode_ready("I")
    buf, spans = codec.FrameSplitter().split(stream)
    out = []
    i = 0
    while i < len(spans):
        t, start, end = spans[i]
        if t == ord("D"):
            new, count, run_end = masking.received_rows(buf, spans, i)
            assert count == 50 and run_end == spans[i + 49][2]
            out.append(new)
            i += count
            continue
        replaced = masking.received(t, buf, start, end)
        out.append(buf[start - 5 : end] if replaced is None else replaced)
        i += 1
    expected = [
        [v[0], b"****@example.com", None if v[2] is None else b"***-**-6789"] for v in values
    ]
    assert b"".join(x for x in out if x is not None) == (
        codec.frame(b"T", encode_row_description(fields))
        + b"".join(codec.frame(b"D", encode_data_row(v)) for v in expected)
        + codec.encode_command_complete("SELECT 50")
        + codec.encode_ready("I")
    )
    assert not masking.expect  # ReadyForQuery ended the query
