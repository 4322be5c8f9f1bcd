from __future__ import annotations

import base64
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from dbsentry.identity.tokens import TokenInfo, TokenStore, parse_duration


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[TokenStore]:
    s = TokenStore(tmp_path / "state", clock=clock)
    yield s
    s.close()


def test_create_and_verify(store: TokenStore, clock: Clock) -> None:
    token, info = store.create("alice@example.com", ["dev", "ops", "dev"], "human", 3600)
    assert token.startswith(f"dbs_{info.id}_")
    assert info.identity == "alice@example.com"
    assert info.groups == ("dev", "ops")
    assert info.kind == "human"
    assert info.created_at == clock.now
    assert info.expires_at == clock.now + 3600
    assert info.revoked_at is None and info.last_used_at is None

    ident = store.verify(token)
    assert ident is not None
    assert ident.name == "alice@example.com"
    assert ident.groups == frozenset({"dev", "ops"})
    assert ident.kind == "human"
    assert ident.source == "token"
    assert ident.token_id == info.id
    assert ident.expires_at == info.expires_at
    got = store.get(info.id)
    assert got is not None and got.last_used_at == clock.now


def test_agent_token_without_expiry(store: TokenStore) -> None:
    token, info = store.create("claude-agent", [], "agent", None)
    assert info.expires_at is None
    ident = store.verify(token)
    assert ident is not None and ident.is_agent and ident.groups == frozenset()
    assert ident.expires_at is None


def test_token_shape(store: TokenStore) -> None:
    token, info = store.create("bob", [], "human", None)
    prefix, rest = token[:4], token[4:]
    assert prefix == "dbs_"
    token_id, _, secret = rest.partition("_")
    assert token_id == info.id
    assert len(base64.urlsafe_b64decode(secret + "=")) == 32


def test_db_holds_no_plaintext_secret(store: TokenStore, tmp_path: Path) -> None:
    token, info = store.create("carol", ["g"], "human", None)
    assert store.verify(token) is not None
    secret = token[len(f"dbs_{info.id}_") :]
    raw_secret = base64.urlsafe_b64decode(secret + "=")
    store.close()
    state = tmp_path / "state"
    blob = b"".join(p.read_bytes() for p in state.iterdir() if p.name.startswith("tokens.db"))
    assert info.id.encode() in blob  # the file is the one we think it is
    assert secret.encode() not in blob
    assert token.encode() not in blob
    assert raw_secret not in blob


def test_file_and_dir_modes(tmp_path: Path) -> None:
    state = tmp_path / "new" / "state"
    with TokenStore(state) as s:
        s.create("x", [], "human", None)
        assert stat.S_IMODE(state.stat().st_mode) == 0o700
        for p in state.iterdir():
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p.name


def test_wal_mode(store: TokenStore) -> None:
    import sqlite3

    db = sqlite3.connect(store.path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        db.close()


def test_wrong_secret_with_right_id_rejected(store: TokenStore) -> None:
    token, info = store.create("dave", [], "human", None)
    other = base64.urlsafe_b64encode(b"\x01" * 32).rstrip(b"=").decode()
    assert store.verify(f"dbs_{info.id}_{other}") is None
    # one character changed
    last = token[-2]
    flipped = token[:-2] + ("A" if last != "A" else "B") + token[-1]
    assert store.verify(flipped) is None
    assert store.verify(token) is not None


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "dbs_",
        "dbs_abc",
        "dbs_0123456789ab_",
        "dbs_0123456789ab_short",
        "dbs_0123456789AB_" + "A" * 43,
        "dbs_0123456789ab_" + "A" * 44,
        "dbs_0123456789ab_" + "!" * 43,
        "xyz_0123456789ab_" + "A" * 43,
        "dbs_0123456789ab_" + "A" * 42 + "\u00e9",
    ],
)
def test_malformed_rejected(store: TokenStore, bad: str) -> None:
    assert store.verify(bad) is None


def test_unknown_id_rejected(store: TokenStore) -> None:
    token, info = store.create("erin", [], "human", None)
    other_id = "0" * 12 if info.id != "0" * 12 else "1" * 12
    assert store.verify(token.replace(info.id, other_id, 1)) is None


def test_expiry(store: TokenStore, clock: Clock) -> None:
    token, _ = store.create("frank", [], "human", 60)
    clock.now += 59
    assert store.verify(token) is not None
    clock.now += 1
    assert store.verify(token) is None


def test_revoke(store: TokenStore, clock: Clock) -> None:
    token, info = store.create("grace", [], "human", None)
    keep, _ = store.create("heidi", [], "human", None)
    clock.now += 5
    assert store.revoke(info.id) is True
    assert store.revoke(info.id) is False
    assert store.revoke("nonexistent") is False
    assert store.verify(token) is None
    assert store.verify(keep) is not None
    assert [t.identity for t in store.list()] == ["heidi"]
    listed = {t.id: t for t in store.list(include_revoked=True)}
    assert listed[info.id].revoked_at == clock.now


def test_list(store: TokenStore, clock: Clock) -> None:
    assert store.list() == []
    _, a = store.create("a", ["x"], "human", 10)
    clock.now += 1
    _, b = store.create("b", [], "agent", None)
    clock.now += 100
    infos = store.list()
    assert infos == [a, b]  # expired tokens are still listed
    assert all(isinstance(t, TokenInfo) for t in infos)
    assert not infos[0].active(clock.now)
    assert infos[1].active(clock.now)
    with pytest.raises(AttributeError):
        infos[0].identity = "z"  # type: ignore[misc]


def test_persists_across_reopen(tmp_path: Path) -> None:
    with TokenStore(tmp_path) as s:
        token, info = s.create("ivan", ["g"], "agent", None)
    with TokenStore(tmp_path) as s:
        ident = s.verify(token)
        assert ident is not None and ident.token_id == info.id and ident.is_agent


@pytest.mark.parametrize(
    ("identity", "groups", "kind", "ttl"),
    [
        ("", [], "human", None),
        ("a\x00b", [], "human", None),
        ("a", [""], "human", None),
        ("a", [], "robot", None),
        ("a", [], "human", 0),
        ("a", [], "human", -5),
    ],
)
def test_create_validates(
    store: TokenStore, identity: str, groups: list[str], kind: str, ttl: float | None
) -> None:
    with pytest.raises(ValueError):
        store.create(identity, groups, kind, ttl)  # type: ignore[arg-type]


def test_create_rejects_string_groups(store: TokenStore) -> None:
    with pytest.raises(TypeError):
        store.create("a", "dev", "human", None)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("30m", 1800),
        ("8h", 28800),
        ("7d", 604800),
        ("1h30m", 5400),
        ("1d2h3m4s", 93784),
        (" 2H ", 7200),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text", ["", "   ", "90", "h", "1x", "30m1h", "1h1h", "-5m", "1.5h", "0s", "0h0m", "1 h", "abc"]
)
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)
