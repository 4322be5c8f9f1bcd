"""MySQL/MariaDB authentication, sans-IO: what to answer a server's nonce with (the proxy
logging in upstream), and what a client's answer says (the proxy as a server).

Client side, per plugin:

- ``mysql_native_password``: SHA1(pw) XOR SHA1(nonce + SHA1(SHA1(pw))).
- ``caching_sha2_password``: the fast-auth scramble SHA256(pw) XOR SHA256(SHA256(SHA256(pw))
  + nonce); the server then answers AuthMoreData 0x03 (fast auth succeeded, OK follows) or
  0x04 (perform full authentication): over TLS the password goes in the clear, NUL-terminated;
  otherwise the client asks for the server's RSA key (0x02) and sends the password + NUL,
  XORed with the nonce, encrypted with RSA-OAEP (SHA-1, as the server decrypts it).
  :class:`CachingSha2Client` runs that exchange.
- ``mysql_clear_password``: the password, NUL-terminated (only over TLS).
- ``client_ed25519`` (MariaDB): an Ed25519 signature of the 32-byte nonce, keyed by the
  password as MariaDB does it (:mod:`~dbsentry.engines.mysql.wire.ed25519`).

Server side: a proxy-issued nonce (:func:`new_nonce`), checking scrambles against a known
password, and reading a client's clear password from caching_sha2 full authentication (in
the clear inside TLS, or RSA-encrypted with the proxy's key) or from mysql_clear_password.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import TYPE_CHECKING

from dbsentry.engines.mysql.wire import ed25519
from dbsentry.errors import ProtocolError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

__all__ = [
    "CACHING_SHA2_PASSWORD",
    "CLEAR_PASSWORD",
    "ED25519",
    "FAST_AUTH_SUCCESS",
    "NATIVE_PASSWORD",
    "NONCE_LENGTH",
    "PERFORM_FULL_AUTHENTICATION",
    "REQUEST_PUBLIC_KEY",
    "AuthError",
    "CachingSha2Client",
    "CachingSha2Server",
    "caching_sha2_scramble",
    "check_caching_sha2_scramble",
    "check_native_scramble",
    "clear_password_response",
    "ed25519_response",
    "native_password_scramble",
    "new_nonce",
    "read_clear_password",
    "rsa_decrypt_password",
    "rsa_encrypt_password",
]

NATIVE_PASSWORD = "mysql_native_password"
CACHING_SHA2_PASSWORD = "caching_sha2_password"
CLEAR_PASSWORD = "mysql_clear_password"
ED25519 = "client_ed25519"

NONCE_LENGTH = 20
REQUEST_PUBLIC_KEY = b"\x02"
FAST_AUTH_SUCCESS = b"\x03"
PERFORM_FULL_AUTHENTICATION = b"\x04"

MAX_PASSWORD = 4096  # a token fits many times; a longer "password" is refused unread


class AuthError(ProtocolError):
    """Authentication cannot go on: a malformed or unexpected exchange."""

    sqlstate = "28000"


def _pw(password: str | bytes) -> bytes:
    return password.encode("utf-8") if isinstance(password, str) else password


def _xor(data: bytes, key: bytes) -> bytes:
    if not key:
        raise AuthError("empty nonce")
    return bytes(b ^ key[i % len(key)] for i, b in enumerate(data))


# ----------------------------------------------------------------- nonces


_NONCE_ALPHABET = bytes(b for b in range(1, 128) if b != ord("$"))


def new_nonce(length: int = NONCE_LENGTH) -> bytes:
    """A nonce for the proxy's own greeting: 7-bit bytes without NUL or '$', as the
    server makes them (clients copy it up to a NUL, and '$' separates stored hashes)."""
    return bytes(secrets.choice(_NONCE_ALPHABET) for _ in range(length))


# ----------------------------------------------------------------- scrambles


def native_password_scramble(password: str | bytes, nonce: bytes) -> bytes:
    """mysql_native_password's answer (empty for an empty password)."""
    pw = _pw(password)
    if not pw:
        return b""
    stage1 = hashlib.sha1(pw).digest()
    stage2 = hashlib.sha1(stage1).digest()
    return bytes(a ^ b for a, b in zip(stage1, hashlib.sha1(nonce[:NONCE_LENGTH] + stage2).digest(), strict=True))


