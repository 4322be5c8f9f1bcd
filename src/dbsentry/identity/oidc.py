"""OIDC: verifying a JWT from the organisation's identity provider.

The signing keys come from a JWKS document, read from ``identity.oidc.jwks_file`` or fetched
from ``identity.oidc.jwks_url``.  They are cached for ``jwks_cache_seconds`` and fetched again
early when a token names a key id we do not know (the provider rotated its keys), but never
more than once per :data:`REFRESH_MIN_INTERVAL` seconds: a forged ``kid`` must not turn each
login attempt into a request to the provider.

:meth:`OIDCVerifier.verify` blocks while it fetches keys.  With ``jwks_url`` configured
(:attr:`OIDCVerifier.needs_io`), call it from a thread, not on the event loop.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PublicKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from dbsentry.identity.model import Identity, Kind

if TYPE_CHECKING:
    from dbsentry.config import OIDCConfig

log = logging.getLogger("dbsentry.identity")

REFRESH_MIN_INTERVAL = 30.0
MAX_TOKEN_CHARS = 64 * 1024
_FETCH_TIMEOUT_SECONDS = 10.0
_MAX_JWKS_BYTES = 1024 * 1024
_GROUP_SEPARATORS = re.compile(r"[\s,]+")

_PublicKey = RSAPublicKey | EllipticCurvePublicKey | Ed25519PublicKey | Ed448PublicKey

# The only algorithms a key may be used with, by the key's own type.  HMAC and "none" are
# absent on purpose: a token claiming HS256 is never checked against a public key used as an
# HMAC secret, because no key fits it.
_EC_CURVES = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}


def _key_fits(alg: str, key: _PublicKey) -> bool:
    if alg in ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"):
        return isinstance(key, RSAPublicKey)
    if alg in _EC_CURVES:
        return isinstance(key, EllipticCurvePublicKey) and key.curve.name == _EC_CURVES[alg]
    if alg == "EdDSA":
        return isinstance(key, Ed25519PublicKey | Ed448PublicKey)
    return False


@dataclass(frozen=True, slots=True)
class _Key:
    kid: str | None
    alg: str | None  # the JWK's own "alg", if it names one
    key: _PublicKey


def _public(key: Any) -> _PublicKey:
    # A JWKS should hold public keys only, but if a private one slips in we keep its public half.
    if not isinstance(key, _PublicKey):
        key = key.public_key()
    if not isinstance(key, _PublicKey):
        raise ValueError(f"unsupported key object {type(key).__name__}")
    return key


def _parse_jwks(raw: bytes) -> list[_Key]:
    """The signing keys in a JWKS document; raises ValueError if there are none usable."""
    doc = json.loads(raw)
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError('a JWKS document is a JSON object with a "keys" list')
    keys: list[_Key] = []
    for n, jwk in enumerate(doc["keys"]):
        if not isinstance(jwk, dict):
            log.debug("JWKS key %d skipped: not an object", n)
            continue
        if jwk.get("use", "sig") != "sig":
            continue
        kid, alg, kty = jwk.get("kid"), jwk.get("alg"), jwk.get("kty")
        if (kid is not None and not isinstance(kid, str)) or (
            alg is not None and not isinstance(alg, str)
        ):
            log.debug("JWKS key %d skipped: kid and alg must be strings", n)
            continue
        try:
            if kty == "RSA":
                key = _public(RSAAlgorithm.from_jwk(jwk))
            elif kty == "EC":
                key = _public(ECAlgorithm.from_jwk(jwk))
            elif kty == "OKP":
                key = _public(OKPAlgorithm.from_jwk(jwk))
            else:
                log.debug("JWKS key %d (kid %r) skipped: key type %r is not used", n, kid, kty)
                continue
        except (jwt.InvalidKeyError, ValueError, TypeError, KeyError) as err:
            log.debug("JWKS key %d (kid %r) skipped: %s", n, kid, err)
            continue
        keys.append(_Key(kid, alg, key))
    if not keys:
        raise ValueError("the JWKS document has no usable signing keys")
    return keys


def _urllib_fetch(url: str) -> bytes:
    parts = urllib.parse.urlsplit(url)
    # Keys fetched over plain HTTP could be replaced by anyone on the path, which would let them
    # mint identities; plain HTTP is only accepted to the local machine (a test provider).
    if parts.scheme != "https" and not (parts.scheme == "http" and _is_loopback(parts.hostname)):
        raise ValueError(f"refusing to fetch JWKS from {url!r}: use https")
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    with urllib.request.urlopen(request, timeout=_FETCH_TIMEOUT_SECONDS) as response:
        body: bytes = response.read(_MAX_JWKS_BYTES + 1)
    if len(body) > _MAX_JWKS_BYTES:
        raise ValueError(f"JWKS document at {url!r} is larger than {_MAX_JWKS_BYTES} bytes")
    return body


def _is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Rejected(Exception):
    """A token failed verification; the message says why (logged at debug)."""


class OIDCVerifier:
    """Verifies OIDC JWTs against the configured issuer, audience and keys.

    ``fetch`` fetches a URL's body (default: urllib, https only); ``clock`` is monotonic time
    for the key cache.  Thread-safe.
    """

    def __init__(
        self,
        config: OIDCConfig,
        fetch: Callable[[str], bytes] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._fetch = fetch if fetch is not None else _urllib_fetch
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: list[_Key] = []
        self._loaded_at: float | None = None
        self._last_attempt: float | None = None

    @property
    def needs_io(self) -> bool:
        """True if verifying may fetch keys over the network (so call it off the event loop)."""
        return self._config.jwks_url is not None

    def refresh_keys(self) -> bool:
        """Load the keys now, if the last attempt is old enough; True if new keys were loaded.

        The shell may call this at start so that a misconfigured provider shows up at once.
        """
        with self._lock:
            now = self._clock()
            if self._last_attempt is not None and now - self._last_attempt < REFRESH_MIN_INTERVAL:
                return False
            self._last_attempt = now
            try:
                if self._config.jwks_file is not None:
                    raw = self._config.jwks_file.read_bytes()
                else:
                    assert self._config.jwks_url is not None  # the config demands one of the two
                    raw = self._fetch(self._config.jwks_url)
                keys = _parse_jwks(raw)
            except Exception as err:
                # Keep the keys we have: a provider outage should not log everyone out.
                log.warning("cannot load OIDC signing keys: %s", err)
                return False
            self._keys = keys
            self._loaded_at = now
            log.debug("loaded %d OIDC signing keys", len(keys))
            return True

    def _ensure_fresh(self) -> None:
        loaded = self._loaded_at
        if loaded is None or self._clock() - loaded >= self._config.jwks_cache_seconds:
            self.refresh_keys()

    def _candidates(self, kid: str | None, alg: str) -> tuple[list[_Key], bool]:
        """Keys that may have signed a token with this header, and whether the kid is known."""
        keys = self._keys
        named = keys if kid is None else [k for k in keys if k.kid == kid]
        fitting = [k for k in named if (k.alg is None or k.alg == alg) and _key_fits(alg, k.key)]
        return fitting, bool(named)

    def verify(self, token: str) -> Identity | None:
        """The identity a JWT proves, or None if it fails any check; never raises."""
        try:
            return self._verify(token)
        except _Rejected as err:
            log.debug("OIDC token rejected: %s", err)
        except Exception as err:
            log.debug("OIDC token rejected: %s: %s", type(err).__name__, err)
        return None

    def claimed_name(self, token: str) -> str:
        """The identity claim of ``token`` without checking anything ("" if unreadable):
        only to count failed logins by the identity they claim."""
        try:
            claims = jwt.decode(token, options={"verify_signature": False})
        except Exception:
            return ""
        name = claims.get(self._config.identity_claim) if isinstance(claims, dict) else None
        return name if isinstance(name, str) else ""

    def _verify(self, token: str) -> Identity:
        if len(token) > MAX_TOKEN_CHARS:
            raise _Rejected(f"longer than {MAX_TOKEN_CHARS} characters")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as err:
            raise _Rejected(f"malformed: {err}") from None
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or alg not in self._config.algorithms:
            raise _Rejected(
                f"algorithm {alg!r} is not allowed (allowed: {', '.join(self._config.algorithms)})"
            )
        if kid is not None and not isinstance(kid, str):
            raise _Rejected("kid is not a string")

        self._ensure_fresh()
        candidates, known = self._candidates(kid, alg)
        if not known and kid is not None:
            # Perhaps the provider rotated its keys; refresh_keys rate-limits itself.
            self.refresh_keys()
            candidates, known = self._candidates(kid, alg)
        if not known:
            raise _Rejected(f"no signing key with kid {kid!r}")
        if not candidates:
            raise _Rejected(f"no signing key with kid {kid!r} fits algorithm {alg}")

        claims = self._decode(token, alg, candidates)
        return self._identity(claims)

    def _decode(self, token: str, alg: str, candidates: list[_Key]) -> dict[str, Any]:
        cfg = self._config
        for candidate in candidates:
            try:
                return jwt.decode(
                    token,
                    key=candidate.key,
                    algorithms=[alg],
                    audience=cfg.audience,
                    issuer=cfg.issuer,
                    leeway=cfg.leeway_seconds,
                    options={"require": ["exp", "iss", "aud"]},
                )
            except jwt.InvalidSignatureError:
                continue  # without a kid, several keys may fit: try the next
            except jwt.InvalidTokenError as err:
                # The signature was good (PyJWT checks it before the claims), the claims not.
                raise _Rejected(f"{type(err).__name__}: {err}") from None
        raise _Rejected("bad signature")

    def _identity(self, claims: Mapping[str, Any]) -> Identity:
        cfg = self._config
        name = claims.get(cfg.identity_claim)
        if not isinstance(name, str) or not name or "\x00" in name:
            raise _Rejected(f"claim {cfg.identity_claim!r} is missing or not a non-empty string")
        if cfg.identity_claim == "email" and claims.get("email_verified") is False:
            # Some providers let users set an address they do not own; they say so here.
            raise _Rejected("email_verified is false")
        groups = _groups(claims.get(cfg.groups_claim), cfg.groups_claim)
        kind_value = claims.get(cfg.kind_claim)
        kind: Kind = "agent" if kind_value is True or kind_value == cfg.agent_value else "human"
        ref = claims.get("jti") or claims.get("sub") or name
        return Identity(
            name=name,
            groups=groups,
            kind=kind,
            token_id=f"oidc:{ref}",
            source="oidc",
            expires_at=float(claims["exp"]),
        )


def _groups(value: Any, claim: str) -> frozenset[str]:
    if value is None:
        return frozenset()
    if isinstance(value, str):
        return frozenset(g for g in _GROUP_SEPARATORS.split(value) if g)
    if isinstance(value, list) and all(isinstance(g, str) for g in value):
        return frozenset(g for g in value if g)
    raise _Rejected(f"claim {claim!r} is neither a list of strings nor a string")
