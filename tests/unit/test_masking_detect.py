"""Value detectors (true positives, near misses, checksum failures) and column classification."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dbsentry.masking.classes import DataClass, most_sensitive, parse_class
from dbsentry.masking.detect import (
    classify_column,
    comment_says_none,
    detect_value,
    find_sensitive,
    iban_ok,
    luhn_ok,
)

D = DataClass


def _b64(obj: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")


JWT = f"{_b64({'alg': 'HS256', 'typ': 'JWT'})}.{_b64({'sub': '42'})}.c2lnbmF0dXJl"
NOT_JWT = f"{_b64({'typ': 'JWT'})}.{_b64({'sub': '42'})}.c2lnbmF0dXJl"  # no alg


POSITIVES = [
    # email
    ("alice@example.com", D.EMAIL),
    ("first.last+tag@sub.example.co.uk", D.EMAIL),
    ("  bob@example.org  ", D.EMAIL),
    # US SSN
    ("123-45-6789", D.NATIONAL_ID),
    ("123 45 6789", D.NATIONAL_ID),
    # Canadian SIN (Luhn)
    ("046 454 286", D.NATIONAL_ID),
    ("130-692-544", D.NATIONAL_ID),
    # Spanish DNI / NIE (control letter)
    ("12345678Z", D.NATIONAL_ID),
    ("X1234567L", D.NATIONAL_ID),
    # UK NINO (format)
    ("AB123456C", D.NATIONAL_ID),
    ("AB 12 34 56 C", D.NATIONAL_ID),
    # French NIR (key = 97 - n mod 97)
    ("1 85 05 78 006 084 91", D.NATIONAL_ID),
    ("185057800608491", D.NATIONAL_ID),
    # cards (Luhn + issuer)
    ("4242424242424242", D.PAYMENT_CARD),
    ("4242 4242 4242 4242", D.PAYMENT_CARD),
    ("4111-1111-1111-1111", D.PAYMENT_CARD),
    ("378282246310005", D.PAYMENT_CARD),
    ("5555555555554444", D.PAYMENT_CARD),
    ("6011111111111117", D.PAYMENT_CARD),
    ("3530111333300000", D.PAYMENT_CARD),
    # phones
    ("+1 (415) 555-0132", D.PHONE),
    ("(415) 555-0132", D.PHONE),
    ("415-555-0132", D.PHONE),
    ("+44 20 7946 0958", D.PHONE),
    ("+4915112345678", D.PHONE),
    ("020 7946 0958", D.PHONE),
    # IBAN (mod 97)
    ("DE89 3704 0044 0532 0130 00", D.IBAN),
    ("DE89370400440532013000", D.IBAN),
    ("GB82WEST12345698765432", D.IBAN),
    ("FR1420041010050500013M02606", D.IBAN),
    # IP
    ("192.168.1.10", D.IP_ADDRESS),
    ("2001:db8::1", D.IP_ADDRESS),
    ("fe80::1ff:fe23:4567:890a", D.IP_ADDRESS),
    # secrets
    ("AKIAIOSFODNN7EXAMPLE", D.SECRET),
    ("ASIAIOSFODNN7EXAMPLE", D.SECRET),
    ("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", D.SECRET),
    ("ghp_" + "A1b2C3d4" * 4 + "wxyz", D.SECRET),
    ("gho_" + "a" * 36, D.SECRET),
    ("github_pat_11ABCDEFG0" + "x" * 72, D.SECRET),
    ("xoxb-1234567890-abcdefghij", D.SECRET),
    ("xoxp-1234567890-abcdefghij", D.SECRET),
    ("sk_live_" + "a1B2" * 6, D.SECRET),
    ("rk_live_" + "a1B2" * 6, D.SECRET),
    ("AIza" + "SyA-1234567890abcdefghijklmnopqrstu", D.SECRET),
    (JWT, D.SECRET),
    ("-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----", D.SECRET),
    ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn\n-----END OPENSSH PRIVATE KEY-----", D.SECRET),
    ("-----BEGIN PRIVATE KEY-----\nMIIEv\n-----END PRIVATE KEY-----", D.SECRET),
    ("$2b$12$" + "R9h/cIPz0gi.URNNX3kh2O" + "PST9/PgBkqquzi.Ss7KIUgO2t0jWMUW", D.SECRET),
    ("$argon2id$v=19$m=65536,t=3,p=4$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG", D.SECRET),
    ("$6$saltsalt$" + "a" * 86, D.SECRET),
    ("pbkdf2_sha256$260000$abc123$aGFzaGhhc2hoYXNoaGFzaA==", D.SECRET),
    ("SCRAM-SHA-256$4096:c2FsdHNhbHQ=$c3RvcmVka2V5:c2VydmVya2V5", D.SECRET),
    ("md5" + "0123456789abcdef" * 2, D.SECRET),
    ("dbs_0123456789ab_" + "A" * 43, D.SECRET),
]

NEGATIVES = [
    "hello world",
    "",
    "short",
    "alice@",
    "@example.com",
    "alice at example dot com",
    # SSN rules: area 000 / 666 / 9xx, group 00, serial 0000, published samples
    "000-12-3456",
    "666-12-3456",
    "912-12-3456",
    "123-00-6789",
    "123-45-0000",
    "078-05-1120",
    "123456789",  # bare nine digits are not an SSN by value
    # SIN with a bad check digit, or an 8xx SIN
    "130-692-545",
    # DNI / NIE with the wrong letter
    "12345678A",
    "X1234567A",
    # NINO with a forbidden prefix, or a bad suffix letter
    "BG123456C",
    "AB123456E",
    # NIR with the wrong key
    "1 85 05 78 006 084 36",
    # cards: Luhn failure, unknown issuer, wrong length
    "4242424242424241",
    "4242 4242 4242 4241",
    "9999999999999995",
    "42424242424242",
    # phones that are not
    "2024-01-15",
    "12:30:45",
    "1.2.3",
    # IBAN with a bad check, a wrong length for its country
    "GB82WEST12345698765433",
    "DE89370400440532013",
    # IP look-alikes
    "999.1.1.1",
    "1.2.3.4.5",
    "01.02.03.04",
    # secrets that are not
    "AKIA-not-a-key",
    "ghp_short",
    "sk_test",
    NOT_JWT,
    "eyJhbGciOiJIUzI1NiJ9",
    "$2b$12$tooshort",
    "md5 of something",
    "-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----",
    "dbs_not_a_token",
]


@pytest.mark.parametrize(("value", "expected"), POSITIVES)
def test_detects(value: str, expected: DataClass) -> None:
    assert detect_value(value) is expected


@pytest.mark.parametrize("value", NEGATIVES)
def test_near_misses_are_not_detected(value: str) -> None:
    assert detect_value(value) is None


def test_checksums() -> None:
    assert luhn_ok("79927398713")
    assert not luhn_ok("79927398710")
    assert iban_ok("gb82 west 1234 5698 7654 32")
    assert not iban_ok("GB00WEST12345698765432")
    assert not iban_ok("not an iban")


def test_huge_values_only_look_for_keys() -> None:
    assert detect_value("x" * 100_000) is None
    assert detect_value("-----BEGIN EC PRIVATE KEY-----\n" + "A" * 20_000) is D.SECRET


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_random_text_never_crashes(text: str) -> None:
    result = detect_value(text)
    assert result is None or isinstance(result, DataClass)
    for span in find_sensitive(text):
        assert 0 <= span.start < span.end <= len(text)


def test_find_sensitive_inside_text() -> None:
    text = (
        "Contact alice@example.com, card 4242 4242 4242 4242, ssn 123-45-6789, "
        "key AKIAIOSFODNN7EXAMPLE from 10.1.2.3 (IBAN DE89 3704 0044 0532 0130 00)"
    )
    found = [(text[s.start : s.end], s.data_class) for s in find_sensitive(text)]
    assert found == [
        ("alice@example.com", D.EMAIL),
        ("4242 4242 4242 4242", D.PAYMENT_CARD),
        ("123-45-6789", D.NATIONAL_ID),
        ("AKIAIOSFODNN7EXAMPLE", D.SECRET),
        ("10.1.2.3", D.IP_ADDRESS),
        ("DE89 3704 0044 0532 0130 00", D.IBAN),
    ]


def test_find_sensitive_key_value_and_context() -> None:
    text = (
        "config: token=ghp_"
        + "a" * 36
        + ', aws_secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"'
    )
    spans = find_sensitive(text)
    assert [s.data_class for s in spans] == [D.SECRET, D.SECRET]
    assert text[spans[0].start : spans[0].end] == "ghp_" + "a" * 36
    assert text[spans[1].start : spans[1].end] == "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


def test_find_sensitive_plain_text() -> None:
    assert find_sensitive("Order 1234 shipped on 2024-01-15 to the warehouse, version 1.2.3") == []


# -- classes --------------------------------------------------------------------------------


def test_most_sensitive_and_parse() -> None:
    assert most_sensitive({D.EMAIL, D.SECRET, D.PHONE}) is D.SECRET
    assert most_sensitive({D.PAYMENT_CARD, D.NATIONAL_ID}) is D.NATIONAL_ID or D.PAYMENT_CARD
    assert most_sensitive(set()) is None
    assert parse_class("EMAIL") is D.EMAIL
    assert parse_class("ssn") is D.NATIONAL_ID
    assert parse_class("payment-card") is D.PAYMENT_CARD
    assert parse_class("nope") is None


def test_most_sensitive_is_deterministic() -> None:
    a = most_sensitive([D.PAYMENT_CARD, D.NATIONAL_ID])
    b = most_sensitive([D.NATIONAL_ID, D.PAYMENT_CARD])
    assert a == b


# -- columns --------------------------------------------------------------------------------

COLUMNS = [
    (("public.customers", "email", "text", None), D.EMAIL, "schema-name"),
    (("customers", "contact_email", "character varying(255)", None), D.EMAIL, "schema-name"),
    (("customers", "e_mail", "text", None), D.EMAIL, "schema-name"),
    (("customers", "EmailAddress", "text", None), D.EMAIL, "schema-name"),
    (("customers", "phone", "text", None), D.PHONE, "schema-name"),
    (("customers", "mobile", "text", None), D.PHONE, "schema-name"),
    (("customers", "msisdn", "bigint", None), D.PHONE, "schema-name"),
    (("customers", "first_name", "text", None), D.PERSON_NAME, "schema-name"),
    (("customers", "lastName", "text", None), D.PERSON_NAME, "schema-name"),
    (("orders", "full_name", "text", None), D.PERSON_NAME, "schema-name"),
    (("public.customers", "name", "text", None), D.PERSON_NAME, "schema-name"),
    (("app.users", "name", "text", None), D.PERSON_NAME, "schema-name"),
    (("customers", "street_address", "text", None), D.POSTAL_ADDRESS, "schema-name"),
    (("customers", "address", "text", None), D.POSTAL_ADDRESS, "schema-name"),
    (("customers", "postcode", "text", None), D.POSTAL_ADDRESS, "schema-name"),
    (("customers", "zip", "text", None), D.POSTAL_ADDRESS, "schema-name"),
    (("customers", "dob", "date", None), D.DATE_OF_BIRTH, "schema-name"),
    (("customers", "birth_date", "date", None), D.DATE_OF_BIRTH, "schema-name"),
    (
        ("customers", "dateOfBirth", "timestamp without time zone", None),
        D.DATE_OF_BIRTH,
        "schema-name",
    ),
    (("customers", "ssn", "text", None), D.NATIONAL_ID, "schema-name"),
    (("customers", "ssn", "integer", None), D.NATIONAL_ID, "schema-name"),
    (("customers", "social_security_number", "text", None), D.NATIONAL_ID, "schema-name"),
    (("customers", "national_id", "text", None), D.NATIONAL_ID, "schema-name"),
    (("customers", "passport_number", "text", None), D.NATIONAL_ID, "schema-name"),
    (("payments", "card_number", "text", None), D.PAYMENT_CARD, "schema-name"),
    (("payments", "cc_number", "bigint", None), D.PAYMENT_CARD, "schema-name"),
    (("payments", "pan", "text", None), D.PAYMENT_CARD, "schema-name"),
    (("accounts", "iban", "text", None), D.IBAN, "schema-name"),
    (("sessions", "ip", "text", None), D.IP_ADDRESS, "schema-name"),
    (("sessions", "ip_address", "inet", None), D.IP_ADDRESS, "schema-name"),
    (("sessions", "seen_from", "inet", None), D.IP_ADDRESS, "schema-type"),
    (("sessions", "net", "cidr", None), D.IP_ADDRESS, "schema-type"),
    (("users", "password", "text", None), D.SECRET, "schema-name"),
    (("users", "passwd", "text", None), D.SECRET, "schema-name"),
    (("users", "pwd_hash", "text", None), D.SECRET, "schema-name"),
    (("users", "api_key", "text", None), D.SECRET, "schema-name"),
    (("users", "apiKey", "text", None), D.SECRET, "schema-name"),
    (("integrations", "client_secret", "text", None), D.SECRET, "schema-name"),
    (("integrations", "refresh_token", "text", None), D.SECRET, "schema-name"),
    (("keys", "private_key", "bytea", None), D.SECRET, "schema-name"),
    (("pg_catalog.pg_authid", "rolpassword", "text", None), D.SECRET, "schema-name"),
    (("t", "notes", "text", "pii:email"), D.EMAIL, "schema-comment"),
    (("t", "notes", "text", "PII: ssn -- collected at signup"), D.NATIONAL_ID, "schema-comment"),
    (("t", "x", "text", "Customer date of birth"), D.DATE_OF_BIRTH, "schema-comment"),
    (("t", "blob", "text", "stores the user's API key"), D.SECRET, "schema-comment"),
    (("t", "who", "email_address", None), D.EMAIL, "schema-type"),
]


@pytest.mark.parametrize(("args", "cls", "source"), COLUMNS)
def test_classify_column(
    args: tuple[str, str, str | None, str | None], cls: DataClass, source: str
) -> None:
    found = classify_column(*args)
    assert found is not None, args
    assert (found.data_class, found.source) == (cls, source)
    assert found.evidence


NOT_SENSITIVE = [
    ("customers", "email_verified", "boolean", None),
    ("customers", "is_email_confirmed", "boolean", None),
    ("customers", "email_count", "integer", None),
    ("customers", "email_sent_at", "timestamp with time zone", None),
    ("customers", "email", "boolean", None),
    ("customers", "mobile", "boolean", None),
    ("products", "name", "text", None),
    ("products", "product_name", "text", None),
    ("customers", "id", "integer", None),
    ("customers", "customer_id", "integer", None),
    ("customers", "token_expires_at", "timestamp with time zone", None),
    ("customers", "password_changed_at", "timestamp with time zone", None),
    ("customers", "password_salt", "text", None),
    ("customers", "secretary_name", "text", None),
    ("nodes", "mac_address", "text", None),
    ("wallets", "wallet_address", "text", None),
    ("t", "public_key", "text", None),
    ("t", "description", "text", "free text"),
    ("t", "dob", "integer", None),
    ("t", "zip", "integer", None),
]


@pytest.mark.parametrize("args", NOT_SENSITIVE)
def test_classify_column_negatives(args: tuple[str, str, str | None, str | None]) -> None:
    assert classify_column(*args) is None


@pytest.mark.parametrize("comment", ["pii:none", "sensitive: no", "dbsentry=public"])
def test_a_comment_cannot_remove_a_class(comment: str) -> None:
    # only masking.overrides may declassify; the comment is noted in the evidence
    found = classify_column("t", "email", "text", comment)
    assert found is not None and found.data_class is DataClass.EMAIL
    assert "ignored" in found.evidence
    assert classify_column("t", "description", "text", comment) is None
    assert comment_says_none(comment)
    assert not comment_says_none("pii:email") and not comment_says_none(None)
