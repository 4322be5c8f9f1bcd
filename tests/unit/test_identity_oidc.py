from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from dbsentry.config import OIDCConfig
from dbsentry.identity.oidc import REFRESH_MIN_INTERVAL, OIDCVerifier

ISSUER = "https://idp.example.com/"
AUDIENCE = "dbsentry"
URL = "https://idp.example.com/.well-known/jwks.json"

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_KEY_2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()


def jwk(key: Any, kid: str, **extra: str) -> dict[str, Any]:
    pub = key.public_key()
    if isinstance(pub, rsa.RSAPublicKey):
        d = RSAAlgorithm.to_jwk(pub, as_dict=True)
    elif isinstance(pub, ec.EllipticCurvePublicKey):
        d = ECAlgorithm.to_jwk(pub, as_dict=True)
    else:
        d = OKPAlgorithm.to_jwk(pub, as_dict=True)
    return {**d, "kid": kid, **extra}


def jwks(*keys: dict[str, Any]) -> bytes:
    return json.dumps({"keys": list(keys)}).encode()


DEFAULT_JWKS = jwks(jwk(RSA_KEY, "rsa1"), jwk(EC_KEY, "ec1"), jwk(ED_KEY, "ed1"))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Fetcher:
    def __init__(self, body: bytes = DEFAULT_JWKS) -> None:
        self.body = body
        self.calls = 0

    def __call__(self, url: str) -> bytes:
        assert url == URL
        self.calls += 1
        return self.body


def make_config(**overrides: Any) -> OIDCConfig:
    data: dict[str, Any] = {"issuer": ISSUER, "audience": AUDIENCE, "jwks_url": URL}
    data.update(overrides)
    return OIDCConfig.model_validate(data)


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    c: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-123",
        "email": "alice@example.com",
        "groups": ["dev", "oncall"],
        "iat": now,
        "exp": now + 300,
    }
    c.update(overrides)
    return {k: v for k, v in c.items() if v is not None}


def sign(
    payload: dict[str, Any],
    key: Any = RSA_KEY,
    alg: str = "RS256",
    kid: str | None = "rsa1",
    **headers: Any,
) -> str:
    h: dict[str, Any] = dict(headers)
    if kid is not None:
        h["kid"] = kid
    return jwt.encode(payload, key, algorithm=alg, headers=h)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_token(
    header: dict[str, Any], payload: dict[str, Any], signer: Callable[[bytes], bytes]
) -> str:
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    return f"{signing_input}.{b64(signer(signing_input.encode()))}"


@pytest.fixture
def fetcher() -> Fetcher:
    return Fetcher()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def verifier(fetcher: Fetcher, clock: Clock) -> OIDCVerifier:
    return OIDCVerifier(make_config(), fetcher, clock=clock)


# --- accepted ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "alg", "kid"),
    [(RSA_KEY, "RS256", "rsa1"), (EC_KEY, "ES256", "ec1"), (ED_KEY, "EdDSA", "ed1")],
)
def test_valid_token_accepted(verifier: OIDCVerifier, key: Any, alg: str, kid: str) -> None:
    payload = claims(jti="tok-1")
    ident = verifier.verify(sign(payload, key, alg, kid))
    assert ident is not None
    assert ident.name == "alice@example.com"
    assert ident.groups == frozenset({"dev", "oncall"})
    assert ident.kind == "human"
    assert ident.source == "oidc"
    assert ident.token_id == "oidc:tok-1"
    assert ident.expires_at == payload["exp"]


def test_keys_cached(verifier: OIDCVerifier, fetcher: Fetcher, clock: Clock) -> None:
    for _ in range(5):
        assert verifier.verify(sign(claims())) is not None
    assert fetcher.calls == 1
    clock.now += 3600  # jwks_cache_seconds default
    assert verifier.verify(sign(claims())) is not None
    assert fetcher.calls == 2


def test_token_id_falls_back_to_sub(verifier: OIDCVerifier) -> None:
    ident = verifier.verify(sign(claims()))
    assert ident is not None and ident.token_id == "oidc:user-123"


@pytest.mark.parametrize("value", ["agent", True])
def test_agent_kind(verifier: OIDCVerifier, value: Any) -> None:
    ident = verifier.verify(sign(claims(dbsentry_kind=value)))
    assert ident is not None and ident.kind == "agent" and ident.is_agent


