"""The token store and the failed-login limiter in the shared control plane (PostgreSQL),
for several nodes (``control_plane:``, docs/deployment.md "Several nodes").

Same interfaces and rules as the SQLite ones (:mod:`.tokens`, :mod:`.shared_limit`); the
tables live in the control-plane schema, made by :mod:`dbsentry.controlplane`.  Every read
goes to the database, so a revocation made through any node is refused at the next login on
every node.  When the database cannot be reached, the calls raise
:class:`~dbsentry.identity.ratelimit.ControlPlaneUnavailable`: the login is refused (fail
closed); the connection is opened again at the next call.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from dbsentry.identity.shared_limit import SqlLoginLimiter
from dbsentry.identity.tokens import TokenStoreBase
from dbsentry.pgconn import SharedConnection, Sql


class PostgresTokenStore(TokenStoreBase):
    """Tokens in the control plane's ``tokens`` table."""

    def __init__(self, conn: SharedConnection, *, clock: Callable[[], float] = time.time) -> None:
        self._conn = conn
        self._clock = clock

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> PostgresTokenStore:
        return self

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> builtins.list[Sequence[Any]]:
        with self._conn.transaction() as tx:
            return tx.rows(sql, params)

    def _run(self, sql: str, params: Sequence[Any] = ()) -> int:
        with self._conn.transaction() as tx:
            return tx.run(sql, params)


class PostgresLoginLimiter(SqlLoginLimiter):
    """The failed-login limiter over every node; writes for one address are serialised by a
    transaction-scoped advisory lock on it."""

    _PREFIX = "login_"
    _GREATEST = "GREATEST"

    def __init__(
        self,
        conn: SharedConnection,
        max_failures: int = 5,
        window_seconds: float = 60,
        *,
        max_failures_per_address: int = 100,
        max_backoff_seconds: float = 900,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(
            max_failures, window_seconds, max_failures_per_address=max_failures_per_address,
            max_backoff_seconds=max_backoff_seconds, clock=clock,
        )
        self._conn = conn

    def close(self) -> None:
        self._conn.close()

    @contextmanager
    def _tx(self, *, write: bool, key: str = "") -> Iterator[Sql]:
        with self._conn.transaction() as tx:
            if write:
                tx.run("SELECT pg_advisory_xact_lock(hashtext(?))", ("dbsentry.logins:" + key,))
            yield tx
