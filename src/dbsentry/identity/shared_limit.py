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
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Protocol

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


class _Tx(Protocol):
    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[Sequence[Any]]: ...

    def run(self, sql: str, params: Sequence[Any] = ()) -> int: ...


class SqlLoginLimiter(Limits):
    """The limiter's rules over two tables (``@Ppairs``, ``@Paddress_failures``); the
    SQLite and PostgreSQL stores give the transactions."""

    _PREFIX = ""
    _GREATEST = "max"

    def __init__(
        self,
        max_failures: int,
        window_seconds: float,
        *,
        max_failures_per_address: int,
        max_backoff_seconds: float,
        clock: Callable[[], float],
    ) -> None:
        super().__init__(max_failures, window_seconds, max_failures_per_address, max_backoff_seconds)
        self._clock = clock
        self._failures = 0

    def _tx(self, *, write: bool, key: str = "") -> AbstractContextManager[_Tx]:
        """A transaction; ``write`` ones are serialised (per ``key`` where the store can)."""
        raise NotImplementedError

    def _sql(self, sql: str) -> str:
        return sql.replace("@P", self._PREFIX)

    def retry_after(self, address: str, identity: str) -> int | None:
        """Seconds until ``identity`` may try again from ``address``; None if it may now."""
        now = self._clock()
        with self._tx(write=False) as tx:
            wait = 0.0
            times = tx.rows(
                self._sql("SELECT at FROM @Paddress_failures WHERE address = ? ORDER BY at DESC LIMIT ?"),
                (address, self.max_failures_per_address),
            )
            if len(times) >= self.max_failures_per_address:
                wait = times[-1][0] + self.window_seconds - now
            row = tx.rows(self._sql("SELECT until FROM @Ppairs WHERE address = ? AND identity = ?"), (address, identity))
            if row:
                wait = max(wait, row[0][0] - now)
        return math.ceil(wait) if wait > 0 else None

    def failure(self, address: str, identity: str) -> None:
        now = self._clock()
        with self._tx(write=True, key=address) as tx:
            row = tx.rows(
                self._sql("SELECT failures, last, until FROM @Ppairs WHERE address = ? AND identity = ?"), (address, identity)
            )
            failures = 0
            if row and now < max(row[0][2], row[0][1]) + self.window_seconds:
                failures = row[0][0]  # not quiet yet: the count goes on
            failures += 1
            over = failures - self.max_failures
            until = 0.0
            if over >= 0:
                until = now + min(self.max_backoff_seconds, self.window_seconds * 2.0 ** min(over, 32))
            tx.run(
                self._sql(
                    "INSERT INTO @Ppairs (address, identity, failures, last, until) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (address, identity) DO UPDATE SET failures = excluded.failures, "
                    "last = excluded.last, until = excluded.until"
                ),
                (address, identity, failures, now, until),
            )
            tx.run(self._sql("INSERT INTO @Paddress_failures (address, at) VALUES (?, ?)"), (address, now))
            self._failures += 1
            if self._failures % _PRUNE_EVERY == 0:
                # Forget quiet pairs and address failures older than the window.
                tx.run(
                    self._sql(f"DELETE FROM @Ppairs WHERE {self._GREATEST}(until, last) + ? <= ?"),
                    (self.window_seconds, now),
                )
                tx.run(self._sql("DELETE FROM @Paddress_failures WHERE at <= ?"), (now - self.window_seconds,))

    def success(self, address: str, identity: str) -> None:
        """``identity`` proved itself from ``address``: forget that pair, and only it."""
        with self._tx(write=False) as tx:
            known = tx.rows(self._sql("SELECT 1 FROM @Ppairs WHERE address = ? AND identity = ?"), (address, identity))
        if known:  # most logins have no failures behind them: no write
            with self._tx(write=True, key=address) as tx:
                tx.run(self._sql("DELETE FROM @Ppairs WHERE address = ? AND identity = ?"), (address, identity))


class _SQLiteTx:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[Sequence[Any]]:
        return list(self._db.execute(sql, params).fetchall())

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._db.execute(sql, params).rowcount


class SharedLoginLimiter(SqlLoginLimiter):
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
        super().__init__(
            max_failures, window_seconds, max_failures_per_address=max_failures_per_address,
            max_backoff_seconds=max_backoff_seconds, clock=clock,
        )
        self._lock = threading.Lock()
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

    @contextmanager
    def _tx(self, *, write: bool, key: str = "") -> Iterator[_Tx]:
        with self._lock:
            if not write:
                yield _SQLiteTx(self._db)
                return
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield _SQLiteTx(self._db)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
