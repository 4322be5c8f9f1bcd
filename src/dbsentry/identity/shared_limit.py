"""The failed-login limiter of :mod:`dbsentry.identity.ratelimit`, kept in SQLite so that the
workers of one node (``workers: N``) share it: ``max_failures`` failures are ``max_failures``
whichever workers the attempts land on, not N times as many.

Same rules and the same interface as :class:`~dbsentry.identity.ratelimit.LoginLimiter`;
the state is ``<state_dir>/logins.db`` (WAL, a busy timeout), times are wall-clock seconds
(shared by every process).  Stale rows are pruned as failures come in, so the file stays as
small as the in-memory tables would.
"""

from __future__ import annotations

import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from dbsentry.identity.ratelimit import Limits

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pairs (
    address TEXT NOT NULL, identity TEXT NOT NULL,
    failures INTEGER NOT NULL, last REAL NOT NULL, until REAL NOT NULL,
    PRIMARY KEY (address, identity)
);
CREATE TABLE IF NOT EXISTS address_failures (address TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS address_failures_by_address ON address_failures (address, at);
"""
_PRUNE_EVERY = 64


class SharedLoginLimiter(Limits):
    """Thread- and process-safe; ``address`` is the client's address without the port."""

    def __init__(
        self,
        path: Path,
        max_failures: int = 5,
        window_seconds: float = 60,
        *,
        max_failures_per_address: int = 100,
        max_backoff_seconds: float = 900,
        clock: Callable[[], float] = time.time,
        busy_timeout_ms: int = 5000,
    ) -> None:
        super().__init__(max_failures, window_seconds, max_failures_per_address, max_backoff_seconds)
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)  # -wal and -shm inherit the mode
        os.close(fd)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=busy_timeout_ms / 1000)
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def retry_after(self, address: str, identity: str) -> int | None:
        """Seconds until ``identity`` may try again from ``address``; None if it may now."""
        now = self._clock()
        with self._lock:
            wait = 0.0
            times = self._db.execute(
                "SELECT at FROM address_failures WHERE address = ? ORDER BY at DESC LIMIT ?",
                (address, self.max_failures_per_address),
            ).fetchall()
            if len(times) >= self.max_failures_per_address:
                wait = times[-1][0] + self.window_seconds - now
            row = self._db.execute(
                "SELECT until FROM pairs WHERE address = ? AND identity = ?", (address, identity)
            ).fetchone()
            if row is not None:
                wait = max(wait, row[0] - now)
        return math.ceil(wait) if wait > 0 else None

    def failure(self, address: str, identity: str) -> None:
        now = self._clock()
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute(
                    "SELECT failures, last, until FROM pairs WHERE address = ? AND identity = ?", (address, identity)
                ).fetchone()
                failures = 0
                if row is not None and now < max(row[2], row[1]) + self.window_seconds:
                    failures = row[0]  # not quiet yet: the count goes on
                failures += 1
                over = failures - self.max_failures
                until = 0.0
                if over >= 0:
                    until = now + min(self.max_backoff_seconds, self.window_seconds * 2.0 ** min(over, 32))
                db.execute(
                    "INSERT OR REPLACE INTO pairs (address, identity, failures, last, until) VALUES (?, ?, ?, ?, ?)",
                    (address, identity, failures, now, until),
                )
                db.execute("INSERT INTO address_failures (address, at) VALUES (?, ?)", (address, now))
                self._failures += 1
                if self._failures % _PRUNE_EVERY == 0:
                    self._prune(now)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def _prune(self, now: float) -> None:
        """Forget quiet pairs and address failures older than the window."""
        self._db.execute("DELETE FROM pairs WHERE max(until, last) + ? <= ?", (self.window_seconds, now))
        self._db.execute("DELETE FROM address_failures WHERE at <= ?", (now - self.window_seconds,))

    def success(self, address: str, identity: str) -> None:
        """``identity`` proved itself from ``address``: forget that pair, and only it."""
        with self._lock:
            known = self._db.execute(
                "SELECT 1 FROM pairs WHERE address = ? AND identity = ?", (address, identity)
            ).fetchone()
            if known is not None:  # most logins have no failures behind them: no write
                self._db.execute("DELETE FROM pairs WHERE address = ? AND identity = ?", (address, identity))