def caching_sha2_scramble(password: str | bytes, nonce: bytes) -> bytes:
    """caching_sha2_password's fast-auth answer (empty for an empty password)."""
    pw = _pw(password)
    if not pw:
        return b""
    stage1 = hashlib.sha256(pw).digest()
    stage2 = hashlib.sha256(stage1).digest()
    mix = hashlib.sha256(stage2 + nonce[:NONCE_LENGTH]).digest()
    return bytes(a ^ b for a, b in zip(stage1, mix, strict=True))


def check_native_scramble(response: bytes, nonce: bytes, password: str | bytes) -> bool:
    return hmac.compare_digest(native_password_scramble(password, nonce), response)


def check_caching_sha2_scramble(response: bytes, nonce: bytes, password: str | bytes) -> bool:
    return hmac.compare_digest(caching_sha2_scramble(password, nonce), response)


def clear_password_response(password: str | bytes) -> bytes:
    """mysql_clear_password's answer, and caching_sha2's full authentication over TLS."""
    pw = _pw(password)
    if b"\x00" in pw:
        raise AuthError("a password cannot contain NUL")
    return pw + b"\x00"


def ed25519_response(password: str | bytes, nonce: bytes) -> bytes:
    """client_ed25519's answer: the 64-byte signature of the server's 32-byte nonce."""
    if len(nonce) != 32:
        raise AuthError(f"client_ed25519 needs a 32-byte nonce, got {len(nonce)}")
    return ed25519.sign(_pw(password), nonce)


# ----------------------------------------------------------------- RSA (full authentication)


def rsa_encrypt_password(password: str | bytes, nonce: bytes, public_key_pem: bytes) -> bytes:
    """The password + NUL, XORed with the nonce, RSA-OAEP encrypted with the server's key."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    try:
        key = serialization.load_pem_public_key(public_key_pem)
    except ValueError as exc:
        raise AuthError(f"the server's public key is not a PEM key: {exc}") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise AuthError("the server's public key is not an RSA key")
    plain = _xor(clear_password_response(password), nonce[:NONCE_LENGTH])
    oaep = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
    try:
        return key.encrypt(plain, oaep)
    except ValueError as exc:
        raise AuthError(f"the password does not fit the server's RSA key: {exc}") from None


def rsa_decrypt_password(ciphertext: bytes, nonce: bytes, private_key: RSAPrivateKey) -> str:
    """The clear password a client sent RSA-encrypted with the proxy's key."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    oaep = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
    try:
        plain = private_key.decrypt(ciphertext, oaep)
    except ValueError:
        raise AuthError("the encrypted password cannot be decrypted with the proxy's key") from None
    return read_clear_password(_xor(plain, nonce[:NONCE_LENGTH]))


def read_clear_password(data: bytes) -> str:
    """The password in a clear answer (mysql_clear_password, or caching_sha2 full
    authentication inside TLS): UTF-8, one terminating NUL."""
    if len(data) > MAX_PASSWORD + 1:
        raise AuthError(f"password longer than {MAX_PASSWORD} bytes")
    if data.endswith(b"\x00"):
        data = data[:-1]
    if b"\x00" in data:
        raise AuthError("password with a NUL inside")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise AuthError("password is not valid UTF-8") from None


# ----------------------------------------------------------------- caching_sha2_password, client side


