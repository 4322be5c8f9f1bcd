"""Masking strategies on strings and on wire values, text and binary, checked with psycopg's
own loaders (the type rules a real client applies)."""

from __future__ import annotations

import datetime
import decimal
import ipaddress
import uuid

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg.adapt import Transformer
from psycopg.pq import Format

from dbsentry.engines.postgres.masking.values import TYPED_MASKS, make_detect_masker, make_masker
from dbsentry.masking.classes import DataClass
from dbsentry.masking.strategies import (
    DEFAULT_STRATEGIES,
    PLACEHOLDERS,
    STRATEGIES,
    mask_text,
    scan_text,
)

D = DataClass
KEY = b"test-key"
TX = Transformer()

TEXT, VARCHAR, BPCHAR, NAME, CHAR = 25, 1043, 1042, 19, 18
JSON, JSONB, BYTEA, UUID, INT4, INT8, DATE, INET, TEXT_ARRAY = (
    114,
    3802,
    17,
    2950,
    23,
    20,
    1082,
    869,
    1009,
)


def load(oid: int, fmt: int, data: bytes | None) -> object:
    if data is None:
        return None
    return TX.get_loader(oid, Format.BINARY if fmt else Format.TEXT).load(data)


@pytest.mark.parametrize(
    ("value", "cls", "expected"),
    [
        ("4242 4242 4242 4242", D.PAYMENT_CARD, "**** **** **** 4242"),
        ("4242424242424242", D.PAYMENT_CARD, "************4242"),
        ("123-45-6789", D.NATIONAL_ID, "***-**-6789"),
        ("alice@example.com", D.EMAIL, "****@example.com"),
        ("not an email", D.EMAIL, "<email>"),
        ("+1 (415) 555-0132", D.PHONE, "+* (***) ***-0132"),
        ("555-0132", D.PHONE, "***-**32"),
        ("DE89 3704 0044 0532 0130 00", D.IBAN, "DE** **** **** **** **30 00"),
        ("192.168.1.10", D.IP_ADDRESS, "192.168.0.0"),
        ("2001:db8:1:2::1", D.IP_ADDRESS, "2001:db8:1::"),
        ("Ada Lovelace", D.PERSON_NAME, "A** L*******"),
        ("1985-04-12", D.DATE_OF_BIRTH, "1985-**-**"),
        ("12 Apr 1985", D.DATE_OF_BIRTH, "<dob>"),
        ("10 Downing Street", D.POSTAL_ADDRESS, "<address>"),
        ("hunter2", D.SECRET, "<secret>"),
        ("whatever", None, "<redacted>"),
    ],
)
def test_partial(value: str, cls: DataClass | None, expected: str) -> None:
    assert mask_text(value, cls, "partial") == expected


def test_redact_and_null() -> None:
    for cls, placeholder in PLACEHOLDERS.items():
        assert mask_text("x", cls, "redact") == placeholder
        assert mask_text("x", cls, "null") is None
    with pytest.raises(ValueError):
        mask_text("x", D.EMAIL, "scramble")


def test_hash_is_keyed_deterministic_and_shaped() -> None:
    a = mask_text("4242 4242 4242 4242", D.PAYMENT_CARD, "hash", KEY)
    assert a == mask_text("4242 4242 4242 4242", D.PAYMENT_CARD, "hash", KEY)
    assert a != mask_text("4242 4242 4242 4242", D.PAYMENT_CARD, "hash", b"other")
    assert a != mask_text("4000 0566 5566 5556", D.PAYMENT_CARD, "hash", KEY)
    assert (
        a is not None
        and [len(g) for g in a.split(" ")] == [4, 4, 4, 4]
        and a.replace(" ", "").isdigit()
    )
    ssn = mask_text("123-45-6789", D.NATIONAL_ID, "hash", KEY)
    assert ssn is not None and ssn[3] == "-" and ssn[6] == "-" and len(ssn) == 11
    email = mask_text("alice@example.com", D.EMAIL, "hash", KEY)
    assert email is not None and email.endswith(".invalid") and "@" in email
    # the same domain hashes the same, so GROUP BY domain still groups
    other = mask_text("bob@example.com", D.EMAIL, "hash", KEY)
    assert other is not None and other.split("@")[1] == email.split("@")[1]
    ip = mask_text("192.168.1.10", D.IP_ADDRESS, "hash", KEY)
    assert ip is not None and ipaddress.ip_address(ip).is_private
    ip6 = mask_text("2001:db8::1", D.IP_ADDRESS, "hash", KEY)
    assert ip6 is not None and ipaddress.ip_address(ip6).version == 6
    assert len(mask_text("Ada Lovelace", D.PERSON_NAME, "hash", KEY) or "") == 16


