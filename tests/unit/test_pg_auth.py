"""Unit tests for dbsentry.engines.postgres.wire.auth: md5, SCRAM-SHA-256(-PLUS), channel binding."""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import hmac

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from dbsentry.engines.postgres.wire.auth import (
    SCRAM_SHA_256,
    SCRAM_SHA_256_PLUS,
    AuthError,
    ScramClient,
    md5_password_message,
    parse_sasl_mechanisms,
    saslprep,
    tls_server_end_point_hash,
)

# RFC 7677 section 3.
RFC_NONCE = "rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_FIRST = (
    b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
)
RFC_CLIENT_FINAL = (
    b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
)
RFC_SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def rfc_client() -> ScramClient:
    return ScramClient("pencil", [SCRAM_SHA_256], nonce=RFC_NONCE, username="user")


# ---------------------------------------------------------------------------------------
# md5


def test_md5_known_answer() -> None:
    # Built differently from the module: incremental hashing and binascii.
    inner = hashlib.new("md5")
    inner.update(b"secret")
    inner.update(b"alice")
    outer = hashlib.new("md5")
    outer.update(binascii.hexlify(inner.digest()))
    outer.update(b"\x01\x02\x03\x04")
    expected = b"md5" + binascii.hexlify(outer.digest()) + b"\0"
    assert md5_password_message("alice", "secret", b"\x01\x02\x03\x04") == expected


def test_md5_fixed_value() -> None:
    # md5("postgres" + "postgres") = 3175bce1d3201d16594cebf9d7eb3f9d (the classic value
    # stored in pg_authid for that role/password), then salted with 4 zero bytes.
    assert hashlib.md5(b"postgrespostgres").hexdigest() == "3175bce1d3201d16594cebf9d7eb3f9d"
    payload = md5_password_message("postgres", "postgres", b"\0\0\0\0")
    assert payload.startswith(b"md5") and payload.endswith(b"\0") and len(payload) == 3 + 32 + 1


def test_md5_rejects_bad_salt() -> None:
    with pytest.raises(AuthError):
        md5_password_message("u", "p", b"abc")


# ---------------------------------------------------------------------------------------
# SCRAM: RFC 7677 vector


def test_rfc7677_vector() -> None:
    client = rfc_client()
    assert client.mechanism == SCRAM_SHA_256
    assert client.client_first() == b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
    assert client.client_final(RFC_SERVER_FIRST) == RFC_CLIENT_FINAL
    client.verify_server_final(RFC_SERVER_FINAL)
    assert client.done


def test_postgres_flavour_sends_empty_username() -> None:
    client = ScramClient("pencil", [SCRAM_SHA_256], nonce=RFC_NONCE)
    assert client.client_first() == b"n,,n=,r=rOprNGfwEbeRWgbNEkqO"


def test_random_nonce_is_fresh_and_printable() -> None:
    first_a = ScramClient("x", [SCRAM_SHA_256]).client_first()
    first_b = ScramClient("x", [SCRAM_SHA_256]).client_first()
    assert first_a != first_b
    nonce = first_a.split(b"r=", 1)[1]
    assert len(nonce) >= 24 and b"," not in nonce


def test_tampered_server_signature_rejected() -> None:
    client = rfc_client()
    client.client_first()
    client.client_final(RFC_SERVER_FIRST)
    sig = bytearray(base64.b64decode(RFC_SERVER_FINAL[2:]))
    sig[0] ^= 1
    with pytest.raises(AuthError, match="signature"):
        client.verify_server_final(b"v=" + base64.b64encode(bytes(sig)))
    assert not client.done


def test_server_error_attribute_rejected() -> None:
    client = rfc_client()
    client.client_first()
    client.client_final(RFC_SERVER_FIRST)
    with pytest.raises(AuthError, match="invalid-proof"):
        client.verify_server_final(b"e=invalid-proof")


@pytest.mark.parametrize(
    "server_first",
    [
        # nonce does not start with ours
        b"r=XOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
        # nonce equal to ours (the server added nothing)
        b"r=rOprNGfwEbeRWgbNEkqO,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
    ],
)
def test_wrong_nonce_rejected(server_first: bytes) -> None:
    client = rfc_client()
    client.client_first()
    with pytest.raises(AuthError, match="nonce"):
        client.client_final(server_first)


