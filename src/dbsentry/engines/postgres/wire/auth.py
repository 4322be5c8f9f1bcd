"""Upstream (client-side) PostgreSQL authentication, sans-IO.

The proxy logs in to the upstream server with credentials from its configuration.  This
module computes what to send; it never touches a socket.  The shell reads an
Authentication* message, asks this module for the reply payload, and sends it framed as a
PasswordMessage / SASLInitialResponse / SASLResponse.

- ``md5_password_message`` answers AuthenticationMD5Password.
- ``ScramClient`` runs SCRAM-SHA-256 and SCRAM-SHA-256-PLUS (RFC 5802, RFC 7677, with
  ``tls-server-end-point`` channel binding from RFC 5929) the way PostgreSQL expects: the
  user name is sent empty (``n=``) because the server takes it from the StartupMessage.
- ``tls_server_end_point_hash`` computes the channel binding data from the server's
  certificate.

Password normalisation: PostgreSQL runs SASLprep (RFC 4013) over the password when it
stores a SCRAM verifier and when libpq logs in, and falls back to the raw UTF-8 bytes when
the password is not valid SASLprep input.  We do the same with the standard library's
``stringprep`` tables, so a password that works with psql works through the proxy.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import stringprep
import unicodedata
from collections.abc import Sequence

__all__ = [
    "MAX_ITERATIONS",
    "SCRAM_SHA_256",
    "SCRAM_SHA_256_PLUS",
    "AuthError",
    "ScramClient",
    "md5_password_message",
    "parse_sasl_mechanisms",
    "saslprep",
    "tls_server_end_point_hash",
]

SCRAM_SHA_256 = "SCRAM-SHA-256"
SCRAM_SHA_256_PLUS = "SCRAM-SHA-256-PLUS"

# A hostile or broken server could ask for an iteration count that keeps us busy for hours.
# PostgreSQL's default is 4096; ten million is already several seconds of CPU.
MAX_ITERATIONS = 10_000_000

# Caps on what we accept from the server, so a hostile peer cannot make us large.
_MAX_SERVER_MESSAGE = 8192
_NONCE_BYTES = 18  # 24 base64 characters, the same as libpq


class AuthError(Exception):
    """Upstream authentication cannot proceed: bad server message, mismatch, or refusal."""


# --------------------------------------------------------------------------------------
# MD5


def md5_password_message(user: str, password: str, salt: bytes) -> bytes:
    """Return the PasswordMessage payload answering AuthenticationMD5Password.

    ``"md5" + hex(md5(hex(md5(password + user)) + salt))``, null-terminated.
    """
    if len(salt) != 4:
        raise AuthError(f"MD5 salt must be 4 bytes, got {len(salt)}")
    inner = hashlib.md5(password.encode() + user.encode()).hexdigest().encode("ascii")
    outer = hashlib.md5(inner + salt).hexdigest()
    return b"md5" + outer.encode("ascii") + b"\x00"


# --------------------------------------------------------------------------------------
# SASLprep (RFC 4013) with PostgreSQL's fallback


def _in_prohibited(ch: str) -> bool:
    return (
        stringprep.in_table_c12(ch)
        or stringprep.in_table_c21_c22(ch)
        or stringprep.in_table_c3(ch)
        or stringprep.in_table_c4(ch)
        or stringprep.in_table_c5(ch)
        or stringprep.in_table_c6(ch)
        or stringprep.in_table_c7(ch)
        or stringprep.in_table_c8(ch)
        or stringprep.in_table_c9(ch)
        or stringprep.in_table_a1(ch)
    )


def saslprep(password: str) -> bytes:
    """Return the password bytes PostgreSQL uses for SCRAM.

    Pure ASCII passes unchanged (PostgreSQL's fast path).  Otherwise RFC 4013 applies:
    non-ASCII spaces map to U+0020, "commonly mapped to nothing" characters are dropped,
    NFKC (Unicode 3.2) normalises, and prohibited, unassigned or badly mixed
    bidirectional text makes the whole thing fall back to the raw UTF-8 bytes, as the
    server does.
    """
    raw = password.encode("utf-8", "surrogatepass")
    if password.isascii():
        return raw
    mapped = "".join(
        " " if stringprep.in_table_c12(ch) else ch
        for ch in password
        if not stringprep.in_table_b1(ch)
    )
    normalized = unicodedata.ucd_3_2_0.normalize("NFKC", mapped)
    if not normalized or any(_in_prohibited(ch) for ch in normalized):
        return raw
    if any(stringprep.in_table_d1(ch) for ch in normalized):
        if any(stringprep.in_table_d2(ch) for ch in normalized):
            return raw
        if not (stringprep.in_table_d1(normalized[0]) and stringprep.in_table_d1(normalized[-1])):
            return raw
    return normalized.encode("utf-8")


# --------------------------------------------------------------------------------------
# Channel binding


def tls_server_end_point_hash(der_cert: bytes) -> bytes:
    """Return RFC 5929 ``tls-server-end-point`` binding data for a DER certificate.

    The hash is the one the certificate's signature uses, except that MD5 and SHA-1 are
    upgraded to SHA-256.  Certificates whose signature has no separate hash (Ed25519,
    Ed448) have no defined binding; PostgreSQL refuses them too.
    """
    # Imported here so that md5/SCRAM users do not pay for loading the X.509 stack.
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import hashes

    try:
        cert = x509.load_der_x509_certificate(der_cert)
    except ValueError as exc:
        raise AuthError(f"server certificate is not valid DER: {exc}") from exc
    try:
        algorithm = cert.signature_hash_algorithm
    except UnsupportedAlgorithm as exc:
        raise AuthError(f"unsupported certificate signature algorithm: {exc}") from exc
    if algorithm is None:
        raise AuthError("certificate signature has no hash; tls-server-end-point is undefined")
    if isinstance(algorithm, hashes.MD5 | hashes.SHA1):
        algorithm = hashes.SHA256()
    digest = hashes.Hash(algorithm)
    digest.update(der_cert)
    return digest.finalize()


# --------------------------------------------------------------------------------------
# SCRAM


def parse_sasl_mechanisms(payload: bytes) -> list[str]:
    """Split the body of AuthenticationSASL (after the int32 code) into mechanism names."""
    names: list[str] = []
    for part in payload.split(b"\x00"):
        if not part:
            break
        try:
            names.append(part.decode("ascii"))
        except UnicodeDecodeError as exc:
            raise AuthError("SASL mechanism name is not ASCII") from exc
    return names


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.digest(key, msg, "sha256")


def _b64decode(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError) as exc:
        raise AuthError(f"SCRAM {what} is not valid base64") from exc


def _split_attributes(message: bytes, what: str) -> list[tuple[str, str]]:
    """Split ``a=value,b=value`` into pairs, rejecting anything malformed."""
    if len(message) > _MAX_SERVER_MESSAGE:
        raise AuthError(f"SCRAM {what} is too long ({len(message)} bytes)")
    try:
        text = message.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AuthError(f"SCRAM {what} is not UTF-8") from exc
    pairs: list[tuple[str, str]] = []
    for part in text.split(","):
        if len(part) < 2 or part[1] != "=" or not part[0].isascii() or not part[0].isalpha():
            raise AuthError(f"malformed SCRAM {what}: {text[:100]!r}")
        pairs.append((part[0], part[2:]))
    return pairs


def _printable_nonce(value: str) -> bool:
    # RFC 5802 "printable": %x21-2B / %x2D-7E, i.e. visible ASCII except the comma.
    return bool(value) and all(0x21 <= ord(ch) <= 0x7E and ch != "," for ch in value)


class ScramClient:
    """One SCRAM-SHA-256(-PLUS) exchange, as the client.

    Use it in order: ``client_first()`` (send with SASLInitialResponse under
    ``mechanism``), ``client_final(server_first)`` (answer AuthenticationSASLContinue with
    SASLResponse), ``verify_server_final(server_final)`` (check AuthenticationSASLFinal
    before trusting AuthenticationOk).

    Channel binding: with ``tls_server_end_point`` data and a server offering
    ``SCRAM-SHA-256-PLUS`` we bind (``p=tls-server-end-point``).  With binding data but no
    PLUS on offer we send ``y,,`` (we could bind, we think the server cannot), which a
    server that *does* support binding rejects as a downgrade.  Without binding data we
    send ``n,,``.  ``require_channel_binding`` makes the last two cases an error.
    """

    def __init__(
        self,
        password: str,
        mechanisms: Sequence[str],
        tls_server_end_point: bytes | None = None,
        *,
        require_channel_binding: bool = False,
        nonce: str | None = None,
        username: str = "",
    ) -> None:
        offered = set(mechanisms)
        if tls_server_end_point is not None and SCRAM_SHA_256_PLUS in offered:
            self._mechanism = SCRAM_SHA_256_PLUS
            self._gs2_header = b"p=tls-server-end-point,,"
            self._cbind_data = tls_server_end_point
        elif require_channel_binding:
            if tls_server_end_point is None:
                raise AuthError("channel binding required but no TLS binding data is available")
            raise AuthError(f"channel binding required but the server offers only {sorted(offered)}")
        elif SCRAM_SHA_256 in offered:
            self._mechanism = SCRAM_SHA_256
            self._gs2_header = b"y,," if tls_server_end_point is not None else b"n,,"
            self._cbind_data = b""
        else:
            raise AuthError(f"no supported SASL mechanism among {sorted(offered)}")
        if nonce is None:
            nonce = base64.b64encode(secrets.token_bytes(_NONCE_BYTES)).decode("ascii")
        elif not _printable_nonce(nonce):
            raise AuthError("client nonce must be printable ASCII without commas")
        self._password = saslprep(password)
        self._client_nonce = nonce
        # PostgreSQL ignores the SCRAM user name (it has the StartupMessage's) and libpq
        # sends it empty; ``username`` exists for RFC test vectors and other servers.
        saslname = username.replace("=", "=3D").replace(",", "=2C")
        self._client_first_bare = f"n={saslname},r={nonce}".encode()
        self._state = "start"
        self._expected_server_signature = b""

    @property
    def mechanism(self) -> str:
        """The SASL mechanism chosen, to name in SASLInitialResponse."""
        return self._mechanism

    def client_first(self) -> bytes:
        """Return client-first-message (the SASLInitialResponse data)."""
        if self._state != "start":
            raise AuthError(f"client_first() called in state {self._state}")
        self._state = "sent_first"
        return self._gs2_header + self._client_first_bare

    def client_final(self, server_first: bytes) -> bytes:
        """Check server-first-message and return client-final-message with the proof."""
        if self._state != "sent_first":
            raise AuthError(f"client_final() called in state {self._state}")
        self._state = "failed"
        attrs = _split_attributes(server_first, "server-first-message")
        if attrs and attrs[0][0] == "m":
            raise AuthError("server requires an unsupported SCRAM extension")
        if attrs and attrs[0][0] == "e":
            raise AuthError(f"server reported SCRAM error: {attrs[0][1]}")
        if len(attrs) < 3 or [k for k, _ in attrs[:3]] != ["r", "s", "i"]:
            raise AuthError("malformed SCRAM server-first-message: expected r=, s=, i=")
        nonce, salt_b64, iter_text = (v for _, v in attrs[:3])
        if not _printable_nonce(nonce):
            raise AuthError("server nonce contains invalid characters")
        if not nonce.startswith(self._client_nonce) or len(nonce) == len(self._client_nonce):
            raise AuthError("server nonce does not extend the client nonce")
        salt = _b64decode(salt_b64, "salt")
        if not salt:
            raise AuthError("SCRAM salt is empty")
        if not iter_text.isascii() or not iter_text.isdigit() or len(iter_text) > 9:
            raise AuthError(f"SCRAM iteration count is invalid: {iter_text[:20]!r}")
        iterations = int(iter_text)
        if iterations < 1 or iterations > MAX_ITERATIONS:
            raise AuthError(f"SCRAM iteration count {iterations} is out of range")

        channel_binding = base64.b64encode(self._gs2_header + self._cbind_data)
        without_proof = b"c=" + channel_binding + b",r=" + nonce.encode("ascii")
        auth_message = self._client_first_bare + b"," + server_first + b"," + without_proof

        salted = hashlib.pbkdf2_hmac("sha256", self._password, salt, iterations)
        client_key = _hmac(salted, b"Client Key")
        stored_key = hashlib.sha256(client_key).digest()
        client_signature = _hmac(stored_key, auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, client_signature, strict=True))
        self._expected_server_signature = _hmac(_hmac(salted, b"Server Key"), auth_message)
        self._state = "sent_final"
        return without_proof + b",p=" + base64.b64encode(proof)

    def verify_server_final(self, server_final: bytes) -> None:
        """Check server-final-message; raise ``AuthError`` unless the server proved itself."""
        if self._state != "sent_final":
            raise AuthError(f"verify_server_final() called in state {self._state}")
        self._state = "failed"
        attrs = _split_attributes(server_final, "server-final-message")
        key, value = attrs[0]
        if key == "e":
            raise AuthError(f"server reported SCRAM error: {value}")
        if key != "v":
            raise AuthError("malformed SCRAM server-final-message: expected v=")
        signature = _b64decode(value, "server signature")
        if not hmac.compare_digest(signature, self._expected_server_signature):
            raise AuthError("SCRAM server signature does not match: the server is not who it claims")
        self._state = "done"

    @property
    def done(self) -> bool:
        """True once the server's signature has been verified."""
        return self._state == "done"