def test_defaults_cover_every_class() -> None:
    assert set(DEFAULT_STRATEGIES) == set(DataClass)
    assert all(s in STRATEGIES for s in DEFAULT_STRATEGIES.values())
    assert DEFAULT_STRATEGIES[D.SECRET] == "redact"


# -- wire values ------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [0, 1])
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("oid", [TEXT, VARCHAR, NAME])
def test_text_types(oid: int, strategy: str, fmt: int) -> None:
    m = make_masker(strategy, D.EMAIL, oid, -1, fmt, KEY)
    out = m(b"alice@example.com")
    value = load(oid, fmt, out)
    if strategy == "null":
        assert value is None
    else:
        assert isinstance(value, str) and "alice" not in value


@pytest.mark.parametrize("fmt", [0, 1])
@pytest.mark.parametrize("strategy", ["partial", "hash", "redact"])
def test_bpchar_keeps_its_declared_length(strategy: str, fmt: int) -> None:
    m = make_masker(strategy, D.NATIONAL_ID, BPCHAR, 11 + 4, fmt, KEY)
    out = m(b"123-45-6789")
    assert out is not None and len(out.decode()) == 11
    short = make_masker(strategy, D.NATIONAL_ID, BPCHAR, 4 + 4, fmt, KEY)(b"1234")
    assert short is not None and len(short.decode()) == 4
    v = make_masker(strategy, D.EMAIL, VARCHAR, 3 + 4, fmt, KEY)(b"alice@example.com")
    assert v is not None and len(v.decode()) <= 3
    assert make_masker("redact", D.EMAIL, CHAR, -1, fmt)(b"a") == b"<"


@pytest.mark.parametrize("fmt", [0, 1])
@pytest.mark.parametrize("oid", [JSON, JSONB])
def test_json(oid: int, fmt: int) -> None:
    doc = orjson.dumps({"email": "alice@example.com", "id": 1})
    raw = (b"\x01" + doc) if oid == JSONB and fmt else doc
    for strategy in ("redact", "partial", "hash"):
        out = make_masker(strategy, D.EMAIL, oid, -1, fmt, KEY)(raw)
        value = load(oid, fmt, out)
        assert isinstance(value, str) and "alice" not in value, strategy
    # a JSON string is masked inside
    s = orjson.dumps("alice@example.com")
    raw = (b"\x01" + s) if oid == JSONB and fmt else s
    assert (
        load(oid, fmt, make_masker("partial", D.EMAIL, oid, -1, fmt, KEY)(raw))
        == "****@example.com"
    )
    assert make_masker("null", D.EMAIL, oid, -1, fmt)(raw) is None


@pytest.mark.parametrize("fmt", [0, 1])
def test_bytea(fmt: int) -> None:
    raw = b"\\x" + b"secret".hex().encode() if fmt == 0 else b"secret"
    for strategy in ("redact", "partial", "hash"):
        out = make_masker(strategy, D.SECRET, BYTEA, -1, fmt, KEY)(raw)
        value = load(BYTEA, fmt, out)
        assert isinstance(value, bytes) and value != b"secret"
    h1 = make_masker("hash", D.SECRET, BYTEA, -1, 0, KEY)(b"\\x" + b"secret".hex().encode())
    h2 = make_masker("hash", D.SECRET, BYTEA, -1, 1, KEY)(b"secret")
    assert h1 is not None and h2 is not None
    assert load(BYTEA, 0, h1) == load(BYTEA, 1, h2)  # the same value in both formats


@pytest.mark.parametrize("fmt", [0, 1])
def test_uuid_hash_is_a_uuid(fmt: int) -> None:
    u = uuid.UUID("12345678-1234-5678-1234-567812345678")
    raw = str(u).encode() if fmt == 0 else u.bytes
    value = load(UUID, fmt, make_masker("hash", None, UUID, -1, fmt, KEY)(raw))
    assert isinstance(value, uuid.UUID) and value != u
    other = make_masker("hash", None, UUID, -1, 1 - fmt, KEY)(
        u.bytes if fmt == 0 else str(u).encode()
    )
    assert load(UUID, 1 - fmt, other) == value  # text and binary hash alike
    assert load(UUID, fmt, make_masker("redact", None, UUID, -1, fmt, KEY)(raw)) == uuid.UUID(int=0)


