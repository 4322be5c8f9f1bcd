"""engines/mysql/wire/auth and ed25519: scrambles, caching_sha2 full authentication (both
sides), clear passwords and MariaDB's client_ed25519, checked against the documented
formulas, PyMySQL's independent implementation, MariaDB's published ed25519 vector and the
Ed25519 of ``cryptography``."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from dbsentry.engines.mysql.wire import auth, ed25519
from dbsentry.errors import ProtocolError

pymysql_auth = pytest.importorskip("pymysql._auth")

NONCE = bytes.fromhex("33583818445e1648407911302a41615564776e0d")  # a real server's


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


passwords = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=30)
nonces = st.binary(min_size=20, max_size=20)


# ---------------------------------------------------------------------- mysql_native_password


def test_native_scramble_is_the_documented_formula() -> None:
    pw = b"secret"
    sha1 = hashlib.sha1
    expected = bytes(a ^ b for a, b in zip(sha1(pw).digest(), sha1(NONCE + sha1(sha1(pw).digest()).digest()).digest(), strict=True))
    assert auth.native_password_scramble("secret", NONCE) == expected
    assert auth.native_password_scramble("", NONCE) == b""
    assert auth.check_native_scramble(expected, NONCE, "secret")
    assert not auth.check_native_scramble(expected, NONCE, "Secret")


@settings(max_examples=50)
@given(passwords, nonces)
def test_native_scramble_matches_pymysql(password: str, nonce: bytes) -> None:
    assert auth.native_password_scramble(password, nonce) == pymysql_auth.scramble_native_password(password.encode(), nonce)


# ---------------------------------------------------------------------- caching_sha2_password


def test_caching_sha2_scramble_is_the_documented_formula() -> None:
    sha = hashlib.sha256
    s1 = sha(b"secret").digest()
    expected = bytes(a ^ b for a, b in zip(s1, sha(sha(s1).digest() + NONCE).digest(), strict=True))
    assert auth.caching_sha2_scramble("secret", NONCE) == expected
    assert len(expected) == 32
    assert auth.caching_sha2_scramble(b"", NONCE) == b""
    assert auth.check_caching_sha2_scramble(expected, NONCE, "secret")
    # The greeting's nonce arrives with its NUL sometimes; only 20 bytes count.
    assert auth.caching_sha2_scramble("secret", NONCE + b"\x00") == expected


@settings(max_examples=50)
@given(passwords, nonces)
def test_caching_sha2_scramble_matches_pymysql(password: str, nonce: bytes) -> None:
    assert auth.caching_sha2_scramble(password, nonce) == pymysql_auth.scramble_caching_sha2(password.encode(), nonce)


def test_rsa_full_authentication_both_sides(key: rsa.RSAPrivateKey) -> None:
    encrypted = auth.rsa_encrypt_password("tøken-123", NONCE, _pem(key))
    assert len(encrypted) == 256
    assert auth.rsa_decrypt_password(encrypted, NONCE, key) == "tøken-123"
    # What PyMySQL sends decrypts the same, and what we send PyMySQL's formula would.
    theirs = pymysql_auth.sha2_rsa_encrypt("tøken-123".encode(), NONCE, _pem(key))
    assert auth.rsa_decrypt_password(theirs, NONCE, key) == "tøken-123"
    with pytest.raises(auth.AuthError, match="cannot be decrypted"):
        auth.rsa_decrypt_password(encrypted[::-1], NONCE, key)
    with pytest.raises(auth.AuthError, match="not a PEM key"):
        auth.rsa_encrypt_password("x", NONCE, b"-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")


def test_caching_sha2_client_fast_auth_and_full_auth(key: rsa.RSAPrivateKey) -> None:
    fast = auth.CachingSha2Client("pw", NONCE, secure=False)
    assert fast.first() == auth.caching_sha2_scramble("pw", NONCE)
    assert fast.more_data(auth.FAST_AUTH_SUCCESS) is None
    # Full authentication inside TLS: the password in the clear.
    tls = auth.CachingSha2Client("pw", NONCE, secure=True)
    assert tls.more_data(auth.PERFORM_FULL_AUTHENTICATION) == b"pw\x00"
    # On plaintext: ask for the key (0x02), then send the password encrypted with it.
    plain = auth.CachingSha2Client("pw", NONCE, secure=False)
    assert plain.more_data(auth.PERFORM_FULL_AUTHENTICATION) == auth.REQUEST_PUBLIC_KEY
    sent = plain.more_data(_pem(key))
    assert sent is not None
    assert auth.rsa_decrypt_password(sent, NONCE, key) == "pw"
    # A key known beforehand saves the round trip.
    known = auth.CachingSha2Client("pw", NONCE, secure=False, public_key_pem=_pem(key))
    sent = known.more_data(auth.PERFORM_FULL_AUTHENTICATION)
    assert sent is not None and auth.rsa_decrypt_password(sent, NONCE, key) == "pw"
    with pytest.raises(auth.AuthError, match="unexpected caching_sha2_password data"):
        auth.CachingSha2Client("pw", NONCE, secure=False).more_data(b"\x09")
    with pytest.raises(ProtocolError):
        known.more_data(b"more")


# ---------------------------------------------------------------------- clear passwords, nonces


def test_clear_password_both_ways() -> None:
    assert auth.clear_password_response("tok") == b"tok\x00"
    assert auth.read_clear_password(b"tok\x00") == "tok"
    assert auth.read_clear_password(b"tok") == "tok"
    assert auth.read_clear_password("ü".encode() + b"\x00") == "ü"
    with pytest.raises(auth.AuthError, match="NUL inside"):
        auth.read_clear_password(b"a\x00b\x00")
    with pytest.raises(auth.AuthError, match="UTF-8"):
        auth.read_clear_password(b"\xff\x00")
    with pytest.raises(auth.AuthError, match="longer than"):
        auth.read_clear_password(b"x" * 5000)
    with pytest.raises(auth.AuthError):
        auth.clear_password_response("a\x00")


def test_proxy_nonces() -> None:
    seen = {auth.new_nonce() for _ in range(50)}
    assert len(seen) == 50
    for nonce in seen:
        assert len(nonce) == 20
        assert all(0 < b < 128 and b != ord("$") for b in nonce)


# ---------------------------------------------------------------------- client_ed25519


def test_ed25519_public_key_matches_mariadbs_published_value() -> None:
    # MariaDB's documentation: SELECT ed25519_password("secret") -> this.
    assert ed25519.password_hash(b"secret") == "ZIgUREUg5PVgQ6LskhXmO+eZLS0nC8be6HPjYWR4YJY"


def test_ed25519_of_a_32_byte_password_is_rfc8032_with_it_as_seed() -> None:
    # MariaDB hashes the password where RFC 8032 hashes the 32-byte seed: the same when
    # the password is 32 bytes long.
    seed = bytes(range(32))
    message = b"n" * 32
    assert ed25519.sign(seed, message) == Ed25519PrivateKey.from_private_bytes(seed).sign(message)
    assert ed25519.public_key(seed) == Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()


@settings(max_examples=20, deadline=None)
@given(st.binary(max_size=80), st.binary(min_size=32, max_size=32))
def test_ed25519_signatures_verify(password: bytes, nonce: bytes) -> None:
    signature = auth.ed25519_response(password, nonce)
    assert len(signature) == 64
    Ed25519PublicKey.from_public_bytes(ed25519.public_key(password)).verify(signature, nonce)
    assert base64.b64decode(ed25519.password_hash(password) + "=") == ed25519.public_key(password)


def test_ed25519_needs_the_32_byte_nonce() -> None:
    with pytest.raises(auth.AuthError, match="32-byte nonce"):
        auth.ed25519_response("pw", NONCE)
