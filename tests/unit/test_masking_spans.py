"""The safety net and in-value masking: spans masked in place, the rest kept; the
prefilter in front of value detection, C and Python alike and never skipping what the
detectors find; harmless values left byte for byte; which columns the safety net scans."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from dbsentry.config import MaskingConfig
from dbsentry.engines.postgres.masking import rows
from dbsentry.engines.postgres.masking.lineage import ColumnMask, CopyOptions, MaskPlan
from dbsentry.engines.postgres.masking.rows import Field, compile_copy_masker, compile_row_masker
from dbsentry.engines.postgres.masking.values import (
    Scan,
    make_detect_masker,
    make_safety_net_masker,
)
from dbsentry.masking.classes import DataClass
from dbsentry.masking.detect import detect_value, find_sensitive
from dbsentry.masking.strategies import (
    DEFAULT_STRATEGIES,
    SAFETY_NET_CLASSES,
    may_hold_sensitive,
    scan_text,
)

D = DataClass
KEY = b"k"
STRAT = dict(DEFAULT_STRATEGIES)
fast = rows._fastmask
HEALTH = list(HealthCheck)
TEXT, VARCHAR, BPCHAR, NAME, JSON, JSONB, INT8, DATE, BOOL, TEXT_ARRAY, BYTEA = (
    25, 1043, 1042, 19, 114, 3802, 20, 1082, 16, 1009, 17,
)  # fmt: skip
CITEXT = 91234

# Real-looking values the detectors validate (cards pass Luhn and issuer ranges, the
# IBANs mod 97, the SSNs the issuing rules, the NIE/DNI their control letter).
PII = [
    "ada.lovelace@example.com",
    "4539 1488 0343 6467",
    "4539148803436467",
    "5555-5555-5555-4444",
    "536-22-8714",
    "046-454-286",
    "DE89 3704 0044 0532 0130 00",
    "GB82WEST12345698765432",
    "AKIAIOSFODNN7EXAMPLE",
    "ghp_" + "a1B2" * 9,
    "xoxb-123456789012-abcdefghij",
    "sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc",
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "$2b$12$" + "R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW",
    "md5" + "0123456789abcdef" * 2,
    "+44 20 7946 0958",
    "+4930123456",
    "(415) 555-0132",
    "AB123456C",
    "AB 12 34 56 C",
    "X1234567L",
    "12345678Z",
    "1 85 05 78 006 084 91",
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----",
    "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
]
# Unicode digits: Python's \\d matches them, so the prefilter must let them through
UNICODE = ["\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668Z", "AB \u0661\u0662 \u0663\u0664 \u0665\u0666 C"]
IPS = ["10.0.0.1", "192.168.1.20", "2001:db8::1", "fe80::1"]
HARMLESS = [
    "nothing to see here",
    "customer since 2001, tier 1, no marketing",
    "ORD-2024-000123",
    "INV-0000042",
    "PO 12345678",
    "SKU-AB12-77",
    "550e8400-e29b-41d4-a716-446655440000",
    "550E8400-E29B-41D4-A716-446655440000",
    "2024-01-15 10:23:45.123456+00",
    "2024-01-15T10:23:45Z",
    "1999-12-31 23:59:59+00",
    "$1,234.56 incl. VAT",
    "1234.56",
    "0.99",
    "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "5d41402abc4b2a76b9719d911017c592",
    "d41d8cd98f00b204e9800998ecf8427e",
    "The quick brown fox paid 12.50 EUR on 2024-01-15 at 10:30; see ticket 4412.",
    "Order 2024/000123 shipped in 3 boxes",
    "room B-204, 3 people, call ext. 4412",
    "café résumé naïve",
    "版本 12 已发布",
    '{"order": "ORD-2024-000123", "total": 1234.56, "items": [1, 2, 3], "big": 123456789012}',
]


def net(oid: int = TEXT, typmod: int = -1, fmt: int = 0) -> Scan:
    m = make_safety_net_masker(oid, typmod, fmt, KEY, STRAT)
    assert m is not None
    return m


# -- in-value masking --------------------------------------------------------------------------


def test_spans_are_masked_in_place_and_the_rest_kept() -> None:
    m = net()
    assert m(b"please contact ada@example.com about it") == b"please contact ****@example.com about it"
    assert (
        m(b"card 4539 1488 0343 6467, ssn 536-22-8714 ok")
        == b"card **** **** **** 6467, ssn ***-**-8714 ok"
    )
    assert m(b"key AKIAIOSFODNN7EXAMPLE!") == b"key <secret>!"
    assert m(b"iban DE89 3704 0044 0532 0130 00 paid") == b"iban DE** **** **** **** **30 00 paid"
    # a whole value is masked as a whole
    assert m(b"536-22-8714") == b"***-**-8714"


def test_strategies_per_class_apply_to_spans() -> None:
    m = make_safety_net_masker(TEXT, -1, 0, KEY, {**STRAT, D.EMAIL: "redact", D.NATIONAL_ID: "null"})
    assert m is not None
    # null of a part of a text: the part is redacted, the value stays
    assert m(b"mail ada@example.com ssn 536-22-8714") == b"mail <email> ssn <national_id>"
    assert m(b"536-22-8714") is None
    hashed = make_safety_net_masker(TEXT, -1, 0, KEY, {**STRAT, D.EMAIL: "hash"})
    assert hashed is not None
    out = hashed(b"to ada@example.com now")
    assert out is not None and out.startswith(b"to ") and out.endswith(b".invalid now")
    assert b"ada" not in out


def test_types_stay_valid() -> None:
    # varchar(n) is cut, char(n) padded, name cut to 63 bytes
    out = net(VARCHAR, 4 + 12)(b"mail AB123456C")
    assert out is not None and len(out) == 12 and out.startswith(b"mail *") and b"1234" not in out
    assert net(BPCHAR, 4 + 30)(b"ada@example.com" + b" " * 15) == b"****@example.com".ljust(30)
    out = net(NAME)(b"x" * 40 + b" ada@example.com")
    assert out is not None and len(out) <= 63


def test_ip_addresses_are_left_to_the_detect_strategy() -> None:
    m = net()
    for ip in IPS:
        assert m(ip.encode()) == ip.encode()
        text = f"from {ip} by ada@example.com".encode()
        assert m(text) == f"from {ip} by ****@example.com".encode()
    detect = make_detect_masker(TEXT, -1, 0, KEY, STRAT)
    assert detect is not None and detect(b"from 10.1.2.3 today") == b"from 10.1.0.0 today"


def test_json_is_masked_token_by_token() -> None:
    doc = b'{"note": "refund to DE89 3704 0044 0532 0130 00 ok",  "n": 4539148803436467, "x": 1.5e3, "ada@example.com": [true, null, "ok"]}'
    for oid, fmt, prefix in ((JSON, 0, b""), (JSONB, 0, b""), (JSONB, 1, b"\x01")):
        out = net(oid, -1, fmt)(prefix + doc)
        assert out is not None and out.startswith(prefix)
        value = orjson.loads(out[len(prefix) :])
        assert value == {
            "note": "refund to DE** **** **** **** **30 00 ok",
            "n": "************6467",
            "x": 1500.0,
            "****@example.com": [True, None, "ok"],
        }
        # the spacing and the number spelling are kept
        assert b'"x": 1.5e3' in out and b'ok",  "n"' in out
    # an escaped "@" is seen
    assert net(JSON)(b'"ada\\u0040example.com"') == b'"****@example.com"'
    same = b'{"a": 123456789012345678901234567890, "b": "x"}'
    assert net(JSON)(same) is same


def test_detect_keeps_its_conservative_choices() -> None:
    arr = make_detect_masker(TEXT_ARRAY, -1, 0, KEY)
    assert arr is not None and arr(b'{"ada@example.com",b}') is None
    assert make_detect_masker(INT8, -1, 1, KEY) is None
    by = make_detect_masker(BYTEA, -1, 0, KEY)
    assert by is not None and by(b"\\x" + b"ada@example.com".hex().encode()) is None
    # citext is text in binary format too when the catalog says so
    assert make_detect_masker(CITEXT, -1, 1, KEY) is None
    citext = make_detect_masker(CITEXT, -1, 1, KEY, text_oids=frozenset({CITEXT}))
    assert citext is not None and citext(b"hi ada@example.com") == b"hi ****@example.com"


@pytest.mark.parametrize("value", HARMLESS)
def test_harmless_values_are_left_as_they_are(value: str) -> None:
    raw = value.encode()
    for oid in (TEXT, JSON):
        m = net(oid)
        assert m(raw) is raw
        assert m.scan(raw) is raw  # also when the prefilter lets it through
    detect = make_detect_masker(TEXT, -1, 0, KEY)
    assert detect is not None and detect(raw) is raw


@pytest.mark.parametrize("value", PII)
def test_what_the_detectors_validate_is_masked(value: str) -> None:
    for text in (value, f"see {value} here"):
        raw = text.encode()
        out = net()(raw)
        assert out != raw, text


# -- the prefilter -----------------------------------------------------------------------------

_alphabet = st.sampled_from(
    [
        *"0123456789" * 4,
        *"abcdefxyzAKIASEXYZBCD",
        *" -.:+$@\\u_=,/()\n\t",
        "\u0663",
        "é",
        "\uff11",
        "AKIA",
        "eyJ",
        "ecret",
        "ECRET",
        "gh",
        "ghp_",
        "xox",
        "sk_",
        "rk_",
        "md5",
        "dbs_",
        "SCRAM-",
        "pbkdf2_",
        "-----BEGIN",
        "AIza",
        "github_pat_",
        "\\u",
    ]
)
texts = st.one_of(
    st.lists(_alphabet, max_size=40).map("".join),
    st.text(max_size=40),
    st.tuples(st.text(max_size=8), st.sampled_from(PII + UNICODE + IPS + HARMLESS), st.text(max_size=8)).map(
        "".join
    ),
)


@pytest.mark.skipif(fast is None, reason="the C extension is not built")
@settings(max_examples=3000, deadline=None, suppress_health_check=HEALTH)
@given(st.one_of(texts.map(lambda t: t.encode("utf-8", "surrogateescape")), st.binary(max_size=40)))
def test_prefilter_c_is_python(raw: bytes) -> None:
    assert fast is not None
    for ip in (False, True):
        assert fast.prefilter(raw, ip) is may_hold_sensitive(raw, ip), (raw, ip)


@settings(max_examples=3000, deadline=None, suppress_health_check=HEALTH)
@given(texts)
def test_prefilter_never_skips_what_the_detectors_find(text: str) -> None:
    raw = text.encode("utf-8", "surrogateescape")
    found_any = detect_value(text) is not None or bool(find_sensitive(text))
    if found_any:
        assert may_hold_sensitive(raw, ip=True), text
    if scan_text(text, STRAT, KEY, SAFETY_NET_CLASSES) is not text:
        assert may_hold_sensitive(raw, ip=False), text


def test_prefilter_skips_ordinary_text() -> None:
    for value in (
        "nothing to see here",
        "customer since 2001, tier 1, no marketing",
        "café résumé",
        "high through the night",
    ):
        assert not may_hold_sensitive(value.encode())
        if fast is not None:
            assert not fast.prefilter(value.encode(), False)


# -- which columns -----------------------------------------------------------------------------


def _fields(*oids: int, fmt: int = 0) -> list[Field]:
    return [Field(f"c{i}", 0, 0, oid, -1, -1, fmt) for i, oid in enumerate(oids)]


def test_safety_net_scans_text_like_columns_only() -> None:
    oids = (TEXT, VARCHAR, BPCHAR, NAME, JSON, JSONB, CITEXT, INT8, DATE, BOOL, TEXT_ARRAY, BYTEA)
    plan = MaskPlan(tuple(None for _ in oids))
    assert compile_row_masker(plan, _fields(*oids), key=KEY) is None
    masker = compile_row_masker(plan, _fields(*oids), key=KEY, safety_net=True)
    assert masker is not None
    reasons = [m.reason if m is not None else None for m in masker.masks]
    assert reasons == ["safety-net"] * 7 + [None] * 5
    # binary: extension types only when known to be text (citext)
    masker = compile_row_masker(plan, _fields(*oids, fmt=1), key=KEY, safety_net=True)
    assert masker is not None and masker.masks[6] is None
    masker = compile_row_masker(
        plan, _fields(*oids, fmt=1), key=KEY, safety_net=True, text_oids=frozenset({CITEXT})
    )
    assert masker is not None and masker.masks[6] is not None


def test_safety_net_leaves_masked_columns_to_their_plan() -> None:
    email = ColumnMask(0, D.EMAIL, "redact", frozenset(), "lineage")
    plan = MaskPlan((email, None))
    masker = compile_row_masker(plan, _fields(TEXT, TEXT), key=KEY, safety_net=True)
    assert masker is not None and masker.masks[0] is email
    assert masker.masks[1] is not None and masker.masks[1].reason == "safety-net"
    body = rows.encode_data_row([b"x", b"to ada@example.com"])
    assert rows.decode_data_row(rows.mask_data_row(body, masker)) == [
        b"<email>",
        b"to ****@example.com",
    ]
    # a result without a plan (a harmless table): the rows pass unchanged
    masker = compile_row_masker(MaskPlan(()), _fields(TEXT, INT8), key=KEY, safety_net=True)
    assert masker is not None
    body = rows.encode_data_row([b"hello world", b"4539148803436467"])
    assert rows.mask_data_row(body, masker) is body


def test_safety_net_on_copy() -> None:
    plan = MaskPlan((None, None, None))
    table = CopyOptions(type_oids=(INT8, TEXT, JSONB))
    assert compile_copy_masker(plan, table, key=KEY) is None
    masker = compile_copy_masker(plan, table, key=KEY, safety_net=True)
    assert masker is not None
    line = b'4539148803436467\tto ada@example.com\t{"a": "536-22-8714"}\n'
    assert masker.mask(line) == b'4539148803436467\tto ****@example.com\t{"a": "***-**-8714"}\n'
    # COPY (query): types unknown, values are text
    query = compile_copy_masker(plan, CopyOptions(), key=KEY, safety_net=True)
    assert query is not None
    assert query.mask(b"1\tplain\t2\n") == b"1\tplain\t2\n"
    csv_options = CopyOptions(format="csv", delimiter=",", null="", quote='"', escape='"')
    csv = compile_copy_masker(plan, csv_options, key=KEY, safety_net=True)
    assert csv is not None
    # fields left alone are written as they came (not re-quoted)
    assert csv.mask(b'1,plain,"2024-01-15 10:23:45"\n') == b'1,plain,"2024-01-15 10:23:45"\n'
    assert csv.mask(b'1,"a, ada@example.com",x\n') == b'1,"a, ****@example.com",x\n'
    binary = CopyOptions(format="binary")
    assert compile_copy_masker(plan, binary, key=KEY, safety_net=True) is None


def test_config() -> None:
    assert MaskingConfig().safety_net == "production"
    assert MaskingConfig(safety_net="off").safety_net == "off"
    with pytest.raises(ValidationError):
        MaskingConfig(safety_net="sometimes")  # type: ignore[arg-type]


def test_service_flag() -> None:
    from dbsentry.engines.postgres.session.masking import MaskingService

    for mode, production, expected in (
        ("production", True, True),
        ("production", False, False),
        ("always", False, True),
        ("off", True, False),
    ):
        svc = MaskingService(MaskingConfig(safety_net=mode), KEY)  # type: ignore[arg-type]
        assert svc.safety_net_for(production) is expected


def test_digit_leads_are_those_of_every_unicode_digit() -> None:
    import re

    from dbsentry.masking.strategies import _DIGIT_LEADS

    digit = re.compile(r"\d")
    leads = {
        chr(cp).encode("utf-8", "surrogatepass")[0]
        for cp in range(0x80, 0x110000)
        if digit.match(chr(cp))
    }
    assert bytes(sorted(leads)) == _DIGIT_LEADS


def test_more_spans_than_find_sensitive_reports_are_all_masked() -> None:
    """find_sensitive stops at 64 spans; the 65th and later must not leak."""
    text = " ".join(f"user{i}@example.com" for i in range(150)).encode()
    for m in (net(), make_detect_masker(TEXT, -1, 0, KEY)):
        assert m is not None
        out = m(text)
        assert out is not None and b"user" not in out and out.count(b"****@example.com") == 150


def test_escaped_copy_lines_are_scanned_too() -> None:
    plan = MaskPlan((None, None))
    masker = compile_copy_masker(plan, CopyOptions(type_oids=(TEXT, TEXT)), key=KEY, safety_net=True)
    assert masker is not None
    # a backslash escape sends the line through the decoding path
    line = b"a\\tb ada@example.com\tx\\\\y 536-22-8714\n"
    assert masker.mask(line) == b"a\\tb ****@example.com\tx\\\\y ***-**-8714\n"
    from dbsentry.engines.postgres.wire import codec

    out, count, _ = masker.mask_frames(codec.frame(b"d", line), 0)
    assert count == 1 and out == codec.frame(b"d", b"a\\tb ****@example.com\tx\\\\y ***-**-8714\n")


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789-@. abcXYZ+()", min_size=0, max_size=80), st.integers(1, 64))
def test_find_sensitive_remembers_exactly_what_it_found(text: str, limit: int) -> None:
    """The memo (by a keyed hash of the text and the limit) answers what a scan would."""
    from dbsentry.masking import detect

    fresh = detect._find(text, limit) if len(text) >= 7 and detect._MAYBE_RE.search(text) else []
    assert detect.find_sensitive(text, limit) == fresh
    assert detect.find_sensitive(text, limit) == fresh  # from the memo
    assert detect.find_sensitive(text, 1) == fresh[:1]  # another limit is another entry


def test_the_memo_holds_no_text_and_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from dbsentry.masking import detect

    monkeypatch.setattr(detect, "_MEMO", {})
    monkeypatch.setattr(detect, "_MEMO_SIZE", 8)
    for i in range(20):
        detect.find_sensitive(f"card 4539 1488 0343 {6400 + i} here")
    assert len(detect._MEMO) == 8
    assert all(isinstance(k, bytes) and len(k) == 16 for k in detect._MEMO)
    assert "4539" not in repr(detect._MEMO)