# What psycopg reads for the masked value of each type, in both formats (the types the
# docs list in docs/masking.md, "Types without a placeholder").
TYPED = {
    DATE: datetime.date(1900, 1, 1),
    1114: datetime.datetime(1900, 1, 1),
    1184: datetime.datetime(1900, 1, 1, tzinfo=datetime.UTC),
    1083: datetime.time(0, 0),
    1266: datetime.time(0, 0, tzinfo=datetime.UTC),
    1186: datetime.timedelta(0),
    INET: ipaddress.ip_address("0.0.0.0"),
    650: ipaddress.ip_network("0.0.0.0/32"),
    21: 0,
    INT4: 0,
    INT8: 0,
    700: 0.0,
    701: 0.0,
    1700: decimal.Decimal(0),
    UUID: uuid.UUID(int=0),
}


@pytest.mark.parametrize("fmt", [0, 1])
@pytest.mark.parametrize("oid", sorted(TYPED))
def test_types_without_a_placeholder_get_a_typed_masked_value(oid: int, fmt: int) -> None:
    raw = TYPED_MASKS[oid][fmt]  # any value of the type: the masked one is fixed
    for strategy in ("redact", "partial"):
        masked = make_masker(strategy, D.DATE_OF_BIRTH, oid, -1, fmt, KEY)(raw)
        assert load(oid, fmt, masked) == TYPED[oid]
        assert masked == TYPED_MASKS[oid][fmt]
    assert make_masker("null", D.DATE_OF_BIRTH, oid, -1, fmt, KEY)(raw) is None


@pytest.mark.parametrize("fmt", [0, 1])
def test_mac_addresses_are_zero(fmt: int) -> None:
    assert make_masker("redact", D.SECRET, 829, -1, fmt)(b"x") == (
        b"00:00:00:00:00:00" if fmt == 0 else bytes(6)
    )


@pytest.mark.parametrize("fmt", [0, 1])
@pytest.mark.parametrize(
    ("value", "partial"),
    [
        ("203.0.113.77", "203.0.0.0"),
        ("198.51.100.9/24", "198.51.0.0/24"),
        ("2001:db8:1:2::1", "2001:db8:1::"),
    ],
)
def test_inet_partial_keeps_the_network_half_and_hash_is_an_address(
    value: str, partial: str, fmt: int
) -> None:
    iface = ipaddress.ip_interface(value)
    if fmt == 0:
        raw = value.encode()
    else:
        family = 2 if iface.version == 4 else 3
        packed = iface.ip.packed
        raw = bytes((family, iface.network.prefixlen, 0, len(packed))) + packed
    got = load(INET, fmt, make_masker("partial", D.IP_ADDRESS, INET, -1, fmt, KEY)(raw))
    want = ipaddress.ip_interface(partial) if "/" in partial else ipaddress.ip_address(partial)
    assert got == want
    hashed = load(INET, fmt, make_masker("hash", D.IP_ADDRESS, INET, -1, fmt, KEY)(raw))
    address = getattr(hashed, "ip", hashed)
    assert isinstance(address, ipaddress.IPv4Address | ipaddress.IPv6Address)
    assert address != iface.ip
    assert address in ipaddress.ip_network("10.0.0.0/8" if iface.version == 4 else "fd00::/8")
    unreadable = make_masker("hash", D.IP_ADDRESS, INET, -1, fmt, KEY)(b"\x00garbage")
    assert load(INET, fmt, unreadable) == ipaddress.ip_address("0.0.0.0")


@pytest.mark.parametrize("fmt", [0, 1])
@pytest.mark.parametrize("oid", [TEXT_ARRAY, 16, 790])
def test_other_types_become_null(oid: int, fmt: int) -> None:
    for strategy in STRATEGIES:
        assert make_masker(strategy, D.PHONE, oid, -1, fmt, KEY)(b"whatever") is None


def test_extension_types_are_text_in_text_format_only() -> None:
    citext = 91234
    assert make_masker("redact", D.EMAIL, citext, -1, 0)(b"a@b.co") == b"<email>"
    assert make_masker("redact", D.EMAIL, citext, -1, 1)(b"a@b.co") is None


# -- value detection on wire values -------------------------------------------------------------


def test_scan_text() -> None:
    assert scan_text("alice@example.com", dict(DEFAULT_STRATEGIES)) == "****@example.com"
    assert scan_text("nothing here", dict(DEFAULT_STRATEGIES)) == "nothing here"
    out = scan_text(
        "call alice@example.com, card 4242 4242 4242 4242 thanks", dict(DEFAULT_STRATEGIES)
    )
    assert out == "call ****@example.com, card **** **** **** 4242 thanks"
    null_all = {c: "null" for c in DataClass}
    assert scan_text("alice@example.com", null_all) is None
    assert scan_text("mail alice@example.com please", null_all) == "mail <email> please"


