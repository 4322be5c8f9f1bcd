"""dbsentry tokens: long random secrets handed to people and agents, stored only as hashes.

A token reads ``dbs_<id>_<secret>``.  The id is public (it names the token in listings, the
audit log and ``revoke``); the secret is 32 random bytes, shown once by :meth:`TokenStore.create`
and never stored.  The store is one SQLite file, ``<state_dir>/tokens.db``, readable only by
its owner.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import hashlib
import hmac
import json
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from dbsentry.identity.model import Identity, Kind

TOKEN_PREFIX = "dbs_"
_ID_BYTES = 6  # 12 hex characters: enough to be unique in one store, short enough to read aloud
_SECRET_BYTES = 32
_ID_RE = re.compile(r"[0-9a-f]{12}")
_SECRET_RE = re.compile(r"[A-Za-z0-9_-]{43}")  # 32 bytes, url-safe base64 without padding
# last_used_at is informational; writing it on every login would turn each connection into
# a disk write, so it is refreshed at most this often per token.
_LAST_USED_GRANULARITY = 60.0
_SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    id            TEXT PRIMARY KEY,
    secret_hash   BLOB NOT NULL,
    identity      TEXT NOT NULL,
    groups_json   TEXT NOT NULL,
    kind          TEXT NOT NULL CHECK (kind IN ('human', 'agent')),
    created_at    REAL NOT NULL,
    expires_at    REAL,
    revoked_at    REAL,
    last_used_at  REAL
)
"""
_COLUMNS = "id, identity, groups_json, kind, created_at, expires_at, revoked_at, last_used_at"


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """What the store knows about a token; never the secret."""

    id: str
    identity: str
    groups: tuple[str, ...]
    kind: Kind
    created_at: float  # unix time, as are the others
    expires_at: float | None
    revoked_at: float | None
    last_used_at: float | None

    def active(self, now: float) -> bool:
        """True if the token is neither revoked nor expired at ``now``."""
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)


_DURATION_RE = re.compile(
    r"(?:(?P<d>\d{1,9})d)?(?:(?P<h>\d{1,9})h)?(?:(?P<m>\d{1,9})m)?(?:(?P<s>\d{1,9})s)?"
)
_UNIT_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(text: str) -> float:
    """Seconds in a duration like ``90s``, ``30m``, ``8h``, ``7d`` or ``1h30m``.

    Units go from largest to smallest, each at most once.  Raises ValueError for anything
    else, including a bare number (ambiguous) and a zero duration.
    """
    cleaned = text.strip().lower()
    match = _DURATION_RE.fullmatch(cleaned)
    if not cleaned or match is None:
        raise ValueError(
            f"invalid duration {text!r}: use a number with a unit (s, m, h, d), like 90s, 30m, 8h, 7d or 1h30m"
        )
    seconds = sum(int(v) * _UNIT_SECONDS[u] for u, v in match.groupdict().items() if v is not None)
    if seconds <= 0:
        raise ValueError(f"invalid duration {text!r}: must be longer than zero")
    return float(seconds)


def _hash_secret(secret: bytes) -> bytes:
    # A plain SHA-256 is enough here, unlike for passwords: the secret is 256 random bits,
    # so nothing that a slow, salted hash (bcrypt, scrypt) protects against -- dictionary or
    # brute-force search of a stolen database -- is feasible, and verification stays cheap
    # enough to run on every connection.
    return hashlib.sha256(secret).digest()


def _parse_token(token: str) -> tuple[str, bytes] | None:
    """(id, secret bytes) from ``dbs_<id>_<secret>``, or None if it does not have that shape."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    token_id, sep, secret_text = token[len(TOKEN_PREFIX) :].partition("_")
    if not sep or not _ID_RE.fullmatch(token_id) or not _SECRET_RE.fullmatch(secret_text):
        return None
    try:
        secret = base64.urlsafe_b64decode(secret_text + "=")
    except (binascii.Error, ValueError):
        return None
    if len(secret) != _SECRET_BYTES:
        return None
    return token_id, secret


def _open_private_file(path: Path) -> None:
    """Create ``path`` readable by its owner only (or tighten it if it exists)."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)


class DuplicateTokenId(Exception):
    """The drawn token id exists already (draw again)."""