class CachingSha2Client:
    """The proxy's side of caching_sha2_password towards an upstream server.

    ``first()`` is the answer to the nonce; ``more_data(data)`` the answer to each
    AuthMoreData payload: None when nothing is to be sent (fast auth succeeded: OK follows),
    else the bytes of the next packet. ``secure``: the connection is TLS (or a Unix socket),
    so full authentication sends the password in the clear. ``public_key_pem``: the server's
    key if known beforehand, saving the round trip that asks for it.
    """

    __slots__ = ("_asked_key", "_full", "nonce", "password", "public_key_pem", "secure")

    def __init__(self, password: str | bytes, nonce: bytes, *, secure: bool, public_key_pem: bytes | None = None) -> None:
        self.password = _pw(password)
        self.nonce = nonce[:NONCE_LENGTH]
        self.secure = secure
        self.public_key_pem = public_key_pem
        self._asked_key = False
        self._full = False

    def first(self) -> bytes:
        return caching_sha2_scramble(self.password, self.nonce)

    def more_data(self, data: bytes) -> bytes | None:
        if not self._full:
            if data == FAST_AUTH_SUCCESS:
                return None
            if data != PERFORM_FULL_AUTHENTICATION:
                raise AuthError("unexpected caching_sha2_password data from the server")
            self._full = True
            if self.secure:
                return clear_password_response(self.password)
            if self.public_key_pem is not None:
                return rsa_encrypt_password(self.password, self.nonce, self.public_key_pem)
            self._asked_key = True
            return REQUEST_PUBLIC_KEY
        if self._asked_key and data.startswith(b"-----BEGIN"):
            self._asked_key = False
            self.public_key_pem = data
            return rsa_encrypt_password(self.password, self.nonce, data)
        raise AuthError("unexpected caching_sha2_password data from the server")


# ----------------------------------------------------------------- caching_sha2_password, server side


class CachingSha2Server:
    """The proxy's side of caching_sha2_password towards a client, always asking for full
    authentication: the proxy checks tokens, so it needs the password itself, not a scramble.

    ``start(scramble)`` answers the client's first answer (from the HandshakeResponse or an
    AuthSwitchResponse) with the AuthMoreData payload asking for full authentication, or
    None for an empty one (an empty password: the caller refuses the login, since the client
    expects OK or ERR then). ``client_data(data)`` takes each later packet of the client and
    gives ``(reply, password)``: the AuthMoreData payload to send (the proxy's public key when
    the client asks for it), or the clear password once it has arrived.

    ``secure``: the client connection is TLS, so the password comes in the clear.
    ``private_key``: the proxy's RSA key for clients on plaintext; without one, full
    authentication on plaintext is refused (an :class:`AuthError` saying TLS is needed).
    """

    __slots__ = ("_started", "nonce", "private_key", "secure")

    def __init__(self, nonce: bytes, *, secure: bool, private_key: RSAPrivateKey | None = None) -> None:
        self.nonce = nonce[:NONCE_LENGTH]
        self.secure = secure
        self.private_key = private_key
        self._started = False

    def start(self, scramble: bytes) -> bytes | None:
        self._started = True
        if not scramble:
            return None
        return b"\x01" + PERFORM_FULL_AUTHENTICATION

    def public_key_pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        if self.private_key is None:
            raise AuthError("the proxy has no RSA key for caching_sha2_password: connect with TLS")
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def client_data(self, data: bytes) -> tuple[bytes | None, str | None]:
        if not self._started:
            raise AuthError("caching_sha2_password data before the client's scramble")
        if data == REQUEST_PUBLIC_KEY:
            return b"\x01" + self.public_key_pem(), None
        if self.secure:
            return None, read_clear_password(data)
        if self.private_key is None:
            raise AuthError("the password cannot be sent without TLS: connect with TLS (--ssl)")
        if len(data) != self.private_key.key_size // 8:
            raise AuthError("the encrypted password does not match the proxy's RSA key")
        return None, rsa_decrypt_password(data, self.nonce, self.private_key)
