"""Ed25519 as MariaDB's ``client_ed25519`` uses it, in pure Python.

MariaDB signs with the *password* where RFC 8032 has a 32-byte seed: the secret scalar and
the nonce prefix come from SHA-512 of the password itself (its ref10 ``crypto_sign``), so
no Ed25519 library that takes a seed can compute it. Everything else is standard Ed25519
(RFC 8032, section 5.1): the signature verifies with any implementation, and the public
key is what ``ed25519_password()`` stores, base64 without padding.

Only signing is here (a client-side computation with the proxy's own secret); it is not
constant-time, which does not matter for a password the proxy itself holds and sends.
"""

from __future__ import annotations

import base64
import hashlib

__all__ = ["password_hash", "public_key", "sign"]

_P = 2**255 - 19
_L = 2**252 + 27742317777372353535851937790883648493
_D = -121665 * pow(121666, _P - 2, _P) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)

_Point = tuple[int, int, int, int]  # extended coordinates (X, Y, Z, T)


def _recover_x(y: int, sign: int) -> int:
    x2 = (y * y - 1) * pow(_D * y * y + 1, _P - 2, _P) % _P
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P:
        x = x * _SQRT_M1 % _P
    if x & 1 != sign:
        x = _P - x
    return x


_BY = 4 * pow(5, _P - 2, _P) % _P
_BX = _recover_x(_BY, 0)
_BASE: _Point = (_BX, _BY, 1, _BX * _BY % _P)


def _add(a: _Point, b: _Point) -> _Point:
    x1, y1, z1, t1 = a
    x2, y2, z2, t2 = b
    aa = (y1 - x1) * (y2 - x2) % _P
    bb = (y1 + x1) * (y2 + x2) % _P
    cc = 2 * t1 * t2 * _D % _P
    dd = 2 * z1 * z2 % _P
    e, f, g, h = bb - aa, dd - cc, dd + cc, bb + aa
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def _mul_base(scalar: int) -> _Point:
    q: _Point = (0, 1, 1, 0)
    point = _BASE
    while scalar:
        if scalar & 1:
            q = _add(q, point)
        point = _add(point, point)
        scalar >>= 1
    return q


def _encode(point: _Point) -> bytes:
    x, y, z, _ = point
    zi = pow(z, _P - 2, _P)
    x, y = x * zi % _P, y * zi % _P
    return (y | (x & 1) << 255).to_bytes(32, "little")


def _expand(password: bytes) -> tuple[int, bytes]:
    digest = hashlib.sha512(password).digest()
    scalar = int.from_bytes(digest[:32], "little")
    scalar = (scalar & ((1 << 254) - 8)) | (1 << 254)  # clamp as ref10 does
    return scalar, digest[32:]


def public_key(password: bytes) -> bytes:
    """The 32-byte public key of ``password``."""
    scalar, _ = _expand(password)
    return _encode(_mul_base(scalar))


def password_hash(password: bytes) -> str:
    """What MariaDB's ``ed25519_password(password)`` returns (and stores)."""
    return base64.b64encode(public_key(password)).rstrip(b"=").decode("ascii")


def sign(password: bytes, message: bytes) -> bytes:
    """The 64-byte signature of ``message`` (the server's nonce) with ``password``."""
    scalar, prefix = _expand(password)
    a = _encode(_mul_base(scalar))
    r = int.from_bytes(hashlib.sha512(prefix + message).digest(), "little") % _L
    big_r = _encode(_mul_base(r))
    h = int.from_bytes(hashlib.sha512(big_r + a + message).digest(), "little") % _L
    s = (r + h * scalar) % _L
    return big_r + s.to_bytes(32, "little")