class TokenStoreBase:
    """What a token store does, over four small storage operations (SQL with ``?``
    placeholders) that the SQLite and PostgreSQL stores implement."""

    _clock: Callable[[], float]

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> builtins.list[Sequence[Any]]:
        raise NotImplementedError

    def _run(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a write; the number of rows it changed."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> TokenStoreBase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def create(
        self,
        identity: str,
        groups: Sequence[str],
        kind: Kind,
        ttl_seconds: float | None,
    ) -> tuple[str, TokenInfo]:
        """Make a token; returns its plaintext (shown once, never stored) and its info."""
        if not identity or "\x00" in identity:
            raise ValueError("identity must be a non-empty string without NUL characters")
        if isinstance(groups, str):
            raise TypeError("groups must be a sequence of group names, not one string")
        if any(not isinstance(g, str) or not g for g in groups):
            raise ValueError("groups must be non-empty strings")
        if kind not in get_args(Kind):
            raise ValueError(f"kind must be one of {', '.join(get_args(Kind))}, got {kind!r}")
        if ttl_seconds is not None and not ttl_seconds > 0:
            raise ValueError(
                "ttl_seconds must be positive (or None for a token that never expires)"
            )
        group_tuple = tuple(sorted(set(groups)))
        secret = secrets.token_bytes(_SECRET_BYTES)
        secret_text = base64.urlsafe_b64encode(secret).rstrip(b"=").decode("ascii")
        now = self._clock()
        expires_at = None if ttl_seconds is None else now + ttl_seconds
        for attempt in range(5):
            token_id = secrets.token_hex(_ID_BYTES)
            inserted = self._run(
                "INSERT INTO tokens (id, secret_hash, identity, groups_json, kind, created_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                (token_id, _hash_secret(secret), identity, json.dumps(group_tuple), kind, now, expires_at),
            )
            if inserted == 1:
                break
            if attempt == 4:
                raise DuplicateTokenId(token_id)
            # the id collided with an existing one: draw again
        info = TokenInfo(token_id, identity, group_tuple, kind, now, expires_at, None, None)
        return f"{TOKEN_PREFIX}{token_id}_{secret_text}", info

    def get(self, token_id: str) -> TokenInfo | None:
        rows = self._rows(f"SELECT {_COLUMNS} FROM tokens WHERE id = ?", (token_id,))
        return _info(rows[0]) if rows else None

    def list(self, include_revoked: bool = False) -> builtins.list[TokenInfo]:
        """All tokens, oldest first; expired ones included, revoked ones only if asked."""
        where = "" if include_revoked else " WHERE revoked_at IS NULL"
        return [_info(r) for r in self._rows(f"SELECT {_COLUMNS} FROM tokens{where} ORDER BY created_at, id")]

    def revoke(self, token_id: str) -> bool:
        """Revoke a token; False if there is no such token or it was already revoked."""
        changed = self._run(
            "UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (self._clock(), token_id)
        )
        return changed == 1

    def verify(self, token: str) -> Identity | None:
        """The identity a token proves, or None if it is malformed, unknown, expired or revoked."""
        parsed = _parse_token(token)
        if parsed is None:
            return None
        token_id, secret = parsed
        presented = _hash_secret(secret)
        rows = self._rows(f"SELECT secret_hash, {_COLUMNS} FROM tokens WHERE id = ?", (token_id,))
        if not rows:
            return None
        row = rows[0]
        if not hmac.compare_digest(presented, bytes(row[0])):
            return None
        info = _info(row[1:])
        now = self._clock()
        if not info.active(now):
            return None
        if info.last_used_at is None or now - info.last_used_at >= _LAST_USED_GRANULARITY:
            self._run("UPDATE tokens SET last_used_at = ? WHERE id = ?", (now, token_id))
        return Identity(
            name=info.identity,
            groups=frozenset(info.groups),
            kind=info.kind,
            token_id=info.id,
            source="token",
            expires_at=info.expires_at,
        )


class TokenStore(TokenStoreBase):
    """dbsentry tokens in ``<state_dir>/tokens.db``.

    Safe to share between threads (the shell may verify in an executor): one connection,
    guarded by a lock.
    """

    def __init__(self, state_dir: Path, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        if not state_dir.exists():
            state_dir.mkdir(mode=0o700, parents=True)
            os.chmod(state_dir, 0o700)  # mkdir's mode is filtered by the umask
        self.path = state_dir / "tokens.db"
        # SQLite gives the -wal and -shm files the database file's permissions, so creating
        # it 0600 before SQLite touches it covers all three.
        _open_private_file(self.path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > _SCHEMA_VERSION:
                self._db.close()
                raise RuntimeError(
                    f"{self.path} was written by a newer dbsentry (schema {version}, this one knows {_SCHEMA_VERSION})"
                )
            self._db.execute(_SCHEMA)
            self._db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> TokenStore:
        return self

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> builtins.list[Sequence[Any]]:
        with self._lock:
            return list(self._db.execute(sql, params).fetchall())

    def _run(self, sql: str, params: Sequence[Any] = ()) -> int:
        with self._lock:
            return self._db.execute(sql, params).rowcount


def _info(row: Any) -> TokenInfo:
    token_id, identity, groups_json, kind, created_at, expires_at, revoked_at, last_used_at = row
    return TokenInfo(
        id=str(token_id),
        identity=str(identity),
        groups=tuple(str(g) for g in json.loads(groups_json)),
        # the table's CHECK constraint admits only these two
        kind="agent" if kind == "agent" else "human",
        created_at=float(created_at),
        expires_at=None if expires_at is None else float(expires_at),
        revoked_at=None if revoked_at is None else float(revoked_at),
        last_used_at=None if last_used_at is None else float(last_used_at),
    )
