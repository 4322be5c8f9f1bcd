from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from dbsentry.config import Config
from dbsentry.identity import Authenticator, Identity, LoginThrottled

ISSUER = "https://idp.example.com/"
URL = "https://idp.example.com/jwks.json"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
JWKS = json.dumps(
    {"keys": [{**RSAAlgorithm.to_jwk(KEY.public_key(), as_dict=True), "kid": "k1"}]}
).encode()


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def make_jwt(email: str = "alice@example.com", **extra: Any) -> str:
    now = int(time.time())
    payload = {"iss": ISSUER, "aud": "dbsentry", "sub": "u1", "email": email, "exp": now + 300}
    payload.update(extra)
    return jwt.encode(payload, KEY, algorithm="RS256", headers={"kid": "k1"})


def make_config(tmp_path: Path, oidc: bool = True, **identity: Any) -> Config:
    ident: dict[str, Any] = {"max_failures": 3, "failure_window_seconds": 60, **identity}
    if oidc:
        ident["oidc"] = {"issuer": ISSUER, "audience": "dbsentry", "jwks_url": URL}
    return Config.model_validate({"state_dir": str(tmp_path / "state"), "identity": ident})


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def auth(tmp_path: Path, clock: Clock) -> Iterator[Authenticator]:
    a = Authenticator(make_config(tmp_path), fetch=lambda url: JWKS, clock=clock)
    yield a
    a.close()


def test_token_login(auth: Authenticator) -> None:
    token, info = auth.tokens.create("svc-agent", ["etl"], "agent", 3600)
    ident = auth.authenticate("svc-agent", token, "10.0.0.1")
    assert isinstance(ident, Identity)
    assert ident.name == "svc-agent" and ident.is_agent and ident.token_id == info.id


def test_token_for_other_user_rejected(auth: Authenticator) -> None:
    token, _ = auth.tokens.create("alice", [], "human", None)
    assert auth.authenticate("bob", token, "10.0.0.1") is None
    assert auth.authenticate("Alice", token, "10.0.0.2") is None
    assert auth.authenticate("alice ", token, "10.0.0.3") is None
    assert auth.authenticate("alice", token, "10.0.0.4") is not None


def test_oidc_login(auth: Authenticator) -> None:
    ident = auth.authenticate("alice@example.com", make_jwt(groups=["dev"]), "10.0.0.1")
    assert ident is not None and ident.source == "oidc" and ident.groups == frozenset({"dev"})


def test_oidc_for_other_user_rejected(auth: Authenticator) -> None:
    assert auth.authenticate("bob@example.com", make_jwt(), "10.0.0.1") is None


def test_jwt_without_oidc_configured(tmp_path: Path) -> None:
    with_tokens_only = Authenticator(make_config(tmp_path, oidc=False))
    try:
        assert with_tokens_only.oidc is None and not with_tokens_only.needs_io
        assert with_tokens_only.authenticate("alice@example.com", make_jwt(), "1.2.3.4") is None
    finally:
        with_tokens_only.close()


def test_needs_io(auth: Authenticator) -> None:
    assert auth.needs_io


@pytest.mark.parametrize("password", ["", "hunter2", "a.b", "x" * 70_000, "dbs_" + "x" * 70_000])
def test_other_passwords_rejected(auth: Authenticator, password: str) -> None:
    assert auth.authenticate("alice@example.com", password, "10.0.0.1") is None
    assert auth.limiter._pairs[("10.0.0.1", "alice@example.com")].failures == 1


def test_throttled_login_not_checked(auth: Authenticator, clock: Clock) -> None:
    token, _ = auth.tokens.create("alice", [], "human", None)
    for _ in range(3):
        assert auth.authenticate("alice", "dbs_wrong", "10.0.0.9") is None
    calls: list[str] = []
    real_verify = auth.tokens.verify

    def spy(t: str) -> Identity | None:
        calls.append(t)
        return real_verify(t)

    auth.tokens.verify = spy  # type: ignore[method-assign, assignment]
    with pytest.raises(LoginThrottled) as err:
        auth.authenticate("alice", token, "10.0.0.9")  # right token, but throttled
    assert err.value.message == "too many failed logins from this address; retry in 60 s"
    assert calls == []
    assert auth.authenticate("alice", token, "10.0.0.10") is not None  # other addresses are fine
    clock.now += 60
    assert auth.authenticate("alice", token, "10.0.0.9") is not None


def test_another_identity_still_logs_in_from_the_address(auth: Authenticator) -> None:
    token, _ = auth.tokens.create("bob", [], "human", None)
    for _ in range(5):
        with contextlib.suppress(LoginThrottled):
            auth.authenticate("alice", "dbs_wrong", "10.0.0.9")
    assert auth.authenticate("bob", token, "10.0.0.9") is not None


def test_wrong_user_counts_as_failure(auth: Authenticator) -> None:
    token, _ = auth.tokens.create("alice", [], "human", None)
    for _ in range(3):
        assert auth.authenticate("root", token, "10.0.0.7") is None
    assert auth.limiter.retry_after("10.0.0.7", "root") == 60


def test_success_of_another_identity_does_not_reset(auth: Authenticator) -> None:
    mine, _ = auth.tokens.create("mallory", [], "human", None)
    for _ in range(2):
        auth.authenticate("alice", "dbs_guess", "10.0.0.8")
        assert auth.authenticate("mallory", mine, "10.0.0.8") is not None
    auth.authenticate("alice", "dbs_guess", "10.0.0.8")
    with pytest.raises(LoginThrottled):
        auth.authenticate("alice", "dbs_guess", "10.0.0.8")


def test_success_clears_own_failures(auth: Authenticator) -> None:
    token, _ = auth.tokens.create("alice", [], "human", None)
    for _ in range(2):
        auth.authenticate("alice", "nope", "10.0.0.8")
    assert auth.authenticate("alice", token, "10.0.0.8") is not None
    for _ in range(2):
        auth.authenticate("alice", "nope", "10.0.0.8")
    assert auth.limiter.retry_after("10.0.0.8", "alice") is None


def test_api_tokens_count_by_the_identity_they_claim(auth: Authenticator) -> None:
    good, info = auth.tokens.create("alice", [], "human", None)
    assert auth.claimed_identity(good) == f"token:{info.id}"
    assert auth.claimed_identity(make_jwt("carol@example.com")) == "jwt:carol@example.com"
    assert auth.claimed_identity("garbage") == "?"
    forged = f"dbs_{info.id}_" + "A" * 43
    for _ in range(3):
        assert auth.authenticate_token(forged, "10.0.0.3") is None
    with pytest.raises(LoginThrottled):
        auth.authenticate_token(good, "10.0.0.3")  # that token id is throttled here
    other, _ = auth.tokens.create("bob", [], "human", None)
    assert auth.authenticate_token(other, "10.0.0.3") is not None


def test_state_dir_from_config(tmp_path: Path) -> None:
    a = Authenticator(make_config(tmp_path, oidc=False))
    try:
        assert a.tokens.path == tmp_path / "state" / "tokens.db"
    finally:
        a.close()