@pytest.mark.parametrize("value", ["human", "Agent", False, 1, ["agent"]])
def test_not_agent_kind(verifier: OIDCVerifier, value: Any) -> None:
    ident = verifier.verify(sign(claims(dbsentry_kind=value)))
    assert ident is not None and ident.kind == "human"


def test_custom_claims(fetcher: Fetcher, clock: Clock) -> None:
    cfg = make_config(
        identity_claim="preferred_username",
        groups_claim="roles",
        kind_claim="typ",
        agent_value="bot",
        audience=["other", AUDIENCE],
    )
    v = OIDCVerifier(cfg, fetcher, clock=clock)
    ident = v.verify(sign(claims(preferred_username="alice", roles="a, b c", typ="bot")))
    assert ident is not None
    assert ident.name == "alice"
    assert ident.groups == frozenset({"a", "b", "c"})
    assert ident.kind == "agent"


def test_audience_list_in_token(verifier: OIDCVerifier) -> None:
    assert verifier.verify(sign(claims(aud=["something-else", AUDIENCE]))) is not None


def test_missing_groups_is_empty(verifier: OIDCVerifier) -> None:
    ident = verifier.verify(sign(claims(groups=None)))
    assert ident is not None and ident.groups == frozenset()


def test_jwks_file(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_bytes(DEFAULT_JWKS)
    v = OIDCVerifier(make_config(jwks_url=None, jwks_file=str(path)))
    assert not v.needs_io
    assert v.verify(sign(claims())) is not None


def test_needs_io(verifier: OIDCVerifier) -> None:
    assert verifier.needs_io


def test_leeway_honoured(verifier: OIDCVerifier) -> None:
    now = int(time.time())
    assert verifier.verify(sign(claims(exp=now - 10, iat=now - 100))) is not None
    assert verifier.verify(sign(claims(nbf=now + 10))) is not None


def test_no_kid_tries_fitting_keys(fetcher: Fetcher, clock: Clock) -> None:
    fetcher.body = jwks(jwk(RSA_KEY_2, "other"), jwk(RSA_KEY, "rsa1"))
    v = OIDCVerifier(make_config(), fetcher, clock=clock)
    assert v.verify(sign(claims(), kid=None)) is not None


# --- rejected ---------------------------------------------------------------------------------


def test_expired(verifier: OIDCVerifier) -> None:
    now = int(time.time())
    assert verifier.verify(sign(claims(exp=now - 60, iat=now - 600))) is None


def test_exp_required(verifier: OIDCVerifier) -> None:
    assert verifier.verify(sign(claims(exp=None))) is None


def test_not_yet_valid(verifier: OIDCVerifier) -> None:
    now = int(time.time())
    assert verifier.verify(sign(claims(nbf=now + 120))) is None
    assert verifier.verify(sign(claims(iat=now + 120))) is None


def test_wrong_issuer(verifier: OIDCVerifier) -> None:
    assert verifier.verify(sign(claims(iss="https://evil.example.com/"))) is None
    assert verifier.verify(sign(claims(iss=ISSUER + "x"))) is None
    assert verifier.verify(sign(claims(iss=ISSUER[:-1]))) is None
    assert verifier.verify(sign(claims(iss=None))) is None


def test_wrong_audience(verifier: OIDCVerifier) -> None:
    assert verifier.verify(sign(claims(aud="someone-else"))) is None
    assert verifier.verify(sign(claims(aud=["a", "b"]))) is None
    assert verifier.verify(sign(claims(aud=None))) is None


def test_missing_identity_claim(verifier: OIDCVerifier) -> None:
    assert verifier.verify(sign(claims(email=None))) is None
    assert verifier.verify(sign(claims(email=""))) is None
    assert verifier.verify(sign(claims(email=["alice@example.com"]))) is None


def test_unverified_email_rejected(verifier: OIDCVerifier) -> None:
    assert verifier.verify(sign(claims(email_verified=False))) is None
    assert verifier.verify(sign(claims(email_verified=True))) is not None


def test_bad_groups_claim(verifier: OIDCVerifier) -> None:
    assert verifier.verify(sign(claims(groups=["a", 1]))) is None
    assert verifier.verify(sign(claims(groups={"a": 1}))) is None


def test_bad_signature(verifier: OIDCVerifier) -> None:
    assert verifier.verify(sign(claims(), RSA_KEY_2)) is None  # right kid, wrong key
    token = sign(claims())
    head, _body, sig = token.split(".")
    tampered_body = b64(json.dumps(claims(email="mallory@example.com")).encode())
    assert verifier.verify(f"{head}.{tampered_body}.{sig}") is None


def test_unknown_kid_then_rotation(fetcher: Fetcher, clock: Clock) -> None:
    v = OIDCVerifier(make_config(), fetcher, clock=clock)
    assert v.verify(sign(claims())) is not None
    assert fetcher.calls == 1

    # The provider rotates: the new key is published after our last fetch.
    rotated = sign(claims(), RSA_KEY_2, kid="rsa2")
    fetcher.body = jwks(jwk(RSA_KEY, "rsa1"), jwk(RSA_KEY_2, "rsa2"))
    clock.now += REFRESH_MIN_INTERVAL  # the first load was long enough ago
    assert v.verify(rotated) is not None
    assert fetcher.calls == 2


def test_forged_kids_do_not_hammer_provider(fetcher: Fetcher, clock: Clock) -> None:
    v = OIDCVerifier(make_config(), fetcher, clock=clock)
    assert v.verify(sign(claims())) is not None
    clock.now += REFRESH_MIN_INTERVAL
    for n in range(50):
        assert v.verify(sign(claims(), kid=f"forged-{n}")) is None
        clock.now += 0.1
    assert fetcher.calls == 2  # one refresh for the first unknown kid, then throttled
    clock.now += REFRESH_MIN_INTERVAL
    assert v.verify(sign(claims(), kid="forged-again")) is None
    assert fetcher.calls == 3


def test_unknown_kid_right_after_load_waits(fetcher: Fetcher, clock: Clock) -> None:
    v = OIDCVerifier(make_config(), fetcher, clock=clock)
    assert v.verify(sign(claims())) is not None
    fetcher.body = jwks(jwk(RSA_KEY, "rsa1"), jwk(RSA_KEY_2, "rsa2"))
    rotated = sign(claims(), RSA_KEY_2, kid="rsa2")
    assert v.verify(rotated) is None  # too soon after the last fetch
    assert fetcher.calls == 1
    clock.now += REFRESH_MIN_INTERVAL
    assert v.verify(rotated) is not None


def test_fetch_failure_keeps_old_keys(fetcher: Fetcher, clock: Clock) -> None:
    v = OIDCVerifier(make_config(), fetcher, clock=clock)
    assert v.verify(sign(claims())) is not None

    def broken(url: str) -> bytes:
        raise OSError("connection refused")

    v._fetch = broken
    clock.now += 3600
    assert v.verify(sign(claims())) is not None


def test_no_keys_at_all() -> None:
    def broken(url: str) -> bytes:
        raise OSError("connection refused")

    v = OIDCVerifier(make_config(), broken)
    assert v.verify(sign(claims())) is None


def test_alg_none(verifier: OIDCVerifier) -> None:
    unsigned = raw_token({"alg": "none", "kid": "rsa1"}, claims(), lambda _: b"")
    assert verifier.verify(unsigned) is None
    unsigned_no_sig = unsigned.rsplit(".", 1)[0] + "."
    assert verifier.verify(unsigned_no_sig) is None
    for alg in ("None", "NONE"):
        assert (
            verifier.verify(raw_token({"alg": alg, "kid": "rsa1"}, claims(), lambda _: b"")) is None
        )


def test_hs256_with_public_key_as_secret(verifier: OIDCVerifier) -> None:
    pem = RSA_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS256", "kid": "rsa1", "typ": "JWT"}
    forged = raw_token(header, claims(), lambda m: hmac.new(pem, m, hashlib.sha256).digest())
    assert verifier.verify(forged) is None


def test_hs256_rejected_even_if_allowed_by_mistake(fetcher: Fetcher, clock: Clock) -> None:
    # The config model does not admit HS256; even if one slipped through, no key fits it.
    cfg = make_config().model_copy(update={"algorithms": ["RS256", "HS256"]})
    v = OIDCVerifier(cfg, fetcher, clock=clock)
    pem = RSA_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    forged = raw_token(
        {"alg": "HS256", "kid": "rsa1"},
        claims(),
        lambda m: hmac.new(pem, m, hashlib.sha256).digest(),
    )
    assert v.verify(forged) is None
    assert v.verify(sign(claims())) is not None


def test_rs256_signature_with_es256_header(verifier: OIDCVerifier) -> None:
    # Signed with the RSA key, but the header claims ES256 (against the RSA key's kid, and
    # against the EC key's kid): neither may verify.
    def rsa_sign(m: bytes) -> bytes:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        return RSA_KEY.sign(m, padding.PKCS1v15(), hashes.SHA256())

    assert verifier.verify(raw_token({"alg": "ES256", "kid": "rsa1"}, claims(), rsa_sign)) is None
    assert verifier.verify(raw_token({"alg": "ES256", "kid": "ec1"}, claims(), rsa_sign)) is None
    # control: the same construction with the honest header is accepted
    assert (
        verifier.verify(raw_token({"alg": "RS256", "kid": "rsa1"}, claims(), rsa_sign)) is not None
    )


def test_header_alg_must_fit_key_type(verifier: OIDCVerifier) -> None:
    # An EC-signed token pointing at the RSA key, and an RSA token pointing at the EdDSA key.
    assert verifier.verify(sign(claims(), EC_KEY, "ES256", "rsa1")) is None
    assert verifier.verify(sign(claims(), RSA_KEY, "RS256", "ed1")) is None


def test_alg_not_allowed(fetcher: Fetcher, clock: Clock) -> None:
    v = OIDCVerifier(make_config(algorithms=["ES256"]), fetcher, clock=clock)
    assert v.verify(sign(claims())) is None  # RS256 not on the list
    assert v.verify(sign(claims(), EC_KEY, "ES256", "ec1")) is not None


def test_jwk_alg_pins_key(fetcher: Fetcher, clock: Clock) -> None:
    fetcher.body = jwks(jwk(RSA_KEY, "rsa1", alg="RS384"))
    v = OIDCVerifier(make_config(algorithms=["RS256", "RS384"]), fetcher, clock=clock)
    assert v.verify(sign(claims())) is None
    assert v.verify(sign(claims(), alg="RS384")) is not None


def test_encryption_and_symmetric_keys_ignored(fetcher: Fetcher, clock: Clock) -> None:
    oct_key = {"kty": "oct", "kid": "rsa1", "k": b64(b"secret-secret-secret-secret-1234")}
    fetcher.body = jwks(oct_key, jwk(RSA_KEY, "enc", use="enc"), jwk(EC_KEY, "ec1"))
    # HS256 let through the allow-list by mistake, so that the key set itself is what stops it
    cfg = make_config().model_copy(update={"algorithms": ["RS256", "ES256", "HS256"]})
    v = OIDCVerifier(cfg, fetcher, clock=clock)
    forged = raw_token(
        {"alg": "HS256", "kid": "rsa1"},
        claims(),
        lambda m: hmac.new(b"secret-secret-secret-secret-1234", m, hashlib.sha256).digest(),
    )
    assert v.verify(forged) is None
    assert v.verify(sign(claims(), RSA_KEY, "RS256", "enc")) is None
    assert v.verify(sign(claims(), EC_KEY, "ES256", "ec1")) is not None


@pytest.mark.parametrize(
    "garbage",
    ["", "a.b.c", "...", "not a jwt", "e30.e30.", "x" * 100_000, "eyJhbGciOiJSUzI1NiJ9.!!!.???"],
)
def test_garbage_never_raises(verifier: OIDCVerifier, garbage: str) -> None:
    assert verifier.verify(garbage) is None


def test_bad_jwks_documents(clock: Clock) -> None:
    for body in (
        b"not json",
        b"[]",
        b'{"keys": {}}',
        b'{"keys": []}',
        b'{"keys": [1, {"kty": "RSA"}]}',
    ):
        v = OIDCVerifier(make_config(), Fetcher(body), clock=clock)
        assert v.verify(sign(claims())) is None
        clock.now += REFRESH_MIN_INTERVAL


def test_rejection_reason_logged(verifier: OIDCVerifier, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="dbsentry.identity"):
        assert verifier.verify(sign(claims(iss="https://evil.example.com/"))) is None
    assert any("issuer" in r.getMessage().lower() for r in caplog.records)


def test_default_fetch_refuses_plain_http() -> None:
    from dbsentry.identity.oidc import _urllib_fetch

    with pytest.raises(ValueError, match="https"):
        _urllib_fetch("http://idp.example.com/jwks.json")
    with pytest.raises(ValueError, match="https"):
        _urllib_fetch("file:///etc/passwd")