def test_detect_masker_text() -> None:
    m = make_detect_masker(TEXT, -1, 0, KEY)
    assert m is not None
    raw = b"harmless"
    assert m(raw) is raw
    assert m(b"123-45-6789") == b"***-**-6789"
    assert m(b"key AKIAIOSFODNN7EXAMPLE here") == b"key <secret> here"


@pytest.mark.parametrize("fmt", [0, 1])
def test_detect_masker_json(fmt: int) -> None:
    doc = {
        "who": {"email": "alice@example.com", "n": 4242424242424242, "ok": True},
        "list": ["x", "123-45-6789"],
    }
    raw = orjson.dumps(doc)
    raw = b"\x01" + raw if fmt else raw
    m = make_detect_masker(JSONB, -1, fmt, KEY)
    assert m is not None
    value = load(JSONB, fmt, m(raw))
    assert value == {
        "who": {"email": "****@example.com", "n": "************4242", "ok": True},
        "list": ["x", "***-**-6789"],
    }
    same = orjson.dumps({"a": 1})
    assert m(b"\x01" + same if fmt else same) == (b"\x01" + same if fmt else same)


def test_detect_masker_other_types() -> None:
    digits = make_detect_masker(INT8, -1, 0, KEY)
    assert digits is not None and digits(b"4242424242424242") == b"0" and digits(b"42") == b"42"
    assert make_detect_masker(INT8, -1, 1, KEY) is None
    assert make_detect_masker(DATE, -1, 0, KEY) is None
    arr = make_detect_masker(TEXT_ARRAY, -1, 0, KEY)
    assert arr is not None and arr(b'{"alice@example.com",b}') is None and arr(b"{a,b}") == b"{a,b}"
    by = make_detect_masker(BYTEA, -1, 0, KEY)
    assert by is not None and by(b"\\x" + b"alice@example.com".hex().encode()) is None


@settings(max_examples=200, deadline=None)
@given(
    st.text(max_size=40),
    st.sampled_from(STRATEGIES),
    st.sampled_from([TEXT, VARCHAR, JSON, JSONB, BYTEA]),
    st.sampled_from([0, 1]),
    st.sampled_from([*DataClass, None]),
)
def test_masked_values_stay_loadable(
    text: str, strategy: str, oid: int, fmt: int, cls: DataClass | None
) -> None:
    if oid in (JSON, JSONB):
        raw = orjson.dumps(text)
        raw = b"\x01" + raw if oid == JSONB and fmt else raw
    elif oid == BYTEA and fmt == 0:
        raw = b"\\x" + text.encode().hex().encode()
    else:
        raw = text.encode()
    out = make_masker(strategy, cls, oid, -1, fmt, KEY)(raw)
    if out is not None:
        load(oid, fmt, out)
    det = make_detect_masker(oid, -1, fmt, KEY)
    if det is not None:
        out = det(raw)
        if out is not None:
            load(oid, fmt, out)


@settings(max_examples=200, deadline=None)
@given(
    st.binary(max_size=64),
    st.sampled_from(STRATEGIES),
    st.sampled_from([TEXT, VARCHAR, BPCHAR, JSON, JSONB, BYTEA, UUID, INT8, INET, 650, DATE]),
    st.sampled_from([0, 1]),
)
def test_maskers_never_crash_on_any_bytes(raw: bytes, strategy: str, oid: int, fmt: int) -> None:
    make_masker(strategy, DataClass.EMAIL, oid, 8, fmt, KEY)(raw)
    det = make_detect_masker(oid, -1, fmt, KEY)
    if det is not None:
        det(raw)


def test_json_values_that_are_not_utf8_are_masked_not_crashed_on() -> None:
    """A non-UTF-8 client_encoding can bring bytes no JSON string can hold: keep none of them."""
    from dbsentry.engines.postgres.masking.values import make_masker
    from dbsentry.masking.classes import DataClass

    for cls in (DataClass.EMAIL, DataClass.PHONE, DataClass.PERSON_NAME):
        for strategy in ("partial", "redact", "hash"):
            masker = make_masker(strategy, cls, 3802)  # jsonb, text format
            for raw in (b'"ab\xffcd@example.com"', b"\xff\xfe", b'"\xc3"'):
                out = masker(raw)
                assert out is not None and b"\xff" not in out and b"cd@example" not in out