@pytest.mark.parametrize(
    "server_first",
    [
        b"",
        b"garbage",
        b"s=W22ZaJ0SNY7soEsUEjb6gQ==,r=rOprNGfwEbeRWgbNEkqOabc,i=4096",
        b"r=rOprNGfwEbeRWgbNEkqOabc,s=!!!,i=4096",
        b"r=rOprNGfwEbeRWgbNEkqOabc,s=,i=4096",
        b"r=rOprNGfwEbeRWgbNEkqOabc,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=abc",
        b"r=rOprNGfwEbeRWgbNEkqOabc,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=0",
        b"r=rOprNGfwEbeRWgbNEkqOabc,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=10000001",
        b"r=rOprNGfwEbeRWgbNEkqOabc,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=99999999999999999999",
        b"r=rOprNGfwEbeRWgbNEkqOabc,s=W22ZaJ0SNY7soEsUEjb6gQ==",
        b"m=ext,r=rOprNGfwEbeRWgbNEkqOabc,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
        b"e=other-error",
        b"r=rOprNGfwEbeRWgbNEkqO\xff,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
        b"r=" + b"a" * 10000 + b",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
    ],
)
def test_malformed_server_first_rejected(server_first: bytes) -> None:
    client = rfc_client()
    client.client_first()
    with pytest.raises(AuthError):
        client.client_final(server_first)


def test_low_iteration_count_accepted() -> None:
    client = ScramClient("pencil", [SCRAM_SHA_256], nonce="abc")
    client.client_first()
    client.client_final(b"r=abcdef,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=1")


@pytest.mark.parametrize("server_final", [b"", b"x=1", b"v=***", b"v"])
def test_malformed_server_final_rejected(server_final: bytes) -> None:
    client = rfc_client()
    client.client_first()
    client.client_final(RFC_SERVER_FIRST)
    with pytest.raises(AuthError):
        client.verify_server_final(server_final)


def test_out_of_order_calls_rejected() -> None:
    client = rfc_client()
    with pytest.raises(AuthError):
        client.client_final(RFC_SERVER_FIRST)
    client = rfc_client()
    client.client_first()
    with pytest.raises(AuthError):
        client.client_first()
    with pytest.raises(AuthError):
        client.verify_server_final(RFC_SERVER_FINAL)


def test_no_failure_is_retried_after_error() -> None:
    client = rfc_client()
    client.client_first()
    with pytest.raises(AuthError):
        client.client_final(b"garbage")
    with pytest.raises(AuthError):
        client.client_final(RFC_SERVER_FIRST)


# ---------------------------------------------------------------------------------------
# Mechanism choice and channel binding


def test_plus_chosen_with_binding_data() -> None:
    cb = b"\x11" * 32
    client = ScramClient("pencil", [SCRAM_SHA_256_PLUS, SCRAM_SHA_256], cb, nonce="abc")
    assert client.mechanism == SCRAM_SHA_256_PLUS
    assert client.client_first() == b"p=tls-server-end-point,,n=,r=abc"
    final = client.client_final(b"r=abcdef,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
    c_attr = final.split(b",")[0]
    assert base64.b64decode(c_attr[2:]) == b"p=tls-server-end-point,," + cb


def test_no_binding_data_uses_n_even_when_plus_offered() -> None:
    client = ScramClient("pencil", [SCRAM_SHA_256_PLUS, SCRAM_SHA_256], nonce="abc")
    assert client.mechanism == SCRAM_SHA_256
    assert client.client_first().startswith(b"n,,")
    assert client.client_final(b"r=abcdef,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096").startswith(
        b"c=biws,"
    )


def test_binding_data_without_plus_offer_says_y() -> None:
    client = ScramClient("pencil", [SCRAM_SHA_256], b"\x11" * 32, nonce="abc")
    assert client.mechanism == SCRAM_SHA_256
    assert client.client_first().startswith(b"y,,")
    final = client.client_final(b"r=abcdef,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
    assert final.startswith(b"c=" + base64.b64encode(b"y,,") + b",")


def test_require_channel_binding() -> None:
    with pytest.raises(AuthError):
        ScramClient("p", [SCRAM_SHA_256], b"\x11" * 32, require_channel_binding=True)
    with pytest.raises(AuthError):
        ScramClient("p", [SCRAM_SHA_256, SCRAM_SHA_256_PLUS], require_channel_binding=True)
    client = ScramClient("p", [SCRAM_SHA_256_PLUS], b"x", require_channel_binding=True)
    assert client.mechanism == SCRAM_SHA_256_PLUS


def test_unsupported_mechanisms() -> None:
    with pytest.raises(AuthError):
        ScramClient("p", ["SCRAM-SHA-1", "OAUTHBEARER"])
    with pytest.raises(AuthError):
        ScramClient("p", [SCRAM_SHA_256_PLUS])  # PLUS only, and we have no binding data


def test_parse_sasl_mechanisms() -> None:
    body = b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0"
    assert parse_sasl_mechanisms(body) == [SCRAM_SHA_256_PLUS, SCRAM_SHA_256]
    with pytest.raises(AuthError):
        parse_sasl_mechanisms(b"\xff\0\0")


# ---------------------------------------------------------------------------------------
# SASLprep


def test_saslprep() -> None:
    assert saslprep("pencil") == b"pencil"
    assert saslprep("a\x07b") == b"a\x07b"  # ASCII passes through, as in PostgreSQL
    assert saslprep("I\u00adX") == b"IX"  # soft hyphen maps to nothing
    assert saslprep("\u2168") == b"IX"  # NFKC: ROMAN NUMERAL NINE
    assert saslprep("a\u00a0b") == b"a b"  # non-ASCII space maps to space
    # Prohibited or unassigned input falls back to the raw UTF-8 bytes.
    assert saslprep("a\u00a0b\u0007") == "a\u00a0b\u0007".encode()
    assert saslprep("\u0627a") == "\u0627a".encode()  # RandAL mixed with L


def test_saslprep_changes_the_proof() -> None:
    server_first = b"r=abcdef,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    finals = []
    for password in ("IX", "\u2168", "I\u00adX"):
        client = ScramClient(password, [SCRAM_SHA_256], nonce="abc")
        client.client_first()
        finals.append(client.client_final(server_first))
    assert finals[0] == finals[1] == finals[2]


# ---------------------------------------------------------------------------------------
# tls-server-end-point


def _self_signed(
    key: ec.EllipticCurvePrivateKey, algorithm: hashes.SHA256 | hashes.SHA384 | hashes.SHA512
) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, algorithm)
    )
    return cert.public_bytes(Encoding.DER)


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [
        (hashes.SHA256(), hashlib.sha256),
        (hashes.SHA384(), hashlib.sha384),
        (hashes.SHA512(), hashlib.sha512),
    ],
)
def test_tls_server_end_point_hash(
    algorithm: hashes.SHA256 | hashes.SHA384 | hashes.SHA512, expected: object
) -> None:
    der = _self_signed(ec.generate_private_key(ec.SECP256R1()), algorithm)
    assert callable(expected)
    assert tls_server_end_point_hash(der) == expected(der).digest()


# Signed with ecdsa-with-SHA1 (made once with `openssl req -x509 -sha1`; cryptography no
# longer signs with SHA-1).  Only its bytes matter here, not its validity dates.
SHA1_CERT_PEM = b"""\
-----BEGIN CERTIFICATE-----
MIIBezCCASKgAwIBAgIUVUBGbt3oPtwIqa6pWaWMiE0RHEAwCQYHKoZIzj0EATAU
MRIwEAYDVQQDDAlzaGExLXRlc3QwHhcNMjYxMTIxMDgxNjM5WhcNMzYxMTE4MDgx
NjM5WjAUMRIwEAYDVQQDDAlzaGExLXRlc3QwWTATBgcqhkjOPQIBBggqhkjOPQMB
BwNCAAT4ajRh0JucdvONDfrGn7IzqQqsIYWpTdW9LURzvpnySUoXp2aP8UbHuQ4R
PeZxqywVRj4afusFw3UUO7Nuoppto1MwUTAdBgNVHQ4EFgQUvPHJsKCBrNdaXElQ
0NsTjGV/Z4AwHwYDVR0jBBgwFoAUvPHJsKCBrNdaXElQ0NsTjGV/Z4AwDwYDVR0T
AQH/BAUwAwEB/zAJBgcqhkjOPQQBA0gAMEUCIQCiPxqWJ6Vxxis5yOE3ftgCJtiG
P0y+9gQ3G7lBnVnvUgIgKKug0hY9gb0pIE4XBZ98d1urvrCEYRlFWaF8KT5aPXA=
-----END CERTIFICATE-----
"""


def test_tls_server_end_point_hash_upgrades_sha1() -> None:
    cert = x509.load_pem_x509_certificate(SHA1_CERT_PEM)
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA1)
    der = cert.public_bytes(Encoding.DER)
    assert tls_server_end_point_hash(der) == hashlib.sha256(der).digest()  # RFC 5929 4.1


def test_tls_server_end_point_hash_rejects_ed25519_and_garbage() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, None)
    )
    with pytest.raises(AuthError):
        tls_server_end_point_hash(cert.public_bytes(Encoding.DER))
    with pytest.raises(AuthError):
        tls_server_end_point_hash(b"not a certificate")


def test_proof_matches_independent_computation() -> None:
    # Recompute the RFC 7677 proof by hand, structured differently from the module.
    salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", salt, 4096)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    auth_message = b",".join(
        [b"n=user,r=" + RFC_NONCE.encode(), RFC_SERVER_FIRST, RFC_CLIENT_FINAL.rsplit(b",p=", 1)[0]]
    )
    signature = hmac.new(hashlib.sha256(client_key).digest(), auth_message, "sha256").digest()
    proof = int.from_bytes(client_key) ^ int.from_bytes(signature)
    assert RFC_CLIENT_FINAL.endswith(base64.b64encode(proof.to_bytes(32)))
